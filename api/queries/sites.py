"""Sites: districts, estates, sorting points, stations, depots, plants and lines (a tree)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

_COLUMNS = "site_id, kind, name, parent_id, timezone, latitude, longitude, params, created_at"

# The site and every site below it; used wherever "at this site" means "in this part of the tree".
SUBTREE = """
    WITH RECURSIVE subtree AS (
        SELECT site_id FROM sites WHERE site_id = %(site_id)s
        UNION
        SELECT s.site_id FROM sites s JOIN subtree t ON s.parent_id = t.site_id
    )"""


async def list_sites(conn: AsyncConnection, *, kind: str | None, parent_id: str | None, q: str | None,
                     after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_COLUMNS} FROM sites"
        " WHERE (%(kind)s::text IS NULL OR kind = %(kind)s)"
        "   AND (%(parent)s::text IS NULL OR parent_id = %(parent)s)"
        "   AND (%(q)s::text IS NULL OR name ILIKE '%%' || %(q)s || '%%' OR site_id ILIKE '%%' || %(q)s || '%%')"
        "   AND (%(after)s::text IS NULL OR site_id > %(after)s)"
        " ORDER BY site_id LIMIT %(limit)s",
        {"kind": kind, "parent": parent_id, "q": escape_like(q), "after": after, "limit": limit})
    return await cur.fetchall()


def escape_like(text: str | None) -> str | None:
    # a user's '%' or '_' is a character to find, not a wildcard
    if text is None:
        return None
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def get_site(conn: AsyncConnection, site_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM sites WHERE site_id = %s", (site_id,))
    return await cur.fetchone()


async def site_counts(conn: AsyncConnection, site_id: str) -> dict[str, Any]:
    """Children, devices by kind and open alerts in the site's subtree."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        SUBTREE + """
        SELECT (SELECT count(*) FROM sites WHERE parent_id = %(site_id)s) AS child_count,
               (SELECT coalesce(jsonb_object_agg(kind, n), '{}'::jsonb) FROM (
                    SELECT kind, count(*) AS n FROM devices
                    WHERE site_id IN (SELECT site_id FROM subtree) GROUP BY kind) k) AS device_counts,
               (SELECT count(*) FROM alerts
                 WHERE state <> 'resolved' AND site_id IN (SELECT site_id FROM subtree)) AS open_alerts
        """, {"site_id": site_id})
    row = await cur.fetchone()
    assert row is not None
    return row


async def site_exists(conn: AsyncConnection, site_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM sites WHERE site_id = %s", (site_id,))
    return await cur.fetchone() is not None


async def site_chain(conn: AsyncConnection, site_id: str) -> list[dict[str, Any]]:
    """The site and its ancestors, root first (the order parameters merge in: the nearest site wins). A cycle in
    parent ids ends the walk instead of looping."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        WITH RECURSIVE chain AS (
            SELECT site_id, kind, parent_id, timezone, params, 0 AS depth, ARRAY[site_id] AS seen
              FROM sites WHERE site_id = %(site_id)s
            UNION ALL
            SELECT s.site_id, s.kind, s.parent_id, s.timezone, s.params, c.depth + 1, c.seen || s.site_id
              FROM sites s JOIN chain c ON s.site_id = c.parent_id
             WHERE NOT s.site_id = ANY(c.seen)
        )
        SELECT site_id, kind, parent_id, timezone, params FROM chain ORDER BY depth DESC""", {"site_id": site_id})
    return await cur.fetchall()


async def device_kinds_below(conn: AsyncConnection, site_id: str) -> list[str]:
    """Kinds of the devices at the site and below it."""
    cur = await conn.execute(SUBTREE + " SELECT DISTINCT kind FROM devices WHERE site_id IN (SELECT site_id FROM"
                                       " subtree) ORDER BY kind", {"site_id": site_id})
    return [r[0] for r in await cur.fetchall()]


async def add_sites(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Register sites (``site_id``, ``kind``, ``name``, ``parent_id``, ``timezone``, ``latitude``, ``longitude``,
    ``params``), parents before children. A site already registered keeps its row: its name, place and the params an
    operator may have set since."""
    cur = conn.cursor()
    await cur.executemany(
        "INSERT INTO sites (site_id, kind, name, parent_id, timezone, latitude, longitude, params)"
        " VALUES (%(site_id)s, %(kind)s, %(name)s, %(parent_id)s, %(timezone)s, %(latitude)s, %(longitude)s,"
        "         %(params)s) ON CONFLICT (site_id) DO NOTHING",
        [{**r, "params": Jsonb(r.get("params") or {})} for r in rows])


async def attach_unplaced_devices(conn: AsyncConnection, site_of: dict[str, str]) -> int:
    """Put each device that has no site yet at the one given (devices of an earlier registration, made before their
    sites existed); a device already at a site stays there. Returns how many moved."""
    cur = await conn.execute(
        "UPDATE devices d SET site_id = m.site_id FROM unnest(%s::text[], %s::text[]) AS m (device_id, site_id)"
        " WHERE d.device_id = m.device_id AND d.site_id IS NULL AND EXISTS (SELECT 1 FROM sites s"
        "                                                                  WHERE s.site_id = m.site_id)",
        (list(site_of), list(site_of.values())))
    return cur.rowcount


async def sorting_points_below(conn: AsyncConnection, site_id: str) -> list[dict[str, Any]]:
    """The sorting points at or below the site, with their names, parents and params."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(SUBTREE + " SELECT site_id, name, parent_id, params FROM sites WHERE kind = 'sorting_point'"
                                " AND site_id IN (SELECT site_id FROM subtree) ORDER BY site_id",
                      {"site_id": site_id})
    return await cur.fetchall()
