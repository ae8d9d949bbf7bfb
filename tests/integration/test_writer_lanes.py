"""The collector's two commit lanes against the real database (issue 16): a writer and its twin write at once on two
connections, and share one auto-registration allowance — the second lane cannot spend what the first is spending."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import psycopg

from sanitel.db import one_row
from sanitel.ingest.decode import decode_message
from sanitel.processors.writer import Message, ReadingWriter, WriteResult

CITY = "shenzhen"
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed instant: nothing here reads the clock
RECEIVED = DEVICE_TIME + timedelta(seconds=5)
WAIT_S = 30.0


def telemetry(device_id: str) -> Message:
    topic = f"sanitation/{CITY}/sweeper/{device_id}/telemetry"
    payload = json.dumps({"ts": int(DEVICE_TIME.timestamp() * 1000), "seq": 1, "soc_pct": 50}).encode()
    return Message(topic, payload, RECEIVED, decode_message(topic, payload, RECEIVED))


def count(db: str, sql: str) -> int:
    with psycopg.connect(db) as conn:
        return int(one_row(conn.execute(sql))[0])


def hold_before_commit(writer: ReadingWriter) -> tuple[threading.Event, threading.Event]:
    """Make the writer's next transaction wait, with everything written, before its commit: (holding, release)."""
    holding, release = threading.Event(), threading.Event()
    original = writer._upsert_last_seen

    def upsert_then_hold(cur: psycopg.Cursor, last_seen: dict[str, tuple[datetime, int, datetime]]) -> None:
        original(cur, last_seen)
        holding.set()
        assert release.wait(WAIT_S)

    writer._upsert_last_seen = upsert_then_hold  # type: ignore[method-assign]
    return holding, release


def test_two_lanes_write_at_once_and_share_one_auto_registration_allowance(fresh_db: str) -> None:
    first = ReadingWriter(fresh_db, collector_id="lanes", auto_register=True, auto_register_per_minute=3,
                          clock=lambda: 0.0)
    second = first.twin()
    registering, release = hold_before_commit(first)  # its three devices inserted, not yet committed
    results: dict[str, WriteResult] = {}
    threads = [threading.Thread(target=lambda: results.__setitem__("first", first.write(
                   [telemetry(f"new-a{i}") for i in range(3)]))),
               threading.Thread(target=lambda: results.__setitem__("second", second.write(
                   [telemetry(f"new-b{i}") for i in range(3)])))]
    threads[0].start()
    assert registering.wait(WAIT_S)
    threads[1].start()  # counts what is left only once the first has committed what it spent
    threads[1].join(1.0)
    assert threads[1].is_alive(), "the second lane registered while the first was still spending the allowance"
    release.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert results["first"].auto_registered == 3 and results["second"].auto_registered == 0
    assert results["second"].auto_register_refused == 3
    assert count(fresh_db, "SELECT count(*) FROM devices") == 3
    assert count(fresh_db, "SELECT count(*) FROM dead_letters WHERE reason_code = 'auto_register_limited'") == 3
    first.close()
    second.close()


def test_two_lanes_store_known_devices_at_once_without_waiting_for_each_other(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) SELECT 'sw-' || i, 'sweeper' FROM generate_series(0, 5) i")
    first = ReadingWriter(fresh_db, collector_id="lanes", auto_register=True)
    second = first.twin()
    holding, release = hold_before_commit(first)
    thread = threading.Thread(target=lambda: first.write([telemetry(f"sw-{i}") for i in range(3)]))
    thread.start()
    assert holding.wait(WAIT_S)
    done = second.write([telemetry(f"sw-{i}") for i in range(3, 6)])  # other devices: no row the first holds
    assert done.inserted["sweeper_telemetry"] == 3
    release.set()
    thread.join(WAIT_S)
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 6
    first.close()
    second.close()
