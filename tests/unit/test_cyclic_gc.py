"""The young-generation threshold of a collector process covers the messages it may hold (ingest/cyclic_gc.py)."""

from __future__ import annotations

from sanitel.ingest.cyclic_gc import LEAST_YOUNG_THRESHOLD, young_generation_threshold
from sanitel.settings import load_settings


def test_the_threshold_covers_the_messages_a_collector_may_hold() -> None:
    assert young_generation_threshold(load_settings()) == 350_000  # 10 × (20,000 queued + 3 batches of 5,000)
    assert young_generation_threshold(load_settings(collector_queue_max=200_000,
                                                    collector_batch_size=20_000)) == 2_600_000


def test_never_below_the_fixed_threshold_it_replaced() -> None:
    tiny = load_settings(collector_queue_max=100, collector_batch_size=10, collector_commit_lanes=1)
    assert young_generation_threshold(tiny) == LEAST_YOUNG_THRESHOLD
