"""Averaging periods and validity rules, each against values computed by hand (pure: no database)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sanitel.processors.cems_averages import Average, AveragingRules, compute_averages, local_day_bounds

TZ = "Asia/Shanghai"
DAY = date(2024, 5, 1)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def at(hh: int, mm: int, ss: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


def row(ts: datetime, kind: str = "minute", o2: float | None = 11.0, o2_flag: str | None = "N",
        **values: Any) -> dict[str, Any]:
    return {"ts": ts, "data_kind": kind, "gas_is_dry": True, "o2_pct": o2, "o2_flag": o2_flag, "h2o_pct": None,
            **values}


def minutes(start: datetime, n: int, step: timedelta = timedelta(minutes=1)) -> list[datetime]:
    return [start + i * step for i in range(n)]


def pick(avgs: Iterable[Average], pollutant: str, period: str, start: datetime, standard: str | None = None
         ) -> Average:
    found = [a for a in avgs if a.pollutant == pollutant and a.period == period and a.start == start
             and (standard is None or a.standard == standard)]
    assert len(found) == 1, found
    return found[0]


def compute(rows: list[dict[str, Any]], now: datetime = NOW, **rules: Any) -> list[Average]:
    return compute_averages(rows, [DAY], TZ, AveragingRules(**rules), now)


def test_half_hour_average_of_normalised_values_by_hand() -> None:
    # 20 minutes of 100 mg/m³ and 10 of 130, all at 8 % O2:
    # (20 × 100 + 10 × 130) / 30 × (21 − 11) / (21 − 8) = 110 × 10/13 = 84.615
    ts = minutes(at(8, 0), 30)
    rows = [row(t, o2=8.0, nox_mg_m3=100.0 if i < 20 else 130.0, nox_flag="N") for i, t in enumerate(ts)]
    hh = pick(compute(rows), "nox", "30min", at(8, 0))
    assert hh.avg_zs == pytest.approx(84.615, abs=1e-3)
    assert hh.avg_meas == pytest.approx(110.0)
    assert (hh.n_valid, hh.n_discarded, hh.covered_s, hh.status) == (30, 0, 1800, "valid")
    assert hh.end - hh.start == timedelta(minutes=30)


def test_half_hour_needs_two_thirds_valid_minutes() -> None:
    ts = minutes(at(8, 0), 30)
    # 20 normal + 10 in calibration: exactly 2/3 → valid; mean of the 20 valid ones only
    rows = [row(t, nox_mg_m3=50.0 if i < 20 else 400.0, nox_flag="N" if i < 20 else "C") for i, t in enumerate(ts)]
    hh = pick(compute(rows), "nox", "30min", at(8, 0))
    assert (hh.status, hh.avg_zs, hh.n_valid, hh.discarded) == ("valid", 50.0, 20, {"flag_C": 10})
    # 19 normal + 11 in maintenance → invalid, and the discards say why
    rows = [row(t, nox_mg_m3=50.0, nox_flag="N" if i < 19 else "M") for i, t in enumerate(ts)]
    hh = pick(compute(rows), "nox", "30min", at(8, 0))
    assert (hh.status, hh.valid, hh.n_valid, hh.n_discarded, hh.discarded) == ("invalid", False, 19, 11, {"flag_M": 11})


def test_ten_minute_co_by_hand() -> None:
    ts = minutes(at(9, 0), 10)
    rows = [row(t, co_mg_m3=float(i + 1), co_flag="N") for i, t in enumerate(ts)]  # 1 … 10 at 11 % O2
    ten = pick(compute(rows), "co", "10min", at(9, 0))
    assert (ten.avg_zs, ten.status, ten.standard) == (5.5, "valid", "eu")
    # 3 of 10 in maintenance: 7 valid minutes ≥ 2/3 → valid, mean of 4 … 10 = 7
    rows = [row(t, co_mg_m3=float(i + 1), co_flag="M" if i < 3 else "N") for i, t in enumerate(ts)]
    assert pick(compute(rows), "co", "10min", at(9, 0)).avg_zs == 7.0
    # 4 in maintenance: 6 valid → invalid
    rows = [row(t, co_mg_m3=float(i + 1), co_flag="M" if i < 4 else "N") for i, t in enumerate(ts)]
    assert pick(compute(rows), "co", "10min", at(9, 0)).status == "invalid"
    # the 10-minute average exists for CO only
    assert not [a for a in compute([row(t, nox_mg_m3=1.0) for t in ts]) if a.period == "10min"]


def test_hour_needs_45_valid_minutes() -> None:
    rows = [row(t, so2_mg_m3=40.0, so2_flag="N") for t in minutes(at(10, 0), 45)]
    hour = pick(compute(rows), "so2", "1h", at(10, 0))
    assert (hour.status, hour.avg_zs, hour.standard, hour.covered_s) == ("valid", 40.0, "gb", 2700)
    rows = [row(t, so2_mg_m3=40.0, so2_flag="N") for t in minutes(at(10, 0), 44)]
    assert pick(compute(rows), "so2", "1h", at(10, 0)).status == "invalid"  # the silent 16 minutes count against it


def test_analyser_normalised_value_is_preferred() -> None:
    rows = [row(t, o2=8.0, dust_mg_m3=13.0, dust_zs_mg_m3=7.0, dust_flag="N") for t in minutes(at(8, 0), 30)]
    assert pick(compute(rows), "dust", "30min", at(8, 0)).avg_zs == 7.0  # not 13 × 10/13 = 10


def test_wet_gas_readings_are_dried() -> None:
    # 60 wet at 6.4 % O2 wet with 20 % H2O → 75 dry at 8 % → 57.692
    rows = [row(t, o2=6.4, hcl_mg_m3=60.0) | {"gas_is_dry": False, "h2o_pct": 20.0} for t in minutes(at(8, 0), 30)]
    assert pick(compute(rows), "hcl", "30min", at(8, 0)).avg_zs == pytest.approx(57.692, abs=1e-3)


def test_o2_guard_periods_are_not_operating_not_exceedances() -> None:
    rows = [row(t, o2=20.6, so2_mg_m3=5.0, so2_flag="N") for t in minutes(at(3, 0), 30)]  # ×24 would be 120
    hh = pick(compute(rows), "so2", "30min", at(3, 0))
    assert (hh.status, hh.avg_zs, hh.discarded) == ("not_operating", None, {"o2_guard": 30})


def test_o2_problems_discard_the_reading() -> None:
    ts = minutes(at(8, 0), 30)
    rows = [row(t, o2=None, nox_mg_m3=50.0) for t in ts[:10]] + \
           [row(t, o2=8.0, o2_flag="C", nox_mg_m3=50.0) for t in ts[10:20]] + \
           [row(t, nox_mg_m3=50.0, nox_flag="T") for t in ts[20:]]
    hh = pick(compute(rows), "nox", "30min", at(8, 0))
    # flag T (over range) is no longer a discard (issue 13): it counts as a valid lower bound, reported apart.
    # 10 valid minutes cover 600 s < 2/3 × 1800 s → invalid; n_discarded counts the 20 true discards only
    assert hh.discarded == {"no_o2": 10, "o2_flag_C": 10, "over_range": 10} and hh.status == "invalid"
    assert (hh.n_valid, hh.n_discarded) == (10, 20)


def test_manual_values_count_only_where_allowed() -> None:
    rows = [row(t, nox_mg_m3=80.0, nox_flag="S") for t in minutes(at(8, 0), 30)]
    assert pick(compute(rows), "nox", "30min", at(8, 0)).status == "invalid"
    allowed = compute(rows, counted_flags=frozenset({"N", "S"}))
    assert pick(allowed, "nox", "30min", at(8, 0)).avg_zs == 80.0


def test_real_time_rows_win_over_minute_rows_and_minute_rows_fill_the_rest() -> None:
    rtd = [row(t, "rtd", nox_mg_m3=60.0) for t in minutes(at(8, 0), 40, timedelta(seconds=30))]  # 08:00–08:20
    minute = [row(t, "minute", nox_mg_m3=999.0) for t in minutes(at(8, 0), 30)]
    hh = pick(compute(rtd + minute), "nox", "30min", at(8, 0))
    # 08:00–08:20 has real-time rows: those 20 minute rows are dropped (never both for one time). 08:20–08:30
    # has none (issue 13: it used to stay uncovered): its 10 minute rows fill it, each covering its own 60 s.
    # covered 40 × 30 s + 10 × 60 s = 1800 s; time-weighted mean (1200 × 60 + 600 × 999) / 1800 = 373
    assert hh.avg_zs == pytest.approx(373.0) and (hh.n_valid, hh.covered_s, hh.status) == (50, 1800, "valid")
    # without the fill the real-time rows alone set the interval: 40 × 30 s = 1200 s = 2/3 → still valid
    hh = pick(compute(rtd), "nox", "30min", at(8, 0))
    assert (hh.avg_zs, hh.n_valid, hh.covered_s, hh.status) == (60.0, 40, 1200, "valid")


def _day(value: float, o2: float, bad_half_hours: Iterable[int] = (), flag: str = "C",
         missing_half_hours: Iterable[int] = ()) -> list[dict[str, Any]]:
    """A full local day of minute rows of NOx; the given half-hours (0 … 47) flagged or absent."""
    bad, missing = set(bad_half_hours), set(missing_half_hours)
    day_start, _ = local_day_bounds(DAY, TZ)
    rows = []
    for t in minutes(day_start, 1440):
        hh = int((t - day_start).total_seconds() // 1800)
        if hh not in missing:
            rows.append(row(t, o2=o2, nox_mg_m3=value, nox_flag=flag if hh in bad else "N"))
    return rows


@pytest.mark.clock
def test_eu_day_invalid_with_more_than_five_discarded_half_hours() -> None:
    day_start, day_end = local_day_bounds(DAY, TZ)
    # six half-hours in calibration (in three whole hours: 02:00–05:00) → EU daily invalid …
    avgs = compute(_day(120.0, 11.0, bad_half_hours=range(4, 10)))
    eu = pick(avgs, "nox", "1d", day_start, "eu")
    assert (eu.status, eu.valid, eu.n_valid, eu.n_discarded) == ("invalid", False, 42, 6)
    assert eu.discarded["periods"] == {"invalid": 6} and eu.discarded["readings"] == {"flag_C": 180}
    assert eu.discarded["cms_discarded"] == 6  # calibration: the measuring system's (Annex VI Part 8)
    assert eu.avg_zs == 120.0 and eu.end == day_end  # the value is kept, marked invalid
    # … while GB's 24-hour average (21 valid hours ≥ 20) is valid
    gb = pick(avgs, "nox", "1d", day_start, "gb")
    assert (gb.status, gb.n_valid, gb.n_discarded, gb.avg_zs) == ("valid", 21, 3, 120.0)
    # five discarded half-hours are still a valid EU day; missing half-hours count as discarded too
    assert pick(compute(_day(120.0, 11.0, bad_half_hours=range(4, 9))), "nox", "1d", day_start, "eu").valid
    eu = pick(compute(_day(120.0, 11.0, bad_half_hours=range(4, 7), missing_half_hours=range(20, 23))),
              "nox", "1d", day_start, "eu")
    # (missing with the line not marked: the data unit failed — counted, module docstring)
    assert (eu.valid, eu.discarded["periods"], eu.n_discarded) == (False, {"invalid": 3, "missing": 3}, 6)


@pytest.mark.clock
def test_daily_average_is_the_mean_of_valid_half_hours_and_hours() -> None:
    day_start, _ = local_day_bounds(DAY, TZ)
    rows = _day(100.0, 11.0)
    for r in rows:  # the first 4 hours at 200: EU day = (8 × 200 + 40 × 100) / 48 = 116.667
        if r["ts"] < at(4, 0):
            r["nox_mg_m3"] = 200.0
    avgs = compute(rows)
    assert pick(avgs, "nox", "1d", day_start, "eu").avg_zs == pytest.approx(116.667, abs=1e-3)
    assert pick(avgs, "nox", "1d", day_start, "gb").avg_zs == pytest.approx(116.667, abs=1e-3)
    assert len([a for a in avgs if a.period == "30min"]) == 48 and len([a for a in avgs if a.period == "1h"]) == 24


@pytest.mark.clock
def test_gb_day_needs_twenty_valid_hours() -> None:
    day_start, _ = local_day_bounds(DAY, TZ)
    gb = pick(compute(_day(80.0, 11.0, missing_half_hours=range(0, 10))), "nox", "1d", day_start, "gb")
    assert (gb.status, gb.n_valid) == ("invalid", 19)


@pytest.mark.clock
def test_day_in_progress() -> None:
    day_start, _ = local_day_bounds(DAY, TZ)
    rows = [r for r in _day(80.0, 11.0) if r["ts"] < at(12, 10)]
    avgs = compute(rows, now=at(12, 10))
    assert pick(avgs, "nox", "1d", day_start, "eu").status == "in_progress"
    assert pick(avgs, "nox", "30min", at(12, 0)).status == "in_progress"
    assert not [a for a in avgs if a.period == "30min" and a.start > at(12, 0)]  # the future is not "missing"
