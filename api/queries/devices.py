"""Devices: the registry, their last-seen state and their broker credentials."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.api.queries.sites import SUBTREE, escape_like

_SELECT = """
    SELECT d.device_id, d.kind, d.site_id, d.name, d.inactivity_timeout_s, d.metadata, d.auto_registered,
           d.registered_at, d.mqtt_password_hash IS NOT NULL AS has_credentials,
           s.last_ts, s.last_received,
           CASE WHEN s.last_received IS NULL THEN NULL
                ELSE s.last_received > now() - make_interval(secs => d.inactivity_timeout_s) END AS online
    FROM devices d LEFT JOIN device_last_seen s USING (device_id)"""


async def list_devices(conn: AsyncConnection, *, kind: str | None, site_id: str | None, online: bool | None,
                       q: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        SUBTREE + _SELECT + """
        WHERE (%(kind)s::text IS NULL OR d.kind = %(kind)s)
          AND (%(site_id)s::text IS NULL OR d.site_id IN (SELECT site_id FROM subtree))
          AND (%(q)s::text IS NULL OR d.device_id ILIKE %(q)s || '%%' OR d.name ILIKE '%%' || %(q)s || '%%')
          AND (%(after)s::text IS NULL OR d.device_id > %(after)s)
          AND (%(online)s::boolean IS NULL OR coalesce(
                 s.last_received > now() - make_interval(secs => d.inactivity_timeout_s), false) = %(online)s)
        ORDER BY d.device_id LIMIT %(limit)s""",
        {"kind": kind, "site_id": site_id, "q": escape_like(q), "after": after, "online": online, "limit": limit})
    return await cur.fetchall()


async def get_device(conn: AsyncConnection, device_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_SELECT + " WHERE d.device_id = %s", (device_id,))
    return await cur.fetchone()


async def device_kind(conn: AsyncConnection, device_id: str) -> str | None:
    cur = await conn.execute("SELECT kind FROM devices WHERE device_id = %s", (device_id,))
    row = await cur.fetchone()
    return row[0] if row else None


async def register_device(conn: AsyncConnection, *, device_id: str, kind: str, site_id: str | None,
                          name: str | None, inactivity_timeout_s: int, metadata: dict[str, Any],
                          password_hash: str) -> bool:
    """Insert the device, or claim one the collector auto-registered. False when an admin already
    registered it (registering twice is a conflict, not a silent credential reset)."""
    cur = await conn.execute(
        """
        INSERT INTO devices (device_id, kind, site_id, name, inactivity_timeout_s, metadata,
                             mqtt_username, mqtt_password_hash, auto_registered)
        VALUES (%(id)s, %(kind)s, %(site)s, %(name)s, %(timeout)s, %(meta)s, %(id)s, %(hash)s, false)
        ON CONFLICT (device_id) DO UPDATE
           SET kind = EXCLUDED.kind, site_id = EXCLUDED.site_id, name = EXCLUDED.name,
               inactivity_timeout_s = EXCLUDED.inactivity_timeout_s, metadata = EXCLUDED.metadata,
               mqtt_username = EXCLUDED.mqtt_username, mqtt_password_hash = EXCLUDED.mqtt_password_hash,
               auto_registered = false, registered_at = now()
         WHERE devices.auto_registered
        RETURNING device_id""",
        {"id": device_id, "kind": kind, "site": site_id, "name": name, "timeout": inactivity_timeout_s,
         "meta": Jsonb(metadata), "hash": password_hash})
    return await cur.fetchone() is not None


async def set_device_password(conn: AsyncConnection, device_id: str, password_hash: str) -> bool:
    cur = await conn.execute(
        "UPDATE devices SET mqtt_username = device_id, mqtt_password_hash = %s WHERE device_id = %s",
        (password_hash, device_id))
    return cur.rowcount == 1


async def set_service_password(conn: AsyncConnection, username: str, role: str, password_hash: str) -> None:
    await conn.execute(
        "INSERT INTO mqtt_service_users (username, role, password_hash) VALUES (%s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET role = EXCLUDED.role, password_hash = EXCLUDED.password_hash",
        (username, role, password_hash))


async def username_taken_by_device(conn: AsyncConnection, username: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM devices WHERE mqtt_username = %s", (username,))
    return await cur.fetchone() is not None


async def username_taken_by_service(conn: AsyncConnection, username: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM mqtt_service_users WHERE username = %s", (username,))
    return await cur.fetchone() is not None


async def broker_accounts(conn: AsyncConnection) -> list[tuple[str, str, str | None]]:
    """(username, password hash, service role or None for a device) of every account the broker knows."""
    cur = await conn.execute(
        "SELECT mqtt_username, mqtt_password_hash, NULL FROM devices"
        " WHERE mqtt_username IS NOT NULL AND mqtt_password_hash IS NOT NULL"
        " UNION ALL SELECT username, password_hash, role FROM mqtt_service_users")
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


_BROKER_FILES_LOCK = 0x5A417E2  # advisory lock id: one writer of the broker's auth files at a time


@contextlib.asynccontextmanager
async def broker_files_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    await conn.execute("SELECT pg_advisory_lock(%s)", (_BROKER_FILES_LOCK,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_BROKER_FILES_LOCK,))
