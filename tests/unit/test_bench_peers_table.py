"""bench/ingest/peers_table.py: harness lines (results/raw.jsonl of bench-peers) → issue 16's side-by-side table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.ingest.peers_table import (
    CONSUMERS,
    DASH,
    DEFAULT_INFLIGHT_BROKER,
    annotate,
    build_rows,
    render_markdown,
    rows_as_json,
)


def line(name: str, run: int, rate: float, *, status: str = "complete", pg_cpu: float = 2.0, rows: int = 10_000,
         cpu_ms: float | None = 0.05, publisher: float = 10_000.0, **extra) -> dict[str, Any]:
    """One JSON line as measure.py writes it (the keys the table reads, plus noise it must ignore)."""
    raw = json.dumps({"name": name, "run": run, "status": status, "rows_per_s": rate, "distinct_keys": rows,
                      "rows_final": rows, "postgres_cpu_s": pg_cpu, "peer_cpu_ms_per_row": cpu_ms,
                      "publish_msg_per_s": publisher, "lost": 0, "duplicates": 0, "loadavg": ["1.0", "1.0", "1.0"],
                      "mode": "backlog", **extra})
    return json.loads(raw)


def by_label(rows, start: str):
    return next(r for r in rows if r.consumer.label.startswith(start))


def test_drain_ratio_is_taken_round_by_round_against_node_red_then_the_median() -> None:
    # round 1: 10,000 vs 20,000 (0.5×); round 2: 9,000 vs 10,000 (0.9×); round 3: 30,000 vs 20,000 (1.5×)
    lines = [line("backlog-nodered-batch500", 1, 20_000), line("backlog-sanitel", 1, 10_000),
             line("backlog-nodered-batch500", 2, 10_000), line("backlog-sanitel", 2, 9_000),
             line("backlog-nodered-batch500", 3, 20_000), line("backlog-sanitel", 3, 30_000)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.drain.median == 10_000
    assert row.drain_ratio.values == (0.5, 0.9, 1.5)
    assert row.drain_ratio.median == pytest.approx(0.9)  # not 10,000 / 20,000 (ratio of the medians)


def test_postgres_cpu_per_row_and_its_ratio_to_node_red() -> None:
    lines = [line("backlog-nodered-batch500", 1, 20_000, pg_cpu=3.3, rows=200_000),
             line("backlog-sanitel", 1, 8_000, pg_cpu=5.2, rows=200_000)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.postgres_cpu_ms.median == pytest.approx(1000 * 5.2 / 200_000)
    assert row.postgres_ratio.median == pytest.approx(5.2 / 3.3)


def test_incomplete_runs_stay_out_of_the_medians_and_are_footnoted() -> None:
    lines = [line("backlog-nodered-batch500", 1, 20_000), line("backlog-sanitel", 1, 10_000),
             line("backlog-nodered-batch500", 2, 20_000), line("backlog-sanitel", 2, 300, status="stalled", lost=8740)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.drain.values == (10_000,)
    assert any("round 2" in n and "stalled" in n and "lost 8,740" in n for n in row.notes)
    assert "lost 8,740" in render_markdown(build_rows(lines))


def test_a_ratio_needs_the_reference_from_the_same_round() -> None:
    lines = [line("backlog-nodered-batch500", 1, 20_000), line("backlog-sanitel", 2, 10_000)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.drain.values == (10_000,)
    assert row.drain_ratio.values == ()


def test_default_inflight_broker_rows_compare_within_that_broker_only() -> None:
    lines = [line("backlog-nodered-batch500", 1, 20_000), line("backlog-sanitel", 1, 10_000),
             annotate(line("backlog-nodered-batch500", 1, 25_000), 1, DEFAULT_INFLIGHT_BROKER),
             annotate(line("backlog-sanitel", 1, 5_000), 1, DEFAULT_INFLIGHT_BROKER)]
    rows = build_rows(lines)
    assert by_label(rows, "sanitel, one collector,").drain_ratio.values == (0.2,)
    assert by_label(rows, "sanitel, one collector").drain_ratio.values == (0.5,)


def test_workers_lines_are_renamed_and_their_cpu_is_a_dash_with_the_reason() -> None:
    lines = [line("backlog-nodered-batch500", 1, 20_000),
             annotate(line("backlog-sanitel", 1, 40_000, cpu_ms=0.0), 1, name="backlog-sanitel-workers")]
    rows = build_rows(lines)
    row = by_label(rows, "sanitel, `collector --workers N`")
    assert row.drain_ratio.values == (2.0,)
    assert row.consumer_cpu_ms.values == ()
    text = render_markdown(rows)
    workers_line = next(ln for ln in text.splitlines() if "--workers N" in ln)
    assert f"{DASH} [" in workers_line.split("|")[5]
    assert "parent process only" in text


def test_live_rate_and_share_of_the_publisher() -> None:
    lines = [line("nodered-batch500", 1, 8_000, publisher=8_500), line("sanitel", 1, 8_500, publisher=8_600),
             line("sanitel", 2, 8_100, publisher=9_000)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.live.median == pytest.approx(8_300)
    assert row.live_share_of_publisher.values == pytest.approx((8_500 / 8_600, 0.9))
    # no backlog line: the costs come from the live runs, against Node-RED's live run
    assert row.postgres_ratio.values == (1.0,)


def test_markdown_has_one_row_per_measured_consumer_and_dashes_with_numbered_footnotes() -> None:
    lines = [line("nodered-batch500", 1, 8_072), line("backlog-nodered-batch500", 1, 23_847),
             line("sanitel", 1, 8_612), line("backlog-sanitel", 1, 8_645)]
    text = render_markdown(build_rows(lines), ["extra note"])
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + 2  # header + Node-RED + one collector
    assert all(ln.count("|") == 8 for ln in table)
    assert "| 8,612; 86 % of the publisher's | 8,645 | 0.36× |" in text
    assert "1.00× (the reference)" in table[1]
    assert text.rstrip().endswith("extra note")


def test_json_rows_carry_median_range_and_values() -> None:
    lines = [line("backlog-nodered-batch500", r, 20_000) for r in (1, 2, 3)] + \
            [line("backlog-sanitel", r, v) for r, v in ((1, 8_000), (2, 10_000), (3, 9_000))]
    out = rows_as_json(build_rows(lines))
    sanitel = next(r for r in out if r["backlog_peer"] == "backlog-sanitel" and r["broker"] == "inflight 0")
    assert sanitel["drain_rows_per_s"] == {"median": 9_000, "min": 8_000, "max": 10_000,
                                           "values": [8_000, 10_000, 9_000]}
    assert len({c.label for c in CONSUMERS}) == len(CONSUMERS)


def test_a_drain_over_before_the_first_poll_counts_for_nothing() -> None:
    # measure.py: rows_per_s 0.0 and a start-up-dominated CPU figure when every row was there at the first poll
    lines = [line("backlog-nodered-batch500", 1, 20_000),
             line("backlog-sanitel", 1, 0.0, cpu_ms=-0.08, elapsed_s=None)]
    row = by_label(build_rows(lines), "sanitel, one collector")
    assert row.drain.values == () and row.consumer_cpu_ms.values == () and row.postgres_cpu_ms.values == ()
    assert any("first poll" in n for n in row.notes)
