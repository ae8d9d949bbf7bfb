"""The MQTT collector: QoS 1, persistent session, acknowledgement only once a message is durable.

Threads: the MQTT client's network thread receives and appends messages to a bounded list (``Batcher``: what one
network read brought, under one plain lock — issue 16; the MQTT 5 Receive Maximum and the bound limit memory: when
full, the broker holds the rest); the writer thread takes them off a whole batch at a time and decodes them; a commit
thread per batch writes them (``processors.writer``; with two commit lanes a batch is COPYed while the one
before it still commits) — or, while the database is unreachable, fsyncs them to the spool (``processors.spool``)
— and only then acknowledges them, in order. Redelivery after a crash is
harmless because writes are idempotent. ``stop()`` stops taking messages, flushes, acks, and disconnects;
messages that arrive after that are not acknowledged and stay with the broker.

Spool full (``SANITEL_SPOOL_MAX_BYTES`` reached, or the disk full): the writer holds the batch it could not make
durable, unacknowledged, and retries it about once a second; it takes nothing more meanwhile, so the broker stops
sending once Receive Maximum messages are unacknowledged and keeps the rest in the session. Replay frees space when
the database returns, and acknowledging resumes. Replay never stalls on content: damaged records are quarantined
by the spool, and a message whose write fails for its content is isolated (bisection) and quarantined too.

Heartbeat (issue 17): every ``collector_heartbeat_s`` while connected to the broker and writing to the database (not
spooling), the writer thread records the stage ``collector`` in ``stage_heartbeats`` (instance: the client id), on a
small connection of its own — checked once per batch or idle wake, so no per-message cost, and never the writer's
connection from another thread. /health, /metrics and the evaluator's ``stage_overdue`` alert read it.

Seams (Telegraf's mqtt_consumer gets its client the same way): the MQTT client comes from a factory
(``paho_collector_client`` in service) and needs only what ``MqttClient`` lists; the writer is anything with
``ReadingStore``'s three methods; both clocks are parameters. Unit tests drive the batching and ack policy
with a fake client, an in-memory writer and a clock they move by hand.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import msgspec
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server

from sanitel.errors import SanitelError
from sanitel.heartbeats import record_pass
from sanitel.ingest.buffered_client import BufferedClient, OnPublishes, Publish
from sanitel.ingest.decode import DecodeLimits, decode_message
from sanitel.ingest.metrics import CollectorMetrics
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.processors.registry import DeviceRegistry, RegistryUnavailable
from sanitel.processors.spool import BadSpan, Spool, SpooledMessage, SpoolFull, SpoolRecord
from sanitel.processors.writer import DatabaseUnavailable, Message, OutOfTurn, ReadingWriter, Turn, WriteResult
from sanitel.schemas.hj212_settings import DEFAULT_BASIS, Hj212Basis
from sanitel.schemas.topics import DEVICE_KINDS, SYSTEM_FAMILIES, Hj212Topic, TopicError, parse_topic, subscription
from sanitel.settings import Settings

log = logging.getLogger("sanitel.collector")
_TOPIC_KINDS = frozenset((*DEVICE_KINDS, "gateway", *SYSTEM_FAMILIES))  # metric label values: known families only
_IDLE_WAKE_S = 1.0  # the writer wakes at least this often: the spool must replay even when no traffic arrives
_ACKS_READ_TIMEOUT_S = 10.0  # at stop: how long the broker may take to read our last acknowledgements
_TOPIC_NAMES_KEPT = 1 << 16  # topics whose text the network thread remembers (a city's devices send on ~30,000)
# The shared-subscription group of ``sanitel collector --workers N`` when settings name none (ingest/workers.py).
WORKERS_SHARE_GROUP = "sanitel-collectors"

T = TypeVar("T")


class MqttClient(Protocol):
    """What the collector needs of its MQTT client: paho's (``BufferedClient``) in service, a fake in unit tests."""

    def reconnect(self) -> object:
        """Connect now; OSError when the broker cannot be reached."""

    def loop_start(self) -> object:
        """Run the network in a thread of its own: receive, call the handlers, reconnect after losses."""

    def subscribe(self, topic: str, qos: int) -> object: ...

    def ack_many(self, mids: list[int]) -> object:
        """PUBACK these QoS 1 messages, in this order."""

    def wait_acks_read(self, timeout: float) -> bool:
        """Wait until the broker has read every acknowledgement sent so far; False if it did not say so in time."""

    def disconnect(self) -> object: ...

    def loop_stop(self) -> object: ...


@dataclass(frozen=True, slots=True)
class ClientHandlers:
    """The collector's handlers for the client's events (paho's callback API version 2, and ``BufferedClient``'s
    ``on_publishes``), called from its network thread. The first argument is the client itself; the collector does
    not use it."""

    on_connect: Callable[[object, object, mqtt.ConnectFlags, mqtt.ReasonCode, Properties | None], None]
    on_subscribe: Callable[[object, object, int, list[mqtt.ReasonCode], Properties | None], None]
    on_disconnect: Callable[[object, object, mqtt.DisconnectFlags, mqtt.ReasonCode, Properties | None], None]
    on_publishes: OnPublishes  # every QoS 0/1 PUBLISH, in the order received, several at once where they came so


ClientFactory = Callable[[Settings, ClientHandlers], MqttClient]


class ReadingStore(Protocol):
    """Where batches become durable: ``processors.writer.ReadingWriter`` in service, an in-memory fake in tests."""

    def ping(self) -> bool: ...

    session_pid: int | None  # the database session it commits on, while it has one (see ``Turn``)

    def write(self, messages: list[Message], turn: Turn | None = None) -> WriteResult:
        """Commit the batch in one transaction (readings and dead letters), after ``turn``'s commit when given;
        DatabaseUnavailable and OutOfTurn leave nothing."""

    def flush_last_seen(self) -> None:
        """Upsert the last-seen rows a draining backlog held back (none: nothing to do); DatabaseUnavailable."""

    def close(self) -> None: ...


class StageHeartbeat(Protocol):
    """Where the collector says it is alive: ``DatabaseHeartbeat`` in service. Called from the writer thread only."""

    def beat(self, at: datetime, started_at: datetime) -> bool:
        """Record a heartbeat; False when it could not be recorded."""

    def close(self) -> None: ...


class DatabaseHeartbeat:
    """The collector's row in ``stage_heartbeats``, written on an autocommit connection of its own (opened on first
    use, dropped on any error and reopened at the next beat)."""

    def __init__(self, url: str, instance: str, interval_s: float) -> None:
        self.url = url
        self.instance = instance
        self.interval_s = interval_s
        self._conn: psycopg.Connection | None = None

    def beat(self, at: datetime, started_at: datetime) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                             application_name=f"sanitel {self.instance} heartbeat")
            record_pass(self._conn, "collector", self.instance, interval_s=self.interval_s, at=at,
                        started_at=started_at)
            return True
        except psycopg.Error as exc:
            log.warning("collector heartbeat not recorded (%s); /health will call the collector overdue if this "
                        "goes on", str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def receive_maximum(settings: Settings) -> int:
    """The MQTT 5 Receive Maximum we ask for: the broker may have at most this many unacknowledged messages out to
    us, which bounds our memory (65535 is the protocol's largest)."""
    return min(65535, settings.collector_queue_max)


def session_properties(settings: Settings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = receive_maximum(settings)
    return props


def stale_subscriptions(settings: Settings) -> list[str]:
    """Subscriptions a persistent session may still hold from an earlier run in the other mode: the plain one
    after a switch to a shared group (``--workers N``), the workers' shared one after a switch back. Left in place,
    the session would get every message twice (plain) or keep taking a share it no longer drains (shared)."""
    current = subscription(settings.city, settings.collector_share_group)
    candidates = (subscription(settings.city, None), subscription(settings.city, WORKERS_SHARE_GROUP))
    return [topic for topic in candidates if topic != current]


def paho_collector_client(settings: Settings, handlers: ClientHandlers) -> BufferedClient:
    """The client in service: MQTT 5, a persistent session (fixed client id, clean start off, session expiry),
    acknowledgements left to the collector."""
    client = paho_client(BrokerTarget.parse(settings.mqtt_url_for("collector")), settings.collector_client_id,
                         client_class=BufferedClient, protocol=mqtt.MQTTv5, clean_start=False,
                         properties=session_properties(settings), manual_ack=True)

    def on_connect(c: object, userdata: object, flags: mqtt.ConnectFlags, reason: mqtt.ReasonCode,
                   properties: Properties | None) -> None:
        handlers.on_connect(c, userdata, flags, reason, properties)
        if not reason.is_failure and flags.session_present:  # a fresh session holds no old subscription
            for topic in stale_subscriptions(settings):
                client.unsubscribe(topic)  # after the new SUBSCRIBE: no gap; a filter not held is answered harmlessly

    client.on_connect = on_connect
    client.on_subscribe = handlers.on_subscribe
    client.on_disconnect = handlers.on_disconnect
    client.on_publishes = handlers.on_publishes

    def on_message(c: object, userdata: object, message: mqtt.MQTTMessage) -> None:  # what paho handles itself
        handlers.on_publishes(c, userdata, [(message._topic, bytes(message.payload), message.mid, message.qos)])

    client.on_message = on_message
    return client


class Batcher(Generic[T]):
    """The bounded hand-off between the network thread and the writer thread, taken off in batches.

    The network thread appends what one read brought to a list under a plain lock (issue 16: a ``queue.Queue`` put
    per message — a lock, a condition and a notify each — was ~15 % of a draining collector's samples); it wakes the
    writer only when the list goes from empty to holding items, or reaches a full batch. The writer takes a whole
    batch at once (the list itself, when it holds no more than a batch).

    ``put_many`` blocks while ``maxsize`` items wait: backpressure to the broker instead of unbounded memory. ``take``
    returns up to ``batch_size`` items; a partial batch is cut once ``flush_s`` has passed since the writer saw its
    first item (``cut_by_deadline`` then says so). ``close`` makes ``take`` return what is queued, and say so.
    """

    def __init__(self, maxsize: int, batch_size: int, flush_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.flush_s = flush_s
        self._monotonic = monotonic
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the writer waits here: a first item, a full batch, close
        self._room = threading.Condition(self._lock)  # the network thread waits here while maxsize items wait
        self._closed = False
        self.cut_by_deadline = False  # the last batch taken was partial, cut by the flush interval

    def put_many(self, items: list[T]) -> None:
        """Append these in order, as many at a time as there is room for."""
        done = 0
        with self._lock:
            while done < len(items):
                while len(self._items) >= self.maxsize:
                    self._room.wait()
                before = len(self._items)
                take = items[done:done + self.maxsize - before]
                self._items += take
                done += len(take)
                if before == 0 or before < self.batch_size <= len(self._items):
                    self._ready.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()

    def qsize(self) -> int:
        return len(self._items)

    def take(self, idle_s: float) -> tuple[list[T], bool]:
        """The next batch, and True once ``close`` was reached and nothing is left. An empty batch (not closed)
        after ``idle_s`` without any item."""
        with self._lock:
            if not self._items and not self._closed:
                self._ready.wait(idle_s)
            if not self._items:
                return [], self._closed
            deadline = self._monotonic() + self.flush_s
            self.cut_by_deadline = False
            while len(self._items) < self.batch_size and not self._closed:
                remaining = deadline - self._monotonic()
                # cut by the flush interval: by the injected clock, or when the wait itself timed out (a frozen
                # test clock never reaches the deadline)
                if remaining <= 0 or not self._ready.wait(remaining):
                    self.cut_by_deadline = True
                    break
            was_full = len(self._items) >= self.maxsize
            if len(self._items) <= self.batch_size:
                batch, self._items = self._items, []
            else:
                batch = self._items[:self.batch_size]
                del self._items[:self.batch_size]
            if was_full:
                self._room.notify_all()
            return batch, self._closed and not self._items


class InflightWindowWatch:
    """Notices batches persistently capped by an in-flight window (issue 16), to say so once with the fix.

    With acknowledge-after-commit, a broker lets at most its in-flight window of unacknowledged messages out to us
    (MQTT 5 Receive Maximum, or a broker-side cap such as EMQX's ``max_inflight``, or Mosquitto's
    ``max_inflight_messages`` for MQTT 3.1.1 sessions). When that window is smaller than a batch, the writer gets
    the window, then nothing more until it acknowledges: every batch has exactly the window's size and was cut by
    the flush timer, not by the batch size. ``batches`` such batches in a row (while the window is the limit, a
    backlog exists by definition: the broker holds the rest) make one report; the next report needs a larger batch
    first (the window was lifted), so the log line comes once per condition, not once per batch. A live stream
    also gives partial batches, but their sizes vary; the same size ``batches`` times in a row is the window's
    mark. (Arrival times do not tell them apart: Mosquitto 2.0 releases a window's messages spread over the
    interval, not in one burst.)
    """

    def __init__(self, batch_size: int, batches: int = 10) -> None:
        self.batch_size = batch_size
        self.batches = batches
        self._size = 0
        self._run = 0
        self.reported: int | None = None  # the window last reported, until a larger batch is seen

    def observe(self, size: int, cut_by_deadline: bool) -> int | None:
        """The window, the first time ``batches`` batches in a row were capped at it; otherwise None."""
        if self.reported is not None and size > self.reported:
            self.reported = None
        capped = cut_by_deadline and 1 < size < self.batch_size
        if not capped or size != self._size:
            self._size, self._run = (size, 1) if capped else (0, 0)
            return None
        self._run += 1
        if self._run < self.batches or self.reported == size:
            return None
        self.reported = size
        return size


class _Received(msgspec.Struct, gc=False):  # one per message: made in C, a third of a slotted dataclass's cost
    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int


class _Commit:
    """One batch being made durable and acknowledged (``Collector._flush``) on a thread of its own, so that the
    writer thread decodes the next batch meanwhile. A thread per batch (a few a second at most) keeps the hand-off
    trivially correct: ``settle`` is a join."""

    def __init__(self, thread: threading.Thread, writer: ReadingStore) -> None:
        self._thread = thread
        self.writer = writer  # its commit lane

    @classmethod
    def start(cls, flush: Callable[[], None], writer: ReadingStore) -> _Commit:
        thread = threading.Thread(target=flush, name="sanitel-commit", daemon=True)
        thread.start()
        return cls(thread, writer)

    def turn(self) -> Turn:
        """What a write that must commit after this one waits for."""
        def settled(timeout: float) -> bool:
            self._thread.join(timeout)
            return not self._thread.is_alive()

        return Turn(settled, lambda: self.writer.session_pid)

    @staticmethod
    def settle(commit: _Commit | None) -> None:
        """Wait until the batch is durable and acknowledged (or left unacknowledged); None: nothing in flight."""
        if commit is not None:
            commit._thread.join()

    @staticmethod
    def settle_all(commits: list[_Commit]) -> list[_Commit]:
        """Wait for every commit in flight, oldest first; returns the empty list that is now in flight."""
        for commit in commits:
            commit._thread.join()
        return []


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Collector:
    def __init__(self, settings: Settings, *, serve_metrics: bool = True,
                 client_factory: ClientFactory = paho_collector_client, writer: ReadingStore | None = None,
                 monotonic: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = _utc_now,
                 idle_wake_s: float = _IDLE_WAKE_S, heartbeat: StageHeartbeat | None = None,
                 lane_writer: ReadingStore | None = None) -> None:
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.limits = DecodeLimits(settings.max_payload_bytes, timedelta(seconds=settings.max_future_skew_s))
        # the device registry's cache follows changes by LISTEN/NOTIFY (started with the collector)
        self.registry: DeviceRegistry | None = None
        if writer is None:
            url = settings.database_url_for("ingest")
            self.registry = DeviceRegistry(url, refresh_s=settings.registry_refresh_s, clock=monotonic)
            writer = ReadingWriter(
                url, collector_id=settings.collector_client_id, auto_register=settings.auto_register_devices,
                payload_keep_bytes=settings.dead_letter_payload_bytes,
                dead_letters_per_message=settings.dead_letters_per_message, registry=self.registry,
                auto_register_per_minute=settings.auto_register_per_minute,
                require_hj212_password=settings.hj212_require_password, clock=monotonic,
                more_waiting=lambda: self._batcher.qsize() > 0)
            if settings.collector_commit_lanes == 2:
                lane_writer = writer.twin()
            if heartbeat is None:
                heartbeat = DatabaseHeartbeat(url, settings.collector_client_id, settings.collector_heartbeat_s)
        self.writer: ReadingStore = writer
        # the writers of the commit lanes, used in turn (the first is ``writer``): see ``_write_loop``
        self._lanes: list[ReadingStore] = [writer] if lane_writer is None else [writer, lane_writer]
        self.heartbeat = heartbeat  # None (an injected writer without one): no heartbeats
        self._next_beat: float | None = None  # monotonic time of the next heartbeat; None: at once
        self._started_at: datetime | None = None
        self.spool = Spool(settings.effective_spool_dir / settings.collector_client_id,
                           max_bytes=settings.spool_max_bytes)
        self.metrics.spool_max_bytes.set(settings.spool_max_bytes)
        self._idle_wake_s = idle_wake_s  # the writer's longest sleep; also the retry period of a held batch
        self._held: list[_Received] = []  # a batch the full spool refused: unacknowledged, retried
        self._full_reason: str | None = None  # set while the spool refuses batches (backpressure)
        self._stop_requested = threading.Event()
        self._monotonic = monotonic  # flush deadlines, write latency, spool replay pacing
        self._now = now  # receive time of a message (checked against device time; stored with dead letters)
        self._batcher: Batcher[_Received] = Batcher(settings.collector_queue_max, settings.collector_batch_size,
                                                    settings.collector_flush_ms / 1000, monotonic)
        self._window = InflightWindowWatch(settings.collector_batch_size)
        self._accepting = threading.Event()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._writer_thread = threading.Thread(target=self._write_loop, name="sanitel-writer", daemon=True)
        self._serve_metrics = serve_metrics and settings.collector_metrics_port > 0
        self._db_down_since: float | None = None
        self._broker = BrokerTarget.parse(settings.mqtt_url_for("collector"))  # for log lines
        self._topic_names: dict[bytes, str] = {}
        self.client = client_factory(settings, ClientHandlers(self._on_connect, self._on_subscribe,
                                                              self._on_disconnect, self._on_publishes))

    # --- MQTT events (the client's network thread) ------------------------------------------
    def _on_connect(self, client: object, userdata: object, flags: mqtt.ConnectFlags, reason: mqtt.ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        topic = subscription(self.settings.city, self.settings.collector_share_group)
        self.client.subscribe(topic, qos=1)
        log.info("connected to %s:%s (session present: %s), subscribed to %s", self._broker.host,
                 self._broker.port, flags.session_present, topic)

    def _on_subscribe(self, client: object, userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      properties: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription: %s", reasons)
            return
        self._connected.set()  # ready: on a fresh session nothing is routed to us before the SUBACK
        # connected *and* subscribed: a shared subscription's messages published before it reach the other workers
        # or, with none, nobody
        self.metrics.broker_connected.set(1)

    def _on_disconnect(self, client: object, userdata: object, flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        self.metrics.broker_connected.set(0)
        if not self._stopped.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_publishes(self, client: object, userdata: object, publishes: list[Publish]) -> None:
        """Messages as the client read them: all of one network read at once, which is also their receive time."""
        if not self._accepting.is_set():
            return  # stopping: not acknowledged, so the broker keeps them for the next run
        at = self._now()
        names = self._topic_names
        received = []
        for raw_topic, payload, mid, qos in publishes:
            topic = names.get(raw_topic)
            if topic is None:
                topic = self._topic_name(raw_topic)
            received.append(_Received(topic, payload, at, mid, qos))
        # blocks while full: backpressure to the broker instead of unbounded memory
        self._batcher.put_many(received)

    def _topic_name(self, raw: bytes) -> str:
        """The topic as text (a device sends on the same few all its life: remembered, up to a bound)."""
        try:
            topic = raw.decode("utf-8")
        except UnicodeDecodeError:  # brokers should refuse such topics; if one comes, dead-letter it
            return raw.decode("utf-8", "replace")
        if len(self._topic_names) < _TOPIC_NAMES_KEPT:
            self._topic_names[raw] = topic
        return topic

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, wait_connected: float = 10.0) -> None:
        self._started_at = self._now()
        if self._serve_metrics:
            port = self.settings.collector_metrics_port
            try:
                start_http_server(port, addr="127.0.0.1", registry=self.metrics.registry)
            except OSError as exc:
                raise SanitelError(f"cannot serve the collector's metrics on 127.0.0.1:{port}: {exc.strerror or exc}; "
                                   "set SANITEL_COLLECTOR_METRICS_PORT to a free port (with --workers N, the other "
                                   "workers take the ports above it), or 0 for none") from None
        if self.registry is not None:
            self.registry.start()
        if not self.writer.ping():
            log.warning("database not reachable at start; spooling until it is")
            self._db_down_since = self._monotonic()
        self.spool.write_status(full=False, reason=None)
        self._replay_safely()
        self._accepting.set()
        self._writer_thread.start()
        try:
            self.client.reconnect()
        except OSError as exc:  # the network thread keeps trying, with paho's reconnect delays
            log.warning("broker %s:%s not reachable yet (%s); retrying in the background",
                        self._broker.host, self._broker.port, exc)
        self.client.loop_start()
        self._connected.wait(wait_connected)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, flush what was taken, acknowledge it, disconnect. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._accepting.clear()
        self._stop_requested.set()  # a held batch gets one last try, then stays with the broker
        self._batcher.close()
        self._writer_thread.join(timeout)
        self._stopped.set()
        if self._connected.is_set() and not self.client.wait_acks_read(_ACKS_READ_TIMEOUT_S):
            log.warning("the broker did not confirm within %.0f s that it read our last acknowledgements; it may "
                        "deliver those messages again on the next connection (stored once all the same)",
                        _ACKS_READ_TIMEOUT_S)
        self.client.disconnect()
        self.client.loop_stop()
        for writer in self._lanes:
            writer.close()
        if self.heartbeat is not None:
            self.heartbeat.close()  # the writer thread, its only user, has ended
        if self.registry is not None:
            self.registry.stop()
        self.spool.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        """Take a batch and decode it while earlier batches commit, each on a thread of its own (``_Commit``) and a
        commit lane (a writer, a database connection) of its own: with two lanes a batch is COPYed while the one
        before it is still being stored and committed. A batch is acknowledged only after it is durable and the
        batch before it has been acknowledged (or left unacknowledged), so acknowledgements go out in the order the
        batches came (issue 16: one thread that decoded, then waited for PostgreSQL, then acknowledged, left the GIL
        idle for the whole commit and drained a backlog at ~18k messages/s; one batch in the database at a time
        left it idle for part of every commit still). Everything that touches the spool or a held batch runs only
        after the commits before it have settled: here with nothing in flight, in a commit after its predecessor
        (``_flush``)."""
        closed = False
        in_flight: list[_Commit] = []  # oldest first; at most one per lane
        lane = 0  # the next batch's; lanes are taken in turn, so the next one's last commit has settled
        while not closed:
            self._beat_if_due()  # the heartbeat's own connection: safe while commits are in flight
            if not in_flight and self._held:  # (only a settled commit may have set it)
                held, self._held = self._held, []
                self._flush(held)
                if self._held:  # still refused: take nothing more (backpressure), try again soon
                    self._stop_requested.wait(self._idle_wake_s)
                    continue
            batch, closed = self._batcher.take(self._idle_wake_s)
            if not batch:
                in_flight = _Commit.settle_all(in_flight)
                self._flush_last_seen()
                if not closed:
                    self._replay_safely()
                continue
            self.metrics.queue_depth.set(self._batcher.qsize())
            for kind, n in Counter(_topic_kind(r.topic) for r in batch).items():  # one increment per kind
                self.metrics.received.labels(kind).inc(n)
            self._watch_window(batch)
            decoded = self._predecode(batch)  # overlaps the commits in flight
            if len(in_flight) == len(self._lanes):
                _Commit.settle(in_flight.pop(0))
            if not self._may_overlap(decoded):  # the spool or a held batch may be touched: one commit at a time
                in_flight = _Commit.settle_all(in_flight)
            if self._held:  # the full spool refused an earlier batch: this one queues behind it, unacknowledged
                in_flight = _Commit.settle_all(in_flight)  # (those in flight queue behind it first)
                self._held += batch
                continue
            writer, previous = self._lanes[lane], in_flight[-1] if in_flight else None
            lane = (lane + 1) % len(self._lanes)
            in_flight.append(_Commit.start(functools.partial(self._flush, batch, decoded, writer, previous), writer))
        _Commit.settle_all(in_flight)
        self._flush_last_seen()

    def _flush_last_seen(self) -> None:
        """With nothing in flight: upsert the last-seen rows held while a backlog drained, should no batch have
        carried them (the database down: they wait for the next batch, or are lost with the process — see
        ``processors.last_seen``)."""
        if self._db_down_since is not None:
            return
        try:
            self.writer.flush_last_seen()
        except DatabaseUnavailable:
            pass  # the next batch finds out, and spools
        except Exception:  # never let the writer thread die
            log.exception("unexpected error upserting the held last-seen rows")

    def _may_overlap(self, decoded: list[Message] | None) -> bool:
        """Whether the next batch may be written while another commits: only when it goes straight to the
        database (decoded, the database up, nothing spooled or held). Read while a commit may change it, so only a
        hint: a batch that meets the spool anyway does so after the commit before it has settled (``_flush``)."""
        return decoded is not None and self._db_down_since is None and not self._held and self.spool.is_empty()

    def _predecode(self, batch: list[_Received]) -> list[Message] | None:
        """The batch decoded for the database, or None when that has to wait for the commit (the database or the
        registry is unreachable: the batch will be spooled raw or decoded again then)."""
        if self._db_down_since is not None:
            return None
        try:
            return self._decode([(r.topic, r.payload, r.received_at) for r in batch])
        except Exception:  # the commit decodes again and meets the same error on its own path (spool, log)
            return None

    def _watch_window(self, batch: list[_Received]) -> None:
        """Say once, with the fix, when an in-flight window keeps batches small (see ``InflightWindowWatch``)."""
        window = self._window.observe(len(batch), self._batcher.cut_by_deadline)
        self.metrics.inflight_window.set(self._window.reported or 0)
        if window is None:
            return
        s = self.settings
        if window >= receive_maximum(s):
            log.warning("our own receive maximum caps batches at %d messages (SANITEL_COLLECTOR_QUEUE_MAX=%d is below "
                        "SANITEL_COLLECTOR_BATCH_SIZE=%d): every batch waits %d ms for messages the broker may not "
                        "send yet. Fix: raise SANITEL_COLLECTOR_QUEUE_MAX to a few batches", window,
                        s.collector_queue_max, s.collector_batch_size, s.collector_flush_ms)
            return
        log.warning("broker in-flight window caps batches at %d messages (%d batches in a row, each cut by the %d ms "
                    "flush timer while the broker held the rest back until they were acknowledged; we asked for up "
                    "to %d): set max_inflight_messages 0 (Mosquitto; MQTT 5 sessions there follow our receive "
                    "maximum) / raise the broker's in-flight window or receive-maximum for this client (EMQX: "
                    "mqtt.max_inflight) to at least SANITEL_COLLECTOR_BATCH_SIZE=%d. See docs/ingest.md, "
                    "\"Running against an external broker\"", window, self._window.batches, s.collector_flush_ms,
                    receive_maximum(s), s.collector_batch_size)

    def _beat_if_due(self) -> None:
        """A heartbeat every ``collector_heartbeat_s`` while subscribed and writing to the database: a collector
        that spools (database unreachable) or has lost the broker takes in nothing, so it does not report."""
        if self.heartbeat is None or not self._connected.is_set() or self._db_down_since is not None:
            return
        if self._next_beat is not None and self._monotonic() < self._next_beat:
            return
        self._next_beat = self._monotonic() + self.settings.collector_heartbeat_s  # after a failure too: no storm
        now = self._now()
        self.heartbeat.beat(now, self._started_at or now)

    def _flush(self, batch: list[_Received], decoded: list[Message] | None = None, writer: ReadingStore | None = None,
               previous: _Commit | None = None) -> None:
        """Make the batch durable, then acknowledge it in order; a batch that fails stays unacknowledged, and one
        the full spool refused is held for another try (unless stopping: then the broker keeps it). ``decoded``:
        the batch already decoded (``_predecode``), used when it goes straight to the database; ``writer``: its
        commit lane (default the first); ``previous``: the commit before it, still in flight on the other lane —
        this batch's write overlaps it but commits after it (``Turn``), and nothing else of this batch happens
        before it has settled."""
        writer = writer or self.writer
        if previous is not None:
            written = self._write_overlapping(batch, decoded, writer, previous.turn())
            _Commit.settle(previous)
            if written is None:
                return  # a failure that is not the database's: left unacknowledged, as below
            if self._held:  # the batch before was refused by the full spool: this one waits behind it (it is
                self._held += batch  # stored already; the retry finds it there)
                return
            if written:
                self._acknowledge(batch)
                return
        try:
            self._persist(batch, decoded, writer)
        except SpoolFull as exc:
            self._spool_refused(str(exc))
            if not self._stop_requested.is_set():
                self._held = batch
            return
        except Exception:  # never let the writer thread die: the messages stay unacknowledged
            log.exception("unexpected error writing a batch of %d; left unacknowledged, the broker "
                          "redelivers it on the next connection", len(batch))
            return
        self._acknowledge(batch)

    def _write_overlapping(self, batch: list[_Received], decoded: list[Message] | None, writer: ReadingStore,
                           turn: Turn) -> bool | None:
        """Write the batch while the commit before it may still run, committing after it: True when stored; False
        when the database is unavailable or the two batches' writes met (the caller writes it again, or takes the
        spool's way, once that commit has settled); None after anything else, logged (the batch stays
        unacknowledged)."""
        try:
            self._write([(r.topic, r.payload, r.received_at) for r in batch], decoded, writer, turn)
            return True
        except OutOfTurn as exc:
            log.info("%s: writing the batch again after it", exc)
            self.metrics.out_of_turn.inc()
            return False
        except DatabaseUnavailable:  # (the writer has closed its connection)
            return False
        except Exception:
            log.exception("unexpected error writing a batch of %d; left unacknowledged, the broker "
                          "redelivers it on the next connection", len(batch))
            return None

    def _acknowledge(self, batch: list[_Received]) -> None:
        self.client.ack_many([r.mid for r in batch if r.qos == 1])
        if self._full_reason is not None:
            self._spool_accepting()

    def _persist(self, batch: list[_Received], decoded: list[Message] | None = None,
                 writer: ReadingStore | None = None) -> None:
        writer = writer or self.writer
        raw: list[SpooledMessage] = [(r.topic, r.payload, r.received_at) for r in batch]
        if self._db_down_since is not None or not self.spool.is_empty():
            self._replay_safely(writer)  # when the database is back this drains the spool (and frees space)
        if self._db_down_since is None and self.spool.is_empty():
            try:
                self._write(raw, decoded, writer)
                return
            except DatabaseUnavailable as exc:
                log.warning("database unavailable (%s); spooling to %s", exc, self.spool.folder)
                self._db_down_since = self._monotonic()
                self.metrics.database_up.set(0)
        self._spool(raw)  # behind what is spooled already: order kept

    def _decode(self, raw: list[SpooledMessage]) -> list[Message]:
        bases = self._hj212_bases(raw)
        return [Message(topic, payload, at,
                        decode_message(topic, payload, at, self.limits, bases.get(topic, DEFAULT_BASIS)))
                for topic, payload, at in raw]

    def _write(self, raw: list[SpooledMessage], decoded: list[Message] | None = None,
               writer: ReadingStore | None = None, turn: Turn | None = None) -> WriteResult:
        messages = decoded if decoded is not None else self._decode(raw)
        started = self._monotonic()
        result = (writer or self.writer).write(messages, turn)
        self.metrics.write_latency.observe(self._monotonic() - started)
        self.metrics.batch_size.observe(len(messages))
        self.metrics.database_up.set(1)
        for kind, n in result.accepted.items():
            self.metrics.accepted.labels(kind).inc(n)
        for table, n in result.duplicates.items():
            if n:
                self.metrics.duplicates.labels(table).inc(n)
        for (kind, reason), n in result.rejected.items():
            self.metrics.rejected.labels(kind, reason).inc(n)
        for lag in result.lags_s:
            self.metrics.lag.observe(lag)
        if result.auto_registered:
            self.metrics.devices_auto_registered.inc(result.auto_registered)
        if result.auto_register_refused:
            self.metrics.auto_register_refused.inc(result.auto_register_refused)
        return result

    def _hj212_bases(self, raw: list[SpooledMessage]) -> dict[str, Hj212Basis]:
        """Topic → time zone and gas basis of the batch's HJ 212 frames: their devices' settings in the registry
        (cached; the writer's lookup of the same devices then hits the cache). An unregistered MN, or a collector
        without a registry, reads them with the defaults."""
        if self.registry is None:
            return {}
        mns: dict[str, str] = {}
        for topic, _, _ in raw:
            if topic.endswith("/hj212"):  # the only topics whose decoding depends on the device's settings
                with contextlib.suppress(TopicError):
                    parsed = parse_topic(topic)
                    if isinstance(parsed, Hj212Topic):
                        mns[topic] = parsed.mn
        if not mns:
            return {}
        try:
            entries = self.registry.lookup(set(mns.values()))
        except RegistryUnavailable as exc:  # the database is what is missing: spool, decode on replay
            raise DatabaseUnavailable(str(exc)) from None
        return {topic: entries[mn].hj212.resolve() for topic, mn in mns.items() if mn in entries}

    def _spool(self, raw: list[SpooledMessage]) -> None:
        """Append and fsync; SpoolFull (nothing durable) when at the cap or the disk is full."""
        try:
            self.spool.append(raw)
        finally:
            self.metrics.spool_backlog_bytes.set(self.spool.backlog_bytes())
        self.metrics.spooled.inc(len(raw))

    def _spool_refused(self, reason: str) -> None:
        self.metrics.spool_full.set(1)
        if self._full_reason is not None:
            return  # said once
        self._full_reason = reason
        log.warning("spool full: %s. New messages are not acknowledged; the broker keeps them in the session "
                    "(nothing is lost) and ingestion resumes by itself once replay frees space. Fix: bring the "
                    "database back (replay drains the spool), or free disk space / raise SANITEL_SPOOL_MAX_BYTES "
                    "(now %d bytes) for %s", reason, self.settings.spool_max_bytes, self.spool.folder)
        self.spool.write_status(full=True, reason=reason)

    def _spool_accepting(self) -> None:
        log.info("spool accepting again (%d bytes of %d); acknowledging resumed", self.spool.backlog_bytes(),
                 self.settings.spool_max_bytes)
        self._full_reason = None
        self.metrics.spool_full.set(0)
        self.spool.write_status(full=False, reason=None)

    def _replay_safely(self, writer: ReadingStore | None = None) -> None:
        """Replay, and log rather than raise whatever goes wrong: neither start() nor the writer thread may die of
        the spool (a failed replay is retried on the next idle wake). ``writer``: the lane to replay on (a commit's
        own, while the next batch may be written on the other; default the first)."""
        try:
            self._replay_spool_if_possible(writer or self.writer)
        except Exception:
            log.exception("spool replay failed; retrying shortly")
            self._db_down_since = self._monotonic()  # paces the retry like an outage

    def _replay_spool_if_possible(self, writer: ReadingStore) -> None:
        """Replay spooled segments oldest first once the database answers; at most every second while down."""
        if self.spool.is_empty() and self._db_down_since is None:
            return
        if self._db_down_since is not None and self._monotonic() - self._db_down_since < 1.0:
            return
        if not writer.ping():
            self._db_down_since = self._monotonic()
            return
        while (segment := self.spool.oldest_segment()) is not None:
            if not self._replay_segment(segment, writer):
                self._db_down_since = self._monotonic()
                return
            self.metrics.spool_backlog_bytes.set(self.spool.backlog_bytes())
        self._db_down_since = None
        self.metrics.database_up.set(1)

    def _replay_segment(self, segment: Path, writer: ReadingStore) -> bool:
        """Write a segment's records, quarantine what cannot be replayed, then delete it. False when the database
        went away (the segment stays, to be replayed again: idempotent writes)."""
        contents = self.spool.read_segment(segment)
        bad = list(contents.bad)
        size = self.settings.collector_batch_size
        try:
            for i in range(0, len(contents.records), size):
                bad += self._replay_records(contents.records[i:i + size], writer)
        except DatabaseUnavailable:
            return False
        if bad:
            target = self.spool.quarantine(segment, bad)
            for span in bad:
                self.metrics.spool_quarantined.labels(span.reason).inc()
                log.error("spool record quarantined: %s, %d bytes at offset %d of %s (%s); copied to %s",
                          span.reason, span.length, span.offset, segment.name, span.detail, target)
        self.spool.remove(segment)
        log.info("replayed %d spooled messages from %s%s", len(contents.records) - len(bad) + len(contents.bad),
                 segment.name, " (old format)" if contents.legacy else "")
        return True

    def _replay_records(self, records: list[SpoolRecord], writer: ReadingStore) -> list[BadSpan]:
        """Write spooled records; a failure that is not the database going away is the content's: bisect down to
        the record(s) that cause it and return them, to be quarantined, after writing the rest."""
        try:
            self._write([r.message for r in records], writer=writer)
            return []
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            error = exc
        writer.close()  # nothing half-written survives: the next write starts on a fresh connection
        if not writer.ping():
            raise DatabaseUnavailable(f"database lost during replay ({error.__class__.__name__})") from error
        if len(records) > 1:
            half = len(records) // 2
            return self._replay_records(records[:half], writer) + self._replay_records(records[half:], writer)
        log.error("a spooled message cannot be written (topic %r); quarantining it", records[0].message[0],
                  exc_info=error)
        return [BadSpan(records[0].offset, records[0].length, "replay_error", f"{error.__class__.__name__}: {error}")]


@functools.lru_cache(maxsize=_TOPIC_NAMES_KEPT)  # a device sends on the same few topics all its life
def _topic_kind(topic: str) -> str:
    parts = topic.split("/", 3)
    # only known kinds become label values: a bad topic must not create a new time series
    return parts[2] if len(parts) > 2 and parts[2] in _TOPIC_KINDS else "invalid"
