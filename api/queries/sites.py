"""Sites: districts, estates, sorting points, stations, depots, plants and lines (a tree)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

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
