"""The spans of device time a transaction wrote to a rolled-up table, recorded in ``stored_spans`` (migration 0087).

The API serves a bucket from its 5-minute rollup only when no row of it was stored after the rollup's watermark
(api/rollups.py). It finds such rows of one device by probing the spans recorded since the watermark, instead of a
``(device_id, stored_at)`` index that cost an index entry per reading (issue 16). A span is an over-approximation:
it covers every device time the batch wrote, and the probe keeps only that device's rows stored after the watermark.

A batch's times are one span when they lie within ``SPAN_GAP`` of each other (a live batch, a slice of a drained
backlog). Otherwise they are split wherever two consecutive times lie further apart than ``SPAN_GAP``: a batch that
mixes a month-old back-fill with live readings gives two short spans, not a month that every probe would read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import pairwise

import psycopg
from psycopg.types.multirange import Multirange
from psycopg.types.range import Range

from sanitel.processors.rollups import ROLLUP_SOURCES

# the tables whose rows a rollup holds: the only ones whose spans anyone reads
SPANNED_TABLES = frozenset(ROLLUP_SOURCES)
# times further apart than this start a new span. A probe reads every row of one device inside a span, so no span
# bridges more than an hour in which the batch wrote nothing.
SPAN_GAP = timedelta(hours=1)


def spans_of(times: Sequence[datetime]) -> Multirange[datetime]:
    """The closed spans covering ``times`` (not empty), split at gaps wider than ``SPAN_GAP``."""
    earliest, latest = min(times), max(times)
    if latest - earliest <= SPAN_GAP:  # the common batch: no sort
        return Multirange([Range(earliest, latest, "[]")])
    ordered = sorted(times)
    spans, start = [], ordered[0]
    for before, after in pairwise(ordered):
        if after - before > SPAN_GAP:
            spans.append(Range(start, before, "[]"))
            start = after
    spans.append(Range(start, ordered[-1], "[]"))
    return Multirange(spans)


def record_spans(cur: psycopg.Cursor, table: str, times: Sequence[datetime]) -> None:
    """Record, in the cursor's transaction, the device times (not empty) it writes to ``table``, one of
    ``SPANNED_TABLES``. The row's ``stored_at`` defaults to the transaction's start, as the readings' own."""
    cur.execute("INSERT INTO stored_spans (table_name, spans) VALUES (%s, %s)", (table, spans_of(times)))


def forget_spans(conn: psycopg.Connection, table: str, upto: datetime) -> None:
    """Delete the spans of ``table`` stored up to ``upto``, a watermark its rollup has just moved to: every row they
    describe is in the rollup. (A request that read the older watermark and finds them gone reads the rollup after
    this commit, which holds those rows.)"""
    conn.execute("DELETE FROM stored_spans WHERE table_name = %s AND stored_at <= %s", (table, upto))
