"""paho-mqtt's Client with buffered socket reads.

paho reads one packet per select() and each packet with several small recv() calls (fixed header, each
length byte, then the body); at tens of thousands of messages a second that dominates the collector's
CPU. This subclass fills a buffer with one large recv() and parses every complete packet in it before
returning to select(). It overrides two internals of paho-mqtt 2.2.0 (pinned in pyproject.toml):
``_sock_recv`` and ``loop_read``; every collector test runs through it.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt

_READ_SIZE = 256 * 1024


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
