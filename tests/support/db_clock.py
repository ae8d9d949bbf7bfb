"""The database's clock, for the few tests that meet code on the real clock: SQL ``now()`` and child
processes, which time-machine cannot move. Reading it once and passing the instant on keeps the test and
that code on the same clock (the machine's), whatever ``SANITEL_TEST_FAKE_NOW`` does to this process."""

from __future__ import annotations

from datetime import datetime

import psycopg


def database_now(db_url: str) -> datetime:
    """``now()`` as the database reports it, to the microsecond, in UTC."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]
