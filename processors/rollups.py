"""5-minute rollups maintained by our own processor (Apache edition: no continuous aggregates).

A rollup table ``<table>_5m`` has ``device_id, bucket, n`` and columns ``<column>_<avg|min|max>``; the
SQL is derived from those names, so the migration is the one definition. Each pass recomputes every
(device, bucket) that received rows since the watermark — found by ``stored_at``, the start of the
transaction that wrote the row — so late and out-of-order data, back-fills and spool replays land in their
buckets (in device time) at the next pass.

The watermark is a promise the API relies on (api/rollups.py): every row stored up to it is in its bucket.
So a pass only moves it to ``settled_upto``: the start of the oldest write transaction still open (its rows
will commit with an older ``stored_at`` than anything written after it), or the database's clock when none
is — a row is rolled up by the first pass after it commits, within one maintenance interval. When other
sessions are hidden from this role (no pg_read_all_stats), ``COMMIT_SLACK`` is assumed instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from sanitel.db import one_row

ROLLUP_SOURCES = ("sweeper_telemetry", "station_telemetry")
BUCKET = "5 minutes"
# rows stored in a transaction that began before now and commits later must not slip under the watermark
COMMIT_SLACK = timedelta(minutes=2)
_AGGREGATES = ("avg", "min", "max")
_TICK = timedelta(microseconds=1)  # timestamptz resolution


def settled_upto(conn: psycopg.Connection, now: datetime) -> datetime:
    """Rows stored (transaction start) up to this instant have committed, so a pass may move its watermark
    here: just before the oldest other open transaction's start, else the database's clock — never after
    ``now`` (the pass's clock) nor before the database's clock − ``COMMIT_SLACK`` (a transaction open longer
    is not waited for, as before). The bounds are the database's clock, which stamps ``stored_at``: a
    processor host whose clock runs ahead cannot move the watermark past rows not written yet. (The alert
    evaluator does the same for its passes: alerts/queries.py ``safe_upto``.)"""
    row: tuple[datetime, datetime | None, int] = one_row(conn.execute(
        """SELECT clock_timestamp(),
                  min(xact_start) FILTER (WHERE xact_start IS NOT NULL),
                  count(*) FILTER (WHERE state IS NULL)
           FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"""))
    db_now, oldest, hidden = row
    if hidden:
        return min(now, db_now) - COMMIT_SLACK
    bound: datetime = oldest if oldest is not None and oldest < db_now else db_now
    # strictly before it: a pass takes (watermark, until], and a row stored at the open transaction's very
    # start is that transaction's (microsecond clock)
    return min(now, max(bound - _TICK, db_now - COMMIT_SLACK))


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
