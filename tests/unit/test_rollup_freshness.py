"""Which source serves which range of a history (api/rollups.py), and the compliance report's pending
verdicts (processors/compliance.py) — pure: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sanitel.api.rollups import Segment, bounded, bucket_end, bucket_ranges, segments, source_label
from sanitel.processors.cems_averages import Behind
from sanitel.processors.compliance import limit_set, line_report

T = datetime(2026, 3, 9, tzinfo=UTC)
H = timedelta(hours=1)


def test_a_day_bucket_ends_at_the_next_local_midnight_across_a_dst_change() -> None:
    # Europe/Berlin springs forward on 2026-03-29: that local day is 23 hours long
    start = datetime(2026, 3, 28, 23, tzinfo=UTC)  # 00:00 local (UTC+1)
    assert bucket_end(start, timedelta(days=1), "Europe/Berlin") == datetime(2026, 3, 29, 22, tzinfo=UTC)
    assert bucket_end(T, H, "UTC") == T + H


def test_stale_buckets_become_merged_ranges_clipped_to_the_request() -> None:
    starts = [T + 5 * H, T + 3 * H, T + 4 * H, T + 9 * H, T + 3 * H]
    assert bucket_ranges(starts, H, "UTC", T, T + 24 * H) == [(T + 3 * H, T + 6 * H), (T + 9 * H, T + 10 * H)]
    # a request starting inside a bucket: the range starts at the request
    assert bucket_ranges([T], H, "UTC", T + timedelta(minutes=20), T + 24 * H) == [(T + timedelta(minutes=20), T + H)]
    assert bucket_ranges([T + 30 * H], H, "UTC", T, T + 24 * H) == []


def test_many_scattered_ranges_are_bounded_by_closing_the_smallest_gaps() -> None:
    ranges = [(T + i * 3 * H, T + (i * 3 + 1) * H) for i in range(5)]
    ranges[4] = (T + 11 * H, T + 13 * H)  # the gap before it is 1 h, the others 2 h
    assert bounded(ranges, 4) == [*ranges[:3], (T + 9 * H, T + 13 * H)]
    assert bounded(ranges, 1) == [(T, T + 13 * H)]
    assert bounded(ranges, 10) == ranges


def test_segments_cover_the_request_in_order() -> None:
    parts = segments(T, T + 24 * H, [(T + 5 * H, T + 6 * H), (T + 23 * H, T + 24 * H)], "t_5m", "t")
    assert parts == [Segment(T, T + 5 * H, "rollup", "t_5m"), Segment(T + 5 * H, T + 6 * H, "raw", "t"),
                     Segment(T + 6 * H, T + 23 * H, "rollup", "t_5m"), Segment(T + 23 * H, T + 24 * H, "raw", "t")]
    assert source_label(parts) == "t_5m + t"
    # adjacent raw ranges and a series with no rollup: one raw segment
    assert segments(T, T + 2 * H, [(T, T + H), (T + H, T + 2 * H)], None, "t") == [Segment(T, T + 2 * H, "raw", "t")]
    assert source_label(segments(T, T + H, [], "t_5m", "t")) == "t_5m"


def _average(period: str, standard: str, start: datetime, value: float | None, status: str) -> dict[str, Any]:
    length = {"30min": timedelta(minutes=30), "1h": H, "1d": 24 * H}[period]
    return {"device_id": "c-1", "line_id": "l-1", "pollutant": "nox", "period": period, "standard": standard,
            "period_start": start, "period_end": start + length, "avg_zs_mg_m3": value, "avg_meas_mg_m3": value,
            "n_valid": 0 if value is None else 60, "n_discarded": 0, "discarded": {}, "status": status,
            "valid": status == "valid"}


def test_a_line_whose_averages_are_behind_gets_no_verdict_but_the_reason() -> None:
    rows = [_average("1h", "gb", T + i * H, None if i == 10 else 200.0, "missing" if i == 10 else "valid")
            for i in range(24)] + [_average("1d", "gb", T, 200.0, "valid")]
    judged = line_report("l-1", "c-1", rows, limit_set(), "UTC")
    assert judged["status"]["gb"] == "compliant" and judged["pending"] is None
    assert [p["status"] for p in judged["invalid_periods"]] == ["missing"]

    late = Behind(T, 60, T + 10 * H, T + 10 * H + timedelta(minutes=59), T + 25 * H)
    pending = line_report("l-1", "c-1", rows, limit_set(), "UTC", late)
    assert pending["status"] == {"gb": "pending", "eu": "pending"} and pending["compliant"]["gb"] is None
    assert {c["status"] for c in pending["checks"]} == {"pending"} and all(c["compliant"] is None
                                                                           for c in pending["checks"])
    assert "60 readings" in pending["checks"][0]["note"]
    assert [p["status"] for p in pending["invalid_periods"]] == ["pending"]  # 10:00 is where the late data fell
    assert pending["pending"]["readings"] == 60 and "averaged at" in pending["pending"]["reason"]
