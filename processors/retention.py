"""Retention with ``drop_chunks`` (whole chunks, cheap) and plain deletes for ordinary tables."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

RAW_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
              "cems_readings")
ROLLUP_TABLES = ("sweeper_telemetry_5m", "station_telemetry_5m", "cems_averages")


def apply_retention(conn: psycopg.Connection, *, raw: timedelta, rollups: timedelta,
                    dead_letters: timedelta, now: datetime) -> dict[str, int]:
    """Drop chunks older than the limits, counted back from ``now`` (the pass's clock); returns how many
    chunks (or dead letters) went, per table."""
    dropped: dict[str, int] = {}
    for tables, keep in ((RAW_TABLES, raw), (ROLLUP_TABLES, rollups)):
        for table in tables:
            rows = conn.execute("SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
                                (table, now - keep)).fetchall()
            dropped[table] = len(rows)
    cur = conn.execute("DELETE FROM dead_letters WHERE received_at < %s", (now - dead_letters,))
    dropped["dead_letters"] = cur.rowcount
    # payloads no dead letter refers to any more (the age test keeps one a collector is writing a letter for)
    cur = conn.execute("DELETE FROM dead_letter_payloads p WHERE p.last_received_at < %s AND NOT EXISTS "
                       "(SELECT 1 FROM dead_letters d WHERE d.payload_sha256 = p.sha256)", (now - dead_letters,))
    dropped["dead_letter_payloads"] = cur.rowcount
    return dropped
