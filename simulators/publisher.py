"""Publishing to an MQTT broker at QoS 1, counting what the broker acknowledged (PUBACK).

Two engines behind one interface:

- ``paho`` (default): paho-mqtt 2.x, driven from the caller's thread (no network thread, so no lock
  hand-offs per message). Full client: MQTT 3.1.1, TLS, credentials, reconnect with redelivery.
  About 15-18k messages/s on one core of the reference machine.
- ``fast``: a lean MQTT 3.1.1 publisher for load runs — CONNECT (credentials, TLS), PUBLISH at QoS 1
  written in large batches, PUBACK accounting, PINGREQ keep-alive, and on reconnect redelivery of
  every unacknowledged message with the DUP flag. It does only what a telemetry device does, which
  is why it is several times faster than paho; it is not a general MQTT client (no subscribe, no
  QoS 2, no MQTT 5).

Broker URLs: ``mqtt://user:password@host:1883`` or ``mqtts://user:password@host:8883`` (TLS with the
system's CAs). Query options: ``ca=/path/ca.pem``, ``cert=…&key=…`` (client certificate),
``insecure=1`` (skip certificate and hostname checks — test brokers only), ``client_id=…``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from sanitel.errors import SanitelError
from sanitel.mqtt_wire import DISCONNECT, PINGREQ, BrokerTarget, connect_packet, paho_client, remaining_length

ENGINES = ("paho", "fast")
CONNACK_REASONS = {
    1: "the broker does not accept MQTT 3.1.1",
    2: "the broker rejected the client id",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    reconnects: int = 0

    @property
    def unacked(self) -> int:
        return self.sent - self.acked


class Publisher(ABC):
    """Publishes at QoS 1 from the caller's thread. Not thread-safe: one thread drives it."""

    def __init__(self, target: BrokerTarget, client_id: str | None) -> None:
        self.target = target
        self.client_id = client_id or target.client_id or f"sanitel-sim-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = PublishStats()

    @abstractmethod
    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for CONNACK; SanitelError naming the broker and the fix on failure."""

    @abstractmethod
    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one message at QoS 1; blocks (servicing the connection) while the window is full."""

    @abstractmethod
    def service(self, timeout: float = 0.0) -> None:
        """Read acknowledgements, keep the connection alive, reconnect if it dropped."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect cleanly (after :meth:`flush` if acknowledgements matter)."""

    def idle(self, seconds: float) -> None:
        """Wait while keeping the connection serviced."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.service(min(left, 0.05))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the broker acknowledged everything sent; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.stats.unacked > 0 and time.monotonic() < deadline:
            self.service(0.02)
        return self.stats.unacked == 0

    def __enter__(self) -> Publisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unreachable(target: BrokerTarget, exc: BaseException) -> SanitelError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return SanitelError(f"cannot reach the broker at {target.redacted()} ({reason}); is it running? "
                        "Start the local stack with 'sanitel stack up' or pass --broker")


# --- paho engine ------------------------------------------------------------------------------


class PahoPublisher(Publisher):
    # paho rescans every in-flight message on each PUBACK, so a modest window is fastest
    INFLIGHT = 200
    QUEUE_LIMIT = 50_000  # unacknowledged messages buffered before publish() waits

    def __init__(self, target: BrokerTarget, client_id: str | None = None) -> None:
        super().__init__(target, client_id)
        # MQTT 3.1.1, clean session; paho's queue is left unlimited (publish() enforces QUEUE_LIMIT), and
        # reconnecting is service()'s job, not a network thread's
        self.client = paho_client(target, self.client_id, keepalive=60, max_inflight=self.INFLIGHT)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.connack: Any = None
        self._since_service = 0
        self._next_reconnect = 0.0

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.stats.acked += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self.client.reconnect()  # the first connection: paho_client recorded where to
        except (OSError, ssl.SSLError) as exc:
            raise unreachable(self.target, exc) from None
        deadline = time.monotonic() + timeout
        while self.connack is None and time.monotonic() < deadline:
            self.client.loop(0.05)
        if self.connack is None:
            raise SanitelError(f"no answer (CONNACK) from {self.target.redacted()} within {timeout:.0f}s")
        if self.connack.is_failure:
            raise SanitelError(f"the broker at {self.target.redacted()} refused the connection: {self.connack}; "
                               "check the user name and password in the broker URL")

    def publish(self, topic: str, payload: bytes) -> None:
        while self.stats.unacked >= self.QUEUE_LIMIT:
            self.service(0.01)
        info = self.client.publish(topic, payload, qos=1)
        # paho keeps a QoS 1 message whatever the socket said (no connection, connection lost) and sends
        # it after reconnecting; only a full queue means it was not taken
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats.errors += 1
            return
        self.stats.sent += 1
        self._since_service += 1
        if self._since_service >= 200:
            self.service(0.0)

    def service(self, timeout: float = 0.0) -> None:
        self._since_service = 0
        rc = self.client.loop(timeout)
        if rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            return
        self._reconnect()

    def _reconnect(self) -> None:
        now = time.monotonic()
        if now < self._next_reconnect:
            time.sleep(min(0.05, self._next_reconnect - now))
            return
        self.stats.errors += 1
        self._next_reconnect = now + 1.0
        try:
            self.client.reconnect()  # paho re-sends unacknowledged QoS 1 messages after CONNACK
            self.stats.reconnects += 1
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop(0.1)


# --- fast engine ------------------------------------------------------------------------------

PUBLISH_QOS1_DUP = 0x3A
PUBACK, CONNACK = 4, 2


class FastPublisher(Publisher):
    WINDOW = 20_000           # unacknowledged messages in flight (packet ids are 16-bit)
    WRITE_BATCH = 64 * 1024   # bytes gathered before one send
    RECONNECT_FOR_S = 120.0   # back off and retry this long before giving up
    RECONNECT_WAIT = wait_exponential(multiplier=0.5, max=10)  # 0.5 s, 1 s, 2 s … 10 s between attempts

    def __init__(self, target: BrokerTarget, client_id: str | None = None, keepalive: int = 60, *,
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(target, client_id)
        self.keepalive = keepalive
        self._sleep, self._monotonic = sleep, monotonic  # for reconnecting: a test passes fakes
        self.sock: socket.socket | None = None
        self.inflight: dict[int, bytes] = {}
        self.out = bytearray()
        self.inbox = bytearray()
        self.next_mid = 1
        self.last_send = time.monotonic()
        self._since_service = 0

    # --- connection ----------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        target = self.target
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.tls:
                sock = target.ssl_context().wrap_socket(sock, server_hostname=target.host)
            sock.sendall(connect_packet(self.client_id, target.username, target.password, self.keepalive))
            connack = self._read_exact(sock, 4)
        except (OSError, ssl.SSLError) as exc:
            raise unreachable(target, exc) from None
        if connack[0] >> 4 != CONNACK:
            raise SanitelError(f"{target.redacted()} answered CONNECT with packet type {connack[0] >> 4}, not CONNACK")
        if connack[3] != 0:
            reason = CONNACK_REASONS.get(connack[3], f"code {connack[3]}")
            raise SanitelError(f"the broker at {target.redacted()} refused the connection: {reason}; "
                               "check the user name and password in the broker URL")
        sock.settimeout(30.0)  # a broker that stops reading for this long is treated as gone
        self.sock = sock
        self.last_send = time.monotonic()
        if self.inflight:  # redeliver what the broker never acknowledged (QoS 1: at least once)
            for mid in sorted(self.inflight):
                packet = self.inflight[mid]
                self.out += bytes((PUBLISH_QOS1_DUP,)) + packet[1:]

    @staticmethod
    def _read_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            data += chunk
        return data

    def _reconnect(self) -> None:
        self.stats.errors += 1
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.inbox.clear()
        self.out.clear()
        give_up_at = self._monotonic() + self.RECONNECT_FOR_S
        retrying = Retrying(wait=self.RECONNECT_WAIT, stop=lambda _: self._monotonic() > give_up_at,
                            retry=retry_if_exception_type(SanitelError), sleep=self._sleep, reraise=True)
        try:
            retrying(self.connect)
        except SanitelError as exc:
            raise SanitelError(f"lost the broker and could not reconnect for {self.RECONNECT_FOR_S:.0f}s: "
                               f"{exc}") from None
        self.stats.reconnects += 1

    # --- publishing ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> None:
        while len(self.inflight) >= self.WINDOW:
            self.service(0.05)
        mid = self.next_mid
        while mid in self.inflight:
            mid = mid % 65535 + 1
        self.next_mid = mid % 65535 + 1
        topic_bytes = topic.encode()
        rest = len(topic_bytes).to_bytes(2, "big") + topic_bytes + mid.to_bytes(2, "big") + payload
        packet = b"\x32" + remaining_length(len(rest)) + rest
        self.inflight[mid] = packet
        self.out += packet
        self.stats.sent += 1
        if len(self.out) >= self.WRITE_BATCH:
            self._write()
        self._since_service += 1
        if self._since_service >= 512:
            self.service(0.0)

    def _write(self) -> None:
        if not self.out or self.sock is None:
            return
        try:
            self.sock.sendall(self.out)
        except (OSError, ssl.SSLError):
            self._reconnect()
            return
        self.out.clear()
        self.last_send = time.monotonic()

    def service(self, timeout: float = 0.0) -> None:
        self._since_service = 0
        if self.sock is None:
            self._reconnect()
        self._write()
        if time.monotonic() - self.last_send > self.keepalive / 2:
            self.out += PINGREQ
            self._write()
        sock = self.sock
        assert sock is not None
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending and not select.select([sock], [], [], timeout)[0]:
            return
        try:
            data = sock.recv(256 * 1024)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except (OSError, ssl.SSLError):
            self._reconnect()
            return
        if not data:
            self._reconnect()
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        buf = self.inbox
        buf += data
        inflight, pos, end = self.inflight, 0, len(buf)
        acked = 0
        while end - pos >= 2:
            packet_type = buf[pos] >> 4
            if buf[pos + 1] < 0x80:  # every packet a publisher receives is short: one length byte
                length, header = buf[pos + 1], 2
            else:
                length, header = self._long_length(buf, pos)
                if length < 0:
                    break
            if end - pos < header + length:
                break
            if packet_type == PUBACK and length >= 2:
                mid = (buf[pos + header] << 8) | buf[pos + header + 1]
                if inflight.pop(mid, None) is not None:
                    acked += 1
            pos += header + length
        del buf[:pos]
        self.stats.acked += acked

    @staticmethod
    def _long_length(buf: bytearray, pos: int) -> tuple[int, int]:
        value, multiplier, i = 0, 1, pos + 1
        while i < len(buf) and i < pos + 5:
            byte = buf[i]
            value += (byte & 0x7F) * multiplier
            multiplier *= 128
            i += 1
            if not byte & 0x80:
                return value, i - pos
        return -1, 0

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            self._write()
            self.sock.sendall(DISCONNECT)
            self.sock.close()
        except (OSError, ssl.SSLError):
            pass
        self.sock = None


def open_publisher(broker_url: str, *, engine: str = "paho", client_id: str | None = None) -> Publisher:
    """A connected publisher for the URL (SanitelError if the broker cannot be reached)."""
    target = BrokerTarget.parse(broker_url)
    if engine not in ENGINES:
        raise SanitelError(f"unknown publisher engine {engine!r}; use one of {', '.join(ENGINES)}")
    publisher: Publisher = PahoPublisher(target, client_id) if engine == "paho" else FastPublisher(target, client_id)
    publisher.connect()
    return publisher
