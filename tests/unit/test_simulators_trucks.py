"""Collection trucks in the simulators (issue 15 item 6): routes in order, plausible weights, tips with weighbridge
tickets whose arithmetic holds, the six truck faults each with its ground truth, none on a clean day, and the other
devices unchanged by the trucks."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.errors import ConfigError
from sanitel.schemas.readings import TruckEvent, TruckTelemetry, WeighbridgeTicket
from sanitel.simulators.clock import parse_instant
from sanitel.simulators.contract import check_message
from sanitel.simulators.faults import FaultSpec
from sanitel.simulators.models.routes import District, distance_to_path
from sanitel.simulators.models.station import Weighbridge
from sanitel.simulators.models.truck import (
    BIN_KG,
    LIFTER_ERROR,
    MISMATCH_KG,
    MISMATCH_SHARE,
    OFF_ROUTE_FOR_S,
    OFF_ROUTE_M,
    SHIFT_FAULTS,
    TELEMATICS_OUTAGE,
    WEIGH_WITHIN_S,
    Stop,
    Truck,
    order_stops,
)
from sanitel.simulators.run import Faults, Simulation, inventory, inventory_routes, inventory_sites, shard_models
from sanitel.simulators.scenario import Scenario, load_scenario, parse_scenario
from sanitel.simulators.truth import TruthRecord

DAY = "2026-03-09T00:00:00+08:00"  # a whole local day: the 05:00 shift and every clearance deadline lie in it
CLEARANCE = {"kitchen": {"by": "10:00"}, "other": {"by": "18:00"}, "recyclable": {"by": "18:00"}}
SMALL: dict[str, Any] = {
    "name": "trucks", "timezone": "Asia/Shanghai",
    "districts": [{"id": "futian", "lat": 22.5431, "lon": 114.0579, "radius_km": 2}],
    "stations": {"count": 2},
    "sorting_points": {"count": 8, "cameras": 0, "households": [100, 200], "clearance": CLEARANCE},
    "trucks": {"count": 2, "points_per_route": 4},
}
Sent = tuple[str, dict[str, Any], float]


def small(**changes: Any) -> Scenario:
    return parse_scenario({**SMALL, **changes})


def run(scenario: Scenario, faults: Faults = (), seed: int = 3) -> tuple[list[Sent], Simulation]:
    sim = Simulation(scenario, seed=seed, start=parse_instant(DAY), duration_s=86_400.0, faults=faults)
    sent = [(m.topic, _body(m.payload), m.t) for m in sim.messages()]
    sim.finish(sim.end)
    return sent, sim


def _body(payload: bytes) -> dict[str, Any]:
    """A JSON reading; anything else (an HJ 212 frame, a payload a fault cut short) kept as its bytes."""
    try:
        body = json.loads(payload)
    except ValueError:
        return {"raw": payload}
    return body if isinstance(body, dict) else {"batch": body}


@cache
def clean_day() -> tuple[list[Sent], Simulation]:
    return run(small())


def truck_records(sim: Simulation) -> list[TruthRecord]:
    return [r for r in sim.truth.records if r.kind == "truck"]


def of(sent: list[Sent], kind: str, device: str | None = None, stream: str | None = None) -> list[Sent]:
    out = []
    for topic, body, t in sent:
        _, _, k, d, s = topic.split("/")
        if k == kind and device in (None, d) and stream in (None, s):
            out.append((topic, body, t))
    return out


# --- routes ----------------------------------------------------------------------------------------------------------


def test_route_order_is_nearest_neighbour_from_the_depot() -> None:
    stops = [Stop("sp-3", 300.0, 0.0, ()), Stop("sp-1", 100.0, 0.0, ()), Stop("sp-9", -50.0, 0.0, ()),
             Stop("sp-2", 200.0, 10.0, ())]
    assert [s.point_id for s in order_stops((0.0, 0.0), stops)] == ["sp-9", "sp-1", "sp-2", "sp-3"]
    assert order_stops((0.0, 0.0), []) == []


def test_routes_cover_each_point_once_and_tip_at_a_station() -> None:
    routes = inventory_routes("district", seed=1)
    assert len(routes) == 10
    seen = [p for r in routes for p in r["points"]]
    assert len(seen) == len(set(seen)) == 150  # 10 trucks × 15 points: every point of the district, once
    for r in routes:
        assert set(r) == {"route_id", "truck_id", "shift_start", "shift_end", "points", "tip_site_id", "valid_from",
                          "valid_to"}
        assert r["tip_site_id"].startswith("ts-") and (r["shift_start"], r["shift_end"]) == ("05:00", "12:00")
        assert 1 <= len(r["points"]) <= 15


def test_a_truck_works_its_route_in_order_then_tips_and_returns() -> None:
    sent, _ = clean_day()
    routes = {r["truck_id"]: r for r in inventory_routes(small(), seed=3)}
    for truck_id, route in routes.items():
        events = [body for _, body, _ in of(sent, "truck", truck_id, "event")]
        pickups = [e for e in events if e["event"] == "pickup"]
        visited = list(dict.fromkeys(e["point_id"] for e in pickups))
        assert visited == route["points"], "the points in the planned order"
        assert len(pickups) == 4 * len(route["points"])  # every bin of every point, once
        assert [e["event"] for e in events][-1] == "tip" and events[-1]["site_id"] == route["tip_site_id"]
        states = [body["shift_state"] for _, body, _ in of(sent, "truck", truck_id, "telemetry")]
        order = list(dict.fromkeys(states))
        assert order == ["off_shift", "depot", "to_route", "collecting", "to_tip", "tipping", "returning"]
        assert states[-1] == "off_shift"


def test_pickup_weights_are_plausible_and_the_load_rises_with_them() -> None:
    sent, _ = clean_day()
    for _, body, _ in of(sent, "truck", stream="event"):
        if body["event"] != "pickup":
            continue
        lo, hi, _mode = BIN_KG[body["category"]]
        assert lo * (1 - LIFTER_ERROR) - 0.1 <= body["weight_kg"] <= hi * (1 + LIFTER_ERROR) + 0.1
        assert body["bin_tag"].startswith(f"bin-{body['point_id'].removeprefix('sp-')}-")
    loads = [body["load_kg"] for _, body, _ in of(sent, "truck", "tk-0001", "telemetry")]
    peak = loads.index(max(loads))
    assert max(loads) > 0 and loads[:peak] == sorted(loads[:peak]), "the load only rises until the tip"


def test_every_tip_has_a_ticket_whose_net_is_gross_minus_tare_and_matches_the_pickups() -> None:
    sent, _ = clean_day()
    tickets = [body for _, body, _ in of(sent, "transfer_station", stream="event")]
    assert len(tickets) == 2  # one per truck
    for ticket in tickets:
        assert ticket["net_kg"] == ticket["gross_kg"] - ticket["tare_kg"] and ticket["direction"] == "in"
        picked = sum(b["weight_kg"] for _, b, _ in of(sent, "truck", ticket["truck_id"], "event")
                     if b["event"] == "pickup")
        assert abs(ticket["net_kg"] - picked) <= max(0.03 * picked, 20.0)
        tip = next(b for _, b, _ in of(sent, "truck", ticket["truck_id"], "event") if b["event"] == "tip")
        assert abs(tip["weight_kg"] - picked) <= 0.03 * picked


def test_weighbridge_ticket_arithmetic() -> None:
    bridge = Weighbridge("ts-0001", seed=1, city="shenzhen")
    gross, tare = bridge.weigh(12_345.6), bridge.weigh(9_004.9)
    assert (gross, tare) == (12_350.0, 9_000.0)  # whole 10 kg divisions
    first = bridge.ticket(100.0, "tk-0001", gross, tare)
    second = bridge.ticket(200.0, "tk-0002", gross, tare, category="kitchen")
    assert first.topic == "sanitation/shenzhen/transfer_station/ts-0001/event"
    assert first.body["net_kg"] == 3_350.0 and first.body["truck_id"] == "tk-0001"
    assert second.body["category"] == "kitchen" and "category" not in first.body
    assert int(second.body["ticket_id"][-6:]) == int(first.body["ticket_id"][-6:]) + 1
    assert second.body["seq"] == first.body["seq"] + 1


def test_truck_messages_keep_the_wire_contract() -> None:
    sent, _ = clean_day()
    sim = Simulation(small(), seed=3, start=parse_instant(DAY), duration_s=86_400.0)
    kinds: dict[type, int] = defaultdict(int)
    for message in sim.messages():
        if "/truck/" in message.topic or (message.topic.endswith("/event") and "/transfer_station/" in message.topic):
            for checked in check_message(message.topic, message.payload):
                kinds[type(checked.reading)] += 1
                problem = getattr(checked.reading, "problem", lambda: None)()
                assert problem is None, problem
    assert set(kinds) == {TruckTelemetry, TruckEvent, WeighbridgeTicket}
    electric = [b for _, b, _ in of(sent, "truck", stream="telemetry") if b["powertrain"] in ("electric", "hybrid")]
    diesel = [b for _, b, _ in of(sent, "truck", stream="telemetry") if b["powertrain"] in ("diesel", "cng")]
    assert all("soc_pct" in b and "pack_voltage_v" in b for b in electric)
    assert all("soc_pct" not in b for b in diesel)


# --- ground truth ----------------------------------------------------------------------------------------------------


def test_a_clean_day_has_no_truck_ground_truth() -> None:
    _, sim = clean_day()
    assert truck_records(sim) == []


def test_a_clean_district_day_has_no_truck_ground_truth() -> None:
    _, sim = run(load_scenario("district").scaled(0.1), seed=29)
    assert truck_records(sim) == []


EXPECTED_ALERT = {"missed_pickup": "point_not_cleared", "late_round": "point_not_cleared",
                  "overweight": "truck_overweight", "off_route": "truck_off_route",
                  "never_weighed": "load_not_weighed", "weighbridge_mismatch": "weighbridge_mismatch"}


@pytest.mark.parametrize("fault", SHIFT_FAULTS)
def test_each_truck_fault_gives_its_ground_truth_and_nothing_else(fault: str) -> None:
    sent, sim = run(small(), faults=fault)
    records = truck_records(sim)
    assert records, f"{fault} left no record"
    assert {r.fault for r in records} == {fault} and {r.source for r in records} == {"injected"}
    assert {r.expected_effect["alert"] for r in records} == {EXPECTED_ALERT[fault]}
    truck = records[0].device_id
    assert {r.device_id for r in records} == {truck}
    for r in records:
        assert sim.start <= r.start <= r.end <= sim.end and r.messages > 0
    CHECKS[fault](sent, sim, truck, records)


def _missed(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    point = records[0].details["point_id"]
    assert not [b for _, b, _ in of(sent, "truck", truck, "event") if b.get("point_id") == point]
    assert sorted(r.details["category"] for r in records) == ["kitchen", "other", "recyclable"]
    assert {r.details["verdict"] for r in records} == {"missed"} and all(r.end == sim.end for r in records)


def _late(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    kitchen = [b for _, b, t in of(sent, "truck", truck, "event") if b.get("category") == "kitchen"]
    assert len(records) == len(kitchen) == 4  # every kitchen bin of the route: picked after 10:00
    deadline = parse_instant("2026-03-09T10:00:00+08:00")
    for r in records:
        assert r.details["verdict"] == "late" and r.start == deadline < r.end


def _overweight(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    (record,) = records
    over = [t for _, b, t in of(sent, "truck", truck, "telemetry") if b["load_kg"] > b["rated_payload_kg"]]
    assert len(over) >= 5 and record.start <= over[0] and over[-1] <= record.end


def _off_route(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    (record,) = records
    route = next(r for r in sim.fleet.layout.routes if r.truck_id == truck)  # type: ignore[union-attr]
    district, path = route.district, route.path()
    def off_path(body: dict[str, Any]) -> float:
        x, y = district.to_xy(body["lat"], body["lon"])
        return distance_to_path(x, y, path)

    off = [t for _, b, t in of(sent, "truck", truck, "telemetry")
           if b["shift_state"] == "collecting" and off_path(b) > OFF_ROUTE_M]
    assert off and off[-1] - off[0] > OFF_ROUTE_FOR_S
    assert record.start <= off[0] and off[-1] <= record.end


def _never_weighed(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    (record,) = records
    events = [b for _, b, _ in of(sent, "truck", truck, "event")]
    assert events and {e["event"] for e in events} == {"pickup"}
    assert not [b for _, b, _ in of(sent, "transfer_station", stream="event") if b["truck_id"] == truck]
    first = min(t for _, b, t in of(sent, "truck", truck, "event"))
    assert math.isclose(record.start, first, abs_tol=0.01) and record.end - record.start > WEIGH_WITHIN_S


def _mismatch(sent: list[Sent], sim: Simulation, truck: str, records: list[TruthRecord]) -> None:
    (record,) = records
    (ticket,) = [b for _, b, _ in of(sent, "transfer_station", stream="event") if b["truck_id"] == truck]
    picked = sum(b["weight_kg"] for _, b, _ in of(sent, "truck", truck, "event") if b["event"] == "pickup")
    diff = abs(picked - ticket["net_kg"])
    assert diff > MISMATCH_SHARE * picked and diff > MISMATCH_KG
    assert record.details["net_kg"] == ticket["net_kg"]


CHECKS = {"missed_pickup": _missed, "late_round": _late, "overweight": _overweight, "off_route": _off_route,
          "never_weighed": _never_weighed, "weighbridge_mismatch": _mismatch}


def test_faults_all_puts_each_truck_fault_on_its_own_truck_when_the_fleet_has_enough() -> None:
    truck_faults = {*SHIFT_FAULTS, TELEMATICS_OUTAGE}
    _, sim = run(small(trucks={"count": len(truck_faults), "points_per_route": 2}), faults="all")
    injected = [r for r in truck_records(sim) if r.source == "injected"]
    assert {r.fault for r in injected} == truck_faults
    by_fault = {r.fault: r.device_id for r in injected}
    assert len(set(by_fault.values())) == len(truck_faults)
    assert not [r for r in truck_records(sim) if r.source == "model"]


def test_never_weighed_and_a_mismatch_on_one_truck_take_different_shifts() -> None:
    specs = [FaultSpec(kind="never_weighed", devices=["tk-0001"]),
             FaultSpec(kind="weighbridge_mismatch", devices=["tk-0001"])]
    _, sim = run(small(), faults=specs)
    assert {r.fault for r in truck_records(sim)} == {"never_weighed"}  # the mismatch waits for the next day
    assert sim.injector is not None


def test_a_station_fault_does_not_touch_the_weighbridge_tickets() -> None:
    spec = FaultSpec(kind="malformed", devices=["ts-0001", "ts-0002"], device_kind="transfer_station",
                     reason="out_of_range", after=0.0, duration=86_400.0)
    sent, sim = run(small(), faults=[spec])
    tickets = [b for _, b, _ in of(sent, "transfer_station", stream="event")]
    assert len(tickets) == 2 and all(b["net_kg"] == b["gross_kg"] - b["tare_kg"] < 100_000 for b in tickets)
    assert truck_records(sim) == []


# --- determinism and the other devices ------------------------------------------------------------------------------


def per_device(sent: list[Sent], skip: tuple[str, ...]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for topic, body, t in sent:
        if not any(s in topic for s in skip):
            out[topic].append((body, t))
    return out


def test_other_devices_send_the_same_with_or_without_trucks() -> None:
    with_trucks = small(sweepers={"count": 2}, stations={"count": 2})
    without = small(sweepers={"count": 2}, stations={"count": 2}, trucks={"count": 0})
    a, _ = run(with_trucks, faults="spike,silence,duplicate")
    b, _ = run(without, faults="spike,silence,duplicate")
    skip = ("/truck/", "/transfer_station/ts-0001/event", "/transfer_station/ts-0002/event")
    assert per_device(a, skip) == per_device(b, skip)


def test_trucks_are_deterministic_per_seed() -> None:
    first = Simulation(small(), seed=8, start=parse_instant(DAY), duration_s=43_200.0, faults="all")
    second = Simulation(small(), seed=8, start=parse_instant(DAY), duration_s=43_200.0, faults="all")
    other = Simulation(small(), seed=9, start=parse_instant(DAY), duration_s=43_200.0, faults="all")
    one, two, three = ([m.payload for m in s.messages() if "/truck/" in m.topic] for s in (first, second, other))
    assert one == two and one != three


# --- inventory and scenario ---------------------------------------------------------------------------------------


def test_inventory_lists_trucks_with_their_registry_params_and_sites_with_clearance() -> None:
    trucks = [d for d in inventory(small(), seed=3) if d["kind"] == "truck"]
    assert [d["device_id"] for d in trucks] == ["tk-0001", "tk-0002"]
    params = trucks[0]["metadata"]["params"]
    assert params == {"rated_payload_kg": 8000.0, "depot_site_id": "dp-futian", "idle_limit_min": 30}
    assert trucks[0]["site_id"] == "dp-futian" and trucks[0]["metadata"]["route_id"] == "rt-0001"
    sites = {s["site_id"]: s for s in inventory_sites(small(), seed=3)}
    assert sites["dp-futian"]["kind"] == "depot" and sites["ts-0001"]["parent_id"] == "futian"
    point = sites["sp-00001"]
    assert point["kind"] == "sorting_point" and point["parent_id"] == "es-00001"
    assert point["params"]["clearance"] == {"kitchen": {"by": "10:00", "every": "daily"},
                                            "other": {"by": "18:00", "every": "daily"},
                                            "recyclable": {"by": "18:00", "every": "daily"}}
    # a scenario without trucks lays out no routes and no truck sites (the demo has six trucks since issue 14)
    no_trucks = small(trucks={"count": 0})
    assert inventory_routes(no_trucks) == [] and inventory_sites(no_trucks) == []
    assert len(inventory_routes("demo")) == 6


def test_shipped_scenarios_have_their_trucks() -> None:
    assert load_scenario("shenzhen").trucks.count == 2500
    assert 1 <= load_scenario("district").trucks.count <= 20
    assert load_scenario("shenzhen").scaled(0.01).trucks.count == 25
    assert load_scenario("district").device_counts()["truck"] == 10


@pytest.mark.parametrize(("changes", "message"), [
    ({"stations": {"count": 0}}, "trucks need 'districts'"),
    ({"sorting_points": {"count": 4, "categories": ["kitchen"], "clearance": {"other": {"by": "18:00"}}}},
     "clearance names other, which the points have no bin for"),
    ({"trucks": {"count": 1, "shift": "5 to 12"}}, "trucks.shift"),
    ({"trucks": {"count": 1, "powertrains": {"steam": 1.0}}}, "trucks.powertrains.steam"),
    ({"trucks": {"count": 1, "pointsper_route": 3}}, "did you mean 'points_per_route'"),
])
def test_bad_truck_settings_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small(**changes)


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 100_000), st.floats(allow_nan=True),
                    st.text(max_size=8), st.lists(st.integers(0, 10), max_size=3))
_KEYS = st.sampled_from(["count", "interval", "parked_interval", "shift", "points_per_route", "rated_payload_kg",
                         "idle_limit_min", "powertrains", "ts_format", "x"])


@settings(max_examples=150, deadline=None)
@given(trucks=st.dictionaries(_KEYS, _VALUES, max_size=5),
       clearance=st.dictionaries(st.sampled_from(["kitchen", "other", "paper"]),
                                 st.one_of(_VALUES, st.fixed_dictionaries({"by": _VALUES})), max_size=2))
def test_parsing_truck_settings_never_raises_anything_but_a_config_error(trucks: dict[str, Any],
                                                                          clearance: dict[str, Any]) -> None:
    try:
        parse_scenario({**SMALL, "trucks": trucks,
                        "sorting_points": {**SMALL["sorting_points"], "clearance": clearance}})
    except ConfigError as exc:
        assert "trucks" in str(exc) or "clearance" in str(exc)


def test_a_district_placed_site_converts_both_ways() -> None:
    district = District("d", 22.5, 114.0, 4000.0)
    x, y = district.to_xy(*district.to_latlon(1234.0, -567.0))
    assert math.isclose(x, 1234.0, abs_tol=1e-6) and math.isclose(y, -567.0, abs_tol=1e-6)


def test_workers_keep_each_truck_with_the_station_that_tickets_it() -> None:
    """With --credentials a ticket goes out as its station, over the station's connection: the truck must be stepped
    in the worker that holds that station; every other model keeps its place in the every-n-th split."""
    sim = Simulation(small(trucks={"count": 6, "points_per_route": 2}), seed=3, start=parse_instant(DAY),
                     duration_s=0.0)
    fleet, count = sim.fleet, 3
    shards = [shard_models(fleet, k, count) for k in range(count)]
    assert sorted(id(m) for s in shards for m in s) == sorted(id(m) for m in fleet.models)
    for k, models in enumerate(shards):
        for model in models:
            if isinstance(model, Truck):
                assert model.weighbridge is not None and fleet.owners[model.weighbridge.device_id] in models
            else:
                assert fleet.models.index(model) % count == k
