"""The collector's two commit lanes against the real database (issue 16): a writer and its twin write at once on two
connections, commit in the order their batches came, and share one auto-registration allowance — the second lane
cannot spend what the first is spending."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from sanitel.db import one_row
from sanitel.ingest.decode import decode_message
from sanitel.processors.writer import Message, OutOfTurn, ReadingWriter, Turn, WriteResult

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

    def upsert_then_hold(cur: psycopg.Cursor, rows: dict[str, tuple[datetime, int, datetime]]) -> None:
        original(cur, rows)
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


# --- commits in arrival order: a write follows the commit ahead of it (``Turn``) ------------------------------------


def follow(ahead: ReadingWriter, done: threading.Event) -> tuple[Turn, threading.Event]:
    """A turn after ``ahead``'s write, settled when ``done`` is set; and an event set once a write waits for it."""
    waiting = threading.Event()

    def settled(timeout: float) -> bool:
        waiting.set()
        return done.wait(timeout)

    return Turn(settled, lambda: ahead.session_pid), waiting


def in_thread(work: Callable[[], object], results: dict[str, object], name: str) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = work()
        except Exception as exc:  # the test looks at what was raised
            results[name] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_write_that_follows_a_commit_copies_beside_it_and_commits_only_after_it(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) SELECT 'sw-' || i, 'sweeper' FROM generate_series(0, 5) i")
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('sw-warm', 'sweeper')")
    first = ReadingWriter(fresh_db, collector_id="lanes", auto_register=True)
    second = first.twin()
    first.write([telemetry("sw-warm")])  # its chunk: a transaction that creates a chunk holds it until it ends
    holding, release = hold_before_commit(first)
    first_done, results = threading.Event(), dict[str, object]()
    ahead = in_thread(lambda: first.write([telemetry(f"sw-{i}") for i in range(3)]), results, "first")
    assert holding.wait(WAIT_S)
    turn, waiting = follow(first, first_done)
    behind = in_thread(lambda: second.write([telemetry(f"sw-{i}") for i in range(3, 6)], turn), results, "second")
    assert waiting.wait(WAIT_S)  # COPYed, and waiting for its turn to commit
    behind.join(0.5)
    assert behind.is_alive() and count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1
    release.set()
    ahead.join(WAIT_S)
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 4  # the first batch alone
    first_done.set()
    behind.join(WAIT_S)
    assert isinstance(results["second"], WriteResult) and results["second"].inserted["sweeper_telemetry"] == 3
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 7
    first.close()
    second.close()


def test_a_write_whose_rows_the_commit_ahead_waits_for_steps_back_out_of_turn(fresh_db: str) -> None:
    """The same reading in both batches (a redelivery): the batch behind COPYed it first, so the commit ahead waits
    for it while it waits for that commit. It rolls back (OutOfTurn) instead of both waiting for ever."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) SELECT 'sw-' || i, 'sweeper' FROM generate_series(0, 5) i")
    first = ReadingWriter(fresh_db, collector_id="lanes", auto_register=True)
    second = first.twin()
    assert first.ping()  # its session exists: the one the write behind looks for among those waiting for it
    first_done, results = threading.Event(), dict[str, object]()
    turn, waiting = follow(first, first_done)
    behind = in_thread(lambda: second.write([telemetry("sw-0"), telemetry("sw-1")], turn), results, "second")
    assert waiting.wait(WAIT_S)  # sw-0's reading is COPYed, uncommitted
    ahead = in_thread(lambda: first.write([telemetry("sw-0"), telemetry("sw-2")]), results, "first")
    behind.join(WAIT_S)
    assert not behind.is_alive(), "the write behind kept waiting for a commit that waited for it"
    assert isinstance(results["second"], OutOfTurn)
    ahead.join(WAIT_S)
    first_done.set()
    assert isinstance(results["first"], WriteResult) and results["first"].inserted["sweeper_telemetry"] == 2
    again = second.write([telemetry("sw-0"), telemetry("sw-1")])  # written again, after it: nothing lost, no copy
    assert again.inserted["sweeper_telemetry"] == 1 and again.duplicates["sweeper_telemetry"] == 1
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 3
    first.close()
    second.close()
