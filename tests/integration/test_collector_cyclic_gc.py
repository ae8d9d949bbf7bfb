"""A collector process lets the cyclic garbage collector run only on real growth, not for the messages it has in
flight (ingest/cyclic_gc.py, issue 16): those are freed by reference counting, and walking them cost a draining
collector 14 % of its CPU per reading."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanitel.ingest.collector import Collector
from sanitel.ingest.cyclic_gc import collect_cycles_less_often
from sanitel.servers import MosquittoServer
from tests.integration.test_collector_faults import queued_fleet_backlog, rows
from tests.support.mqtt_tools import wait_for

N = 30_000  # six batches at the default batch size; the default queue (20,000) fills while the first commits


def test_a_draining_collector_runs_no_cyclic_collection(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> None:
    settings = queued_fleet_backlog(fresh_db, make_mosquitto(), scratch_dir, "cyclic-gc-drain", N)
    collections: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    thresholds = gc.get_threshold()
    collector = Collector(settings)
    gc.collect()  # the counts start from nothing, as in a new process
    try:
        collector.start()
        collect_cycles_less_often(settings)  # as `sanitel collector` does once started
        gc.callbacks.append(count)
        assert wait_for(lambda: rows(fresh_db) >= N, 120, interval=0.05)
    finally:
        if count in gc.callbacks:  # counted while draining, not while stopping
            gc.callbacks.remove(count)
        collector.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    # at the old fixed threshold (50,000) this drain ran collections of the youngest generation, which found
    # nothing to free: the messages in flight alone outgrow it
    assert collections == [], f"{len(collections)} cyclic collections (generations {sorted(set(collections))})"
