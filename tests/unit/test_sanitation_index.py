"""The weekly street sanitation index's pure parts (processors/sanitation_index.py, issue 15): the ISO week
parameter, the component scores, the weighted index over the components that have data, overlapping alert hours
counted once, bin-overflow episodes by the alert rule's own ``bin_full`` definition, and the ranking."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.processors.sanitation_index import (
    HOURS_AT_ZERO,
    WEIGHTS,
    hours_score,
    overflow_intervals,
    parse_week,
    ranked,
    union_hours,
    week_label,
    weighted_index,
)
from sanitel.signal_conditions import condition

T0 = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_iso_weeks_parse_to_their_monday_and_back() -> None:
    assert parse_week("2026-W47") == date(2026, 11, 16)
    assert parse_week("2026-W53") == date(2026, 12, 28)  # 2026 has 53 ISO weeks (it starts on a Thursday)
    assert parse_week("2027-W01") == date(2027, 1, 4)
    assert week_label(date(2026, 11, 16)) == "2026-W47"
    assert week_label(date(2027, 1, 4)) == "2027-W01"


@pytest.mark.parametrize("text", ["2025-W53", "2026-W00", "2026-W54", "2026W47", "2026-47", "2026-w47", "", "x"])
def test_bad_weeks_say_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-Www"):
        parse_week(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_the_week_parser_never_raises_anything_but_value_error(text: str) -> None:
    try:
        monday = parse_week(text)
    except ValueError as exc:
        assert "YYYY-Www" in str(exc)
    else:
        assert monday.isoweekday() == 1


def test_weights_sum_to_one() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_hours_score_is_linear_to_zero() -> None:
    assert hours_score(0) == 100.0
    assert hours_score(HOURS_AT_ZERO / 2) == 50.0
    assert hours_score(HOURS_AT_ZERO) == 0.0
    assert hours_score(10 * HOURS_AT_ZERO) == 0.0


def test_the_index_renormalises_over_components_with_data() -> None:
    full = {"clearance": 100.0, "overflow": 50.0, "odour": 100.0, "noise": 100.0, "sweeping": 0.0}
    assert weighted_index(full) == pytest.approx(40 + 10 + 15 + 10 + 0)
    # no sweepers and no stations: clearance and overflow only, weights 0.4 and 0.2 → 2/3 and 1/3
    assert weighted_index({"clearance": 90.0, "overflow": 60.0, "odour": None, "noise": None,
                           "sweeping": None}) == 80.0
    assert weighted_index(dict.fromkeys(WEIGHTS)) is None


def test_union_hours_counts_overlaps_once_and_clips_to_the_window() -> None:
    intervals = [(at(1), at(3)), (at(2), at(4)), (at(10), at(11)), (at(-5), at(0.5)), (at(200), at(300))]
    assert union_hours(intervals, at(0), at(168)) == pytest.approx(3 + 1 + 0.5)
    assert union_hours([], at(0), at(168)) == 0.0


def test_overflow_episodes_follow_the_bin_full_condition() -> None:
    full, clear = condition("bin_full").limits()
    assert clear is not None
    n = condition("bin_full").smoothing.readings
    # n readings below, then full for 2 h of readings every 10 min, then well below the clear level
    values = [full - 20] * n + [full + 5] * 13 + [clear - 10] * n
    readings = [(at(i / 6), v) for i, v in enumerate(values)]
    (episode,) = overflow_intervals(readings)
    start, end = episode
    assert at(n / 6) < start <= at((n + n // 2 + 1) / 6)  # the median turns once most of the window is full
    assert end > start and (end - start) <= timedelta(hours=2, minutes=10)
    assert overflow_intervals([(at(0), full + 5)]) == []  # no verdict before a full smoothing window
    assert overflow_intervals([]) == []


def test_an_overflow_still_open_ends_at_the_last_reading() -> None:
    full, _ = condition("bin_full").limits()
    readings = [(at(i), full + 1) for i in range(10)]
    ((start, end),) = overflow_intervals(readings)
    assert (start, end) == (at(4), at(9))  # from the first full window of readings to the last reading


def test_ranking_highest_first_ties_share_a_rank_none_last() -> None:
    rows: list[dict[str, Any]] = [{"street_id": "c", "index": 70.0}, {"street_id": "a", "index": None},
            {"street_id": "b", "index": 90.0}, {"street_id": "d", "index": 70.0}]
    assert [(r["street_id"], r["rank"]) for r in ranked(rows)] == [("b", 1), ("c", 2), ("d", 2), ("a", None)]
