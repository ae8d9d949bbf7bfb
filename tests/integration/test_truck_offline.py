"""truck_offline (alerts/rules/offline.yaml): a collection truck is watched while its last telemetry says it is on
shift, and may stay silent all night once it said off_shift. Rows inserted straight into truck_telemetry of a fresh
database, the shipped rules, evaluator passes at fixed instants (tests/support/alerts_db.py: T0 is 08:00 in
Shanghai; every truck has the registry's default inactivity timeout, 900 s)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.incidents import load_incident_rules, maintain
from tests.support.alerts_db import add_device, add_site, alerts, at, insert, run, shipped_rules

NEXT_SHIFT_MIN = 21 * 60  # 05:00 local the next day: a parked truck's night (within the 2-day horizon)


def trucks(url: str, *truck_ids: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        add_site(conn, "depot-1", "depot")
        for truck_id in truck_ids:
            add_device(conn, truck_id, "truck", site="depot-1")


def telemetry(url: str, truck_id: str, minutes: range, **fields: Any) -> None:
    """One reading a minute, as the truck's box sends it while out (position away from the depot)."""
    values = {"shift_state": "collecting", "speed_kmh": 15.0, "lat": 22.5, "lon": 114.005, **fields}
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "truck_telemetry", truck_id, [{"ts": at(m), "seq": m, **values} for m in minutes])


def offline(url: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts(url, "truck_offline"):
        found.setdefault(alert["device_id"], []).append(alert)
    return found


@pytest.mark.clock
def test_a_truck_silent_mid_shift_fires_and_resolves_when_it_reports_again(fresh_db: str) -> None:
    trucks(fresh_db, "tk-route", "tk-parked")
    telemetry(fresh_db, "tk-route", range(0, 11))  # collecting until 08:10, then its box goes quiet
    telemetry(fresh_db, "tk-parked", range(0, 11), shift_state="off_shift", speed_kmh=0.0)  # parked, ignition off
    watched = shipped_rules("truck_offline")
    run(fresh_db, watched, now=at(20))  # 10 minutes of silence: within the timeout
    assert offline(fresh_db) == {}
    run(fresh_db, watched, now=at(30))
    (alert,) = offline(fresh_db)["tk-route"]
    assert alert["state"] == "firing" and alert["started_at"] == at(25)  # silent since 08:10, 15 minutes allowed
    assert alert["summary"] == "tk-route: no data on shift for more than 900 s"
    assert set(offline(fresh_db)) == {"tk-route"}  # the parked truck is silent just as long
    telemetry(fresh_db, "tk-route", range(50, 53))  # back on the air, still collecting
    run(fresh_db, watched, now=at(53))
    (alert,) = offline(fresh_db)["tk-route"]
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(50)
    # the parked truck stays silent all night, judged every so often, and is back for the next shift
    for hours in (1, 4, 12):
        run(fresh_db, watched, now=at(10 + 60 * hours))
    telemetry(fresh_db, "tk-parked", range(NEXT_SHIFT_MIN, NEXT_SHIFT_MIN + 3), shift_state="depot", speed_kmh=0.0)
    run(fresh_db, watched, now=at(NEXT_SHIFT_MIN + 3))
    assert set(offline(fresh_db)) == {"tk-route"}


@pytest.mark.clock
def test_a_silence_seen_in_device_time_counts_only_when_it_began_on_shift(fresh_db: str) -> None:
    # both trucks' readings land late, all at once: a 30-minute gap between 08:10 and 08:40 in device time
    trucks(fresh_db, "tk-route", "tk-parked")
    for truck_id, state in (("tk-route", "to_tip"), ("tk-parked", "off_shift")):
        telemetry(fresh_db, truck_id, range(0, 11), shift_state=state)
        telemetry(fresh_db, truck_id, range(40, 46), shift_state="returning")
    run(fresh_db, shipped_rules("truck_offline"), now=at(46))
    (alert,) = offline(fresh_db)["tk-route"]
    assert alert["started_at"] == at(25) and alert["resolved_at"] == at(40)
    assert set(offline(fresh_db)) == {"tk-route"}


@pytest.mark.clock
def test_a_truck_that_states_no_shift_is_watched_like_any_device(fresh_db: str) -> None:
    trucks(fresh_db, "tk-mute")
    telemetry(fresh_db, "tk-mute", range(0, 11), shift_state=None)
    run(fresh_db, shipped_rules("truck_offline"), now=at(30))
    (alert,) = offline(fresh_db)["tk-mute"]
    assert alert["state"] == "firing" and alert["started_at"] == at(25)


@pytest.mark.clock
def test_device_offline_leaves_trucks_to_truck_offline(fresh_db: str) -> None:
    trucks(fresh_db, "tk-parked")
    telemetry(fresh_db, "tk-parked", range(0, 11), shift_state="off_shift")
    run(fresh_db, shipped_rules("device_offline", "truck_offline"), now=at(10 + 8 * 60))
    assert alerts(fresh_db) == []


@pytest.mark.clock
def test_a_truck_offline_holds_its_idle_alert(fresh_db: str) -> None:
    # standing still on its route from 08:00 (idle: fires after 30 minutes), then silent from 08:40
    trucks(fresh_db, "tk-1")
    telemetry(fresh_db, "tk-1", range(0, 41), speed_kmh=0.0)
    watched = shipped_rules("truck_offline", "truck_idle")
    incident_rules = replace(load_incident_rules(), group_wait=timedelta(0), group_interval=timedelta(0))

    def step(now: datetime) -> None:
        with psycopg.connect(fresh_db) as conn:
            assert Evaluator(conn, watched, EvaluatorConfig(data_quiet_after=timedelta(0))).run_pass(now).ran
            maintain(conn, now, incident_rules, watched)

    step(at(41))
    (idle,) = alerts(fresh_db, "truck_idle")
    assert idle["state"] == "firing" and idle["inhibited_by"] is None
    step(at(60))
    (idle,) = alerts(fresh_db, "truck_idle")
    (silent,) = offline(fresh_db)["tk-1"]
    assert silent["state"] == "firing"
    assert idle["inhibited_by"] == {"rule": "device_offline_holds_truck_positions", "source": "alert",
                                    "alert_id": silent["alert_id"], "rule_id": "truck_offline"}
