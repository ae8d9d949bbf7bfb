"""State in the database: a restart or a crash neither loses nor repeats an alert; two evaluators at once
never double-fire; rule changes take effect; CEMS averages and the furnace rule."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.alerts.evaluator import EVALUATOR_LOCK_ID, Evaluator
from sanitel.alerts.incidents import maintain
from sanitel.alerts.rules import RuleSet, ThresholdRule, load_database_rules
from sanitel.db import one_row
from tests.support.alerts_db import (
    AT_ONCE,
    NOW,
    T0,
    add_device,
    add_site,
    alerts,
    at,
    history,
    insert,
    notifications,
    ruleset,
    run,
    series,
)

LOW_SOC = {"id": "t.low_soc", "kind": "threshold", "summary": "SOC {value:.0f}", "severity": "major",
           "source": "sweeper_telemetry", "field": "soc_pct", "op": "<", "threshold": 20, "clear": 25, "for": "1m"}


def _soc(url: str, device: str, start_min: float, values: list[float]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "sweeper_telemetry", device, series(at(start_min), 30, values, "soc_pct"))


@pytest.fixture
def sweepers(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for i in range(3):
            add_device(conn, f"sw-{i}", "sweeper")
    return fresh_db


def test_crash_mid_pass_changes_nothing_and_the_next_pass_does_it_once(sweepers: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _soc(sweepers, "sw-0", 0, [30, 10, 10, 10, 10])
    rules = ruleset(LOW_SOC)

    def crash(self: Evaluator, ctx: object) -> None:
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(Evaluator, "_save_watermarks", crash)
    with pytest.raises(RuntimeError):
        run(sweepers, rules)
    assert alerts(sweepers) == [] and notifications(sweepers) == []  # the pass's transitions rolled back
    monkeypatch.undo()
    run(sweepers, rules)
    run(sweepers, rules)  # and again: nothing new
    (alert,) = alerts(sweepers)
    assert alert["state"] == "firing" and [n["event"] for n in notifications(sweepers)] == ["firing"]
    assert history(sweepers, alert["alert_id"]) == ["firing"]


def test_restart_resumes_from_stored_cursors(sweepers: str) -> None:
    rules = ruleset(LOW_SOC)
    _soc(sweepers, "sw-0", 0, [30, 10, 10])  # breach from 0:30, 30 s so far: pending
    run(sweepers, rules)
    assert alerts(sweepers)[0]["state"] == "pending"
    # a new process (new connection, rules loaded again) sees only the new readings and continues
    _soc(sweepers, "sw-0", 1.5, [10, 10])  # 1:30 → the condition has held 1 minute
    fresh_rules = ruleset(LOW_SOC)
    with psycopg.connect(sweepers) as conn:
        report = Evaluator(conn, fresh_rules).run_pass(NOW)
    assert [e for _, e in report.transitions] == ["firing"]
    (alert,) = alerts(sweepers)
    assert alert["started_at"] == at(0.5) and alert["fired_at"] == at(1.5)
    with psycopg.connect(sweepers) as conn:
        (cursor,) = one_row(conn.execute("SELECT cursor FROM alert_eval_state WHERE rule_id = 't.low_soc'"))
    assert cursor["cursor"]["active"] and cursor["cursor"]["evaluated_upto"] == at(2).isoformat()


def test_a_pass_is_skipped_while_another_evaluator_holds_the_lock(sweepers: str) -> None:
    _soc(sweepers, "sw-0", 0, [10, 10, 10, 10])
    with psycopg.connect(sweepers) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (EVALUATOR_LOCK_ID,))  # a pass in progress
        assert run(sweepers, ruleset(LOW_SOC)).ran is False
        assert alerts(sweepers) == []
    assert run(sweepers, ruleset(LOW_SOC)).ran is True
    assert len(alerts(sweepers)) == 1


def test_two_evaluators_at_once_never_double_fire(sweepers: str) -> None:
    rules = ruleset(LOW_SOC)
    stop = threading.Event()
    ran = {0: 0, 1: 0}
    skipped = {0: 0, 1: 0}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def evaluator(i: int) -> None:
        try:
            with psycopg.connect(sweepers) as conn:
                ev = Evaluator(conn, rules)
                start.wait()
                while not stop.is_set():
                    report = ev.run_pass(NOW)
                    if report.ran:
                        maintain(conn, NOW, AT_ONCE, rules)
                    (ran if report.ran else skipped)[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluator, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    start.wait()
    # each sweeper: a low-SOC episode that fires and resolves, written in small slices while both run
    for step in range(6):
        for i in range(3):
            _soc(sweepers, f"sw-{i}", step, [10, 10] if step < 4 else [30, 30])
    deadline = threading.Event()
    deadline.wait(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert ran[0] + ran[1] > 2 and skipped[0] + skipped[1] > 0  # they really did run at the same time
    found = alerts(sweepers)
    assert sorted(a["device_id"] for a in found) == ["sw-0", "sw-1", "sw-2"]  # one alert per episode
    for alert in found:
        assert alert["state"] == "resolved" and alert["started_at"] == at(0) and alert["resolved_at"] == at(4)
        assert history(sweepers, alert["alert_id"]) in (["pending", "firing", "resolved"], ["firing", "resolved"])
    events = sorted((n["alert_id"], n["event"]) for n in notifications(sweepers))
    assert events == sorted((a["alert_id"], e) for a in found for e in ("firing", "resolved"))


def test_alerts_of_a_removed_rule_resolve(sweepers: str) -> None:
    _soc(sweepers, "sw-0", 0, [10, 10, 10, 10])
    run(sweepers, ruleset(LOW_SOC))
    assert alerts(sweepers)[0]["state"] == "firing"
    run(sweepers, RuleSet())
    (alert,) = alerts(sweepers)
    assert alert["state"] == "resolved"
    with psycopg.connect(sweepers) as conn:
        details = one_row(conn.execute("SELECT details FROM alert_history WHERE alert_id = %s AND to_state = 'resolved'",
                                       (alert["alert_id"],)))[0]
    assert details["reason"] == "rule removed or disabled"


def test_database_rule_replaces_a_shipped_one_and_bad_rows_are_skipped(sweepers: str) -> None:
    with psycopg.connect(sweepers, autocommit=True) as conn:
        conn.execute("INSERT INTO alert_rules (rule_id, definition) VALUES (%s, %s), (%s, %s)",
                     ("t.low_soc", Jsonb({**LOW_SOC, "threshold": 15, "clear": 18}),
                      "t.broken", Jsonb({"kind": "threshold", "summary": "x", "severity": "huge"})))
        rules = ruleset(LOW_SOC)
        problems = load_database_rules(conn, rules)
    low_soc = rules.rules["t.low_soc"]
    assert isinstance(low_soc, ThresholdRule) and low_soc.threshold == 15 and rules.origins["t.low_soc"] == "database"
    assert len(problems) == 1 and "alert_rules row 't.broken'" in problems[0] and "key 'severity'" in problems[0]


def test_an_edited_rule_starts_its_subjects_afresh(sweepers: str) -> None:
    _soc(sweepers, "sw-0", 0, [18, 18, 18, 18])  # 18 %: below 20, above 15
    run(sweepers, ruleset(LOW_SOC))
    assert alerts(sweepers)[0]["state"] == "firing"
    _soc(sweepers, "sw-0", 2, [18, 18])
    run(sweepers, ruleset({**LOW_SOC, "threshold": 15, "clear": 17}))  # the limit moved under the value
    (alert,) = alerts(sweepers)
    assert alert["state"] == "resolved"


# --- CEMS ------------------------------------------------------------------------------------------

def _averages(conn: psycopg.Connection, device: str, pollutant: str, period: str, standard: str,
              rows: list[tuple[float, float | None, str]], length: timedelta, start: datetime | None = None,
              reported_past: bool = True) -> None:
    """cems_averages rows as the processor writes them; with ``reported_past`` the unit has already sent
    a reading after the last period (its data was complete when they were computed)."""
    begin = start or T0
    if reported_past:
        insert(conn, "cems_readings", device, [{"ts": begin + len(rows) * length, "nox_mg_m3": 1.0}])
    for i, (_, value, status) in enumerate(rows):
        s = begin + i * length
        conn.execute(
            "INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end,"
            " avg_zs_mg_m3, n_valid, n_discarded, status, valid) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, 0, %s, %s)",
            (device, pollutant, period, standard, s, s + length, value, status, status == "valid"))


NO_MARGIN = timedelta(0)  # rows written here by one committed statement after another: no transaction in flight
EU_NOX_A = {"id": "t.nox_half_hourly", "kind": "window", "summary": "{value:.0f}", "severity": "major",
            "source": "cems_averages", "field": "avg_zs_mg_m3", "where": {"pollutant": "nox", "standard": "eu"},
            "window": "30m", "op": ">", "threshold": 400, "confidence_interval_pct": 20,
            "confidence_interval_of": 200}


def test_half_hourly_average_with_the_confidence_interval_subtracted(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "p1", "plant")
        add_site(conn, "p1-l1", "line", parent="p1")
        add_device(conn, "cems-1", "cems", site="p1-l1")
        # 420 − 20 % × 200 = 380: not above 400. 450 − 40 = 410: above. An invalid half-hour (900) and one
        # still in progress say nothing. Then 300: resolved.
        _averages(conn, "cems-1", "nox", "30min", "eu",
                  [(0, 420.0, "valid"), (1, 450.0, "valid"), (2, 900.0, "invalid"), (3, 450.0, "valid"),
                   (4, 300.0, "valid"), (5, 999.0, "in_progress")], timedelta(minutes=30))
    run(fresh_db, ruleset(EU_NOX_A), write_margin=NO_MARGIN)
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == at(30) and alert["fired_at"] == at(60) and alert["resolved_at"] == at(120)
    assert alert["labels"]["plant"] == "p1" and alert["labels"]["line"] == "p1-l1"


@pytest.mark.clock
def test_averages_computed_before_the_unit_reported_past_them_wait(fresh_db: str) -> None:
    """A backlog still arriving makes a finished period look "missing" or "invalid" to the averages
    processor; such a row is not judged until it is recomputed after the unit reported past it."""
    invalid = {"id": "t.nox_daily_invalid", "kind": "window", "summary": "invalid day", "severity": "minor",
               "source": "cems_averages", "aggregate": "invalid", "where": {"pollutant": "nox", "standard": "eu"},
               "window": "1d", "op": ">=", "threshold": 1}
    day = T0 - timedelta(days=2)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "cems-1", "cems")
        insert(conn, "cems_readings", "cems-1", [{"ts": day + timedelta(hours=5), "nox_mg_m3": 1.0}])
        _averages(conn, "cems-1", "nox", "1d", "eu", [(0, 100.0, "invalid")], timedelta(days=1), start=day,
                  reported_past=False)
    rules = ruleset(invalid)
    run(fresh_db, rules, lateness_horizon=timedelta(days=5), write_margin=NO_MARGIN)
    assert alerts(fresh_db) == []
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the rest arrives; the day is recomputed valid
        insert(conn, "cems_readings", "cems-1", [{"ts": day + timedelta(days=1, minutes=1), "nox_mg_m3": 1.0}])
        conn.execute("UPDATE cems_averages SET status = 'valid', valid = true, computed_at = clock_timestamp()")
    run(fresh_db, rules, lateness_horizon=timedelta(days=5), write_margin=NO_MARGIN)
    assert alerts(fresh_db) == []
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # …or recomputed invalid: now it is judged
        conn.execute("UPDATE cems_averages SET status = 'invalid', valid = false, computed_at = clock_timestamp()")
    run(fresh_db, rules, lateness_horizon=timedelta(days=5), write_margin=NO_MARGIN)
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == day


@pytest.mark.clock
def test_day_with_too_many_discarded_half_hours_is_invalid_never_compliant(fresh_db: str) -> None:
    daily = {**EU_NOX_A, "id": "t.nox_daily", "window": "1d", "threshold": 200, "confidence_interval_pct": 0}
    invalid = {"id": "t.nox_daily_invalid", "kind": "window", "summary": "invalid day", "severity": "minor",
               "source": "cems_averages", "aggregate": "invalid", "where": {"pollutant": "nox", "standard": "eu"},
               "window": "1d", "op": ">=", "threshold": 1}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "cems-1", "cems")
        # day 1 over the limit; day 2 invalid (its average 100 would look compliant); day 3 fine
        _averages(conn, "cems-1", "nox", "1d", "eu", [(0, 250.0, "valid"), (1, 100.0, "invalid"),
                                                       (2, 150.0, "valid")], timedelta(days=1),
                  start=T0 - timedelta(days=3))
    run(fresh_db, ruleset(daily, invalid), lateness_horizon=timedelta(days=5), write_margin=NO_MARGIN)
    exceedance, = alerts(fresh_db, "t.nox_daily")
    # the invalid day did not clear the exceedance: it resolved only with the valid day after it
    assert exceedance["started_at"] == T0 - timedelta(days=3)
    assert exceedance["resolved_at"] == T0 - timedelta(days=1)
    (invalid_day,) = alerts(fresh_db, "t.nox_daily_invalid")
    assert invalid_day["started_at"] == T0 - timedelta(days=2)


FURNACE = {"id": "t.furnace", "kind": "threshold", "summary": "{value:.0f}", "severity": "major",
           "source": "cems_readings", "field": "furnace_temp_c", "where": {"data_kind": ["rtd", "minute"]},
           "op": "<", "threshold": 850, "for": "2m"}


def test_furnace_readings_of_a_line_not_in_operation_do_not_count(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "cems-json", "cems")
        add_device(conn, "cems-212", "cems")
        # JSON unit: shut-down marked in extra.operating_state; HJ 212 unit: the a01901 flag is F
        insert(conn, "cems_readings", "cems-json", [
            {"ts": at(m), "furnace_temp_c": 600.0, "extra": {"operating_state": "shut_down"}} for m in range(6)])
        insert(conn, "cems_readings", "cems-212", [
            {"ts": at(m), "furnace_temp_c": 600.0, "source": "hj212",
             "extra": {"hj212": {"a01901": {"Flag": "F"}}}} for m in range(6)])
    run(fresh_db, ruleset(FURNACE))
    assert alerts(fresh_db) == []
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the same temperatures while running: alert
        insert(conn, "cems_readings", "cems-json", [
            {"ts": at(10 + m), "furnace_temp_c": 800.0, "extra": {"operating_state": "run"}} for m in range(4)])
    run(fresh_db, ruleset(FURNACE))
    (alert,) = alerts(fresh_db)
    assert alert["device_id"] == "cems-json" and alert["fired_at"] == at(12)


def test_alert_resolves_when_its_site_switches_the_rule_off(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "depot-1", "depot")
        add_device(conn, "sw-9", "sweeper", site="depot-1")
    _soc(fresh_db, "sw-9", 0, [10, 10, 10, 10])
    run(fresh_db, ruleset(LOW_SOC))
    assert alerts(fresh_db)[0]["state"] == "firing"
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("""UPDATE sites SET params = '{"disabled_rules": ["t.low_*"]}' WHERE site_id = 'depot-1'""")
    run(fresh_db, ruleset(LOW_SOC))
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "resolved"
