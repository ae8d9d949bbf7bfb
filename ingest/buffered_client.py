"""paho-mqtt's Client, made cheaper per message for the collector.

paho reads one packet per select() and each packet with several small recv() calls (fixed header, each
length byte, then the body); at tens of thousands of messages a second that dominates the collector's CPU.
This subclass
- fills a buffer with one large recv() and parses every complete packet in it before returning to select();
- parses QoS 0/1 PUBLISH packets itself, skipping MQTT 5 properties (the collector uses none; it asks for
  no topic aliases) instead of building a Properties object per message;
- takes every complete QoS 0/1 PUBLISH packet straight out of that buffer (issue 16): paho's generic reader
  (a dictionary of state, four ``_sock_recv`` calls per packet, a ``Condition`` per ``MQTTMessage``) was about
  half of the network thread's ~11 µs per message. Anything else — another packet type, a packet the buffer
  holds only part of, one paho is halfway through, one that does not parse — goes through paho as before;
- calls ``on_message`` directly: no per-topic callback matching, which cost ~9 % of the collector's CPU
  (``message_callback_add`` is refused);
- or, when ``on_publishes`` is set, hands every QoS 0/1 PUBLISH to it as plain tuples ``(topic bytes, payload,
  packet id, qos)``, a whole buffer's worth in one call, with no ``MQTTMessage`` made (issue 16: a message object
  and a callback per message were half of the network thread's ~12 µs a message). Packets paho's own reader takes
  go to it too, one at a time, so it sees every message in the order received;
- acknowledges a whole batch with one queued write (``ack_many``) instead of a lock, a wake-up and a
  send() per message;
- can wait until the broker has read every acknowledgement sent so far (``wait_acks_read``), so that a collector
  that stops does not leave committed messages for the broker to deliver again.
It relies on internals of paho-mqtt 2.2.0, which is why pyproject.toml pins it exactly; tests/unit/test_paho_pin.py
checks each of them (and feeds a real PUBLISH through a socket pair), so an upgrade that moves one fails there first:
- methods overridden and called through ``super()``: ``_sock_recv(bufsize)`` (paho's packet reader calls it for every
  read), ``loop_read(max_packets)``, ``_handle_publish()`` (paho's packet dispatcher calls it for PUBLISH),
  ``_handle_on_message(message)``;
- methods called: ``_packet_queue(command, packet, mid, qos)`` (queues raw bytes and writes them out like any other
  packet), ``_easy_log(level, fmt, *args)``;
- attributes read: ``_sock`` (the current socket), ``_in_packet`` (its ``"command"`` byte, 0 between packets, and
  ``"packet"`` body), ``_protocol``, ``_manual_ack``, ``_userdata``, ``_in_callback_mutex``, ``suppress_exceptions``;
- ``MQTTMessage(mid=…, topic=…)`` with its settable ``qos``, ``dup``, ``retain``, ``payload``, ``timestamp``, and
  ``MQTTMessage._topic`` (the raw topic bytes, which the collector reads when they are not UTF-8); ``_Incoming``
  fills the same slots without calling its constructor (``state``, ``properties``, ``info`` too).
Every collector test runs through it.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

# (topic as received, payload, packet identifier — 0 at QoS 0 —, QoS)
Publish = tuple[bytes, bytes, int, int]
OnPublishes = Callable[[Any, Any, list[Publish]], None]  # (client, userdata, publishes)

_READ_SIZE = 256 * 1024
# the bytes paho's own ack() sends — PUBACK, remaining length 2, packet id — read as one big-endian 32-bit word, so that
# a batch's acknowledgements are packed by one struct call (tests/unit/test_buffered_client_properties.py)
_PUBACK_HEAD = mqtt.PUBACK << 24 | 2 << 16
# a filter no session holds: unsubscribing it changes nothing, and its UNSUBACK marks what the broker has read
ACK_BARRIER_FILTER = "sanitel-internal/ack-barrier"


class BufferedClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object | None = None
        self.on_publishes: OnPublishes | None = None
        self._unsubacked: set[int] = set()  # UNSUBACKs come for the barrier, and for unsubscribes of old filters
        self._unsuback = threading.Condition()
        self.on_unsubscribe = self._record_unsuback

    def _record_unsuback(self, client: object, userdata: object, mid: int, reasons: object, properties: object) -> None:
        with self._unsuback:
            self._unsubacked.add(mid)
            self._unsuback.notify_all()

    def wait_acks_read(self, timeout: float) -> bool:
        """Wait until the broker has read every acknowledgement queued so far; False when it did not say so in
        ``timeout`` seconds (or no connection is up).

        A broker reads a client's packets in order and answers an UNSUBSCRIBE after it, so its UNSUBACK follows
        every PUBACK sent before. A collector that acknowledges its last batches and disconnects at once relies on
        the broker reading them from a connection that is closing; one busy with a backlog reads our socket late
        (seen in a drain benchmark: Mosquitto still held 60,000 of 400,000 messages two seconds after the last
        was committed and acknowledged, and in some rounds delivered 20,000-140,000 committed ones again to the
        next session; not reproduced on demand, so this wait is the protocol's guarantee, not a measured fix)."""
        rc, mid = self.unsubscribe(ACK_BARRIER_FILTER)
        if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        with self._unsuback:
            read = self._unsuback.wait_for(lambda: mid in self._unsubacked, timeout)
            self._unsubacked.clear()  # the others were answers nobody waits for
        return read

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: bytes of the old one must not leak into it
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_READ_SIZE)  # raises BlockingIOError when nothing is there
            if not data:
                return data  # closed by the peer
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def _buffered(self) -> bool:
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._buffered():
            if self._deliver_buffered_publishes():
                continue
            rc = super().loop_read(max_packets)
        return rc

    def _deliver_buffered_publishes(self) -> int:
        """Deliver the complete QoS 0/1 PUBLISH packets at the head of the buffer; how many. Stops at the first
        packet that is anything else, incomplete, or malformed: paho's reader takes that one."""
        if self._protocol != mqtt.MQTTv5 or not self._manual_ack or self._in_packet["command"] != 0:
            return 0
        data, pos, size = self._rbuf, self._rpos, len(self._rbuf)
        batch: list[Publish] = []
        while pos < size:
            command = data[pos]
            if command & 0xF0 != mqtt.PUBLISH or command & 0x04:
                break  # not PUBLISH, or QoS 2 (paho's handshake) or the reserved QoS 3
            # the packet's remaining length; one or two bytes read here (a reading's packet is 128 bytes to 16 KiB)
            if pos + 2 < size and data[pos + 1] < 0x80:
                length, end = data[pos + 1], pos + 2
            elif pos + 2 < size and data[pos + 2] < 0x80:
                length, end = (data[pos + 1] & 0x7F) | data[pos + 2] << 7, pos + 3
            else:
                remaining = _variable_byte_integer(data, pos + 1, size)
                if remaining is None:
                    break  # the length is not all in the buffer yet (or longer than 4 bytes: paho refuses it)
                length, end = remaining
            if end + length > size:
                break  # the body is not all here: paho reads it across recv() calls
            publish = _publish(command, data, end, end + length)
            if publish is None:
                break
            batch.append(publish)
            pos = end + length
        self._rpos = pos
        if batch:
            self._deliver(batch)
        # (the keepalive's record of traffic needs no update here: every loop_read first lets paho read a packet,
        # which sets it)
        return len(batch)

    def _deliver(self, batch: list[Publish]) -> None:
        """To ``on_publishes`` in one call, or to ``on_message`` one by one."""
        on_publishes = self.on_publishes
        if on_publishes is None:
            for topic, payload, mid, qos in batch:
                self._handle_on_message(_Incoming(topic, payload, mid, qos))
            return
        self._call("on_publishes", on_publishes, batch)

    def ack_many(self, mids: list[int]) -> mqtt.MQTTErrorCode:
        """PUBACK every QoS 1 message id, in order, as one write."""
        if not mids:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        blob = struct.pack(f"!{len(mids)}I", *[_PUBACK_HEAD | mid for mid in mids])
        return self._packet_queue(mqtt.PUBACK, blob, 0, 0)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("BufferedClient delivers every message to on_message")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            self._call("on_message", on_message, message)

    def _call(self, name: str, callback: Callable[..., None], argument: object) -> None:
        """A user callback as paho calls one: under its callback mutex; an exception is logged, and raised unless
        paho is told to suppress them."""
        with self._in_callback_mutex:
            try:
                callback(self, self._userdata, argument)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in %s: %s", name, err)
                if not self.suppress_exceptions:
                    raise

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        command: int = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or not self._manual_ack or qos == 2:
            return super()._handle_publish()
        packet = bytes(self._in_packet["packet"])
        publish = _publish(command, packet, 0, len(packet))
        if publish is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._deliver([publish])
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


_NO_INFO = mqtt.MQTTMessageInfo(0)  # publish tracking, which an incoming message never uses


class _Incoming(mqtt.MQTTMessage):
    """An incoming QoS 0/1 message for ``on_message``: ``MQTTMessage``'s slots, filled without its constructor's
    per-message ``MQTTMessageInfo`` (a ``threading.Condition``) that only outgoing messages use. The DUP and RETAIN
    flags read False: neither is kept on the fast path (the collector, which takes ``on_publishes``, uses neither;
    ``on_message`` users here are benchmarks and tests)."""

    __slots__ = ()

    def __init__(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        self.mid, self._topic, self.payload, self.qos, self.dup, self.retain = mid, topic, payload, qos, False, False
        self.timestamp, self.state, self.properties, self.info = time.monotonic(), mqtt.mqtt_ms_invalid, None, _NO_INFO


def _variable_byte_integer(data: bytes, pos: int, limit: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer (1-4 bytes, MQTT 5.0 §1.5.5) at ``pos``: its value and the position after it;
    None when it runs to ``limit`` unfinished or is longer than 4 bytes."""
    value, shift = 0, 0
    while pos < limit and shift <= 21:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    return None


def _publish(command: int, data: bytes, start: int, end: int) -> Publish | None:
    """The QoS 0/1 PUBLISH whose variable header and payload are ``data[start:end]`` (MQTT 5 §3.3.2: topic name,
    packet identifier when QoS > 0, properties — skipped — then the payload); None when it does not parse."""
    if end - start < 3:
        return None
    topic_end = start + 2 + (data[start] << 8 | data[start + 1])
    pos, mid = topic_end, 0
    if command & 0x06:
        if pos + 2 > end:
            return None
        mid = data[pos] << 8 | data[pos + 1]
        pos += 2
    if pos < end and data[pos] == 0:  # no properties: the common case
        pos += 1
    else:
        properties = _variable_byte_integer(data, pos, end)  # their length, then skip them
        if properties is None:
            return None
        properties_length, pos = properties
        pos += properties_length
        if pos > end:
            return None
    return data[start + 2:topic_end], data[pos:end], mid, (command & 0x06) >> 1
