"""Averages and compliance against a real TimescaleDB: readings are put into ``cems_readings`` with
SQL (as the collector would), the scheduled processor computes the averages, the report judges them.
Every expected number is computed by hand in the test's comments."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.db import one_row
from sanitel.errors import ConfigError
from sanitel.processors import cems_judgement, compliance
from sanitel.processors.cems_averages import local_day_bounds, recompute, run_scheduled

# Local days, and averages judged complete or still in progress against this process's clock.
pytestmark = pytest.mark.clock

TZ = "Asia/Shanghai"
DAY = date(2024, 5, 1)
PLANT, LINE, DEVICE = "lhk", "lhk-l1", "LHK-L1"
DAY_START, DAY_END = local_day_bounds(DAY, TZ)


def local(hh: int, mm: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hh, mm, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


def iso(hh: int, mm: int = 0) -> str:
    return local(hh, mm).astimezone(ZoneInfo(TZ)).isoformat()


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'plant', 'Laohukeng')", (PLANT,))
        c.execute("INSERT INTO sites (site_id, kind, name, parent_id) VALUES (%s, 'line', 'Line 1', %s)", (LINE, PLANT))
        c.execute("INSERT INTO devices (device_id, kind, site_id) VALUES (%s, 'cems', %s)", (DEVICE, LINE))
        yield c


Shape = Callable[[datetime], dict[str, Any] | None]  # minute → column values (None: no reading)


def insert_day(conn: psycopg.Connection, shape: Shape, received_at: datetime = DAY_END,
               start: datetime = DAY_START, n: int = 1440) -> None:
    """Minute rows (CN 2051-like) for one day, received when it ended unless ``received_at`` says otherwise;
    ``shape`` gives each minute's columns."""
    received = received_at
    rows = [(t, vals) for i in range(n) if (vals := shape(t := start + timedelta(minutes=i))) is not None]
    columns = sorted({k for _, v in rows for k in v})
    with conn.cursor().copy(f"COPY cems_readings (device_id, ts, data_kind, received_at, {', '.join(columns)})"
                            " FROM STDIN") as copy:
        for t, vals in rows:
            copy.write_row((DEVICE, t, "minute", received, *[vals.get(c) for c in columns]))


AFTER = DAY_END + timedelta(days=3)  # the day has ended: its judgement is final


def report(conn: psycopg.Connection, line: str | None = None) -> dict[str, Any]:
    """The scheduled processor's averages and the day's judgement (judge_and_store; cems_averages.recompute calls it
    too once wired), then the report."""
    assert run_scheduled(conn) is not None
    cems_judgement.rejudge(conn, DEVICE, DAY_START, DAY_END, now=AFTER)
    return compliance.build_report(conn, PLANT, DAY, line)


def check(rep: dict[str, Any], key: str, pollutant: str = "nox") -> dict[str, Any]:
    [line] = rep["lines"]
    [found] = [c for c in line["checks"] if c["limit_key"] == key and c["pollutant"] == pollutant]
    return found


def daily(rep: dict[str, Any], standard: str, pollutant: str = "nox") -> dict[str, Any]:
    [found] = [d for d in rep["lines"][0]["daily_averages"] if d["standard"] == standard and d["pollutant"] == pollutant]
    return found


def test_raw_readings_exceed_but_normalised_values_comply(conn: psycopg.Connection) -> None:
    # NOx 260 mg/m³ measured at 8 % O2 all day: normalised 260 × 10/13 = 200
    insert_day(conn, lambda t: {"nox_mg_m3": 260.0, "nox_flag": "N", "o2_pct": 8.0, "o2_flag": "N"})
    rep = report(conn)
    gb, eu = daily(rep, "gb"), daily(rep, "eu")
    assert gb["measured_mg_m3"] == pytest.approx(260) and gb["measured_mg_m3"] > check(rep, "gb.24h")["limit_mg_m3"]
    assert eu["measured_mg_m3"] == pytest.approx(260) and eu["measured_mg_m3"] > check(rep, "eu.daily")["limit_mg_m3"]
    assert gb["normalised_mg_m3"] == pytest.approx(200, abs=1e-3)
    # GB 24-h: 200 ≤ 250; EU daily: 200 − 20 % × 200 (the confidence interval) = 160 ≤ 200
    c = check(rep, "gb.24h")
    assert (c["limit_mg_m3"], c["worst"]["value_mg_m3"], c["compliant"]) == (250, pytest.approx(200, abs=1e-3), True)
    c = check(rep, "eu.daily")
    assert (c["confidence_interval_mg_m3"], c["worst"]["value_mg_m3"], c["compliant"]) == (
        40, pytest.approx(160, abs=1e-3), True)
    assert c["worst"]["at"] == iso(0)
    assert check(rep, "eu.half_hour_b")["compliant"] is None  # 97 % of a year: not a daily verdict
    assert check(rep, "eu.half_hour_b")["share_within_limit"] == 1.0
    assert rep["compliant"] == {"gb": True, "eu": True} and rep["lines"][0]["invalid_periods"] == []


def test_normalised_values_exceed_although_raw_readings_do_not(conn: psycopg.Connection) -> None:
    # NOx 180 measured at 15 % O2: normalised 180 × 10/6 = 300; from 10:00 to 11:00 210 → 350.
    insert_day(conn, lambda t: {"nox_mg_m3": 210.0 if local(10) <= t < local(11) else 180.0, "nox_flag": "N",
                                "o2_pct": 15.0, "o2_flag": "N"})
    rep = report(conn)
    assert daily(rep, "gb")["measured_mg_m3"] < 200 < 250  # raw is below every daily limit
    # GB 1-h limit 300: only 10:00–11:00 (350) is above; 300 itself is not an exceedance
    c = check(rep, "gb.1h")
    assert c["exceedances"] == [{"start": iso(10), "end": iso(11), "value_mg_m3": pytest.approx(350, abs=1e-3)}]
    assert (c["worst"]["at"], c["compliant"]) == (iso(10), False)
    # GB 24-h: (23 × 300 + 350) / 24 = 302.083 > 250
    c = check(rep, "gb.24h")
    assert (c["worst"]["value_mg_m3"], c["compliant"]) == (pytest.approx(302.083, abs=1e-3), False)
    # EU daily: validated half-hours 300 − 40 = 260 (46 of them) and 350 − 40 = 310 (2):
    # (46 × 260 + 2 × 310) / 48 = 262.083 > 200
    c = check(rep, "eu.daily")
    assert (c["worst"]["value_mg_m3"], c["compliant"]) == (pytest.approx(262.083, abs=1e-3), False)
    assert daily(rep, "eu")["validated_mg_m3"] == pytest.approx(262.083, abs=1e-3)
    # EU half-hourly A (400): worst validated 310 → complies
    c = check(rep, "eu.half_hour_a")
    assert (c["worst"]["value_mg_m3"], c["worst"]["at"], c["compliant"]) == (pytest.approx(310, abs=1e-3), iso(10), True)
    assert rep["compliant"] == {"gb": False, "eu": False}


def test_day_invalid_because_six_half_hours_were_discarded(conn: psycopg.Connection) -> None:
    # 02:00–05:00 in calibration: 6 discarded half-hours > 5 → no valid EU daily average
    insert_day(conn, lambda t: {"so2_mg_m3": 30.0, "so2_flag": "C" if local(2) <= t < local(5) else "N",
                                "o2_pct": 11.0, "o2_flag": "N"})
    rep = report(conn)
    c = check(rep, "eu.daily", "so2")
    assert c["compliant"] is None and c["n_valid"] == 0
    assert c["note"] == "daily average invalid: 6 sub-periods discarded"
    eu = daily(rep, "eu", "so2")
    assert (eu["valid"], eu["discarded_sub_periods"], eu["validated_mg_m3"]) == (False, 6, None)
    invalid = [p for p in rep["lines"][0]["invalid_periods"] if p["average"] == "30min"]
    assert [p["start"] for p in invalid] == [iso(2), iso(2, 30), iso(3), iso(3, 30), iso(4), iso(4, 30)]
    assert invalid[0]["discarded"] == {"flag_C": 30} and invalid[0]["status"] == "invalid"
    # GB's 24-hour average stands on 21 valid hours (≥ 20): 30 ≤ 80
    assert check(rep, "gb.24h", "so2")["compliant"] is True
    assert rep["compliant"] == {"gb": True, "eu": None}


def co_24h(rep: dict[str, Any]) -> dict[str, Any]:
    return check(rep, "eu.co_24h", "co")


def test_co_ten_minute_and_half_hour_limits_are_one_either_or_check(conn: psycopg.Connection) -> None:
    # CO 20 at 11 % O2, but 160 from 09:00 to 09:10: validated 160 − 10 % × 50 = 155 > 150
    insert_day(conn, lambda t: {"co_mg_m3": 160.0 if local(9) <= t < local(9, 10) else 20.0, "co_flag": "N",
                                "o2_pct": 11.0, "o2_flag": "N"})
    rep = report(conn)
    line = rep["lines"][0]
    assert not [c for c in line["checks"] if c["pollutant"] == "co" and c["limit_key"] in ("eu.10min",
                                                                                          "eu.half_hour_a")]
    c = co_24h(rep)
    assert c["exceedances"] == [{"start": iso(9), "end": iso(9, 10), "value_mg_m3": pytest.approx(155),
                                 "average": "10min"}]
    # 143 / 144 ≥ 95 %: the first alternative holds
    assert c["share_within_limit"] == pytest.approx(143 / 144, abs=1e-4) and c["compliant"] is True
    # the 09:00 half-hour: (10 × 160 + 20 × 20) / 30 = 66.667, validated 61.667 ≤ 100: the second holds too
    assert c["alternatives"]["half_hour"]["worst_mg_m3"] == pytest.approx(61.667, abs=1e-3)
    assert (c["alternatives"]["ten_minute"]["holds"], c["alternatives"]["half_hour"]["holds"]) == (True, True)
    # the CO daily limit is a 97 %-of-days rule: no daily verdict, the day counts toward the year
    daily_co = check(rep, "eu.daily", "co")
    assert (daily_co["compliant"], daily_co["annual_rule"], daily_co["counts_toward_annual"]) == (None, True, True)
    assert "counts toward the 97 %-of-days annual rule" in daily_co["note"]
    assert line["regulatory"]["eu_co_24h_failed"] == 0


def _co_spikes(extra_half_hour: bool) -> Callable[[datetime], dict[str, Any]]:
    """CO 20, with 10 minutes at 160 at the top of each hour 09:00 … 16:00 (8 ten-minute averages validated to
    155 > 150), and with ``extra_half_hour`` 20:00–20:30 at 106 (validated 101: within 150, above 100)."""
    def shape(t: datetime) -> dict[str, Any]:
        spike = local(9) <= t < local(17) and (t - local(9)) % timedelta(hours=1) < timedelta(minutes=10)
        value = 160.0 if spike else 106.0 if extra_half_hour and local(20) <= t < local(20, 30) else 20.0
        return {"co_mg_m3": value, "co_flag": "N", "o2_pct": 11.0, "o2_flag": "N"}
    return shape


def test_co_either_or_fails_only_when_neither_alternative_holds(conn: psycopg.Connection) -> None:
    # 8 of 144 ten-minute averages above 150: 136 / 144 = 94.4 % < 95 % — the first alternative fails. Each spike
    # is a third of its half-hour: (160 + 2 × 20) / 3 = 66.667, validated 61.667 ≤ 100 — the second holds → holds
    insert_day(conn, _co_spikes(extra_half_hour=False))
    c = co_24h(report(conn))
    assert c["share_within_limit"] == pytest.approx(0.9444, abs=1e-4)
    assert (c["alternatives"]["ten_minute"]["holds"], c["alternatives"]["half_hour"]["holds"]) == (False, True)
    assert c["compliant"] is True and c["status"] == "compliant"
    # the same day with one half-hour at 106 (validated 101 > 100): neither holds → fails
    conn.execute("DELETE FROM cems_readings")
    insert_day(conn, _co_spikes(extra_half_hour=True), received_at=DAY_END + timedelta(hours=1))
    rep = report(conn)
    c = co_24h(rep)
    assert c["share_within_limit"] == pytest.approx(0.9444, abs=1e-4)  # 101 ≤ 150: the 10-minute share is the same
    assert c["alternatives"]["half_hour"]["worst_mg_m3"] == pytest.approx(101)
    assert (c["compliant"], c["status"], rep["compliant"]["eu"]) == (False, "exceeded", False)
    assert rep["lines"][0]["regulatory"]["eu_co_24h_failed"] == 1


def test_plant_overrides_limits(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE sites SET params = %s WHERE site_id = %s",
                 (Jsonb({"emission_limits": {"nox_mg_m3": {"daily": 180, "eu.half_hour_a": 150}}}), PLANT))
    insert_day(conn, lambda t: {"nox_mg_m3": 260.0, "nox_flag": "N", "o2_pct": 8.0, "o2_flag": "N"})  # 200
    rep = report(conn)
    c = check(rep, "gb.24h")
    assert (c["limit_mg_m3"], c["limit_source"], c["compliant"]) == (180, PLANT, False)  # 200 > 180
    # EU: the confidence interval follows the plant's daily limit: 20 % × 180 = 36 → 200 − 36 = 164 ≤ 180
    c = check(rep, "eu.daily")
    assert (c["limit_mg_m3"], c["confidence_interval_mg_m3"], c["compliant"]) == (180, 36, True)
    assert c["worst"]["value_mg_m3"] == pytest.approx(164, abs=1e-3)
    c = check(rep, "eu.half_hour_a")
    assert (c["limit_mg_m3"], c["compliant"], len(c["exceedances"])) == (150, False, 48)  # 164 > 150
    assert check(rep, "gb.1h")["limit_source"] == "default"


def test_bad_override_is_a_clear_error(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE sites SET params = %s WHERE site_id = %s",
                 (Jsonb({"emission_limits": {"nox": {"weekly": 1}}}), PLANT))
    insert_day(conn, lambda t: {"nox_mg_m3": 100.0, "o2_pct": 11.0}, n=60)
    with pytest.raises(ConfigError, match="unknown limit 'weekly'"):
        report(conn)


SHENZHEN_PERMIT = "深圳市排污许可证 914403007XXXXXXXXX001V (2024)"


def test_a_stricter_permit_changes_the_limits_and_the_judgement(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE sites SET params = %s WHERE site_id = %s",
                 (Jsonb({"emission_limits": {"permit": SHENZHEN_PERMIT, "nox": {"gb.24h": 120, "eu.daily": 120}}}),
                  PLANT))
    insert_day(conn, lambda t: {"nox_mg_m3": 260.0, "nox_flag": "N", "o2_pct": 8.0, "o2_flag": "N"})  # 200
    rep = report(conn)
    c = check(rep, "gb.24h")
    assert (c["limit_mg_m3"], c["limit_source"], c["permit"], c["compliant"]) == (120, PLANT, SHENZHEN_PERMIT, False)
    # EU: CI = 20 % × 120 = 24 → 200 − 24 = 176 > 120
    c = check(rep, "eu.daily")
    assert (c["limit_mg_m3"], c["confidence_interval_mg_m3"], c["permit"], c["compliant"]) == (
        120, 24, SHENZHEN_PERMIT, False)
    assert c["worst"]["value_mg_m3"] == pytest.approx(176, abs=1e-3)
    assert (check(rep, "gb.1h")["limit_source"], check(rep, "gb.1h")["permit"]) == ("default", None)
    # the daily judgement reads the same limits: one GB 24-hour exceedance under normal operation
    reg = rep["lines"][0]["regulatory"]
    assert reg["daily_average_exceedances"]["count"] == 1
    assert reg["daily_average_exceedances"]["items"] == [
        {"pollutant": "nox", "value_mg_m3": pytest.approx(200, abs=1e-3), "limit_mg_m3": 120, "limit_source": PLANT,
         "permit": SHENZHEN_PERMIT}]
    assert reg["status"] == "violation"
    frame = pd.read_csv(io.StringIO(compliance.report_csv(rep)))
    assert frame[frame.rule.eq("gb.24h") & frame.pollutant.eq("nox")].iloc[0].permit == SHENZHEN_PERMIT


def test_the_old_alert_limits_form_is_not_an_emission_limit(conn: psycopg.Connection) -> None:
    # {"limits": {"cems_nox_daily": 120}} was the alert rules' documented form: it made the report fail (HTTP 500).
    # It is not an emission limit (the one grammar is sites.params.emission_limits): the report ignores it.
    conn.execute("UPDATE sites SET params = %s WHERE site_id = %s",
                 (Jsonb({"limits": {"cems_nox_daily": 120}}), PLANT))
    insert_day(conn, lambda t: {"nox_mg_m3": 260.0, "nox_flag": "N", "o2_pct": 8.0, "o2_flag": "N"})  # 200
    rep = report(conn)
    c = check(rep, "gb.24h")
    assert (c["limit_mg_m3"], c["limit_source"], c["compliant"]) == (250, "default", True)
    assert rep["lines"][0]["regulatory"]["daily_average_exceedances"]["count"] == 0


def _insert_mark(conn: psycopg.Connection, mark: str, start: datetime, end: datetime | None, reason: str) -> None:
    conn.execute("INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source,"
                 " created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, 'api', 'shift lead Wang')",
                 (DEVICE, PLANT, LINE, mark, start, end, reason))


def test_the_regulatory_judgement_beside_the_gb_and_eu_verdicts(conn: psycopg.Connection) -> None:
    # NOx 100 at 11 % O2 all day; the furnace at 852 °C with six dips to 845 °C of 3–4 minutes, inside 5-minute
    # periods at 02:00, 04:00 … 12:00: (4 × 845 + 852) / 5 = 846.4 and (3 × 845 + 2 × 852) / 5 = 847.8 < 850
    dips = {local(h, m) for h, n in ((2, 4), (4, 3), (6, 4), (8, 3), (10, 4), (12, 3)) for m in range(n)}
    insert_day(conn, lambda t: {"nox_mg_m3": 100.0, "nox_flag": "N", "o2_pct": 11.0, "o2_flag": "N",
                                "furnace_temp_c": 845.0 if t in dips else 852.0})
    _insert_mark(conn, "start_up", local(20), local(21, 30), "restart after grate repair")  # 1.5 h, no dip in it
    rep = report(conn)
    assert rep["compliant"]["gb"] is True  # NOx 100 ≤ 250: GB 18485 alone finds nothing wrong
    reg = rep["lines"][0]["regulatory"]
    furnace = reg["furnace_temperature"]
    assert (furnace["below_min"], furnace["violation"], furnace["max_below_per_day"]) == (6, True, 5)
    assert furnace["averages_judged"] == 288 - 18  # 20:00–21:30 = 18 marked five-minute periods, not judged
    assert furnace["five_minute_averages"][24] == {"start": iso(2), "avg_c": pytest.approx(846.4), "marked": False}
    assert (reg["status"], reg["final"], rep["regulatory_status"]) == ("violation", True, {LINE: "violation"})
    [period] = reg["marked_periods"]
    assert {k: period[k] for k in ("mark", "name_zh", "source", "start", "end", "created_by", "reason")} == {
        "mark": "start_up", "name_zh": "启炉", "source": "api", "start": iso(20), "end": iso(21, 30),
        "created_by": "shift lead Wang", "reason": "restart after grate repair"}
    assert reg["marked_hours"] == {"day": 1.5, "year_to_date": 1.5, "cap_per_year": 60, "cap_exceeded": False}
    assert reg["completeness"]["nox"]["complete"] is True and reg["daily_average_exceedances"]["count"] == 0

    frame = pd.read_csv(io.StringIO(compliance.report_csv(rep)))
    cn = frame[frame.standard.eq("cn")].set_index("rule")
    assert cn.loc["cn.judgement", "value"] == "violation"
    assert (int(cn.loc["cn.furnace_5min_below_850", "value"]), cn.loc["cn.furnace_5min_below_850", "compliant"]) == (
        6, False)
    assert float(cn.loc["cn.marked_hours_ytd", "value"]) == 1.5 and "启炉" in cn.loc["cn.marked_period", "note"]
    png = compliance.report_png(rep, compliance.half_hour_series(conn, PLANT, DAY))
    without_furnace = compliance.report_png({**rep, "lines": [{**rep["lines"][0], "regulatory": {}}]},
                                            compliance.half_hour_series(conn, PLANT, DAY))
    assert png.startswith(b"\x89PNG") and len(png) > len(without_furnace)  # the furnace-temperature panel


def test_late_data_recomputes_the_affected_day(conn: psycopg.Connection) -> None:
    first = datetime(2024, 5, 2, tzinfo=UTC)
    gap = (local(12), local(15))  # 6 half-hours the DAU could not deliver in time
    insert_day(conn, lambda t: None if gap[0] <= t < gap[1] else {"hcl_mg_m3": 5.0, "o2_pct": 11.0}, received_at=first)
    rep = report(conn)
    assert daily(rep, "eu", "hcl")["valid"] is False
    assert daily(rep, "eu", "hcl")["discarded"]["periods"] == {"missing": 6}
    # the DAU backfills two of the hours a day later (minute data, received later): 2 missing left → valid
    insert_day(conn, lambda t: {"hcl_mg_m3": 8.0, "o2_pct": 11.0}, received_at=first + timedelta(days=1),
               start=local(12), n=120)
    rep = report(conn)
    eu = daily(rep, "eu", "hcl")
    assert (eu["valid"], eu["discarded_sub_periods"]) == (True, 2)
    # (42 × 5 + 4 × 8) / 46 = 5.261
    assert eu["normalised_mg_m3"] == pytest.approx(242 / 46, abs=1e-3)
    # the watermark is the newest write seen (stored_at), not a receive time: a spool replay keeps its old
    # receive time but is stored when it lands, and is averaged then (issue 17)
    watermark = one_row(conn.execute("SELECT watermark FROM maintenance_watermarks WHERE name = 'cems_averages'"))[0]
    assert watermark == one_row(conn.execute("SELECT max(stored_at) FROM cems_readings"))[0]
    # idempotent: recomputing changes nothing
    before = conn.execute("SELECT count(*), sum(n_valid) FROM cems_averages").fetchone()
    recompute(conn, DEVICE, DAY_START, DAY_END)
    assert conn.execute("SELECT count(*), sum(n_valid) FROM cems_averages").fetchone() == before


def test_renderings_csv_png_cli_and_api(conn: psycopg.Connection, fresh_db: str,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    insert_day(conn, lambda t: {"nox_mg_m3": 180.0 if local(10) <= t < local(11) else 150.0, "nox_flag": "N",
                                "so2_mg_m3": 20.0, "o2_pct": 15.0, "o2_flag": "N"})
    rep = report(conn)
    frame = pd.read_csv(io.StringIO(compliance.report_csv(rep)))
    assert list(frame.columns) == list(compliance.CSV_COLUMNS)
    assert len(frame[frame.standard.ne("cn")]) == len(rep["lines"][0]["checks"])
    # the regulatory rows: the day's judgement, 5 rules, completeness of NOx and SO2 (no marked period)
    assert list(frame[frame.standard.eq("cn")].rule) == [
        "cn.judgement", "cn.gb_daily_exceedances", "cn.furnace_5min_below_850", "cn.marked_hours_ytd",
        "cn.marks_over_limit", "cn.marked_dust_1h_max", "cn.completeness", "cn.completeness"]
    row = frame[frame.average.eq("1h") & frame.pollutant.eq("nox")].iloc[0]
    assert row.n_exceedances == 0 and row.worst_at == iso(10)  # 180 × 10/6 = 300: not above 300
    png = compliance.report_png(rep, compliance.half_hour_series(conn, PLANT, DAY))
    assert png.startswith(b"\x89PNG") and len(png) > 5000

    # the CLI
    from sanitel.cli import main

    monkeypatch.setenv("SANITEL_DATABASE_URL", fresh_db)
    monkeypatch.setenv("SANITEL_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    assert main(["report", "emissions", "--plant", PLANT, "--day", "2024-05-01"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["line_id"] == LINE
    out = tmp_path / "day.png"
    assert main(["report", "emissions", "--plant", PLANT, "--line", LINE, "--day", "2024-05-01",
                 "--format", "png", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["report", "emissions", "--plant", "nowhere", "--day", "2024-05-01"]) == 2
    assert "no CEMS averages" in capsys.readouterr().err
    # the scheduled processor computes CEMS averages too; keep this 2024 test data out of retention's reach
    monkeypatch.setenv("SANITEL_RAW_RETENTION_DAYS", "36500")
    assert main(["maintain", "--once"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] is True
    assert main(["report", "recompute", "--device", DEVICE, "--from", "2024-05-01"]) == 0
    # NOx and SO2, no CO (no 10-minute averages): 2 × (48 half-hours + 24 hours + 2 daily) = 148
    assert capsys.readouterr().out.startswith("148 averages written for LHK-L1")
    assert main(["report", "emissions", "--plant", PLANT, "--day", "2024-05-01", "--format", "csv", "--recompute"]) == 0
    assert capsys.readouterr().out.startswith("plant_id,day,line_id")

    # the API: the app's pool and auth, the report code in a worker thread
    from fastapi.testclient import TestClient

    from sanitel.api.app import create_app
    from sanitel.servers import free_port
    from tests.support.api_helpers import api_settings, auth, mint_key

    viewer = auth(mint_key(fresh_db, "viewer"))
    # the alert rules' old override form is not an emission limit: the report ignores it (it used to be HTTP 500)
    conn.execute("UPDATE sites SET params = %s WHERE site_id = %s", (Jsonb({"limits": {"cems_nox_daily": 120}}), PLANT))
    # only the app's settings name the database: a route reading the environment would fail
    monkeypatch.setenv("SANITEL_DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere")
    with TestClient(create_app(api_settings(fresh_db, tmp_path / "api")), headers=viewer) as client:
        assert client.get(f"/plants/{PLANT}/compliance", params={"day": "2024-05-01"},
                          headers={"Authorization": ""}).status_code == 401
        r = client.get(f"/plants/{PLANT}/compliance", params={"day": "2024-05-01"})
        # GB 24-h: 150 × 10/6 = 250 for 23 hours, 300 for one: 252.083 > 250
        assert r.status_code == 200 and r.json()["compliant"]["gb"] is False
        assert client.get(f"/plants/{PLANT}/compliance", params={"day": "2024-05-01", "format": "csv"}
                          ).headers["content-type"].startswith("text/csv")
        r = client.get(f"/plants/{PLANT}/compliance", params={"day": "2024-05-01", "format": "png", "line": LINE})
        assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
        r = client.get("/plants/nowhere/compliance", params={"day": "2024-05-01"})
        assert r.status_code == 404 and "nowhere" in r.json()["error"]["message"]
        assert client.get(f"/plants/{PLANT}/compliance", params={"day": "May 1"}).status_code == 422
        r = client.get(f"/plants/{PLANT}/averages", params={"day": "2024-05-01", "period": "1d", "pollutant": "nox"})
        assert {(i["standard"], i["status"]) for i in r.json()["items"]} == {("eu", "valid"), ("gb", "valid")}


def test_migration_is_safe_to_run_twice(conn: psycopg.Connection) -> None:
    from sanitel.db import load_migrations

    [migration] = [m for m in load_migrations() if m.version == "0020"]
    conn.execute(migration.sql)  # already applied by the fixture: a second run must be a no-op
    conn.execute(migration.sql)
    assert conn.execute("SELECT count(*) FROM timescaledb_information.hypertables"
                        " WHERE hypertable_name = 'cems_averages'").fetchone() == (1,)
    assert recompute(conn, DEVICE, DAY_START, DAY_START) == 0  # an empty range is nothing to do
