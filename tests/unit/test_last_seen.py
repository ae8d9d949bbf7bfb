"""Held last-seen rows (processors.last_seen): what a batch's transaction takes to upsert, and how rows merge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sanitel.processors.last_seen import HeldLastSeen, Seen, merge_seen

T0 = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed instant: nothing here reads the clock


def seen(minutes: int, seq: int, received_s: int) -> Seen:
    return (T0 + timedelta(minutes=minutes), seq, T0 + timedelta(seconds=received_s))


def test_a_merge_keeps_the_newest_device_time_with_its_seq_and_the_newest_receive_time() -> None:
    merged = merge_seen({"a": seen(5, 5, 10), "b": seen(1, 1, 1)}, {"a": seen(3, 9, 20), "c": seen(2, 2, 2)})
    assert merged == {"a": (T0 + timedelta(minutes=5), 5, T0 + timedelta(seconds=20)), "b": seen(1, 1, 1),
                      "c": seen(2, 2, 2)}


def test_while_more_waits_nothing_is_taken_until_the_oldest_held_row_has_waited_the_hold() -> None:
    now = [0.0]
    held = HeldLastSeen(1.0, lambda: now[0])
    assert held.take_unless_waiting(True) is None  # nothing held yet: the batch holds its own
    held.hold({"a": seen(1, 1, 1)})
    now[0] = 0.6
    held.hold({"a": seen(2, 2, 2), "b": seen(1, 1, 1)})  # later rows do not restart the hold
    assert held.take_unless_waiting(True) is None
    now[0] = 1.0
    assert held.take_unless_waiting(True) == {"a": seen(2, 2, 2), "b": seen(1, 1, 1)}
    assert held.take_unless_waiting(False) == {}  # all of it was taken


def test_with_nothing_waiting_everything_held_is_taken_at_once() -> None:
    held = HeldLastSeen(1.0, lambda: 0.0)
    assert held.take_unless_waiting(False) == {}
    held.hold({"a": seen(1, 1, 1)})
    held.hold({})
    assert held.take_unless_waiting(False) == {"a": seen(1, 1, 1)}
    assert held.take_unless_waiting(False) == {}
