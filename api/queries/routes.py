"""Planned truck routes (table ``truck_routes``, migration 0083) and the registry facts a plan is checked against."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

_COLUMNS = "route_id, truck_id, shift_start, shift_end, points, tip_site_id, valid_from, valid_to, updated_at"


async def get_route(conn: AsyncConnection, route_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM truck_routes WHERE route_id = %s", (route_id,))
    return await cur.fetchone()


async def list_routes(conn: AsyncConnection, *, truck_id: str | None, after: str | None,
                      limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM truck_routes"
        " WHERE (%(truck)s::text IS NULL OR truck_id = %(truck)s)"
        "   AND (%(after)s::text IS NULL OR route_id > %(after)s)"
        " ORDER BY route_id LIMIT %(limit)s",
        {"truck": truck_id, "after": after, "limit": limit})
    return await cur.fetchall()


async def put_route(conn: AsyncConnection, route_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Create or replace a route; returns the stored row."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"INSERT INTO truck_routes ({_COLUMNS})"
        " VALUES (%(route_id)s, %(truck_id)s, %(shift_start)s, %(shift_end)s, %(points)s, %(tip_site_id)s,"
        "         %(valid_from)s, %(valid_to)s, now())"
        " ON CONFLICT (route_id) DO UPDATE SET truck_id = excluded.truck_id, shift_start = excluded.shift_start,"
        "   shift_end = excluded.shift_end, points = excluded.points, tip_site_id = excluded.tip_site_id,"
        "   valid_from = excluded.valid_from, valid_to = excluded.valid_to, updated_at = excluded.updated_at"
        f" RETURNING {_COLUMNS}",
        {"route_id": route_id, **plan})
    row = await cur.fetchone()
    assert row is not None  # INSERT … RETURNING always returns the row
    return row


async def site_kinds(conn: AsyncConnection, site_ids: list[str]) -> dict[str, str]:
    """site id → kind, for those of ``site_ids`` that exist."""
    cur = await conn.execute("SELECT site_id, kind FROM sites WHERE site_id = ANY(%s)", (site_ids,))
    return {site_id: kind for site_id, kind in await cur.fetchall()}
