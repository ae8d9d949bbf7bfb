"""The writer's fast path against the real database: a batch with nothing already stored is COPYed straight into
the hypertables; a redelivery or duplicate makes that table's COPY fail with a unique violation, which is rolled
back to a savepoint and merged through the staging table instead — no row twice, and everything else of the batch's
transaction (registrations, dead letters, the other tables' rows, last-seen) kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from sanitel.db import one_row
from sanitel.processors import writer as writer_module
from sanitel.processors.writer import Message, ReadingWriter
from tests.integration import test_writer_isolation
from tests.integration.test_writer_isolation import (
    REGISTERED,
    counts,
    dead_letters,
    gateway,
    good_batch,
    message,
    poison,
    ts,
)

make_writer = test_writer_isolation.make_writer  # the same writers, behind the same gateways
CITY = "shenzhen"


@pytest.fixture
def merged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables whose rows took the staging merge, in call order (the real merge runs)."""
    calls: list[str] = []
    original = ReadingWriter._copy_and_merge

    def recording(self: ReadingWriter, cur: psycopg.Cursor, table: str, *args: Any) -> int:
        calls.append(table)
        return original(self, cur, table, *args)

    monkeypatch.setattr(ReadingWriter, "_copy_and_merge", recording)
    return calls


def sweeper(device: str, offset_s: int, seq: int) -> Message:
    return message(f"sanitation/{CITY}/sweeper/{device}/telemetry", {"ts": ts(offset_s), "seq": seq, "soc_pct": 70})


def last_seen(db: str, device: str) -> tuple[Any, ...]:
    with psycopg.connect(db) as conn:
        return one_row(conn.execute("SELECT last_ts, last_seq FROM device_last_seen WHERE device_id = %s", (device,)))


def test_a_batch_with_nothing_stored_yet_is_copied_straight_into_the_hypertables(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str]) -> None:
    result = make_writer().write(good_batch())

    assert merged == []
    assert result.inserted == {"sweeper_telemetry": 1, "bin_deposits": 6, "bin_status": 3}
    assert sum(result.duplicates.values()) == 0
    assert counts(fresh_db) == {
        "sweeper_telemetry": 1, "bin_deposits": 6, "bin_status": 3, "station_telemetry": 0, "camera_detections": 0,
        "cems_readings": 0, "dead_letters": 0, "dead_letter_payloads": 0, "devices": REGISTERED + 2,
        "device_last_seen": 8}


def test_a_redelivered_batch_falls_back_to_the_merge_and_adds_no_row(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str]) -> None:
    writer = make_writer()
    batch = good_batch()
    writer.write(batch)
    before = counts(fresh_db)

    again = writer.write(batch)

    assert counts(fresh_db) == before
    assert sorted(merged) == ["bin_deposits", "bin_status", "sweeper_telemetry"]
    assert sum(again.inserted.values()) == 0
    assert again.duplicates == {"sweeper_telemetry": 1, "bin_deposits": 6, "bin_status": 3}


def test_a_partly_redelivered_table_keeps_the_rest_of_the_transaction(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str]) -> None:
    writer = make_writer()
    writer.write([sweeper("sw-1", 0, 1)])
    # one transaction: a new device registered, a dead letter (bin-x is not behind gw-1), new bin rows through the
    # fast path, and a sweeper table whose COPY hits the stored reading and falls back to the merge
    batch = [sweeper("sw-2", 5, 1), gateway("gw-1", ["bin-0", "bin-x"]), sweeper("sw-1", 0, 1), sweeper("sw-1", 9, 2)]

    result = writer.write(batch)

    assert merged == ["sweeper_telemetry"]
    assert result.inserted == {"sweeper_telemetry": 2, "bin_deposits": 1}
    assert result.duplicates == {"sweeper_telemetry": 1, "bin_deposits": 0}
    assert result.auto_registered == 1
    assert result.rejected == {("bin", "not_behind_gateway"): 1}
    assert counts(fresh_db) == {
        "sweeper_telemetry": 3, "bin_deposits": 1, "bin_status": 0, "station_telemetry": 0, "camera_detections": 0,
        "cems_readings": 0, "dead_letters": 1, "dead_letter_payloads": 1, "devices": REGISTERED + 2,
        "device_last_seen": 3}
    assert [(code, device) for _, code, _, _, _, device, *_ in dead_letters(fresh_db)] == [
        ("not_behind_gateway", "bin-x")]
    assert last_seen(fresh_db, "sw-1")[1] == 2


def test_the_same_reading_twice_in_one_batch_is_stored_once(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str]) -> None:
    result = make_writer().write([sweeper("sw-1", 0, 1), sweeper("sw-1", 0, 1)])

    assert merged == ["sweeper_telemetry"]
    assert result.inserted == {"sweeper_telemetry": 1} and result.duplicates == {"sweeper_telemetry": 1}
    assert counts(fresh_db)["sweeper_telemetry"] == 1


def test_after_a_conflict_a_few_batches_of_that_table_take_the_merge_at_once_then_the_fast_path_again(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "_MERGE_AFTER_CONFLICT", 2)
    writer = make_writer()
    writer.write([sweeper("sw-9", 0, 1)])
    writer.write([sweeper("sw-9", 0, 1)])  # redelivered: the COPY fails, the merge skips it
    assert merged == ["sweeper_telemetry"]

    for n in range(2):  # a run of redeliveries would follow: merged at once, without a refused COPY first
        writer.write([sweeper("sw-9", 10 + n, 2 + n)])
    writer.write(good_batch())  # other tables are not affected, nor is sweeper_telemetry any longer
    writer.write([sweeper("sw-9", 20, 9)])

    assert merged == ["sweeper_telemetry"] * 3
    assert counts(fresh_db)["sweeper_telemetry"] == 5  # sw-9: 0, 10, 11, 20; sw-1 of the good batch


def test_a_refused_reading_is_still_named_by_its_staging_line(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], merged: list[str]) -> None:
    """A value the hypertable refuses fails the fast COPY too; the merge then refuses it with the staging table's
    line, so isolation finds it at once and the dead letter reads as before (no chunk name in it)."""
    batch = good_batch()
    poison(batch, 3, "category", "bogus")

    result = make_writer().write(batch)

    assert result.rejected == {("bin", "storage_rejected"): 1}
    [(_, code, reason, index, *_)] = dead_letters(fresh_db)
    assert (code, index) == ("storage_rejected", 3)
    assert "violates check constraint" in reason and "_hyper_" not in reason
    assert counts(fresh_db)["bin_deposits"] == 5
