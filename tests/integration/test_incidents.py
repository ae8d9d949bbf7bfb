"""Incidents (issue 18, Must show 3) against a real TimescaleDB: the evaluator's pass as tests/support/alerts_db.py runs
it, then the incident step as the service runs it right after (``maintain``), with the shipped incidents.yaml
(group_wait 30 s, group_interval 5 min) and rule ids of the shipped packs (ranks and inhibitions name them).

Every instant is fixed: passes run at device time plus a few minutes, as a live evaluator would.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.incidents import IncidentReport, load_incident_rules, maintain
from sanitel.alerts.rules import RuleSet
from sanitel.api.app import create_app
from sanitel.db import load_migrations
from tests.integration.security.as_roles import enable_logins, role_url
from tests.support.alerts_db import add_device, add_site, alerts, at, insert, notifications, ruleset
from tests.support.api_helpers import api_settings, auth, mint_key

SHIPPED = load_incident_rules()
WAIT = SHIPPED.group_wait  # 30 s
INTERVAL = SHIPPED.group_interval  # 5 min

BIN_FIRE = {"id": "bin_fire", "kind": "threshold", "summary": "{device_id}: fire alarm", "severity": "critical",
            "source": "bin_status", "field": "fire_alarm", "op": "==", "threshold": True}
CAMERA_SMOKE = {"id": "camera_smoke_fire", "kind": "event_count", "summary": "{point}: smoke or fire seen",
                "severity": "critical", "source": "camera_detections",
                "where": {"detection": "smoke_fire", "confidence": {">=": 0.7}}, "per": "point", "window": "10m",
                "threshold": 1}
OFFLINE = {"id": "device_offline", "kind": "offline", "summary": "{device_id}: no data", "severity": "minor",
           "scope": {"kinds": ["transfer_station", "bin"]}}
H2S = {"id": "station_h2s", "kind": "threshold", "summary": "{device_id}: H2S {value}", "severity": "major",
       "source": "station_telemetry", "field": "h2s_mg_m3", "op": ">", "threshold": 0.06}
CO = {"id": "cems_co_raw", "kind": "threshold", "summary": "{device_id}: CO {value}", "severity": "major",
      "source": "cems_readings", "field": "co_zs_mg_m3", "op": ">", "threshold": 100}


def step(url: str, rules: RuleSet, now: datetime) -> IncidentReport:
    """One evaluator pass (as ``alerts_db.run`` runs it) and the incident step after it with the shipped rules, both
    at ``now``, on one connection: as the service does."""
    with psycopg.connect(url) as conn:
        assert Evaluator(conn, rules, EvaluatorConfig()).run_pass(now).ran
        return maintain(conn, now, SHIPPED, rules)


def incidents(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM incidents ORDER BY incident_id").fetchall()


def member_rules(notification: dict[str, Any]) -> list[str]:
    return [m["rule_id"] for m in notification["payload"]["members"]]


def test_a_bin_fire_and_the_cameras_smoke_are_one_incident_notified_once_root_first(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "sp-1", "sorting_point")
        add_device(conn, "bin-1", "bin", site="sp-1")
        add_device(conn, "cam-1", "camera", site="sp-1")
        # the camera sees the smoke first …
        insert(conn, "camera_detections", "cam-1",
               [{"ts": at(1), "detection": "smoke_fire", "confidence": 0.9, "point_id": "sp-1"}])
    rules = ruleset(BIN_FIRE, CAMERA_SMOKE, OFFLINE)
    opened = at(2)
    assert step(fresh_db, rules, opened).opened == 1
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # … the bin's own alarm 10 s later
        insert(conn, "bin_status", "bin-1", [{"ts": at(2), "fire_alarm": True}])
    step(fresh_db, rules, opened + timedelta(seconds=10))
    step(fresh_db, rules, opened + WAIT - timedelta(seconds=1))  # still in the group wait: nothing sent
    assert notifications(fresh_db) == []
    step(fresh_db, rules, opened + WAIT)  # the group wait (30 s) is over: one notification
    step(fresh_db, rules, opened + WAIT + timedelta(seconds=10))  # and no second one
    (incident,) = incidents(fresh_db)
    by_rule = {a["rule_id"]: a for a in alerts(fresh_db)}
    assert set(by_rule) == {"bin_fire", "camera_smoke_fire"}
    assert {a["incident_id"] for a in by_rule.values()} == {incident["incident_id"]}
    assert incident["place"] == "sp-1" and incident["state"] == "open" and incident["severity"] == "critical"
    # the root is the bin's alarm although the camera fired first: bin_fire ranks first in incidents.yaml
    assert incident["root_alert_id"] == by_rule["bin_fire"]["alert_id"]
    assert incident["member_order"] == [by_rule["bin_fire"]["alert_id"], by_rule["camera_smoke_fire"]["alert_id"]]
    (sent,) = notifications(fresh_db)
    assert sent["event"] == "firing" and sent["incident_id"] == incident["incident_id"]
    assert member_rules(sent) == ["bin_fire", "camera_smoke_fire"]
    assert sent["payload"]["rule_id"] == "bin_fire" and sent["payload"]["incident"]["title"].endswith("(+1 related)")
    # idempotent: the step again at the same instant changes nothing
    with psycopg.connect(fresh_db) as conn:
        again = maintain(conn, opened + WAIT + timedelta(seconds=10), SHIPPED, rules)
    assert (again.opened, again.notifications, again.inhibition_changes) == (0, 0, 0)


def test_an_offline_device_inhibits_its_threshold_alert_until_it_is_back(fresh_db: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "ts-1", "transfer_station")
        add_device(conn, "st-1", "transfer_station", site="ts-1", timeout_s=600)
        insert(conn, "station_telemetry", "st-1", [{"ts": at(0), "h2s_mg_m3": 0.5}])
    rules = ruleset(OFFLINE, H2S)
    # 11 min later: H2S above its limit (its last reading) and the device silent for more than 10 min
    step(fresh_db, rules, at(11))
    step(fresh_db, rules, at(11) + WAIT)
    by_rule = {a["rule_id"]: a for a in alerts(fresh_db)}
    h2s, offline = by_rule["station_h2s"], by_rule["device_offline"]
    assert h2s["state"] == "firing" and offline["state"] == "firing"  # the state stays
    assert h2s["inhibited_by"] == {"rule": "device_offline_holds_its_readings", "source": "alert",
                                   "alert_id": offline["alert_id"], "rule_id": "device_offline"}
    (sent,) = notifications(fresh_db)
    assert member_rules(sent) == ["device_offline"]  # the H2S alert is not notified
    with psycopg.connect(fresh_db) as conn:
        kept = [r[0] for r in conn.execute("SELECT to_state FROM alert_history WHERE alert_id = %s ORDER BY id",
                                           (h2s["alert_id"],)).fetchall()]
    assert kept == ["firing", "inhibited"]
    # the API shows it, with its incident
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        shown = client.get("/alerts", params={"rule_id": "station_h2s"},
                           headers=auth(mint_key(fresh_db, "viewer"))).json()["items"]
    assert shown[0]["inhibited_by"]["alert_id"] == offline["alert_id"]
    assert shown[0]["incident_id"] == h2s["incident_id"]
    # the device is back with H2S still high: the offline alert resolves, the H2S alert is released and goes out as
    # an update of the incident (5 min after the first notification have passed)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", [{"ts": at(20), "h2s_mg_m3": 0.5, "seq": 1}])
    step(fresh_db, rules, at(20))
    assert alerts(fresh_db, "station_h2s")[0]["inhibited_by"] is None
    assert [(n["event"], member_rules(n)) for n in notifications(fresh_db)] == [
        ("firing", ["device_offline"]), ("updated", ["device_offline", "station_h2s"])]


def test_a_marked_shut_down_inhibits_the_lines_emission_alerts(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "p1", "plant")
        for line in ("p1-l1", "p1-l2"):
            add_site(conn, line, "line", parent="p1")
            add_device(conn, f"cems-{line}", "cems", site=line)
            insert(conn, "cems_readings", f"cems-{line}", [{"ts": at(5), "co_zs_mg_m3": 300.0}])
    rules = ruleset(CO)
    step(fresh_db, rules, at(6))  # both lines' CO alerts fire; their incidents wait for the group wait
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # the plant marks line 1's shut-down, as plants do, after the fact: since 00:00 and still open
        conn.execute("INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, reason, source,"
                     " created_by) VALUES ('cems-p1-l1', 'p1', 'p1-l1', 'shut_down', %s, 'planned stop', 'cli', 'ops')",
                     (at(0),))
    step(fresh_db, rules, at(6) + WAIT)
    by_device = {a["device_id"]: a for a in alerts(fresh_db)}
    assert {d: a["state"] for d, a in by_device.items()} == {"cems-p1-l1": "firing", "cems-p1-l2": "firing"}
    held = by_device["cems-p1-l1"]["inhibited_by"]
    assert held is not None and held["rule"] == "marked_shut_down_holds_emissions" and held["mark"] == "shut_down"
    assert by_device["cems-p1-l2"]["inhibited_by"] is None
    # line 2 notifies; line 1's incident has nothing to say
    assert [n["payload"]["device_id"] for n in notifications(fresh_db)] == ["cems-p1-l2"]


def test_a_station_outage_is_one_incident_instead_of_one_offline_alert_per_device(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "ts-1", "transfer_station")
        for i in range(1, 5):
            add_device(conn, f"st-{i}", "transfer_station", site="ts-1", timeout_s=600)
            # st-4 keeps reporting; the other three fall silent after 00:00
            minutes = range(0, 12) if i == 4 else [0]
            insert(conn, "station_telemetry", f"st-{i}", [{"ts": at(m), "noise_dba": 50.0} for m in minutes])
    rules = ruleset(OFFLINE)
    step(fresh_db, rules, at(11))
    step(fresh_db, rules, at(11) + WAIT)
    offline = alerts(fresh_db, "device_offline")
    assert sorted(a["device_id"] for a in offline) == ["st-1", "st-2", "st-3"]
    # 3 of 4 devices offline: 3 > 0.5 × 4 and at least 2 — an outage
    for alert in offline:
        assert alert["state"] == "firing"
        assert alert["inhibited_by"] == {"rule": "station_outage", "source": "outage", "place": "ts-1",
                                         "offline": 3, "devices": 4}
    (incident,) = incidents(fresh_db)
    assert incident["kind"] == "station_outage" and incident["title"] == "station outage at ts-1: 3 of 4 devices offline"
    (sent,) = notifications(fresh_db)  # one notification for the station, listing its offline devices
    assert sent["payload"]["incident"]["kind"] == "station_outage"
    assert sorted(m["device_id"] for m in sent["payload"]["members"]) == ["st-1", "st-2", "st-3"]


def test_an_incident_resolves_when_all_members_have_and_says_so_once(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "sp-1", "sorting_point")
        add_device(conn, "bin-1", "bin", site="sp-1")
        insert(conn, "bin_status", "bin-1", [{"ts": at(0), "fire_alarm": True}])
    rules = ruleset(BIN_FIRE)
    step(fresh_db, rules, at(1))
    step(fresh_db, rules, at(1) + WAIT)  # announced
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "bin_status", "bin-1", [{"ts": at(2), "fire_alarm": False, "seq": 1}])
    step(fresh_db, rules, at(3))  # the member resolved: the incident waits group_interval for more of its place
    assert incidents(fresh_db)[0]["state"] == "open"
    assert [n["event"] for n in notifications(fresh_db)] == ["firing"]
    step(fresh_db, rules, at(3) + INTERVAL - timedelta(seconds=1))
    assert incidents(fresh_db)[0]["state"] == "open"
    step(fresh_db, rules, at(3) + INTERVAL)  # 5 min quiet: resolved, one notification
    step(fresh_db, rules, at(3) + INTERVAL + timedelta(minutes=1))
    (incident,) = incidents(fresh_db)
    assert incident["state"] == "resolved" and incident["resolved_at"] == at(2)  # the member's resolution
    assert [n["event"] for n in notifications(fresh_db)] == ["firing", "resolved"]
    resolved = notifications(fresh_db)[1]["payload"]
    assert resolved["incident"]["state"] == "resolved" and [m["state"] for m in resolved["members"]] == ["resolved"]


def test_the_api_lists_incidents_with_members_and_acknowledges_them_all(fresh_db: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "sp-1", "sorting_point")
        add_device(conn, "bin-1", "bin", site="sp-1")
        add_device(conn, "cam-1", "camera", site="sp-1")
        insert(conn, "camera_detections", "cam-1",
               [{"ts": at(1), "detection": "smoke_fire", "confidence": 0.9, "point_id": "sp-1"}])
        insert(conn, "bin_status", "bin-1", [{"ts": at(1), "fire_alarm": True}])
    rules = ruleset(BIN_FIRE, CAMERA_SMOKE)
    step(fresh_db, rules, at(2))
    viewer, supervisor = auth(mint_key(fresh_db, "viewer")), auth(mint_key(fresh_db, "supervisor"))
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        listed = client.get("/incidents", params={"state": "open"}, headers=viewer)
        assert listed.status_code == 200, listed.text
        (incident,) = listed.json()["items"]
        assert [m["rule_id"] for m in incident["members"]] == ["bin_fire", "camera_smoke_fire"]  # root first
        one = client.get(f"/incidents/{incident['incident_id']}", headers=viewer).json()
        assert one["root_alert_id"] == incident["members"][0]["alert_id"]
        grouped = client.get("/alerts", params={"group": "incident"}, headers=viewer).json()["items"]
        assert [g["incident_id"] for g in grouped] == [incident["incident_id"]]
        assert client.post(f"/incidents/{incident['incident_id']}/acknowledge", json={"comment": "crew sent"},
                           headers=viewer).status_code == 403
        acked = client.post(f"/incidents/{incident['incident_id']}/acknowledge", json={"comment": "crew sent"},
                            headers=supervisor)
        assert acked.status_code == 200, acked.text
        assert {m["ack_comment"] for m in acked.json()["members"]} == {"crew sent"}
        assert client.get("/incidents/999999", headers=viewer).status_code == 404
    assert all(a["acknowledged_at"] is not None for a in alerts(fresh_db))


def test_the_migration_is_safe_to_run_twice(fresh_db: str) -> None:
    (migration,) = [m for m in load_migrations() if m.version == "0081"]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(migration.sql)  # already applied by the fixture: again, no error
        assert conn.execute("SELECT count(*) FROM incidents").fetchone() == (0,)


def test_the_evaluator_role_may_keep_incidents(fresh_db: str) -> None:
    enable_logins(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "sp-1", "sorting_point")
        add_device(conn, "bin-1", "bin", site="sp-1")
        insert(conn, "bin_status", "bin-1", [{"ts": at(0), "fire_alarm": True}])
    url = role_url(fresh_db, "evaluator")
    step(url, ruleset(BIN_FIRE), at(1))
    step(url, ruleset(BIN_FIRE), at(1) + WAIT)
    assert [n["event"] for n in notifications(fresh_db)] == ["firing"]
