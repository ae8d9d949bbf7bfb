"""Rollup freshness from recorded spans (migration 0087), against the real database: the writer records, in each
batch's transaction, the device times it wrote to a rolled-up table; the API finds one device's late buckets
through them; a pass of the scheduled processor forgets what its watermark passed; the migration replaced 0062's
per-reading index and kept nothing stored before it out of sight. (Through the broker and collector:
test_no_silent_gaps.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sanitel.api.queries.readings import unrolled_buckets
from sanitel.db import load_migrations, one_row
from sanitel.processors.maintenance import run_pass
from sanitel.processors.writer import Message, ReadingWriter
from sanitel.settings import load_settings
from tests.integration import test_writer_isolation
from tests.integration.test_writer_isolation import DEVICE_TIME, good_batch, message, ts

make_writer = test_writer_isolation.make_writer
TOPIC = "sanitation/shenzhen/sweeper/{}/telemetry"
MONTH = 30 * 24 * 3600
FIVE_MINUTES = timedelta(minutes=5)


def _sweeper(device: str, offset_s: int, seq: int) -> Message:
    return message(TOPIC.format(device), {"ts": ts(offset_s), "seq": seq, "soc_pct": 70})


def _spans(db: str) -> list[tuple[str, datetime, list[tuple[datetime, datetime]]]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT table_name, stored_at, spans FROM stored_spans ORDER BY stored_at").fetchall()
    return [(table, stored_at, [(s.lower, s.upper) for s in spans]) for table, stored_at, spans in rows]


def _at(offset_s: int) -> datetime:
    return DEVICE_TIME + timedelta(seconds=offset_s)


def test_a_batch_records_the_device_times_it_wrote_to_each_rolled_up_table_in_its_own_transaction(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    # sw-2 back-fills ten minutes of a month ago while sw-1 reports live, in one batch (with bins: no rollup)
    batch = [_sweeper("sw-1", 0, 1), _sweeper("sw-2", -MONTH, 1), _sweeper("sw-2", -MONTH + 600, 2),
             _sweeper("sw-1", 30, 2), *good_batch()[1:]]
    make_writer().write(batch)

    [(table, stored_at, spans)] = _spans(fresh_db)
    assert table == "sweeper_telemetry"
    assert spans == [(_at(-MONTH), _at(-MONTH + 600)), (_at(0), _at(30))]  # two short spans, not the month
    with psycopg.connect(fresh_db) as conn:  # the readings' own write time: the same transaction
        assert conn.execute("SELECT DISTINCT stored_at FROM sweeper_telemetry").fetchall() == [(stored_at,)]


def test_a_late_bucket_is_found_for_its_own_device_only(fresh_db: str,
                                                        make_writer: Callable[..., ReadingWriter]) -> None:
    hour = -3600  # the hour before the readings' receive time (later device times are refused as from the future)
    writer = make_writer()
    writer.write([_sweeper(d, hour + i * 60, i) for d in ("sw-1", "sw-2") for i in range(60)])
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        watermark = one_row(conn.execute("SELECT clock_timestamp()"))[0]
    # two late readings of sw-1, in the 20th and 59th minutes: one span over both, sw-2's rows between inside it
    writer.write([_sweeper("sw-1", hour + 20 * 60 + 7, 1000), _sweeper("sw-1", hour + 59 * 60 + 30, 1001)])

    async def late(device: str) -> list[datetime]:
        async with await psycopg.AsyncConnection.connect(fresh_db) as conn:
            return await unrolled_buckets(conn, "sweeper_telemetry", device, watermark, _at(hour), _at(0),
                                          FIVE_MINUTES, "UTC")

    assert asyncio.run(late("sw-1")) == [_at(hour + 20 * 60), _at(hour + 55 * 60)]
    assert asyncio.run(late("sw-2")) == []  # rows inside the span, but none stored after the watermark


def test_a_pass_forgets_the_spans_its_watermark_passed(fresh_db: str) -> None:
    t0 = datetime(2026, 11, 20, 8, tzinfo=UTC)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for minutes in (0, 10):
            conn.execute("INSERT INTO stored_spans (table_name, stored_at, spans) VALUES (%s, %s, "
                         "tstzmultirange(tstzrange(%s, %s, '[]')))",
                         ("sweeper_telemetry", t0 + timedelta(minutes=minutes), t0, t0))
        assert run_pass(conn, load_settings(database_url=fresh_db), now=t0 + timedelta(minutes=5)).ran
    assert [stored_at for _, stored_at, _ in _spans(fresh_db)] == [t0 + timedelta(minutes=10)]


def test_the_per_reading_index_is_gone_and_cems_keeps_its_own(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%device_stored'")}
    assert names == {"cems_readings_device_stored"}


@pytest.mark.parametrize("rolled_up", [True, False])
def test_the_migration_keeps_rows_stored_after_the_watermark_in_sight_and_is_safe_to_repeat(
        fresh_db: str, rolled_up: bool) -> None:
    [migration] = [m for m in load_migrations() if m.version == "0087"]
    t0 = datetime(2026, 11, 20, 8, tzinfo=UTC)
    with psycopg.connect(fresh_db) as conn:  # as a database upgraded from 0086 would be
        conn.execute("CREATE INDEX sweeper_telemetry_device_stored ON sweeper_telemetry (device_id, stored_at)")
        if rolled_up:
            conn.execute("INSERT INTO maintenance_watermarks (name, watermark) VALUES ('rollup:sweeper_telemetry', %s)",
                         (t0,))
        for minutes, stored in ((-90, t0 - timedelta(hours=1)), (-60, t0 + timedelta(minutes=1)),
                                (-30, t0 + timedelta(minutes=2))):
            conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, stored_at) "
                         "VALUES ('sw-1', %s, 0, %s, %s)", (t0 + timedelta(minutes=minutes), stored, stored))
        conn.execute(migration.sql)
        spans = conn.execute("SELECT table_name, stored_at, spans FROM stored_spans").fetchall()
        conn.execute(migration.sql)  # again: nothing to drop, no second table
        assert conn.execute("SELECT to_regclass('sweeper_telemetry_device_stored')").fetchone() == (None,)
    if not rolled_up:  # never rolled up: the API reads the whole series raw, no span is needed
        assert spans == []
        return
    [(table, stored_at, [span])] = spans  # one span over the two rows stored after the watermark
    assert (table, stored_at) == ("sweeper_telemetry", t0 + timedelta(minutes=2))
    assert (span.lower, span.upper, span.bounds) == (t0 - timedelta(minutes=60), t0 - timedelta(minutes=30), "[]")
