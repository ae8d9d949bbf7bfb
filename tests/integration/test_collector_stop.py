"""A collector stopped in the middle of a backlog leaves with the broker exactly what it had not committed.

It acknowledges each batch once committed, and before it disconnects it waits until the broker has read those
acknowledgements (``BufferedClient.wait_acks_read``; its own unit test shows the wait). A committed message
delivered again would be stored once all the same, but drained twice. The last-seen rows it held back while
draining (processors.last_seen) are upserted before it leaves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg

from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer
from tests.integration.test_collector_faults import queued_fleet_backlog, rows, stale_last_seen
from tests.support.hostile import session_leftovers
from tests.support.mqtt_tools import wait_for

# below 65,535, the Receive Maximum ``session_leftovers`` takes: it sees every message left only when they all fit
N = 60_000


def stored_seqs(db_url: str) -> set[int]:
    with psycopg.connect(db_url) as conn:
        return {seq for (seq,) in conn.execute("SELECT seq FROM sweeper_telemetry")}


def test_a_collector_stopped_mid_backlog_leaves_the_broker_only_what_it_had_not_committed(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> None:
    mq = make_mosquitto()
    settings = queued_fleet_backlog(fresh_db, mq, scratch_dir, "stopped-mid-backlog", N)

    collector = Collector(settings)
    collector.start()
    assert wait_for(lambda: rows(fresh_db) >= N // 10, 120, interval=0.02)
    collector.stop()  # the broker is still sending: what the collector had taken is committed and acknowledged

    committed = stored_seqs(fresh_db)
    again = [json.loads(payload)["seq"] for _, payload in session_leftovers(mq.port, settings.collector_client_id)]
    assert len(committed) < N, "the whole backlog was drained before the stop: nothing was tested"
    assert committed.isdisjoint(again), f"{len(committed & set(again))} committed messages were delivered again"
    assert committed | set(again) == set(range(N))  # and nothing was lost
    assert stale_last_seen(fresh_db) == []  # last-seen rows held while it drained were upserted before it left
