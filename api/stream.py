"""The live alert stream: one LISTEN connection per API process, fanned out to every SSE client.

The alert engine (and this API, on acknowledge/assign) sends ``NOTIFY sanitel_alerts, '<json>'`` on each
alert change (``alerts.history.record``). One listener connection receives them and copies each to a
bounded queue per client, so a thousand dashboards cost one database connection, and a client that stops
reading is dropped instead of growing memory. If the listener loses the database it reconnects with
backoff and tells every client to re-fetch (``event: resync``), since notifications sent meanwhile are lost.
A stream whose API key is revoked is ended by ``api.guard`` (``event: revoked``), which re-checks the keys of
all open streams every ``api_stream_recheck_s``; the subscription ends with the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from sanitel.alerts.history import NOTIFY_CHANNEL

log = logging.getLogger("sanitel.api.stream")

_RECONNECT_FIRST_S = 0.5
_RECONNECT_WAIT = wait_exponential(multiplier=_RECONNECT_FIRST_S, max=15)  # 0.5 s, 1 s, 2 s … 15 s

QUEUE_SIZE = 1000


@dataclass(frozen=True)
class StreamEvent:
    event: str  # "alert", "resync" or "overflow"
    data: str


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[StreamEvent] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    overflowed: bool = False

    def offer(self, event: StreamEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # the client is not keeping up: tell it once (replacing the oldest event) and stop feeding it
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(StreamEvent("overflow", '{"reason": "client too slow; reconnect and re-fetch"}'))


class AlertBroadcaster:
    def __init__(self, database_url: str, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.database_url = database_url
        self._sleep = sleep  # between reconnect attempts
        self.subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @contextlib.asynccontextmanager
    async def subscribe(self, ready_timeout: float = 10.0) -> AsyncIterator[Subscription]:
        """A subscription that receives every notification sent after this returns."""
        subscription = Subscription()
        self.subscribers.add(subscription)
        try:
            self._ensure_running()
            # Returning before LISTEN is active would silently miss the first events.
            await asyncio.wait_for(self._listening.wait(), ready_timeout)
            yield subscription
        finally:
            self.subscribers.discard(subscription)

    async def ready(self, timeout: float) -> bool:
        """Start listening if not yet; True once LISTEN is active (False: the database is unreachable)."""
        self._ensure_running()
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="alert-stream-listener")

    async def _run(self) -> None:
        while True:  # one round per connection that worked: the backoff starts over after each
            async for attempt in AsyncRetrying(wait=_RECONNECT_WAIT, retry=retry_if_exception_type(Exception),
                                               before_sleep=_log_retry, sleep=self._sleep):
                with attempt:
                    conn = await self._listen()
            try:
                await self._forward(conn)
            except Exception as exc:
                log.warning("alert stream lost the database (%s); retrying in %.1f s", exc, _RECONNECT_FIRST_S)
            # the database went away: clients must re-fetch what they missed
            self._listening.clear()
            self._broadcast(StreamEvent("resync", json.dumps({"reason": "stream reconnecting"})))
            await self._sleep(_RECONNECT_FIRST_S)  # it was working: retry soon, back off only while it keeps failing

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True, connect_timeout=10)
        try:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        self._listening.set()
        log.info("alert stream listening on %s", NOTIFY_CHANNEL)
        return conn

    async def _forward(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn:
            async for notify in conn.notifies():
                self._broadcast(StreamEvent("alert", notify.payload))

    def _broadcast(self, event: StreamEvent) -> None:
        for subscription in list(self.subscribers):
            subscription.offer(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def alert_of(payload: str) -> dict[str, Any] | None:
    """The alert in a notification (``{"alert": {...}}`` or the alert itself); None if not JSON."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    alert = body.get("alert", body)
    return alert if isinstance(alert, dict) else None


def matches(payload: str, filters: dict[str, set[str] | None]) -> bool:
    """True when every given filter (severity, site_id, device_id, kind, rule_id) accepts the alert."""
    active = {k: v for k, v in filters.items() if v}
    if not active:
        return True
    alert = alert_of(payload)
    if alert is None:
        return False
    return all(str(alert.get(key)) in allowed for key, allowed in active.items())


def sse_frame(event: StreamEvent, event_id: int) -> bytes:
    # one `data:` line per payload line keeps multi-line JSON valid SSE
    data = "".join(f"data: {line}\n" for line in event.data.splitlines() or [""])
    return f"id: {event_id}\nevent: {event.event}\n{data}\n".encode()


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("alert stream cannot reach the database (%s); retrying in %.1f s", error, state.upcoming_sleep)
