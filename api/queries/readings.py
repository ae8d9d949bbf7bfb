"""Readings: the newest reading per device, and the history of one metric (raw or time-bucketed).

Table and column names come from ``api.catalog`` (the wire contract) and are quoted with psycopg.sql;
every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from sanitel.api.catalog import Metric
from sanitel.api.rollups import FIVE_MINUTES, MinuteRollup, RollupSource

# Columns every reading table has (or bookkeeping, like the evaluator's stored_at); the rest of a row is
# the reading's values.
COMMON_COLUMNS = frozenset({"device_id", "ts", "seq", "received_at", "extra", "stored_at"})

_AGGREGATES = {
    "avg": "avg({col})",
    "min": "min({col})",
    "max": "max({col})",
    "sum": "sum({col})",
    "count": "count({col})",
    "first": "first({col}, ts)",
    "last": "last({col}, ts)",
}


async def latest_of_device(conn: AsyncConnection, table: str, device_id: str) -> dict[str, Any] | None:
    """The newest row (by device time) of one device in one reading table."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL("SELECT * FROM {} WHERE device_id = %s ORDER BY ts DESC LIMIT 1").format(sql.Identifier(table)),
        (device_id,))
    return await cur.fetchone()


async def latest_of_devices(conn: AsyncConnection, table: str, device_ids: list[str]) -> list[dict[str, Any]]:
    """The newest row of each of several devices in one table (one index probe per device)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL("SELECT r.* FROM unnest(%s::text[]) AS d (device_id)"
                " CROSS JOIN LATERAL (SELECT * FROM {} t WHERE t.device_id = d.device_id"
                "                     ORDER BY t.ts DESC LIMIT 1) r").format(sql.Identifier(table)),
        (device_ids,))
    return await cur.fetchall()


def _value_expr(metric: Metric) -> sql.Composable:
    col = sql.Identifier(metric.name)
    # booleans aggregate as 0/1, so avg is "fraction of the time it was on"
    return sql.SQL("{}::int").format(col) if metric.is_bool else col


def _filters(metric: Metric) -> sql.Composable:
    if metric.table == "cems_readings":
        return sql.SQL(" AND data_kind = %(data_kind)s")
    return sql.SQL("")


async def bucketed_history(conn: AsyncConnection, metric: Metric, device_id: str, start: datetime, end: datetime,
                           bucket: timedelta, aggregate: str, timezone: str, data_kind: str | None
                           ) -> list[dict[str, Any]]:
    """One point per non-empty bucket: the aggregate of the metric and how many readings had a value.

    Buckets are aligned in ``timezone`` (so a 1 d bucket is a local calendar day)."""
    value = sql.SQL(_AGGREGATES[aggregate]).format(col=_value_expr(metric))
    query = sql.SQL(
        "SELECT time_bucket(%(bucket)s, ts, %(tz)s) AS ts, ({value})::double precision AS value,"
        "       count({col})::int AS count"
        " FROM {table} WHERE device_id = %(device_id)s AND ts >= %(start)s AND ts < %(end)s{filters}"
        " GROUP BY 1 ORDER BY 1").format(
            value=value, col=sql.Identifier(metric.name), table=sql.Identifier(metric.table),
            filters=_filters(metric))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, {"bucket": bucket, "tz": timezone, "device_id": device_id, "start": start,
                              "end": end, "data_kind": data_kind or "rtd"})
    return await cur.fetchall()


async def raw_history(conn: AsyncConnection, metric: Metric, device_id: str, start: datetime, end: datetime,
                      after: tuple[datetime, int] | None, limit: int, data_kind: str | None
                      ) -> list[dict[str, Any]]:
    """Readings that have a value for the metric, oldest first, keyset-paged on (ts, seq)."""
    query = sql.SQL(
        "SELECT ts, seq, ({value})::double precision AS value, 1 AS count"
        " FROM {table} WHERE device_id = %(device_id)s AND ts >= %(start)s AND ts < %(end)s"
        "   AND {col} IS NOT NULL{filters}"
        "   AND (%(after_ts)s::timestamptz IS NULL OR (ts, seq) > (%(after_ts)s, %(after_seq)s))"
        " ORDER BY ts, seq LIMIT %(limit)s").format(
            value=_value_expr(metric), col=sql.Identifier(metric.name), table=sql.Identifier(metric.table),
            filters=_filters(metric))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, {"device_id": device_id, "start": start, "end": end, "limit": limit,
                              "after_ts": after[0] if after else None, "after_seq": after[1] if after else None,
                              "data_kind": data_kind or "rtd"})
    return await cur.fetchall()


async def rollup_history(conn: AsyncConnection, source: RollupSource, device_id: str, start: datetime,
                         end: datetime) -> list[dict[str, Any]]:
    """Points from a rollup table; empty when the rollup has nothing for this device and range."""
    query = sql.SQL(
        "SELECT period_start AS ts, {value}::double precision AS value, n_valid AS count, status"
        " FROM {table} WHERE device_id = %(device_id)s AND pollutant = %(pollutant)s AND period = %(period)s"
        "   AND standard = %(standard)s AND period_start >= %(start)s AND period_start < %(end)s"
        " ORDER BY period_start").format(value=sql.Identifier(source.value_column),
                                         table=sql.Identifier(source.table))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, {"device_id": device_id, "pollutant": source.pollutant, "period": source.period,
                              "standard": source.standard, "start": start, "end": end})
    return await cur.fetchall()


async def rollup_columns(conn: AsyncConnection, table: str) -> frozenset[str]:
    """Columns of a rollup table (empty when the table does not exist)."""
    cur = await conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    return frozenset(r[0] for r in await cur.fetchall())


async def rollup_boundary(conn: AsyncConnection, rollup: MinuteRollup, bucket: timedelta, timezone: str
                          ) -> tuple[datetime, datetime] | None:
    """(watermark, boundary) of a 5-minute rollup, None when it was never built.

    Every row stored up to the watermark (a ``stored_at`` time) is in the rollup. The boundary starts the
    live edge, read raw as a whole: one rollup bucket before the watermark (device clocks run a little
    behind their writes), aligned to the requested bucket so that the edge splits no bucket."""
    cur = await conn.execute(
        "SELECT watermark, time_bucket(%s, watermark - %s, %s) FROM maintenance_watermarks WHERE name = %s",
        (bucket, FIVE_MINUTES, timezone, rollup.watermark_name))
    row = await cur.fetchone()
    return (row[0], row[1]) if row else None


async def unrolled_buckets(conn: AsyncConnection, table: str, device_id: str, watermark: datetime,
                           start: datetime, end: datetime, bucket: timedelta, timezone: str) -> list[datetime]:
    """Starts of the requested buckets in [start, end) that hold a row stored after the watermark: the
    rollup does not have them yet. The spans of device time written since the watermark (``stored_spans``,
    one row per transaction: migration 0087), merged, are each probed for this device through the unique
    ``(device_id, ts, seq)`` index; only the rows stored after the watermark count."""
    cur = await conn.execute(
        sql.SQL("SELECT DISTINCT time_bucket(%(bucket)s, t.ts, %(tz)s)"
                " FROM (SELECT unnest(range_agg(spans)) AS span FROM stored_spans"
                "       WHERE table_name = %(table)s AND stored_at > %(watermark)s"
                "         AND spans && tstzrange(%(start)s, %(end)s)) AS late"
                " CROSS JOIN LATERAL (SELECT ts FROM {} WHERE device_id = %(device_id)s AND stored_at > %(watermark)s"
                "   AND ts >= lower(late.span) AND ts <= upper(late.span) AND ts >= %(start)s AND ts < %(end)s"
                "   OFFSET 0) AS t"  # not pulled up: probed once per span, never a scan of the whole request
                " ORDER BY 1").format(sql.Identifier(table)),
        {"bucket": bucket, "tz": timezone, "table": table, "device_id": device_id, "watermark": watermark,
         "start": start, "end": end})
    return [r[0] for r in await cur.fetchall()]


async def bucketed_history_in(conn: AsyncConnection, metric: Metric, device_id: str,
                              ranges: Sequence[tuple[datetime, datetime]], bucket: timedelta, aggregate: str,
                              timezone: str, data_kind: str | None) -> list[dict[str, Any]]:
    """``bucketed_history`` over several [start, end) ranges (sorted, disjoint) in one statement. The
    bounds of their hull let TimescaleDB exclude the chunks outside it; the ranges select within."""
    if not ranges:
        return []
    value = sql.SQL(_AGGREGATES[aggregate]).format(col=_value_expr(metric))
    within = sql.SQL(" OR ").join(
        sql.SQL("(ts >= {} AND ts < {})").format(sql.Placeholder(f"a{i}"), sql.Placeholder(f"b{i}"))
        for i in range(len(ranges)))
    bounds = {f"{k}{i}": v for i, (a, b) in enumerate(ranges) for k, v in (("a", a), ("b", b))}
    query = sql.SQL(
        "SELECT time_bucket(%(bucket)s, ts, %(tz)s) AS ts, ({value})::double precision AS value,"
        "       count({col})::int AS count"
        " FROM {table} WHERE device_id = %(device_id)s AND ts >= %(start)s AND ts < %(end)s AND ({within}){filters}"
        " GROUP BY 1 ORDER BY 1").format(
            value=value, col=sql.Identifier(metric.name), table=sql.Identifier(metric.table), within=within,
            filters=_filters(metric))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, {"bucket": bucket, "tz": timezone, "device_id": device_id, "start": ranges[0][0],
                              "end": ranges[-1][1], "data_kind": data_kind or "rtd", **bounds})
    return await cur.fetchall()


_REAGGREGATE = {
    # the average of averages, weighted by readings per 5-minute bucket
    "avg": "sum({col} * n) / nullif(sum(n) FILTER (WHERE {col} IS NOT NULL), 0)",
    "min": "min({col})",
    "max": "max({col})",
}


async def minute_rollup_history(conn: AsyncConnection, rollup: MinuteRollup, device_id: str, start: datetime,
                                end: datetime, bucket: timedelta, timezone: str) -> list[dict[str, Any]]:
    """Buckets re-aggregated from 5-minute rollups over [start, end); ``count`` is readings per bucket."""
    value = sql.SQL(_REAGGREGATE[rollup.aggregate]).format(col=sql.Identifier(rollup.column))
    query = sql.SQL(
        "SELECT time_bucket(%(bucket)s, bucket, %(tz)s) AS ts, ({value})::double precision AS value,"
        "       coalesce(sum(n) FILTER (WHERE {col} IS NOT NULL), 0)::int AS count"
        " FROM {table} WHERE device_id = %(device_id)s AND bucket >= %(start)s AND bucket < %(end)s"
        " GROUP BY 1 ORDER BY 1").format(
            value=value, col=sql.Identifier(rollup.column), table=sql.Identifier(rollup.table))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, {"bucket": bucket, "tz": timezone, "device_id": device_id,
                              "start": start, "end": end})
    return await cur.fetchall()
