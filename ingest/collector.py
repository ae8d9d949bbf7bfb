"""The MQTT collector: QoS 1, persistent session, acknowledgement only once a message is durable.

Threads: paho's network thread receives and puts messages on a bounded queue (the MQTT 5 Receive
Maximum and the queue bound memory: when full, the broker holds the rest); the writer thread decodes
batches, writes them (``processors.writer``) — or, while the database is unreachable, fsyncs them to
the spool (``processors.spool``) — and only then acknowledges them, in order. Redelivery after a crash
is harmless because writes are idempotent. ``stop()`` stops taking messages, flushes, acks, and
disconnects; messages that arrive after that are not acknowledged and stay with the broker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server
from sanitel.ingest.buffered_client import BufferedClient
from sanitel.ingest.decode import DecodeLimits, decode_message
from sanitel.ingest.metrics import CollectorMetrics
from sanitel.processors.spool import Spool, SpooledMessage
from sanitel.processors.writer import DatabaseUnavailable, Message, ReadingWriter, WriteResult
from sanitel.schemas.topics import DEVICE_KINDS, subscription

from sanitel.mqtt_wire import BrokerTarget
from sanitel.settings import Settings

log = logging.getLogger("sanitel.collector")
_STOP = object()
_TOPIC_KINDS = frozenset((*DEVICE_KINDS, "gateway"))


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int


class Collector:
    def __init__(self, settings: Settings, *, serve_metrics: bool = True) -> None:
        self.settings = settings
        self.metrics = CollectorMetrics()
        self.limits = DecodeLimits(settings.max_payload_bytes, timedelta(seconds=settings.max_future_skew_s))
        self.writer = ReadingWriter(settings.effective_database_url, collector_id=settings.collector_client_id,
                                    auto_register=settings.auto_register_devices)
        self.spool = Spool(settings.effective_spool_dir / settings.collector_client_id)
        self._queue: queue.Queue[_Received | object] = queue.Queue(maxsize=settings.collector_queue_max)
        self._accepting = threading.Event()
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self._writer_thread = threading.Thread(target=self._write_loop, name="sanitel-writer", daemon=True)
        self._serve_metrics = serve_metrics and settings.collector_metrics_port > 0
        self._db_down_since: float | None = None
        self.client = self._make_client()

    # --- MQTT ------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=self.settings.collector_client_id,
                                protocol=mqtt.MQTTv5, manual_ack=True)
        broker = BrokerTarget.parse(self.settings.effective_mqtt_url)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set_context(broker.ssl_context())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._broker = broker
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        # the broker may have at most this many unacknowledged messages out to us: bounds our memory
        props.ReceiveMaximum = min(65535, self.settings.collector_queue_max)
        return props

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: mqtt.ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        topic = subscription(self.settings.city, self.settings.collector_share_group)
        client.subscribe(topic, qos=1)
        self.metrics.broker_connected.set(1)
        log.info("connected to %s:%s (session present: %s), subscribed to %s", self._broker.host,
                 self._broker.port, flags.session_present, topic)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[mqtt.ReasonCode],
                      properties: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused the subscription: %s", reasons)
            return
        self._connected.set()  # ready: on a fresh session nothing is routed to us before the SUBACK

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, properties: Properties | None) -> None:
        self._connected.clear()
        self.metrics.broker_connected.set(0)
        if not self._stopped.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting.is_set():
            return  # stopping: not acknowledged, so the broker keeps it for the next run
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers should refuse such topics; if one comes, dead-letter it
            topic = msg._topic.decode("utf-8", "replace")
        # blocks when full: backpressure to the broker instead of unbounded memory
        self._queue.put(_Received(topic, msg.payload, datetime.now(UTC), msg.mid, msg.qos))

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, wait_connected: float = 10.0) -> None:
        if self._serve_metrics:
            start_http_server(self.settings.collector_metrics_port, addr="127.0.0.1", registry=self.metrics.registry)
        if not self.writer.ping():
            log.warning("database not reachable at start; spooling until it is")
            self._db_down_since = time.monotonic()
        self._replay_spool_if_possible()
        self._accepting.set()
        self._writer_thread.start()
        try:
            self.client.connect(self._broker.host, self._broker.port, keepalive=30, clean_start=False,
                                properties=self._connect_properties())
        except OSError as exc:
            log.warning("broker %s:%s not reachable yet (%s); retrying in the background",
                        self._broker.host, self._broker.port, exc)
            self.client.connect_async(self._broker.host, self._broker.port, keepalive=30, clean_start=False,
                                      properties=self._connect_properties())
        self.client.loop_start()
        self._connected.wait(wait_connected)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, flush what was taken, acknowledge it, disconnect. Safe to call twice."""
        if self._stopped.is_set():
            return
        self._accepting.clear()
        self._queue.put(_STOP)
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
        batch_max = self.settings.collector_batch_size
        flush_s = self.settings.collector_flush_ms / 1000
        stopping = False
        while not stopping:
            batch: list[_Received] = []
            try:
                # wake at least once a second: the spool must replay even when no traffic arrives
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._replay_spool_if_possible()
                continue
            deadline = time.monotonic() + flush_s
            while True:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= batch_max:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
            self.metrics.queue_depth.set(self._queue.qsize())
            if batch:
                try:
                    self._persist(batch)
                except Exception:  # never let the writer thread die: the messages stay unacknowledged
                    log.exception("unexpected error writing a batch of %d; left unacknowledged, the broker "
                                  "redelivers it on the next connection", len(batch))
                    continue
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
            self._db_down_since = time.monotonic()
            self.metrics.database_up.set(0)
            self._spool(raw)

    def _write(self, raw: list[SpooledMessage]) -> WriteResult:
        messages = [Message(topic, payload, at, decode_message(topic, payload, at, self.limits))
                    for topic, payload, at in raw]
        started = time.perf_counter()
        result = self.writer.write(messages)
        self.metrics.write_latency.observe(time.perf_counter() - started)
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
        if self._db_down_since is not None and time.monotonic() - self._db_down_since < 1.0:
            return
        if not self.writer.ping():
            self._db_down_since = time.monotonic()
            return
        while (segment := self.spool.oldest_segment()) is not None:
            messages = list(self.spool.read_segment(segment))
            try:
                for i in range(0, len(messages), self.settings.collector_batch_size):
                    self._write(messages[i:i + self.settings.collector_batch_size])
            except DatabaseUnavailable:
                self._db_down_since = time.monotonic()
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
