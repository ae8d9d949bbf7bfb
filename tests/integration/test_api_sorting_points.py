"""``GET /reports/sorting-points`` (issue 14, the console's sorting-points page) against a real TimescaleDB: per
sorting point under a district, estate or point, for one local calendar day in the site's time zone, the households
that deposited against those registered, deposits and weight by category (RFID bins), AI-camera detections by
type; viewer role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from sanitel.api.app import create_app
from sanitel.api.queries.sorting_points import DEPOSITS, DETECTIONS
from sanitel.api.routes.sorting_points import registered_households
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key

DAY = "2026-03-09"  # in Asia/Shanghai: 2026-03-08T16:00Z to 2026-03-09T16:00Z


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def points_db(fresh_db: str) -> str:
    sites = [("futian", "district", None, {}), ("luohu", "district", None, {}),
             ("es-1", "estate", "futian", {}), ("es-2", "estate", "luohu", {}),
             ("sp-1", "sorting_point", "es-1", {"households": 4}), ("sp-2", "sorting_point", "es-1", {}),
             ("sp-3", "sorting_point", "es-2", {"households": 10})]
    deposits = [("sp-1", "HH-1", "kitchen", 2.5, "2026-03-09T00:00"),      # 08:00 local
                ("sp-1", "HH-1", "recyclable", 1.0, "2026-03-09T01:00"),
                ("sp-1", "HH-2", "kitchen", 1.5, "2026-03-09T15:30"),      # 23:30 local: that day still
                ("sp-1", "HH-3", "other", 9.0, "2026-03-08T15:59"),        # 23:59 the day before
                ("sp-1", "HH-4", "other", 9.0, "2026-03-09T16:00"),        # midnight: the next day
                ("sp-3", "HH-9", "hazardous", 0.2, "2026-03-09T02:00")]
    detections = [("sp-1", "mis_sorted", "2026-03-09T02:00"), ("sp-1", "mis_sorted", "2026-03-09T03:00"),
                  ("sp-1", "overflow", "2026-03-09T04:00"), ("sp-1", "overflow", "2026-03-09T17:00"),
                  ("sp-3", "smoke", "2026-03-09T04:00")]
    with psycopg.connect(fresh_db) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO sites (site_id, kind, name, parent_id, timezone, params) VALUES"
                        " (%s, %s, %s, %s, 'Asia/Shanghai', %s)",
                        [(s, k, f"Site {s}", p, Jsonb(params)) for s, k, p, params in sites])
        cur.executemany("INSERT INTO bin_deposits (device_id, ts, seq, received_at, point_id, household_id, category,"
                        " weight_kg) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [(f"bin-{p}", _utc(t), n, _utc(t), p, h, c, w) for n, (p, h, c, w, t) in enumerate(deposits)])
        cur.executemany("INSERT INTO camera_detections (device_id, ts, seq, received_at, point_id, detection,"
                        " confidence) VALUES (%s, %s, %s, %s, %s, %s, 0.9)",
                        [(f"cam-{p}", _utc(t), n, _utc(t), p, d) for n, (p, d, t) in enumerate(detections)])
    return fresh_db


@pytest.fixture
def client(points_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(points_db, tmp_path))) as c:
        yield c


@pytest.fixture
def viewer(points_db: str) -> dict[str, str]:
    return auth(mint_key(points_db, "viewer"))


def _report(client: TestClient, headers: dict[str, str], site: str, day: str = DAY) -> dict[str, Any]:
    response = client.get("/reports/sorting-points", params={"site_id": site, "day": day}, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_districts_points_on_its_local_day(client: TestClient, viewer: dict[str, str]) -> None:
    body = _report(client, viewer, "futian")
    assert (body["day"], body["timezone"]) == (DAY, "Asia/Shanghai")
    assert body["points"] == [
        {"point_id": "sp-1", "name": "Site sp-1", "site_id": "es-1", "households_registered": 4,
         "households_active": 2, "participation_rate": 0.5, "deposits": 3,
         "weight_kg_by_category": {"kitchen": 4.0, "recyclable": 1.0},
         "detections_by_type": {"mis_sorted": 2, "overflow": 1}},
        {"point_id": "sp-2", "name": "Site sp-2", "site_id": "es-1", "households_registered": None,
         "households_active": 0, "participation_rate": None, "deposits": 0, "weight_kg_by_category": {},
         "detections_by_type": {}}]


def test_an_estate_a_point_and_another_district(client: TestClient, viewer: dict[str, str]) -> None:
    assert [p["point_id"] for p in _report(client, viewer, "es-1")["points"]] == ["sp-1", "sp-2"]
    [point] = _report(client, viewer, "sp-1")["points"]
    assert point["deposits"] == 3
    [other] = _report(client, viewer, "luohu")["points"]
    assert (other["point_id"], other["participation_rate"], other["detections_by_type"]) == ("sp-3", 0.1, {"smoke": 1})
    [next_day] = [p for p in _report(client, viewer, "es-1", "2026-03-10")["points"] if p["point_id"] == "sp-1"]
    assert (next_day["deposits"], next_day["detections_by_type"]) == (1, {"overflow": 1})


def test_roles_and_bad_requests(client: TestClient, viewer: dict[str, str]) -> None:
    assert_error(client.get("/reports/sorting-points", params={"site_id": "futian", "day": DAY}), 401, "unauthorized")
    assert_error(client.get("/reports/sorting-points", params={"site_id": "nowhere", "day": DAY}, headers=viewer),
                 404, "not_found")
    assert_error(client.get("/reports/sorting-points", params={"site_id": "futian", "day": "09/03/2026"},
                            headers=viewer), 422, "validation_error", "query.day")
    assert_error(client.get("/reports/sorting-points", params={"day": DAY}, headers=viewer), 422,
                 "validation_error", "query.site_id")


def _scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    own = [node] if "Relation Name" in node else []
    return own + [s for child in node.get("Plans", []) for s in _scans(child)]


def test_both_statements_read_the_days_chunks_through_an_index(fresh_db: str) -> None:
    """Two days of a busy city's deposits and detections (20 points, one of each every two minutes): the day's
    statements read every chunk they touch through an index — deposits by point and time, detections by time."""
    fill = """INSERT INTO {table} (device_id, ts, seq, received_at, point_id, {columns})
              SELECT 'dev-' || p, t, 0, t, 'sp-' || p, {values}
              FROM generate_series(1, 20) p,
                   generate_series('2026-03-08T00:00Z'::timestamptz, '2026-03-09T23:58Z', interval '2 minutes') t"""
    with psycopg.connect(fresh_db) as conn:
        conn.execute(fill.format(table="bin_deposits", columns="household_id, category, weight_kg",
                                 values="'HH-' || p, 'kitchen', 1.5"))
        conn.execute(fill.format(table="camera_detections", columns="detection, confidence",
                                 values="'mis_sorted', 0.9"))
        conn.execute("ANALYZE bin_deposits")
        conn.execute("ANALYZE camera_detections")
        chunks: dict[str, str] = dict(conn.execute("SELECT chunk_name, hypertable_name FROM timescaledb_information.chunks"
                                   " WHERE hypertable_name IN ('bin_deposits', 'camera_detections')").fetchall())
        params = {"points": ["sp-1", "sp-2"], "start": _utc("2026-03-08T16:00"), "end": _utc("2026-03-09T16:00")}
        for statement, table, index in ((DEPOSITS, "bin_deposits", "point_ts"), (DETECTIONS, "camera_detections", "ts")):
            plan = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params).fetchone()
            assert plan is not None
            scans = [n for n in _scans(plan[0][0]["Plan"]) if chunks.get(n["Relation Name"]) == table]
            assert scans, table
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), (table, scan)
                if scan["Node Type"] != "Bitmap Heap Scan":
                    assert scan["Index Name"].endswith(index), (table, scan["Index Name"])


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=10)


@given(st.dictionaries(st.sampled_from(["households", "other"]), _JSON, max_size=2) | _JSON)
def test_any_households_parameter_is_a_positive_count_or_none_never_an_error(params: Any) -> None:
    found = registered_households(params)
    assert found is None or (type(found) is int and found > 0 and found == params["households"])
