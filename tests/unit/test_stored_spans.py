"""The spans of device time a batch records for the API's freshness probe (processors/stored_spans.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from sanitel.processors.stored_spans import SPAN_GAP, spans_of

T0 = datetime(2026, 11, 1, 8, tzinfo=UTC)


def _bounds(times: list[datetime]) -> list[tuple[datetime, datetime]]:
    bounds = []
    for span in spans_of(times):
        assert span.bounds == "[]" and span.lower is not None and span.upper is not None
        bounds.append((span.lower, span.upper))
    return bounds


def test_a_batch_within_the_gap_is_one_span_from_its_earliest_to_its_latest_time() -> None:
    times = [T0 + timedelta(seconds=s) for s in (30, 0, 3599, 12)]
    assert _bounds(times) == [(T0, T0 + timedelta(seconds=3599))]
    assert _bounds([T0]) == [(T0, T0)]


def test_a_back_fill_mixed_with_live_readings_is_two_short_spans_not_the_month_between() -> None:
    month_ago = T0 - timedelta(days=30)
    times = [T0 + timedelta(seconds=1), month_ago + timedelta(minutes=2), T0, month_ago]
    assert _bounds(times) == [(month_ago, month_ago + timedelta(minutes=2)), (T0, T0 + timedelta(seconds=1))]


def test_a_gap_of_exactly_the_limit_does_not_split() -> None:
    assert _bounds([T0, T0 + SPAN_GAP, T0 + 2 * SPAN_GAP]) == [(T0, T0 + 2 * SPAN_GAP)]
    assert len(_bounds([T0, T0 + SPAN_GAP + timedelta(microseconds=1)])) == 2


@given(st.lists(st.integers(min_value=0, max_value=10 * 24 * 3600 * 1000), min_size=1, max_size=200))
def test_spans_cover_every_time_and_split_only_at_gaps_wider_than_the_limit(offsets_ms: list[int]) -> None:
    times = [T0 + timedelta(milliseconds=ms) for ms in offsets_ms]
    bounds = _bounds(times)
    assert all(any(lo <= t <= hi for lo, hi in bounds) for t in times)
    assert all(lo in times and hi in times for lo, hi in bounds)  # no span reaches beyond the batch
    assert all(after[0] - before[1] > SPAN_GAP for before, after in pairwise(bounds))
    # inside a span no two consecutive times lie further apart than the limit
    for lo, hi in bounds:
        inside = sorted(t for t in times if lo <= t <= hi)
        assert all(b - a <= SPAN_GAP for a, b in pairwise(inside))
