"""Planned truck routes over the HTTP API against a real TimescaleDB (issue 15): GET/PUT /routes/{route_id},
GET /routes?truck_id=; supervisors write, viewers read; a plan is checked against the registry (its truck a
registered truck, its points sorting points, its tip site a transfer station or plant)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key

REGISTRY_SQL = """
INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES
  ('futian', 'district', 'Futian', NULL, 'Asia/Shanghai'),
  ('estate-1', 'estate', 'Estate 1', 'futian', 'Asia/Shanghai'),
  ('sp-1', 'sorting_point', 'Point 1', 'estate-1', 'Asia/Shanghai'),
  ('sp-2', 'sorting_point', 'Point 2', 'estate-1', 'Asia/Shanghai'),
  ('sp-3', 'sorting_point', 'Point 3', 'estate-1', 'Asia/Shanghai'),
  ('ts-1', 'transfer_station', 'Station 1', 'futian', 'Asia/Shanghai'),
  ('plant-1', 'plant', 'Plant 1', 'futian', 'Asia/Shanghai'),
  ('depot-1', 'depot', 'Depot 1', 'futian', 'Asia/Shanghai');
INSERT INTO devices (device_id, kind, site_id) VALUES
  ('TR-1', 'truck', 'depot-1'), ('TR-2', 'truck', 'depot-1'), ('SW-1', 'sweeper', 'depot-1');
"""

PLAN: dict[str, Any] = {"truck_id": "TR-1", "shift_start": "05:30", "shift_end": "11:00",
                        "points": ["sp-1", "sp-2", "sp-3"], "tip_site_id": "ts-1", "valid_from": "2026-11-01"}


@pytest.fixture
def db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db) as conn:
        conn.execute(REGISTRY_SQL)
    return fresh_db


@pytest.fixture
def app(db: str, tmp_path: Path) -> FastAPI:
    return create_app(api_settings(db, tmp_path))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def viewer(db: str) -> dict[str, str]:
    return auth(mint_key(db, "viewer"))


@pytest.fixture
def supervisor(db: str) -> dict[str, str]:
    return auth(mint_key(db, "supervisor"))


def test_supervisor_puts_a_route_and_viewers_read_it(client: TestClient, viewer: dict[str, str],
                                                     supervisor: dict[str, str], db: str) -> None:
    put = client.put("/routes/R-am-1", json=PLAN, headers=supervisor)
    assert put.status_code == 200, put.text
    stored = put.json()
    assert stored["route_id"] == "R-am-1" and stored["points"] == ["sp-1", "sp-2", "sp-3"]
    assert stored["shift_start"] == "05:30:00" and stored["valid_to"] is None
    got = client.get("/routes/R-am-1", headers=viewer)
    assert got.status_code == 200 and got.json() == stored
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT truck_id, points, tip_site_id FROM truck_routes WHERE route_id = 'R-am-1'"
                           ).fetchone()
    assert row == ("TR-1", ["sp-1", "sp-2", "sp-3"], "ts-1")


def test_put_replaces_a_route(client: TestClient, supervisor: dict[str, str], viewer: dict[str, str]) -> None:
    assert client.put("/routes/R-1", json=PLAN, headers=supervisor).status_code == 200
    changed = {**PLAN, "points": ["sp-3", "sp-1"], "tip_site_id": "plant-1", "valid_to": "2026-12-31",
               "shift_start": "22:00", "shift_end": "04:00"}  # a night shift past midnight
    assert client.put("/routes/R-1", json=changed, headers=supervisor).status_code == 200
    body = client.get("/routes/R-1", headers=viewer).json()
    assert body["points"] == ["sp-3", "sp-1"] and body["tip_site_id"] == "plant-1" and body["valid_to"] == "2026-12-31"


def test_list_routes_by_truck_with_paging(client: TestClient, supervisor: dict[str, str],
                                          viewer: dict[str, str]) -> None:
    for route_id, truck in (("R-a", "TR-1"), ("R-b", "TR-2"), ("R-c", "TR-1"), ("R-d", "TR-1")):
        assert client.put(f"/routes/{route_id}", json={**PLAN, "truck_id": truck}, headers=supervisor).status_code == 200
    first = client.get("/routes", params={"truck_id": "TR-1", "limit": 2}, headers=viewer).json()
    assert [r["route_id"] for r in first["items"]] == ["R-a", "R-c"] and first["next_cursor"]
    rest = client.get("/routes", params={"truck_id": "TR-1", "limit": 2, "cursor": first["next_cursor"]},
                      headers=viewer).json()
    assert [r["route_id"] for r in rest["items"]] == ["R-d"]
    every = client.get("/routes", headers=viewer).json()
    assert [r["route_id"] for r in every["items"]] == ["R-a", "R-b", "R-c", "R-d"] and every["next_cursor"] is None
    assert client.get("/routes", params={"truck_id": "TR-9"}, headers=viewer).json()["items"] == []


def test_viewer_may_not_write_and_no_key_is_401(client: TestClient, viewer: dict[str, str]) -> None:
    assert_error(client.put("/routes/R-1", json=PLAN, headers=viewer), 403, "forbidden")
    assert_error(client.put("/routes/R-1", json=PLAN), 401, "unauthorized")
    assert_error(client.get("/routes"), 401, "unauthorized")


def test_unknown_route_is_404(client: TestClient, viewer: dict[str, str]) -> None:
    assert_error(client.get("/routes/R-none", headers=viewer), 404, "not_found")


@pytest.mark.parametrize("change, field, words", [
    ({"truck_id": "TR-9"}, "body.truck_id", "not registered"),
    ({"truck_id": "SW-1"}, "body.truck_id", "sweeper"),
    ({"points": ["sp-1", "ts-1"]}, "body.points.1", "transfer_station"),
    ({"points": ["sp-1", "nowhere"]}, "body.points.1", "not a registered site"),
    ({"tip_site_id": "sp-2"}, "body.tip_site_id", "sorting_point"),
    ({"tip_site_id": "depot-1"}, "body.tip_site_id", "depot"),
])
def test_a_plan_not_matching_the_registry_is_422_naming_the_field(
        client: TestClient, supervisor: dict[str, str], change: dict[str, Any], field: str, words: str) -> None:
    error = assert_error(client.put("/routes/R-1", json={**PLAN, **change}, headers=supervisor), 422,
                         "validation_error", field)
    assert words in str(error["message"])


@pytest.mark.parametrize("change, field", [
    ({"points": []}, "body.points"),
    ({"valid_to": "2026-10-01"}, "body"),
    ({"shift_start": "25:00"}, "body.shift_start"),
    ({"points": ["sp 1"]}, "body.points.0"),
    ({"colour": "red"}, "body.colour"),
])
def test_malformed_plans_are_422(client: TestClient, supervisor: dict[str, str], change: dict[str, Any],
                                 field: str) -> None:
    assert_error(client.put("/routes/R-1", json={**PLAN, **change}, headers=supervisor), 422, "validation_error",
                 field)


def test_bad_route_id_is_422(client: TestClient, supervisor: dict[str, str]) -> None:
    assert_error(client.put("/routes/bad%20id", json=PLAN, headers=supervisor), 422, "validation_error",
                 "path.route_id")
