"""Issue 16 against the real private broker and database: ``sanitel collector --workers N`` (N processes, one
shared subscription, one command; a worker that dies is restarted; SIGTERM stops them all cleanly), and the
warning when an in-flight window keeps batches small."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer, PostgresServer, free_port, port_in_use
from sanitel.settings import Settings, load_settings
from tests.integration.test_collector_faults import (
    distinct_rows,
    metric,
    queue_backlog,
    register_fleet,
    rows,
    sweeper_messages,
)
from tests.support.mqtt_tools import count, publish, wait_for


def two_free_ports() -> int:
    """A port p with p + 1 free too: worker k serves metrics on p + k - 1."""
    while True:
        port = free_port()
        if port < 65535 and not port_in_use(port + 1):
            return port


def workers_of(parent: subprocess.Popen[bytes]) -> dict[str, int]:
    """Client id → pid of the supervisor's live workers."""
    found: dict[str, int] = {}
    for child in psutil.Process(parent.pid).children():
        try:
            with_args = child.cmdline()
        except psutil.Error:  # a dead worker the supervisor has not reaped yet
            continue
        if "--client-id" in with_args:
            found[with_args[with_args.index("--client-id") + 1]] = child.pid
    return found


def connected(db_url: str, client_id: str) -> bool:
    return count(db_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                 f"sanitel {client_id}") > 0


def start_supervisor(db_url: str, mq: MosquittoServer, data_dir: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SANITEL_DATABASE_URL": db_url, "SANITEL_MQTT_URL": mq.url, "SANITEL_DATA_DIR": str(data_dir),
           "SANITEL_COLLECTOR_CLIENT_ID": "wk", "SANITEL_COLLECTOR_METRICS_PORT": str(metrics_port),
           "SANITEL_COLLECTOR_FLUSH_MS": "50"}
    with open(data_dir / "supervisor.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "sanitel.cli", "collector", "--workers", "2"], env=env,
                                stdout=log, stderr=log)


@pytest.fixture
def supervisor(fresh_db: str, make_mosquitto: Callable[..., MosquittoServer],
               scratch_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], MosquittoServer, int]]:
    mq = make_mosquitto()
    register_fleet(fresh_db)
    data_dir = Path(tempfile.mkdtemp(prefix="workers-", dir=scratch_dir))
    port = two_free_ports()
    parent = start_supervisor(fresh_db, mq, data_dir, port)
    try:
        # subscribed, not only connected: what is published before a shared subscription has a member is lost
        assert wait_for(lambda: connected(fresh_db, "wk") and connected(fresh_db, "wk-w2")
                        and metric(port, "sanitel_broker_connected") == metric(port + 1, "sanitel_broker_connected")
                        == 1.0, 60), (data_dir / "supervisor.log").read_text()[-3000:]
        yield parent, mq, port
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)


@pytest.mark.slow
def test_two_workers_share_one_subscription_restart_a_dead_one_and_stop_cleanly(
        fresh_db: str, supervisor: tuple[subprocess.Popen[bytes], MosquittoServer, int]) -> None:
    parent, mq, port = supervisor
    workers = workers_of(parent)
    assert sorted(workers) == ["wk", "wk-w2"]

    publish(mq.port, sweeper_messages(4000))
    assert wait_for(lambda: rows(fresh_db) == 4000, 60)
    assert distinct_rows(fresh_db) == 4000  # each message once, whichever worker took it
    shares = [metric(p, 'sanitel_messages_received_total{kind="sweeper"}') for p in (port, port + 1)]
    assert all(s is not None and s > 0 for s in shares) and sum(s or 0 for s in shares) == 4000, shares

    os.kill(workers["wk-w2"], signal.SIGKILL)  # a worker dies: the supervisor starts it again
    assert wait_for(lambda: workers_of(parent).get("wk-w2") not in (None, workers["wk-w2"]), 30)
    assert wait_for(lambda: connected(fresh_db, "wk-w2"), 60)
    publish(mq.port, sweeper_messages(2000, start_seq=4000))
    assert wait_for(lambda: rows(fresh_db) == 6000, 60)
    assert distinct_rows(fresh_db) == 6000

    survivors = [psutil.Process(pid) for pid in workers_of(parent).values()]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(90) == 0
    _, alive = psutil.wait_procs(survivors, timeout=30)
    assert alive == []  # every worker stopped with it
    assert rows(fresh_db) == 6000


@pytest.mark.slow
def test_a_worker_restarted_while_the_database_is_down_starts_and_spools(
        make_postgres: Callable[..., PostgresServer], make_mosquitto: Callable[..., MosquittoServer],
        scratch_dir: Path) -> None:
    """The supervisor checks the schema once; a worker it restarts during a database outage must start and spool
    (not die at start until the supervisor gives up on a "crash loop")."""
    pg, mq = make_postgres(), make_mosquitto()
    register_fleet(pg.url)
    data_dir = Path(tempfile.mkdtemp(prefix="workers-", dir=scratch_dir))
    port = two_free_ports()
    parent = start_supervisor(pg.url, mq, data_dir, port)
    try:
        assert wait_for(lambda: metric(port, "sanitel_broker_connected") == metric(port + 1,
                                                                                     "sanitel_broker_connected") == 1.0,
                        60), (data_dir / "supervisor.log").read_text()[-3000:]
        pg.stop()
        old = workers_of(parent)["wk-w2"]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: workers_of(parent).get("wk-w2") not in (None, old), 30)
        assert wait_for(lambda: metric(port + 1, "sanitel_broker_connected") == 1.0, 60)  # up, with no database
        publish(mq.port, sweeper_messages(1000))
        assert wait_for(lambda: sum(metric(p, "sanitel_messages_spooled_total") or 0 for p in (port, port + 1))
                        == 1000, 60)
        pg.start()
        assert wait_for(lambda: rows(pg.url) == 1000, 90)
        assert distinct_rows(pg.url) == 1000 and parent.poll() is None
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(90) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)


# --- the in-flight window warning ----------------------------------------------------------------------------


class ConfiguredMosquitto(MosquittoServer):
    """The project's broker configuration with some lines changed (``changes``: option → value)."""

    changes: dict[str, str]  # set before start()

    def write_config(self) -> None:
        super().write_config()
        lines = self.conf_file.read_text().splitlines()
        lines = [f"{line.split()[0]} {self.changes[line.split()[0]]}" if line and line.split()[0] in self.changes
                 else line for line in lines]
        self.conf_file.write_text("\n".join(lines) + "\n")


def drain(db_url: str, mq: MosquittoServer, data_dir: Path, n: int, **overrides: object) -> Collector:
    """Queue n messages for a stopped collector's session, start it again, wait until all landed."""
    settings: Settings = load_settings(database_url=db_url, mqtt_url=mq.url, data_dir=data_dir,
                                       collector_metrics_port=0, collector_client_id="window", **overrides)
    queue_backlog(settings, mq.port, n)
    second = Collector(settings)
    second.start()
    try:
        assert wait_for(lambda: rows(db_url) == n, 120)
    finally:
        second.stop()
    return second


def window_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "caps batches" in r.getMessage()]


def max_batch(collector: Collector) -> float:
    """The smallest histogram bucket that holds every batch: an upper bound of the largest batch."""
    registry = collector.metrics.registry
    total = registry.get_sample_value("sanitel_batch_size_count") or 0
    for bound in (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000):
        if registry.get_sample_value("sanitel_batch_size_bucket", {"le": str(float(bound))}) == total:
            return bound
    return float("inf")


@pytest.mark.parametrize("changes", [{}, {"max_inflight_messages": "20"}], ids=["project-config", "inflight-20"])
def test_a_drain_on_the_project_broker_or_one_at_mosquittos_default_window_is_not_capped(
        fresh_db: str, scratch_dir: Path, caplog: pytest.LogCaptureFixture, changes: dict[str, str]) -> None:
    """Mosquitto 2.0 applies max_inflight_messages to MQTT 3.1.1 sessions only; an MQTT 5 session gets the Receive
    Maximum it asked for (20,000 here), so even a broker left at the default 20 does not cap the collector."""
    caplog.set_level(logging.WARNING, "sanitel.collector")
    register_fleet(fresh_db)
    mq = ConfiguredMosquitto(scratch_dir / f"mq-{free_port()}", free_port())
    mq.changes = changes
    mq.start()
    try:
        collector = drain(fresh_db, mq, Path(tempfile.mkdtemp(dir=scratch_dir)), 3000, collector_batch_size=1000,
                          collector_flush_ms=400)
    finally:
        mq.stop()
    assert max_batch(collector) > 20 and window_warnings(caplog) == []
    assert collector.metrics.registry.get_sample_value("sanitel_inflight_window_cap") == 0


def test_a_receive_maximum_below_a_batch_caps_every_batch_and_is_reported_once(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The one window a real Mosquitto 2.0 imposes on an MQTT 5 session: the Receive Maximum the session asked
    for (SANITEL_COLLECTOR_QUEUE_MAX). Brokers that cap it further (EMQX max_inflight) look the same to us."""
    caplog.set_level(logging.WARNING, "sanitel.collector")
    register_fleet(fresh_db)
    collector = drain(fresh_db, make_mosquitto(), Path(tempfile.mkdtemp(dir=scratch_dir)), 2500,
                      collector_batch_size=1000, collector_flush_ms=400, collector_queue_max=100)
    assert max_batch(collector) == 100
    [warning] = window_warnings(caplog)
    assert warning.startswith("our own receive maximum caps batches at 100 messages")
    assert collector.metrics.registry.get_sample_value("sanitel_inflight_window_cap") == 100
