"""The truck alert pack (issue 15 item 4) through the real evaluator and the shipped rules of alerts/rules/truck.yaml:
rows inserted straight into the tables of migration 0083, passes at fixed instants. One test per rule that fires —
on certain evidence only: at the deadline, after the wait, when the ticket is there, k of n readings — and one that
must not. Each runs twice: with a fresh evaluator per pass, and with one evaluator kept across the passes, as the
service keeps it (what it remembers between passes — pickup and visit logs, point verdicts — must not change a
verdict)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from tests.support.alerts_db import T0, KeptEvaluators, add_device, add_site, alerts, at, insert, run, shipped_rules

SHIPPED = load_files(default_rule_files()).rules
# T0 is 08:00 in Shanghai; the kitchen deadline is 10:00 local, two hours later
DEADLINE_MIN = 120
CLEARANCE = {"clearance": {"kitchen": {"by": "10:00", "every": "daily"}, "other": {"by": "18:00", "every": "daily"}}}
# a day's look-back: the days before T0 are not judged (their deadlines are older than the horizon)
HALF_DAY = {"lateness_horizon": timedelta(hours=12)}


@pytest.fixture(autouse=True, params=["fresh", "kept"])
def evaluators(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``run`` in this module: a fresh evaluator per pass, or one kept across the test's passes."""
    if request.param == "fresh":
        yield
        return
    kept = KeptEvaluators()
    monkeypatch.setitem(globals(), "run", kept.run)
    try:
        yield
    finally:
        kept.close()


def setup(url: str, *, truck_params: Mapping[str, Any] | None = None) -> None:
    """A district, an estate with two sorting points 1 km apart (a route between them), a depot, truck tr-1."""
    with psycopg.connect(url, autocommit=True) as conn:
        add_site(conn, "d-1", "district")
        add_site(conn, "es-1", "estate", parent="d-1")
        add_site(conn, "depot-1", "depot", parent="d-1")
        for point, lon in (("sp-1", 114.0), ("sp-2", 114.01)):
            add_site(conn, point, "sorting_point", parent="es-1", params=CLEARANCE)
            conn.execute("UPDATE sites SET latitude = 22.5, longitude = %s WHERE site_id = %s", (lon, point))
        conn.execute("UPDATE sites SET latitude = 22.52, longitude = 114.0 WHERE site_id = 'depot-1'")
        params = {"rated_payload_kg": 8000, "depot_site_id": "depot-1", **(truck_params or {})}
        add_device(conn, "tr-1", "truck", site="depot-1", metadata={"params": params})
        add_device(conn, "wb-1", "transfer_station", site="d-1")
        conn.execute("INSERT INTO truck_routes (route_id, truck_id, shift_start, shift_end, points, valid_from)"
                     " VALUES ('r-1', 'tr-1', '07:00', '15:00', ARRAY['sp-1', 'sp-2'], '2026-03-01')")


def rows(url: str, table: str, device: str, items: Iterable[Mapping[str, Any]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, table, device, list(items))


def pickup(minute: float, kg: float = 80, *, point: str = "sp-1", category: str | None = "kitchen",
           truck: str = "tr-1", url: str) -> None:
    rows(url, "truck_events", truck, [{"ts": at(minute), "event": "pickup", "point_id": point, "category": category,
                                       "weight_kg": kg, "seq": int(minute * 60)}])


def ticket(minute: float, net: float, *, url: str, ticket_id: str = "k-1") -> None:
    rows(url, "weighbridge_tickets", "wb-1", [{"ts": at(minute), "ticket_id": ticket_id, "truck_id": "tr-1",
                                               "gross_kg": net + 9000, "tare_kg": 9000, "net_kg": net}])


def telemetry(url: str, start_min: float, count: int, step_s: float = 30, **fields: Any) -> None:
    values = {"shift_state": "collecting", "route_id": "r-1", "speed_kmh": 15.0, "lat": 22.5, "lon": 114.005, **fields}
    rows(url, "truck_telemetry", "tr-1", [{"ts": at(start_min, i * step_s), **values} for i in range(count)])


def loads(url: str, start_min: float, kgs: list[float]) -> None:
    rows(url, "truck_telemetry", "tr-1", [{"ts": at(start_min, i * 30), "load_kg": kg, "shift_state": "collecting",
                                           "speed_kmh": 15.0, "lat": 22.5, "lon": 114.005} for i, kg in enumerate(kgs)])


# --- point_not_cleared ------------------------------------------------------------------------------------------


def fleet_on_shift(url: str) -> None:
    """The truck reports at its depot at 07:00 local: the fleet is connected that day, so its pickups are judged."""
    telemetry(url, -60, 1, shift_state="depot", speed_kmh=0.0, lat=22.52, lon=114.0)


def test_a_missed_pickup_fires_at_the_deadline_not_before_and_a_late_round_resolves_it(fresh_db: str) -> None:
    setup(fresh_db)
    fleet_on_shift(fresh_db)
    pickup(60, point="sp-2", url=fresh_db)  # sp-2 was cleared at 09:00: only sp-1's kitchen is overdue
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN - 1), **HALF_DAY)
    assert alerts(fresh_db, "point_not_cleared") == []  # before the deadline: pending, no verdict
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN), **HALF_DAY)
    (alert,) = alerts(fresh_db, "point_not_cleared")
    assert alert["state"] == "firing" and alert["subject"] == "point:sp-1"  # the contract's subject: the point
    assert alert["started_at"] == alert["fired_at"] == at(DEADLINE_MIN)
    assert alert["site_id"] == "sp-1" and alert["labels"]["district"] == "d-1" and alert["labels"]["point"] == "sp-1"
    assert alert["summary"] == "sp-1: kitchen waste not picked up by 2026-03-10 10:00 (overdue)"
    pickup(DEADLINE_MIN + 40, url=fresh_db)  # the late round
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN + 60), **HALF_DAY)
    (alert,) = alerts(fresh_db, "point_not_cleared")
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(DEADLINE_MIN + 40)


def test_a_deadline_passing_without_any_new_row_raises_the_alert_on_an_evaluator_that_judged_the_point_before(
        fresh_db: str) -> None:
    """A kept evaluator judges a point again only when something it depends on changed: the deadline passing is
    such a change though no row arrives (the first passes make its registry and verdicts settled)."""
    setup(fresh_db)
    fleet_on_shift(fresh_db)
    for minute in (DEADLINE_MIN - 3, DEADLINE_MIN - 2, DEADLINE_MIN - 1):
        run(fresh_db, shipped_rules("point_not_cleared"), now=at(minute), **HALF_DAY)
        assert alerts(fresh_db, "point_not_cleared") == []
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN), **HALF_DAY)
    assert [a["subject"] for a in alerts(fresh_db, "point_not_cleared")] == ["point:sp-1", "point:sp-2"]
    pickup(DEADLINE_MIN + 5, point="sp-2", url=fresh_db)
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN + 6), **HALF_DAY)
    states = {a["subject"]: a["state"] for a in alerts(fresh_db, "point_not_cleared")}
    assert states == {"point:sp-1": "firing", "point:sp-2": "resolved"}


def test_a_schedule_moved_earlier_reaches_an_evaluator_that_judged_the_point_before(fresh_db: str) -> None:
    """The registry changes (by a notification): a kept evaluator judges a point again when its schedule did."""
    setup(fresh_db)
    fleet_on_shift(fresh_db)
    pickup(60, point="sp-2", url=fresh_db)
    for minute in (DEADLINE_MIN - 30, DEADLINE_MIN - 20, DEADLINE_MIN - 10):
        run(fresh_db, shipped_rules("point_not_cleared"), now=at(minute), **HALF_DAY)
    assert alerts(fresh_db, "point_not_cleared") == []
    earlier = {"clearance": {**CLEARANCE["clearance"], "kitchen": {"by": "09:30", "every": "daily"}}}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE sites SET params = %s WHERE site_id = 'sp-1'", (Jsonb(earlier),))
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN - 9), **HALF_DAY)
    (alert,) = alerts(fresh_db, "point_not_cleared")
    assert alert["subject"] == "point:sp-1" and alert["started_at"] == at(DEADLINE_MIN - 30)


def test_a_point_missing_two_categories_is_one_alert_naming_both(fresh_db: str) -> None:
    setup(fresh_db)
    fleet_on_shift(fresh_db)
    pickup(60, point="sp-2", category=None, url=fresh_db)
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(10 * 60 + 1), **HALF_DAY)  # 18:01 local: both deadlines passed
    (alert,) = alerts(fresh_db, "point_not_cleared")
    assert alert["subject"] == "point:sp-1" and alert["started_at"] == at(DEADLINE_MIN) and alert["state"] == "firing"
    assert alert["summary"] == "sp-1: kitchen, other waste not picked up by 2026-03-10 10:00 (overdue)"


def test_an_on_time_pickup_raises_nothing_all_day(fresh_db: str) -> None:
    setup(fresh_db)
    fleet_on_shift(fresh_db)
    for i, point in enumerate(("sp-1", "sp-2")):
        pickup(90 + i, point=point, category=None, url=fresh_db)  # 09:30, no category: it empties every bin there
    for minute in (DEADLINE_MIN, 6 * 60, 15 * 60 + 59):  # 10:00, 14:00, 23:59 local
        run(fresh_db, shipped_rules("point_not_cleared"), now=at(minute), **HALF_DAY)
    assert alerts(fresh_db, "point_not_cleared") == []


def test_a_collector_draining_a_backlog_never_makes_a_point_look_missed(fresh_db: str) -> None:
    setup(fresh_db)
    # the wall clock is past the deadline, but the newest device time stored lately is 09:50: the morning's pickups
    # may still be in the backlog, so the deadline is judged against the data clock (not passed yet)
    telemetry(fresh_db, DEADLINE_MIN - 10, 2)
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(DEADLINE_MIN + 30), data_quiet_after=timedelta(minutes=2),
        **HALF_DAY)
    assert alerts(fresh_db, "point_not_cleared") == []


def test_no_verdict_on_a_day_no_truck_reported(fresh_db: str) -> None:
    # sites with schedules, but the fleet sent nothing that day (not connected yet, or its telemetry was lost):
    # a missing pickup is then missing data, not a missed clearance (issue 18: no verdict without data)
    setup(fresh_db)
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(10 * 60 + 1), **HALF_DAY)
    assert alerts(fresh_db, "point_not_cleared") == []
    fleet_on_shift(fresh_db)  # the truck's 07:00 report arrives late: now the day is judged
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(10 * 60 + 2), **HALF_DAY)
    assert [a["subject"] for a in alerts(fresh_db, "point_not_cleared")] == ["point:sp-1", "point:sp-2"]


def test_no_verdict_on_a_deadline_before_the_fleets_first_report(fresh_db: str) -> None:
    # connected at 11:00 local, after the 10:00 kitchen deadline: only the 18:00 deadlines are judged that day
    setup(fresh_db)
    telemetry(fresh_db, DEADLINE_MIN + 60, 1, shift_state="depot", speed_kmh=0.0, lat=22.52, lon=114.0)
    run(fresh_db, shipped_rules("point_not_cleared"), now=at(10 * 60 + 1), **HALF_DAY)  # 18:01 local
    found = alerts(fresh_db, "point_not_cleared")
    assert [(a["subject"], a["started_at"]) for a in found] == [("point:sp-1", at(10 * 60)), ("point:sp-2", at(10 * 60))]
    assert all("kitchen" not in a["summary"] for a in found)


# --- truck_overweight -------------------------------------------------------------------------------------------


def test_an_overweight_truck_fires_on_the_third_of_five_readings_and_resolves_after_tipping(fresh_db: str) -> None:
    setup(fresh_db)
    # rated 8000 kg: jolts (2 of 5 above) at first, then a real overload from reading 5, tipped at reading 10
    loads(fresh_db, 0, [7000, 9000, 7000, 9000, 7000, 8800, 8900, 8900, 9000, 9000, 500, 400, 300])
    run(fresh_db, shipped_rules("truck_overweight"), now=at(30))
    (alert,) = alerts(fresh_db, "truck_overweight")
    # medians of 5: i4 7000, i5 [9000,7000,9000,7000,8800]→8800 = 110 %: fires at reading 5 (3 of 5 above)
    assert alert["started_at"] == alert["fired_at"] == at(0, 5 * 30)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(0, 12 * 30)  # median 500 kg: over
    # the heaviest reading, and the value judged: the median at the episode's last breaching reading (8900 kg)
    assert alert["summary"] == "tr-1: load 9000 kg is 111 % of the rated 8000 kg (median of the last 5 readings)"
    assert alert["threshold"] == 100


def test_load_cell_jolts_never_make_a_truck_overweight(fresh_db: str) -> None:
    setup(fresh_db)
    loads(fresh_db, 0, [7000, 9500, 7000, 9500, 7000, 7200, 9500, 7300, 9500, 7400])  # never 3 of 5 above
    run(fresh_db, shipped_rules("truck_overweight"), now=at(30))
    assert alerts(fresh_db, "truck_overweight") == []


def test_the_rolling_window_spans_passes(fresh_db: str) -> None:
    setup(fresh_db)
    loads(fresh_db, 0, [9000, 9000])
    run(fresh_db, shipped_rules("truck_overweight"), now=at(5))
    assert alerts(fresh_db, "truck_overweight") == []  # 2 readings: no verdict yet
    loads(fresh_db, 1, [9000, 7000, 7000])
    run(fresh_db, shipped_rules("truck_overweight"), now=at(10))
    (alert,) = alerts(fresh_db, "truck_overweight")  # [9000, 9000, 9000, 7000, 7000]: 3 of 5 above
    assert alert["started_at"] == at(2) and alert["state"] == "firing"


# --- load_not_weighed / weighbridge_mismatch --------------------------------------------------------------------


def test_a_load_never_weighed_fires_after_three_hours_not_before_and_resolves_at_the_ticket(fresh_db: str) -> None:
    setup(fresh_db)
    pickup(0, 1200, url=fresh_db)
    pickup(30, 800, url=fresh_db)
    run(fresh_db, shipped_rules("load_not_weighed"), now=at(179))
    assert alerts(fresh_db, "load_not_weighed") == []
    run(fresh_db, shipped_rules("load_not_weighed"), now=at(180))
    (alert,) = alerts(fresh_db, "load_not_weighed")
    assert alert["state"] == "firing" and alert["started_at"] == at(180) and alert["subject"] == "device:tr-1"
    assert alert["value"] == 2000 and alert["threshold"] == 3
    # the first pickup at T0 (08:00 in Shanghai), in the truck's local time
    assert alert["summary"] == "tr-1: 2000 kg picked up since 2026-03-10 08:00 not weighed at a weighbridge within 3 h"
    ticket(200, 2000, url=fresh_db)
    run(fresh_db, shipped_rules("load_not_weighed"), now=at(210))
    (alert,) = alerts(fresh_db, "load_not_weighed")
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(200)


def test_a_load_weighed_within_the_limit_and_matching_raises_nothing(fresh_db: str) -> None:
    setup(fresh_db)
    pickup(0, 2000, url=fresh_db)
    pickup(10, 2000, point="sp-2", url=fresh_db)
    ticket(90, 3900, url=fresh_db)  # 100 kg (2.5 %) off: within both tolerances
    for minute in (100, 300, 600):
        run(fresh_db, shipped_rules("load_not_weighed", "weighbridge_mismatch"), now=at(minute))
    assert alerts(fresh_db) == []


def test_a_ticket_off_the_summed_pickups_is_a_mismatch_until_the_next_ticket(fresh_db: str) -> None:
    setup(fresh_db)
    pickup(0, 2000, url=fresh_db)
    pickup(10, 2000, point="sp-2", url=fresh_db)
    ticket(90, 3000, url=fresh_db)  # 1000 kg (25 %) missing
    run(fresh_db, shipped_rules("weighbridge_mismatch"), now=at(100))
    (alert,) = alerts(fresh_db, "weighbridge_mismatch")
    assert alert["state"] == "firing" and alert["started_at"] == at(90)
    assert alert["summary"] == "tr-1: ticket k-1 net 3000 kg vs 4000 kg picked up (25 % off)"
    pickup(120, 1000, url=fresh_db)
    ticket(200, 1000, url=fresh_db, ticket_id="k-2")  # the next load matches
    run(fresh_db, shipped_rules("weighbridge_mismatch"), now=at(210))
    (alert,) = alerts(fresh_db, "weighbridge_mismatch")
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(200)


# --- truck_off_route / truck_idle -------------------------------------------------------------------------------


def test_a_truck_off_its_route_for_five_minutes_fires(fresh_db: str) -> None:
    setup(fresh_db)
    telemetry(fresh_db, 0, 4)  # on the path between sp-1 and sp-2
    telemetry(fresh_db, 2, 14, lat=22.51)  # ~1.1 km north for 6.5 minutes
    telemetry(fresh_db, 9, 4)  # back
    run(fresh_db, shipped_rules("truck_off_route"), now=at(20))
    (alert,) = alerts(fresh_db, "truck_off_route")
    assert alert["started_at"] == at(2) and alert["fired_at"] == at(7)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(9)
    assert alert["summary"].startswith("tr-1: 1112 m off route r-1 for 5m")


def test_a_short_detour_or_a_drive_to_the_tip_is_not_off_route(fresh_db: str) -> None:
    setup(fresh_db)
    telemetry(fresh_db, 0, 6, lat=22.51)  # 2.5 minutes off the path
    telemetry(fresh_db, 3, 4)
    telemetry(fresh_db, 5, 30, lat=22.53, shift_state="to_tip")  # far away, but not collecting
    run(fresh_db, shipped_rules("truck_off_route"), now=at(30))
    assert alerts(fresh_db, "truck_off_route") == []


def test_a_truck_standing_still_on_shift_beyond_its_idle_limit_fires(fresh_db: str) -> None:
    setup(fresh_db, truck_params={"idle_limit_min": 20})
    telemetry(fresh_db, 0, 50, step_s=30, speed_kmh=0.0)  # 24.5 minutes at a standstill, collecting
    run(fresh_db, shipped_rules("truck_idle"), now=at(30))
    (alert,) = alerts(fresh_db, "truck_idle")
    assert alert["started_at"] == at(0) and alert["fired_at"] == at(20) and alert["state"] == "firing"
    assert alert["threshold"] == 20  # the truck's own limit, not the rule's 30 minutes


def test_a_truck_parked_at_the_depot_is_not_idle(fresh_db: str) -> None:
    setup(fresh_db)
    telemetry(fresh_db, 0, 80, speed_kmh=0.0, shift_state="depot")
    telemetry(fresh_db, 40, 80, speed_kmh=0.0, shift_state="to_route", lat=22.52, lon=114.0)  # at the depot
    run(fresh_db, shipped_rules("truck_idle"), now=at(90))
    assert alerts(fresh_db, "truck_idle") == []


# --- overflow_not_picked_up -------------------------------------------------------------------------------------


def _full_bin(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        add_device(conn, "bin-1", "bin", site="sp-1")
    rows(url, "bin_status", "bin-1", [{"ts": at(m), "fill_level_pct": 95.0} for m in range(0, 60, 5)])


def test_a_truck_passing_a_full_bin_without_a_pickup_fires(fresh_db: str) -> None:
    setup(fresh_db)
    _full_bin(fresh_db)
    telemetry(fresh_db, 30, 4, lon=114.0002)  # ~20 m from sp-1, collecting, no pickup
    telemetry(fresh_db, 40, 1, lon=114.01)  # then on at sp-2: its data goes on past the visit
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(70))
    (alert,) = alerts(fresh_db, "overflow_not_picked_up")
    assert alert["subject"] == "device:bin-1" and alert["started_at"] == at(30) and alert["state"] == "firing"
    assert "truck tr-1" in alert["summary"]


def test_a_visit_stored_after_passes_that_saw_the_full_bin_alone_fires(fresh_db: str) -> None:
    """Pass after pass, the truck's readings arrive in slices — away, at the point, on past it — as a kept
    evaluator tops up what it read before: the visit is found, and judged once the truck's data goes on."""
    setup(fresh_db)
    _full_bin(fresh_db)
    for minute in (25, 26, 27):
        run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(minute))
    telemetry(fresh_db, 28, 2, lon=114.02)  # collecting elsewhere
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(29))
    telemetry(fresh_db, 30, 4, lon=114.0002)  # ~20 m from sp-1, no pickup
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(33))
    assert alerts(fresh_db, "overflow_not_picked_up") == []  # its data has not gone on past the visit yet
    telemetry(fresh_db, 40, 1, lon=114.01)
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(41))
    (alert,) = alerts(fresh_db, "overflow_not_picked_up")
    assert alert["subject"] == "device:bin-1" and alert["started_at"] == at(30) and alert["state"] == "firing"


def test_a_visit_whose_pickup_is_still_on_its_way_raises_nothing(fresh_db: str) -> None:
    """The truck's telemetry at the point is stored, its pickup event not yet (another batch, or a pass between
    two publishes): the visit is not judged until the truck's data goes on past it, and then the pickup is there."""
    setup(fresh_db)
    _full_bin(fresh_db)
    telemetry(fresh_db, 30, 4, lon=114.0002)
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(70))
    pickup(31, url=fresh_db)
    telemetry(fresh_db, 40, 1, lon=114.01)
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(71))
    assert alerts(fresh_db, "overflow_not_picked_up") == []


def test_a_truck_that_lifted_the_full_bin_raises_nothing(fresh_db: str) -> None:
    setup(fresh_db)
    _full_bin(fresh_db)
    telemetry(fresh_db, 30, 4, lon=114.0002)
    pickup(31, url=fresh_db)
    run(fresh_db, shipped_rules("overflow_not_picked_up"), now=at(70))
    assert alerts(fresh_db, "overflow_not_picked_up") == []


# --- the pack as a whole ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("minute", [DEADLINE_MIN - 1])
def test_the_whole_shipped_set_runs_clean_on_a_clean_morning(fresh_db: str, minute: int) -> None:
    setup(fresh_db)
    loads(fresh_db, 0, [1000, 1100, 1200, 1300, 1400, 1500])
    pickup(5, 300, url=fresh_db)
    ticket(60, 310, url=fresh_db)
    shipped = RuleSet()
    for rule in SHIPPED.values():
        shipped.add(rule, "shipped")
    run(fresh_db, shipped, now=at(minute), **HALF_DAY)
    # every truck check evaluated (none quarantined) and none fired; the weighbridge and the truck fall silent after
    # their last rows here (the truck on shift): the offline rules' verdicts (alerts/rules/offline.yaml)
    offline = {"device_offline", "truck_offline"}
    assert [a["rule_id"] for a in alerts(fresh_db) if a["rule_id"] not in offline] == []
    assert at(minute) > T0
