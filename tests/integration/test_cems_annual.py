"""The annual report (processors/annual_report.py) over a year constructed in the database with SQL — averages and
daily judgements inserted directly, every expected count worked out by hand beside it — and the daily judgements'
year-to-date marked hours across days, with a back-dated mark (processors/cems_judgement.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.processors import annual_report, cems_judgement
from sanitel.processors.cems_averages import local_day_bounds

TZ = "Asia/Shanghai"
PLANT, LINE, DEVICE = "lhk", "lhk-l1", "LHK-L1"


def local(day: date, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES (%s, 'plant', 'Laohukeng', %s)",
                  (PLANT, TZ))
        c.execute("INSERT INTO sites (site_id, kind, name, parent_id) VALUES (%s, 'line', 'Line 1', %s)", (LINE, PLANT))
        c.execute("INSERT INTO devices (device_id, kind, site_id) VALUES (%s, 'cems', %s)", (DEVICE, LINE))
        yield c


# --- a constructed year ---------------------------------------------------------------------------------------

def half_hours(conn: psycopg.Connection, pollutant: str, first: date, last: date, value: float,
               special: list[tuple[datetime, int, float]] = ()) -> None:  # type: ignore[assignment]
    """Valid EU half-hourly averages of [first, last] at ``value``; ``special``: (start, count, value) runs."""
    conn.execute(
        """INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end, plant_id,
                                      line_id, avg_zs_mg_m3, n_valid, status, valid)
           SELECT %(d)s, %(p)s, '30min', 'eu', t, t + interval '30 minutes', %(plant)s, %(line)s, %(v)s, 30, 'valid', true
           FROM generate_series(%(s)s::timestamptz, %(e)s::timestamptz - interval '30 minutes', interval '30 minutes') t""",
        {"d": DEVICE, "p": pollutant, "plant": PLANT, "line": LINE, "v": value, "s": local(first),
         "e": local(last + timedelta(days=1))})
    for start, count, v in special:
        conn.execute("UPDATE cems_averages SET avg_zs_mg_m3 = %s WHERE device_id = %s AND pollutant = %s"
                     " AND period = '30min' AND period_start >= %s AND period_start < %s",
                     (v, DEVICE, pollutant, start, start + count * timedelta(minutes=30)))


def days_of(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def daily_rows(conn: psycopg.Connection, pollutant: str, standard: str, days: list[date], value: float,
               status: str = "valid", discarded: dict[str, Any] | None = None) -> None:
    conn.cursor().executemany(
        "INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end, plant_id,"
        " line_id, avg_zs_mg_m3, n_valid, discarded, status, valid) VALUES (%s, %s, '1d', %s, %s, %s, %s, %s, %s, 0,"
        " %s, %s, %s) ON CONFLICT (device_id, pollutant, period, standard, period_start) DO UPDATE SET"
        " avg_zs_mg_m3 = EXCLUDED.avg_zs_mg_m3, discarded = EXCLUDED.discarded, status = EXCLUDED.status,"
        " valid = EXCLUDED.valid",
        [(DEVICE, pollutant, standard, local(d), local(d + timedelta(days=1)), PLANT, LINE, value,
          Jsonb(discarded or {}), status, status == "valid") for d in days])


def judgements(conn: psycopg.Connection, days: list[date], *, final: bool = True, status: str = "compliant",
               **columns: Any) -> None:
    """Judgement rows (defaults: nothing wrong); ``columns`` override per row."""
    names = ["marked_hours", "furnace_5min_below_850", "marks_over_limit", "marked_dust_1h_max", "eu_co_24h_failed",
             "gb_exceedances"]
    values = {"marked_hours": 0.0, "furnace_5min_below_850": 0, "marks_over_limit": 0, "marked_dust_1h_max": None,
              "eu_co_24h_failed": 0, "gb_exceedances": 0, **columns}
    conn.cursor().executemany(
        f"INSERT INTO cems_daily_judgements (device_id, day_start, day_end, plant_id, line_id, day, final, status,"
        f" {', '.join(names)}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {', '.join(['%s'] * len(names))})"
        " ON CONFLICT (device_id, day_start) DO UPDATE SET"
        f" {', '.join(f'{n} = EXCLUDED.{n}' for n in names)}, final = EXCLUDED.final, status = EXCLUDED.status",
        [(DEVICE, local(d), local(d + timedelta(days=1)), PLANT, LINE, d, final, status,
          *[values[n] for n in names]) for d in days])


YEAR = days_of(date(2025, 1, 1), date(2025, 12, 31))  # 365 days × 48 = 17,520 half-hours per pollutant


def construct_2025(conn: psycopg.Connection) -> None:
    # NOx: half-hours at 100 (EU validated: − CI 20 % × 200 = 40 → 60), except
    #   524 at 260 from 1 Feb 00:00 (validated 220 > B 200): 1–10 Feb whole (480) and 44 of 11 Feb, and
    #   2 at 450 on 1 Jun 00:00–01:00 (validated 410 > A 400, and > B)
    half_hours(conn, "nox", YEAR[0], YEAR[-1], 100.0,
               [(local(date(2025, 2, 1)), 524, 260.0), (local(date(2025, 6, 1)), 2, 450.0)])
    daily_rows(conn, "nox", "eu", YEAR, 100.0)
    # 11 days invalid for the measuring system (6 half-hours each > 5) and 3 invalid with only 2 such half-hours
    # (the rest marked: the line was shut down) — only the first 11 are daily values discarded for the CMS
    daily_rows(conn, "nox", "eu", days_of(date(2025, 3, 1), date(2025, 3, 11)), 100.0, "invalid",
               {"cms_discarded": 6, "periods": {"invalid": 6}})
    daily_rows(conn, "nox", "eu", days_of(date(2025, 4, 1), date(2025, 4, 3)), 100.0, "invalid",
               {"cms_discarded": 2, "periods": {"invalid": 2, "marked": 20}})
    daily_rows(conn, "nox", "gb", YEAR, 100.0)
    daily_rows(conn, "nox", "gb", [date(2025, 2, 1), date(2025, 2, 2)], 260.0)  # 260 > 250
    # CO: half-hours at 20 (CI 10 % × 50 = 5 → 15), but 60 (→ 55 > 50) all day 1–11 Jul
    half_hours(conn, "co", YEAR[0], YEAR[-1], 20.0, [(local(date(2025, 7, 1)), 11 * 48, 60.0)])
    daily_rows(conn, "co", "eu", YEAR, 20.0)
    judgements(conn, YEAR)
    judgements(conn, days_of(date(2025, 5, 1), date(2025, 5, 3)), status="violation", furnace_5min_below_850=7)
    judgements(conn, days_of(date(2025, 8, 1), date(2025, 8, 20)), marked_hours=3.5)  # 20 × 3.5 = 70 h
    judgements(conn, [date(2025, 8, 5)], marked_hours=3.5, marks_over_limit=1, status="violation")
    judgements(conn, [date(2025, 8, 6), date(2025, 8, 7)], marked_hours=3.5, marked_dust_1h_max=160.0,
               status="violation")
    judgements(conn, [date(2025, 8, 8)], marked_hours=3.5, marked_dust_1h_max=140.0)  # within 150
    judgements(conn, days_of(date(2025, 7, 1), date(2025, 7, 4)), eu_co_24h_failed=1)
    judgements(conn, days_of(date(2025, 12, 27), date(2025, 12, 31)), eu_co_24h_failed=None)
    judgements(conn, [date(2025, 2, 1), date(2025, 2, 2)], gb_exceedances=1, status="violation")


def rules_of(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    [line] = report["lines"]
    return {(r["rule"], r["pollutant"]): r for r in line["rules"]}


def test_a_constructed_year(conn: psycopg.Connection) -> None:
    construct_2025(conn)
    report = annual_report.build_annual(conn, PLANT, 2025, now=datetime(2026, 1, 15, tzinfo=UTC))
    assert (report["year_complete"], report["through"], report["pending_days"]) == (True, "2025-12-31", 0)
    rules = rules_of(report)
    got = {k: (r["value"], r["n"], r["compliant"]) for k, r in rules.items()}
    # EU: 11 daily NOx values discarded for the measuring system > 10 allowed (the 3 shut-down days do not count)
    assert got[("eu.discarded_days", "nox")] == (11, None, False)
    assert "14 invalid days in all" in rules[("eu.discarded_days", "nox")]["note"]
    assert got[("eu.discarded_days", "co")] == (0, None, True)
    # EU daily NOx (mean of validated half-hours): 1–10 Feb 220 > 200; 11 Feb (44 × 220 + 4 × 60) / 48 = 206.67 > 200;
    # 1 Jun (2 × 410 + 46 × 60) / 48 = 74.6 ≤ 200 → 11 days above, of 365 − 14 = 351 valid
    assert got[("eu.daily", "nox")] == (11, 351, False)
    # half-hourly A: 2 of 17,520 above 400
    assert got[("eu.half_hour_a", "nox")] == (2, 17_520, False)
    # half-hourly B: 524 + 2 = 526 above 200 → 16,994 / 17,520 = 96.998 % < 97 %
    b = rules[("eu.half_hour_b_97", "nox")]
    assert (b["value"], b["n"], b["share"], b["required_share"], b["compliant"]) == (
        16_994, 17_520, pytest.approx(0.969977, abs=1e-6), 0.97, False)
    # CO daily: 11 of 365 days at 55 > 50 → 354 / 365 = 96.99 % < 97 %; no B limit and no separate A check for CO
    co = rules[("eu.co_daily_97", "co")]
    assert (co["value"], co["n"], co["share"], co["compliant"]) == (354, 365, pytest.approx(0.969863, abs=1e-6), False)
    assert ("eu.half_hour_b_97", "co") not in rules and ("eu.half_hour_a", "co") not in rules
    assert got[("eu.co_24h_failed_days", "co")] == (4, 360, False)  # 4 failed of 365 − 5 not judged
    # GB: 1 and 2 Feb at 260 > 250
    assert got[("gb.24h_days", "nox")] == (2, 365, False)
    assert got[("gb.days_with_exceedances", "")] == (2, 365, False)
    # Order No. 10: 3 furnace-violation days; 20 × 3.5 = 70 marked hours > 60; 1 mark over its limit; 2 days with
    # dust above 150 during marks (140 is within)
    assert got[("cn.furnace_violation_days", "")] == (3, 365, False)
    assert got[("cn.marked_hours", "")] == (70.0, None, False)
    assert got[("cn.marks_over_limit", "")] == (1, None, False)
    assert got[("cn.marked_dust_days", "")] == (2, None, False)
    assert report["compliant"] == {"eu": False, "gb": False, "cn": False}
    # violation days: 1–3 May (furnace), 5–7 Aug (a mark over its limit, marked dust), 1–2 Feb (GB) = 3 + 3 + 2 = 8
    assert report["lines"][0]["days"] == {"judged": 365, "pending_days": 0, "compliant": 357, "violation": 8,
                                          "not_determinable": 0}
    frame = pd.read_csv(io.StringIO(annual_report.annual_csv(report)))
    assert list(frame.columns) == list(annual_report.ANNUAL_CSV_COLUMNS) and len(frame) == len(rules)


def test_days_not_ended_are_pending_and_left_out(conn: psycopg.Connection) -> None:
    # 8, 9 and half of 10 Mar 2026 at NOx 100; judged at 12:00 on 10 Mar: 9 Mar has ended but its judgement is not
    # final yet (no pass since midnight), 10 Mar is running → 2 pending days, only 8 Mar's 48 half-hours count
    half_hours(conn, "nox", date(2026, 3, 8), date(2026, 3, 9), 100.0)
    conn.execute("DELETE FROM cems_averages WHERE period_start >= %s", (local(date(2026, 3, 10), 12),))
    half_hours(conn, "nox", date(2026, 3, 10), date(2026, 3, 10), 100.0)
    conn.execute("DELETE FROM cems_averages WHERE period_start >= %s", (local(date(2026, 3, 10), 12),))
    daily_rows(conn, "nox", "eu", [date(2026, 3, 8), date(2026, 3, 9)], 100.0)
    judgements(conn, [date(2026, 3, 8)])
    judgements(conn, [date(2026, 3, 9), date(2026, 3, 10)], final=False, status="in_progress")
    report = annual_report.build_annual(conn, PLANT, 2026, LINE, now=local(date(2026, 3, 10), 12))
    assert (report["year_complete"], report["through"], report["pending_days"]) == (False, "2026-03-09", 2)
    rules = rules_of(report)
    assert (rules[("eu.half_hour_b_97", "nox")]["n"], rules[("eu.half_hour_b_97", "nox")]["compliant"]) == (48, True)
    assert (rules[("eu.daily", "nox")]["n"], rules[("eu.daily", "nox")]["compliant"]) == (1, True)
    assert report["lines"][0]["days"]["judged"] == 1
    assert report["compliant"] == {"eu": True, "gb": True, "cn": True}
    assert annual_report.build_annual(conn, PLANT, 2026, "other-line", now=local(date(2026, 3, 10), 12))["lines"] == []


@pytest.mark.clock  # the API and the command line judge 2025 "so far" by this process's clock: any 2026+ instant
def test_the_annual_report_through_the_api_and_the_command_line(conn: psycopg.Connection, fresh_db: str,
                                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    construct_2025(conn)
    from sanitel.cli import main

    monkeypatch.setenv("SANITEL_DATABASE_URL", fresh_db)
    monkeypatch.setenv("SANITEL_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    assert main(["report", "emissions", "--plant", PLANT, "--year", "2025", "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert int(frame[frame.rule.eq("eu.discarded_days") & frame.pollutant.eq("nox")].iloc[0].value) == 11
    assert main(["report", "emissions", "--plant", PLANT, "--year", "2025", "--line", LINE]) == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["line_id"] == LINE
    assert main(["report", "emissions", "--plant", PLANT, "--year", "2025", "--format", "png"]) == 2
    assert main(["report", "emissions", "--plant", "nowhere", "--year", "2025"]) == 2

    from fastapi.testclient import TestClient

    from sanitel.api.app import create_app
    from tests.support.api_helpers import api_settings, auth, mint_key

    with TestClient(create_app(api_settings(fresh_db, tmp_path / "api")),
                    headers=auth(mint_key(fresh_db, "viewer"))) as client:
        r = client.get(f"/plants/{PLANT}/compliance/annual", params={"year": 2025})
        assert r.status_code == 200, r.text
        rules = rules_of(r.json())
        assert rules[("eu.half_hour_b_97", "nox")]["value"] == 16_994 and r.json()["compliant"]["cn"] is False
        r = client.get(f"/plants/{PLANT}/compliance/annual", params={"year": 2025, "format": "csv", "line": LINE})
        assert r.headers["content-type"].startswith("text/csv") and "eu.co_daily_97" in r.text
        assert client.get("/plants/nowhere/compliance/annual", params={"year": 2025}).status_code == 404
        assert client.get(f"/plants/{PLANT}/compliance/annual", params={"year": "MMXXV"}).status_code == 422


# --- year-to-date marked hours across days, and a back-dated mark ------------------------------------------------

def _mark(conn: psycopg.Connection, mark: str, start: datetime, end: datetime, supersedes: int | None = None,
          withdrawn: bool = False) -> int:
    row = conn.execute(
        "INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source, created_by,"
        " supersedes, withdrawn) VALUES (%s, %s, %s, %s, %s, %s, 'test', 'cli', 'operator', %s, %s) RETURNING mark_id",
        (DEVICE, PLANT, LINE, mark, start, end, supersedes, withdrawn)).fetchone()
    assert row is not None
    if supersedes is not None:
        conn.execute("UPDATE cems_marks SET superseded_by = %s WHERE mark_id = %s", (row[0], supersedes))
    return int(row[0])


def _stored(conn: psycopg.Connection) -> dict[date, tuple[float, float, str, bool]]:
    rows = conn.execute("SELECT day, marked_hours, marked_hours_ytd, status, final FROM cems_daily_judgements"
                        " WHERE device_id = %s AND day >= '2026-01-05' ORDER BY day", (DEVICE,)).fetchall()
    return {d: (h, ytd, status, final) for d, h, ytd, status, final in rows}


def test_marked_hours_year_to_date_and_a_back_dated_mark(conn: psycopg.Connection) -> None:
    jan = [date(2026, 1, d) for d in range(1, 9)]
    judgements(conn, jan[:3], marked_hours=19.0)  # 1–3 Jan: 3 × 19 = 57 h already
    _mark(conn, "start_up", local(jan[4], 6), local(jan[4], 8))  # 5 Jan 2 h
    _mark(conn, "shut_down", local(jan[6], 10), local(jan[6], 11))  # 7 Jan 1 h
    later = local(date(2026, 1, 20))
    assert cems_judgement.rejudge(conn, DEVICE, local(jan[4]), local(jan[7]), now=later) == 3
    # 57 + 2 = 59; 59; 59 + 1 = 60 — not above the 60 h cap (no emission data: not determinable, no violation)
    assert _stored(conn) == {jan[4]: (2.0, 59.0, "not_determinable", True), jan[5]: (0.0, 59.0, "not_determinable", True),
                             jan[6]: (1.0, 60.0, "not_determinable", True)}
    # a fault on 6 Jan 02:00–04:00 marked afterwards; only 6 Jan is judged again: 59 + 2 = 61 > 60 → violation,
    # and 7 Jan follows: 61 + 1 = 62, its marked hour no longer exempt → violation
    fault = _mark(conn, "fault", local(jan[5], 2), local(jan[5], 4))
    cems_judgement.rejudge(conn, DEVICE, local(jan[5]), local(jan[6]), now=later)
    assert _stored(conn) == {jan[4]: (2.0, 59.0, "not_determinable", True), jan[5]: (2.0, 61.0, "violation", True),
                             jan[6]: (1.0, 62.0, "violation", True)}
    cap = conn.execute("SELECT details->'marked_hours_cap_exceeded' FROM cems_daily_judgements WHERE day = %s",
                       (jan[6],)).fetchone()
    assert cap == (True,)
    # the fault is withdrawn (a correction row, the audit trail keeps both): back to 59 and 60, no violation
    _mark(conn, "fault", local(jan[5], 2), local(jan[5], 4), supersedes=fault, withdrawn=True)
    cems_judgement.rejudge(conn, DEVICE, local(jan[5]), local(jan[6]), now=later)
    assert _stored(conn)[jan[5]] == (0.0, 59.0, "not_determinable", True)
    assert _stored(conn)[jan[6]] == (1.0, 60.0, "not_determinable", True)


def test_a_day_judged_while_it_ran_is_finalised_after_it_ends(conn: psycopg.Connection) -> None:
    day = date(2026, 1, 8)
    _mark(conn, "start_up", local(day, 6), local(day, 8))
    start, end = local_day_bounds(day, TZ)
    cems_judgement.rejudge(conn, DEVICE, start, end, now=local(day, 12))
    assert _stored(conn)[day] == (2.0, 2.0, "in_progress", False)
    assert cems_judgement.finalise_ended_days(conn, now=local(day, 23)) == 0  # not ended yet
    assert cems_judgement.finalise_ended_days(conn, now=local(day + timedelta(days=1), 0, 5)) == 1
    assert _stored(conn)[day] == (2.0, 2.0, "not_determinable", True)
