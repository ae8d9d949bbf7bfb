"""``GET /sites/{site_id}/limits`` (issue 14, the console's transfer-station charts) against a real TimescaleDB: the
thresholds of the rules in force on the readings of the site's devices after the site's parameters — odour grade
(GB 14554-93 table 1), noise class with its day and night periods (GB 12348-2008), a permit's override — merged
down the site tree as the alert engine merges them; disabled rules left out; viewer role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from sanitel.api.app import create_app
from sanitel.api.routes.sites import period_of
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key


@pytest.fixture
def stations_db(fresh_db: str) -> str:
    sites = [("futian", "district", None, {"noise_class": 4}),
             ("ts-1", "transfer_station", "futian",
              {"odour_grade": 1, "noise_class": "1", "limits": {"station_nh3": 1.2}, "disabled_rules": ["station_odour"]}),
             ("ts-2", "transfer_station", "futian", {}),
             ("ts-3", "transfer_station", None, {}),
             ("empty", "depot", "futian", {})]
    with psycopg.connect(fresh_db) as conn:
        for site_id, kind, parent, params in sites:
            conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone, params) VALUES"
                         " (%s, %s, %s, %s, 'Asia/Shanghai', %s)", (site_id, kind, site_id, parent, Jsonb(params)))
        conn.execute("INSERT INTO devices (device_id, kind, site_id) VALUES ('TS-1', 'transfer_station', 'ts-1'),"
                     " ('TS-2', 'transfer_station', 'ts-2'), ('TS-3', 'transfer_station', 'ts-3')")
    return fresh_db


@pytest.fixture
def client(stations_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(stations_db, tmp_path))) as c:
        yield c


def _limits(client: TestClient, site: str, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    response = client.get(f"/sites/{site}/limits", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["site_id"] == site and body["timezone"] == "Asia/Shanghai"
    return {item["rule_id"]: item for item in body["limits"]}


def test_a_stations_grade_class_and_permit_set_its_limits(stations_db: str, client: TestClient) -> None:
    limits = _limits(client, "ts-1", auth(mint_key(stations_db, "viewer")))
    h2s = limits["station_h2s"]
    assert (h2s["metric"], h2s["op"], h2s["threshold"], h2s["period"], h2s["hours"]) == \
        ("h2s_mg_m3", ">", 0.03, None, None)  # GB 14554-93 table 1, grade 1
    assert h2s["source"] == "GB 14554-93 table 1" and h2s["unit"] and h2s["kind"] == "transfer_station"
    assert h2s["params"] == {"odour_grade": 1}
    assert limits["station_nh3"]["threshold"] == 1.2  # the permit's override
    day, night = limits["station_noise_day"], limits["station_noise_night"]
    assert (day["threshold"], day["period"], day["hours"], day["source"]) == (55, "day", "06:00-22:00", "GB 12348-2008")
    assert (night["threshold"], night["period"], night["hours"]) == (45, "night", "22:00-06:00")  # class 1
    assert "station_odour" not in limits  # disabled at the site
    assert limits["station_leachate_high"]["source"] is None and limits["station_leachate_high"]["unverified"]


def test_parameters_merge_down_the_tree_and_defaults_apply_without(stations_db: str, client: TestClient) -> None:
    viewer = auth(mint_key(stations_db, "viewer"))
    inherited = _limits(client, "ts-2", viewer)  # the district's noise class 4, the default odour grade 2
    assert (inherited["station_noise_day"]["threshold"], inherited["station_noise_night"]["threshold"]) == (70, 55)
    assert (inherited["station_h2s"]["threshold"], inherited["station_nh3"]["threshold"]) == (0.06, 1.5)
    assert "station_odour" in inherited
    defaults = _limits(client, "ts-3", viewer)  # no parameters anywhere: the rules' defaults (grade 2, class 2)
    assert (defaults["station_noise_day"]["threshold"], defaults["station_noise_night"]["threshold"]) == (60, 50)
    district = _limits(client, "futian", viewer)  # its stations' rules, at the district's own parameters
    assert district["station_noise_night"]["threshold"] == 55
    assert _limits(client, "empty", viewer) == {}  # no devices there: no rule judges anything


def test_limits_need_a_key_and_an_existing_site(stations_db: str, client: TestClient) -> None:
    assert_error(client.get("/sites/ts-1/limits"), 401, "unauthorized")
    assert_error(client.get("/sites/nowhere/limits", headers=auth(mint_key(stations_db, "viewer"))), 404, "not_found")


_HHMM = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))


@given(_HHMM, _HHMM)
def test_any_rules_local_hours_are_day_when_they_hold_noon_else_night(start: str, end: str) -> None:
    period = period_of(f"{start}-{end}")
    holds_noon = start <= "12:00" < end if start < end else not end <= "12:00" < start
    assert period == ("day" if holds_noon else "night")
    assert period_of(None) is None
