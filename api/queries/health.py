"""What /health and /metrics read from the database."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection


async def timescaledb_info(conn: AsyncConnection) -> dict[str, str]:
    """Installed TimescaleDB version and license (the async twin of ``sanitel.db.timescaledb_info``)."""
    cur = await conn.execute(
        "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),"
        "       current_setting('timescaledb.license', true)")
    row = await cur.fetchone()
    version, license_ = row if row else (None, None)
    return {"version": version or "not installed", "license": license_ or "?"}


async def last_received(conn: AsyncConnection) -> datetime | None:
    """The newest receive time over all devices (None before any device reported)."""
    cur = await conn.execute("SELECT max(last_received) FROM device_last_seen")
    row = await cur.fetchone()
    assert row is not None
    newest: datetime | None = row[0]
    return newest


async def dead_letters_last_hour(conn: AsyncConnection) -> int:
    cur = await conn.execute("SELECT count(*) FROM dead_letters WHERE received_at > now() - interval '1 hour'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0
