"""The daily regulatory judgement (processors/cems_judgement.py), each rule against a day built by hand with its
arithmetic written beside it (pure: no database)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sanitel.emission_limits import limit_set
from sanitel.processors.cems_averages import Average
from sanitel.processors.cems_judgement import Judgement, judge_day
from sanitel.processors.cems_marks import Mark
from sanitel.processors.compliance import line_report

TZ = "Asia/Shanghai"
DAY = date(2026, 3, 10)
NEXT = DAY + timedelta(days=1)
AFTER = datetime(2026, 4, 1, tzinfo=UTC)  # both days have ended
H = timedelta(hours=1)


def at(hh: int, mm: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


def minute_rows(value: Callable[[int], dict[str, Any]], day: date = DAY, kind: str = "minute"
                ) -> list[dict[str, Any]]:
    """One row a minute of the local day; ``value(minute of day)`` gives its columns."""
    return [{"ts": at(0, 0, day) + timedelta(minutes=m), "data_kind": kind, **value(m)} for m in range(1440)]


def furnace(dips: Iterable[tuple[int, int]], base: float = 852.0, low: float = 845.0) -> list[dict[str, Any]]:
    """852 °C all day but the given (first minute of day, length in minutes) dips at 845 °C."""
    cold = {m for start, n in dips for m in range(start, start + n)}
    return minute_rows(lambda m: {"furnace_temp_c": low if m in cold else base})


def hours_of(pollutant: str, statuses: list[str], value: float = 100.0, day: date = DAY) -> list[Average]:
    """GB hourly averages of the day with the given statuses, then its GB 24-hour average of the valid ones."""
    start = at(0, 0, day)
    out = [Average(pollutant, "1h", "gb", start + i * H, start + (i + 1) * H,
                   value if s == "valid" else None, value if s == "valid" else None, 60 if s == "valid" else 0, 0, {},
                   3600.0 if s == "valid" else 0.0, s) for i, s in enumerate(statuses)]
    n_valid = statuses.count("valid")
    out.append(Average(pollutant, "1d", "gb", start, start + 24 * H, value if n_valid else None,
                       value if n_valid else None, n_valid, 24 - n_valid, {}, None,
                       "valid" if n_valid >= 20 else "invalid"))
    return out


COMPLETE = hours_of("nox", ["valid"] * 24)  # 24 valid hours of NOx at 100 ≤ 250


def mark(kind: str, start: datetime, end: datetime | None, **kw: Any) -> Mark:
    return Mark(kind, start, end, kw.pop("source", "api"), kw.pop("mark_id", 1), kw.pop("reason", "test"),
                kw.pop("created_by", "operator"))


def judge(readings: list[dict[str, Any]], averages: list[Average] = COMPLETE, marks: list[Mark] | None = None,
          now: datetime = AFTER, day: date = DAY, **kw: Any) -> Judgement:
    return judge_day(day, TZ, readings, averages, marks or [], kw.pop("limits", limit_set()), now, **kw)


# --- furnace temperature (Order No. 10: 5-minute averages below 850 °C, > 5 in a natural day) ---------------------

SIX_DIPS = [(120, 4), (240, 3), (360, 4), (480, 3), (600, 4), (720, 3)]  # at 02:00, 04:00, … 12:00, inside a bucket


def test_six_short_dips_below_850_are_a_violation() -> None:
    # each dip stays inside one 5-minute period: 4 minutes at 845 and 1 at 852 → (4 × 845 + 852) / 5 = 846.4 < 850;
    # 3 minutes → (3 × 845 + 2 × 852) / 5 = 847.8 < 850. None is 5 continuous minutes below 850 (the old alert rule).
    j = judge(furnace(SIX_DIPS))
    assert (j.furnace_5min_valid, j.furnace_5min_below_850) == (288, 6)  # 24 h × 12 five-minute periods
    assert j.status == "violation" and j.final
    assert "6 five-minute furnace averages below 850 °C" in j.details["reasons"][0]
    start, avg, marked = j.furnace_5min[24]  # 02:00 local
    assert (start, avg, marked) == ("2026-03-10T02:00:00+08:00", pytest.approx(846.4), False)
    assert j.furnace_5min[48][1] == pytest.approx(847.8)  # 04:00


def test_five_dips_are_compliant() -> None:
    j = judge(furnace(SIX_DIPS[:5]))
    assert (j.furnace_5min_below_850, j.status) == (5, "compliant")  # 5 is not more than 5
    assert j.details["reasons"] == [] and j.details["gaps"] == []


def test_a_dip_across_a_boundary_lowers_two_averages() -> None:
    # 02:03–02:06 at 845: 02:00 → (2 × 845 + 3 × 852) / 5 = 849.2; 02:05 → (2 × 845 + 3 × 852) / 5 = 849.2
    j = judge(furnace([(123, 4)]))
    assert j.furnace_5min_below_850 == 2
    assert [p[1] for p in j.furnace_5min[24:26]] == [pytest.approx(849.2), pytest.approx(849.2)]


def test_dips_during_a_furnace_mark_are_not_judged() -> None:
    # a start-up mark 01:30–04:30 covers the dips at 02:00 and 04:00: 6 − 2 = 4 below; 36 periods marked
    j = judge(furnace(SIX_DIPS), marks=[mark("start_up", at(1, 30), at(4, 30))])
    assert (j.furnace_5min_below_850, j.furnace_5min_valid) == (4, 288 - 36)
    assert j.furnace_5min[18][2] is True and j.furnace_5min[17][2] is False  # 01:30 marked, 01:25 not


def test_a_five_minute_average_needs_one_reading_and_real_time_rows_win() -> None:
    rows = [r for r in furnace([]) if not at(3) <= r["ts"] < at(3, 5)]  # no reading 03:00–03:05
    # 03:10–03:15: real-time rows at 840 every 30 s beside the minute rows at 852 → only the real-time rows count
    rows += [{"ts": at(3, 10) + timedelta(seconds=30 * i), "data_kind": "rtd", "furnace_temp_c": 840.0}
             for i in range(10)]
    # 03:20–03:22: real-time rows at 840 for 2 minutes; the minute rows of 03:22, 03:23, 03:24 (852) fill the rest:
    # time-weighted (2 min × 840 + 3 min × 852) / 5 min = 847.2 < 850
    rows += [{"ts": at(3, 20) + timedelta(seconds=30 * i), "data_kind": "rtd", "furnace_temp_c": 840.0}
             for i in range(4)]
    j = judge(rows)
    assert j.furnace_5min[36][1] is None and j.furnace_5min_valid == 287
    assert j.furnace_5min[38][1] == pytest.approx(840.0)
    assert j.furnace_5min[40][1] == pytest.approx(847.2) and j.furnace_5min_below_850 == 2


def test_while_the_day_runs_only_a_count_that_can_only_grow_decides() -> None:
    noon = at(12, 30)  # the dips at 02:00 … 12:00 have happened, and their 5-minute periods have ended
    assert judge(furnace(SIX_DIPS), now=noon).status == "violation"
    j = judge(furnace(SIX_DIPS[:5]), now=noon)
    assert (j.status, j.final, j.furnace_5min_below_850, len(j.furnace_5min)) == ("in_progress", False, 5, 150)
    # 12:30 = 150 five-minute periods ended; the one running (12:30–12:35) is not judged yet


def test_no_furnace_temperature_while_the_line_ran_is_not_determinable() -> None:
    j = judge(minute_rows(lambda m: {"nox_mg_m3": 100.0}))
    assert j.status == "not_determinable" and j.furnace_5min_valid == 0
    assert "no furnace temperature" in j.details["gaps"][0]


# --- marked hours, marks over their limit, dust during marks ---------------------------------------------------------

def test_marked_hours_count_overlapping_marks_once_and_the_yearly_cap() -> None:
    marks = [mark("start_up", at(6), at(9, 30)), mark("fault", at(9), at(10)),
             mark("cms_calibration", at(11), at(12))]  # a monitoring-system mark is no exempted furnace mark
    # union of 06:00–09:30 and 09:00–10:00 = 06:00–10:00 = 4 h
    j = judge(furnace([]), marks=marks, ytd_before=50.0)
    assert (j.marked_hours, j.marked_hours_ytd, j.status) == (4.0, 54.0, "compliant")
    names = [(m["mark"], m["name_zh"], m["hours_this_day"], m["exempted"]) for m in j.details["marks"]]
    assert names == [("start_up", "启炉", 3.5, True), ("fault", "故障", 1.0, True),
                     ("cms_calibration", "校准", 1.0, False)]
    # 57 h before + 4 h = 61 h > 60: this day's marked hours are not exempt
    j = judge(furnace([]), marks=marks, ytd_before=57.0)
    assert (j.marked_hours_ytd, j.status, j.details["marked_hours_cap_exceeded"]) == (61.0, "violation", True)
    assert j.details["status_without_cap"] == "compliant"


def test_a_fault_longer_than_four_hours_counts_on_the_day_it_passes_the_limit() -> None:
    fault = mark("fault", at(22), at(3, 0, NEXT))  # 5 h: passes 4 h at 02:00 the next day
    first, second = judge(furnace([]), marks=[fault]), judge(furnace([], ), marks=[fault], day=NEXT,
                                                             averages=hours_of("nox", ["valid"] * 24, day=NEXT))
    assert (first.marks_over_limit, first.marked_hours) == (0, 2.0)
    assert second.marks_over_limit == 1  # furnace rows are DAY's: NEXT has no furnace data while it ran
    assert second.marked_hours == 3.0 and second.status == "violation"
    # an open accident mark since 08:00, judged at 12:30: 4.5 h > 4 h already — a violation while the day runs
    j = judge(furnace([]), marks=[mark("accident", at(8), None)], now=at(12, 30))
    assert (j.marks_over_limit, j.marked_hours, j.status) == (1, 4.5, "violation")


def test_dust_above_150_during_a_mark_voids_the_exemption() -> None:
    # dust at 11 % O2 dry (normalised = measured): 160 in 06:00–07:00, 100 in 07:00–08:00, under a start-up mark;
    # 400 at 09:00 (not marked: the GB/EU averages judge that hour). Hourly means of the marked hours: 160, 100.
    rows = minute_rows(lambda m: {"furnace_temp_c": 900.0, "o2_pct": 11.0, "o2_flag": "N", "gas_is_dry": True,
                                  "dust_mg_m3": 160.0 if 360 <= m < 420 else 400.0 if 540 <= m < 600 else 100.0,
                                  "dust_flag": "N"})
    j = judge(rows, marks=[mark("start_up", at(6), at(8))])
    assert j.marked_dust_1h_max == pytest.approx(160.0) and j.status == "violation"
    assert j.details["marked_dust_hours"] == [["2026-03-10T06:00:00+08:00", 160.0],
                                              ["2026-03-10T07:00:00+08:00", 100.0]]
    # flagged readings do not count (calibration, C): the 06:00 hour keeps only its first 30 minutes at 160 …
    rows = [{**r, "dust_flag": "C"} if at(6, 30) <= r["ts"] < at(7) else r for r in rows]
    assert judge(rows, marks=[mark("start_up", at(6), at(8))]).marked_dust_1h_max == pytest.approx(160.0)
    # … and at 140 the cap holds
    rows = [{**r, "dust_mg_m3": 140.0} if at(6) <= r["ts"] < at(7) else r for r in rows]
    assert judge(rows, marks=[mark("start_up", at(6), at(8))]).status == "compliant"


# --- GB daily exceedances under normal operation, completeness ---------------------------------------------------

def test_gb_daily_exceedance_against_the_lines_limit() -> None:
    nox = hours_of("nox", ["valid"] * 24, value=200.0)
    assert judge(furnace([]), nox).gb_exceedances == 0  # 200 ≤ 250 (GB 18485 default)
    permit = limit_set([("p1", {"emission_limits": {"permit": "深圳市排污许可证 XX", "nox": {"gb.24h": 120}}})])
    j = judge(furnace([]), nox, limits=permit)
    assert (j.gb_exceedances, j.status) == (1, "violation")  # 200 > 120
    assert j.details["gb_exceedances"] == [{"pollutant": "nox", "value_mg_m3": 200.0, "limit_mg_m3": 120.0,
                                            "limit_source": "p1", "permit": "深圳市排污许可证 XX"}]


def test_completeness_needs_twenty_hours_and_marked_hours_are_not_missing() -> None:
    # 18 valid + 4 marked + 2 missing: 18 + 4 = 22 ≥ 20 → complete
    j = judge(furnace([]), hours_of("so2", ["valid"] * 18 + ["marked"] * 4 + ["missing"] * 2))
    assert j.details["completeness"]["so2"]["complete"] is True and j.status == "compliant"
    # 18 valid + 6 missing: 18 < 20 → not determinable
    j = judge(furnace([]), hours_of("so2", ["valid"] * 18 + ["missing"] * 6))
    assert j.status == "not_determinable"
    assert j.details["gaps"] == ["so2: 18 valid hours (+0 out of operation) of 20 needed"]
    assert judge(furnace([]), []).details["gaps"] == ["no emission averages this day"]


def test_bad_limit_overrides_never_judge_compliant() -> None:
    j = judge(furnace([]), limits_error="unknown limit 'weekly'")
    assert j.status == "not_determinable" and "unknown limit 'weekly'" in j.details["gaps"][0]


# --- the report's view: marked periods are 'marked', not invalid ---------------------------------------------------

def test_marked_periods_are_marked_in_the_report_not_invalid() -> None:
    rows: list[dict[str, Any]] = [{"device_id": "c-1", "line_id": "l-1", "pollutant": "nox", "period": "1h",
                                   "standard": "gb",
             "period_start": at(h), "period_end": at(h) + H, "avg_zs_mg_m3": None if h < 3 else 100.0,
             "avg_meas_mg_m3": None, "n_valid": 0, "n_discarded": 0, "discarded": {},
             "status": "marked" if h < 3 else "valid", "valid": h >= 3} for h in range(24)]
    report = line_report("l-1", "c-1", rows, limit_set(), TZ)
    assert [p["status"] for p in report["invalid_periods"]] == ["marked"] * 3
    assert report["regulatory"]["status"] == "not_judged"
