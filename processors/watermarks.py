"""The scheduled processor's watermarks: how far each of its jobs has got (``maintenance_watermarks``)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

NEVER = datetime(2000, 1, 1, tzinfo=UTC)  # before any reading the system accepts


def read_watermark(conn: psycopg.Connection, name: str) -> datetime:
    row = conn.execute("SELECT watermark FROM maintenance_watermarks WHERE name = %s", (name,)).fetchone()
    return row[0] if row else NEVER


def store_watermark(conn: psycopg.Connection, name: str, value: datetime) -> None:
    conn.execute("INSERT INTO maintenance_watermarks (name, watermark) VALUES (%s, %s) ON CONFLICT (name) "
                 "DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()", (name, value))
