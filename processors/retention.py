"""Retention with ``drop_chunks`` (whole chunks, cheap) and plain deletes for ordinary tables.

Dropping a chunk needs the hypertable's owner; the scheduled processor's role (sanitel_processor) is not, so it calls
``sanitel_drop_chunks`` (migration 0070), which runs as the owner for these tables only and never for data younger
than 12 hours."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from sanitel.db import one_row

RAW_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
              "cems_readings", "truck_telemetry", "truck_events", "weighbridge_tickets")
ROLLUP_TABLES = ("sweeper_telemetry_5m", "station_telemetry_5m", "cems_averages")
HEARTBEAT_RETENTION = timedelta(days=7)


def apply_retention(conn: psycopg.Connection, *, raw: timedelta, rollups: timedelta,
                    dead_letters: timedelta, now: datetime) -> dict[str, int]:
    """Drop chunks older than the limits, counted back from ``now`` (the pass's clock); returns how many
    chunks (or dead letters) went, per table."""
    dropped: dict[str, int] = {}
    for tables, keep in ((RAW_TABLES, raw), (ROLLUP_TABLES, rollups)):
        for table in tables:
            dropped[table] = one_row(conn.execute("SELECT sanitel_drop_chunks(%s, %s::timestamptz)",
                                                  (table, now - keep)))[0]
    cur = conn.execute("DELETE FROM dead_letters WHERE received_at < %s", (now - dead_letters,))
    dropped["dead_letters"] = cur.rowcount
    # payloads no dead letter refers to any more (the age test keeps one a collector is writing a letter for)
    cur = conn.execute("DELETE FROM dead_letter_payloads p WHERE p.last_received_at < %s AND NOT EXISTS "
                       "(SELECT 1 FROM dead_letters d WHERE d.payload_sha256 = p.sha256)", (now - dead_letters,))
    dropped["dead_letter_payloads"] = cur.rowcount
    # instances of a stage that stopped reporting long ago (a replaced host, each `maintain --once` from cron):
    # judging a stage uses its newest instance only, so these rows say nothing any more
    cur = conn.execute("DELETE FROM stage_heartbeats WHERE last_pass_at < %s", (now - HEARTBEAT_RETENTION,))
    dropped["stage_heartbeats"] = cur.rowcount
    return dropped
