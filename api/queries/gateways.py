"""Gateways: the registry of gateways, the devices behind each one, and their broker credentials."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

_SELECT = """
    SELECT g.gateway_id, g.name, g.site_id, g.registered_at, g.mqtt_password_hash IS NOT NULL AS has_credentials,
           coalesce((SELECT array_agg(d.device_id ORDER BY d.device_id) FROM devices d
                      WHERE d.gateway_id = g.gateway_id), '{}') AS devices
    FROM gateways g"""


async def list_gateways(conn: AsyncConnection, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_SELECT + " WHERE (%(after)s::text IS NULL OR g.gateway_id > %(after)s)"
                                " ORDER BY g.gateway_id LIMIT %(limit)s", {"after": after, "limit": limit})
    return await cur.fetchall()


async def get_gateway(conn: AsyncConnection, gateway_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_SELECT + " WHERE g.gateway_id = %s", (gateway_id,))
    return await cur.fetchone()


async def gateway_exists(conn: AsyncConnection, gateway_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM gateways WHERE gateway_id = %s", (gateway_id,))
    return await cur.fetchone() is not None


async def missing_devices(conn: AsyncConnection, device_ids: list[str]) -> list[str]:
    """The ids among ``device_ids`` that are not registered devices, in the order given."""
    cur = await conn.execute(
        "SELECT i.id FROM unnest(%s::text[]) WITH ORDINALITY AS i(id, n)"
        " WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.device_id = i.id) ORDER BY i.n", (device_ids,))
    return [str(r[0]) for r in await cur.fetchall()]


async def insert_gateway(conn: AsyncConnection, *, gateway_id: str, name: str | None, site_id: str | None,
                         password_hash: str) -> bool:
    """False when the gateway exists (registering twice is a conflict, not a silent credential reset)."""
    cur = await conn.execute(
        "INSERT INTO gateways (gateway_id, name, site_id, mqtt_password_hash) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (gateway_id) DO NOTHING RETURNING gateway_id", (gateway_id, name, site_id, password_hash))
    return await cur.fetchone() is not None


async def set_devices(conn: AsyncConnection, gateway_id: str, device_ids: list[str]) -> None:
    """Exactly ``device_ids`` are behind the gateway afterwards (a device listed is moved from any other)."""
    await conn.execute("UPDATE devices SET gateway_id = NULL WHERE gateway_id = %s AND device_id <> ALL(%s)",
                       (gateway_id, device_ids))
    await add_devices(conn, gateway_id, device_ids)


async def add_devices(conn: AsyncConnection, gateway_id: str, device_ids: list[str]) -> None:
    await conn.execute("UPDATE devices SET gateway_id = %s WHERE device_id = ANY(%s)"
                       " AND gateway_id IS DISTINCT FROM %s", (gateway_id, device_ids, gateway_id))


async def remove_devices(conn: AsyncConnection, gateway_id: str, device_ids: list[str]) -> list[str]:
    """Takes the devices from behind the gateway; returns those of ``device_ids`` that were not behind it."""
    cur = await conn.execute("UPDATE devices SET gateway_id = NULL WHERE gateway_id = %s AND device_id = ANY(%s)"
                             " RETURNING device_id", (gateway_id, device_ids))
    removed = {str(r[0]) for r in await cur.fetchall()}
    return [d for d in device_ids if d not in removed]


async def set_gateway_password(conn: AsyncConnection, gateway_id: str, password_hash: str) -> bool:
    cur = await conn.execute("UPDATE gateways SET mqtt_password_hash = %s WHERE gateway_id = %s",
                             (password_hash, gateway_id))
    return cur.rowcount == 1


async def delete_gateway(conn: AsyncConnection, gateway_id: str) -> bool:
    """Deletes the gateway; its devices stay registered, behind no gateway (ON DELETE SET NULL)."""
    cur = await conn.execute("DELETE FROM gateways WHERE gateway_id = %s", (gateway_id,))
    return cur.rowcount == 1
