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
  ``cems_nox_half_hourly``, ``bin_fire``, ``cems_furnace_850_daily``, ``cems_so2_over_range``)
- ``no_alert``: why no alert should fire although values look odd (``calibration``, ``o2_calibration``,
  ``marked_start_up`` / ``marked_shut_down`` / ``marked_shut`` (an outage under an operating-state mark),
  ``furnace_five_dips`` …)
- ``dead_letter``: the dead-letter reason code (``invalid_json``, ``wrong_type``, ``out_of_range``,
  ``future_timestamp``)
- ``rows``: what the reading table should hold (``stored``, ``deduplicated``, ``stored_late``,
  ``stored_out_of_order``, ``missing``)
- ``verdict``: what the compliance judgement should make of the data (``valid_after_backfill``: minute data
  re-sent after a data-unit outage make the period valid)
- ``mark_via_api``: ``{mark, starts_at, ends_at, reason}`` — a mark the plant must set through the API for the
  ``no_alert`` to hold (an HJ 212 unit cannot send one); a test posts it before judging the period

CEMS outage records (``shut_down``, ``off``, ``start_up``, source ``model``) carry ``details.mark`` (the MEE 2019
No. 50 code: ``shut_down`` 停炉, ``shut`` 停运, ``start_up`` 启炉), ``details.marked_hours`` and
``details.marked_by`` (``dau``: a JSON unit sends ``operating_mark`` with each reading; ``api``: see above).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

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
