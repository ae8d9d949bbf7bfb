"""The HTTP API against a real TimescaleDB: auth, errors, registry, readings, deposits, reports, health.

Fixture rows are inserted by SQL; the API is called in-process through Starlette's TestClient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import time_machine
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.broker_auth import BrokerAuthFiles, verify_password
from sanitel.db import one_row
from sanitel.heartbeats import STAGES, record_pass
from sanitel.servers import MosquittoServer, free_port
from sanitel.settings import load_settings
from tests.support.api_helpers import DAY_START, NOW, api_settings, assert_error, auth, mint_key, seed
from tests.support.db_clock import database_now

# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture
def seeded_db(fresh_db: str) -> str:
    seed(fresh_db)
    return fresh_db


@pytest.fixture
def app(seeded_db: str, tmp_path: Path) -> FastAPI:
    return create_app(api_settings(seeded_db, tmp_path))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def viewer(seeded_db: str) -> dict[str, str]:
    return auth(mint_key(seeded_db, "viewer"))


@pytest.fixture
def admin(seeded_db: str) -> dict[str, str]:
    return auth(mint_key(seeded_db, "admin", "ops-admin"))


# --- auth and errors ----------------------------------------------------------------------------------


def test_missing_malformed_unknown_and_revoked_keys_are_401(client: TestClient, seeded_db: str) -> None:
    response = client.get("/sites")
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(client.get("/sites", headers=auth("not-a-key")), 401, "unauthorized")
    forged = mint_key(seeded_db, "admin")[:-4] + "AAAA"  # right key id, wrong secret
    assert_error(client.get("/sites", headers=auth(forged)), 401, "unauthorized")
    token = mint_key(seeded_db, "viewer")
    assert client.get("/sites", headers={"X-API-Key": token}).status_code == 200
    with psycopg.connect(seeded_db) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now()")
    # revocation takes effect at once, even though the key was verified (and remembered) a moment ago
    assert_error(client.get("/sites", headers={"X-API-Key": token}), 401, "unauthorized")


def test_role_too_low_is_403(client: TestClient, viewer: dict[str, str], seeded_db: str) -> None:
    body = {"device_id": "SW-9", "kind": "sweeper"}
    error = assert_error(client.post("/devices", json=body, headers=viewer), 403, "forbidden")
    assert "admin" in str(error["message"])
    supervisor = auth(mint_key(seeded_db, "supervisor"))
    assert_error(client.post("/devices", json=body, headers=supervisor), 403, "forbidden")


def test_validation_errors_name_the_field(client: TestClient, viewer: dict[str, str]) -> None:
    assert_error(client.get("/sites?limit=0", headers=viewer), 422, "validation_error", "query.limit")
    assert_error(client.get("/sites?limit=100000", headers=viewer), 422, "validation_error", "query.limit")
    assert_error(client.get("/alerts?state=exploded", headers=viewer), 422, "validation_error", "query.state.0")
    assert_error(client.get("/sites?cursor=bm9wZQ", headers=viewer), 422, "validation_error", "query.cursor")
    assert_error(client.get("/alerts?from=2024-01-01T00:00:00", headers=viewer), 422, "validation_error",
                 "query.from")  # no offset: ambiguous
    assert_error(client.get("/devices/bad%20id", headers=viewer), 422, "validation_error", "path.device_id")


def test_unknown_path_and_unexpected_errors_keep_the_shape_without_a_trace(app: FastAPI,
                                                                           viewer: dict[str, str]) -> None:
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.get("/no/such/thing", headers=viewer), 404, "not_found")
        response = c.get("/boom")
        error = assert_error(response, 500, "internal_error")
        assert "hunter2" not in response.text and "Traceback" not in response.text
        assert re.search(r"incident [0-9a-f]{12}", str(error["message"]))


def test_database_down_is_503_not_500(tmp_path: Path, viewer: dict[str, str]) -> None:
    settings = api_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", tmp_path)
    with TestClient(create_app(settings)) as c:
        assert_error(c.get("/sites", headers=viewer), 503, "database_unavailable")
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "down"}  # anonymous: the status only


# --- sites and devices --------------------------------------------------------------------------------

def test_sites_filter_page_and_detail(client: TestClient, viewer: dict[str, str]) -> None:
    districts = client.get("/sites?kind=district", headers=viewer).json()
    assert [s["site_id"] for s in districts["items"]] == ["futian", "luohu"]
    first = client.get("/sites?limit=3", headers=viewer).json()
    second = client.get(f"/sites?limit=3&cursor={first['next_cursor']}", headers=viewer).json()
    third = client.get(f"/sites?limit=3&cursor={second['next_cursor']}", headers=viewer).json()
    ids = [s["site_id"] for page in (first, second, third) for s in page["items"]]
    assert ids == sorted(ids) and len(ids) == 7 and third["next_cursor"] is None
    assert [s["site_id"] for s in client.get("/sites?parent_id=futian", headers=viewer).json()["items"]] == \
        ["depot-1", "estate-1", "ts-1"]
    assert [s["site_id"] for s in client.get("/sites?q=Point", headers=viewer).json()["items"]] == ["sp-1"]
    assert client.get("/sites?q=%25", headers=viewer).json()["items"] == []  # '%' is literal, not a wildcard

    detail = client.get("/sites/futian", headers=viewer).json()
    assert detail["child_count"] == 3
    assert detail["device_counts"] == {"sweeper": 1, "transfer_station": 1, "bin": 1, "camera": 1}
    assert_error(client.get("/sites/nowhere", headers=viewer), 404, "not_found")


@pytest.mark.clock
def test_devices_filter_by_kind_subtree_and_online(client: TestClient, viewer: dict[str, str],
                                                   seeded_db: str) -> None:
    # `online` is judged by the database's now(), not this process's clock: hear the sweepers 10 s and an hour
    # before the database's now
    heard = database_now(seeded_db)
    with psycopg.connect(seeded_db) as conn:
        conn.execute("UPDATE device_last_seen SET last_received = %s WHERE device_id = 'SW-1'",
                     (heard - timedelta(seconds=10),))
        conn.execute("UPDATE device_last_seen SET last_received = %s WHERE device_id = 'SW-2'",
                     (heard - timedelta(hours=1),))

    def ids(query: str) -> list[str]:
        response = client.get(f"/devices?{query}", headers=viewer)
        assert response.status_code == 200, response.text
        return [d["device_id"] for d in response.json()["items"]]

    assert ids("kind=sweeper") == ["SW-1", "SW-2"]
    assert ids("site_id=futian") == ["BIN-1", "CAM-1", "SW-1", "TS-1"]  # the whole subtree
    assert ids("site_id=estate-1") == ["BIN-1", "CAM-1"]
    assert ids("online=true") == ["SW-1"]  # SW-2 last heard an hour ago, timeout 15 min
    assert "SW-2" in ids("online=false")
    device = client.get("/devices/SW-1", headers=viewer).json()
    assert device["online"] is True and device["has_credentials"] is False and device["site_id"] == "depot-1"
    assert_error(client.get("/devices/NOPE", headers=viewer), 404, "not_found")


def test_register_device_issues_working_credentials_once(client: TestClient, admin: dict[str, str],
                                                         seeded_db: str) -> None:
    body = {"device_id": "SW-9", "kind": "sweeper", "site_id": "depot-1", "name": "new", "metadata": {"v": 1}}
    response = client.post("/devices", json=body, headers=admin)
    assert response.status_code == 201, response.text
    created = response.json()
    creds = created["credentials"]
    assert created["device"]["has_credentials"] is True and created["device"]["auto_registered"] is False
    assert creds["username"] == "SW-9" and creds["topic_prefix"].endswith("/sweeper/SW-9/")
    with psycopg.connect(seeded_db) as conn:
        stored = one_row(conn.execute("SELECT mqtt_password_hash FROM devices WHERE device_id = 'SW-9'"))[0]
    assert creds["password"] not in stored and verify_password(creds["password"], stored)

    assert_error(client.post("/devices", json=body, headers=admin), 409, "conflict")
    assert_error(client.post("/devices", json=body | {"device_id": "SW-10", "site_id": "nowhere"}, headers=admin),
                 422, "validation_error", "body.site_id")
    assert_error(client.post("/devices", json=body | {"kind": "toaster"}, headers=admin), 422,
                 "validation_error", "body.kind")

    rotated = client.post("/devices/SW-9/credentials", headers=admin).json()
    with psycopg.connect(seeded_db) as conn:
        stored = one_row(conn.execute("SELECT mqtt_password_hash FROM devices WHERE device_id = 'SW-9'"))[0]
    assert verify_password(rotated["password"], stored) and not verify_password(creds["password"], stored)
    assert_error(client.post("/devices/NOPE/credentials", headers=admin), 404, "not_found")


def test_registering_an_auto_registered_device_claims_it(client: TestClient, admin: dict[str, str],
                                                        seeded_db: str) -> None:
    with psycopg.connect(seeded_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, auto_registered) VALUES ('BIN-7', 'bin', true)")
    response = client.post("/devices", json={"device_id": "BIN-7", "kind": "bin", "site_id": "sp-1"}, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["device"]["auto_registered"] is False
    assert response.json()["device"]["site_id"] == "sp-1"


def test_registration_rewrites_broker_files_when_auth_is_on(seeded_db: str, tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "passwd", tmp_path / "acl")
    files.password_file.write_text("")  # auth on
    admin = auth(mint_key(seeded_db, "admin"))
    with TestClient(create_app(api_settings(seeded_db, tmp_path), broker_auth=files)) as c:
        password = c.post("/devices", json={"device_id": "CAM-9", "kind": "camera"}, headers=admin).json()
    line = files.password_file.read_text().strip()
    assert line.startswith("CAM-9:$7$") and verify_password(password["credentials"]["password"], line[6:])
    acl = files.acl_file.read_text()
    assert "user CAM-9\ntopic write sanitation/shenzhen/camera/CAM-9/telemetry\n" in acl and "pattern" not in acl


def test_gateway_registry_devices_credentials_and_removal(seeded_db: str, tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "passwd", tmp_path / "acl")
    files.password_file.write_text("")  # auth on
    admin, viewer = auth(mint_key(seeded_db, "admin")), auth(mint_key(seeded_db, "viewer"))
    body = {"gateway_id": "GW-1", "name": "bins", "site_id": "sp-1", "devices": ["BIN-1", "CAM-1"]}
    with TestClient(create_app(api_settings(seeded_db, tmp_path), broker_auth=files)) as c:
        assert_error(c.post("/gateways", json=body, headers=viewer), 403, "forbidden")
        error = assert_error(c.post("/gateways", json=body | {"devices": ["BIN-1", "NOPE", "GONE"]}, headers=admin),
                             422, "validation_error", "body.devices")
        assert "'NOPE'" in error["message"] and "'GONE'" in error["message"] and "BIN-1" not in error["message"]
        assert_error(c.post("/gateways", json=body | {"site_id": "nowhere"}, headers=admin), 422,
                     "validation_error", "body.site_id")
        created = c.post("/gateways", json=body, headers=admin)
        assert created.status_code == 201, created.text
        creds = created.json()["credentials"]
        assert created.json()["gateway"] | {"registered_at": None} == {
            "gateway_id": "GW-1", "name": "bins", "site_id": "sp-1", "registered_at": None, "has_credentials": True,
            "devices": ["BIN-1", "CAM-1"]}
        assert creds["username"] == "GW-1" and creds["topic_prefix"] == "sanitation/shenzhen/gateway/GW-1/"
        assert verify_password(creds["password"], dict(line.split(":", 1) for line in
                                                       files.password_file.read_text().splitlines())["GW-1"])
        assert "user GW-1\ntopic write sanitation/shenzhen/gateway/GW-1/batch\n" in files.acl_file.read_text()
        assert_error(c.post("/gateways", json=body, headers=admin), 409, "conflict")

        assert c.get("/devices/BIN-1", headers=viewer).json()["gateway_id"] == "GW-1"
        assert [g["gateway_id"] for g in c.get("/gateways", headers=viewer).json()["items"]] == ["GW-1"]
        replaced = c.put("/gateways/GW-1/devices", json={"devices": ["CAM-1", "TS-1", "TS-1"]}, headers=admin)
        assert replaced.status_code == 200 and replaced.json()["devices"] == ["CAM-1", "TS-1"]
        assert c.get("/gateways/GW-1", headers=viewer).json()["devices"] == ["CAM-1", "TS-1"]
        assert c.get("/devices/BIN-1", headers=viewer).json()["gateway_id"] is None
        assert_error(c.put("/gateways/GW-1/devices", json={"devices": ["NOPE"]}, headers=admin), 422,
                     "validation_error", "body.devices")
        assert_error(c.put("/gateways/GW-9/devices", json={"devices": []}, headers=admin), 404, "not_found")

        # a device registered behind the gateway; an unknown gateway is named
        behind = c.post("/devices", json={"device_id": "BIN-8", "kind": "bin", "gateway_id": "GW-1"}, headers=admin)
        assert behind.status_code == 201 and behind.json()["device"]["gateway_id"] == "GW-1"
        assert_error(c.post("/devices", json={"device_id": "BIN-9", "kind": "bin", "gateway_id": "GW-9"},
                            headers=admin), 422, "validation_error", "body.gateway_id")

        rotated = c.post("/gateways/GW-1/credentials", headers=admin).json()
        stored = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())["GW-1"]
        assert verify_password(rotated["password"], stored) and not verify_password(creds["password"], stored)
        assert_error(c.post("/gateways/GW-9/credentials", headers=admin), 404, "not_found")

        assert c.delete("/gateways/GW-1", headers=admin).status_code == 204
        assert_error(c.get("/gateways/GW-1", headers=viewer), 404, "not_found")
        assert_error(c.delete("/gateways/GW-1", headers=admin), 404, "not_found")
        assert c.get("/devices/CAM-1", headers=viewer).json()["gateway_id"] is None  # the devices stay
        assert "GW-1" not in files.password_file.read_text() and "GW-1" not in files.acl_file.read_text()


# --- readings -----------------------------------------------------------------------------------------

def test_latest_reading_per_device_and_per_site(client: TestClient, viewer: dict[str, str]) -> None:
    latest = client.get("/devices/SW-1/latest", headers=viewer).json()
    (reading,) = latest["readings"]
    assert reading["type"] == "sweeper_telemetry" and reading["seq"] == 1439
    assert reading["values"]["soc_pct"] == pytest.approx(100 - 1439 / 30, abs=1e-3)
    assert "stored_at" not in reading["values"] and "device_id" not in reading["values"]

    bins = client.get("/devices/BIN-1/latest", headers=viewer).json()
    assert {r["type"] for r in bins["readings"]} == {"bin_status", "bin_deposits"}

    site = client.get("/sites/futian/latest", headers=viewer).json()
    by_device = {d["device_id"]: d for d in site["items"]}
    assert set(by_device) == {"BIN-1", "CAM-1", "SW-1", "TS-1"}
    assert by_device["TS-1"]["readings"][0]["values"]["h2s_mg_m3"] == pytest.approx(0.02)
    paged = client.get("/sites/futian/latest?limit=3", headers=viewer).json()
    rest = client.get(f"/sites/futian/latest?limit=3&cursor={paged['next_cursor']}", headers=viewer).json()
    assert len(paged["items"]) == 3 and [d["device_id"] for d in rest["items"]] == ["TS-1"]


def test_history_in_five_minute_buckets(client: TestClient, viewer: dict[str, str]) -> None:
    start, end = DAY_START, DAY_START + timedelta(days=1)
    response = client.get("/devices/SW-1/history", headers=viewer, params={
        "metric": "soc_pct", "from": start.isoformat(), "to": end.isoformat(), "bucket": "5m"})
    assert response.status_code == 200, response.text
    history = response.json()
    assert history["unit"] == "%" and history["source"] == "sweeper_telemetry"
    assert len(history["points"]) == 288
    first = history["points"][0]
    assert datetime.fromisoformat(first["ts"]) == start and first["count"] == 5
    assert first["value"] == pytest.approx(100 - 2 / 30, abs=1e-4)  # mean of minutes 0..4

    minimum = client.get("/devices/SW-1/history", headers=viewer, params={
        "metric": "soc_pct", "from": start.isoformat(), "to": end.isoformat(), "bucket": "1d",
        "aggregate": "min"}).json()
    assert [p["value"] for p in minimum["points"]] == [pytest.approx(100 - 1439 / 30, abs=1e-3)]
    brush = client.get("/devices/SW-1/history", headers=viewer, params={
        "metric": "brush_on", "from": start.isoformat(), "to": end.isoformat(), "bucket": "1h"}).json()
    assert brush["points"][0]["value"] == pytest.approx(0.5)  # on every other minute


def test_raw_history_pages_in_order(client: TestClient, viewer: dict[str, str]) -> None:
    params = {"metric": "speed_kmh", "from": DAY_START.isoformat(),
              "to": (DAY_START + timedelta(minutes=10)).isoformat(), "limit": 4}
    seen: list[str] = []
    cursor = None
    while True:
        page = client.get("/devices/SW-1/history", headers=viewer,
                          params=params | ({"cursor": cursor} if cursor else {})).json()
        seen += [p["ts"] for p in page["points"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 10 and seen == sorted(seen) and len(set(seen)) == 10


def test_history_limits_and_unknown_metric(client: TestClient, viewer: dict[str, str]) -> None:
    def get(**params: str) -> object:
        return client.get("/devices/SW-1/history", headers=viewer, params={"metric": "soc_pct"} | params)

    error = assert_error(get(metric="h2s_mg_m3"), 422, "validation_error", "query.metric")
    assert "soc_pct" in str(error["message"])  # lists what the kind does have
    assert_error(get(**{"from": "2020-01-01T00:00:00Z", "to": "2022-01-01T00:00:00Z"}), 422,
                 "validation_error", "query.from")
    assert_error(get(**{"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"}), 422,
                 "validation_error", "query.from")
    assert_error(get(**{"from": "2024-01-01T00:00:00Z", "to": "2024-03-01T00:00:00Z", "bucket": "1s"}), 422,
                 "validation_error", "query.bucket")
    assert_error(get(bucket="5 minutes"), 422, "validation_error", "query.bucket")
    assert_error(get(bucket="1h", timezone="Mars/Olympus"), 422, "validation_error", "query.timezone")
    assert_error(get(aggregate="median"), 422, "validation_error", "query.aggregate")


def test_metric_catalogue(client: TestClient, viewer: dict[str, str]) -> None:
    metrics = client.get("/readings/metrics?kind=cems", headers=viewer).json()
    names = {m["metric"] for m in metrics}
    assert {"so2_zs_mg_m3", "o2_pct", "furnace_temp_c"} <= names and "so2_flag" not in names


# --- deposits and reports -----------------------------------------------------------------------------

@pytest.mark.clock
def test_deposits_per_household_and_point_with_category_totals(client: TestClient, viewer: dict[str, str]) -> None:
    window = {"from": DAY_START.isoformat(), "to": (DAY_START + timedelta(days=1)).isoformat()}
    household = client.get("/deposits/households/HH-1", headers=viewer, params=window).json()
    assert household["deposits"] == 2 and household["weight_kg"] == pytest.approx(3.5)
    assert {t["category"]: t["weight_kg"] for t in household["totals"]} == {"kitchen": 2.5, "recyclable": 1.0}

    point = client.get("/deposits/points/sp-1", headers=viewer, params=window | {"limit": 2}).json()
    assert point["deposits"] == 3 and point["households"] == 2
    assert {t["category"]: t["deposits"] for t in point["totals"]} == {"kitchen": 2, "recyclable": 1}
    assert len(point["items"]) == 2 and point["items"][0]["household_id"] == "HH-2"  # newest first
    rest = client.get("/deposits/points/sp-1", headers=viewer,
                      params=window | {"limit": 2, "cursor": point["next_cursor"]}).json()
    assert [i["seq"] for i in rest["items"]] == [1] and rest["totals"] == point["totals"]

    with time_machine.travel(NOW, tick=False):  # the default range ends at this process's now
        month = client.get("/deposits/households/HH-1", headers=viewer).json()  # default: last 30 days
    assert month["deposits"] == 3


@pytest.mark.clock
def test_daily_summary_per_district_json_and_csv(client: TestClient, viewer: dict[str, str]) -> None:
    day = DAY_START.date().isoformat()
    rows = client.get(f"/reports/daily?date={day}", headers=viewer).json()
    futian, luohu = rows
    assert futian["district_id"] == "futian" and luohu["district_id"] == "luohu"
    assert futian["devices"] == 4 and futian["devices_reporting"] == 4
    # 1000.0 -> 1071.9 before the reset at noon, 0 -> 71.9 after: 143.8 km, not 143.8 - 1071.9
    assert futian["swept_km"] == pytest.approx(143.8, abs=0.01)
    assert futian["sweeper_work_h"] == pytest.approx(1439 / 60, abs=0.01)
    assert futian["sweepers_active"] == 1
    assert futian["station_trucks"] == 2 and futian["station_net_t"] == pytest.approx(15.0)
    assert futian["station_max_noise_dba"] == pytest.approx(61)
    assert futian["deposits"] == 3 and futian["households"] == 2 and futian["kitchen_kg"] == pytest.approx(4.0)
    assert futian["hazardous_kg"] == 0 and futian["mis_sorted"] == 2 and futian["overflow"] == 1
    assert luohu["devices"] == 1 and luohu["devices_reporting"] == 0 and luohu["station_max_noise_dba"] is None

    csv = client.get(f"/reports/daily?date={day}&district_id=futian&format=csv", headers=viewer)
    assert csv.headers["content-type"].startswith("text/csv")
    header, line = csv.text.strip().splitlines()
    assert header.startswith("district_id,district,date,devices,devices_reporting")
    assert line.startswith(f"futian,Futian District,{day},4,4,")
    assert_error(client.get(f"/reports/daily?date={day}&district_id=nowhere", headers=viewer), 404, "not_found")


# --- health and metrics -------------------------------------------------------------------------------

class FakeClock:
    """Monotonic seconds that move only when a test says so (the caches of /health and of verified keys)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.clock
def test_health_reports_database_broker_lag_spool_and_dead_letters(seeded_db: str, tmp_path: Path,
                                                                  mqtt_server: MosquittoServer,
                                                                  viewer: dict[str, str]) -> None:
    settings = api_settings(seeded_db, tmp_path, mqtt_url=mqtt_server.url)
    clock = FakeClock()
    with psycopg.connect(seeded_db, autocommit=True) as conn:  # every background stage passed 10 s before NOW
        for stage, interval in zip(STAGES, (30.0, 60.0, 5.0), strict=True):
            record_pass(conn, stage, f"{stage}-1", interval_s=interval, at=NOW - timedelta(seconds=10),
                        started_at=NOW - timedelta(hours=1))
    with TestClient(create_app(settings, clock=clock)) as c:
        with time_machine.travel(NOW, tick=False):  # the lag is measured on this process's clock
            health = c.get("/health", headers=viewer).json()
        assert health["status"] == "ok", health
        assert health["problems"] == []
        checks = health["checks"]
        assert checks["processor"]["data"] == {"last_pass_at": (NOW - timedelta(seconds=10)).isoformat(),
                                               "lag_s": 10.0, "interval_s": 60.0, "overdue_after_s": 180.0,
                                               "instances": 1, "stopped_instances": 0}
        assert checks["evaluator"]["detail"] == "the alert evaluator last passed 10 s ago (every 5 s)"
        assert checks["database"]["data"]["license"] == "apache"
        assert checks["broker"]["status"] == "ok" and "accepted" in checks["broker"]["detail"]
        assert checks["collector_lag"]["data"]["lag_s"] == 10.0  # SW-1 was last heard 10 s before NOW
        assert checks["collector_lag"]["detail"] == "last message received 10.0 s ago"
        assert checks["spool"]["data"]["bytes"] == 0

        spool = settings.effective_spool_dir
        spool.mkdir(parents=True)
        (spool / "000001.spool").write_bytes(b"x" * 1234)
        with psycopg.connect(seeded_db) as conn:
            conn.execute("INSERT INTO dead_letter_payloads (sha256, size, payload, first_received_at, "
                         "last_received_at) VALUES ('h1', 1, 'x', now(), now())")
            conn.execute("INSERT INTO dead_letters (received_at, topic, reason_code, reason, message_key, "
                         "payload_sha256) VALUES (now(), 't', 'invalid_json', 'bad', 'k1', 'h1')")
        assert c.get("/health", headers=viewer).json()["status"] == "ok"  # checks run at most every few seconds
        clock.now += 10
        health = c.get("/health", headers=viewer).json()
        assert health["status"] == "degraded"
        assert any(p.startswith("spool: 1234 bytes in 1 segment(s)") for p in health["problems"]), health["problems"]
        assert health["checks"]["spool"]["data"] == {"files": 1, "bytes": 1234, "max_bytes": settings.spool_max_bytes,
                                                     "full": False, "quarantined_records": 0}
        assert health["checks"]["dead_letters"]["data"]["last_hour"] == 1

        text = c.get("/metrics", headers=viewer).text
        assert "sanitel_api_spool_backlog_bytes 1234.0" in text
        assert 'sanitel_api_requests_total{method="GET",route="/health",status_class="2xx"} 3.0' in text


def test_health_says_when_the_broker_is_down(client: TestClient, viewer: dict[str, str]) -> None:
    health = client.get("/health", headers=viewer)
    assert health.status_code == 200  # the API still serves data without a broker
    assert health.json()["checks"]["broker"]["status"] == "down"
    assert health.json()["status"] == "degraded"
    assert client.get("/health").json() == {"status": "degraded"}  # without a key: the status only


def test_metrics_count_requests_by_route_template(client: TestClient, viewer: dict[str, str]) -> None:
    client.get("/devices/SW-1", headers=viewer)
    client.get("/devices/SW-2", headers=viewer)
    text = client.get("/metrics", headers=viewer).text
    assert 'sanitel_api_requests_total{method="GET",route="/devices/{device_id}",status_class="2xx"} 2.0' in text
    assert "SW-1" not in text


def test_openapi_documents_examples_and_auth(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    assert schema["components"]["schemas"]["Alert"]["examples"]
    assert client.get("/docs").status_code == 200


# --- command line -------------------------------------------------------------------------------------

def test_keys_cli_create_list_revoke(seeded_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from sanitel.cli import main

    monkeypatch.setenv("SANITEL_DATABASE_URL", seeded_db)
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--role", "supervisor", "--name", "night shift"]) == 0
    token = capsys.readouterr().out.splitlines()[0]
    assert token.startswith("sntl_")
    with psycopg.connect(seeded_db) as conn:
        stored = one_row(conn.execute("SELECT secret_hash FROM api_keys"))[0]
    assert token.split("_", 2)[2] not in stored and stored.startswith("scrypt$")

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    key_id = token[5:21]
    assert key_id in listing and "supervisor" in listing and "night shift" in listing

    with TestClient(create_app(api_settings(seeded_db, tmp_path))) as c:
        assert c.get("/alerts", headers=auth(token)).status_code == 200
        assert main(["keys", "revoke", key_id]) == 0
        assert_error(c.get("/alerts", headers=auth(token)), 401, "unauthorized")
    assert main(["keys", "revoke", "0123456789abcdef"]) == 2  # unknown: a clear error, not a traceback
    assert "no key" in capsys.readouterr().err


def test_devices_cli_registers_and_writes_broker_files(seeded_db: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from sanitel.cli import main

    monkeypatch.setenv("SANITEL_DATABASE_URL", seeded_db)
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    assert main(["devices", "credentials", "sanitel-collector", "--service", "service"]) == 0
    assert main(["devices", "register", "CEMS-1", "--kind", "cems", "--site", "futian"]) == 0
    out = capsys.readouterr().out
    password = re.findall(r"password: (\S+)", out)[-1]
    assert "publish under: sanitation/shenzhen/cems/CEMS-1/" in out
    assert main(["devices", "register", "CEMS-1", "--kind", "cems"]) == 2  # already registered

    files = BrokerAuthFiles.for_data_dir(tmp_path)
    assert main(["devices", "broker-files"]) == 0
    lines = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert set(lines) == {"CEMS-1", "sanitel-collector"} and verify_password(password, lines["CEMS-1"])
    acl = files.acl_file.read_text()
    assert "user sanitel-collector\ntopic read sanitation/shenzhen/#\n" in acl


def test_gateways_cli_register_devices_list_credentials_remove(seeded_db: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from sanitel.cli import main

    monkeypatch.setenv("SANITEL_DATABASE_URL", seeded_db)
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    files = BrokerAuthFiles.for_data_dir(tmp_path)
    assert main(["devices", "broker-files"]) == 0  # auth on
    assert main(["gateways", "register", "GW-1", "--device", "BIN-1", "--device", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert main(["gateways", "register", "SW-1", "--device", "BIN-1"]) == 2  # a device's id
    assert main(["gateways", "register", "GW-1", "--device", "BIN-1", "--site", "sp-1", "--name", "bins"]) == 0
    out = capsys.readouterr().out
    password = re.findall(r"password: (\S+)", out)[-1]
    assert "publish under: sanitation/shenzhen/gateway/GW-1/" in out
    lines = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert verify_password(password, lines["GW-1"])
    assert main(["devices", "register", "GW-1", "--kind", "bin"]) == 2  # a gateway's id
    assert main(["devices", "register", "BIN-5", "--kind", "bin", "--gateway", "GW-1"]) == 0

    assert main(["gateways", "devices", "GW-1", "--add", "CAM-1", "--remove", "BIN-1"]) == 0
    assert "behind GW-1: BIN-5, CAM-1" in capsys.readouterr().out
    assert main(["gateways", "devices", "GW-1", "--remove", "SW-1"]) == 2  # not behind it: nothing changes
    assert main(["gateways", "list"]) == 0
    assert re.search(r"GW-1\s+sp-1\s+yes\s+BIN-5, CAM-1", capsys.readouterr().out)

    assert main(["gateways", "credentials", "GW-1"]) == 0
    rotated = re.findall(r"password: (\S+)", capsys.readouterr().out)[-1]
    lines = dict(line.split(":", 1) for line in files.password_file.read_text().splitlines())
    assert verify_password(rotated, lines["GW-1"]) and not verify_password(password, lines["GW-1"])
    assert main(["gateways", "remove", "GW-1"]) == 0
    assert main(["gateways", "remove", "GW-1"]) == 2
    assert "GW-1" not in files.password_file.read_text()


def test_cems_history_is_served_from_the_averages_rollup_where_it_exists(client: TestClient, seeded_db: str,
                                                                       viewer: dict[str, str]) -> None:
    start = DAY_START
    with psycopg.connect(seeded_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('CEMS-1', 'cems')")
        # raw readings: one invalid (calibration) value that a plain average would include
        conn.execute("INSERT INTO cems_readings (device_id, ts, received_at, so2_zs_mg_m3, so2_flag)"
                     " VALUES ('CEMS-1', %s, %s, 40, 'N'), ('CEMS-1', %s, %s, 400, 'C')",
                     (start, start, start + timedelta(minutes=1), start))
        conn.execute("INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end,"
                     " avg_zs_mg_m3, n_valid, status, valid) VALUES ('CEMS-1', 'so2', '1h', 'gb', %s, %s, 40, 1,"
                     " 'valid', true)", (start, start + timedelta(hours=1)))
    window = {"from": start.isoformat(), "to": (start + timedelta(hours=2)).isoformat()}

    def history(**params: str) -> dict[str, Any]:
        response = client.get("/devices/CEMS-1/history", headers=viewer, params=window | params)
        assert response.status_code == 200, response.text
        return response.json()

    hourly = history(metric="so2_zs_mg_m3", bucket="1h")
    assert hourly["source"] == "cems_averages (1h, gb)"
    assert hourly["points"] == [{"ts": start.isoformat().replace("+00:00", "Z"), "value": 40.0, "count": 1,
                                 "status": "valid"}]
    raw_avg = history(metric="so2_zs_mg_m3", bucket="15m")  # no rollup at 15 minutes: time_bucket
    assert raw_avg["source"] == "cems_readings" and raw_avg["points"][0]["value"] == pytest.approx(220)
    assert history(metric="so2_zs_mg_m3", bucket="1h", aggregate="max")["source"] == "cems_readings"


@pytest.mark.clock
def test_telemetry_history_comes_from_the_5_minute_rollups_once_they_are_built(
        client: TestClient, seeded_db: str, viewer: dict[str, str]) -> None:
    from sanitel.processors.maintenance import run_pass

    window = {"from": DAY_START.isoformat(), "to": (DAY_START + timedelta(days=1)).isoformat()}

    def history(**params: str) -> dict[str, Any]:
        response = client.get("/devices/SW-1/history", headers=viewer, params=window | params)
        assert response.status_code == 200, response.text
        return response.json()

    raw = history(metric="soc_pct", bucket="1h")
    assert raw["source"] == "sweeper_telemetry"  # no rollup pass has run yet
    with psycopg.connect(seeded_db, autocommit=True) as conn:
        # the scheduled processor, a few minutes after NOW: every seeded row (stored when received) is settled
        run_pass(conn, load_settings(database_url=seeded_db), now=NOW + timedelta(minutes=3), retention=False)
        conn.execute("DELETE FROM sweeper_telemetry WHERE device_id = 'SW-1'")  # as retention would, later
    rolled = history(metric="soc_pct", bucket="1h")
    assert rolled["source"] == "sweeper_telemetry_5m"
    assert len(raw["points"]) == 24 and [p["ts"] for p in rolled["points"]] == [p["ts"] for p in raw["points"]]
    for got, want in zip(rolled["points"], raw["points"], strict=True):
        assert got["value"] == pytest.approx(want["value"], abs=1e-3) and got["count"] == want["count"] == 60
    assert history(metric="soc_pct", bucket="1h", aggregate="min")["points"][-1]["value"] == \
        pytest.approx(100 - 1439 / 30, abs=1e-3)
    # what the rollup does not hold comes from the (now empty) raw table
    assert history(metric="soc_pct", bucket="1h", aggregate="count")["source"] == "sweeper_telemetry"
    assert history(metric="odometer_km", bucket="1h")["points"] == []
    assert history(metric="soc_pct", bucket="7m")["source"] == "sweeper_telemetry"
    # a range reaching past the processor's watermark: rollups first, then raw readings
    mixed = history(metric="soc_pct", bucket="1h", to=(NOW + timedelta(hours=2)).isoformat())
    assert mixed["source"] == "sweeper_telemetry_5m + sweeper_telemetry"
