"""Faults against the real broker and database of the fixtures: nothing lost, nothing doubled.

(a) database stopped for 60 s while 20,000 messages arrive; (b) collector SIGKILLed mid-stream and
restarted; (c) broker restarted; (d) two collectors on an MQTT 5 shared subscription; (e) a spool damaged on
disk (a flipped byte, a torn tail) and holding a poison message; (f) a spool at its cap while the database is down.

The sweeper fleet is registered before it publishes, as in a deployment: auto-registration is capped per collector
and minute (issue 12), and these tests are about faults, not about registering unknown devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from sanitel.ingest.collector import Collector
from sanitel.processors.spool import Spool, inspect_spool, read_quarantine
from sanitel.servers import MosquittoServer, PostgresServer, free_port
from sanitel.settings import Settings, load_settings
from tests.support.mqtt_tools import count, publish, wait_for

DEVICES = 1500  # the reference city's sweeper fleet
DEVICE_TIME_MS = 1_773_100_800_000  # 2026-03-10T00:00:00Z: a fixed past device time (only the future is refused)


def sweeper_id(i: int) -> str:
    return f"sw-{i % DEVICES:04d}"


def register_fleet(db_url: str) -> None:
    """Register the DEVICES sweepers of sweeper_messages (one bulk INSERT), as an operator does."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) SELECT d, 'sweeper' FROM unnest(%s::text[]) AS d",
                     ([sweeper_id(i) for i in range(DEVICES)],))


def sweeper_messages(n: int, start_seq: int = 0) -> list[tuple[str, bytes]]:
    base = DEVICE_TIME_MS
    return [(f"sanitation/shenzhen/sweeper/{sweeper_id(i)}/telemetry",
             json.dumps({"ts": base + i, "seq": i, "soc_pct": 50 + i % 50, "speed_kmh": 12.5}).encode())
            for i in range(start_seq, start_seq + n)]


def queue_backlog(settings: Settings, mq_port: int, n: int) -> None:
    """Queue n sweeper messages for the collector session of ``settings`` while it is stopped: a collector made
    from these settings subscribes once (the session keeps the subscription), stops, and the messages are
    published."""
    first = Collector(settings)
    first.start()
    assert first.wait_connected(10)
    first.stop()
    publish(mq_port, sweeper_messages(n))


def queued_fleet_backlog(db_url: str, mq: MosquittoServer, scratch_dir: Path, client_id: str, n: int,
                         **overrides: Any) -> Settings:
    """The fleet registered and n of its messages queued for the collector session ``client_id``, whose settings
    (with ``overrides``) are returned."""
    register_fleet(db_url)
    settings = load_settings(database_url=db_url, mqtt_url=mq.url, collector_metrics_port=0,
                             data_dir=Path(tempfile.mkdtemp(prefix=f"{client_id}-", dir=scratch_dir)),
                             collector_client_id=client_id, **overrides)
    queue_backlog(settings, mq.port, n)
    return settings


def rows(db_url: str) -> int:
    return count(db_url, "SELECT count(*) FROM sweeper_telemetry")


def stale_last_seen(db_url: str) -> list[str]:
    """Sweepers whose device_last_seen row does not name their newest stored reading."""
    with psycopg.connect(db_url) as conn:
        return [d for (d,) in conn.execute(
            "SELECT r.device_id FROM (SELECT device_id, max(ts) AS ts FROM sweeper_telemetry GROUP BY device_id) r "
            "LEFT JOIN device_last_seen s USING (device_id) WHERE s.last_ts IS DISTINCT FROM r.ts")]


def distinct_rows(db_url: str) -> int:
    return count(db_url, "SELECT count(DISTINCT seq) FROM sweeper_telemetry")


def start_single_collector(db_url: str, mqtt_url: str, data_dir: Path, *, client_id: str,
                           metrics_port: int) -> subprocess.Popen[bytes]:
    """``sanitel collector --workers 1``: one process, whose memory and metrics are the whole collector's
    (``start_collector_process`` runs the default, one worker per core)."""
    env = {**os.environ, "SANITEL_DATABASE_URL": db_url, "SANITEL_MQTT_URL": mqtt_url, "SANITEL_DATA_DIR": str(data_dir),
           "SANITEL_COLLECTOR_CLIENT_ID": client_id, "SANITEL_COLLECTOR_METRICS_PORT": str(metrics_port)}
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{client_id}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "sanitel.cli", "collector", "--workers", "1"], env=env,
                                stdout=log, stderr=log)


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
    register_fleet(pg.url)
    data_dir = scratch_dir / "outage"
    port = free_port()
    proc = start_single_collector(pg.url, mq.url, data_dir, client_id="outage", metrics_port=port)
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
    register_fleet(pg.url)
    data_dir = scratch_dir / "sigkill"
    port = free_port()
    proc = start_single_collector(pg.url, mq.url, data_dir, client_id="sigkill", metrics_port=port)
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
        proc = start_single_collector(pg.url, mq.url, data_dir, client_id="sigkill", metrics_port=port)
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
    register_fleet(fresh_db)
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
    register_fleet(fresh_db)
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


# --- the spool: damage on disk, poison, and its cap ------------------------------------------------------------

POISON_TOPIC = "sanitation/shenzhen/sweeper/sw-poison/telemetry"
POISON = b'{"ts":"0001-01-01T00:00:00+01:00","seq":1}'  # made decode raise once (issue 11)


def spool_settings(db_url: str, mqtt_url: str, data_dir: Path, client_id: str, **overrides: object) -> Settings:
    return load_settings(database_url=db_url, mqtt_url=mqtt_url, data_dir=data_dir, collector_metrics_port=0,
                         collector_flush_ms=50, collector_client_id=client_id, **overrides)


def sample(collector: Collector, name: str, **labels: str) -> float:
    return collector.metrics.registry.get_sample_value(name, labels) or 0.0


def seqs(db_url: str) -> set[int]:
    with psycopg.connect(db_url) as conn:
        return {int(seq) for (seq,) in conn.execute("SELECT seq FROM sweeper_telemetry").fetchall()}


def test_a_damaged_spool_replays_every_good_record_once_and_quarantines_the_rest(
        make_postgres: Callable[..., PostgresServer], mqtt_server: MosquittoServer, scratch_dir: Path) -> None:
    pg = make_postgres()
    register_fleet(pg.url)
    settings = spool_settings(pg.url, mqtt_server.url, scratch_dir / "damaged-spool", "damaged-spool")
    messages = sweeper_messages(300)
    started: list[Collector] = []
    try:
        first = Collector(settings)
        started.append(first)
        first.start()
        assert first.wait_connected(10)
        pg.stop()
        publish(mqtt_server.port, [*messages[:150], (POISON_TOPIC, POISON), *messages[150:]])
        assert wait_for(lambda: sample(first, "sanitel_messages_spooled_total") == 301, 30)
        first.stop()  # every message is acknowledged: durable in the spool, and nowhere else

        folder = settings.effective_spool_dir / settings.collector_client_id
        spool = Spool(folder)
        records = [(segment, r) for segment in spool.segments() for r in spool.read_segment(segment).records]
        assert len(records) == 301
        seq_of = {id(r): json.loads(r.message[1])["seq"] for _, r in records if r.message[0] != POISON_TOPIC}
        segment, flipped = records[100]
        data = bytearray(segment.read_bytes())
        data[flipped.offset + flipped.length // 2] ^= 0x40  # a bit flip in the middle of a segment
        segment.write_bytes(bytes(data))
        last_segment, torn = records[-1]
        with last_segment.open("r+b") as fh:  # and a torn tail, as a crash or a full disk mid-write leaves it
            fh.truncate(last_segment.stat().st_size - 5)
        lost = {seq_of[id(flipped)], seq_of[id(torn)]}

        pg.start()
        second = Collector(settings)  # same client id and folder: replays the damaged spool at start
        started.append(second)
        second.start()
        assert second.wait_connected(10), "the collector must start whatever its spool holds"
        assert wait_for(lambda: rows(pg.url) == 298, 30)
        assert seqs(pg.url) == set(range(300)) - lost and rows(pg.url) == distinct_rows(pg.url) == 298
        assert sample(second, "sanitel_readings_duplicate_total", table="sweeper_telemetry") == 0.0  # replayed once
        assert spool.segments() == []
        entries = [e for q in sorted(folder.glob("*.quarantine")) for e in read_quarantine(q)]
        assert sorted(e.reason for e in entries if e.reason != "replay_error") == ["corrupt", "torn"]
        assert sample(second, "sanitel_spool_quarantined_records_total", reason="corrupt") == 1.0
        assert sample(second, "sanitel_spool_quarantined_records_total", reason="torn") == 1.0
        # the poison message is a dead letter (decode never raises) or, were its write to fail, quarantined
        poisoned = count(pg.url, "SELECT count(*) FROM dead_letters WHERE topic = %s", POISON_TOPIC)
        assert poisoned + sum(e.reason == "replay_error" for e in entries) == 1
        assert inspect_spool(settings.effective_spool_dir, settings.spool_max_bytes).quarantined_records == len(entries)

        publish(mqtt_server.port, sweeper_messages(100, start_seq=300))  # and it goes on ingesting
        assert wait_for(lambda: rows(pg.url) == 398, 30)
    finally:
        for collector in started:
            collector.stop()


def test_at_its_cap_the_spool_stops_acknowledging_and_every_message_lands_once_after_the_outage(
        make_postgres: Callable[..., PostgresServer], mqtt_server: MosquittoServer, scratch_dir: Path) -> None:
    pg = make_postgres()
    register_fleet(pg.url)
    settings = spool_settings(pg.url, mqtt_server.url, scratch_dir / "capped-spool", "capped-spool",
                              spool_max_bytes=64 * 1024, collector_batch_size=50, collector_queue_max=200)
    collector = Collector(settings)
    try:
        collector.start()
        assert collector.wait_connected(10)
        pg.stop()
        publish(mqtt_server.port, sweeper_messages(3_000))  # the broker takes them all (QoS 1, persistent session)
        assert wait_for(lambda: sample(collector, "sanitel_spool_full") == 1.0, 30)
        spooled = sample(collector, "sanitel_messages_spooled_total")  # cannot grow while the spool is full
        backlog = collector.spool.backlog_bytes()
        assert 64 * 1024 <= backlog < 64 * 1024 + 50 * 1024  # at the cap, past it by at most one batch
        report = inspect_spool(settings.effective_spool_dir, settings.spool_max_bytes)  # what /health reads
        assert report.full and "cap" in (report.full_reason or "")
        # more than the collector can hold in memory (Receive Maximum 200 + one batch) was neither spooled nor
        # written: unacknowledged, it stays with the broker
        assert 3_000 - spooled > settings.collector_queue_max + settings.collector_batch_size

        pg.start()
        assert wait_for(lambda: rows(pg.url) == 3_000, 60)
        assert wait_for(lambda: sample(collector, "sanitel_spool_full") == 0.0, 10)
        assert wait_for(lambda: collector.spool.backlog_bytes() == 0, 10)
        time.sleep(0.5)
        assert rows(pg.url) == distinct_rows(pg.url) == 3_000
        assert not inspect_spool(settings.effective_spool_dir, settings.spool_max_bytes).full
    finally:
        collector.stop()
