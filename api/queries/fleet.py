"""Fleet positions: every device of a kind with its newest position, state of charge and online state, in one
statement (the console's fleet plot, issue 14).

The newest row of each device is one backward probe of the reading table's unique ``(device_id, ts, seq)`` index
per device (migration 0082 dropped the ``(device_id, ts DESC)`` one: a B-tree is read backwards as well), as
``queries.readings.latest_of_devices`` does; tests/integration/test_api_fleet.py checks the plan with EXPLAIN.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from sanitel.api.catalog import metric_for
from sanitel.api.queries.devices import HEARD_WITHIN_TIMEOUT

# Online as /devices says it; never heard from: offline here (the plot greys it).
_ONLINE = f"coalesce({HEARD_WITHIN_TIMEOUT}, false)"


def position_columns(kind: str) -> tuple[str, str | None] | None:
    """(table, state-of-charge column or None) of the kind's reading type that carries lat/lon; None when the
    kind has none. Names come from the wire contract's catalogue only, never from the request."""
    lat, lon = metric_for(kind, "lat"), metric_for(kind, "lon")
    if lat is None or lon is None or lat.table != lon.table:
        return None
    soc = metric_for(kind, "soc_pct")
    return lat.table, soc.name if soc is not None and soc.table == lat.table else None


def positions_query(kind: str) -> sql.Composed:
    found = position_columns(kind)
    newest: sql.Composable
    if found is None:  # no positions for this kind: its devices, unplaced
        newest = sql.SQL("LEFT JOIN LATERAL (SELECT NULL::float8 AS lat, NULL::float8 AS lon, NULL::float8 AS soc_pct,"
                         " NULL::timestamptz AS ts) r ON true")
    else:
        table, soc = found
        soc_expr = sql.SQL("t.{}::float8").format(sql.Identifier(soc)) if soc else sql.SQL("NULL::float8")
        newest = sql.SQL(
            "LEFT JOIN LATERAL (SELECT t.lat::float8 AS lat, t.lon::float8 AS lon, {soc} AS soc_pct, t.ts"
            "                   FROM {table} t WHERE t.device_id = d.device_id"
            "                   ORDER BY t.ts DESC LIMIT 1) r ON true").format(soc=soc_expr,
                                                                               table=sql.Identifier(table))
    return sql.SQL(
        "SELECT d.device_id, d.name, d.site_id, r.lat, r.lon, r.soc_pct, r.ts AS position_ts,"
        "       s.last_received AS last_seen, " + _ONLINE + " AS online"
        " FROM devices d LEFT JOIN device_last_seen s USING (device_id) {newest}"
        " WHERE d.kind = %(kind)s ORDER BY d.device_id").format(newest=newest)


async def positions(conn: AsyncConnection, kind: str) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(positions_query(kind), {"kind": kind})
    return await cur.fetchall()
