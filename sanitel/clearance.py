"""The clearance model (issue 15, item 3): when each category of a sorting point must be emptied, and whether it was.

The seeds' work reports judge districts on "daily production, daily clearance" (日产日清): every sorting point's
waste of a category is picked up each day by a deadline. A `sorting_point` site's parameters carry the schedule
(the truck contract, /tmp/brief/truck_contract.md "Site parameters")::

    clearance: {kitchen: {by: "10:00", every: daily}, other: {by: "18:00", every: daily}}

``by`` is local wall-clock time in the site's time zone. Only ``every: daily`` exists so far: the seeds name no
other cadence (a weekly hazardous-waste round would be the next one; not verified against any city's rule).

Pure functions, no I/O, but for the one query both judges need (``fleet_first_report``, at the end): the alert pack
(``point_not_cleared``) and the daily clearance report with its ``clearance_days`` rows (processors/clearance.py)
judge with the same code, so they cannot disagree about "late", "missed" or "no_data". (The simulators' ground truth,
simulators/truth.py, does not judge clearance: it lists the alerts its faults must raise.)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo

from sanitel.errors import ConfigError
from sanitel.schemas.readings import WasteCategory

if TYPE_CHECKING:
    import psycopg

Cadence = Literal["daily"]
ClearanceStatus = Literal["pending", "on_time", "overdue", "late", "missed", "no_data"]
CATEGORIES: tuple[str, ...] = get_args(WasteCategory)
CADENCES: tuple[str, ...] = get_args(Cadence)
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_KEYS = {"by", "every"}


@dataclass(frozen=True)
class ClearanceSchedule:
    """One category of one sorting point: picked up ``every`` day by ``by`` (local time of the site)."""

    category: str
    by: time
    every: Cadence


@dataclass(frozen=True)
class PickupAt:
    """A pickup at a sorting point: its category (None when the truck did not say: it counts for every category,
    as a lifter that empties the point's bins in one round does) and its instant (timezone-aware)."""

    category: str | None
    at: datetime


def parse_clearance(params: Mapping[str, Any], *, where: str) -> list[ClearanceSchedule]:
    """A site's ``clearance`` parameter → its schedules, ordered by category; none when the key is absent.

    Raises ConfigError naming ``where`` (the site id), the key and the fix."""
    raw = params.get("clearance")
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise ConfigError(f"site {where}: params.clearance: {raw!r} is not a mapping — fix: map each category to "
                          f'{{"by": "HH:MM", "every": "daily"}}, e.g. {{"kitchen": {{"by": "10:00", "every": "daily"}}}}')
    return [_schedule(str(category), entry, where) for category, entry in sorted(raw.items(), key=lambda kv: str(kv[0]))]


def _schedule(category: str, entry: Any, where: str) -> ClearanceSchedule:
    key = f"site {where}: params.clearance.{category}"
    if category not in CATEGORIES:
        raise ConfigError(f"{key}: unknown waste category — fix: use one of {', '.join(CATEGORIES)}")
    if not isinstance(entry, Mapping):
        raise ConfigError(f'{key}: {entry!r} is not a mapping — fix: write {{"by": "HH:MM", "every": "daily"}}')
    unknown = set(map(str, entry)) - _KEYS
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(sorted(unknown))} — fix: only 'by' and 'every'")
    if "by" not in entry:
        raise ConfigError(f'{key}.by: missing — fix: give the local deadline as "HH:MM", e.g. "10:00"')
    by = entry["by"]
    match = _HHMM.match(by) if isinstance(by, str) else None
    if match is None:
        raise ConfigError(f'{key}.by: {by!r} is not a local time — fix: write "HH:MM" from "00:00" to "23:59" '
                          f"(quoted: YAML reads an unquoted 10:00 as a number)")
    every = entry.get("every", "daily")  # the only cadence: an omitted one means it
    if every not in CADENCES:
        raise ConfigError(f"{key}.every: {every!r} — fix: use one of {', '.join(CADENCES)}")
    return ClearanceSchedule(category, time(int(match[1]), int(match[2])), "daily")


@functools.lru_cache(maxsize=4096)  # pure, and asked for every point's every day of every evaluator pass
def day_bounds(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the local ``day`` in ``tz`` (23 or 25 hours long on a DST change), in UTC: Python compares
    and subtracts two datetimes of the same zone by wall clock, which is wrong across a DST change."""
    return (datetime.combine(day, time(0), tz).astimezone(UTC),
            datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC))


@functools.lru_cache(maxsize=4096)
def deadline(schedule: ClearanceSchedule, day: date, tz: ZoneInfo) -> datetime:
    """The instant ``schedule`` falls due on the local ``day``. A wall-clock time a DST change skips is read with
    fold 0 (zoneinfo: the offset before the change), i.e. an hour later in real time — never earlier than asked.
    In UTC (see ``day_bounds``)."""
    return datetime.combine(day, schedule.by, tz).astimezone(UTC)


def judge_clearance(schedule: ClearanceSchedule, day: date, tz: ZoneInfo, pickups: Sequence[PickupAt],
                    now: datetime, *, fleet_first_report: datetime | None) -> ClearanceStatus:
    """The status of ``schedule`` on the local ``day``, knowing what happened up to ``now``.

    ``fleet_first_report`` is the device time of the first truck data of any truck stored for that local day
    (``fleet_first_report()`` below; None when there is none). ``pickups`` are the point's, of any category.

    on_time: a pickup of the category (or of no category) on that local day at or before the deadline;
    pending: none yet, deadline still ahead;
    no_data: no such pickup by the deadline, and the fleet had not reported by then — neither telemetry nor a
    pickup of any category (a pickup is truck data) between the day's start and the deadline. The fleet's
    telematics were down or not connected yet, or its data have not arrived: a missing pickup is then missing
    data, not a missed clearance (issue 18: no verdict without data). This also holds when a pickup came after the
    deadline: nothing shows whether an earlier one was lost with the rest of the morning's data, so it is not
    called late (the row still shows that pickup);
    late: the first such pickup came after the deadline, that day; overdue: none yet, deadline passed, day not over;
    missed: the day ended with none.
    Pickups and reports after ``now`` are ignored (not yet known), so a verdict never depends on the future, and
    "missed" is never given before the day has ended (issue 18: no premature verdicts). A no_data verdict is not
    final: data stored later (a collector's backlog) turn it into a verdict."""
    _aware(now, "now")
    start, end = day_bounds(day, tz)
    due = deadline(schedule, day, tz)
    known = [p for p in pickups if start <= _aware(p.at, "pickup") < end and p.at <= now]
    times = [p.at for p in known if _counts(p, schedule.category)]
    if any(t <= due for t in times):
        return "on_time"
    if now < due:
        return "pending"
    if not _fleet_reported_by(due, start, fleet_first_report, known):  # now >= due: all of it is known
        return "no_data"
    if times:
        return "late"
    return "overdue" if now < end else "missed"


def _fleet_reported_by(due: datetime, start: datetime, fleet_first_report: datetime | None,
                       known_pickups: Sequence[PickupAt]) -> bool:
    """Whether some truck data of the day is at or before ``due`` (the same "at or before" as on_time's: a report
    at the deadline was in time)."""
    if fleet_first_report is not None and start <= _aware(fleet_first_report, "fleet_first_report") <= due:
        return True
    return any(p.at <= due for p in known_pickups)


def _counts(pickup: PickupAt, category: str) -> bool:
    return pickup.category is None or pickup.category == category


def _aware(at: datetime, what: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} {at!r} has no time zone — pass an aware datetime")
    return at


# -- the one query ------------------------------------------------------------------------------------------------

# The first truck data of [start, end): telemetry or an event (a pickup or a tip is truck data too), of any truck.
# Two probes of the hypertables' ts indexes (TimescaleDB's default one), whatever the fleet's size.
_FLEET_FIRST_REPORT = """
    SELECT least(
        (SELECT min(ts) FROM truck_telemetry
          WHERE ts >= %(start)s AND ts < %(end)s AND (%(before)s::timestamptz IS NULL OR stored_at < %(before)s)),
        (SELECT min(ts) FROM truck_events
          WHERE ts >= %(start)s AND ts < %(end)s AND (%(before)s::timestamptz IS NULL OR stored_at < %(before)s)))"""


def fleet_first_report(conn: psycopg.Connection, start: datetime, end: datetime, *,
                       stored_before: datetime | None) -> datetime | None:
    """Device time of the fleet's first stored data in [start, end) (a local day: ``day_bounds``), None when none:
    ``judge_clearance``'s ``fleet_first_report``. ``stored_before``: only rows stored before it count (the alert
    evaluator's ``upto``: rows committed when its pass began); None for every row stored (a report, which ignores
    data after its "now" by device time, as it does pickups)."""
    row = conn.execute(_FLEET_FIRST_REPORT, {"start": start, "end": end, "before": stored_before}).fetchone()
    return None if row is None else row[0]
