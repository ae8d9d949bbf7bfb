"""Hand-computed emission cases through the real chain: wet-gas readings → moisture correction and
normalisation to 11 % O2 (processors/cems_normalise.py) → 10-minute, half-hourly, hourly and daily
averages (processors/cems_averages.py) → the shipped GB 18485 / 2010/75/EU rules (alerts/rules/cems.yaml).

Every reading is wet gas with 20 % H2O and 8 % O2 (wet):
    dry = wet / (1 − 0.20) = wet × 1.25;  O2 dry = 8 × 1.25 = 10 %
    at 11 % O2 = dry × (21 − 11) / (21 − 10) = dry × 10/11;  so  normalised = wet × 1.25 × 10/11
which is why the wet values below are normalised values × 0.88:
    NOx  88 → 100 (base) · 396 → 450 (10:00-10:30) · 308 → 350 (14:00-15:00)
    CO   8.8 → 10 (base) · 140.8 → 160 (06:00-06:10)
    SO2  61.6 → 70 (all day)
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from sanitel.processors.cems_averages import run_scheduled
from tests.support.alerts_db import NOW, T0, add_device, add_site, alerts, run

RULES = ("cems_co_10min", "cems_co_half_hourly", "cems_nox_half_hourly", "cems_nox_half_hourly_b", "cems_nox_gb_1h",
         "cems_nox_daily", "cems_nox_gb_24h", "cems_so2_daily", "cems_so2_half_hourly_b", "cems_so2_gb_24h",
         "cems_so2_daily_invalid", "cems_nox_daily_invalid")
DAY = datetime.combine(T0.date() - timedelta(days=1), time(0), ZoneInfo("Asia/Shanghai"))  # a whole local day


def _wet(minute: int) -> dict[str, Any]:
    local_hour = minute / 60
    nox = 396.0 if 10 <= local_hour < 10.5 else 308.0 if 14 <= local_hour < 15 else 88.0
    co = 140.8 if 6 <= local_hour < 6 + 1 / 6 else 8.8
    return {"nox_mg_m3": nox, "co_mg_m3": co, "so2_mg_m3": 61.6}


@pytest.fixture
def emissions_db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "p1", "plant")
        add_site(conn, "p1-l1", "line", parent="p1")
        add_device(conn, "cems-1", "cems", site="p1-l1")
        rows = []
        for minute in range(24 * 60 + 2):  # one reading a minute, and two past midnight: the day is complete
            ts = DAY + timedelta(minutes=minute)
            values = _wet(minute % (24 * 60))
            rows.append((ts, ts, values["nox_mg_m3"], values["co_mg_m3"], values["so2_mg_m3"]))
        conn.cursor().executemany(
            "INSERT INTO cems_readings (device_id, ts, received_at, nox_mg_m3, co_mg_m3, so2_mg_m3, nox_flag, co_flag,"
            " so2_flag, o2_pct, o2_flag, h2o_pct, gas_is_dry, plant_id, line_id)"
            " VALUES ('cems-1', %s, %s, %s, %s, %s, 'N', 'N', 'N', 8.0, 'N', 20.0, false, 'p1', 'p1-l1')", rows)
        run_scheduled(conn, now=NOW)
    return fresh_db


def _shipped(*ids: str) -> RuleSet:
    shipped = load_files(default_rule_files())
    out = RuleSet()
    for rule_id in ids:
        out.add(shipped.rules[rule_id], "shipped")
    return out


def _averages(url: str, pollutant: str, period: str, standard: str) -> dict[int, float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT period_start, avg_zs_mg_m3 FROM cems_averages WHERE device_id = 'cems-1'"
                            " AND pollutant = %s AND period = %s AND standard = %s AND period_start < %s",
                            (pollutant, period, standard, DAY + timedelta(days=1))).fetchall()
    return {int((start - DAY).total_seconds() // 60): value for start, value in rows}


@pytest.mark.clock
def test_normalised_averages_for_each_period(emissions_db: str) -> None:
    half_hours = _averages(emissions_db, "nox", "30min", "eu")
    assert len(half_hours) == 48
    assert half_hours[600] == pytest.approx(450.0) and half_hours[630] == pytest.approx(100.0)  # 10:00, 10:30
    assert half_hours[840] == pytest.approx(350.0) and half_hours[870] == pytest.approx(350.0)  # 14:00, 14:30
    hours = _averages(emissions_db, "nox", "1h", "gb")
    assert hours[600] == pytest.approx(275.0) and hours[840] == pytest.approx(350.0)  # (450 + 100) / 2
    ten = _averages(emissions_db, "co", "10min", "eu")
    assert ten[360] == pytest.approx(160.0) and ten[370] == pytest.approx(10.0)
    (daily_nox,) = _averages(emissions_db, "nox", "1d", "eu").values()
    assert daily_nox == pytest.approx((450 + 2 * 350 + 45 * 100) / 48)  # 117.7: mean of the half-hours
    (daily_so2,) = _averages(emissions_db, "so2", "1d", "gb").values()
    assert daily_so2 == pytest.approx(70.0)


@pytest.mark.clock
def test_each_averaging_period_against_the_shipped_limits(emissions_db: str) -> None:
    # the readings were committed before the processor ran: no write in flight, no margin needed
    run(emissions_db, _shipped(*RULES), lateness_horizon=timedelta(days=4), write_margin=timedelta(0))
    found = {(a["rule_id"], a["started_at"] - DAY, a["resolved_at"] - DAY if a["resolved_at"] else None,
              round(a["value"], 1)) for a in alerts(emissions_db)}
    h = timedelta(hours=1)
    assert found == {
        # CO 10-minute: 160 − 10 % × 50 = 155 > 150; its half-hour (160 + 10 + 10) / 3 = 60 stays under 100
        ("cems_co_10min", 6 * h, 6 * h + timedelta(minutes=10), 160.0),
        # NOx half-hourly A: 450 − 20 % × 200 = 410 > 400 (350 − 40 = 310 is not)
        ("cems_nox_half_hourly", 10 * h, 10.5 * h, 450.0),
        # NOx half-hourly B: 410 and 310 > 200
        ("cems_nox_half_hourly_b", 10 * h, 10.5 * h, 450.0),
        ("cems_nox_half_hourly_b", 14 * h, 15 * h, 350.0),
        # NOx GB 1-hour: 350 > 300 at 14:00; the 10:00 hour averages (450 + 100) / 2 = 275
        ("cems_nox_gb_1h", 14 * h, 15 * h, 350.0),
        # SO2 EU daily: 70 − 20 % × 50 = 60 > 50 (GB 24-hour 80: compliant); every half-hour is over B too.
        # Nothing after the day has been judged yet, so both are still open.
        ("cems_so2_daily", 0 * h, None, 70.0),
        ("cems_so2_half_hourly_b", 0 * h, None, 70.0),
    }


@pytest.mark.clock
def test_a_stricter_permit_on_the_line_applies_to_the_real_chain(emissions_db: str) -> None:
    # GB 24-hour NOx = mean of the 24 valid hourly averages: 10:00 is (450 + 100) / 2 = 275, 14:00 is 350, the
    # other 22 are 100: (275 + 350 + 22 × 100) / 24 = 2825 / 24 = 117.7 — within GB 18485's 250, above a
    # permit of 110 set on the line in the grammar the compliance report reads (sites.params.emission_limits)
    with psycopg.connect(emissions_db, autocommit=True) as conn:
        conn.execute("""UPDATE sites SET params = '{"emission_limits": {"permit": "EIA 2019-100",
                        "nox": {"gb.24h": 110}}}' WHERE site_id = 'p1-l1'""")
    run(emissions_db, _shipped("cems_nox_gb_24h"), lateness_horizon=timedelta(days=4), write_margin=timedelta(0))
    (alert,) = alerts(emissions_db)
    assert (alert["rule_id"], alert["started_at"], alert["threshold"]) == ("cems_nox_gb_24h", DAY, 110.0)
    assert alert["value"] == pytest.approx(2825 / 24) and alert["annotations"]["permit"] == "EIA 2019-100"
