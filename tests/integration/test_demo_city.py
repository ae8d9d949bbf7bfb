"""``sanitel run`` shows a living city (issue 14, Must show 5): registering the demo scenario registers its sites —
districts, depots, estates, sorting points with their households, transfer stations, plants and their lines — with
names and parents, and every device at its site, so ``/sites`` and ``/sites/{id}/latest`` have data; the first API
key is made once, for a registry without one.

Before issue 14 ``register_fleet`` attached a device to its site only "when that site is registered", and nothing
registered sites: ``/sites`` was empty and every demo device had no site."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.api.app import create_app
from sanitel.simulators.cli import DEFAULT_SEED
from sanitel.simulators.run import inventory, inventory_routes
from sanitel.simulators.scenario import load_scenario
from sanitel.stack_cli import FIRST_KEY_NAME, create_first_key, register_fleet
from tests.support.api_helpers import api_settings, auth, mint_key

CITY = "shenzhen"


def _register(db: str) -> dict[str, dict[str, str]]:
    async def work() -> dict[str, dict[str, str]]:
        async with await AsyncConnection.connect(db, autocommit=True) as conn:
            return await register_fleet(conn, "demo", city=CITY, seed=DEFAULT_SEED)

    return asyncio.run(work())


def _sites(db: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(db, row_factory=dict_row) as conn:
        return {r["site_id"]: r for r in conn.execute("SELECT * FROM sites").fetchall()}


def _device_sites(db: str) -> dict[str, str | None]:
    with psycopg.connect(db) as conn:
        return dict(conn.execute("SELECT device_id, site_id FROM devices").fetchall())


@pytest.fixture
def demo_db(fresh_db: str) -> str:
    _register(fresh_db)
    return fresh_db


def test_the_demo_registers_its_site_tree_with_names_and_parents(demo_db: str) -> None:
    sites = _sites(demo_db)
    kinds = {k: sorted(s for s, r in sites.items() if r["kind"] == k) for k in {r["kind"] for r in sites.values()}}
    assert kinds == {
        "district": ["futian", "luohu"],
        "depot": ["dp-futian", "dp-luohu"],
        "estate": ["es-00001", "es-00002", "es-00003"],  # four points an estate (simulators/fleet.py)
        "sorting_point": [f"sp-{n:05d}" for n in range(1, 11)],
        "transfer_station": ["ts-0001", "ts-0002", "ts-0003"],
        "plant": ["p1", "p2"],
        "line": ["p1-l1", "p1-l2", "p2-l1"],
    }
    assert all(r["name"] and r["timezone"] == "Asia/Shanghai" for r in sites.values())
    assert sites["futian"]["name"] == "Futian district" and sites["futian"]["parent_id"] is None
    assert (sites["futian"]["latitude"], sites["futian"]["longitude"]) == (22.5431, 114.0579)  # demo.yaml
    assert sites["p2"]["name"] == "Demo plant (HJ 212)" and sites["p2-l1"]["parent_id"] == "p2"
    assert sites["p1-l2"]["name"] == "Demo plant (JSON) line 2"
    assert sites["dp-futian"]["parent_id"] == "futian" and sites["dp-futian"]["latitude"] is not None
    assert {sites[e]["parent_id"] for e in kinds["estate"]} == {"futian", "luohu"}
    assert {sites[t]["parent_id"] for t in kinds["transfer_station"]} <= {"futian", "luohu"}
    assert sites["sp-00005"]["parent_id"] == "es-00002"  # points 5-8 make the second estate
    # each point's registered households: the simulated point's own (its participation rate is measured on them)
    households = {d["metadata"]["point_id"]: d["metadata"]["households"]
                  for d in inventory("demo", seed=DEFAULT_SEED, city=CITY) if d["kind"] == "bin"}
    assert {p: sites[p]["params"]["households"] for p in kinds["sorting_point"]} == {
        p: households[p] for p in kinds["sorting_point"]}
    # the points on the demo trucks' routes carry the scenario's clearance schedule (issue 15), the others none
    scheduled = {p for p in kinds["sorting_point"] if "clearance" in sites[p]["params"]}
    routed = {p for r in inventory_routes("demo", seed=DEFAULT_SEED, city=CITY) for p in r["points"]}
    assert scheduled == routed and scheduled
    lo, hi = load_scenario("demo").sorting_points.households
    assert all(lo <= h <= hi for h in households.values())


def test_every_demo_device_is_at_its_site(demo_db: str) -> None:
    placed = _device_sites(demo_db)
    assert len(placed) == 70 and None not in placed.values()
    assert placed["sw-0001"] == "futian" and placed["sw-0002"] == "luohu"  # the district it sweeps
    assert placed["ts-0002"] == "ts-0002"
    assert placed["bin-00001-k"] == placed["cam-00001"] == "sp-00001"  # the point: where a fire and its smoke meet
    assert placed["bin-00010-o"] == "sp-00010"
    assert placed["cems-p1-l2"] == "p1-l2" and placed["cems-p2-l1"] == "p2-l1"


def test_registering_again_keeps_the_sites_and_places_devices_an_older_run_left_without(demo_db: str) -> None:
    """A second ``sanitel run`` changes no site an operator edited; devices that a run before issue 14 registered
    without a site get theirs."""
    with psycopg.connect(demo_db) as conn:
        conn.execute("UPDATE sites SET params = %s, name = 'Futian TS 2' WHERE site_id = 'ts-0002'",
                     (Jsonb({"odour_grade": 1}),))
        conn.execute("UPDATE devices SET site_id = NULL")  # as the registry of an older run has them
    before = _sites(demo_db)
    _register(demo_db)
    assert _sites(demo_db) == before
    assert before["ts-0002"]["params"] == {"odour_grade": 1} and before["ts-0002"]["name"] == "Futian TS 2"
    placed = _device_sites(demo_db)
    assert None not in placed.values() and placed["bin-00001-k"] == "sp-00001"


@pytest.fixture
def client(demo_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(demo_db, tmp_path))) as c:
        yield c


def test_sites_and_their_newest_readings_are_served(demo_db: str, client: TestClient) -> None:
    viewer = auth(mint_key(demo_db, "viewer"))
    districts = client.get("/sites", params={"kind": "district"}, headers=viewer).json()["items"]
    assert [(s["site_id"], s["name"]) for s in districts] == [("futian", "Futian district"), ("luohu", "Luohu district")]
    estate = client.get("/sites/es-00001", headers=viewer).json()
    assert estate["child_count"] == 4 and estate["device_counts"] == {"bin": 16, "camera": 4}
    ts = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    with psycopg.connect(demo_db) as conn:
        conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, lat, lon, soc_pct)"
                     " VALUES ('sw-0001', %s, 1, %s, 22.54, 114.05, 80)", (ts, ts))
    latest = client.get("/sites/futian/latest", params={"limit": 200}, headers=viewer).json()["items"]
    sweepers = [d for d in latest if d["kind"] == "sweeper"]
    assert [d["device_id"] for d in sweepers] == ["sw-0001", "sw-0003", "sw-0005", "sw-0007"]
    assert sweepers[0]["readings"][0]["values"]["soc_pct"] == 80
    assert {d["site_id"] for d in latest} >= {"futian", "sp-00001"}  # the district's own and its points' devices


def test_the_first_key_is_made_once_for_a_registry_without_one(fresh_db: str, tmp_path: Path) -> None:
    # as `sanitel run` makes it: connected as the API's role (migration 0070), which may lock and insert api_keys
    settings = api_settings(fresh_db, tmp_path, api_database_url=f"{fresh_db}?options=-c%20role%3Dsanitel_api")
    token = asyncio.run(create_first_key(settings))
    assert token is not None and token.startswith("sntl_")
    assert asyncio.run(create_first_key(settings)) is None  # shown once: a second run makes none
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT name, role FROM api_keys").fetchall()
        assert rows == [(FIRST_KEY_NAME, "admin")]
        conn.execute("UPDATE api_keys SET revoked_at = now()")
    with TestClient(create_app(settings)) as client:
        assert client.get("/sites", headers=auth(token)).status_code == 401  # revoked
    again = asyncio.run(create_first_key(settings))  # every key revoked: the stack would be locked out
    assert again is not None and again != token
    with TestClient(create_app(settings)) as client:
        assert client.get("/sites", headers=auth(again)).status_code == 200


def test_a_truck_scenarios_laid_out_sites_are_merged_in_parents_first() -> None:
    """With trucks (the district scenario), the simulator lays out districts, depots, stations, estates and points
    (``inventory_sites``): their places and parameters (``clearance``) win, the names and households stay, every
    device's site is among them and each parent comes before its children."""
    from sanitel.simulators.run import inventory_sites
    from sanitel.stack_cli import merge_sites, scenario_sites

    scenario = load_scenario("district")
    devices = inventory(scenario, seed=DEFAULT_SEED, city=CITY)
    placed = {r["site_id"]: r for r in inventory_sites(scenario, seed=DEFAULT_SEED, city=CITY)}
    assert placed, "the district scenario has trucks"
    merged = merge_sites(scenario_sites(scenario, devices), list(placed.values()), scenario.timezone)
    seen: set[str] = set()
    for row in merged:
        assert row["parent_id"] is None or row["parent_id"] in seen, row
        seen.add(row["site_id"])
    assert {d["site_id"] for d in devices if d["site_id"]} <= seen
    by_id = {r["site_id"]: r for r in merged}
    point = next(p for p in placed.values() if p["kind"] == "sorting_point" and p["params"])
    mine = by_id[point["site_id"]]
    assert (mine["latitude"], mine["longitude"], mine["parent_id"]) == (point["lat"], point["lon"], point["parent_id"])
    assert set(mine["params"]) == {"households", *point["params"]} and mine["name"].startswith("Sorting point")
