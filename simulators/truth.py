"""Ground truth: what the simulator did on purpose, so tests can check what the system made of it.

Every injected fault and every notable event a model produces by itself (a bin fire, a CEMS
calibration window, a plant line starting up) becomes one record. The file is JSON Lines, one record a
line, sorted by start::

    {"device_id": "sw-0003", "kind": "sweeper", "fault": "stuck_sensor", "source": "injected",
     "start": "2026-11-22T01:00:00.000Z", "end": "2026-11-22T01:30:00.000Z",
     "expected_effect": {"rows": "stored"}, "messages": 180, "details": {"field": "soc_pct", "value": 71.2}}

``start``/``end`` are simulated (true) device time, RFC 3339 UTC — for clock-skew faults, the time the
messages were *sent*, not the skewed time they carry. ``messages`` counts the messages the record
touched. ``expected_effect`` is what the pipeline should make of it, with these keys:

- ``alert``: the rule that should fire (e.g. ``sweeper_low_soc``, ``device_offline``,
  ``cems_nox_half_hourly``, ``bin_fire``, ``cems_furnace_850_daily``, ``cems_so2_over_range``; the truck pack's
  ``point_not_cleared`` — about the point ``details.point_id``, the record's device is the truck of its route —,
  ``truck_overweight``, ``truck_off_route``, ``load_not_weighed``, ``weighbridge_mismatch``)
- ``no_alert``: why no alert should fire although values look odd (``calibration``, ``o2_calibration``,
  ``marked_start_up`` / ``marked_shut_down`` / ``marked_shut`` (an outage under an operating-state mark),
  ``cems_furnace_850_daily`` for five furnace dips …)
- ``dead_letter``: the dead-letter reason code (``invalid_json``, ``wrong_type``, ``out_of_range``,
  ``future_timestamp``)
- ``rows``: what the reading table should hold (``stored``, ``deduplicated``, ``stored_late``,
  ``stored_out_of_order``, ``missing``)
- ``verdict``: what the compliance judgement should make of the data (``valid_after_backfill``: minute data
  re-sent after a data-unit outage make the period valid)
- ``mark_via_api``: ``{mark, starts_at, ends_at, reason}`` — a mark the plant must set through the API for the
  ``no_alert`` to hold (an HJ 212 unit cannot send one); a test posts it before judging the period

Records a condition on noisy signals decides (``bin_full``, ``station_h2s_exceeded``, ``station_nh3_exceeded``, source
``model``) are judged by :class:`SignalWatch` on the values the device *sent* — after the faults, as stored — with
the one definition the alert rules read (``sanitel/signal_conditions.yaml``); their ``details`` state it.

CEMS outage records (``shut_down``, ``off``, ``start_up``, source ``model``) carry ``details.mark`` (the MEE 2019
No. 50 code: ``shut_down`` 停炉, ``shut`` 停运, ``start_up`` 启炉), ``details.marked_hours`` and
``details.marked_by`` (``dau``: a JSON unit sends ``operating_mark`` with each reading; ``api``: see above).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from sanitel import signal_conditions
from sanitel.simulators.clock import rfc3339

Source = Literal["injected", "model"]


@dataclass(slots=True)
class TruthRecord:
    device_id: str
    kind: str
    fault: str
    start: float
    end: float
    expected_effect: dict[str, Any]
    source: Source = "injected"
    messages: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "fault": self.fault,
            "source": self.source,
            "start": rfc3339(self.start),
            "end": rfc3339(self.end),
            "expected_effect": self.expected_effect,
            "messages": self.messages,
            "details": self.details,
        }


class GroundTruth:
    """Collects records during a run; written once at the end (or on interruption)."""

    def __init__(self) -> None:
        self.records: list[TruthRecord] = []

    def add(self, record: TruthRecord) -> TruthRecord:
        self.records.append(record)
        return record

    def injected(self) -> list[TruthRecord]:
        return [r for r in self.records if r.source == "injected"]

    def counts(self) -> Counter[str]:
        return Counter(r.fault for r in self.injected())

    def sorted_records(self) -> list[TruthRecord]:
        return sorted(self.records, key=lambda r: (r.start, r.device_id, r.fault))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoder = msgspec.json.Encoder()
        with open(path, "wb") as fh:
            for record in self.sorted_records():
                fh.write(encoder.encode(record.as_json()) + b"\n")
        return path


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ground-truth file, as written (for tests and tools)."""
    decoder = msgspec.json.Decoder()
    with open(path, "rb") as fh:
        return [decoder.decode(line) for line in fh if line.strip()]


# --- conditions on noisy signals, judged on what was sent -------------------------------------------------------


class SignalJudge:
    """One named condition (``sanitel/signal_conditions.yaml``, the definition the alert rules read) turned into
    ground truth for the devices of one model: a record ``fault`` = the condition's name per episode, with the alert
    it expects. The definition is looked up when the judge is made (a model's construction), so a changed
    definition changes the truth with it. ``bounds``: what storage does to the value first (a bin's fill level is
    clamped to 0-100 % on its way into the database, processors/derive.py), so the truth judges what the rule sees.
    """

    __slots__ = ("bounds", "clear", "condition", "details", "effect", "field", "readings", "threshold")

    def __init__(self, name: str, alert: str, *, params: Mapping[str, Any] | None = None,
                 bounds: tuple[float, float] | None = None) -> None:
        self.condition = found = signal_conditions.condition(name)
        self.field = found.field
        self.readings = found.smoothing.readings
        self.threshold, self.clear = found.limits(params)
        self.effect: dict[str, Any] = {"alert": alert}
        self.details: dict[str, Any] = {
            "condition": found.name, "field": found.field, "op": found.op, "threshold": self.threshold,
            "clear": self.clear, "smoothing": found.smoothing.describe(),
            "judged_on": "the values sent, after faults" + (f", as stored (clamped to {bounds[0]:g}-{bounds[1]:g})"
                                                            if bounds else ""),
            "defined_in": "sanitel/signal_conditions.yaml"}
        if params:
            self.details["params"] = dict(params)
        self.bounds = bounds

    def value(self, reading: Mapping[str, Any]) -> float | None:
        """The judged field of a reading as stored, or None when the reading does not carry a number there (a
        truck on the weighbridge, a malformed value)."""
        raw = reading.get(self.field)
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
            return None
        if self.bounds is not None:
            lo, hi = self.bounds
            return lo if raw < lo else hi if raw > hi else float(raw)
        return float(raw)

    def starts(self, smoothed: float) -> bool:
        return self.condition.breaches(smoothed, self.threshold)

    def ends(self, smoothed: float) -> bool:
        """No longer beyond the clear level (the threshold when there is none): ``Condition.episodes``' hysteresis,
        one reading at a time."""
        return not self.condition.breaches(smoothed, self.threshold if self.clear is None else self.clear)


_JUDGES: dict[tuple[Any, ...], SignalJudge] = {}


def signal_judge(name: str, alert: str, *, params: Mapping[str, Any] | None = None,
                 bounds: tuple[float, float] | None = None) -> SignalJudge:
    """A judge shared by every model that asks for the same one (22,000 sorting points need one ``bin_full``
    judge, not 22,000) — made anew when the definition is no longer the one it was made from."""
    key = (name, alert, tuple(sorted((str(k), str(v)) for k, v in (params or {}).items())), bounds)
    found = _JUDGES.get(key)
    if found is None or found.condition is not signal_conditions.condition(name):
        found = _JUDGES[key] = SignalJudge(name, alert, params=params, bounds=bounds)
    return found


Sink = Callable[[TruthRecord], TruthRecord]


class SignalWatch:
    """One device's episodes of one condition, decided reading by reading as they are sent, in the same steps as
    ``Condition.episodes`` over the whole series: no verdict before a full window; a record opens at the reading
    whose smoothed value breaches the threshold and ends at the first reading whose smoothed value has cleared (an
    episode still open when the run stops ends there). Only the last few values are kept (the smoothing window), so
    a city of bins stays small.

    The model feeds it what it sends; for a device with faults the fault injector does instead (``handed_over``),
    with the reading as the faults left it — or not at all when it was dropped or will be dead-lettered."""

    __slots__ = ("details", "device_id", "handed_over", "judge", "kind", "record", "sink", "window")

    def __init__(self, judge: SignalJudge, device_id: str, kind: str, sink: Sink,
                 details: Mapping[str, Any] | None = None) -> None:
        self.judge, self.device_id, self.kind, self.sink = judge, device_id, kind, sink
        self.details = details or {}  # shared by a point's bins: copied into each record, never changed
        self.window: list[float] = []
        self.record: TruthRecord | None = None
        self.handed_over = False

    def see(self, t: float, reading: Mapping[str, Any]) -> None:
        """A reading sent (and stored) at simulated time ``t``."""
        value = self.judge.value(reading)
        if value is None:
            return
        judge, window = self.judge, self.window
        window.append(value)
        if len(window) < judge.readings:  # no verdict before a full window (Smoothing.rolling)
            return
        if len(window) > judge.readings:
            del window[0]
        smoothed = judge.condition.smoothing.value(window)
        record = self.record
        if record is None:
            if judge.starts(smoothed):
                self.record = self.sink(TruthRecord(
                    self.device_id, self.kind, judge.condition.name, t, math.inf, dict(judge.effect),
                    source="model", messages=1, details={**judge.details, **self.details}))
        elif judge.ends(smoothed):
            record.end = t
            self.record = None
        else:
            record.messages += 1
