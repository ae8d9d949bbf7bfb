"""No verdict on a period that has not ended (issue 18, Must show 1), through the real chain: readings in TimescaleDB,
the scheduled processor's pass, the shipped CEMS rule pack in the evaluator.

A line reports normally from local midnight; the pass runs 4 h 42 min later (the issue's "day that had started 4.7
hours earlier"). The day's 38 future half-hours are not missing data: no ``cems_*_daily_invalid`` alert, and the
stored daily averages say ``in_progress``. Only when more than five half-hours are ALREADY discarded for the
measuring system (2010/75/EU Annex VI Part 8) is the day certain to be invalid before it ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from sanitel.processors.cems_averages import run_scheduled
from tests.support.alerts_db import add_device, add_site, alerts, run

DAY = datetime.fromisoformat("2026-03-10T00:00:00+08:00")
NOW = DAY + timedelta(hours=4, minutes=42)


def _cems_pack() -> RuleSet:
    shipped = load_files(default_rule_files())
    out = RuleSet()
    for rule_id, rule in shipped.rules.items():
        if rule_id.startswith("cems_") and rule_id != "cems_offline":
            out.add(rule, "shipped")
    return out


def _morning(url: str, flag_until: timedelta | None) -> None:
    """One reading a minute from local midnight to NOW; flagged M (maintenance) before ``flag_until``."""
    rows: list[tuple[Any, ...]] = []
    minute = 0
    while (ts := DAY + timedelta(minutes=minute)) < NOW:
        flag = "M" if flag_until is not None and ts < DAY + flag_until else "N"
        rows.append((ts, ts, flag, flag, flag))
        minute += 1
    with psycopg.connect(url, autocommit=True) as conn:
        add_site(conn, "p9", "plant")
        add_site(conn, "p9-l1", "line", parent="p9")
        add_device(conn, "cems-9", "cems", site="p9-l1")
        conn.cursor().executemany(
            "INSERT INTO cems_readings (device_id, ts, received_at, nox_mg_m3, so2_mg_m3, co_mg_m3, nox_flag,"
            " so2_flag, co_flag, o2_pct, o2_flag, furnace_temp_c, plant_id, line_id)"
            " VALUES ('cems-9', %s, %s, 100, 20, 10, %s, %s, %s, 9.0, 'N', 950, 'p9', 'p9-l1')", rows)
        run_scheduled(conn, now=NOW)
    run(url, _cems_pack(), now=NOW, write_margin=timedelta(0))


def _daily_statuses(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT DISTINCT status FROM cems_averages WHERE device_id = 'cems-9' AND period = '1d'").fetchall()}


@pytest.mark.clock
def test_a_day_that_has_not_ended_raises_no_invalid_verdict(fresh_db: str) -> None:
    _morning(fresh_db, flag_until=None)
    assert _daily_statuses(fresh_db) == {"in_progress"}
    assert [a["rule_id"] for a in alerts(fresh_db)] == []  # the 38 half-hours still to come are not "missing"


@pytest.mark.clock
def test_a_day_already_certain_to_be_invalid_is_said_so_before_it_ends(fresh_db: str) -> None:
    # 00:00–03:30 under maintenance: 7 half-hours discarded for the measuring system, more than the 5 allowed —
    # whatever the rest of the day brings, its EU daily average cannot be valid
    _morning(fresh_db, flag_until=timedelta(hours=3, minutes=30))
    with psycopg.connect(fresh_db) as conn:
        eu: dict[str, str] = dict(conn.execute("SELECT pollutant, status FROM cems_averages WHERE device_id = 'cems-9'"
                               " AND period = '1d' AND standard = 'eu'").fetchall())
    assert eu == {"nox": "invalid", "so2": "invalid", "co": "invalid"}
    raised = {a["rule_id"] for a in alerts(fresh_db)}
    assert {"cems_nox_daily_invalid", "cems_so2_daily_invalid", "cems_co_daily_invalid"} <= raised
