"""The truck alert pack against the simulator's ground truth (issue 15 items 4 and 6, issue 18 Must show 4): a fleet
of several trucks, every truck fault injected, through a real broker, the real collector, the scheduled processor and
the evaluator — the machinery of test_alerts_ground_truth.py (its ``simulate_day``), on a truck-focused fleet.

Per truck rule: every expected alert raised (recall 100 %) and none the ground truth does not explain; the same for
the whole pack. The fleet keeps what the truck rules read — trucks on their routes, the sorting points they serve
(bins: the overflow rule), stations with weighbridges — and drops the sweepers and the plant, so a whole day takes
seconds: ~29,000 messages instead of the district's 580,000 (bench/alert_truth.py runs the whole district).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitel.alert_truth import Score, score
from sanitel.alerts.rules import CheckRule, default_rule_files, load_files
from sanitel.servers import MosquittoServer
from sanitel.simulators.models import truck
from sanitel.simulators.models.truck import SHIFT_FAULTS
from sanitel.simulators.scenario import Scenario, load_scenario
from tests.integration import test_alerts_ground_truth as ground_truth
from tests.integration.test_alerts_ground_truth import DAY_END, fired_alerts

# Five trucks for the six truck faults: one truck takes two, so the pair that cannot share a shift (never_weighed,
# weighbridge_mismatch) must land on different trucks to happen within the day (simulators/faults.py). Seed 9 is one
# where the planning before put that pair on one truck (the mismatch then waited a day: outside the run).
TRUCKS, POINTS_PER_ROUTE, STATIONS = 5, 6, 2
SEED = 9
# the rule a fault must raise (models/truck.py records it so)
FAULT_RULES = {"missed_pickup": "point_not_cleared", "late_round": "point_not_cleared",
               "overweight": "truck_overweight", "off_route": "truck_off_route",
               "never_weighed": "load_not_weighed", "weighbridge_mismatch": "weighbridge_mismatch"}


def truck_scenario() -> Scenario:
    """The district's trucks, sorting points and stations, smaller; no sweepers, no plant; every point on a route."""
    district = load_scenario("district")
    return district.model_copy(update={
        "sweepers": district.sweepers.model_copy(update={"count": 0}),
        "stations": district.stations.model_copy(update={"count": STATIONS}),
        "sorting_points": district.sorting_points.model_copy(update={"count": TRUCKS * POINTS_PER_ROUTE}),
        "trucks": district.trucks.model_copy(update={"count": TRUCKS, "points_per_route": POINTS_PER_ROUTE}),
        "plants": [], "faults": []})


def truck_rules() -> list[str]:
    return sorted(r.id for r in load_files(default_rule_files()).rules.values()
                  if isinstance(r, CheckRule))


broker = ground_truth.broker  # a broker of the test's own (the fixture, shared by name)


@pytest.mark.clock
def test_every_truck_fault_raises_its_alert_and_nothing_else(fresh_db: str, broker: MosquittoServer,
                                                             tmp_path: Path) -> None:
    truth, _ = ground_truth.simulate_day(fresh_db, broker, tmp_path, "all", scenario=truck_scenario(), seed=SEED)
    result = score(fired_alerts(fresh_db), truth, until=DAY_END)
    print(f"\ntrucks ×{TRUCKS}, seed {SEED}, every fault kind\n{result.table()}")
    injected = [r for r in truth if r["kind"] == "truck" and r["source"] == "injected"]
    # every truck fault happened within the day, on several trucks, and expects the rule it must raise
    assert {r["fault"] for r in injected} >= set(SHIFT_FAULTS)
    assert len({r["device_id"] for r in injected if r["fault"] in SHIFT_FAULTS}) == TRUCKS
    for record in injected:
        if record["fault"] in FAULT_RULES:
            assert record["expected_effect"]["alert"] == FAULT_RULES[record["fault"]], record
    assert {r["expected_effect"]["alert"] for r in injected if r["fault"] in FAULT_RULES} == set(FAULT_RULES.values())
    _assert_per_rule(result, truck_rules())
    # the whole pack: recall 100 %, no false alert
    assert (result.recall, result.total.false) == (1.0, 0), result.table()
    assert result.misses == [] and result.false_alerts == [], result.table()


def _assert_per_rule(result: Score, rules: list[str]) -> None:
    """Each truck rule: all it was expected to raise, nothing unexplained, and resolved when its record ends (a
    weighbridge mismatch holds until the truck's next ticket, in the rule and in the ground truth)."""
    for rule in rules:
        row = result.rule(rule)
        assert (row.matched, row.false) == (row.expected, 0), f"{rule}:\n{result.table()}"
    assert [late for late in result.late if late.entry.alert in rules] == [], result.table()


def test_the_simulator_judges_with_the_shipped_truck_rules_limits() -> None:
    """The limits the ground truth judges with are the rules' (issue 18 item 2). Overweight is one definition both
    read (sanitel/signal_conditions.yaml); the others are restated by the simulator, which may import no alert code:
    held equal here, so a changed rule fails this test instead of silently disagreeing with its ground truth."""
    shipped = load_files(default_rule_files()).rules
    off_route, unweighed, mismatch = (shipped[r] for r in ("truck_off_route", "load_not_weighed",
                                                           "weighbridge_mismatch"))
    assert isinstance(off_route, CheckRule) and isinstance(unweighed, CheckRule) and isinstance(mismatch, CheckRule)
    assert (off_route.distance_m, off_route.for_.total_seconds()) == (truck.OFF_ROUTE_M, truck.OFF_ROUTE_FOR_S)
    assert unweighed.within is not None and unweighed.within.total_seconds() == truck.WEIGH_WITHIN_S
    assert (mismatch.tolerance_pct, mismatch.tolerance_kg) == (100 * truck.MISMATCH_SHARE, truck.MISMATCH_KG)
    overweight = shipped["truck_overweight"]
    assert isinstance(overweight, CheckRule) and overweight.condition == truck.OVERWEIGHT.name
