"""Trucks and weighbridge tickets end to end (issue 15): published through the real private broker, taken by the
collector into truck_telemetry, truck_events and weighbridge_tickets; bad ones dead-lettered with their reason
(out of range, a pickup naming neither point nor bin, a tip without its site, net ≠ gross − tare); gateway batches
of trucks; and the API serving a truck's latest readings and history like any other device's."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer
from tests.integration.security.as_roles import enable_logins, role_url
from tests.support.api_helpers import api_settings, auth, mint_key
from tests.support.mqtt_tools import count, publish, wait_for

CITY = "shenzhen"
# Device time: a fixed instant in the past (the collector refuses only times ahead of its clock).
DEVICE_TIME = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (DEVICE_TIME + timedelta(minutes=minutes)).isoformat()


def topic(kind: str, device: str, stream: str) -> str:
    return f"sanitation/{CITY}/{kind}/{device}/{stream}"


def j(body: object) -> bytes:
    return json.dumps(body).encode()


TICKET = {"ticket_id": "LHK-0001", "truck_id": "TR-1", "gross_kg": 15_820.0, "tare_kg": 9_400.0, "net_kg": 6_420.0,
          "category": "other"}

GOOD = [
    (topic("truck", "TR-1", "telemetry"), j([
        {"ts": at(0), "seq": 1, "lat": 22.55, "lon": 114.05, "speed_kmh": 0, "powertrain": "electric", "soc_pct": 80,
         "load_kg": 0, "rated_payload_kg": 8000, "shift_state": "to_route", "route_id": "R-1"},
        {"ts": at(10), "seq": 2, "lat": 22.56, "lon": 114.06, "speed_kmh": 18, "powertrain": "electric", "soc_pct": 78,
         "load_kg": 450.5, "rated_payload_kg": 8000, "compactor_state": "idle", "lifter_state": "stowed",
         "shift_state": "collecting", "route_id": "R-1", "fw": "1.2"}])),
    (topic("truck", "TR-1", "event"), j({"ts": at(5), "seq": 3, "event": "pickup", "point_id": "sp-1",
                                         "bin_tag": "E280-0001", "category": "kitchen", "weight_kg": 450.5})),
    (topic("truck", "TR-1", "event"), j({"ts": at(60), "seq": 4, "event": "tip", "site_id": "ts-1",
                                         "weight_kg": 6400})),
    (topic("transfer_station", "WB-1", "event"), j({"ts": at(61), **TICKET})),
]
BAD = [  # (topic, payload, reason)
    (topic("truck", "TR-1", "telemetry"), j({"ts": at(1), "load_kg": 60_001}), "out_of_range"),
    (topic("truck", "TR-1", "event"), j({"ts": at(2), "event": "pickup", "weight_kg": 12, "category": "other"}),
     "missing_field"),
    (topic("truck", "TR-1", "event"), j({"ts": at(3), "event": "tip", "weight_kg": 6000}), "missing_field"),
    (topic("transfer_station", "WB-1", "event"), j({"ts": at(62), **TICKET, "ticket_id": "LHK-0002",
                                                    "net_kg": 7_000.0}), "inconsistent_weights"),
]
TABLES = ("truck_telemetry", "truck_events", "weighbridge_tickets")


def register_fleet(db: str) -> None:
    with psycopg.connect(db) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES ('futian', 'district', 'Futian', 'UTC'),"
                     " ('depot-1', 'depot', 'Depot 1', 'UTC'), ('ts-1', 'transfer_station', 'Station 1', 'UTC')")
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-1')")
        conn.execute("INSERT INTO devices (device_id, kind, site_id) VALUES ('TR-1', 'truck', 'depot-1'),"
                     " ('WB-1', 'transfer_station', 'ts-1')")
        conn.execute("INSERT INTO devices (device_id, kind, site_id, gateway_id) VALUES"
                     " ('TR-2', 'truck', 'depot-1', 'gw-1'), ('WB-2', 'transfer_station', 'ts-1', 'gw-1')")


@pytest.mark.clock
def test_truck_readings_and_tickets_land_and_bad_ones_are_dead_letters(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    register_fleet(fresh_db)
    make_collector(fresh_db, mqtt_server.url)
    publish(mqtt_server.port, [m for pair in zip(GOOD, [(t, p) for t, p, _ in BAD], strict=True) for m in pair])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == len(BAD), 20)
    assert wait_for(lambda: [count(fresh_db, f"SELECT count(*) FROM {t}") for t in TABLES] == [2, 2, 1], 20)
    with psycopg.connect(fresh_db) as conn:
        telemetry = conn.execute("SELECT load_kg, shift_state, route_id, extra FROM truck_telemetry ORDER BY ts"
                                 ).fetchall()
        events = conn.execute("SELECT event, point_id, bin_tag, category, weight_kg, site_id FROM truck_events"
                              " ORDER BY ts").fetchall()
        ticket = conn.execute("SELECT device_id, ts, ticket_id, truck_id, gross_kg, tare_kg, net_kg, direction"
                              " FROM weighbridge_tickets").fetchone()
        letters = conn.execute("SELECT d.topic, p.payload, d.reason_code, d.kind, d.device_id FROM dead_letters d"
                               " JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256").fetchall()
        last_seen = {d for (d,) in conn.execute("SELECT device_id FROM device_last_seen").fetchall()}
    assert telemetry == [(0.0, "to_route", "R-1", None), (450.5, "collecting", "R-1", {"fw": "1.2"})]
    assert events == [("pickup", "sp-1", "E280-0001", "kitchen", 450.5, None), ("tip", None, None, None, 6400.0, "ts-1")]
    assert ticket == ("WB-1", DEVICE_TIME + timedelta(minutes=61), "LHK-0001", "TR-1", 15_820.0, 9_400.0, 6_420.0, "in")
    by_payload = {bytes(p): (t, code, kind, device) for t, p, code, kind, device in letters}
    for bad_topic, payload, code in BAD:
        assert by_payload[payload][:2] == (bad_topic, code)
        assert by_payload[payload][3] in ("TR-1", "WB-1")
    assert last_seen >= {"TR-1", "WB-1"}


@pytest.mark.clock
def test_gateway_batches_carry_trucks_and_weighbridge_tickets(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    register_fleet(fresh_db)
    make_collector(fresh_db, mqtt_server.url)
    batch = {"gateway_id": "gw-1", "readings": [
        {"kind": "truck", "device_id": "TR-2", "ts": at(0), "load_kg": 1200, "speed_kmh": 12},  # default: telemetry
        {"kind": "truck", "device_id": "TR-2", "stream": "event", "ts": at(1), "event": "pickup",
         "bin_tag": "E280-0002", "weight_kg": 60},
        {"kind": "truck", "device_id": "TR-2", "stream": "event", "ts": at(2), "event": "tip", "weight_kg": 60},
        {"kind": "transfer_station", "device_id": "WB-2", "stream": "event", "ts": at(3), **TICKET,
         "truck_id": "TR-2"},
        {"kind": "transfer_station", "device_id": "WB-2", "stream": "event", "ts": at(4), **TICKET, "tare_kg": 0},
    ]}
    publish(mqtt_server.port, [(f"sanitation/{CITY}/gateway/gw-1/batch", j(batch))])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 2, 20)
    assert wait_for(lambda: [count(fresh_db, f"SELECT count(*) FROM {t}") for t in TABLES] == [1, 1, 1], 20)
    with psycopg.connect(fresh_db) as conn:
        letters = sorted(conn.execute("SELECT reading_index, reason_code, kind, device_id FROM dead_letters"
                                      ).fetchall())
        truck = conn.execute("SELECT device_id, load_kg FROM truck_telemetry").fetchone()
    assert letters == [(2, "missing_field", "truck", "TR-2"), (4, "inconsistent_weights", "transfer_station", "WB-2")]
    assert truck == ("TR-2", 1200.0)


@pytest.mark.clock
def test_api_serves_a_trucks_latest_readings_and_history(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector], tmp_path: Path) -> None:
    register_fleet(fresh_db)
    make_collector(fresh_db, mqtt_server.url)
    publish(mqtt_server.port, GOOD)
    assert wait_for(lambda: [count(fresh_db, f"SELECT count(*) FROM {t}") for t in TABLES] == [2, 2, 1], 20)
    viewer = auth(mint_key(fresh_db, "viewer"))
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        latest = client.get("/devices/TR-1/latest", headers=viewer)
        assert latest.status_code == 200, latest.text
        body = latest.json()
        assert body["kind"] == "truck"
        readings = {r["type"]: r for r in body["readings"]}
        assert set(readings) == {"truck_telemetry", "truck_events"}
        assert readings["truck_telemetry"]["values"]["load_kg"] == 450.5
        assert readings["truck_telemetry"]["values"]["shift_state"] == "collecting"
        assert readings["truck_events"]["values"]["event"] == "tip"
        station = client.get("/devices/WB-1/latest", headers=viewer).json()
        assert [r["values"]["net_kg"] for r in station["readings"] if r["type"] == "weighbridge_tickets"] == [6420.0]

        window = {"from": at(-1), "to": at(120)}
        raw = client.get("/devices/TR-1/history", params={"metric": "load_kg", **window}, headers=viewer)
        assert raw.status_code == 200, raw.text
        assert [p["value"] for p in raw.json()["points"]] == [0.0, 450.5]
        bucketed = client.get("/devices/TR-1/history", params={"metric": "load_kg", "bucket": "1h",
                                                               "aggregate": "max", **window}, headers=viewer)
        assert bucketed.status_code == 200, bucketed.text
        assert [p["value"] for p in bucketed.json()["points"]] == [450.5]
        weight = client.get("/devices/TR-1/history", params={"metric": "weight_kg", **window}, headers=viewer)
        assert [p["value"] for p in weight.json()["points"]] == [450.5, 6400.0]

        metrics = client.get("/readings/metrics", params={"kind": "truck"}, headers=viewer)
        assert metrics.status_code == 200, metrics.text
        names = {m["metric"]: m for m in metrics.json()}
        assert names["load_kg"]["unit"] == "kg" and names["load_kg"]["type"] == "truck_telemetry"
        listed = client.get("/devices", params={"kind": "truck"}, headers=viewer)
        assert listed.status_code == 200, listed.text
        assert {d["device_id"] for d in listed.json()["items"]} == {"TR-1", "TR-2"}


def test_truck_tables_follow_the_reading_table_conventions_and_grants(fresh_db: str) -> None:
    """Migration 0083: hypertables on device time, unique (device_id, ts, seq), received_at, extra, stored_at; each
    component role granted what its code does (0070's rule) and no more; retention may drop their old chunks."""
    enable_logins(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        hypertables = {t for (t,) in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables"
                                                  ).fetchall()}
        columns = {(t, c) for t, c in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_name = ANY(%s)",
            (list(TABLES),)).fetchall()}
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('TR-1', 'truck')")
    assert set(TABLES) <= hypertables
    for table in TABLES:
        assert {(table, c) for c in ("device_id", "ts", "seq", "received_at", "extra", "stored_at")} <= columns
    ts = DEVICE_TIME - timedelta(days=400)
    with psycopg.connect(role_url(fresh_db, "ingest"), autocommit=True) as conn:
        conn.execute("INSERT INTO truck_events (device_id, ts, received_at, event, point_id, weight_kg)"
                     " VALUES ('TR-1', %s, %s, 'pickup', 'sp-1', 10)", (ts, ts))
        conn.execute("INSERT INTO truck_events (device_id, ts, received_at, event, point_id, weight_kg)"
                     " VALUES ('TR-1', %s, %s, 'pickup', 'sp-1', 10) ON CONFLICT DO NOTHING", (ts, ts))  # redelivery
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM truck_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM truck_routes")
    with psycopg.connect(role_url(fresh_db, "api"), autocommit=True) as conn:
        conn.execute("INSERT INTO truck_routes (route_id, truck_id, shift_start, shift_end, points, valid_from)"
                     " VALUES ('R-1', 'TR-1', '05:30', '11:00', ARRAY['sp-1'], '2026-01-01')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO weighbridge_tickets (device_id, ts, received_at, ticket_id, truck_id, gross_kg,"
                         " tare_kg, net_kg) VALUES ('WB', now(), now(), 't', 'TR-1', 1, 0, 1)")
    for role in ("evaluator", "processor"):
        with psycopg.connect(role_url(fresh_db, role), autocommit=True) as conn:
            for table in (*TABLES, "truck_routes"):
                conn.execute(f"SELECT count(*) FROM {table}")
    with psycopg.connect(role_url(fresh_db, "processor"), autocommit=True) as conn:
        dropped = one_row(conn.execute("SELECT sanitel_drop_chunks('truck_events', %s)",
                                       (DEVICE_TIME - timedelta(days=300),)))[0]
    assert dropped == 1 and count(fresh_db, "SELECT count(*) FROM truck_events") == 0


def test_the_table_refuses_a_pickup_or_tip_the_decoder_would_reject(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for values in ("'pickup', NULL, NULL, NULL", "'pickup', NULL, '', NULL", "'tip', 'sp-1', NULL, NULL"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO truck_events (device_id, ts, received_at, event, point_id, bin_tag,"
                             f" site_id, weight_kg) VALUES ('TR-1', now(), now(), {values}, 1)")
