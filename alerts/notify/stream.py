"""Live alert stream. Every transition (engine or API) writes an ``alert_history`` row and a NOTIFY on
``sanitel_alerts`` in the same transaction, so a listener sees exactly the committed changes:

- ``listen(url, since_history_id=…)`` — for another process, such as the API's SSE endpoint: replays
  the history rows after ``since_history_id`` (an SSE ``Last-Event-ID``) and then yields live events
  from LISTEN. A reconnect resumes from the last id seen, so nothing is missed in between.
- ``Broadcaster`` — an in-process fan-out: each subscriber gets its own bounded queue; a subscriber
  that does not keep up loses its oldest events (and is told so), never blocking the others.
- ``relay(url, broadcaster, stop)`` — runs ``listen`` into a broadcaster (one LISTEN connection for
  any number of SSE clients).

NOTIFY payload (also the shape the API sends): ``{"event", "actor", "history_id"?, "alert": {…}}``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sanitel.alerts.lifecycle import ALERT_COLUMNS, NOTIFY_CHANNEL

log = logging.getLogger("sanitel.alerts.stream")


@dataclass(frozen=True)
class StreamEvent:
    event: str  # pending, firing, resolved, acknowledged, assigned, reminded, silenced, notified
    alert: dict[str, Any]
    actor: str | None = None
    history_id: int | None = None  # the SSE event id (absent on notices that carry none)


def _event(payload: str) -> StreamEvent | None:
    try:
        body = json.loads(payload)
        return StreamEvent(str(body["event"]), dict(body["alert"]), body.get("actor"), body.get("history_id"))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed %s notice: %.200s", NOTIFY_CHANNEL, payload)
        return None


def history_since(conn: psycopg.Connection, after_id: int, limit: int = 1000) -> list[StreamEvent]:
    """Transitions after a history id, oldest first, with the alert as it is now."""
    columns = ", ".join(f"a.{c}" for c in ALERT_COLUMNS)
    rows = conn.cursor(row_factory=dict_row).execute(
        f"SELECT h.id AS history_id, h.to_state, h.actor, {columns} FROM alert_history h"
        " JOIN alerts a ON a.alert_id = h.alert_id WHERE h.id > %s ORDER BY h.id LIMIT %s", (after_id, limit)).fetchall()
    out = []
    for row in rows:
        alert = {c: (row[c].isoformat() if isinstance(row[c], datetime) else row[c]) for c in ALERT_COLUMNS}
        out.append(StreamEvent(row["to_state"], alert, row["actor"], row["history_id"]))
    return out


def listen(url: str, *, since_history_id: int | None = None, stop: threading.Event | None = None,
           poll_s: float = 1.0) -> Iterator[StreamEvent]:
    """Committed alert events, live. With ``since_history_id``, first the ones after it. Reconnects
    (and replays what it missed) when the database connection drops; returns when ``stop`` is set."""
    last = since_history_id
    while stop is None or not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                if last is None:  # start from now; later reconnects replay what they missed
                    last = conn.execute("SELECT coalesce(max(id), 0) FROM alert_history").fetchone()[0]  # type: ignore[index]
                conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                for event in history_since(conn, last):  # after LISTEN: nothing falls in between
                    last = event.history_id
                    yield event
                while stop is None or not stop.is_set():
                    for notice in conn.notifies(timeout=poll_s, stop_after=100):
                        event = _event(notice.payload)
                        if event is None or (event.history_id is not None and event.history_id <= last):
                            continue  # already replayed
                        if event.history_id is not None:
                            last = event.history_id
                        yield event
        except psycopg.OperationalError as exc:
            log.warning("alert stream: database connection lost (%s); reconnecting", exc)
            time.sleep(poll_s)


@dataclass
class Subscription:
    queue: queue.Queue[StreamEvent] = field(default_factory=lambda: queue.Queue(maxsize=1000))
    dropped: int = 0  # events lost because this subscriber was too slow

    def get(self, timeout: float | None = None) -> StreamEvent | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class Broadcaster:
    """In-process fan-out of stream events to any number of subscribers. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(queue.Queue(maxsize=maxsize))
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish(self, event: StreamEvent) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            while True:
                try:
                    sub.queue.put_nowait(event)
                    break
                except queue.Full:
                    try:
                        sub.queue.get_nowait()  # a slow subscriber loses its oldest event
                        sub.dropped += 1
                    except queue.Empty:
                        pass


def relay(url: str, broadcaster: Broadcaster, stop: threading.Event) -> threading.Thread:
    """A daemon thread feeding ``listen(url)`` into ``broadcaster`` until ``stop`` is set."""
    def run() -> None:
        for event in listen(url, stop=stop):
            broadcaster.publish(event)

    thread = threading.Thread(target=run, name="alert-stream-relay", daemon=True)
    thread.start()
    return thread
