"""Database plumbing shared by every stage: connecting, migrations, TimescaleDB facts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from sanitel.errors import SanitelError
from sanitel.local_secrets import COMPONENT_ROLES, role_name
from sanitel.urls import redact_url

MIGRATION_LOCK_ID = 0x5A417E1  # advisory lock: one process migrates at a time

R = TypeVar("R")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def load_migrations() -> list[Migration]:
    folder = resources.files("sanitel.schemas") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def connect(url: str, **kwargs: Any) -> psycopg.Connection:
    """A connection, or a SanitelError that says which database could not be reached and why."""
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise SanitelError(
            f"cannot connect to the database at {redact_url(url)}: {' '.join(str(exc).split())}; "
            "start it with 'sanitel stack up' or fix SANITEL_DATABASE_URL"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise SanitelError(f"malformed database URL {redact_url(url)}: {exc}") from None


def apply_migrations(url: str) -> list[str]:
    """Apply every migration not yet applied, in order; returns the versions applied now.

    Safe to run twice and from several processes at once (an advisory lock serialises them).
    A migration whose file changed after it was applied is an error, not silently skipped.
    """
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: dict[str, str] = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            for m in load_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise SanitelError(
                            f"migration {m.version}_{m.name}.sql changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(m.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum),
                    )
                applied_now.append(m.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now


def pending_migrations(conn: psycopg.Connection) -> list[str]:
    """Versions of the migrations this code ships that the database has not applied (read-only)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations").fetchall()} \
        if exists and exists[0] else set()
    return [f"{m.version}_{m.name}" for m in load_migrations() if m.version not in done]


def require_current_schema(url: str) -> None:
    """Components run with roles that may not change the schema: they check it is current instead of
    migrating, and say how to fix it when it is not."""
    with connect(url, autocommit=True) as conn:
        pending = pending_migrations(conn)
    if pending:
        raise SanitelError(
            f"the database at {redact_url(url)} lacks migrations {', '.join(pending)}; run 'sanitel migrate' "
            "(it connects as the owner role: SANITEL_DATABASE_URL)"
        )


def set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    """Give ``role`` this password and LOGIN. The SCRAM verifier is computed here (libpq, as psql's \\password does),
    so the plain password never reaches the server, its statement log or pg_stat_activity."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


def provision_component_roles(owner_url: str, passwords: Mapping[str, str]) -> None:
    """Let each component role (``sanitel_<component>``, created NOLOGIN by migration 0070) log in with its password;
    run after the migrations, as a role that may alter roles (the local stack: its superuser). Safe to repeat: a
    changed password replaces the old one (that is how the local stack rotates them)."""
    unknown = set(passwords) - set(COMPONENT_ROLES)
    if unknown:
        raise ValueError(f"no database role for {', '.join(sorted(unknown))}")
    with connect(owner_url, autocommit=True) as conn:
        for component, password in sorted(passwords.items()):
            set_password(conn, role_name(component), password)


def one_row(cursor: psycopg.Cursor[R]) -> R:
    """The row of a query that always returns exactly one (a function call, an aggregate): fetchone() not None."""
    row = cursor.fetchone()
    assert row is not None, "the query returned no row"
    return row


def timescaledb_info(conn: psycopg.Connection) -> dict[str, str]:
    """Installed TimescaleDB version and license edition (``apache`` here; ``timescale`` elsewhere)."""
    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    license_ = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    return {"version": version[0] if version else "not installed", "license": (license_ or ["?"])[0] or "?"}


HYPERTABLES = (
    "sweeper_telemetry",
    "station_telemetry",
    "bin_deposits",
    "bin_status",
    "camera_detections",
    "cems_readings",
    "truck_telemetry",
    "truck_events",
    "weighbridge_tickets",
)
