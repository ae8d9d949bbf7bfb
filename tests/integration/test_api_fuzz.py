"""Schemathesis over the API's own OpenAPI schema: generated requests, valid and invalid, never get a 5xx.

Bounded (a couple of dozen examples per operation) so it fits the suite's time budget. It runs against a
real, seeded database with an admin key, so generated requests reach the queries, not just the auth check.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from sanitel.api.app import create_app
from sanitel.servers import PostgresServer, free_port
from sanitel.settings import load_settings
from tests.integration.conftest import TEMPLATE_DB
from tests.support.api_helpers import api_settings, auth, mint_key, seed

# The schema comes from an app that is never started: its database is only needed to serve requests.
_schema_source = create_app(load_settings(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/schema"))
schema = schemathesis.openapi.from_dict(_schema_source.openapi()).exclude(path="/alerts/stream")  # endless stream

FUZZ_ALERTS_SQL = """
INSERT INTO alerts (alert_id, rule_id, fingerprint, device_id, site_id, kind, severity, state, started_at)
VALUES (1, 'station_h2s', 'station_h2s:TS-1', 'TS-1', 'ts-1', 'transfer_station', 'major', 'firing', now()),
       (2, 'bin_fire', 'bin_fire:BIN-1', 'BIN-1', 'sp-1', 'bin', 'critical', 'resolved', now());
INSERT INTO silences (matchers, starts_at, ends_at, created_by)
VALUES ('[{"label": "site_id", "op": "=", "value": "ts-1"}]', now(), now() + interval '1 day', 'seed');
"""
_names = itertools.count()


@pytest.fixture(scope="module")
def fuzz_db(pg_server: PostgresServer) -> Iterator[str]:
    """One seeded database for every operation of the run (a fresh one per operation costs too much)."""
    name = f"fuzz{next(_names)}_{free_port()}"
    admin = pg_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    seed(url)
    with psycopg.connect(url) as conn:
        conn.execute(FUZZ_ALERTS_SQL)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def fuzz_app(fuzz_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    yield create_app(api_settings(fuzz_db, Path(tmp_path_factory.mktemp("fuzz"))))
    # schemathesis started the app's lifespan; end it so its pool lets go of the database
    with contextlib.suppress(Exception):
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def admin_headers(fuzz_db: str) -> dict[str, str]:
    return auth(mint_key(fuzz_db, "admin", "fuzzer"))


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_request_gets_a_server_error(case: Any, fuzz_app: FastAPI, admin_headers: dict[str, str]) -> None:
    case.call_and_validate(app=fuzz_app, headers=admin_headers, checks=[not_a_server_error])
