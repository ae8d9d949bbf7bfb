"""Faults against the real broker and database of the fixtures: nothing lost, nothing doubled.

(a) database stopped for 60 s while 20,000 messages arrive; (b) collector SIGKILLed mid-stream and
restarted; (c) broker restarted; (d) two collectors on an MQTT 5 shared subscription."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer, PostgresServer, free_port
from tests.support.mqtt_tools import count, publish, start_collector_process, wait_for

DEVICES = 1500  # the reference city's sweeper fleet
DEVICE_TIME_MS = 1_773_100_800_000  # 2026-03-10T00:00:00Z: a fixed past device time (only the future is refused)


def sweeper_messages(n: int, start_seq: int = 0) -> list[tuple[str, bytes]]:
    base = DEVICE_TIME_MS
    return [(f"sanitation/shenzhen/sweeper/sw-{i % DEVICES:04d}/telemetry",
             json.dumps({"ts": base + i, "seq": i, "soc_pct": 50 + i % 50, "speed_kmh": 12.5}).encode())
            for i in range(start_seq, start_seq + n)]


def rows(db_url: str) -> int:
    return count(db_url, "SELECT count(*) FROM sweeper_telemetry")


def distinct_rows(db_url: str) -> int:
    return count(db_url, "SELECT count(DISTINCT seq) FROM sweeper_telemetry")


def metric(port: int, name: str) -> float | None:
    import urllib.request

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
def test_database_down_for_60s_while_20000_arrive_then_all_land_exactly_once(
        make_postgres: Callable[..., PostgresServer], make_mosquitto: Callable[..., MosquittoServer],
        scratch_dir: Path) -> None:
    pg, mq = make_postgres(), make_mosquitto()
    data_dir = scratch_dir / "outage"
    port = free_port()
    proc = start_collector_process(pg.url, mq.url, data_dir, client_id="outage", metrics_port=port)
    process = psutil.Process(proc.pid)
    try:
        assert wait_for(lambda: metric(port, "sanitel_broker_connected") == 1.0, 20)
        pg.stop()
        stopped_at = time.monotonic()
        publisher = threading.Thread(target=publish, args=(mq.port, sweeper_messages(20_000)))
        publisher.start()
        peak_rss = 0
        while time.monotonic() - stopped_at < 60:
            peak_rss = max(peak_rss, process.memory_info().rss)
            time.sleep(0.5)
        publisher.join()
        spooled = metric(port, "sanitel_messages_spooled_total")
        backlog = metric(port, "sanitel_spool_backlog_bytes")
        assert spooled == 20_000  # every message was taken and made durable on disk while the database was away
        assert backlog and backlog > 0
        pg.start()
        assert wait_for(lambda: rows(pg.url) == 20_000, 60)
        assert wait_for(lambda: metric(port, "sanitel_spool_backlog_bytes") == 0.0, 10)
        time.sleep(1.0)
        assert rows(pg.url) == distinct_rows(pg.url) == 20_000
        assert not any(p.stat().st_size for p in (data_dir / "spool" / "outage").glob("*.spool"))
        assert peak_rss < 250 * 1024 * 1024, f"collector RSS peaked at {peak_rss / 2**20:.0f} MiB"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_collector_killed_mid_stream_and_restarted_loses_and_doubles_nothing(
        make_postgres: Callable[..., PostgresServer], make_mosquitto: Callable[..., MosquittoServer],
        scratch_dir: Path) -> None:
    pg, mq = make_postgres(), make_mosquitto()
    data_dir = scratch_dir / "sigkill"
    port = free_port()
    proc = start_collector_process(pg.url, mq.url, data_dir, client_id="sigkill", metrics_port=port)
    try:
        assert wait_for(lambda: metric(port, "sanitel_broker_connected") == 1.0, 20)
        publisher = threading.Thread(target=publish, args=(mq.port, sweeper_messages(20_000)))
        publisher.start()
        assert wait_for(lambda: rows(pg.url) >= 3_000, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = rows(pg.url)
        assert killed_at < 20_000, "the kill came too late to test anything"
        publisher.join()
        proc = start_collector_process(pg.url, mq.url, data_dir, client_id="sigkill", metrics_port=port)
        assert wait_for(lambda: rows(pg.url) >= 20_000, 90)
        time.sleep(1.0)
        assert rows(pg.url) == distinct_rows(pg.url) == 20_000
    finally:
        if proc.poll() is None:
            proc.kill()


def test_broker_restart_the_collector_reconnects_by_itself_and_resumes(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer],
        make_collector: Callable[..., Collector]) -> None:
    mq = make_mosquitto()
    collector = make_collector(fresh_db, mq.url)
    publish(mq.port, sweeper_messages(3_000))
    assert wait_for(lambda: rows(fresh_db) == 3_000, 30)
    mq.stop()
    assert wait_for(lambda: not collector.connected, 10)
    mq.start()
    assert collector.wait_connected(30), "collector did not reconnect after the broker came back"
    publish(mq.port, sweeper_messages(3_000, start_seq=3_000))
    assert wait_for(lambda: rows(fresh_db) == 6_000, 30)
    assert distinct_rows(fresh_db) == 6_000


def test_two_collectors_on_a_shared_subscription_split_the_load_and_land_everything_once(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer],
        make_collector: Callable[..., Collector]) -> None:
    mq = make_mosquitto()
    first = make_collector(fresh_db, mq.url, collector_share_group="sanitel")
    second = make_collector(fresh_db, mq.url, collector_share_group="sanitel")
    publish(mq.port, sweeper_messages(10_000))
    assert wait_for(lambda: rows(fresh_db) == 10_000, 60)
    time.sleep(0.5)
    assert distinct_rows(fresh_db) == 10_000

    def received(c: Collector) -> float:
        return sum(s.value for m in c.metrics.registry.collect() if m.name == "sanitel_messages_received"
                   for s in m.samples if s.name.endswith("_total"))

    shares = received(first), received(second)
    assert sum(shares) == 10_000 and min(shares) > 1_000, f"load not split: {shares}"
