"""paho-mqtt's Client, made cheaper per message for the collector.

paho reads one packet per select() and each packet with several small recv() calls (fixed header, each
length byte, then the body); at tens of thousands of messages a second that dominates the collector's CPU.
This subclass
- fills a buffer with one large recv() and parses every complete packet in it before returning to select();
- parses QoS 0/1 PUBLISH packets itself, skipping MQTT 5 properties (the collector uses none; it asks for
  no topic aliases) instead of building a Properties object per message;
- calls ``on_message`` directly: no per-topic callback matching, which cost ~9 % of the collector's CPU
  (``message_callback_add`` is refused);
- acknowledges a whole batch with one queued write (``ack_many``) instead of a lock, a wake-up and a
  send() per message.
It relies on internals of paho-mqtt 2.2.0, which is why pyproject.toml pins it exactly; tests/unit/test_paho_pin.py
checks each of them (and feeds a real PUBLISH through a socket pair), so an upgrade that moves one fails there first:
- methods overridden and called through ``super()``: ``_sock_recv(bufsize)`` (paho's packet reader calls it for every
  read), ``loop_read(max_packets)``, ``_handle_publish()`` (paho's packet dispatcher calls it for PUBLISH),
  ``_handle_on_message(message)``;
- methods called: ``_packet_queue(command, packet, mid, qos)`` (queues raw bytes and writes them out like any other
  packet), ``_easy_log(level, fmt, *args)``;
- attributes read: ``_sock`` (the current socket), ``_in_packet`` (its ``"command"`` byte and ``"packet"`` body),
  ``_protocol``, ``_manual_ack``, ``_userdata``, ``_in_callback_mutex``, ``suppress_exceptions``;
- ``MQTTMessage(mid=…, topic=…)`` with its settable ``qos``, ``dup``, ``retain``, ``payload``, ``timestamp``, and
  ``MQTTMessage._topic`` (the raw topic bytes, which the collector reads when they are not UTF-8).
Every collector test runs through it.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import paho.mqtt.client as mqtt

_READ_SIZE = 256 * 1024
_PUBACK = struct.Struct("!BBH")  # the bytes paho's own ack() sends: PUBACK, length 2, packet id


class BufferedClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object | None = None

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
            rc = super().loop_read(max_packets)
        return rc

    def ack_many(self, mids: list[int]) -> mqtt.MQTTErrorCode:
        """PUBACK every QoS 1 message id, in order, as one write."""
        if not mids:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        blob = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        return self._packet_queue(mqtt.PUBACK, blob, 0, 0)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("BufferedClient delivers every message to on_message")

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        command: int = self._in_packet["command"]
        qos = (command & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or not self._manual_ack or qos == 2:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            end = 2 + int.from_bytes(packet[0:2], "big")
            topic = bytes(packet[2:end])
            mid = 0
            if qos:
                mid = int.from_bytes(packet[end:end + 2], "big")
                end += 2
            properties_length, shift = 0, 0
            while True:  # variable byte integer, then skip the properties
                byte = packet[end]
                end += 1
                properties_length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            end += properties_length
            if end > len(packet) or len(topic) + 2 > len(packet):
                return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        except IndexError:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.qos, message.dup, message.retain = qos, bool(command & 0x08), bool(command & 0x01)
        message.payload = bytes(packet[end:])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
