"""A collector draining a backlog holds its devices' last-seen rows back (processors.last_seen, issue 16): with the
1,500 sweepers of the reference city going round the batches, their ``device_last_seen`` rows are written about
once a second instead of with every batch; once drained, every device's row names its newest stored reading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer
from tests.integration.test_collector_faults import queued_fleet_backlog, rows, stale_last_seen
from tests.support.mqtt_tools import wait_for

N = 30_000
BATCH = 1_000  # 30 batches; the messages go round the fleet, so each batch holds 1,000 sweepers


def collector_sessions(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return int(one_row(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'sanitel %'"))[0])


def last_seen_row_writes(db_url: str) -> int:
    """Rows inserted or updated in device_last_seen, as PostgreSQL counted them."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return int(one_row(conn.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'device_last_seen'"))[0])


def test_a_draining_collector_writes_last_seen_rows_about_once_a_second_not_with_every_batch(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> None:
    settings = queued_fleet_backlog(fresh_db, make_mosquitto(), scratch_dir, "last-seen-drain", N,
                                    collector_batch_size=BATCH)
    before = last_seen_row_writes(fresh_db)

    collector = Collector(settings)
    collector.start()
    assert wait_for(lambda: rows(fresh_db) >= N, 120, interval=0.05)
    collector.stop()
    # a session's statistics reach pg_stat_user_tables by the time it has left pg_stat_activity
    assert wait_for(lambda: collector_sessions(fresh_db) == 0, 30)

    writes = last_seen_row_writes(fresh_db) - before
    # with every batch: a row write per reading here (a batch of 1,000 has 1,000 of the 1,500 sweepers), 30,000;
    # held: at most a round of 1,500 a second of draining and one at the end (3,500 measured in a 2 s drain; a
    # machine that needed over 13 s to drain would reach the bound)
    assert writes < N * 3 // 4, f"{writes} last-seen row writes for {N} readings"
    assert stale_last_seen(fresh_db) == []
