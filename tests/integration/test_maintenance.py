"""Rollups (hand-computed), late data, retention and the single-instance lock of the scheduled processor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from sanitel.db import one_row
from sanitel.processors.maintenance import MAINTENANCE_LOCK, run_pass
from sanitel.settings import load_settings

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def insert_sweeper(conn: psycopg.Connection, device: str, ts: datetime, soc: float, speed: float,
                   seq: int = 0, stored_at: datetime | None = None) -> None:
    conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, soc_pct, speed_kmh, stored_at) "
                 "VALUES (%s, %s, %s, %s, %s, %s, coalesce(%s, now()))", (device, ts, seq, ts, soc, speed, stored_at))


def rollup(conn: psycopg.Connection, device: str, bucket: datetime) -> tuple[Any, ...] | None:
    return conn.execute("SELECT n, soc_pct_avg, soc_pct_min, soc_pct_max, speed_kmh_max FROM sweeper_telemetry_5m "
                        "WHERE device_id = %s AND bucket = %s", (device, bucket)).fetchone()


def test_rollups_are_hand_computable_and_late_data_recomputes_its_bucket(fresh_db: str) -> None:
    settings = load_settings(database_url=fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        stored = T0 + timedelta(hours=1)  # the readings were stored an hour after they were taken
        for i, (soc, speed) in enumerate([(80, 10), (79, 12), (78, 14)]):
            insert_sweeper(conn, "sw-1", T0 + timedelta(minutes=i), soc, speed, i, stored)
        insert_sweeper(conn, "sw-1", T0 + timedelta(minutes=6), 70, 5, 6, stored)
        later = stored + timedelta(minutes=5)  # past the commit slack
        assert run_pass(conn, settings, now=later).ran
        assert rollup(conn, "sw-1", T0) == (3, 79.0, 78.0, 80.0, 14.0)
        assert rollup(conn, "sw-1", T0 + timedelta(minutes=5)) == (1, 70.0, 70.0, 70.0, 5.0)
        # a late reading for the first bucket arrives after the pass
        insert_sweeper(conn, "sw-1", T0 + timedelta(minutes=4), 75, 20, 4, later + timedelta(minutes=1))
        assert run_pass(conn, settings, now=later + timedelta(minutes=5)).rollup_buckets["sweeper_telemetry"] == 1
        assert rollup(conn, "sw-1", T0) == (4, 78.0, 75.0, 80.0, 20.0)


@pytest.mark.clock
def test_retention_drops_old_chunks_only(fresh_db: str) -> None:
    settings = load_settings(database_url=fresh_db, raw_retention_days=30)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert_sweeper(conn, "sw-1", T0 - timedelta(days=90), 50, 1)
        insert_sweeper(conn, "sw-1", T0 - timedelta(days=1), 50, 1)
        result = run_pass(conn, settings, now=T0)  # 30 days are counted back from the pass's clock
        assert result.dropped["sweeper_telemetry"] == 1
        assert one_row(conn.execute("SELECT count(*) FROM sweeper_telemetry"))[0] == 1


def test_only_one_instance_runs_a_pass(fresh_db: str) -> None:
    settings = load_settings(database_url=fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as holder, psycopg.connect(fresh_db, autocommit=True) as conn:
        holder.execute("SELECT pg_advisory_lock(%s)", (MAINTENANCE_LOCK,))
        assert not run_pass(conn, settings).ran
        holder.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))
        assert run_pass(conn, settings).ran
