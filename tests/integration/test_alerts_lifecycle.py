"""Lifecycle: acknowledge, assign, clear by hand, dedup, silences, reminders — every transition in history."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import psycopg
import pytest

from sanitel.alerts import lifecycle
from sanitel.alerts.silences import create_silence, expire_silence
from sanitel.api.queries import alerts as api_alerts
from tests.support.alerts_db import (
    NOW,
    add_device,
    add_site,
    alerts,
    at,
    history,
    insert,
    notifications,
    ruleset,
    run,
)

FIRE = {"id": "t.bin_fire", "kind": "threshold", "summary": "{device_id} fire", "severity": "critical",
        "source": "bin_status", "field": "fire_alarm", "op": "==", "threshold": True, "repeat_interval": "10m"}


@pytest.fixture
def bins(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "estate-1", "estate")
        add_site(conn, "sp-1", "sorting_point", parent="estate-1")
        add_device(conn, "bin-1", "bin", site="sp-1")
        add_device(conn, "bin-2", "bin", site="sp-1")
    return fresh_db


def _fire(url: str, device: str, minutes: list[float], alarm: bool = True) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "bin_status", device, [{"ts": at(m), "fire_alarm": alarm, "seq": int(m * 10)} for m in minutes])


def test_acknowledge_assign_and_clear_are_recorded(bins: str) -> None:
    _fire(bins, "bin-1", [0, 1])
    run(bins, ruleset(FIRE))
    (alert,) = alerts(bins)
    with psycopg.connect(bins, autocommit=True) as listener, psycopg.connect(bins) as conn:
        listener.execute("LISTEN sanitel_alerts")
        acked = lifecycle.acknowledge(conn, alert["alert_id"], "li.wei", "crew on the way")
        assert acked is not None and acked.acknowledged_by == "li.wei" and acked.ack_comment == "crew on the way"
        assert lifecycle.assign(conn, alert["alert_id"], "zhang.min", actor="li.wei") is not None
        cleared = lifecycle.clear(conn, alert["alert_id"], "zhang.min", "extinguished")
        assert cleared is not None and cleared.state == "resolved" and cleared.resolved_by == "zhang.min"
        assert lifecycle.acknowledge(conn, alert["alert_id"], "x") is None  # resolved: nothing to acknowledge
        rows = conn.execute("SELECT to_state, actor, comment FROM alert_history WHERE alert_id = %s ORDER BY id",
                            (alert["alert_id"],)).fetchall()
        ids = [r[0] for r in conn.execute("SELECT id FROM alert_history WHERE alert_id = %s AND to_state <> 'firing'"
                                          " ORDER BY id", (alert["alert_id"],)).fetchall()]
        notices = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=3)]
    assert rows == [("firing", None, None), ("acknowledged", "li.wei", "crew on the way"),
                    ("assigned", "li.wei", None), ("resolved", "zhang.min", "extinguished")]
    # each transition is announced with the id of its history row
    assert [(n["event"], n["actor"], n["history_id"]) for n in notices] == [
        ("acknowledged", "li.wei", ids[0]), ("assigned", "li.wei", ids[1]), ("resolved", "zhang.min", ids[2])]
    assert notices[0]["alert"]["ack_comment"] == "crew on the way"
    run(bins, ruleset(FIRE))  # a clear by hand is notified by the next pass's incident step
    assert [n["event"] for n in notifications(bins)] == ["firing", "resolved"]  # a resolve notice too


def test_cleared_by_hand_stays_cleared_for_that_episode(bins: str) -> None:
    rules = ruleset(FIRE)
    _fire(bins, "bin-1", [0, 1])
    run(bins, rules)
    with psycopg.connect(bins) as conn:
        lifecycle.clear(conn, alerts(bins)[0]["alert_id"], "zhang.min", now=NOW)
    _fire(bins, "bin-1", [2, 3])  # the alarm is still on: the same occurrence, not a new alert
    run(bins, rules)
    assert len(alerts(bins)) == 1
    _fire(bins, "bin-1", [4], alarm=False)
    _fire(bins, "bin-1", [5, 6])  # off, then on again: a new occurrence raises a new alert
    run(bins, rules)
    found = alerts(bins)
    assert [a["state"] for a in found] == ["resolved", "firing"] and found[1]["started_at"] == at(5)


def test_resolved_through_the_api_stays_resolved_for_that_episode(bins: str) -> None:
    rules = ruleset(FIRE)
    _fire(bins, "bin-1", [0, 1])
    run(bins, rules)

    async def resolve(alert_id: int) -> None:
        async with await psycopg.AsyncConnection.connect(bins, autocommit=True) as conn:
            assert await api_alerts.resolve_by_hand(conn, alert_id, "zhang.min", "extinguished") is not None

    asyncio.run(resolve(alerts(bins)[0]["alert_id"]))
    _fire(bins, "bin-1", [2, 3])  # the alarm is still on: the same occurrence, not a new alert
    run(bins, rules)
    (alert,) = alerts(bins)
    assert alert["state"] == "resolved" and alert["resolved_by"] == "zhang.min"
    assert [n["event"] for n in notifications(bins)] == ["firing", "resolved"]  # notified like the engine's clear


def test_one_open_alert_per_rule_and_subject(bins: str) -> None:
    _fire(bins, "bin-1", [0])
    run(bins, ruleset(FIRE))
    (alert,) = alerts(bins)
    with psycopg.connect(bins) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO alerts (rule_id, fingerprint, severity, state, started_at)"
                     " VALUES ('t.bin_fire', %s, 'critical', 'firing', now())", (alert["fingerprint"],))


@pytest.mark.clock
def test_reminders_repeat_until_acknowledged(bins: str) -> None:
    _fire(bins, "bin-1", [0])
    rules = ruleset(FIRE)
    now = NOW
    run(bins, rules, now=now)
    run(bins, rules, now=now + timedelta(minutes=5))  # not yet
    run(bins, rules, now=now + timedelta(minutes=11))  # reminder 1
    run(bins, rules, now=now + timedelta(minutes=15))  # not yet (10 minutes after the last one)
    run(bins, rules, now=now + timedelta(minutes=22))  # reminder 2
    assert [n["event"] for n in notifications(bins)] == ["firing", "reminder", "reminder"]
    (alert,) = alerts(bins)
    assert alert["reminders"] == 2
    with psycopg.connect(bins) as conn:
        lifecycle.acknowledge(conn, alert["alert_id"], "li.wei", now=now + timedelta(minutes=23))
    run(bins, rules, now=now + timedelta(minutes=40))
    assert [n["event"] for n in notifications(bins)] == ["firing", "reminder", "reminder"]
    assert history(bins, alert["alert_id"]) == ["firing", "reminded", "reminded", "acknowledged"]


@pytest.mark.clock
def test_silence_mutes_matching_alerts_and_they_notify_when_it_ends(bins: str) -> None:
    now = NOW
    with psycopg.connect(bins, autocommit=True) as conn:
        silence_id = create_silence(conn, [{"label": "estate", "op": "=", "value": "estate-1"},
                                           {"label": "device_id", "op": "=~", "value": "bin-[12]"}],
                                    now - timedelta(minutes=1), now + timedelta(hours=1), "li.wei", "maintenance")
        add_device(conn, "bin-9", "bin")  # elsewhere: not silenced
    _fire(bins, "bin-1", [0])
    _fire(bins, "bin-9", [0])
    rules = ruleset(FIRE)
    run(bins, rules, now=now)
    by_device = {a["device_id"]: a for a in alerts(bins)}
    assert by_device["bin-1"]["state"] == "firing" and by_device["bin-1"]["silenced_by"] == silence_id
    assert [n["payload"]["device_id"] for n in notifications(bins)] == ["bin-9"]
    assert history(bins, by_device["bin-1"]["alert_id"]) == ["firing", "silenced"]
    run(bins, rules, now=now + timedelta(minutes=5))  # still silenced: still nothing
    assert len(notifications(bins)) == 1
    with psycopg.connect(bins, autocommit=True) as conn:
        assert expire_silence(conn, silence_id, now=now + timedelta(minutes=5, seconds=30))
    run(bins, rules, now=now + timedelta(minutes=6))  # silence over, still firing: announced now
    assert [n["payload"]["device_id"] for n in notifications(bins)] == ["bin-9", "bin-1"]


@pytest.mark.clock
def test_late_data_from_a_maintenance_window_stays_quiet_unless_it_outlasts_it(bins: str) -> None:
    # planned maintenance yesterday 00:00-01:00; its readings arrive today
    with psycopg.connect(bins, autocommit=True) as conn:
        create_silence(conn, [{"label": "site_id", "value": "sp-1"}], at(0), at(60), "li.wei")
    _fire(bins, "bin-1", [10])
    _fire(bins, "bin-1", [20], alarm=False)  # on and off inside the window: muted for good
    _fire(bins, "bin-2", [30, 90])  # still on after the window: announced
    run(bins, ruleset(FIRE))
    by_device = {a["device_id"]: a for a in alerts(bins)}
    assert by_device["bin-1"]["state"] == "resolved" and by_device["bin-1"]["silenced_by"] is not None
    assert history(bins, by_device["bin-1"]["alert_id"]) == ["firing", "silenced", "resolved"]
    assert [n["payload"]["device_id"] for n in notifications(bins)] == ["bin-2"]


@pytest.mark.clock
def test_silenced_alert_that_resolves_sends_no_resolve_notice(bins: str) -> None:
    now = NOW
    with psycopg.connect(bins, autocommit=True) as conn:
        create_silence(conn, [{"label": "device_id", "value": "bin-1"}], now - timedelta(hours=1),
                       now + timedelta(hours=1), "li.wei")
    _fire(bins, "bin-1", [0])
    _fire(bins, "bin-1", [1], alarm=False)
    run(bins, ruleset(FIRE), now=now)
    assert alerts(bins)[0]["state"] == "resolved" and notifications(bins) == []
