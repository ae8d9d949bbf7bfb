"""The scheduled processor: rollups, CEMS averages and retention, one instance at a time.

Any number may run (one per collector host, say): a PostgreSQL advisory lock makes all but one skip a
pass, so nothing is computed twice and nothing needs home-made coordination.

Each pass it ran ends with a heartbeat (``stage_heartbeats``, stage ``processor``, on the pass's clock): /health,
/metrics and the evaluator's ``stage_overdue`` alert say when passes stop (issue 17). A pass skipped for the lock
records nothing: the instance holding it does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from sanitel.db import one_row
from sanitel.heartbeats import process_instance, record_pass
from sanitel.processors import cems_averages, cems_judgement, clearance
from sanitel.processors.retention import apply_retention
from sanitel.processors.rollups import ROLLUP_SOURCES, refresh, settled_upto
from sanitel.processors.stored_spans import forget_spans
from sanitel.processors.watermarks import read_watermark, store_watermark
from sanitel.settings import Settings

log = logging.getLogger("sanitel.maintenance")
MAINTENANCE_LOCK = 0x5A4D41  # advisory lock key
RETENTION_EVERY = timedelta(hours=1)


@dataclass
class PassResult:
    ran: bool
    rollup_buckets: dict[str, int] = field(default_factory=dict)
    cems_watermark: datetime | None = None
    dropped: dict[str, int] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_pass(conn: psycopg.Connection, settings: Settings, *, now: datetime | None = None,
             retention: bool = True, instance: str | None = None, started_at: datetime | None = None) -> PassResult:
    """One pass; returns ran=False when another instance holds the lock. ``conn`` must be autocommit.
    ``instance`` and ``started_at`` name the process in its heartbeat (default: host:pid, started now)."""
    if not one_row(conn.execute("SELECT pg_try_advisory_lock(%s)", (MAINTENANCE_LOCK,)))[0]:
        return PassResult(ran=False)
    try:
        now = now or datetime.now(UTC)
        result = PassResult(ran=True)
        # rows committed before the pass are rolled up now, not a slack later: late data in a bucket
        # already rolled up is re-rolled within one interval (the API serves it from raw meanwhile)
        until = settled_upto(conn, now)
        for source in ROLLUP_SOURCES:
            name = f"rollup:{source}"
            since = read_watermark(conn, name)
            with conn.transaction():
                result.rollup_buckets[source] = refresh(conn, source, since, until)
                store_watermark(conn, name, until)
                forget_spans(conn, source, until)
        result.cems_watermark = cems_averages.run_scheduled(conn, now=now)
        if result.cems_watermark is not None:
            # a day judged while it ran gets no later readings once its line stops sending: settle it now
            cems_judgement.finalise_ended_days(conn, now=now)
        # daily clearance (issue 15): each scheduled point's yesterday and today, judged again as pickups arrive
        clearance.derive_recent(conn, now)
        if retention and now - read_watermark(conn, "retention") >= RETENTION_EVERY:
            with conn.transaction():
                result.dropped = apply_retention(
                    conn, raw=timedelta(days=settings.raw_retention_days),
                    rollups=timedelta(days=settings.rollup_retention_days),
                    dead_letters=timedelta(days=settings.dead_letter_retention_days), now=now)
                store_watermark(conn, "retention", now)
        # only a pass that got here counts: one that raised leaves the last heartbeat as it was
        record_pass(conn, "processor", instance or process_instance(), interval_s=settings.maintain_interval_s,
                    at=now, started_at=started_at or now)
        return result
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))


def run_forever(settings: Settings, stop: threading.Event, *, clock: Callable[[], datetime] = _utc_now) -> None:
    """Every ``maintain_interval_s`` until ``stop``; a failed pass is logged and retried next time.
    ``clock``: this process's wall clock (passes and heartbeats)."""
    instance, started_at = process_instance(), clock()
    while not stop.is_set():
        try:
            with psycopg.connect(settings.database_url_for("processor"), autocommit=True) as conn:
                result = run_pass(conn, settings, now=clock(), instance=instance, started_at=started_at)
            if result.ran:
                log.info("maintenance pass: rollups %s, dropped %s", result.rollup_buckets, result.dropped)
        except psycopg.Error as exc:
            log.warning("maintenance pass failed (%s); retrying in %.0f s", exc, settings.maintain_interval_s)
        stop.wait(settings.maintain_interval_s)
