"""Device last-seen: each device's newest reading, kept in ``device_last_seen`` (0001) for the fleet and device
pages, the API's ingest freshness and the ``device_offline`` rule.

A batch's transaction upserts one row per device in it. Where each device has one reading or a few in a batch — a
fleet reporting round the clock, a backlog of it drained — that is a row update for every reading or two, and a
table the whole fleet updates many times a second. So while a backlog is being drained (more messages wait behind
the batch), a committed batch's last-seen rows are held here and upserted in the transaction of a later batch: the
first that finds nothing waiting behind it, or the first after ``hold_s``, whichever comes first. In live operation
nothing waits and every batch upserts its own, in its own transaction, as before. (Issue 16: in the side-by-side drain of
1,500 sweepers, holding them cut PostgreSQL's CPU per stored reading by about a fifth, 0.021 → 0.017 ms;
docs/benchmarks.md.)

Holding never loses or delays a reading. What a collector that dies while holding loses is at most ``hold_s`` of
last-seen updates of readings that are stored; each such device's next reading sets it right again. The offline
rule's timeouts are minutes (devices.inactivity_timeout_s).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import psycopg

Seen = tuple[datetime, int, datetime]  # a device's newest device time, that reading's seq, its newest receive time

# A held last-seen row waits at most this long for a batch to carry it (seconds).
LAST_SEEN_HOLD_S = 1.0


def merge_seen(into: dict[str, Seen], more: dict[str, Seen]) -> dict[str, Seen]:
    """``into`` with ``more`` merged in, as the upsert merges a row into the table: the newer device time (and its
    seq) and the newer receive time."""
    for device, seen in more.items():
        kept = into.get(device)
        if kept is None:
            into[device] = seen
            continue
        newest = seen if seen[0] >= kept[0] else kept
        into[device] = (newest[0], newest[1], max(kept[2], seen[2]))
    return into


class HeldLastSeen:
    """Last-seen rows of committed batches not yet upserted; one per collector, shared by its commit lanes."""

    def __init__(self, hold_s: float, clock: Callable[[], float]) -> None:
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, Seen] = {}
        self._since = 0.0  # clock time of the oldest row held

    def take_unless_waiting(self, waiting: bool) -> dict[str, Seen] | None:
        """What a batch's transaction upserts beside its own rows: everything held (often nothing) — or None, when
        more messages wait behind the batch and nothing has been held for ``hold_s``: then the batch's own rows
        are held after its commit (``hold``)."""
        with self._lock:
            if waiting and (not self._rows or self._clock() - self._since < self.hold_s):
                return None
            rows, self._rows = self._rows, {}
            return rows

    def hold(self, rows: dict[str, Seen]) -> None:
        """Hold rows of readings that are committed: a batch's own after its commit, or what a failed transaction
        had taken."""
        if not rows:
            return
        with self._lock:
            if not self._rows:
                self._since = self._clock()
            merge_seen(self._rows, rows)


def upsert_last_seen(cur: psycopg.Cursor, rows: dict[str, Seen]) -> None:
    ids = sorted(rows)  # a fixed order: two collectors never deadlock on these rows
    # binary parameters: adapting these arrays as text cost the writer ~8x more (2.8 vs 0.35 ms for 500 devices)
    cur.execute(
        """
        INSERT INTO device_last_seen (device_id, last_ts, last_seq, last_received)
        SELECT * FROM unnest(%b::text[], %b::timestamptz[], %b::bigint[], %b::timestamptz[])
        ON CONFLICT (device_id) DO UPDATE SET
            last_seq = CASE WHEN EXCLUDED.last_ts >= device_last_seen.last_ts
                            THEN EXCLUDED.last_seq ELSE device_last_seen.last_seq END,
            last_ts = greatest(device_last_seen.last_ts, EXCLUDED.last_ts),
            last_received = greatest(device_last_seen.last_received, EXCLUDED.last_received)
        """,
        (ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids], [rows[i][2] for i in ids]),
    )
