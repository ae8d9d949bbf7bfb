"""Bin deposits per household (RFID card) or per sorting point, with totals by waste category."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

Scope = Literal["household", "point"]
# The column each scope filters on; both are indexed together with ts.
_COLUMN = {"household": "household_id", "point": "point_id"}


def _where(scope: Scope) -> sql.Composable:
    return sql.SQL("{} = %(id)s AND ts >= %(start)s AND ts < %(end)s").format(sql.Identifier(_COLUMN[scope]))


async def deposit_totals(conn: AsyncConnection, scope: Scope, ident: str, start: datetime, end: datetime
                         ) -> tuple[list[dict[str, Any]], int]:
    """(per-category totals, distinct households) over the whole range."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL("SELECT category, count(*)::int AS deposits, sum(weight_kg)::double precision AS weight_kg"
                " FROM bin_deposits WHERE {} GROUP BY category ORDER BY category").format(_where(scope)),
        {"id": ident, "start": start, "end": end})
    totals = await cur.fetchall()
    cur2 = await conn.execute(
        sql.SQL("SELECT count(DISTINCT household_id) FROM bin_deposits WHERE {}").format(_where(scope)),
        {"id": ident, "start": start, "end": end})
    row = await cur2.fetchone()
    return totals, int(row[0]) if row else 0


async def deposit_items(conn: AsyncConnection, scope: Scope, ident: str, start: datetime, end: datetime,
                        after: tuple[datetime, str, int] | None, limit: int) -> list[dict[str, Any]]:
    """Deposits newest first, keyset-paged on (ts, device_id, seq)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL("SELECT device_id, ts, seq, point_id, household_id, category, weight_kg::double precision"
                " AS weight_kg FROM bin_deposits WHERE {}"
                "   AND (%(a_ts)s::timestamptz IS NULL OR (ts, device_id, seq) < (%(a_ts)s, %(a_dev)s, %(a_seq)s))"
                " ORDER BY ts DESC, device_id DESC, seq DESC LIMIT %(limit)s").format(_where(scope)),
        {"id": ident, "start": start, "end": end, "limit": limit,
         "a_ts": after[0] if after else None, "a_dev": after[1] if after else None,
         "a_seq": after[2] if after else None})
    return await cur.fetchall()
