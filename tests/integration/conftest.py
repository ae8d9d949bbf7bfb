"""Test fixtures: a private Mosquitto and a private PostgreSQL+TimescaleDB per test session, on free
ports with data in a temp dir. Factories start extra ones for fault tests, which stop, kill and
restart them. Nothing here touches the machine's own services on 5432 / 1883."""

from __future__ import annotations

import contextlib
import itertools
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sanitel.db import apply_migrations
from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer, PostgresServer, free_port
from sanitel.settings import load_settings

TEMPLATE_DB = "sanitel_template"


@pytest.fixture(scope="session")
def scratch_dir() -> Iterator[Path]:
    # /tmp rather than pytest's tmp_path: the postgres user must be able to traverse the parents.
    path = Path(tempfile.mkdtemp(prefix="sanitel-tests-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def make_postgres(scratch_dir: Path) -> Iterator[Callable[..., PostgresServer]]:
    """Factory: a new, started PostgreSQL cluster with TimescaleDB and the migrations applied."""
    started: list[PostgresServer] = []
    counter = itertools.count()

    def make(migrate: bool = True) -> PostgresServer:
        server = PostgresServer(scratch_dir / f"pg{next(counter)}", free_port(), fsync=False)
        server.start()
        started.append(server)
        if migrate:
            apply_migrations(server.url)
        return server

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.stop(mode="immediate")


@pytest.fixture(scope="session")
def make_mosquitto(scratch_dir: Path) -> Iterator[Callable[..., MosquittoServer]]:
    """Factory: a new, started Mosquitto broker with persistence on."""
    started: list[MosquittoServer] = []
    counter = itertools.count()

    def make(**kwargs: Any) -> MosquittoServer:
        server = MosquittoServer(scratch_dir / f"mqtt{next(counter)}", free_port(), **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.kill()


def _copy_database(admin_url: str, source: str, target: str) -> None:
    """CREATE DATABASE … TEMPLATE, ending other sessions on the source first: TimescaleDB's background
    scheduler connects to every database and would make the copy fail with 'being accessed by other users'."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for attempt in range(20):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (source,))
            try:
                conn.execute(f"CREATE DATABASE {target} TEMPLATE {source}")
                return
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server(make_postgres: Callable[..., PostgresServer]) -> PostgresServer:
    """The session's shared database server, with a migrated template database for fresh_db."""
    server = make_postgres(migrate=True)
    admin = server.url.rsplit("/", 1)[0] + "/postgres"
    _copy_database(admin, server.dbname, TEMPLATE_DB)
    with psycopg.connect(admin, autocommit=True) as conn:
        # no connections to the template from now on, so copying it never races with the scheduler
        conn.execute(f"ALTER DATABASE {TEMPLATE_DB} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")
    return server


@pytest.fixture(scope="session")
def mqtt_server(make_mosquitto: Callable[..., MosquittoServer]) -> MosquittoServer:
    """The session's shared broker. Tests that stop or restart a broker make their own."""
    return make_mosquitto()


_db_counter = itertools.count()


class _DatabaseDropper:
    """Drops used test databases one at a time on a thread of its own. A DROP DATABASE waits for a checkpoint, which
    took up to a minute on a busy disk; the next test need not wait for it (the cluster dies with the session)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._run, name="test-db-dropper", daemon=True).start()

    def drop_later(self, name: str) -> None:
        self.names.put(name)

    def _run(self) -> None:
        while True:
            name = self.names.get()
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def _database_dropper(pg_server: PostgresServer) -> _DatabaseDropper:
    return _DatabaseDropper(pg_server.url.rsplit("/", 1)[0] + "/postgres")


@pytest.fixture
def fresh_db(pg_server: PostgresServer, _database_dropper: _DatabaseDropper) -> Iterator[str]:
    """URL of a new, migrated, empty database of its own (copied from the template: fast)."""
    name = f"t{next(_db_counter)}_{free_port()}"
    admin = pg_server.url.rsplit("/", 1)[0] + "/postgres"
    _copy_database(admin, TEMPLATE_DB, name)
    yield pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    _database_dropper.drop_later(name)


@pytest.fixture
def make_collector(scratch_dir: Path) -> Iterator[Callable[..., Collector]]:
    """Factory: a started in-process collector on the given database and broker; stopped at teardown."""
    started: list[Collector] = []

    def make(db_url: str, mqtt_url: str, **overrides: object) -> Collector:
        data_dir = Path(tempfile.mkdtemp(prefix="collector-", dir=scratch_dir))
        settings = load_settings(database_url=db_url, mqtt_url=mqtt_url, data_dir=data_dir,
                                 collector_metrics_port=0, collector_flush_ms=50,
                                 collector_client_id=f"test-collector-{next(_db_counter)}", **overrides)
        collector = Collector(settings)
        collector.start()
        assert collector.wait_connected(10), "collector did not connect to the broker"
        started.append(collector)
        return collector

    yield make
    for collector in started:
        with contextlib.suppress(Exception):
            collector.stop()
