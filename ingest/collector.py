"""The MQTT collector: QoS 1, persistent session, acknowledgement only once a message is durable.

Threads: the MQTT client's network thread receives and puts messages on a bounded queue (the MQTT 5 Receive
Maximum and the queue bound memory: when full, the broker holds the rest); the writer thread takes them off
in batches, writes them (``processors.writer``) — or, while the database is unreachable, fsyncs them to the
spool (``processors.spool``) — and only then acknowledges them, in order. Redelivery after a crash is
harmless because writes are idempotent. ``stop()`` stops taking messages, flushes, acks, and disconnects;
messages that arrive after that are not acknowledged and stay with the broker.

Seams (Telegraf's mqtt_consumer gets its client the same way): the MQTT client comes from a factory
(``paho_collector_client`` in service) and needs only what ``MqttClient`` lists; the writer is anything with
``ReadingStore``'s three methods; both clocks are parameters. Unit tests drive the batching and ack policy
with a fake client, an in-memory writer and a clock they move by hand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, Protocol, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server

from sanitel.ingest.buffered_client import BufferedClient
from sanitel.ingest.decode import DecodeLimits, decode_message
from sanitel.ingest.metrics import CollectorMetrics
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.processors.spool import Spool, SpooledMessage
from sanitel.processors.writer import DatabaseUnavailable, Message, ReadingWriter, WriteResult
from sanitel.schemas.topics import DEVICE_KINDS, subscription
from sanitel.settings import Settings

log = logging.getLogger("sanitel.collector")
_TOPIC_KINDS = frozenset((*DEVICE_KINDS, "gateway"))
_IDLE_WAKE_S = 1.0  # the writer wakes at least this often: the spool must replay even when no traffic arrives

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

    def disconnect(self) -> object: ...

    def loop_stop(self) -> object: ...


@dataclass(frozen=True, slots=True)
class ClientHandlers:
    """The collector's handlers for the client's events (paho's callback API version 2), called from its network
    thread. The first argument is the client itself; the collector does not use it."""

    on_connect: Callable[[object, object, mqtt.ConnectFlags, mqtt.ReasonCode, Properties | None], None]
    on_subscribe: Callable[[object, object, int, list[mqtt.ReasonCode], Properties | None], None]
    on_disconnect: Callable[[object, object, mqtt.DisconnectFlags, mqtt.ReasonCode, Properties | None], None]
    on_message: Callable[[object, object, mqtt.MQTTMessage], None]


ClientFactory = Callable[[Settings, ClientHandlers], MqttClient]


class ReadingStore(Protocol):
    """Where batches become durable: ``processors.writer.ReadingWriter`` in service, an in-memory fake in tests."""

    def ping(self) -> bool: ...

    def write(self, messages: list[Message]) -> WriteResult:
        """Commit the batch in one transaction (readings and dead letters); DatabaseUnavailable leaves nothing."""

    def close(self) -> None: ...


def session_properties(settings: Settings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    # the broker may have at most this many unacknowledged messages out to us: bounds our memory
    props.ReceiveMaximum = min(65535, settings.collector_queue_max)
    return props


def paho_collector_client(settings: Settings, handlers: ClientHandlers) -> BufferedClient:
    """The client in service: MQTT 5, a persistent session (fixed client id, clean start off, session expiry),
    acknowledgements left to the collector."""
    client = paho_client(BrokerTarget.parse(settings.effective_mqtt_url), settings.collector_client_id,
                         client_class=BufferedClient, protocol=mqtt.MQTTv5, clean_start=False,
                         properties=session_properties(settings), manual_ack=True)
    client.on_connect = handlers.on_connect
    client.on_subscribe = handlers.on_subscribe
    client.on_disconnect = handlers.on_disconnect
    client.on_message = handlers.on_message
    return client


class Batcher(Generic[T]):
    """The bounded queue between the network thread and the writer thread, taken off in batches.

    ``put`` blocks while the queue is full: backpressure to the broker instead of unbounded memory. ``take``
    returns up to ``batch_size`` items; a partial batch is cut once ``flush_s`` has passed since its first item
    and nothing more is queued. ``close`` makes the next ``take`` return what is queued, and say so.
    """

    _STOP = object()

    def __init__(self, maxsize: int, batch_size: int, flush_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self.batch_size = batch_size
        self.flush_s = flush_s
        self._monotonic = monotonic

    def put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(self._STOP)

    def qsize(self) -> int:
        return self._queue.qsize()

    def take(self, idle_s: float) -> tuple[list[T], bool]:
        """The next batch, and True once ``close`` was reached. An empty batch (not closed) after ``idle_s``
        without any item."""
        try:
            item = self._queue.get(timeout=idle_s)
        except queue.Empty:
            return [], False
        batch: list[T] = []
        deadline = self._monotonic() + self.flush_s
        while item is not self._STOP:
            batch.append(cast(T, item))  # anything put but the stop marker is a T
            if len(batch) >= self.batch_size:
                return batch, False
            remaining = deadline - self._monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Collector:
    def __init__(self, settings: Settings, *, serve_metrics: bool = True,
                 client_factory: ClientFactory = paho_collector_client, writer: ReadingStore | None = None,
                 monotonic: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = _utc_now) -> None:
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.limits = DecodeLimits(settings.max_payload_bytes, timedelta(seconds=settings.max_future_skew_s))
        self.writer: ReadingStore = writer if writer is not None else ReadingWriter(
            settings.effective_database_url, collector_id=settings.collector_client_id,
            auto_register=settings.auto_register_devices)
        self.spool = Spool(settings.effective_spool_dir / settings.collector_client_id)
        self._monotonic = monotonic  # flush deadlines, write latency, spool replay pacing
        self._now = now  # receive time of a message (checked against device time; stored with dead letters)
        self._batcher: Batcher[_Received] = Batcher(settings.collector_queue_max, settings.collector_batch_size,
                                                    settings.collector_flush_ms / 1000, monotonic)
        self._accepting = threading.Event()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._writer_thread = threading.Thread(target=self._write_loop, name="sanitel-writer", daemon=True)
        self._serve_metrics = serve_metrics and settings.collector_metrics_port > 0
        self._db_down_since: float | None = None
        self._broker = BrokerTarget.parse(settings.effective_mqtt_url)  # for log lines
        self.client = client_factory(settings, ClientHandlers(self._on_connect, self._on_subscribe,
                                                              self._on_disconnect, self._on_message))

    # --- MQTT events (the client's network thread) ------------------------------------------
    def _on_connect(self, client: object, userdata: object, flags: mqtt.ConnectFlags, reason: mqtt.ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        topic = subscription(self.settings.city, self.settings.collector_share_group)
        self.client.subscribe(topic, qos=1)
        self.metrics.broker_connected.set(1)
        log.info("connected to %s:%s (session present: %s), subscribed to %s", self._broker.host,
                 self._broker.port, flags.session_present, topic)

    def _on_subscribe(self, client: object, userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      properties: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription: %s", reasons)
            return
        self._connected.set()  # ready: on a fresh session nothing is routed to us before the SUBACK

    def _on_disconnect(self, client: object, userdata: object, flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        self.metrics.broker_connected.set(0)
        if not self._stopped.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting.is_set():
            return  # stopping: not acknowledged, so the broker keeps it for the next run
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers should refuse such topics; if one comes, dead-letter it
            topic = msg._topic.decode("utf-8", "replace")
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)  # BufferedClient: bytes
        # blocks when full: backpressure to the broker instead of unbounded memory
        self._batcher.put(_Received(topic, payload, self._now(), msg.mid, msg.qos))

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, wait_connected: float = 10.0) -> None:
        if self._serve_metrics:
            start_http_server(self.settings.collector_metrics_port, addr="127.0.0.1", registry=self.metrics.registry)
        if not self.writer.ping():
            log.warning("database not reachable at start; spooling until it is")
            self._db_down_since = self._monotonic()
        self._replay_spool_if_possible()
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
        self._batcher.close()
        self._writer_thread.join(timeout)
        self._stopped.set()
        self.client.disconnect()
        self.client.loop_stop()
        self.writer.close()
        self.spool.close()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- the writer thread -----------------------------------------------------------------
    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._batcher.take(_IDLE_WAKE_S)
            if not batch:
                if not stopping:
                    self._replay_spool_if_possible()
                continue
            self.metrics.queue_depth.set(self._batcher.qsize())
            self._flush(batch)

    def _flush(self, batch: list[_Received]) -> None:
        """Make the batch durable, then acknowledge it in order; a batch that fails stays unacknowledged."""
        try:
            self._persist(batch)
        except Exception:  # never let the writer thread die: the messages stay unacknowledged
            log.exception("unexpected error writing a batch of %d; left unacknowledged, the broker "
                          "redelivers it on the next connection", len(batch))
            return
        self.client.ack_many([r.mid for r in batch if r.qos == 1])

    def _persist(self, batch: list[_Received]) -> None:
        raw: list[SpooledMessage] = [(r.topic, r.payload, r.received_at) for r in batch]
        for r in batch:
            self.metrics.received.labels(_topic_kind(r.topic)).inc()
        if self._db_down_since is not None or not self.spool.is_empty():
            # keep order: new messages queue behind the spooled ones
            self._spool(raw)
            self._replay_spool_if_possible()
            return
        try:
            self._write(raw)
        except DatabaseUnavailable as exc:
            log.warning("database unavailable (%s); spooling to %s", exc, self.spool.folder)
            self._db_down_since = self._monotonic()
            self.metrics.database_up.set(0)
            self._spool(raw)

    def _write(self, raw: list[SpooledMessage]) -> WriteResult:
        messages = [Message(topic, payload, at, decode_message(topic, payload, at, self.limits))
                    for topic, payload, at in raw]
        started = self._monotonic()
        result = self.writer.write(messages)
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
        return result

    def _spool(self, raw: list[SpooledMessage]) -> None:
        self.spool.append(raw)
        self.metrics.spooled.inc(len(raw))
        self.metrics.spool_backlog_bytes.set(self.spool.backlog_bytes())

    def _replay_spool_if_possible(self) -> None:
        """Replay spooled segments oldest first once the database answers; at most every second while down."""
        if self.spool.is_empty() and self._db_down_since is None:
            return
        if self._db_down_since is not None and self._monotonic() - self._db_down_since < 1.0:
            return
        if not self.writer.ping():
            self._db_down_since = self._monotonic()
            return
        while (segment := self.spool.oldest_segment()) is not None:
            messages = list(self.spool.read_segment(segment))
            try:
                for i in range(0, len(messages), self.settings.collector_batch_size):
                    self._write(messages[i:i + self.settings.collector_batch_size])
            except DatabaseUnavailable:
                self._db_down_since = self._monotonic()
                return
            self.spool.remove(segment)
            self.metrics.spool_backlog_bytes.set(self.spool.backlog_bytes())
            log.info("replayed %d spooled messages from %s", len(messages), segment.name)
        self._db_down_since = None
        self.metrics.database_up.set(1)


def _topic_kind(topic: str) -> str:
    parts = topic.split("/", 3)
    # only known kinds become label values: a bad topic must not create a new time series
    return parts[2] if len(parts) > 2 and parts[2] in _TOPIC_KINDS else "invalid"
