"""The truck alert pack (issue 15 item 4): the rules as data (alerts/rules/truck.yaml, ``kind: builtin``) and the
pure judgements of alerts/trucks.py — deadlines, waits, tolerances, k of n, distances — at fixed instants."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.alerts.queries import Pickup, Ticket, TruckRow
from sanitel.alerts.rules import CheckRule, TruckCheck, limits_for, load_rule_file, smoothing_text, validate_rule_dict
from sanitel.alerts.timeline import Episode, Policy, Status
from sanitel.alerts.trucks import (
    PointGrid,
    clearance_episodes,
    distance_to_path_m,
    held_episodes,
    idle_samples,
    merge,
    mismatch_episodes,
    off_route_samples,
    overflow_episodes,
    overweight_samples,
    unserved,
    unweighed_episodes,
    visits,
)
from sanitel.clearance import ClearanceSchedule, PickupAt
from sanitel.errors import ConfigError
from sanitel.signal_conditions import condition

PACK = Path(__file__).resolve().parents[2] / "alerts" / "rules" / "truck.yaml"
CONTRACT_IDS = {"point_not_cleared", "truck_overweight", "truck_off_route", "truck_idle", "load_not_weighed",
                "weighbridge_mismatch", "overflow_not_picked_up"}
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 3, 10)
T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)  # 08:00 in Shanghai
KITCHEN = ClearanceSchedule("kitchen", time(10, 0), "daily")
DUE = datetime(2026, 3, 10, 10, 0, tzinfo=SHANGHAI)  # the kitchen deadline on DAY


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


def rule(**fields: Any) -> CheckRule:
    base = {"id": "t", "kind": "builtin", "summary": "s", "severity": "minor"}
    found = validate_rule_dict({**base, **fields})
    assert isinstance(found, CheckRule)
    return found


# --- the pack ---------------------------------------------------------------------------------------------------


def test_the_pack_has_exactly_the_contract_rule_ids_and_each_states_its_smoothing() -> None:
    rules = {r.id: r for r in load_rule_file(PACK)}
    assert set(rules) == CONTRACT_IDS == set(get_args(TruckCheck))
    for r in rules.values():
        assert isinstance(r, CheckRule) and r.check == r.id
        assert r.smoothing is not None and smoothing_text(r), r.id
        assert r.labels.get("team") and r.severity


def test_overweight_judges_the_shared_condition_three_of_five() -> None:
    r = {x.id: x for x in load_rule_file(PACK)}["truck_overweight"]
    assert isinstance(r, CheckRule) and r.condition == "truck_overweight"
    assert smoothing_text(r) == "median of the last 5 readings"
    assert (r.threshold, r.clear) == (100.0, 95.0)


def test_a_site_limit_moves_a_check_and_disabled_rules_switch_it_off() -> None:
    r = {x.id: x for x in load_rule_file(PACK)}["truck_off_route"]
    assert limits_for(r, {}) is not None and limits_for(r, {}).threshold == 300  # type: ignore[union-attr]
    assert limits_for(r, {"limits": {"truck_off_route": 500}}).threshold == 500  # type: ignore[union-attr]
    assert limits_for(r, {"disabled_rules": ["truck_*"]}) is None


@pytest.mark.parametrize(("fields", "key"), [
    ({"check": "truck_off_route", "for": "5m", "smoothing": "for"}, "distance_m"),  # missing
    ({"check": "point_not_cleared", "distance_m": 3, "smoothing": {"none": "x"}}, "distance_m"),  # not used
    ({"check": "truck_overweight", "condition": "bin_full"}, "condition"),  # a condition on another field
    ({"check": "truck_overweight", "condition": "truck_overweight", "smoothing": {"median": 3}}, "smoothing"),
    ({"check": "load_not_weighed", "within": "3h", "smoothing": {"median": 5}}, "smoothing"),  # no condition
    ({"check": "no_such_check"}, "check"),
])
def test_a_bad_check_rule_names_the_key_and_the_fix(fields: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        rule(**fields)
    assert f"key '{key}'" in str(err.value) and "fix:" in str(err.value)


def test_a_summary_placeholder_of_another_check_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        rule(check="load_not_weighed", within="3h", smoothing={"none": "x"}, summary="{ticket_id}")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(["3h", "5m", "bin_full", "truck_overweight", "for", *get_args(TruckCheck)]),
                    st.dictionaries(st.sampled_from(["median", "none", "x"]), st.integers(0, 9) | st.text(max_size=3),
                                    max_size=2))
_KEYS = st.sampled_from(["check", "condition", "distance_m", "for", "within", "tolerance_pct", "tolerance_kg",
                         "smoothing", "summary", "scope", "threshold"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_validating_any_builtin_rule_never_raises_anything_but_a_config_error(fields: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        rule(**fields)


# --- point_not_cleared -------------------------------------------------------------------------------------------


def test_no_alert_before_the_deadline_and_one_from_the_deadline_when_nothing_was_picked_up() -> None:
    before = DUE - timedelta(seconds=1)
    assert clearance_episodes(KITCHEN, [DAY], SHANGHAI, [], before) == []
    ((episode, details),) = clearance_episodes(KITCHEN, [DAY], SHANGHAI, [], DUE)
    assert episode.start == episode.fire_at == DUE and episode.open
    assert details == {"category": "kitchen", "status": "overdue", "deadline": "2026-03-10 10:00"}


def test_an_on_time_pickup_or_one_of_no_category_clears_and_another_category_does_not() -> None:
    on_time = [PickupAt("kitchen", DUE - timedelta(minutes=30))]
    assert clearance_episodes(KITCHEN, [DAY], SHANGHAI, on_time, DUE + timedelta(hours=5)) == []
    assert clearance_episodes(KITCHEN, [DAY], SHANGHAI, [PickupAt(None, DUE)], DUE + timedelta(hours=1)) == []
    wrong = [PickupAt("other", DUE - timedelta(minutes=30))]
    assert len(clearance_episodes(KITCHEN, [DAY], SHANGHAI, wrong, DUE + timedelta(hours=1))) == 1


def test_a_late_round_is_an_episode_from_the_deadline_to_the_pickup() -> None:
    late = DUE + timedelta(minutes=50)
    ((episode, details),) = clearance_episodes(KITCHEN, [DAY], SHANGHAI, [PickupAt("kitchen", late)], late)
    assert (episode.start, episode.resolved_at, episode.last_value) == (DUE, late, 50)
    assert details["status"] == "late"


def test_two_missed_days_without_a_pickup_between_are_one_episode() -> None:
    found = clearance_episodes(KITCHEN, [DAY, DAY + timedelta(days=1)], SHANGHAI, [], DUE + timedelta(days=1, hours=1))
    ((episode, details),) = found
    assert episode.start == DUE and episode.open and details["status"] == "missed"


def test_merge_keeps_separate_episodes_apart() -> None:
    a = Episode(minutes(0), minutes(0), minutes(5), minutes(5), 1.0, 1.0)
    b = Episode(minutes(10), minutes(10), None, None, 2.0, 2.0)
    assert [e for e, _ in merge([(b, {}), (a, {})])] == [a, b]


# --- load_not_weighed / weighbridge_mismatch --------------------------------------------------------------------


def pickup(m: float, kg: float, truck: str = "tr-1", point: str = "sp-1") -> Pickup:
    return Pickup(truck, minutes(m), point, "kitchen", kg)


def ticket(m: float, net: float, truck: str = "tr-1", ticket_id: str = "k1") -> Ticket:
    return Ticket(truck, minutes(m), ticket_id, net)


def test_a_load_is_unweighed_only_once_the_wait_is_over() -> None:
    loads = [pickup(0, 100), pickup(30, 150)]
    three_h = timedelta(hours=3)
    assert unweighed_episodes(loads, [], three_h, minutes(179)) == []
    ((episode, details),) = unweighed_episodes(loads, [], three_h, minutes(180))
    assert episode.start == minutes(180) and episode.open and details["pickups_kg"] == 250
    # a ticket within the wait: nothing; a ticket after it resolves the episode there
    assert unweighed_episodes(loads, [ticket(170, 240)], three_h, minutes(400)) == []
    ((late, _),) = unweighed_episodes(loads, [ticket(200, 240)], three_h, minutes(400))
    assert (late.start, late.resolved_at) == (minutes(180), minutes(200))


def test_empty_lifts_start_no_wait() -> None:
    assert unweighed_episodes([pickup(0, 0)], [], timedelta(hours=3), minutes(600)) == []


def test_a_ticket_within_the_tolerances_is_no_mismatch() -> None:
    loads = [pickup(0, 2000), pickup(10, 2000)]
    assert mismatch_episodes(loads, [ticket(60, 4300)], minutes(-60), 10, 200) == []  # 7.5 %
    assert mismatch_episodes(loads, [ticket(60, 3850)], minutes(-60), 10, 200) == []  # 150 kg
    small = [pickup(0, 500)]
    assert mismatch_episodes(small, [ticket(60, 680)], minutes(-60), 10, 200) == []  # 36 % but only 180 kg


def test_a_ticket_off_by_both_tolerances_is_a_mismatch_until_the_next_ticket() -> None:
    loads = [pickup(0, 2000), pickup(10, 2000), pickup(120, 1000)]
    found = mismatch_episodes(loads, [ticket(60, 3000), ticket(180, 1000, ticket_id="k2")], minutes(-60), 10, 200)
    ((episode, details),) = found
    assert (episode.start, episode.resolved_at) == (minutes(60), minutes(180))
    assert details == {"ticket_id": "k1", "net_kg": 3000, "pickups_kg": 4000, "difference_pct": 25.0}


def test_tickets_before_the_judged_span_are_context_only() -> None:
    loads = [pickup(0, 2000)]
    assert mismatch_episodes(loads, [ticket(60, 500)], minutes(61), 10, 200) == []


# --- telemetry checks -------------------------------------------------------------------------------------------


def row(m: float, *, load: float | None = None, speed: float | None = 20.0, state: str | None = "collecting",
        lat: float | None = None, lon: float | None = None, route: str | None = "r-1", rated: float | None = None,
        lookback: bool = False) -> TruckRow:
    return TruckRow(minutes(m), lat, lon, speed, load, rated, route, state, lookback)


def test_overweight_needs_three_of_five_readings_above_the_rated_payload() -> None:
    # jolts: 2 of 5 above 100 % keep the median below; 3 of 5 breach; then 97 % holds (95-100: dead band)
    loads = [7000, 9000, 7000, 9000, 7000, 7000, 9000, 9000, 9000, 7760, 7760, 7760, 7000, 7000, 7000]
    samples = overweight_samples([row(i, load=v) for i, v in enumerate(loads)], 8000, 100, 95)
    statuses = [s.status for s in samples]
    assert statuses[:4] == [Status.SKIP] * 4  # no verdict before a full window
    assert statuses[4:7] == [Status.CLEAR] * 3  # 2 of 5 above, three times over
    assert statuses[7] == Status.BREACH  # [9000, 7000, 7000, 9000, 9000]: 3 of 5
    assert statuses[11:14] == [Status.HOLD] * 3  # median 7760 kg = 97 %
    ((episode),) = held_episodes(samples, Policy())
    assert (episode.start, episode.resolved_at) == (minutes(7), minutes(14))  # median 7000 kg = 87.5 % ends it
    assert episode.peak == pytest.approx(112.5)


def test_overweight_takes_the_rated_payload_of_the_reading_without_a_registry_one() -> None:
    samples = overweight_samples([row(i, load=9000, rated=8000) for i in range(5)], None, 100, 95)
    assert samples[-1].status == Status.BREACH and samples[-1].value == pytest.approx(112.5)
    assert overweight_samples([row(i, load=9000) for i in range(5)], None, 100, 95) == []  # rated unknown


def test_look_back_readings_fill_the_window_without_samples() -> None:
    rows = [row(i, load=9000, lookback=True) for i in range(4)] + [row(4, load=9000)]
    (sample,) = overweight_samples(rows, 8000, 100, 95)
    assert sample.status == Status.BREACH and sample.ts == minutes(4)


def test_distances_to_a_path() -> None:
    path = [(22.5, 114.0), (22.5, 114.01)]  # about 1 km east-west
    assert distance_to_path_m(22.5, 114.005, path) == pytest.approx(0, abs=0.01)
    assert distance_to_path_m(22.5027, 114.005, path) == pytest.approx(300, rel=0.01)  # 0.0027° north ≈ 300 m
    assert distance_to_path_m(22.5, 114.02, path) == pytest.approx(1028, rel=0.01)  # past the end: to the end point


def test_off_route_fires_after_five_minutes_far_and_not_for_a_short_detour() -> None:
    paths: dict[str | None, list[tuple[float, float]]] = {"r-1": [(22.5, 114.0), (22.5, 114.01)]}
    far = [row(m, lat=22.51, lon=114.005) for m in range(0, 7)]  # ~1.1 km off for 6 minutes
    ((episode),) = held_episodes(off_route_samples(far, paths, 300), Policy(for_=timedelta(minutes=5)))
    assert episode.start == minutes(0) and episode.fire_at == minutes(5)
    short = [*far[:4], row(4, lat=22.5, lon=114.005)]
    (pending,) = held_episodes(off_route_samples(short, paths, 300), Policy(for_=timedelta(minutes=5)))
    assert pending.fire_at is None
    tipping = [row(m, lat=22.51, lon=114.005, state="to_tip") for m in range(0, 10)]
    assert held_episodes(off_route_samples(tipping, paths, 300), Policy(for_=timedelta(minutes=5))) == []


def test_idle_counts_only_on_shift_away_from_the_depot() -> None:
    stopped = [row(m, speed=0, lat=22.5, lon=114.0) for m in range(0, 31)]
    ((episode),) = held_episodes(idle_samples(stopped, None), Policy(for_=timedelta(minutes=30)))
    assert episode.fire_at == minutes(30)
    assert held_episodes(idle_samples(stopped, (22.5, 114.0)), Policy(for_=timedelta(minutes=30))) == []  # depot
    resting = [row(m, speed=0, state="depot") for m in range(0, 40)]
    assert held_episodes(idle_samples(resting, None), Policy(for_=timedelta(minutes=30))) == []


def test_a_visit_without_a_pickup_while_the_bin_is_full_is_an_overflow_not_picked_up() -> None:
    near = [("tr-1", minutes(m), "sp-1") for m in (10, 11, 12)] + [("tr-2", minutes(40), "sp-1")]
    found = visits(near)
    assert [(v.truck_id, v.start, v.end) for v in found] == [("tr-1", minutes(10), minutes(12)),
                                                            ("tr-2", minutes(40), minutes(40))]
    heard = {"tr-1": minutes(50), "tr-2": minutes(50)}  # both drove on: their pickups there would be stored by now
    missed = unserved(found, [pickup(11, 80, truck="tr-1")], heard)  # tr-1 lifted the bin; tr-2 drove past
    assert [v.truck_id for v in missed] == ["tr-2"]
    # a visit the truck's data does not yet go past (by more than the slack) is not judged: its pickup may be on
    # its way, or still being made
    assert unserved(found, [], {"tr-1": minutes(50), "tr-2": minutes(45)}) == [found[0]]
    assert unserved(found, [], {"tr-1": minutes(17), "tr-2": minutes(40)}) == []
    full = [Episode(minutes(0), minutes(0), minutes(60), minutes(60), 95.0, 91.0)]
    ((episode, details),) = overflow_episodes(full, missed)
    assert (episode.start, episode.resolved_at, details["truck_id"]) == (minutes(40), minutes(60), "tr-2")
    assert overflow_episodes(full, []) == []


def test_the_overflow_check_reads_the_shared_bin_full_condition() -> None:
    r = {x.id: x for x in load_rule_file(PACK)}["overflow_not_picked_up"]
    assert isinstance(r, CheckRule) and r.condition == "bin_full"
    assert (r.threshold, r.clear) == condition("bin_full").limits()


# --- incidents ----------------------------------------------------------------------------------------------------


def test_incidents_rank_the_missed_round_first_keep_trucks_apart_and_hold_a_silent_trucks_positions() -> None:
    from sanitel.alerts.incidents import load_incident_rules

    rules = load_incident_rules()
    assert "truck" in rules.own_place_kinds  # a truck's alerts are its own incident, not its depot's
    assert rules.rank("point_not_cleared") < rules.rank("overflow_not_picked_up") < rules.rank("bin_overflow")
    assert rules.rank("truck_off_route") < rules.rank("load_not_weighed")
    (held,) = [r for r in rules.inhibit if r.name == "device_offline_holds_truck_positions"]
    assert held.alerts == ("device_offline", "truck_offline")
    assert held.target.matches("truck_idle", None) and held.target.matches("truck_off_route", None)
    assert not held.target.matches("truck_overweight", None)  # a load measured before the silence still holds


# --- PointGrid: the overflow check's points near a truck ---------------------------------------------------------

_CITY_LAT = st.floats(22.4, 22.9)  # Shenzhen's span, and far north where a degree of longitude is short
_NORTH_LAT = st.floats(59.0, 60.0)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([_CITY_LAT, _NORTH_LAT]), st.floats(5.0, 300.0))
def test_the_grid_finds_exactly_the_points_a_measurement_of_each_would(data: st.DataObject,
                                                                      lats: st.SearchStrategy[float],
                                                                      radius: float) -> None:
    """Against measuring every point: points and positions within a few radii of each other, so that many are
    near, many just beyond — at a city's latitude and far north, where cells must be wider in longitude."""
    base_lat = data.draw(lats)
    spread = 4 * radius / 111_000.0
    coord = st.tuples(st.floats(base_lat - spread, base_lat + spread), st.floats(114.0 - 3 * spread, 114.0 + 3 * spread))
    places = {f"p{i}": p for i, p in enumerate(data.draw(st.lists(coord, min_size=1, max_size=30)))}
    grid = PointGrid(places, radius)
    for lat, lon in data.draw(st.lists(coord, min_size=1, max_size=20)):
        measured = {p for p, (plat, plon) in places.items() if distance_to_path_m(lat, lon, [(plat, plon)]) <= radius}
        assert set(grid.near(lat, lon)) == measured
