"""Silences: matchers plus a time window (planned maintenance). The alert engine reads this table to mute
notifications; the API creates, edits and expires them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.api.queries.alerts import COLUMNS as ALERT_COLUMNS  # the columns of every alert the API returns

_COLUMNS = """silence_id, matchers, starts_at, ends_at, created_by, comment, created_at,
              CASE WHEN ends_at <= now() THEN 'expired' WHEN starts_at > now() THEN 'pending'
                   ELSE 'active' END AS status"""

Status = Literal["pending", "active", "expired"]


async def list_silences(conn: AsyncConnection, status: Status | None, after: int | None, limit: int
                        ) -> list[dict[str, Any]]:
    """Newest first, keyset-paged on silence_id."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""SELECT {_COLUMNS} FROM silences
            WHERE (%(status)s::text IS NULL
                   OR (%(status)s = 'expired' AND ends_at <= now())
                   OR (%(status)s = 'pending' AND starts_at > now())
                   OR (%(status)s = 'active' AND starts_at <= now() AND ends_at > now()))
              AND (%(after)s::bigint IS NULL OR silence_id < %(after)s)
            ORDER BY silence_id DESC LIMIT %(limit)s""",
        {"status": status, "after": after, "limit": limit})
    return await cur.fetchall()


async def get_silence(conn: AsyncConnection, silence_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM silences WHERE silence_id = %s", (silence_id,))
    return await cur.fetchone()


async def create_silence(conn: AsyncConnection, matchers: list[dict[str, str]], starts_at: datetime | None,
                         ends_at: datetime, created_by: str, comment: str) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""INSERT INTO silences (matchers, starts_at, ends_at, created_by, comment)
            VALUES (%s, coalesce(%s, now()), %s, %s, %s) RETURNING {_COLUMNS}""",
        (Jsonb(matchers), starts_at, ends_at, created_by, comment))
    row = await cur.fetchone()
    assert row is not None
    return row


async def update_silence(conn: AsyncConnection, silence_id: int, matchers: list[dict[str, str]],
                         starts_at: datetime | None, ends_at: datetime, comment: str) -> dict[str, Any] | None:
    """Replace an unexpired silence's matchers, window and comment; None when absent or expired."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""UPDATE silences SET matchers = %s, starts_at = coalesce(%s, starts_at), ends_at = %s, comment = %s
            WHERE silence_id = %s AND ends_at > now() RETURNING {_COLUMNS}""",
        (Jsonb(matchers), starts_at, ends_at, comment, silence_id))
    return await cur.fetchone()


async def expire_silence(conn: AsyncConnection, silence_id: int) -> dict[str, Any] | None:
    """End a silence now (kept for the record, like Alertmanager's expire); a pending one is ended too."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""UPDATE silences SET starts_at = least(starts_at, now() - interval '1 microsecond'), ends_at = now()
             WHERE silence_id = %s AND ends_at > now() RETURNING {_COLUMNS}""",
        (silence_id,))
    return await cur.fetchone()


# A silence preview reads every open alert's labels: the open ones are few (the partial index on open alerts
# serves this), and matching runs in Python with the alert engine's own matchers, so the preview cannot disagree
# with what the engine will mute. The cap bounds a pathological backlog of open alerts.
PREVIEW_SCAN_LIMIT = 20000


async def open_alerts(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Pending and firing alerts (the ones a new silence can still mute), newest first."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"""SELECT {ALERT_COLUMNS} FROM alerts WHERE state <> 'resolved'
                           ORDER BY started_at DESC, alert_id DESC LIMIT {PREVIEW_SCAN_LIMIT}""")
    return await cur.fetchall()
