"""Devices: the registry, their last-seen state and their broker credentials; the broker's accounts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.api.queries.sites import SUBTREE, escape_like
from sanitel.broker_auth import GATEWAY, BrokerAccount

# Online: heard from (receive time) within the device's own inactivity timeout, by the database's clock; with
# ``d`` the devices row and ``s`` its device_last_seen row (NULL s: never heard from).
HEARD_WITHIN_TIMEOUT = "s.last_received > now() - make_interval(secs => d.inactivity_timeout_s)"

_SELECT = f"""
    SELECT d.device_id, d.kind, d.site_id, d.name, d.inactivity_timeout_s, d.metadata, d.auto_registered,
           d.registered_at, d.mqtt_password_hash IS NOT NULL AS has_credentials, d.gateway_id,
           d.hj212_password_hash IS NOT NULL AS has_hj212_password,
           s.last_ts, s.last_received,
           CASE WHEN s.last_received IS NULL THEN NULL
                ELSE {HEARD_WITHIN_TIMEOUT} END AS online
    FROM devices d LEFT JOIN device_last_seen s USING (device_id)"""


async def list_devices(conn: AsyncConnection, *, kind: str | None, site_id: str | None, online: bool | None,
                       q: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        SUBTREE + _SELECT + f"""
        WHERE (%(kind)s::text IS NULL OR d.kind = %(kind)s)
          AND (%(site_id)s::text IS NULL OR d.site_id IN (SELECT site_id FROM subtree))
          AND (%(q)s::text IS NULL OR d.device_id ILIKE %(q)s || '%%' OR d.name ILIKE '%%' || %(q)s || '%%')
          AND (%(after)s::text IS NULL OR d.device_id > %(after)s)
          AND (%(online)s::boolean IS NULL OR coalesce({HEARD_WITHIN_TIMEOUT}, false) = %(online)s)
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
                          password_hash: str, gateway_id: str | None = None,
                          hj212_password_hash: str | None = None) -> bool:
    """Insert the device, or claim one the collector auto-registered. False when an admin already
    registered it (registering twice is a conflict, not a silent credential reset)."""
    cur = await conn.execute(
        """
        INSERT INTO devices (device_id, kind, site_id, name, inactivity_timeout_s, metadata,
                             mqtt_username, mqtt_password_hash, auto_registered, gateway_id, hj212_password_hash)
        VALUES (%(id)s, %(kind)s, %(site)s, %(name)s, %(timeout)s, %(meta)s, %(id)s, %(hash)s, false,
                %(gateway)s, %(hj212)s)
        ON CONFLICT (device_id) DO UPDATE
           SET kind = EXCLUDED.kind, site_id = EXCLUDED.site_id, name = EXCLUDED.name,
               inactivity_timeout_s = EXCLUDED.inactivity_timeout_s, metadata = EXCLUDED.metadata,
               mqtt_username = EXCLUDED.mqtt_username, mqtt_password_hash = EXCLUDED.mqtt_password_hash,
               auto_registered = false, registered_at = now(),
               -- what an admin set on the auto-registered row before claiming it stays unless given anew
               gateway_id = coalesce(EXCLUDED.gateway_id, devices.gateway_id),
               hj212_password_hash = coalesce(EXCLUDED.hj212_password_hash, devices.hj212_password_hash)
         WHERE devices.auto_registered
        RETURNING device_id""",
        {"id": device_id, "kind": kind, "site": site_id, "name": name, "timeout": inactivity_timeout_s,
         "meta": Jsonb(metadata), "hash": password_hash, "gateway": gateway_id, "hj212": hj212_password_hash})
    return await cur.fetchone() is not None


async def set_hj212_password(conn: AsyncConnection, device_id: str, password_hash: str) -> bool:
    """Store an HJ 212 password hash; the registry NOTIFY tells the collectors within seconds."""
    cur = await conn.execute("UPDATE devices SET hj212_password_hash = %s WHERE device_id = %s",
                             (password_hash, device_id))
    return cur.rowcount == 1


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


async def username_owner(conn: AsyncConnection, username: str) -> str | None:
    """'device', 'gateway' or 'service' when ``username`` is taken in the broker's one username namespace (a
    device's id, even one never given credentials, is its username); None when it is free."""
    cur = await conn.execute(
        "SELECT 'device' FROM devices WHERE device_id = %(u)s OR mqtt_username = %(u)s"
        " UNION ALL SELECT 'gateway' FROM gateways WHERE gateway_id = %(u)s"
        " UNION ALL SELECT 'service' FROM mqtt_service_users WHERE username = %(u)s LIMIT 1", {"u": username})
    row = await cur.fetchone()
    return str(row[0]) if row else None


_USERNAMES_LOCK = 0x5A417E3  # advisory lock id: taking a broker username (check, then insert) one at a time


async def lock_usernames(conn: AsyncConnection) -> None:
    """Inside a transaction: until it ends, nobody else checks-and-takes a broker username (a device and a
    gateway of one name registered at once would otherwise both pass ``username_owner``)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_USERNAMES_LOCK,))


async def broker_accounts(conn: AsyncConnection) -> list[BrokerAccount]:
    """Every account the broker knows: devices (with their kind), gateways and service accounts."""
    cur = await conn.execute(
        "SELECT mqtt_username, mqtt_password_hash, NULL, kind FROM devices"
        " WHERE mqtt_username IS NOT NULL AND mqtt_password_hash IS NOT NULL"
        " UNION ALL SELECT gateway_id, mqtt_password_hash, NULL, %s FROM gateways"
        " WHERE mqtt_password_hash IS NOT NULL"
        " UNION ALL SELECT username, password_hash, role, NULL FROM mqtt_service_users", (GATEWAY,))
    return [BrokerAccount(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]


_BROKER_FILES_LOCK = 0x5A417E2  # advisory lock id: one writer of the broker's auth files at a time


@contextlib.asynccontextmanager
async def broker_files_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    await conn.execute("SELECT pg_advisory_lock(%s)", (_BROKER_FILES_LOCK,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_BROKER_FILES_LOCK,))
