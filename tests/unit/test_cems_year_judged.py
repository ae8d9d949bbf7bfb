"""A clean simulated year of one furnace line judged end to end by the processors (issue 13, Must show 6): the
simulator's readings (five-minute real-time data, a three-day planned outage under the data unit's marks, a daily
analyser calibration, short CO and NOx upsets) → the averages (processors/cems_averages.py) → the daily regulatory
judgement (processors/cems_judgement.py), with the default limits. The year's ground truth holds nothing but
``no_alert`` records, so the processors must find no exceedance, no violation and no invalid day — and they must
see the outage as marked time, within the yearly cap.

Pure functions over the simulator's rows: the database and the alert rules are exercised on faulted days in
tests/integration/test_cems_regulatory_truth.py; here the year is what is long.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from sanitel.emission_limits import limit_set, mee_rules
from sanitel.processors.cems_averages import Average, compute_averages, local_day
from sanitel.processors.cems_judgement import Judgement, judge_day, validated
from sanitel.processors.cems_marks import dau_marks
from sanitel.simulators.cems_span import simulate_cems_line

TZ = "Asia/Shanghai"
DAYS = [date(2026, 1, 1) + timedelta(days=i) for i in range(365)]


@pytest.fixture(scope="module")
def year() -> tuple[list[Average], list[Judgement], list[Any]]:
    span = simulate_cems_line("2026-01-01T00:00:00+08:00", 365 * 86_400.0, seed=29, interval_s=300.0,
                              outages=[{"after": "200d", "duration": "3d"}])
    assert all(r.expected_effect.keys() == {"no_alert"} for r in span.truth)  # a clean year
    now = span.readings[-1]["ts"] + timedelta(days=1)  # every day has ended
    marks = dau_marks(span.readings)
    averages = compute_averages(span.readings, DAYS, TZ, now=now, marks=marks)
    readings_by_day: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for r in span.readings:
        readings_by_day[local_day(r["ts"], TZ)].append(r)
    averages_by_day: dict[date, list[Average]] = defaultdict(list)
    for a in averages:
        averages_by_day[local_day(a.start, TZ)].append(a)
    limits, judgements, ytd = limit_set(), [], 0.0
    for day in DAYS:
        j = judge_day(day, TZ, readings_by_day[day], averages_by_day[day], marks, limits, now, ytd_before=ytd)
        judgements.append(j)
        ytd = j.marked_hours_ytd
    return averages, judgements, marks


def test_no_average_of_the_year_exceeds_its_limit(year: tuple[list[Average], list[Judgement], list[Any]]) -> None:
    averages, _, _ = year
    limits = limit_set()
    keys = {("gb", "1h"): "gb.1h", ("gb", "1d"): "gb.24h", ("eu", "30min"): "eu.half_hour_a", ("eu", "1d"): "eu.daily"}
    judged = 0
    for a in averages:
        key = keys.get((a.standard, a.period))
        limit = limits.get(key, a.pollutant) if key else None
        if limit is None or not a.valid or a.avg_zs is None:
            continue
        ci = limits.confidence_interval(a.pollutant) if a.standard == "eu" else 0.0
        assert validated(a.avg_zs, ci) <= limit.value, (a.pollutant, a.period, a.standard, a.start, a.avg_zs)
        judged += 1
    # 5 GB pollutants × (8,760 hours + 365 days) + 7 EU ones × (17,520 half-hours + 365 days), less the outage and
    # the half-hour of each daily calibration (15 of its 30 minutes valid: under the 2/3 coverage rule)
    assert judged > 0.96 * (5 * (8760 + 365) + 7 * (17_520 + 365))


def test_every_day_is_compliant_and_the_outage_is_marked(
        year: tuple[list[Average], list[Judgement], list[Any]]) -> None:
    averages, judgements, marks = year
    rules = mee_rules()
    assert [j.status for j in judgements if j.status != "compliant"] == []
    assert all(j.final and j.furnace_5min_below_850 == 0 and j.marks_over_limit == 0 for j in judgements)
    assert all(j.eu_co_24h_failed != 1 and j.gb_exceedances == 0 for j in judgements)
    # the EU daily average of every pollutant is valid, or the day was spent under marks: never "invalid"
    eu_days = {a.status for a in averages if a.period == "1d" and a.standard == "eu"}
    assert eu_days <= {"valid", "marked"}, eu_days
    # one outage: shut-down (1 h), off, start-up (2 h) — start-up and shut-down count against the cap, "shut" not
    assert [m.mark for m in marks] == ["shut_down", "shut", "start_up"]
    ytd = judgements[-1].marked_hours_ytd
    assert ytd == pytest.approx(3.0, abs=0.2) and ytd <= rules.marked_hours_per_year
    marked_half_hours = [a for a in averages if a.period == "30min" and a.pollutant == "nox" and a.status == "marked"]
    assert len(marked_half_hours) == pytest.approx(3 * 48, abs=2)  # three days of half-hours, edges aside


def test_the_year_judgement_is_not_trivially_compliant(
        year: tuple[list[Average], list[Judgement], list[Any]]) -> None:
    # the same rows with the furnace 15 °C colder in one morning's 5-minute buckets would be a violation: the
    # judgement reads the furnace data it is given (guards against a check that cannot fail)
    _, judgements, _ = year
    # every day outside the three-day outage judged (nearly) all its 288 five-minute furnace averages
    assert sum(j.furnace_5min_valid >= 280 for j in judgements) >= 365 - 4
    day = DAYS[10]
    span = simulate_cems_line(datetime(2026, 1, 11).isoformat() + "+08:00", 86_400.0, seed=29, interval_s=300.0)
    cold = [{**r, "furnace_temp_c": 840.0} if r["ts"].hour == 0 and r["ts"].minute < 30 else r for r in span.readings]
    averages = compute_averages(cold, [day], TZ, now=span.readings[-1]["ts"] + timedelta(days=1))
    j = judge_day(day, TZ, cold, averages, [], limit_set(), span.readings[-1]["ts"] + timedelta(days=1))
    # 00:00–00:30 UTC is 08:00–08:30 local: six 5-minute buckets at 840 °C > 5 allowed
    assert (j.furnace_5min_below_850, j.status) == (6, "violation")
