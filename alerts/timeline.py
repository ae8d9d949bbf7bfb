"""Samples → episodes: the evaluation semantics of ``for``, hysteresis and ``keep_firing_for``, on device
time. Pure functions and a resumable cursor; no I/O.

A *sample* is one verdict on the condition at a device time: a reading (``ts == end``) or a closed
window (``ts`` its start, ``end`` its end). Its status is

- BREACH   the value is on the wrong side of the threshold
- CLEAR    the value is on the safe side of the clear limit (the threshold when there is none)
- HOLD     between the two (hysteresis dead band): an active condition stays active
- SKIP     no verdict — a flagged reading (calibration, maintenance, fault, stopped) or an invalid
           window; it neither starts, extends nor ends a condition

An *episode* is one run of the condition: it starts at the first BREACH and ends at the first CLEAR
after it. It *fires* once it has lasted ``for`` (from its start to the end of its latest active
sample) with at least ``for_samples`` consecutive BREACH samples somewhere in it; an episode that
ends before that never fires (Prometheus' pending). With ``keep_firing_for``, a fired episode that
clears keeps firing until device time reaches the clear + ``keep_firing_for``; a BREACH before then
continues the same episode.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}


class Status(IntEnum):
    CLEAR = 0
    BREACH = 1
    HOLD = 2
    SKIP = 3


def judge(value: float | None, op: str, threshold: float, clear: float | None) -> Status:
    """The status of one value: BREACH when ``value op threshold``; CLEAR when not ``value op clear``."""
    if value is None:
        return Status.SKIP
    compare = _OPS[op]
    if compare(value, threshold):
        return Status.BREACH
    if clear is None or not compare(value, clear):
        return Status.CLEAR
    return Status.HOLD


@dataclass(frozen=True, slots=True)
class Sample:
    ts: datetime
    end: datetime
    value: float | None
    status: Status


@dataclass(frozen=True, slots=True)
class Policy:
    for_: timedelta = timedelta(0)
    for_samples: int = 1
    keep_firing_for: timedelta = timedelta(0)
    higher_is_worse: bool = True  # which way the episode's peak value goes


@dataclass(frozen=True, slots=True)
class Episode:
    start: datetime
    fire_at: datetime | None  # device time it qualified; None = never fired (pending)
    ended_at: datetime | None  # device time the condition ended (keep-firing runs from here)
    resolved_at: datetime | None  # ended_at (+ keep_firing_for once device time got there)
    peak: float | None
    last_value: float | None

    @property
    def fired(self) -> bool:
        return self.fire_at is not None

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass
class Cursor:
    """Where evaluation of one rule for one subject stopped, and the condition's state there. Stored
    as JSON in ``alert_eval_state`` so the next pass (or the next process) resumes from it."""

    evaluated_upto: datetime | None = None  # ts of the last sample taken into account
    active: bool = False
    start: datetime | None = None
    last_active: datetime | None = None
    run: int = 0  # consecutive BREACH samples now
    run_ok: bool = False  # the episode has had for_samples consecutive BREACH samples
    fire_at: datetime | None = None
    cleared_at: datetime | None = None  # keep-firing: the condition cleared here, the alert still fires
    peak: float | None = None
    last_value: float | None = None

    # --- persistence ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        known = cls.__dataclass_fields__
        values: dict[str, Any] = {k: (datetime.fromisoformat(v) if isinstance(v, str) else v)
                                  for k, v in data.items() if k in known}
        return cls(**values)

    def copy(self) -> Cursor:
        return replace(self)

    # --- the state machine ------------------------------------------------------------------
    def episode(self) -> Episode | None:
        """The open episode, if the condition is active."""
        if not self.active or self.start is None:
            return None
        return Episode(self.start, self.fire_at, self.cleared_at, None, self.peak, self.last_value)

    def _close(self, ended_at: datetime, resolved_at: datetime) -> Episode:
        assert self.start is not None
        episode = Episode(self.start, self.fire_at, ended_at, resolved_at, self.peak, self.last_value)
        self.active, self.start, self.last_active, self.fire_at, self.cleared_at = False, None, None, None, None
        self.run, self.run_ok, self.peak = 0, False, None
        return episode

    def _qualify(self, sample: Sample, policy: Policy) -> None:
        assert self.start is not None and self.last_active is not None
        if self.fire_at is None and self.run_ok and self.last_active - self.start >= policy.for_:
            self.fire_at = sample.end

    def _track(self, value: float | None, policy: Policy) -> None:
        self.last_value = value
        if value is not None and (self.peak is None or (value > self.peak) == policy.higher_is_worse):
            self.peak = value

    def step(self, sample: Sample, policy: Policy) -> Episode | None:
        """Take one sample (in device-time order); returns an episode that ended, if one did."""
        ended = self.expire(sample.ts, policy)
        if sample.status is Status.BREACH:
            if not self.active:
                self.active, self.start = True, sample.ts
            self.cleared_at = None  # a breach within keep_firing_for continues the episode
            self.run += 1
            self.run_ok = self.run_ok or self.run >= policy.for_samples
            self.last_active = sample.end
            self._track(sample.value, policy)
            self._qualify(sample, policy)
        elif sample.status is Status.HOLD:
            self.run = 0
            if self.active and self.cleared_at is None:
                self.last_active = sample.end
                self._track(sample.value, policy)
                self._qualify(sample, policy)
        elif sample.status is Status.CLEAR:
            self.run = 0
            if self.active and self.cleared_at is None:
                if self.fire_at is not None and policy.keep_firing_for > timedelta(0):
                    self.cleared_at = sample.ts
                    self.last_value = sample.value
                else:
                    ended = self._close(sample.ts, sample.ts)
        self.evaluated_upto = sample.ts
        return ended

    def expire(self, now: datetime, policy: Policy) -> Episode | None:
        """End a kept-firing episode once device time ``now`` is past its clear + keep_firing_for."""
        if self.cleared_at is not None and now >= self.cleared_at + policy.keep_firing_for:
            return self._close(self.cleared_at, self.cleared_at + policy.keep_firing_for)
        return None


def advance(cursor: Cursor, samples: Iterable[Sample], policy: Policy) -> list[Episode]:
    """Feed samples (sorted by ts) through the cursor; the episodes that ended, in order. The open one,
    if any, is ``cursor.episode()``."""
    ended = []
    for sample in samples:
        episode = cursor.step(sample, policy)
        if episode is not None:
            ended.append(episode)
    return ended
