"""Last-seen rows held back while a backlog drains (processors.last_seen, issue 16), against the real database: the
readings are stored at once; their devices' ``device_last_seen`` rows follow with the first batch that finds nothing
waiting behind it, or after the hold; a held row the database refuses never refuses the batch that carries it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from sanitel.db import one_row
from sanitel.ingest.decode import decode_message
from sanitel.processors.last_seen import LAST_SEEN_HOLD_S
from sanitel.processors.writer import Message, ReadingWriter

CITY = "shenzhen"
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed instant: nothing here reads the clock


def telemetry(device_id: str, seq: int) -> Message:
    """Reading ``seq`` of a sweeper: device time ``seq`` minutes in, received 5 s later."""
    at = DEVICE_TIME + timedelta(minutes=seq)
    topic = f"sanitation/{CITY}/sweeper/{device_id}/telemetry"
    payload = json.dumps({"ts": int(at.timestamp() * 1000), "seq": seq, "soc_pct": 50}).encode()
    received = at + timedelta(seconds=5)
    return Message(topic, payload, received, decode_message(topic, payload, received))


def last_seen(db: str) -> dict[str, tuple[datetime, int]]:
    with psycopg.connect(db) as conn:
        return {d: (ts, seq) for d, ts, seq in conn.execute("SELECT device_id, last_ts, last_seq FROM device_last_seen")}


def readings(db: str) -> int:
    with psycopg.connect(db) as conn:
        return int(one_row(conn.execute("SELECT count(*) FROM sweeper_telemetry"))[0])


def minute(seq: int) -> datetime:
    return DEVICE_TIME + timedelta(minutes=seq)


class Drain:
    """What the writer is told: whether more messages wait behind its batch, and a monotonic clock."""

    def __init__(self) -> None:
        self.waiting = True
        self.now = 100.0

    def more_waiting(self) -> bool:
        return self.waiting

    def clock(self) -> float:
        return self.now


@pytest.fixture
def drain() -> Drain:
    return Drain()


@pytest.fixture
def writer(fresh_db: str, drain: Drain) -> Iterator[ReadingWriter]:
    made = ReadingWriter(fresh_db, collector_id="last-seen", auto_register=True, clock=drain.clock,
                         more_waiting=drain.more_waiting)
    yield made
    made.close()


def test_while_more_waits_last_seen_rows_are_held_until_a_batch_finds_none_waiting_or_the_hold_ends(
        fresh_db: str, writer: ReadingWriter, drain: Drain) -> None:
    writer.write([telemetry("sw-1", 1), telemetry("sw-2", 1)])
    drain.now += LAST_SEEN_HOLD_S / 2
    writer.write([telemetry("sw-1", 2)])
    assert readings(fresh_db) == 3  # every reading is stored at once
    assert last_seen(fresh_db) == {}  # their last-seen rows are held

    drain.now += LAST_SEEN_HOLD_S / 2  # the oldest held row has waited the hold: the next batch carries them
    writer.write([telemetry("sw-3", 1)])
    assert last_seen(fresh_db) == {"sw-1": (minute(2), 2), "sw-2": (minute(1), 1), "sw-3": (minute(1), 1)}

    writer.write([telemetry("sw-2", 3)])  # held again, from now
    assert last_seen(fresh_db)["sw-2"] == (minute(1), 1)
    drain.waiting = False  # the backlog is drained: the next batch upserts what is held, and its own
    writer.write([telemetry("sw-1", 3)])
    assert last_seen(fresh_db) == {"sw-1": (minute(3), 3), "sw-2": (minute(3), 3), "sw-3": (minute(1), 1)}

    writer.write([telemetry("sw-3", 2)])  # live: nothing waits, nothing is held
    assert last_seen(fresh_db)["sw-3"] == (minute(2), 2)


def test_held_rows_no_batch_carries_are_flushed_in_a_transaction_of_their_own(
        fresh_db: str, writer: ReadingWriter) -> None:
    writer.write([telemetry("sw-1", 4), telemetry("sw-1", 2)])  # the newest by device time wins, not the last
    assert last_seen(fresh_db) == {}
    writer.flush_last_seen()
    assert last_seen(fresh_db) == {"sw-1": (minute(4), 4)}
    writer.flush_last_seen()  # nothing held: nothing to do


def test_a_held_row_the_database_refuses_does_not_refuse_the_batch_that_carries_it(
        fresh_db: str, writer: ReadingWriter, drain: Drain) -> None:
    writer.write([telemetry("sw-gone", 1)])  # registered, stored; its last-seen row held
    with psycopg.connect(fresh_db) as conn:  # an operator deletes the device meanwhile (its last-seen row's key)
        conn.execute("DELETE FROM devices WHERE device_id = 'sw-gone'")
    drain.waiting = False
    result = writer.write([telemetry("sw-1", 1)])
    assert result.rejected == {} and result.inserted == {"sweeper_telemetry": 1}
    assert last_seen(fresh_db) == {"sw-1": (minute(1), 1)}  # the refused held row is dropped, the batch's lands
