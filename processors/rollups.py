"""5-minute rollups maintained by our own processor (Apache edition: no continuous aggregates).

A rollup table ``<table>_5m`` has ``device_id, bucket, n`` and columns ``<column>_<avg|min|max>``; the
SQL is derived from those names, so the migration is the one definition. Each pass recomputes every
(device, bucket) that received rows since the watermark — found by ``stored_at``, the time a row was
committed — so late and out-of-order data, and spool replays, land in their buckets.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

ROLLUP_SOURCES = ("sweeper_telemetry", "station_telemetry")
BUCKET = "5 minutes"
# rows stored in a transaction that began before now and commits later must not slip under the watermark
COMMIT_SLACK = timedelta(minutes=2)
_AGGREGATES = ("avg", "min", "max")


def rollup_columns(conn: psycopg.Connection, source: str) -> list[tuple[str, str, str]]:
    """(rollup column, aggregate, source column) for every aggregated column of ``<source>_5m``."""
    names = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (f"{source}_5m",))]
    out = []
    for name in names:
        column, _, aggregate = name.rpartition("_")
        if aggregate in _AGGREGATES:
            out.append((name, aggregate, column))
    return out


def refresh(conn: psycopg.Connection, source: str, since: datetime, until: datetime) -> int:
    """Recompute the buckets that received rows stored in (since, until]; returns buckets written."""
    columns = rollup_columns(conn, source)
    targets = ", ".join(name for name, _, _ in columns)
    aggregates = ", ".join(f"{agg}(r.{col})" for _, agg, col in columns)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name, _, _ in columns)
    cur = conn.execute(
        f"""
        WITH changed AS (
            SELECT DISTINCT device_id, time_bucket(%(bucket)s::interval, ts) AS bucket
            FROM {source} WHERE stored_at > %(since)s AND stored_at <= %(until)s
        )
        INSERT INTO {source}_5m (device_id, bucket, n, {targets})
        SELECT r.device_id, c.bucket, count(*), {aggregates}
        FROM changed c
        JOIN {source} r ON r.device_id = c.device_id AND r.ts >= c.bucket
                       AND r.ts < c.bucket + %(bucket)s::interval
        GROUP BY r.device_id, c.bucket
        ON CONFLICT (device_id, bucket) DO UPDATE SET n = EXCLUDED.n, {updates}
        """,
        {"bucket": BUCKET, "since": since, "until": until},
    )
    return cur.rowcount
