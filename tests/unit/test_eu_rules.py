"""The EU rules as 2010/75/EU Annex VI Part 8 writes them, each on a day or year built by hand with its arithmetic
written beside it (pure: no database). The annual report's SQL is checked against a constructed year in
tests/integration/test_cems_annual.py."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sanitel.emission_limits import limit_set
from sanitel.processors.annual_report import ShareRule
from sanitel.processors.cems_averages import Average
from sanitel.processors.cems_judgement import co_24h_from_averages, day_discarded_for_cms, eu_cms_discarded
from sanitel.processors.report_cli import _year

T = datetime(2026, 3, 9, 16, tzinfo=UTC)  # local midnight in Shanghai
TEN, HALF = timedelta(minutes=10), timedelta(minutes=30)


def co(period: str, i: int, measured: float, status: str = "valid") -> Average:
    length = TEN if period == "10min" else HALF
    return Average("co", period, "eu", T + i * length, T + (i + 1) * length, measured, measured, 10, 0, {}, 600.0,
                   status)


# CO: the confidence interval is 10 % of the daily limit 50 → 5 mg/m³ is subtracted from each average (validated).
# A 10-minute average of 160 → 155 > 150 (above); 155 → 150 (within: not above). A half-hour of 106 → 101 > 100.

def ten_minutes(n_above: int) -> list[Average]:
    return [co("10min", i, 160.0 if i < n_above else 20.0) for i in range(144)]


def half_hours(worst: float) -> list[Average]:
    return [co("30min", i, worst if i == 0 else 20.0) for i in range(48)]


def test_co_fails_when_neither_alternative_holds() -> None:
    # 144 ten-minute averages, 8 above 150: 136 / 144 = 94.44 % < 95 % → the first alternative fails;
    # one half-hour at 101 > 100 → the second fails too → failed
    rule = co_24h_from_averages(ten_minutes(8) + half_hours(106.0), limit_set())
    assert (rule.n_ten_minute, rule.n_ten_minute_within) == (144, 136)
    assert rule.share_within == pytest.approx(136 / 144) and rule.share_within == pytest.approx(0.9444, abs=1e-4)
    assert (rule.ten_minute_holds, rule.half_hour_holds, rule.worst_half_hour) == (False, False, 101.0)
    assert (rule.holds, rule.failed) == (False, 1)


def test_co_holds_when_all_half_hours_are_within_100() -> None:
    # the same 10-minute averages (94.44 %), every half-hour ≤ 100 (105 → 100 is not above) → holds
    rule = co_24h_from_averages(ten_minutes(8) + half_hours(105.0), limit_set())
    assert (rule.ten_minute_holds, rule.half_hour_holds, rule.failed) == (False, True, 0)


def test_co_holds_when_95_percent_of_ten_minute_averages_are_within_150() -> None:
    # 7 above: 137 / 144 = 95.14 % ≥ 95 % → holds, although a half-hour is at 101
    rule = co_24h_from_averages(ten_minutes(7) + half_hours(106.0), limit_set())
    assert rule.share_within == pytest.approx(0.9514, abs=1e-4)
    assert (rule.ten_minute_holds, rule.half_hour_holds, rule.failed) == (True, False, 0)


def test_co_is_not_judged_without_valid_averages() -> None:
    invalid = [co("10min", i, 20.0, "invalid") for i in range(144)] + [co("30min", i, 20.0, "marked")
                                                                       for i in range(48)]
    rule = co_24h_from_averages(invalid, limit_set())
    assert (rule.n_ten_minute, rule.n_half_hours, rule.holds, rule.failed) == (0, 0, None, None)
    # only half-hours, one above: the 10-minute alternative cannot be evaluated, so neither is shown to hold
    rule = co_24h_from_averages(half_hours(106.0), limit_set())
    assert (rule.ten_minute_holds, rule.half_hour_holds, rule.failed) == (None, False, None)


def test_a_permit_sets_the_co_figures() -> None:
    # a permit's CO half-hourly limit 80 (and daily 40: CI = 10 % × 40 = 4): a half-hour of 90 → 86 > 80
    permit = limit_set([("p1", {"emission_limits": {"co": {"half_hour_a": 80, "daily": 40}}})])
    rule = co_24h_from_averages(ten_minutes(8) + half_hours(90.0), permit)
    assert (rule.worst_half_hour, rule.half_hour_holds, rule.failed) == (86.0, False, 1)


def test_co_daily_is_a_97_percent_of_days_rule() -> None:
    # 365 valid daily values, 11 above 50: 354 / 365 = 96.99 % < 97 % → fails; 10 above: 355 / 365 = 97.26 % → holds
    assert ShareRule(354, 365, 0.97).share == pytest.approx(0.96986, abs=1e-5)
    assert ShareRule(354, 365, 0.97).compliant is False
    assert ShareRule(355, 365, 0.97).compliant is True
    assert ShareRule(0, 0, 0.97).compliant is None  # no valid daily value: no verdict


def test_half_hour_b_is_97_percent_of_the_years_half_hours() -> None:
    # 17,520 half-hours a year: 526 above B → 16,994 / 17,520 = 96.998 % < 97 %; 525 above → 97.003 % ≥ 97 %
    assert ShareRule(17_520 - 526, 17_520, 0.97).compliant is False
    assert ShareRule(17_520 - 525, 17_520, 0.97).compliant is True


def test_only_measuring_system_discards_count() -> None:
    # "no more than five half-hourly average values in any day shall be discarded due to malfunction or maintenance
    # of the continuous measurement system": six such half-hours discard the day, five do not
    assert day_discarded_for_cms("invalid", {"cms_discarded": 6, "periods": {"invalid": 6}}) is True
    assert day_discarded_for_cms("valid", {"cms_discarded": 5, "periods": {"invalid": 5}}) is False
    # 12 half-hours missing while the line was shut down (marked) and 3 for the measuring system: not a CMS discard
    assert day_discarded_for_cms("invalid", {"cms_discarded": 3, "periods": {"marked": 12, "invalid": 3}}) is False
    assert day_discarded_for_cms("not_operating", {"cms_discarded": 0}) is False
    assert day_discarded_for_cms("invalid", {"periods": {"missing": 12}}) is False  # no count of CMS half-hours
    assert eu_cms_discarded({"cms_discarded": 7}) == 7 and eu_cms_discarded(None) == 0
    assert eu_cms_discarded({"cms_discarded": True}) == 0 and eu_cms_discarded({"cms_discarded": "7"}) == 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@given(st.dictionaries(st.sampled_from(["cms_discarded", "periods", "readings", "x"]), json_values) | st.none())
def test_reading_the_cms_count_never_raises(discarded: dict[str, Any] | None) -> None:
    count = eu_cms_discarded(discarded)
    assert isinstance(count, int) and count >= 0


@given(st.text(max_size=8))
def test_the_year_argument_raises_only_its_documented_error(text: str) -> None:
    try:
        year = _year(text)
    except argparse.ArgumentTypeError:
        return
    assert 1970 <= year <= 9998 and text == f"{year:04d}"
