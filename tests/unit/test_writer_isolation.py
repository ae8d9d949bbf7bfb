"""The writer's isolation policy and dead-letter rows without a database: which readings a failing batch is split
into, which errors count as an unavailable database, and what one message's dead letters look like."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from sanitel.processors.writer import (
    AttemptFailed,
    DatabaseUnavailable,
    Message,
    ReadingWriter,
    database_unavailable,
    isolate,
)
from sanitel.schemas.records import Decoded, Rejection


class Store:
    """Attempts that fail while a part holds a bad item, naming it (``named``) or not; records what committed."""

    def __init__(self, bad: set[int], *, named: bool = False, unavailable_after: int | None = None) -> None:
        self.bad = bad
        self.named = named
        self.unavailable_after = unavailable_after
        self.attempts = 0
        self.committed: Counter[int] = Counter()

    def attempt(self, part: list[int]) -> None:
        self.attempts += 1
        if self.unavailable_after is not None and self.attempts > self.unavailable_after:
            raise DatabaseUnavailable("connection lost")
        culprits = [i for i, item in enumerate(part) if item in self.bad]
        if culprits:
            raise AttemptFailed(ValueError(f"refused {part[culprits[0]]}"), culprits[0] if self.named else None)
        self.committed.update(part)


@pytest.mark.parametrize("bad", [set(), {0}, {999}, {13, 500, 501, 998}, set(range(0, 1000, 97))])
def test_bisection_refuses_exactly_the_bad_items_and_commits_every_other_once(bad: set[int]) -> None:
    store = Store(bad)
    refused = isolate(list(range(1000)), store.attempt)
    assert sorted(item for item, _ in refused) == sorted(bad)
    assert all(str(cause) == f"refused {item}" for item, cause in refused)  # each with its own error
    assert store.committed == Counter(i for i in range(1000) if i not in bad)
    assert store.attempts <= 1 + 2 * len(bad) * 10  # about 2·k·log2(n)


def test_a_named_culprit_is_tried_alone_at_once() -> None:
    bad = {13, 500, 501, 998}
    store = Store(bad, named=True)
    refused = isolate(list(range(1000)), store.attempt)
    assert sorted(item for item, _ in refused) == sorted(bad)
    assert store.committed == Counter(i for i in range(1000) if i not in bad)
    # the whole; then per culprit the readings before it, it alone, and those after it (which fail at the next);
    # 501 follows 500 directly: nothing before it to try
    assert store.attempts == 1 + 3 * len(bad) - 1


def test_a_part_already_known_to_fail_is_split_without_trying_it_again() -> None:
    store = Store({3})
    refused = isolate(list(range(8)), store.attempt, AttemptFailed(ValueError("refused 3")))
    assert [item for item, _ in refused] == [3]
    assert store.attempts == 2 + 2 + 2  # halves, quarters, eighths of the failing side


def test_a_single_item_is_retried_alone_even_when_its_batch_failed() -> None:
    store = Store(set())  # the batch failed for something else (its dead letters): the reading itself is fine
    assert isolate([7], store.attempt, AttemptFailed(ValueError("dead letters refused"))) == []
    assert store.committed == Counter({7: 1})


def test_when_everything_fails_every_item_is_refused_and_isolation_ends() -> None:
    store = Store(set(range(64)))  # a bug that hits every reading: dead-lettered one by one, never a stall
    refused = isolate(list(range(64)), store.attempt)
    assert len(refused) == 64 and store.attempts == 2 * 64 - 1


def test_an_unavailable_database_stops_isolation() -> None:
    store = Store({5}, unavailable_after=3)
    with pytest.raises(DatabaseUnavailable):
        isolate(list(range(100)), store.attempt)


def _error(sqlstate: str) -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)("from the server")


@pytest.mark.parametrize(("exc", "lost", "unavailable"), [
    (_error("22021"), False, False),  # invalid byte sequence (a NUL)
    (_error("22P05"), False, False),  # untranslatable character (jsonb \u0000)
    (_error("23514"), False, False),  # check violation
    (_error("54000"), False, False),  # program limit exceeded (an index row too large): the content's
    (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False, False),  # the driver's
    (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False, False),
    (KeyError("a bug"), False, False),
    (_error("08006"), False, True),  # connection failure
    (_error("57P01"), False, True),  # admin shutdown
    (_error("53100"), False, True),  # disk full
    (_error("40P01"), False, True),  # deadlock: retried later, from the spool
    (_error("25006"), False, True),  # read-only transaction (a standby after failover)
    (_error("42P01"), False, True),  # a table missing: not the content's fault
    (psycopg.OperationalError("server closed the connection unexpectedly"), False, True),
    (_error("22021"), True, True),  # whatever was raised, a lost connection means unavailable
    (KeyError("a bug"), True, True),
])
def test_only_errors_that_do_not_depend_on_the_batch_mean_unavailable(
        exc: BaseException, lost: bool, unavailable: bool) -> None:
    assert database_unavailable(exc, lost) is unavailable


RECEIVED = datetime(2026, 3, 10, tzinfo=UTC)


def _message(rejections: list[Rejection], payload: bytes = b"[...]") -> Message:
    return Message("sanitation/shenzhen/sweeper/sw-1/telemetry", payload, RECEIVED, Decoded(rejections=rejections))


def _rows(writer: ReadingWriter, message: Message) -> list[dict[str, object]]:
    columns = ("received_at", "topic", "reason_code", "reason", "reading_index", "kind", "device_id",
               "collector_id", "message_key", "payload_sha256")
    digest = hashlib.sha256(message.payload).hexdigest()
    return [dict(zip(columns, row, strict=True))
            for row in writer.dead_letter_rows(message, message.decoded.rejections, digest)]


def test_one_message_makes_at_most_the_bound_of_dead_letters_then_one_summary() -> None:
    writer = ReadingWriter("postgresql://unused", collector_id="c1", auto_register=True, dead_letters_per_message=3)
    rejections = [Rejection("out_of_range", "soc", i, "sweeper", "sw-1") for i in range(9, -1, -1)]
    rejections.append(Rejection("wrong_type", "x", 7, "sweeper", "sw-1"))
    rejections.append(Rejection("payload_too_large", "whole message"))
    rows = _rows(writer, _message(rejections))
    assert [(r["reason_code"], r["reading_index"]) for r in rows] == [
        ("payload_too_large", None), ("out_of_range", 0), ("out_of_range", 1), ("more_rejections", None)]
    summary = rows[-1]
    assert summary["reason"] == ("9 more rejections in this message, not stored one by one (the first 3 are): "
                                 "out_of_range ×8, wrong_type ×1")
    assert summary["kind"] == "sweeper" and summary["device_id"] is None
    assert len({r["message_key"] for r in rows}) == len(rows)


def test_dead_letter_keys_are_stable_unique_and_keep_the_earlier_formula() -> None:
    writer = ReadingWriter("postgresql://unused", collector_id="c1", auto_register=True)
    twice = [Rejection("kind_mismatch", "a", None, "bin", "b-1"), Rejection("kind_mismatch", "b", None, "bin", "b-2")]
    message = _message(twice)
    first, second = _rows(writer, message)
    earlier = hashlib.sha256(f"{message.topic}\0None\0kind_mismatch\0".encode() + message.payload).hexdigest()
    assert first["message_key"] == earlier  # a redelivery after the upgrade adds nothing
    assert second["message_key"] == earlier + "/1"
    assert [r["message_key"] for r in _rows(writer, message)] == [first["message_key"], second["message_key"]]


def test_dead_letter_text_is_always_storable() -> None:
    writer = ReadingWriter("postgresql://unused", collector_id="c\x00", auto_register=True)
    message = _message([Rejection("storage_rejected", "r" * 5000 + "\x00", 0, "bin", "bin-\x00-\ud800")])
    [row] = _rows(writer, message)
    assert row["device_id"] == "bin-\\x00-\\ud800" and row["collector_id"] == "c\\x00"
    assert isinstance(row["reason"], str) and len(row["reason"]) == 2000
    for value in row.values():
        if isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")


def test_each_reading_table_holds_readings_of_one_kind() -> None:
    """The writer counts accepted readings by kind per table (issue 16: not per reading), which needs this."""
    from sanitel.schemas.readings import READING_TYPES

    kinds: dict[str, set[str]] = {}
    for reading_type in READING_TYPES:
        kinds.setdefault(reading_type.table, set()).add(reading_type.kind)
    assert all(len(k) == 1 for k in kinds.values()), kinds
