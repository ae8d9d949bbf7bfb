"""A pytest plugin that runs the integration tests with each component on its own least-privilege database role.

    .venv/bin/pytest -p tests.integration.security.as_roles tests/integration/test_collector.py …

Migration 0070 grants each role (sanitel_ingest, sanitel_api, sanitel_evaluator, sanitel_processor) only what its
component's SQL uses. The suite normally connects as the superuser, so a missing grant would show only in a real
deployment; with this plugin every component connection is its role's instead, and a missing grant fails the test
that needs it. Fixture set-up (inserting test data, reading results) stays the superuser's:

- ``Settings.database_url_for(role)`` names the role's user (the collector, the HJ 212 listener, the API, the
  evaluator service and the scheduled processor's loop connect through it); trust auth lets any user in.
- An ``Evaluator`` given a connection switches it to ``sanitel_evaluator`` (SET ROLE), and a maintenance pass or a
  CEMS averages run switches its connection to ``sanitel_processor`` for the call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

COMPONENT_ROLES = ("ingest", "api", "evaluator", "processor")
F = TypeVar("F", bound=Callable[..., Any])
_logins_enabled: set[str] = set()


def role_url(url: str, role: str) -> str:
    """``url`` with its user replaced by ``sanitel_<role>`` (no password: the test clusters trust local users)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"sanitel_{role}@{host}"))


def enable_logins(owner_url: str) -> None:
    """Let the component roles log in on this cluster (migration 0070 creates them NOLOGIN; roles are cluster-wide)."""
    cluster = urlsplit(owner_url).netloc
    if cluster in _logins_enabled:
        return
    try:
        conn = psycopg.connect(owner_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        return  # a fault test's server is down: the component's own connection attempt will say so
    with conn:
        for role in COMPONENT_ROLES:
            conn.execute(f"ALTER ROLE sanitel_{role} LOGIN")
    _logins_enabled.add(cluster)


@contextmanager
def acting_as(conn: psycopg.Connection, role: str) -> Iterator[None]:
    """Run on ``conn`` as ``sanitel_<role>`` for the duration (SET ROLE; the superuser may become any role)."""
    current = conn.execute("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user").fetchone()
    if current is None or current[0] == f"sanitel_{role}" or not current[1]:
        yield  # already that role (a nested call), or a component's own role: it is tested as itself
        return
    conn.execute(f"SET ROLE sanitel_{role}")
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("RESET ROLE")


def _with_role(role: str, func: F) -> F:
    @functools.wraps(func)
    def wrapper(conn: psycopg.Connection, *args: Any, **kwargs: Any) -> Any:
        with acting_as(conn, role):
            return func(conn, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def pytest_configure() -> None:
    # imported here, not at the top: the plugin is loaded before the test session configures anything
    from sanitel.alerts import evaluator
    from sanitel.processors import cems_averages, maintenance
    from sanitel.settings import Settings

    database_url_for = Settings.database_url_for

    def as_component(self: Settings, role: Any) -> str:
        url = database_url_for(self, role)
        if role == "owner" or self.database_url is None or urlsplit(url).username != "postgres":
            return url  # the owner's, a local stack's, or a role's own URL already
        enable_logins(url)
        return role_url(url, role)

    Settings.database_url_for = as_component  # type: ignore[method-assign]

    init = evaluator.Evaluator.__init__

    def evaluator_init(self: evaluator.Evaluator, conn: psycopg.Connection, *args: Any, **kwargs: Any) -> None:
        # for the Evaluator's lifetime: it owns the connection's transactions from here on
        conn.execute("SET ROLE sanitel_evaluator")
        if not conn.autocommit:
            conn.commit()
        init(self, conn, *args, **kwargs)

    evaluator.Evaluator.__init__ = evaluator_init  # type: ignore[method-assign]
    maintenance.run_pass = _with_role("processor", maintenance.run_pass)
    cems_averages.run_scheduled = _with_role("processor", cems_averages.run_scheduled)
    cems_averages.recompute = _with_role("processor", cems_averages.recompute)
