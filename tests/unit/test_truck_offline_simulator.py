"""The simulators' ``truck_telematics_outage`` (models/truck.py, faults.py): a truck's terminal silent for 45 minutes
from a little into its haul to the tip while the truck keeps working, with ground truth for ``truck_offline`` —
measured on what was sent, as the ``silence`` fault measures its gap."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from sanitel.simulators.clock import parse_instant
from sanitel.simulators.faults import OFFLINE_TIMEOUT_S, FaultSpec, parse_fault_names
from sanitel.simulators.models.truck import OUTAGE_INTO_HAUL_S, OUTAGE_S, TELEMATICS_OUTAGE
from sanitel.simulators.run import Faults, Simulation
from sanitel.simulators.scenario import parse_scenario
from sanitel.simulators.truth import TruthRecord

DAY = "2026-03-09T00:00:00+08:00"  # a whole local day: the 05:00 shift and its haul lie in it
SMALL: dict[str, Any] = {
    "name": "trucks", "timezone": "Asia/Shanghai",
    "districts": [{"id": "futian", "lat": 22.5431, "lon": 114.0579, "radius_km": 2}],
    "stations": {"count": 2},
    "sorting_points": {"count": 8, "cameras": 0, "households": [100, 200], "clearance": {"kitchen": {"by": "10:00"}}},
    "trucks": {"count": 2, "points_per_route": 4},
}
Sent = tuple[str, dict[str, Any], float]


@cache
def day(faults: Faults = ()) -> tuple[tuple[Sent, ...], tuple[TruthRecord, ...]]:
    sim = Simulation(parse_scenario(SMALL), seed=3, start=parse_instant(DAY), duration_s=86_400.0, faults=faults)
    sent = tuple((m.topic, json.loads(m.payload), m.t) for m in sim.messages())
    sim.finish(sim.end)
    return sent, tuple(r for r in sim.truth.records if r.kind == "truck")


def of_truck(sent: tuple[Sent, ...], truck: str) -> list[Sent]:
    return [m for m in sent if m[0].split("/")[2:4] == ["truck", truck]]


def test_the_outage_gives_its_ground_truth_and_nothing_else() -> None:
    sent, records = day(TELEMATICS_OUTAGE)
    (record,) = records
    assert record.fault == TELEMATICS_OUTAGE and record.source == "injected"
    assert record.expected_effect == {"rows": "missing", "alert": "truck_offline"}
    assert record.end - record.start == OUTAGE_S and record.messages > 0
    mine = of_truck(sent, record.device_id)
    assert not [m for m in mine if record.start <= m[2] < record.end]  # the terminal sent nothing
    before = [m for m in mine if m[2] < record.start]
    after = [m for m in mine if m[2] >= record.end]
    # the silence began on shift, a little into the haul: what truck_offline (only_while: on_shift) judges
    last_state = next(b["shift_state"] for topic, b, _ in reversed(before) if topic.endswith("/telemetry"))
    assert last_state == record.details["shift_state"] == "to_tip"
    hauling = [t for _, b, t in before if b.get("shift_state") == "to_tip"]
    assert record.start - hauling[0] <= OUTAGE_INTO_HAUL_S + 10.0
    # the gap the stored readings will show, against the inactivity timeout
    gap = after[0][2] - before[-1][2]
    assert record.details["gap_s"] == round(gap, 3) and gap > OFFLINE_TIMEOUT_S == record.details["timeout_s"]


def test_the_truck_keeps_working_through_the_outage() -> None:
    clean, _ = day()
    faulted, (record,) = day(TELEMATICS_OUTAGE)
    # everything else goes out as on the clean day: the truck did the same, only its terminal was silent
    lost = [m for m in clean if m[0].split("/")[3] == record.device_id and record.start <= m[2] < record.end]
    assert [m for m in clean if m not in lost] == list(faulted)
    assert {b.get("shift_state") for _, b, _ in lost} >= {"to_tip", "tipping"}
    # … and its weighbridge ticket, the station's message, still went out during it
    tickets = [t for topic, b, t in faulted if topic.endswith("/event") and b.get("truck_id") == record.device_id]
    assert any(record.start <= t < record.end for t in tickets)


def test_a_short_outage_expects_no_offline_alert() -> None:
    _, (record,) = day((FaultSpec(kind="truck_telematics_outage", duration=600.0),))
    assert record.expected_effect == {"rows": "missing"}
    assert record.details["gap_s"] <= OFFLINE_TIMEOUT_S


def test_faults_all_includes_the_outage_on_a_truck() -> None:
    specs = [s for s in parse_fault_names("all", {"truck": 2}) if s.kind == TELEMATICS_OUTAGE]
    assert [s.device_kind for s in specs] == ["truck"]
    assert not [s for s in parse_fault_names("all", {"sweeper": 2}) if s.kind == TELEMATICS_OUTAGE]
