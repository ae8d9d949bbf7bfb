"""The truck device kind and weighbridge tickets in the wire contract (issue 15): topics, typed readings, the
rules across fields (a pickup names its point or bin, a tip its site, a ticket's net is gross − tare), gateway
batches, and a property test that decoding any truck or weighbridge payload never raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.api.catalog import all_metrics, metric_for, tables_of_kind
from sanitel.ingest.decode import REASONS, decode_message
from sanitel.schemas.contract import asyncapi, json_schemas
from sanitel.schemas.readings import (
    BY_KIND_STREAM,
    DEFAULT_STREAM,
    GatewayReading,
    SweeperTelemetry,
    TruckEvent,
    TruckTelemetry,
    WeighbridgeTicket,
    value_fields,
)
from sanitel.schemas.records import Decoded
from sanitel.schemas.topics import DEVICE_KINDS, DeviceKind, DeviceTopic, parse_topic

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
TS = "2026-11-22T07:30:00+08:00"
TRUCK_T = "sanitation/shenzhen/truck/TR-0001/telemetry"
TRUCK_E = "sanitation/shenzhen/truck/TR-0001/event"
WEIGHBRIDGE = "sanitation/shenzhen/transfer_station/WB-LHK/event"
GATEWAY = "sanitation/shenzhen/gateway/gw-1/batch"


def decode(topic: str, body: Any) -> Decoded:
    return decode_message(topic, json.dumps(body).encode(), NOW)


def one_row(topic: str, body: Any) -> dict[str, Any]:
    out = decode(topic, body)
    assert not out.rejections, out.rejections
    (row,) = out.rows
    reading_type = next(t for t in BY_KIND_STREAM.values() if t.table == row.table)
    return dict(zip(("device_id", "ts", "seq", "received_at", *value_fields(reading_type), "extra"), row.values,
                    strict=True))


def rejected(topic: str, body: Any) -> list[str]:
    out = decode(topic, body)
    assert not out.rows, out.rows
    return [r.reason_code for r in out.rejections]


# --- the kind --------------------------------------------------------------------------------------------------

def test_truck_is_a_device_kind_everywhere_kinds_are_listed() -> None:
    assert "truck" in DEVICE_KINDS
    assert set(get_args(DeviceKind)) == set(DEVICE_KINDS)
    assert msgspec.convert({"kind": "truck", "device_id": "TR-1"}, GatewayReading).kind == "truck"
    assert set(DEFAULT_STREAM) == set(DEVICE_KINDS) and DEFAULT_STREAM["truck"] == "telemetry"


@pytest.mark.parametrize("stream", ["telemetry", "event"])
def test_truck_topics_parse(stream: str) -> None:
    assert parse_topic(f"sanitation/shenzhen/truck/TR-0001/{stream}") == DeviceTopic("shenzhen", "truck", "TR-0001",
                                                                                    stream)


def test_contract_names_and_tables() -> None:
    assert BY_KIND_STREAM[("truck", "telemetry")] is TruckTelemetry
    assert BY_KIND_STREAM[("truck", "event")] is TruckEvent
    assert BY_KIND_STREAM[("transfer_station", "event")] is WeighbridgeTicket
    assert (TruckTelemetry.table, TruckEvent.table, WeighbridgeTicket.table) == (
        "truck_telemetry", "truck_events", "weighbridge_tickets")


def test_truck_vehicle_fields_have_the_sweepers_ranges() -> None:
    """'same meaning/ranges as SweeperTelemetry': one definition, so they cannot drift."""
    sweeper_info = msgspec.inspect.type_info(SweeperTelemetry)
    truck_info = msgspec.inspect.type_info(TruckTelemetry)
    assert isinstance(sweeper_info, msgspec.inspect.StructType) and isinstance(truck_info, msgspec.inspect.StructType)
    sweeper = {f.name: f.type for f in sweeper_info.fields}
    truck = {f.name: f.type for f in truck_info.fields}
    shared = ("lat", "lon", "speed_kmh", "heading_deg", "odometer_km", "soc_pct", "pack_voltage_v", "pack_current_a",
              "cell_voltage_max_v", "cell_voltage_min_v", "battery_temp_max_c", "battery_temp_min_c",
              "insulation_kohm", "alarm_level", "alarm_flags")
    for name in shared:
        assert truck[name] == sweeper[name], name


def test_json_schema_and_asyncapi_publish_the_truck_channels() -> None:
    schemas = json_schemas()
    assert {"truck_telemetry.schema.json", "truck_event.schema.json", "weighbridge_ticket.schema.json"} <= set(schemas)
    addresses = {c["address"] for c in asyncapi()["channels"].values()}
    assert {"sanitation/{city}/truck/{device_id}/telemetry", "sanitation/{city}/truck/{device_id}/event",
            "sanitation/{city}/transfer_station/{device_id}/event"} <= addresses
    ticket = schemas["weighbridge_ticket.schema.json"]["$defs"]["WeighbridgeTicket"]
    assert set(ticket["required"]) == {"ts", "ticket_id", "truck_id", "gross_kg", "tare_kg", "net_kg"}


def test_new_reason_codes_are_catalogued() -> None:
    assert {"missing_field", "inconsistent_weights"} <= set(REASONS)


# --- telemetry -------------------------------------------------------------------------------------------------

def test_electric_truck_telemetry_decodes_with_every_field() -> None:
    body = {"ts": TS, "seq": 7, "lat": 22.55, "lon": 114.1, "speed_kmh": 32.5, "heading_deg": 90, "odometer_km": 1234.5,
            "soc_pct": 64, "pack_voltage_v": 540, "pack_current_a": -20, "cell_voltage_max_v": 3.35,
            "cell_voltage_min_v": 3.3, "battery_temp_max_c": 31, "battery_temp_min_c": 28, "insulation_kohm": 5000,
            "alarm_level": 0, "alarm_flags": 0, "powertrain": "electric", "load_kg": 4200, "rated_payload_kg": 8000,
            "compactor_state": "compacting", "lifter_state": "stowed", "route_id": "R-futian-am-1",
            "shift_state": "collecting", "vendor_note": "x"}
    row = one_row(TRUCK_T, body)
    assert row["load_kg"] == 4200 and row["rated_payload_kg"] == 8000 and row["shift_state"] == "collecting"
    assert row["extra"] == {"vendor_note": "x"}


def test_diesel_truck_without_battery_fields_decodes() -> None:
    row = one_row(TRUCK_T, {"ts": TS, "powertrain": "diesel", "speed_kmh": 0, "load_kg": 0})
    assert row["soc_pct"] is None and row["powertrain"] == "diesel"


@pytest.mark.parametrize("field, value, code", [
    ("load_kg", 60_001, "out_of_range"), ("load_kg", -1, "out_of_range"), ("rated_payload_kg", 70_000, "out_of_range"),
    ("powertrain", "steam", "out_of_range"), ("shift_state", "lunch", "out_of_range"),
    ("compactor_state", "on", "out_of_range"), ("lifter_state", "up", "out_of_range"),
    ("route_id", "bad id", "out_of_range"), ("speed_kmh", 201, "out_of_range"), ("load_kg", "heavy", "wrong_type"),
])
def test_bad_truck_telemetry_is_rejected_with_a_reason(field: str, value: Any, code: str) -> None:
    assert rejected(TRUCK_T, {"ts": TS, field: value}) == [code]


# --- events ----------------------------------------------------------------------------------------------------

def test_pickup_with_point_or_bin_tag_decodes() -> None:
    row = one_row(TRUCK_E, {"ts": TS, "event": "pickup", "point_id": "sp-001", "category": "kitchen",
                            "weight_kg": 85.5})
    assert (row["event"], row["point_id"], row["category"], row["weight_kg"]) == ("pickup", "sp-001", "kitchen", 85.5)
    row = one_row(TRUCK_E, {"ts": TS, "event": "pickup", "bin_tag": "E2801160600002", "weight_kg": 40})
    assert row["bin_tag"] == "E2801160600002" and row["point_id"] is None


def test_tip_with_site_decodes() -> None:
    row = one_row(TRUCK_E, {"ts": TS, "event": "tip", "site_id": "ts-futian-01", "weight_kg": 7600,
                            "lat": 22.5, "lon": 114.0})
    assert row["site_id"] == "ts-futian-01" and row["weight_kg"] == 7600


@pytest.mark.parametrize("body", [
    {"event": "pickup", "weight_kg": 50},
    {"event": "pickup", "weight_kg": 50, "bin_tag": ""},
    {"event": "pickup", "weight_kg": 50, "bin_tag": "\u0000"},  # NUL padding only: no tag
    {"event": "pickup", "weight_kg": 50, "site_id": "ts-1"},
    {"event": "tip", "weight_kg": 5000},
    {"event": "tip", "weight_kg": 5000, "point_id": "sp-001"},
    {"weight_kg": 50, "point_id": "sp-001"},
    {"event": "pickup", "point_id": "sp-001"},
])
def test_events_missing_what_they_need_are_missing_field(body: dict[str, Any]) -> None:
    assert rejected(TRUCK_E, {"ts": TS, **body}) == ["missing_field"]


def test_missing_field_reason_says_what_is_needed() -> None:
    out = decode(TRUCK_E, {"ts": TS, "event": "tip", "weight_kg": 1})
    assert "site_id" in out.rejections[0].reason
    out = decode(TRUCK_E, {"ts": TS, "event": "pickup", "weight_kg": 1})
    assert "point_id" in out.rejections[0].reason and "bin_tag" in out.rejections[0].reason


@pytest.mark.parametrize("body, code", [
    ({"event": "pickup", "point_id": "sp-1", "weight_kg": 20_001}, "out_of_range"),
    ({"event": "pickup", "point_id": "sp-1", "weight_kg": -0.1}, "out_of_range"),
    ({"event": "dump", "point_id": "sp-1", "weight_kg": 1}, "out_of_range"),
    ({"event": "pickup", "point_id": "sp-1", "weight_kg": 1, "category": "glass"}, "out_of_range"),
    ({"event": "pickup", "bin_tag": "x" * 65, "weight_kg": 1}, "out_of_range"),
    ({"event": "pickup", "point_id": "sp 1", "weight_kg": 1}, "out_of_range"),
])
def test_bad_events_are_rejected_with_a_reason(body: dict[str, Any], code: str) -> None:
    assert rejected(TRUCK_E, {"ts": TS, **body}) == [code]


def test_one_bad_event_in_an_array_keeps_the_others() -> None:
    out = decode(TRUCK_E, [{"ts": TS, "seq": 1, "event": "pickup", "point_id": "sp-1", "weight_kg": 10},
                           {"ts": TS, "seq": 2, "event": "tip", "weight_kg": 10},
                           {"ts": TS, "seq": 3, "event": "tip", "site_id": "ts-1", "weight_kg": 10}])
    assert len(out.rows) == 2
    assert [(r.reason_code, r.index) for r in out.rejections] == [("missing_field", 1)]


# --- weighbridge tickets ---------------------------------------------------------------------------------------

TICKET = {"ts": TS, "ticket_id": "LHK-20261122-0001", "truck_id": "TR-0001", "gross_kg": 15_820.0,
          "tare_kg": 9_400.0, "net_kg": 6_420.0, "category": "other"}


def test_a_consistent_ticket_decodes() -> None:
    row = one_row(WEIGHBRIDGE, TICKET)
    assert (row["truck_id"], row["net_kg"], row["direction"]) == ("TR-0001", 6420.0, "in")


@pytest.mark.parametrize("net", [6_419.0, 6_421.0, 6_420.5])
def test_net_within_a_kilogram_of_gross_minus_tare_is_accepted(net: float) -> None:
    assert one_row(WEIGHBRIDGE, {**TICKET, "net_kg": net})["net_kg"] == net


@pytest.mark.parametrize("net", [6_418.9, 6_421.1, 0.0, 15_820.0])
def test_net_not_gross_minus_tare_is_inconsistent_weights(net: float) -> None:
    out = decode(WEIGHBRIDGE, {**TICKET, "net_kg": net})
    assert not out.rows and [r.reason_code for r in out.rejections] == ["inconsistent_weights"]
    assert "gross_kg" in out.rejections[0].reason and out.rejections[0].kind == "transfer_station"


@pytest.mark.parametrize("body, code", [
    ({**TICKET, "ticket_id": ""}, "out_of_range"),
    ({**TICKET, "gross_kg": 100_001, "net_kg": 91_601}, "out_of_range"),
    ({**TICKET, "truck_id": "TR 1"}, "out_of_range"),
    ({**TICKET, "direction": "sideways"}, "out_of_range"),
    ({k: v for k, v in TICKET.items() if k != "tare_kg"}, "missing_field"),
    ({k: v for k, v in TICKET.items() if k != "truck_id"}, "missing_field"),
])
def test_bad_tickets_are_rejected_with_a_reason(body: dict[str, Any], code: str) -> None:
    assert rejected(WEIGHBRIDGE, body) == [code]


# --- gateway batches -------------------------------------------------------------------------------------------

def test_gateway_batch_with_trucks_defaults_to_telemetry_and_rejects_bad_items_alone() -> None:
    out = decode(GATEWAY, {"readings": [
        {"kind": "truck", "device_id": "TR-0001", "ts": TS, "load_kg": 100},
        {"kind": "truck", "device_id": "TR-0001", "stream": "event", "ts": TS, "event": "pickup",
         "point_id": "sp-1", "weight_kg": 30},
        {"kind": "truck", "device_id": "TR-0002", "stream": "event", "ts": TS, "event": "tip", "weight_kg": 30},
        {"kind": "transfer_station", "device_id": "WB-1", "stream": "event", **TICKET, "net_kg": 1.0},
        {"kind": "transfer_station", "device_id": "WB-1", "stream": "event", **TICKET},
    ]})
    assert [r.table for r in out.rows] == ["truck_telemetry", "truck_events", "weighbridge_tickets"]
    assert all(r.gateway_id == "gw-1" for r in out.rows)
    assert [(r.reason_code, r.index, r.kind) for r in out.rejections] == [
        ("missing_field", 2, "truck"), ("inconsistent_weights", 3, "transfer_station")]


# --- the API's catalogue ---------------------------------------------------------------------------------------

def test_api_catalogue_serves_truck_metrics_once_each() -> None:
    assert tables_of_kind("truck") == ("truck_telemetry", "truck_events")
    assert "weighbridge_tickets" in tables_of_kind("transfer_station")
    load = metric_for("truck", "load_kg")
    assert load is not None and load.table == "truck_telemetry" and load.unit == "kg"
    lat = metric_for("truck", "lat")
    assert lat is not None and lat.table == "truck_telemetry"  # telemetry's, not the events' position
    names = [(m.kind, m.name) for m in all_metrics()]
    assert len(names) == len(set(names))


# --- never raises ----------------------------------------------------------------------------------------------

_numbers = st.one_of(st.none(), st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False),
                     st.sampled_from([0, 1, 6_420.0, 60_000, 60_001, 20_000.5, 100_000, -1e-9]))
_texts = st.one_of(st.none(), st.text(max_size=70), st.sampled_from(["", "sp-1", "TR-0001", "\u0000", "a\u0000b",
                                                                     "x\n", "pickup", "tip", "kitchen"]))
_values = st.one_of(_numbers, _texts, st.booleans(), st.lists(st.integers(), max_size=2))
_fields = sorted({*value_fields(TruckTelemetry), *value_fields(TruckEvent), *value_fields(WeighbridgeTicket),
                  "ts", "seq", "device_id", "kind", "stream", "unknown"})
_timestamps = st.one_of(st.just(TS), st.integers(-(10**15), 10**15), st.text(max_size=30))
_readings = st.builds(lambda ts, body: {"ts": ts, **body}, _timestamps,
                      st.dictionaries(st.sampled_from(_fields), _values, max_size=10))
_topics = st.sampled_from([TRUCK_T, TRUCK_E, WEIGHBRIDGE, "sanitation/shenzhen/truck/TR-0001/status",
                           "sanitation/shenzhen/truck/TR-0001/hj212", "sanitation/shenzhen/truck/TR\u00001/event"])


def _check(out: Decoded) -> None:
    assert isinstance(out, Decoded) and (out.rows or out.rejections)
    for r in out.rejections:
        assert r.reason_code in REASONS and r.reason_code != "internal_error", r
    for row in out.rows:
        assert row.table in ("truck_telemetry", "truck_events", "weighbridge_tickets", "station_telemetry")
        assert not any(isinstance(v, str) and "\x00" in v for v in row.values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_topics, st.one_of(_readings, st.lists(_readings, max_size=4)))
def test_decoding_any_truck_or_weighbridge_payload_never_raises(topic: str, body: Any) -> None:
    _check(decode_message(topic, json.dumps(body).encode(), NOW))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.builds(lambda kind, stream, device, reading: {**reading, "kind": kind, "device_id": device,
                                                                 **({"stream": stream} if stream else {})},
                          st.sampled_from(["truck", "transfer_station", "tractor", 5]),
                          st.sampled_from([None, "telemetry", "event", "status", "batch"]),
                          st.sampled_from(["TR-0001", "WB-1", "", "a\u0000"]), _readings),
                min_size=1, max_size=5))
def test_decoding_any_gateway_batch_of_trucks_never_raises(readings: list[dict[str, Any]]) -> None:
    _check(decode_message(GATEWAY, json.dumps({"readings": readings}).encode(), NOW))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), _topics)
def test_decoding_any_bytes_on_truck_topics_never_raises(payload: bytes, topic: str) -> None:
    _check(decode_message(topic, payload, NOW))
