"""What every device model shares: the step interface, the emission a step produces, seeded
randomness and the non-homogeneous Poisson arrivals that give the day its shape.

A model is a small state machine stepped forward in simulated time. The simulation keeps every model
in one priority queue ordered by the time each model wants to be stepped next; a step appends zero
or more :class:`Emission` and returns the next due time. Nothing here touches the network or the
wall clock, so a model's output is a pure function of (seed, device id, start time, step times).
"""

from __future__ import annotations

import hashlib
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sanitel.simulators.clock import LocalTime
from sanitel.simulators.truth import SignalWatch, TruthRecord

INF = math.inf
Format = Literal["json", "hj212", "batch"]


@dataclass(slots=True)
class Emission:
    """One message a device (or gateway) sends at simulated time ``t``.

    ``body`` is a reading dict with the field names of ``schemas.readings`` whose ``ts`` is still a
    float (epoch seconds); the encoder turns it into the wire form. For ``fmt == "batch"`` the body is
    ``{"gateway_id": …, "readings": [item, …]}`` where each item also carries kind/device_id/stream.
    For ``fmt == "hj212"`` the body is a CEMS reading that the encoder turns into an HJ 212 frame."""

    topic: str
    device_id: str
    kind: str
    stream: str
    t: float
    body: dict[str, Any]
    fmt: Format = "json"


@dataclass(slots=True)
class DeviceInfo:
    """A device as a registry would list it (for seeding registries and for tests)."""

    device_id: str
    kind: str
    site_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


IncidentSink = Callable[[TruthRecord], TruthRecord]  # records it and hands it back


def stable_seed(seed: int, *parts: str) -> int:
    """A 64-bit seed from the run seed and names — stable across processes and Python versions
    (Python's own hash() of a str is salted per process)."""
    digest = hashlib.blake2b(f"{seed}|{'|'.join(parts)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def device_rng(seed: int, device_id: str, purpose: str = "model") -> random.Random:
    return random.Random(stable_seed(seed, device_id, purpose))


class DeviceModel(ABC):
    """A device, or a small group of devices that share one site and one schedule (a sorting point's
    bins and cameras), stepped by the simulation."""

    kind: ClassVar[str]

    @abstractmethod
    def first_due(self) -> float:
        """Simulated time of the first step."""

    @abstractmethod
    def step(self, t: float, out: list[Emission]) -> float:
        """Advance to ``t``, append what the devices send at ``t``, return the next due time."""

    @abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices this model speaks for."""

    def max_interval(self) -> float:
        """The longest regular reporting interval of this model's devices (``--once`` runs this long)."""
        return 0.0

    def signal_watches(self, device_id: str) -> list[SignalWatch]:
        """The ground-truth watches judging what this device sends (conditions on noisy signals); the fault
        planner hands those of a faulted device over to the fault injector, which sees its readings as sent."""
        return []

    # Bursts (a device reporting far faster than its cadence, e.g. replaying a backlog) only make
    # sense for periodic models; they consult cadence() when scheduling their next report.
    bursts: tuple[tuple[float, float, float], ...] = ()

    def add_burst(self, start: float, end: float, factor: float) -> None:
        """Fault hook: report ``factor`` times as often in [start, end)."""
        self.bursts = (*self.bursts, (start, end, factor))

    def cadence(self, t: float, interval_s: float) -> float:
        for a, b, factor in self.bursts:
            if a <= t < b:
                return interval_s / factor
        return interval_s


class SeqCounter:
    """Per-device sequence numbers: increasing, starting at a device-specific value (a device that was
    running before the simulation started does not begin at 0)."""

    __slots__ = ("_next",)

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.randrange(1, 1_000_000)

    def __call__(self) -> int:
        value = self._next
        self._next = value + 1
        return value


# --- the shape of a day -----------------------------------------------------------------------


def hourly_profile(weights: Sequence[float], per_day: float) -> tuple[float, ...]:
    """Per-hour-of-day event rates (events per second) that sum to ``per_day`` over a day."""
    if len(weights) != 24:
        raise ValueError("an hourly profile needs 24 weights")
    total = sum(weights)
    if total <= 0:
        return (0.0,) * 24
    return tuple(per_day * w / total / 3600.0 for w in weights)


def next_arrival(t: float, rng: random.Random, rates: Sequence[float], local: LocalTime) -> float:
    """Next arrival of a non-homogeneous Poisson process whose rate is constant within each local
    hour. Exact (integrates the rate across hours) rather than thinning, so quiet night hours cost
    nothing and the day's peaks have exactly the configured share."""
    need = rng.expovariate(1.0)
    for _ in range(24 * 8):  # a week of zero rate means "never"
        seconds_of_day = local.seconds_of_day(t)
        hour = int(seconds_of_day // 3600) % 24
        hour_left = 3600.0 - seconds_of_day % 3600.0
        rate = rates[hour]
        mass = rate * hour_left
        if need <= mass:
            return t + need / rate
        need -= mass
        t += hour_left
    return INF


def pick_weighted(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    """One name drawn from (name, weight) pairs; weights need not sum to 1."""
    r, acc = rng.random() * sum(w for _, w in weighted), 0.0
    for name, weight in weighted:
        acc += weight
        if r < acc:
            return name
    return weighted[-1][0]


def clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def ambient_temp_c(local: LocalTime, t: float, mean: float = 24.0, swing: float = 4.0) -> float:
    """Outdoor air temperature: coolest before dawn, warmest mid-afternoon."""
    return ambient_at(local.seconds_of_day(t), mean, swing)


def ambient_at(seconds_of_day: float, mean: float = 24.0, swing: float = 4.0) -> float:
    return mean + swing * math.sin(2 * math.pi * (seconds_of_day / 3600.0 - 9.0) / 24.0)


def in_windows(seconds_of_day: float, windows: Sequence[tuple[float, float]]) -> bool:
    """Whether a local time of day lies in one of the (start, end) windows; windows may wrap midnight."""
    for start, end in windows:
        if start <= end:
            if start <= seconds_of_day < end:
                return True
        elif seconds_of_day >= start or seconds_of_day < end:
            return True
    return False


# Deposits and camera detections follow the sorting time slots (07:00-09:00 and 19:00-21:00): most
# households bring their waste then, a few outside, almost none at night.
SORTING_SLOT_WEIGHTS: tuple[float, ...] = (
    0.1, 0.1, 0.1, 0.1, 0.1, 0.3,   # 00-05
    2.0, 10.0, 10.0, 2.0,           # 06-09
    1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,  # 10-17
    2.0, 10.0, 10.0, 2.0,           # 18-21
    0.5, 0.2,                       # 22-23
)


# --- rounding to the resolution a device reports ----------------------------------------------
# round(x, n) costs several times more than this arithmetic, and a reading rounds ~25 values: it
# was the largest single cost of generating a message. n / 10**k is the double nearest the decimal,
# so it encodes as the short decimal (no 0.30000000000000004).


def r1(x: float) -> float:
    return int(x * 10.0 + (0.5 if x >= 0 else -0.5)) / 10.0


def r2(x: float) -> float:
    return int(x * 100.0 + (0.5 if x >= 0 else -0.5)) / 100.0


def r3(x: float) -> float:
    return int(x * 1000.0 + (0.5 if x >= 0 else -0.5)) / 1000.0


def r6(x: float) -> float:
    return int(x * 1_000_000.0 + (0.5 if x >= 0 else -0.5)) / 1_000_000.0
