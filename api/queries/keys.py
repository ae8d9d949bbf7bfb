"""API keys (see ``api.auth`` for the token format and hashing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row


async def get_key(conn: AsyncConnection, key_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT key_id, name, role, secret_hash, revoked_at FROM api_keys WHERE key_id = %s", (key_id,))
    return await cur.fetchone()


async def get_keys(conn: AsyncConnection, key_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Several key rows in one statement (the periodic re-check of open streams' keys)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT key_id, secret_hash, revoked_at FROM api_keys WHERE key_id = ANY(%s)", (key_ids,))
    return {row["key_id"]: row for row in await cur.fetchall()}


async def insert_key(conn: AsyncConnection, key_id: str, name: str, role: str, secret_hash: str) -> None:
    await conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, %s, %s, %s)",
                       (key_id, name, role, secret_hash))


async def list_keys(conn: AsyncConnection, include_revoked: bool) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT key_id, name, role, created_at, revoked_at FROM api_keys"
        " WHERE %s OR revoked_at IS NULL ORDER BY created_at, key_id", (include_revoked,))
    return await cur.fetchall()


async def revoke_key(conn: AsyncConnection, key_id: str) -> datetime | None:
    """Revoke; returns when it was revoked (now, or earlier if it already was), None if no such key."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING revoked_at",
        (key_id,))
    row = await cur.fetchone()
    return row[0] if row else None
