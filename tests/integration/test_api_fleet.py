"""``GET /fleet/positions`` (issue 14, the console's fleet plot) against a real TimescaleDB: every sweeper at its
newest telemetry row's position and state of charge, online by its own inactivity timeout (the rule /devices uses),
the extent of the positions; viewer role; one statement whose newest-row probe reads the unique (device_id, ts, seq)
index backwards on every chunk (no (device_id, ts DESC) index since migration 0082)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from sanitel.api.app import create_app
from sanitel.api.queries.fleet import positions_query
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key
from tests.support.db_clock import database_now

# Readings of the filler sweepers: two days (more than one chunk), one every two minutes, before the database's now.
_FILL = """
    INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, lat, lon, soc_pct)
    SELECT 'fill-' || d, t, 0, t, 22.5 + d / 1000.0, 114.0 + d / 1000.0, 50
    FROM generate_series(1, 20) d,
         generate_series(%(now)s::timestamptz - interval '2 days', %(now)s::timestamptz - interval '1 hour',
                         interval '2 minutes') t"""


@pytest.fixture
def fleet_db(fresh_db: str) -> str:
    now = database_now(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES ('futian', 'district', 'Futian')")
        conn.execute(
            "INSERT INTO devices (device_id, kind, site_id, name, inactivity_timeout_s) VALUES"
            " ('sw-1', 'sweeper', 'futian', 'Sweeper 1', 900), ('sw-2', 'sweeper', 'futian', NULL, 900),"
            " ('sw-3', 'sweeper', NULL, NULL, 7200), ('sw-4', 'sweeper', 'futian', NULL, 900),"
            " ('ts-1', 'transfer_station', NULL, NULL, 900)")
        conn.execute("INSERT INTO devices (device_id, kind) SELECT 'fill-' || d, 'sweeper' FROM generate_series(1, 20) d")
        conn.execute(_FILL, {"now": now})
        rows = [("sw-1", now - timedelta(minutes=30), 22.50, 114.00, 90.0),  # older: not the one shown
                ("sw-1", now - timedelta(seconds=20), 22.60, 114.10, 81.5),
                ("sw-2", now - timedelta(hours=1), 22.40, 114.20, 12.0),
                ("sw-3", now - timedelta(hours=1), 22.70, 113.90, None)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, lat, lon, soc_pct)"
                            " VALUES (%s, %s, 1, %s, %s, %s, %s)", [(d, t, t, la, lo, s) for d, t, la, lo, s in rows])
        conn.execute("INSERT INTO device_last_seen (device_id, last_ts, last_seq, last_received) VALUES"
                     " ('sw-1', %(now)s - interval '20 seconds', 1, %(now)s - interval '10 seconds'),"
                     " ('sw-2', %(now)s - interval '1 hour', 1, %(now)s - interval '1 hour'),"
                     " ('sw-3', %(now)s - interval '1 hour', 1, %(now)s - interval '1 hour')", {"now": now})
        conn.execute("ANALYZE sweeper_telemetry")
    return fresh_db


@pytest.fixture
def client(fleet_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(fleet_db, tmp_path))) as c:
        yield c


def test_the_app_serves_the_console_endpoints(fresh_db: str, tmp_path: Path) -> None:
    paths = set(create_app(api_settings(fresh_db, tmp_path)).openapi()["paths"])
    assert {"/fleet/positions", "/sites/{site_id}/limits", "/reports/sorting-points"} <= paths


def test_positions_come_from_each_sweepers_newest_row(fleet_db: str, client: TestClient) -> None:
    response = client.get("/fleet/positions", params={"kind": "sweeper"}, headers=auth(mint_key(fleet_db, "viewer")))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "sweeper"
    items = {i["device_id"]: i for i in body["items"]}
    assert len(items) == 24 and "ts-1" not in items
    sw1 = items["sw-1"]
    assert (sw1["name"], sw1["site_id"], sw1["lat"], sw1["lon"], sw1["soc_pct"]) == \
        ("Sweeper 1", "futian", 22.6, 114.1, 81.5)
    assert sw1["online"] is True and sw1["last_seen"] is not None and sw1["last_seen"].endswith(("Z", "+00:00"))
    assert items["sw-2"]["online"] is False and items["sw-2"]["soc_pct"] == 12.0  # an hour silent, 15 min timeout
    # its own timeout (2 h), not a restated 900 s: an hour silent is still online
    assert items["sw-3"]["online"] is True and items["sw-3"]["soc_pct"] is None
    sw4 = items["sw-4"]  # never heard from
    assert (sw4["lat"], sw4["lon"], sw4["online"], sw4["last_seen"]) == (None, None, False, None)
    assert body["extent"] == {"min_lat": 22.4, "max_lat": 22.7, "min_lon": 113.9, "max_lon": 114.2}


def test_no_positions_no_extent_and_roles(fresh_db: str, tmp_path: Path) -> None:
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        assert_error(client.get("/fleet/positions"), 401, "unauthorized")
        viewer = auth(mint_key(fresh_db, "viewer"))
        assert client.get("/fleet/positions", headers=viewer).json() == {"kind": "sweeper", "items": [],
                                                                         "extent": None}
        assert_error(client.get("/fleet/positions", params={"kind": "bin"}, headers=viewer), 422,
                     "validation_error", "query.kind")
        trucks = client.get("/fleet/positions", params={"kind": "truck"}, headers=viewer)
        assert trucks.status_code == 200 and trucks.json()["items"] == []


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "Relation Name" in node:
        yield node
    for child in node.get("Plans", []):
        yield from _scans(child)


# Three whole UTC days of filler readings before today's midnight: one-day chunks (migration 0002) each hold
# 14,400 rows at any hour. (fleet_db's readings run up to the database's now, so between 00:00 and 01:00 UTC its
# newest chunk held only the last few rows, and the planner rightly took either index for it: the test failed at
# that hour only.)
_WHOLE_DAYS = """
    INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, lat, lon, soc_pct)
    SELECT 'fill-' || d, t, 0, t, 22.5, 114.0, 50
    FROM generate_series(1, 20) d,
         generate_series(%(midnight)s::timestamptz - interval '3 days', %(midnight)s::timestamptz - interval '2 minutes',
                         interval '2 minutes') t"""


def test_the_newest_row_is_an_index_probe_on_every_chunk(fresh_db: str) -> None:
    midnight = database_now(fresh_db).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) SELECT 'fill-' || d, 'sweeper' FROM generate_series(1, 20) d")
        conn.execute(_WHOLE_DAYS, {"midnight": midnight})
        conn.execute("ANALYZE sweeper_telemetry")
        chunks = {r[0] for r in conn.execute("SELECT chunk_name FROM timescaledb_information.chunks"
                                             " WHERE hypertable_name = 'sweeper_telemetry'")}
        plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + positions_query("sweeper"),
                            {"kind": "sweeper"}).fetchone()
    assert len(chunks) == 3 and plan is not None
    scans = [(n["Relation Name"], n["Node Type"], n.get("Scan Direction"), n.get("Index Name"))
             for n in _scans(plan[0][0]["Plan"]) if n["Relation Name"] in chunks]
    assert scans and {s[0] for s in scans} == chunks
    assert all(s[1] == "Index Scan" and s[2] == "Backward" and (s[3] or "").endswith("_seq_key") for s in scans), scans


def test_the_benchmark_city_seeds_sweepers_and_firing_alerts(fresh_db: str, tmp_path: Path) -> None:
    """bench/console/seed_city.py (the console benchmark's data): its sweepers are on the fleet plot, its alerts
    firing as the evaluator stores them (one open per fingerprint, a history row each), at a small size here."""
    from bench.console.seed_city import seed_city

    seed_city(fresh_db, now=database_now(fresh_db), sweepers=60, firing_alerts=40)
    with psycopg.connect(fresh_db) as conn:
        alerts = conn.execute("SELECT count(*), count(DISTINCT fingerprint), count(DISTINCT rule_id),"
                              " count(DISTINCT severity), bool_and(labels ? 'rule_id' AND summary <> '')"
                              " FROM alerts WHERE state = 'firing'").fetchone()
        history = conn.execute("SELECT count(*) FROM alert_history WHERE to_state = 'firing'").fetchone()
    assert alerts is not None and alerts[0] == alerts[1] == 40 and alerts[2] > 3 and alerts[3] >= 2 and alerts[4]
    assert history == (40,)
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        body = client.get("/fleet/positions", headers=auth(mint_key(fresh_db, "viewer"))).json()
        firing = client.get("/alerts", params={"state": "firing", "limit": 100},
                            headers=auth(mint_key(fresh_db, "viewer"))).json()["items"]
    assert len(body["items"]) == 60 and all(i["lat"] is not None for i in body["items"])
    assert any(i["online"] for i in body["items"]) and body["extent"] is not None
    assert len(firing) == 40
