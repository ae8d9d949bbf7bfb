"""Simulated time: where the fleet's clock stands, and how it maps to the wall clock.

Simulated time is plain epoch seconds (UTC, float) everywhere inside the simulator; it is turned into
RFC 3339 or epoch milliseconds only when a reading is encoded. Two mappings exist:

- :class:`SimClock` paces a run against the wall clock: real time (``speed=1``), compressed
  (``speed=1440`` = a day per minute), or as fast as possible (``speed=0``).
- :class:`LocalTime` answers "what time of day is it at the site", which drives shifts, sorting time
  slots and day/night noise limits (local time of the scenario's time zone).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field

from sanitel.durations import parse_duration

DAY_S = 86_400.0


def duration_s(value: object) -> float:
    """A duration (``sanitel.durations``: ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"`` or a number of
    seconds) in seconds; ValueError names the accepted forms, so callers can name the key and the fix."""
    return parse_duration(value).total_seconds()


def signed_duration_s(value: object) -> float:
    """Like :func:`duration_s` but allows a sign: ``"+10m"``, ``"-2h"`` (clock skew offsets)."""
    return parse_duration(value, signed=True).total_seconds()


def parse_time_of_day(text: str) -> float:
    """``"07:30"`` or ``"07:30:15"`` → seconds since local midnight."""
    parts = str(text).split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a time of day; use HH:MM, e.g. 07:30")
    h, m, s = (int(p) for p in (*parts, "0")[:3])
    if h > 24 or m > 59 or s > 59 or (h == 24 and (m or s)):
        raise ValueError(f"{text!r} is not a time of day; hours 00-24, minutes and seconds 00-59")
    return h * 3600.0 + m * 60.0 + s


def parse_instant(text: str | datetime) -> float:
    """An RFC 3339 / ISO 8601 instant → epoch seconds. A value without an offset is rejected:
    simulated device time must be unambiguous."""
    if isinstance(text, datetime):
        value = text
    else:
        try:
            value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not a date-time; use RFC 3339, e.g. 2026-11-22T00:00:00+08:00") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add one, e.g. 2026-11-22T00:00:00+08:00")
    return value.timestamp()


def rfc3339(t: float) -> str:
    """Epoch seconds → ``2026-11-22T07:00:00.123Z`` (UTC, milliseconds)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known time zone; use an IANA name such as Asia/Shanghai") from None


class LocalTime:
    """Local time of day at the sites of one scenario (one IANA time zone).

    The UTC offset is looked up once per UTC hour and cached: models ask for the time of day on every
    step, and zone arithmetic is far slower than a dict lookup."""

    def __init__(self, zone: str) -> None:
        self.zone = load_zone(zone)
        self._offsets: dict[int, float] = {}

    def offset(self, t: float) -> float:
        hour = int(t // 3600)
        cached = self._offsets.get(hour)
        if cached is None:
            delta = datetime.fromtimestamp(hour * 3600, self.zone).utcoffset() or timedelta(0)
            cached = self._offsets[hour] = delta.total_seconds()
            if len(self._offsets) > 10_000:  # long real-time runs: keep the cache bounded
                self._offsets.clear()
        return cached

    def seconds_of_day(self, t: float) -> float:
        return (t + self.offset(t)) % DAY_S

    def hour(self, t: float) -> float:
        return self.seconds_of_day(t) / 3600.0

    def next_time_of_day(self, t: float, seconds_of_day: float) -> float:
        """The first instant at or after ``t`` when the local clock reads ``seconds_of_day``."""
        wait = (seconds_of_day - self.seconds_of_day(t)) % DAY_S
        return t + wait

    def datetime(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.zone)


class SimClock:
    """Maps simulated time to the wall clock for a paced run.

    ``speed`` is the compression factor: 1 = real time, 1440 = a day per minute, 0 = as fast as
    possible (no pacing at all; load tests)."""

    def __init__(self, start: float, speed: float, wall_start: float | None = None) -> None:
        if speed < 0 or math.isnan(speed):
            raise ValueError(f"speed {speed!r} must be 0 (as fast as possible) or a positive factor")
        self.start = start
        self.speed = speed
        self.wall_start = time.monotonic() if wall_start is None else wall_start

    @property
    def paced(self) -> bool:
        return self.speed > 0

    def wall_due(self, sim_t: float) -> float:
        """Monotonic wall time at which a reading stamped ``sim_t`` is due to be sent."""
        if not self.paced:
            return self.wall_start
        return self.wall_start + (sim_t - self.start) / self.speed

    def now(self, wall: float | None = None) -> float:
        """Simulated time now (for the progress line)."""
        wall = time.monotonic() if wall is None else wall
        if not self.paced:
            return math.nan
        return self.start + (wall - self.wall_start) * self.speed


# --- the same parsers as pydantic field types (scenario and fault specs) ----------------------


def _window(value: Any) -> tuple[float, float]:
    text = str(value)
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a time window; use HH:MM-HH:MM, e.g. 05:00-11:00")
    return parse_time_of_day(start.strip()), parse_time_of_day(end.strip())


Duration = Annotated[float, BeforeValidator(duration_s)]
PositiveDuration = Annotated[float, BeforeValidator(duration_s), Field(gt=0)]
SignedDuration = Annotated[float, BeforeValidator(signed_duration_s)]
def _time_of_day(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):  # seconds, from Python callers
        if not 0 <= value <= DAY_S:
            raise ValueError(f"{value!r} is not a time of day; use HH:MM, e.g. 07:30")
        return float(value)
    return parse_time_of_day(str(value))


TimeOfDay = Annotated[float, BeforeValidator(_time_of_day)]
TimeWindow = Annotated[tuple[float, float], BeforeValidator(_window)]
Instant = Annotated[float, BeforeValidator(parse_instant)]
