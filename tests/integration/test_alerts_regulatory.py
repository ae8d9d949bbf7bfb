"""Incinerator alerts as regulators judge them (issue 13), against a real database, with the shipped rules:

- one limit grammar: a plant's or line's ``sites.params.emission_limits`` (the compliance report's) sets the
  alert threshold and the EU confidence interval; the old ``limits[<cems rule>]`` is refused by the API and,
  stored anyway, quarantines the emission rules of that site without stopping the evaluator;
- marked periods (``cems_averages.status = 'marked'``) are never judged compliant, exceeding or invalid;
- the daily regulatory judgement (``cems_daily_judgements``): each rule fires on a final day, the ``early``
  ones on a day in progress that already breaches, nothing on a day in progress below its limit;
- HJ 212 flag T (analyser over range) raises ``cems_<pollutant>_over_range``;
- readings of a furnace line under a furnace mark (stored or from the data unit) never raise a reading rule.

Rows are inserted by SQL as the scheduled processor would write them; every pass runs at the fixed ``NOW``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from sanitel.api.app import create_app
from tests.support.alerts_db import T0, add_device, add_site, alerts, at, insert, ruleset, run
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key

SHANGHAI = ZoneInfo("Asia/Shanghai")
# NOW is 08:30 on 2026-03-11 in Shanghai: the local day before it is over, the local day of NOW is in progress
DAY = datetime(2026, 3, 10, tzinfo=SHANGHAI)
TODAY = DAY + timedelta(days=1)
NO_MARGIN = timedelta(0)  # rows written here by one committed statement after another: no transaction in flight
PERMIT = "深圳市排污许可证 9144030000000000XX001P (2024)"
SHIPPED = load_files(default_rule_files())


def _shipped(*ids: str) -> RuleSet:
    out = RuleSet()
    for rule_id in ids:
        out.add(SHIPPED.rules[rule_id], "shipped")
    return out


def _plant(conn: psycopg.Connection, plant: str, device: str, plant_params: Mapping[str, Any] | None = None,
           line_params: Mapping[str, Any] | None = None) -> None:
    add_site(conn, plant, "plant", params=plant_params)
    add_site(conn, f"{plant}-l1", "line", parent=plant, params=line_params)
    add_device(conn, device, "cems", site=f"{plant}-l1")


def _reported_past(conn: psycopg.Connection, device: str, day: datetime = DAY) -> None:
    """A reading after the day: written before the day's rows, so the unit had reported past the day's end
    when they were computed (``final``)."""
    insert(conn, "cems_readings", device, [{"ts": day + timedelta(days=1, minutes=1), "nox_mg_m3": 1.0}])


def _day_average(conn: psycopg.Connection, device: str, pollutant: str, standard: str, value: float,
                 status: str = "valid", start: datetime = DAY) -> None:
    """A daily average as the processor writes it."""
    end = start + timedelta(days=1)
    conn.execute(
        "INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end, avg_zs_mg_m3,"
        " n_valid, n_discarded, status, valid) VALUES (%s, %s, '1d', %s, %s, %s, %s, 1, 0, %s, %s)",
        (device, pollutant, standard, start, end, value, status, status == "valid"))


def _periods(conn: psycopg.Connection, device: str, pollutant: str, period: str, standard: str,
             rows: list[tuple[float | None, str]], length: timedelta, start: datetime = T0) -> None:
    insert(conn, "cems_readings", device, [{"ts": start + len(rows) * length, "nox_mg_m3": 1.0}])
    for i, (value, status) in enumerate(rows):
        s = start + i * length
        conn.execute(
            "INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end, avg_zs_mg_m3,"
            " n_valid, n_discarded, status, valid) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, 0, %s, %s)",
            (device, pollutant, period, standard, s, s + length, value, status, status == "valid"))


def _fired(url: str) -> set[tuple[str, str]]:
    return {(a["rule_id"], a["device_id"]) for a in alerts(url) if a["state"] == "firing"}


# --- one limit grammar ------------------------------------------------------------------------------------------


def test_a_stricter_permit_in_emission_limits_changes_the_alert_threshold(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p-default", "cems-default")
        # the plant's permit sets GB 24-hour NOx 200, the line's stricter one 120: the line wins
        _plant(conn, "p-permit", "cems-permit",
               plant_params={"emission_limits": {"nox": {"gb.24h": 200}}},
               line_params={"emission_limits": {"permit": PERMIT, "nox": {"gb.24h": 120, "eu.daily": 120}}})
        for device in ("cems-default", "cems-permit"):
            _reported_past(conn, device)
            _day_average(conn, device, "nox", "gb", 150.0)
            _day_average(conn, device, "nox", "eu", 150.0)
    run(fresh_db, _shipped("cems_nox_gb_24h", "cems_nox_daily"), write_margin=NO_MARGIN)
    found = {(a["rule_id"], a["device_id"]): a for a in alerts(fresh_db)}
    # GB: 150 > 120 (the line's permit) fires; 150 ≤ 250 (GB 18485 table 4) does not.
    # EU: the confidence interval is 20 % of the *effective* daily limit: 150 − 0.20 × 120 = 126 > 120 fires;
    # by default 150 − 0.20 × 200 = 110 ≤ 200 does not.
    assert set(found) == {("cems_nox_gb_24h", "cems-permit"), ("cems_nox_daily", "cems-permit")}
    gb = found[("cems_nox_gb_24h", "cems-permit")]
    assert (gb["threshold"], gb["value"], gb["started_at"]) == (120.0, 150.0, DAY)
    assert gb["annotations"]["permit"] == PERMIT and gb["annotations"]["limit_source"] == "p-permit-l1"
    assert "above 120 (GB 18485)" in gb["summary"]


def test_the_old_limits_grammar_and_a_broken_permit_quarantine_the_site_not_the_evaluator(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p-old", "cems-old", plant_params={"limits": {"cems_nox_gb_24h": 120}})
        _plant(conn, "p-bad", "cems-bad", line_params={"emission_limits": {"nox": {"gb.24h": -5}}})
        _plant(conn, "p-ok", "cems-ok")
        for device in ("cems-old", "cems-bad", "cems-ok"):
            _reported_past(conn, device)
            _day_average(conn, device, "nox", "gb", 300.0)  # above the default 250 everywhere
    rules = _shipped("cems_nox_gb_24h")
    run(fresh_db, rules, write_margin=NO_MARGIN)
    # the healthy plant is judged as usual; the two broken ones are skipped, each with its reason
    assert _fired(fresh_db) == {("cems_nox_gb_24h", "cems-ok"), ("rule_quarantined", None)}
    quarantined = {a["subject"]: a["summary"] for a in alerts(fresh_db, "rule_quarantined")}
    old = quarantined["rule:emission_limit rules at site p-old"]
    assert "limits.cems_nox_gb_24h" in old and '{"emission_limits": {"nox": {"gb.24h": 120}}}' in old
    bad = quarantined["rule:emission_limit rules at site p-bad-l1"]
    assert "sites.params.emission_limits of p-bad-l1.nox.gb.24h" in bad and "positive number" in bad
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # fixed as the error says
        conn.execute("UPDATE sites SET params = %s WHERE site_id = 'p-old'",
                     (Jsonb({"emission_limits": {"nox": {"gb.24h": 120}}}),))
        conn.execute("UPDATE sites SET params = '{}' WHERE site_id = 'p-bad-l1'")
        for device in ("cems-old", "cems-bad"):  # the processor recomputes their day: new rows for the pass
            conn.execute("UPDATE cems_averages SET computed_at = now() WHERE device_id = %s", (device,))
    run(fresh_db, rules, write_margin=NO_MARGIN)
    assert _fired(fresh_db) == {("cems_nox_gb_24h", "cems-ok"), ("cems_nox_gb_24h", "cems-old"),
                                ("cems_nox_gb_24h", "cems-bad")}
    assert {a["state"] for a in alerts(fresh_db, "rule_quarantined")} == {"resolved"}


@pytest.fixture
def api(fresh_db: str, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p1", "cems-1")
        add_site(conn, "ts-1")
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        yield client, auth(mint_key(fresh_db, "admin", "ops-admin"))


def test_put_site_params_validates_the_emission_limit_grammar(api: tuple[TestClient, dict[str, str]],
                                                              fresh_db: str) -> None:
    client, admin = api
    error = assert_error(client.put("/sites/p1/params", json={"limits": {"cems_nox_daily": 120}}, headers=admin),
                         422, "validation_error", "body.limits.cems_nox_daily")
    assert 'fix: {"emission_limits": {"nox": {"eu.daily": 120}}}' in error["message"]
    error = assert_error(client.put("/sites/p1/params", json={"emission_limits": {"nox": {"weekly": 1}}},
                                    headers=admin), 422, "validation_error", "body.emission_limits")
    assert "unknown limit 'weekly'" in error["message"]
    assert_error(client.put("/sites/p1/params", json={"limits": [1]}, headers=admin), 422, "validation_error",
                 "body.limits")
    assert_error(client.put("/sites/nowhere/params", json={}, headers=admin), 404, "not_found")
    viewer = auth(mint_key(fresh_db, "viewer"))
    assert_error(client.put("/sites/p1/params", json={}, headers=viewer), 403, "forbidden")
    permit = {"emission_limits": {"permit": PERMIT, "nox": {"gb.24h": 120}}, "disabled_rules": ["cems_*_b"]}
    response = client.put("/sites/p1/params", json=permit, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["params"] == permit
    # other rules keep the limits grammar
    station = client.put("/sites/ts-1/params", json={"limits": {"station_h2s": 0.05}}, headers=admin)
    assert station.status_code == 200, station.text
    with psycopg.connect(fresh_db) as conn:
        stored: dict[str, Any] = dict(conn.execute("SELECT site_id, params FROM sites").fetchall())
    assert stored["p1"] == permit and stored["ts-1"] == {"limits": {"station_h2s": 0.05}}


# --- marked periods -----------------------------------------------------------------------------------------------


def test_marked_periods_are_never_judged(fresh_db: str) -> None:
    hour, day = timedelta(hours=1), timedelta(days=1)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p1", "cems-marked")
        _plant(conn, "p2", "cems-control")
        # a start-up: 500 mg/m³ NOx hours and a day under a furnace mark, and EU days marked, missing or
        # not operating; the control unit has the same values as valid periods (and one invalid day)
        _periods(conn, "cems-marked", "nox", "1h", "gb", [(500.0, "marked"), (500.0, "marked")], hour)
        _periods(conn, "cems-control", "nox", "1h", "gb", [(500.0, "valid"), (500.0, "valid")], hour)
        start = DAY - 2 * day
        _periods(conn, "cems-marked", "nox", "1d", "eu",
                 [(500.0, "marked"), (None, "missing"), (None, "not_operating")], day, start)
        _periods(conn, "cems-control", "nox", "1d", "eu", [(500.0, "valid"), (150.0, "invalid"), (150.0, "valid")],
                 day, start)
    run(fresh_db, _shipped("cems_nox_gb_1h", "cems_nox_daily", "cems_nox_daily_invalid"),
        write_margin=NO_MARGIN, lateness_horizon=timedelta(days=4))
    # control: 500 > 300 (GB 1-hour); 500 − 40 = 460 > 200 (EU daily); its invalid day raises *_invalid.
    # The marked unit: nothing — not an exceedance, not "invalid", not compliant either.
    assert {(a["rule_id"], a["device_id"]) for a in alerts(fresh_db)} == {
        ("cems_nox_gb_1h", "cems-control"), ("cems_nox_daily", "cems-control"),
        ("cems_nox_daily_invalid", "cems-control")}


# --- the daily regulatory judgement --------------------------------------------------------------------------------

JUDGEMENT_RULES = ("cems_furnace_850_daily", "cems_furnace_below_850", "cems_marked_hours_cap", "cems_mark_too_long",
                   "cems_marked_dust", "cems_co_eu_24h")
EARLY = {"cems_furnace_850_daily", "cems_furnace_below_850", "cems_marked_hours_cap", "cems_mark_too_long",
         "cems_marked_dust"}
# furnace_5min_below_850, marked_hours_ytd, marks_over_limit, marked_dust_1h_max, eu_co_24h_failed
OVER = (6, 60.5, 1, 151.0, 1)  # 6 > 5 dips, 60.5 > 60 h, 1 > 0 marks too long, 151 > 150 mg/m³, CO test failed
AT_LIMIT = (5, 60.0, 0, 150.0, 0)  # each exactly at its limit: only "at least one dip" (5 ≥ 1) fires
BELOW = (0, 10.0, 0, None, None)


def _judgement(conn: psycopg.Connection, device: str, day: datetime, values: tuple[Any, ...], *, final: bool,
               reported_past: bool = True) -> None:
    end = day + timedelta(days=1)
    if reported_past:
        _reported_past(conn, device, day)
    conn.execute(
        "INSERT INTO cems_daily_judgements (device_id, day_start, day_end, day, final, status, furnace_5min_below_850,"
        " marked_hours_ytd, marks_over_limit, marked_dust_1h_max, eu_co_24h_failed)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (device, day, end, day.date(), final, "violation" if final else "in_progress", *values))


def test_judgement_rules_on_final_and_in_progress_days(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for i, device in enumerate(("cems-final", "cems-limit", "cems-early", "cems-below")):
            _plant(conn, f"p{i}", device)
        _judgement(conn, "cems-final", DAY, OVER, final=True)
        _judgement(conn, "cems-limit", DAY, AT_LIMIT, final=True)
        # today, 08:30 local: not over, so not final — the counts so far
        _judgement(conn, "cems-early", TODAY, OVER, final=False, reported_past=False)
        _judgement(conn, "cems-below", TODAY, BELOW, final=False, reported_past=False)
    run(fresh_db, _shipped(*JUDGEMENT_RULES), write_margin=NO_MARGIN)
    assert _fired(fresh_db) == (
        {(rule, "cems-final") for rule in JUDGEMENT_RULES}
        | {("cems_furnace_below_850", "cems-limit")}
        | {(rule, "cems-early") for rule in EARLY})  # CO's 24-hour test is decided when the day ends
    final = {a["rule_id"]: a for a in alerts(fresh_db) if a["device_id"] == "cems-final"}
    assert final["cems_furnace_850_daily"]["threshold"] == 5 and final["cems_furnace_850_daily"]["severity"] == "critical"
    assert final["cems_marked_hours_cap"]["threshold"] == 60 and final["cems_marked_dust"]["threshold"] == 150
    assert final["cems_marked_dust"]["summary"].startswith("cems-final: dust 1-hour average 151.0 mg/m³")


def test_an_early_alert_is_withdrawn_when_the_final_day_says_otherwise(fresh_db: str) -> None:
    rules = _shipped("cems_furnace_850_daily")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p1", "cems-1")
        _judgement(conn, "cems-1", DAY, (6, 0.0, 0, None, None), final=False, reported_past=False)
    run(fresh_db, rules, write_margin=NO_MARGIN)
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "firing" and alert["value"] == 6
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # the plant marked a start-up after the fact: the processor's final count is 3 dips outside marks
        conn.execute("DELETE FROM cems_daily_judgements")
        _judgement(conn, "cems-1", DAY, (3, 0.0, 0, None, None), final=True)
    run(fresh_db, rules, write_margin=NO_MARGIN)
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "resolved"


def test_a_final_flag_without_data_past_the_day_is_not_a_verdict(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p1", "cems-1")
        # computed after midnight, but the unit has not reported past the day (a backlog may still arrive)
        _judgement(conn, "cems-1", DAY, OVER, final=True, reported_past=False)
    run(fresh_db, _shipped("cems_co_eu_24h"), write_margin=NO_MARGIN)
    assert alerts(fresh_db) == []


# --- flag T ---------------------------------------------------------------------------------------------------------


def test_a_reading_flagged_over_range_raises_its_own_alert(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _plant(conn, "p1", "cems-1")
        # dust at the analyser's range limit (200, flag T) for 3 minutes — during a start-up the data unit
        # marked, which does not hide an analyser fault — then valid readings; 500 mg/m³ flagged N is high
        # but in range (the averages judge it, not this rule)
        insert(conn, "cems_readings", "cems-1", [
            {"ts": at(m), "dust_mg_m3": 200.0 if m < 3 else (500.0 if m == 5 else 5.0),
             "dust_flag": "T" if m < 3 else "N", "extra": {"operating_mark": "start_up"} if m < 3 else {}}
            for m in range(20)])
        # an SO2 analyser that sends flag T without a value
        insert(conn, "cems_readings", "cems-1", [{"ts": at(30), "so2_flag": "T", "seq": 100}])
    run(fresh_db, _shipped("cems_dust_over_range", "cems_so2_over_range", "cems_nox_over_range"))
    found = {a["rule_id"]: a for a in alerts(fresh_db)}
    assert set(found) == {"cems_dust_over_range", "cems_so2_over_range"}
    dust = found["cems_dust_over_range"]
    # first T at minute 0; cleared by the N reading at minute 3, kept firing 10 minutes: resolved at 13
    assert (dust["started_at"], dust["resolved_at"], dust["severity"]) == (at(0), at(13), "major")
    assert "over its range (HJ 212 flag T)" in dust["summary"]
    assert found["cems_so2_over_range"]["state"] == "firing"


# --- furnace marks and reading rules --------------------------------------------------------------------------------

FURNACE = {"id": "t.furnace", "kind": "threshold", "summary": "{value:.0f}", "severity": "major",
           "source": "cems_readings", "field": "furnace_temp_c", "where": {"data_kind": ["rtd", "minute"]},
           "op": "<", "threshold": 850, "for": "2m"}


def _mark(conn: psycopg.Connection, device: str, mark: str, start: datetime, end: datetime,
          supersedes: int | None = None, withdrawn: bool = False) -> int:
    mark_id: int = conn.execute(
        "INSERT INTO cems_marks (device_id, mark, starts_at, ends_at, reason, source, created_by, supersedes,"
        " withdrawn) VALUES (%s, %s, %s, %s, 'test', 'api', 'ops', %s, %s) RETURNING mark_id",
        (device, mark, start, end, supersedes, withdrawn)).fetchone()[0]  # type: ignore[index]
    if supersedes is not None:
        conn.execute("UPDATE cems_marks SET superseded_by = %s WHERE mark_id = %s", (mark_id, supersedes))
    return mark_id


def test_readings_under_a_furnace_mark_never_raise_a_reading_rule(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for device in ("cems-stored", "cems-dau", "cems-withdrawn"):
            add_device(conn, device, "cems")
            insert(conn, "cems_readings", device, [
                {"ts": at(m), "furnace_temp_c": 600.0,
                 "extra": {"operating_mark": "fault"} if device == "cems-dau" else {}} for m in range(6)])
        _mark(conn, "cems-stored", "start_up", at(-1), at(10))
        # a mark the plant withdrew afterwards (a correction that removes it) exempts nothing
        wrong = _mark(conn, "cems-withdrawn", "shut_down", at(-1), at(10))
        _mark(conn, "cems-withdrawn", "shut_down", at(-1), at(10), supersedes=wrong, withdrawn=True)
    run(fresh_db, ruleset(FURNACE))
    (alert,) = alerts(fresh_db)
    assert alert["device_id"] == "cems-withdrawn" and alert["fired_at"] == at(2)  # 600 < 850 held for 2 minutes
