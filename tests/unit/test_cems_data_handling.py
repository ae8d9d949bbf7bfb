"""Issue 13, data handling in the CEMS averages (processors/cems_averages.py), each rule against values computed
by hand (pure: no database): operating-state marks, the EU rule that counts only half-hours discarded for the
measuring system, no verdict on a day not over, minute data filling real-time holes, analyser-normalised
values while O2 is not valid, moisture flags, flag T as a lower bound; and properties: evaluating a reading or
a day never raises."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.processors.cems_averages import (
    Average,
    AveragingRules,
    at_least_range,
    compute_averages,
    compute_day,
    evaluate,
    furnace_spans,
    local_day_bounds,
    parse_analyser_ranges,
    spans_seconds,
)
from sanitel.processors.cems_marks import MARKS, Mark

TZ = "Asia/Shanghai"
DAY = date(2024, 5, 1)
NOW = datetime(2024, 6, 1, tzinfo=UTC)  # the day is long over
DAY_START, DAY_END = local_day_bounds(DAY, TZ)
MINUTE = timedelta(minutes=1)


def at(hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hh, mm, ss, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


def row(ts: datetime, kind: str = "minute", o2: float | None = 11.0, o2_flag: str | None = "N",
        **values: Any) -> dict[str, Any]:
    return {"ts": ts, "data_kind": kind, "gas_is_dry": True, "o2_pct": o2, "o2_flag": o2_flag, "h2o_pct": None,
            "h2o_flag": None, **values}


def day_rows(values: Callable[[datetime], dict[str, Any] | None], step: timedelta = MINUTE,
             kind: str = "minute", end: datetime = DAY_END) -> list[dict[str, Any]]:
    """One row per ``step`` from local midnight to ``end``; ``values`` gives a time's columns (None: no row)."""
    out, t = [], DAY_START
    while t < end:
        if (v := values(t)) is not None:
            out.append(row(t, kind, **v))
        t += step
    return out


def nox(value: float = 100.0, flag: str = "N", **more: Any) -> dict[str, Any]:
    return {"nox_mg_m3": value, "nox_flag": flag, **more}


def mark(name: str, start: datetime, end: datetime | None) -> Mark:
    return Mark(name, start, end, "api", 1, "test", "tester")


def compute(rows: list[dict[str, Any]], marks: Sequence[Mark] = (), now: datetime = NOW, **rules: Any
            ) -> list[Average]:
    return compute_averages(rows, [DAY], TZ, AveragingRules(**rules), now, marks=marks)


def pick(avgs: Iterable[Average], period: str, start: datetime, standard: str | None = None,
         pollutant: str = "nox") -> Average:
    found = [a for a in avgs if a.pollutant == pollutant and a.period == period and a.start == start
             and (standard is None or a.standard == standard)]
    assert len(found) == 1, found
    return found[0]


def half_hours(first: datetime, n: int) -> list[datetime]:
    return [first + i * timedelta(minutes=30) for i in range(n)]


def between(t: datetime, start: datetime, end: datetime) -> bool:
    return start <= t < end


# --- 1. marks exclude periods ------------------------------------------------------------------------

def test_start_up_mark_half_hours_are_marked_and_the_day_stays_valid() -> None:
    # NOx 100 all day at 11 % O2, but 300 during a start-up from 06:00 to 08:00 (marked)
    rows = day_rows(lambda t: nox(300.0 if between(t, at(6), at(8)) else 100.0))
    avgs = compute(rows, [mark("start_up", at(6), at(8))])
    for start in half_hours(at(6), 4):
        hh = pick(avgs, "30min", start)
        assert (hh.status, hh.n_valid, hh.n_discarded, hh.discarded) == ("marked", 0, 30, {"marked_start_up": 30})
        assert not hh.cms_discarded
    # EU day: the 44 other half-hours, all 100; the 4 marked ones are not discarded for the measuring system
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.n_valid, eu.n_discarded, eu.avg_zs) == ("valid", 44, 0, 100.0)
    assert eu.discarded["periods"] == {"marked": 4} and eu.discarded["cms_discarded"] == 0
    # GB: 24 − 2 marked hours = 22 valid ≥ 20
    gb = pick(avgs, "1d", DAY_START, "gb")
    assert (gb.status, gb.n_valid, gb.n_discarded, gb.avg_zs) == ("valid", 22, 0, 100.0)
    # without the mark the start-up counts: (44 × 100 + 4 × 300) / 48 = 5600 / 48 = 116.667
    assert pick(compute(rows), "1d", DAY_START, "eu").avg_zs == pytest.approx(116.667, abs=1e-3)


def test_monitoring_system_mark_discards_for_the_measuring_system() -> None:
    # a calibration marked 02:00–05:00 on clean data: 6 half-hours discarded for the measuring system > 5
    avgs = compute(day_rows(lambda t: nox()), [mark("cms_calibration", at(2), at(5))])
    hh = pick(avgs, "30min", at(2))
    assert (hh.status, hh.discarded, hh.cms_discarded) == ("invalid", {"cms_calibration": 30}, True)
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.n_valid, eu.n_discarded, eu.discarded["cms_discarded"]) == ("invalid", 42, 6, 6)
    assert pick(avgs, "1d", DAY_START, "gb").status == "valid"  # 21 valid hours ≥ 20


def test_furnace_mark_wins_over_a_monitoring_system_mark() -> None:
    avgs = compute(day_rows(lambda t: nox()), [mark("cms_maintenance", at(2), at(3)), mark("shut", at(2), at(3))])
    assert pick(avgs, "30min", at(2)).discarded == {"marked_shut": 30}


def test_missing_data_inside_a_furnace_mark_is_marked_not_discarded() -> None:
    rows = day_rows(lambda t: None if t < at(4) else nox())  # nothing from 00:00 to 04:00: 8 half-hours
    avgs = compute(rows, [mark("shut", DAY_START - timedelta(days=1), at(4))])
    assert [pick(avgs, "30min", s).status for s in half_hours(DAY_START, 8)] == ["marked"] * 8
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.n_valid, eu.discarded["cms_discarded"]) == ("valid", 40, 0)
    # the same hole with the line not marked: the data unit failed → 8 missing half-hours discarded > 5
    eu = pick(compute(rows), "1d", DAY_START, "eu")
    assert (eu.status, eu.discarded["periods"], eu.discarded["cms_discarded"]) == ("invalid", {"missing": 8}, 8)


def test_a_day_spent_entirely_under_a_furnace_mark_is_marked() -> None:
    avgs = compute(day_rows(lambda t: nox(5.0, o2=20.6)), [mark("shut", DAY_START, None)])
    assert pick(avgs, "1d", DAY_START, "eu").status == "marked"
    assert pick(avgs, "1d", DAY_START, "gb").status == "marked"


def test_flag_f_is_not_operating_not_a_discard() -> None:
    # 02:00–04:00 flagged F (停运: the source stopped), 04:00–05:00 above the O2 guard (20.6 % > 19 %):
    # 4 + 2 = 6 half-hours not operating, none discarded for the measuring system → the EU day stays valid
    def values(t: datetime) -> dict[str, Any]:
        if between(t, at(2), at(4)):
            return nox(flag="F")
        return nox(5.0, o2=20.6) if between(t, at(4), at(5)) else nox()
    avgs = compute(day_rows(values))
    assert pick(avgs, "30min", at(2)).discarded == {"flag_F": 30}
    assert [pick(avgs, "30min", s).status for s in half_hours(at(2), 6)] == ["not_operating"] * 6
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.n_valid, eu.n_discarded, eu.avg_zs) == ("valid", 42, 0, 100.0)
    assert eu.discarded["periods"] == {"not_operating": 6} and eu.discarded["cms_discarded"] == 0


def test_only_the_measuring_system_makes_a_half_hour_a_discarded_one() -> None:
    # 08:00–08:30: start-up marked 08:00–08:14, then 16 valid minutes: 960 s < 1200 s (2/3) → invalid, but
    #   the 14 marked minutes alone leave 1800 − 840 = 960 s < 1200 s: not the measuring system's fault.
    # 10:00–10:30: start-up 10:00–10:05, calibration 10:05–10:20, valid 10:20–10:30: 600 s → invalid; without
    #   the calibration 1800 − 300 = 1500 s ≥ 1200 s would have been valid → discarded for the measuring system.
    def values(t: datetime) -> dict[str, Any]:
        return nox(flag="C" if between(t, at(10, 5), at(10, 20)) else "N")
    avgs = compute(day_rows(values), [mark("start_up", at(8), at(8, 14)), mark("start_up", at(10), at(10, 5))])
    first, second = pick(avgs, "30min", at(8)), pick(avgs, "30min", at(10))
    assert (first.status, first.covered_s, first.cms_discarded) == ("invalid", 960, False)
    assert (second.status, second.covered_s, second.cms_discarded) == ("invalid", 600, True)
    assert second.discarded == {"marked_start_up": 5, "flag_C": 15}
    eu = pick(avgs, "1d", DAY_START, "eu")  # 46 valid half-hours, 1 discarded ≤ 5
    assert (eu.status, eu.n_valid, eu.n_discarded, eu.discarded["periods"]) == ("valid", 46, 1, {"invalid": 2})


# --- 2. EU daily: no verdict before the day ends, unless already certain ---------------------------------

@pytest.mark.parametrize(("calibrated_until", "status"), [(at(3, 30), "in_progress"), (at(5), "invalid")])
def test_day_in_progress_is_judged_early_only_when_already_certain(calibrated_until: datetime, status: str) -> None:
    # now 12:10, data up to now; calibration from 02:00: to 03:30 = 3 half-hours (≤ 5: the day may still be
    # valid → in progress), to 05:00 = 6 half-hours (> 5 already: invalid whatever the rest of the day brings)
    now = at(12, 10)
    rows = day_rows(lambda t: nox(flag="C" if between(t, at(2), calibrated_until) else "N"), end=now)
    avgs = compute(rows, now=now)
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.discarded["cms_discarded"]) == (status, (calibrated_until - at(2)) // timedelta(minutes=30))
    assert pick(avgs, "1d", DAY_START, "gb").status == "in_progress"  # no early rule for GB
    assert pick(avgs, "30min", at(12)).status == "in_progress"
    assert not [a for a in avgs if a.period == "30min" and a.start > at(12)]  # the future is never "missing"


def test_day_in_progress_does_not_count_what_may_still_be_back_filled() -> None:
    now = at(12, 10)
    # nothing arrived 02:00–05:00 (6 half-hours missing): the minute data may still be re-sent → in progress
    eu = pick(compute(day_rows(lambda t: None if between(t, at(2), at(5)) else nox(), end=now), now=now),
              "1d", DAY_START, "eu")
    assert (eu.status, eu.discarded["periods"]) == ("in_progress", {"missing": 6, "in_progress": 1})
    # 6 half-hours with 10 minutes in calibration and 20 silent: 20 min back-filled would reach 2/3 → not certain;
    # with 11 minutes in calibration only 19 are left < 20 → certain
    for calibrated, status in ((10, "in_progress"), (11, "invalid")):
        def values(t: datetime, calibrated: int = calibrated) -> dict[str, Any] | None:
            if not between(t, at(2), at(5)):
                return nox()
            return nox(flag="C") if (t - at(2)) % timedelta(minutes=30) < calibrated * MINUTE else None
        eu = pick(compute(day_rows(values, end=now), now=now), "1d", DAY_START, "eu")
        assert (eu.status, eu.discarded["cms_discarded"]) == (status, 6)


# --- 3. minute data fill real-time holes -----------------------------------------------------------------

def test_minute_rows_fill_a_four_hour_hole_in_the_real_time_data() -> None:
    # real-time rows every 30 s at 60 all day except 08:00–12:00; the DAU's minute rows at 90 all day
    rtd = day_rows(lambda t: None if between(t, at(8), at(12)) else nox(60.0), timedelta(seconds=30), "rtd")
    minute = day_rows(lambda t: nox(90.0))
    avgs = compute(rtd + minute)
    hole = pick(avgs, "30min", at(8))
    assert (hole.status, hole.avg_zs, hole.n_valid, hole.covered_s) == ("valid", 90.0, 30, 1800)
    before = pick(avgs, "30min", at(7, 30))  # real-time rows there: the minute rows are not counted as well
    assert (before.avg_zs, before.n_valid, before.covered_s) == (60.0, 60, 1800)
    # EU day: (40 × 60 + 8 × 90) / 48 = 3120 / 48 = 65
    eu = pick(avgs, "1d", DAY_START, "eu")
    assert (eu.status, eu.n_valid) == ("valid", 48) and eu.avg_zs == pytest.approx(65.0)
    assert pick(avgs, "1h", at(9), "gb").avg_zs == 90.0


# --- 4. analyser-normalised values need a valid O2 ---------------------------------------------------------

def test_normalised_value_is_discarded_while_o2_is_not_valid() -> None:
    ts = [at(8) + i * MINUTE for i in range(30)]
    rows = [row(t, o2=8.0, o2_flag="C", nox_mg_m3=50.0, nox_zs_mg_m3=40.0, nox_flag="N") for t in ts]
    hh = pick(compute(rows), "30min", at(8))
    assert (hh.status, hh.discarded, hh.avg_zs) == ("invalid", {"o2_flag_C": 30}, None)
    # no O2 at all (neither value nor flag): the analyser's normalised value counts (module docstring)
    rows = [row(t, o2=None, o2_flag=None, nox_mg_m3=50.0, nox_zs_mg_m3=40.0, nox_flag="N") for t in ts]
    assert pick(compute(rows), "30min", at(8)).avg_zs == 40.0


# --- 5. moisture flags ------------------------------------------------------------------------------------

def test_wet_reading_with_moisture_flagged_is_discarded_before_drying() -> None:
    ts = [at(8) + i * MINUTE for i in range(30)]

    def wet(flag: str | None) -> list[dict[str, Any]]:
        return [row(t, o2=6.4, hcl_mg_m3=60.0, hcl_flag="N") | {"gas_is_dry": False, "h2o_pct": 20.0, "h2o_flag": flag}
                for t in ts]
    hh = pick(compute(wet("M")), "30min", at(8), pollutant="hcl")
    assert (hh.status, hh.discarded) == ("invalid", {"h2o_flag_M": 30})
    # moisture valid: 60 / (1 − 0.2) = 75 dry at 6.4 / 0.8 = 8 % O2 → 75 × 10 / 13 = 57.692
    assert pick(compute(wet("N")), "30min", at(8), pollutant="hcl").avg_zs == pytest.approx(57.692, abs=1e-3)
    # a dry-gas reading does not use the moisture: its flag does not matter
    dry = [r | {"gas_is_dry": True, "o2_pct": 11.0} for r in wet("M")]
    assert pick(compute(dry), "30min", at(8), pollutant="hcl").avg_zs == 60.0


# --- 6. flag T counts as at least the analyser's range -------------------------------------------------------

def test_over_range_reading_counts_as_the_range_limit() -> None:
    # range 100: 15 minutes normal at 50, 15 flagged T at 80 → counted as 100; (15 × 50 + 15 × 100) / 30 = 75
    ts = [at(8) + i * MINUTE for i in range(30)]
    rows = [row(t, nox_mg_m3=50.0 if i < 15 else 80.0, nox_flag="N" if i < 15 else "T") for i, t in enumerate(ts)]
    hh = pick(compute(rows, analyser_range_mg_m3={"nox": 100.0}), "30min", at(8))
    assert (hh.status, hh.avg_zs, hh.n_valid, hh.n_discarded) == ("valid", 75.0, 30, 0)
    assert hh.discarded == {"over_range": 15}  # reported, but not a discard
    # with the project default NOx range (1000): (15 × 50 + 15 × 1000) / 30 = 525
    assert pick(compute(rows), "30min", at(8)).avg_zs == 525.0


def test_over_range_value_by_hand() -> None:
    rules = AveragingRules(analyser_range_mg_m3={"nox": 100.0})
    t = at(8)
    # 80 → 100 at 8 % O2: 100 × 10 / 13 = 76.923; a value above the range stays itself: 120
    sample = evaluate(row(t, o2=8.0, nox_mg_m3=80.0, nox_flag="T"), "nox", rules)
    assert sample is not None and sample.over_range and sample.zs == pytest.approx(76.923, abs=1e-3)
    sample = evaluate(row(t, nox_mg_m3=120.0, nox_flag="T"), "nox", rules)
    assert sample is not None and (sample.meas, sample.zs) == (120.0, 120.0)
    # the analyser's normalised value is scaled like the measured one: 60 × 100 / 80 = 75
    assert at_least_range(80.0, 60.0, 100.0) == (100.0, 75.0)
    assert at_least_range(None, 60.0, 100.0) == (None, 60.0)  # normalised only: kept
    # no known range for the pollutant: a T value says nothing → discarded
    sample = evaluate(row(t, so2_mg_m3=80.0, so2_flag="T"), "so2", rules)
    assert sample is not None and sample.reason == "flag_T"


def test_device_ranges_are_parsed_strictly() -> None:
    assert parse_analyser_ranges({"so2": 500, "hg": 0.05, "nox": "x", "foo": 5, "co": -1, "hcl": True,
                                  "dust": float("nan")}) == {"so2": 500.0, "hg": 0.05}
    assert parse_analyser_ranges(None) == {} and parse_analyser_ranges([1, 2]) == {}


# --- helpers ----------------------------------------------------------------------------------------------

def test_furnace_spans_merge_and_measure() -> None:
    spans = furnace_spans([mark("start_up", at(1), at(2)), mark("fault", at(1, 30), at(3)),
                           mark("cms_fault", at(4), at(5)), mark("shut", at(6), None)])
    assert spans == [(at(1), at(3)), (at(6), None)]  # the monitoring-system mark is not the furnace's
    assert spans_seconds(spans, at(2, 30), at(7)) == 30 * 60 + 60 * 60  # 02:30–03:00 and 06:00–07:00


# --- properties ---------------------------------------------------------------------------------------------

FLAGS = st.one_of(st.none(), st.sampled_from(list("NFMSDCTBX")), st.text(max_size=2))
VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
MARK_NAMES = st.sampled_from(MARKS)


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    return {"ts": DAY_START + draw(st.integers(0, 1439)) * MINUTE,
            "data_kind": draw(st.sampled_from(["rtd", "minute"])), "gas_is_dry": draw(st.booleans()),
            "o2_pct": draw(VALUES), "o2_flag": draw(FLAGS), "h2o_pct": draw(VALUES), "h2o_flag": draw(FLAGS),
            "nox_mg_m3": draw(VALUES), "nox_zs_mg_m3": draw(VALUES), "nox_flag": draw(FLAGS),
            "co_mg_m3": draw(VALUES), "co_flag": draw(FLAGS)}


@st.composite
def marks(draw: st.DrawFn) -> Mark:
    start = DAY_START + draw(st.integers(-60, 1500)) * MINUTE
    end = draw(st.one_of(st.none(), st.integers(1, 600).map(lambda m: start + m * MINUTE)))
    return mark(draw(MARK_NAMES), start, end)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(readings(), st.one_of(st.none(), marks()))
def test_evaluate_never_raises(reading: dict[str, Any], under: Mark | None) -> None:
    sample = evaluate(reading, "nox", AveragingRules(), under)
    if sample is None:
        assert reading["nox_mg_m3"] is None and reading["nox_zs_mg_m3"] is None and reading["nox_flag"] is None
    else:
        assert (sample.reason is None) == (sample.zs is not None)
        assert not sample.over_range or sample.reason is None


STATUSES = {"valid", "invalid", "missing", "not_operating", "marked", "in_progress"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), max_size=60), st.lists(marks(), max_size=4), st.integers(0, 1500),
       st.one_of(st.floats(1.0, 600.0), st.just({"rtd": 30.0, "minute": 60.0})))
def test_compute_day_never_raises(rows: list[dict[str, Any]], line_marks: list[Mark], now_minute: int,
                                  interval: float | dict[str, float]) -> None:
    rows.sort(key=lambda r: r["ts"])
    now = DAY_START + now_minute * MINUTE + timedelta(seconds=1)
    for a in compute_day(rows, DAY_START, DAY_END, interval, AveragingRules(), now, line_marks):
        assert a.status in STATUSES
        if a.period != "1d":
            assert a.n_discarded == sum(n for k, n in a.discarded.items() if k != "over_range")
            assert a.status != "valid" or a.n_valid > 0
        elif a.standard == "eu":
            assert a.n_discarded == a.discarded["cms_discarded"]
            assert a.status != "in_progress" or now < DAY_END
