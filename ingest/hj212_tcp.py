"""TCP listener for CEMS data acquisition units (DAUs) that speak HJ 212-2017 over TCP, not MQTT.

Each frame (``##…\\r\\n``) a DAU sends is published, raw and unchanged, to
``sanitation/{city}/cems/{mn}/hj212`` at QoS 1 — the topic DAUs with an MQTT gateway use — so TCP
frames enter exactly the same pipeline as MQTT ones: the collector decodes them, stores them, and
dead-letters bad ones with the reason (the collector is the single writer of dead letters).

Delivery: the DAU is acknowledged only after the broker's PUBACK, so a frame the DAU sees
acknowledged is held by the broker; a frame that could not be published gets no reply and the DAU
retransmits it, as HJ 212 DAUs do after their reply timeout. Duplicates are harmless: the readings
table is unique on (device, time, data kind, seq).

Replies (what the standard provides; see ``schemas/hj212.py`` at ``CN_DATA_REPLY``: 9014 carries no
result code, so it is only ever sent for a frame the collector will store):
- a data frame the collector will store, whose Flag asks for an acknowledgement (bit A) → CN 9014 data
  reply, QN echoed;
- a frame the collector will not store → still published (so it is dead-lettered), then a CN 9011
  request reply with ``QnRtn`` naming the fault (9 CRC, 3 password, 4 MN, 8 CN, 7 QN, 100 another fault
  of the frame such as an impossible DataTime, 2 "request rejected" for a well-formed frame the
  collector refuses, e.g. a DataTime too far ahead of this host's clock) when its MN and QN can be read
  and its Flag asks for a reply or cannot be read. Frames with no readable MN are published under the MN
  ``unknown``; frames without a readable MN or QN get no reply (a reply must echo both for the DAU to
  match it).
The listener runs the collector's own decoder (``ingest/decode.decode_message``, with this host's clock as
receive time) on each frame, so it answers 9014 when the collector will store a reading. Only the
registry checks are left to the collector: the password (a wrong one is dead-lettered there) and the
device's kind; this listener has no registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from sanitel.ingest.decode import decode_message
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.schemas.hj212 import (
    FLAG_ACK,
    MAX_FRAME_BYTES,
    QN_RTN_REJECTED,
    Hj212Error,
    convert_frame,
    encode_data_reply,
    encode_request_reply,
    parse_frame,
    peek_header,
    qn_rtn_for,
)
from sanitel.schemas.topics import hj212_topic

log = logging.getLogger("sanitel.hj212")

DEFAULT_PORT = 9212
UNKNOWN_MN = "unknown"  # topic segment for frames whose MN cannot be read


@dataclass
class ListenerStats:
    connections: int = 0
    frames: int = 0
    bad_frames: int = 0
    acks: int = 0
    nacks: int = 0
    publish_failures: int = 0
    unknown_codes: int = 0  # codes outside HJ 212-2017's air table, kept raw (schemas/hj212.py)
    invalid_fields: int = 0  # implausible values stored as null with their raw value and reason


class BrokerUnavailable(Exception):
    """A frame was not handed to the broker: no connection in time, or the broker refused it."""


class BrokerLink:
    """One MQTT connection for all DAUs: a paho client whose network thread connects and reconnects with
    backoff. ``publish`` (on the event loop) returns after the broker's PUBACK."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.target = BrokerTarget.parse(url)
        self.host, self.port = self.target.host, self.target.port
        # unique per process: two listeners with one client id would knock each other off the broker
        self.client_id = client_id or f"sanitel-hj212-{socket.gethostname()}-{os.getpid()}"
        self._client = paho_client(self.target, self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._pubacks: dict[int, asyncio.Future[None]] = {}  # message id → the publish waiting for its PUBACK

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.loop_start()

    async def stop(self) -> None:
        if self._loop is None:
            return
        self._loop = None  # from now on paho's callbacks have nobody to tell
        await asyncio.to_thread(self._close)  # loop_stop joins paho's thread: not on the event loop

    def _close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        """QoS 1; returns once the broker has acknowledged. BrokerUnavailable or TimeoutError otherwise."""
        if not await self.wait_connected(timeout) or self._loop is None:
            raise BrokerUnavailable(f"no broker connection to {self.host}:{self.port} within {timeout} s")
        info = self._client.publish(topic, payload, qos=1)
        # registered before the next await: PUBACKs reach the event loop only through call_soon_threadsafe,
        # so this one cannot be handled before its future exists
        puback = self._pubacks[info.mid] = self._loop.create_future()
        try:
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # paho resends it after reconnecting; the DAU retransmits anyway
                raise BrokerUnavailable(f"publish to {self.host}:{self.port} failed: {mqtt.error_string(info.rc)}")
            async with asyncio.timeout(timeout):
                await puback
        finally:
            self._pubacks.pop(info.mid, None)

    # --- paho's network thread -------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, reason: mqtt.ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("hj212 listener: broker %s:%s refused the connection: %s", self.host, self.port, reason)
            return
        log.info("hj212 listener connected to broker %s:%s", self.host, self.port)
        self._to_event_loop(self._connected.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason: mqtt.ReasonCode, properties: Properties | None) -> None:
        self._to_event_loop(self._connected.clear)
        if self._loop is not None:
            log.warning("hj212 listener: lost broker %s:%s (%s); reconnecting", self.host, self.port, reason)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: mqtt.ReasonCode,
                    properties: Properties | None) -> None:
        self._to_event_loop(self._acknowledged, mid, reason)

    def _to_event_loop(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile: nobody is waiting
                loop.call_soon_threadsafe(callback, *args)

    def _acknowledged(self, mid: int, reason: mqtt.ReasonCode) -> None:
        puback = self._pubacks.get(mid)
        if puback is None or puback.done():
            return  # its publish timed out and was answered already
        if reason.is_failure:
            puback.set_exception(BrokerUnavailable(f"the broker refused the message: {reason}"))
        else:
            puback.set_result(None)


class Hj212Listener:
    """``await start()``, then DAUs connect to ``host:port``; ``await stop()`` to close."""

    def __init__(self, mqtt_url: str, city: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 publish_timeout: float = 10.0, idle_timeout: float = 900.0, client_id: str | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.city = city
        self.clock = clock or (lambda: datetime.now(UTC))  # receive time, as the collector will judge DataTime
        self.host = host
        self.port = port
        self.publish_timeout = publish_timeout
        self.idle_timeout = idle_timeout  # HJ 212 DAUs send at least every few minutes
        self.broker = BrokerLink(mqtt_url, client_id)
        self.stats = ListenerStats()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.broker.start()
        self._server = await asyncio.start_server(self._serve_dau, self.host, self.port,
                                                  limit=MAX_FRAME_BYTES + 16)
        self.port = self._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        log.info("hj212 listener on %s:%s for city %s", self.host, self.port, self.city)

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        await self.broker.stop()

    async def _serve_dau(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.stats.connections += 1
        try:
            while (raw := await self._read_frame(reader, peer)) is not None:
                reply = await self.handle_frame(raw)
                if reply:
                    writer.write(reply)
                    await writer.drain()
                if not raw.endswith(b"\r\n"):
                    break  # truncated at EOF or oversized: the stream cannot be resynchronised
        except (ConnectionError, TimeoutError) as exc:
            log.info("hj212 DAU %s: connection closed: %s", peer, exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_frame(self, reader: asyncio.StreamReader, peer: object) -> bytes | None:
        """The next ``…\\r\\n``; at EOF a partial frame is returned as is (it is dead-lettered as
        truncated); more than a frame's maximum size without CRLF is returned cut (bad_length)."""
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n"), self.idle_timeout)
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None
        except asyncio.LimitOverrunError:
            log.warning("hj212 DAU %s: %d bytes without CRLF; closing", peer, MAX_FRAME_BYTES)
            return await reader.read(MAX_FRAME_BYTES)
        except TimeoutError:
            log.info("hj212 DAU %s: idle for %.0f s; closing", peer, self.idle_timeout)
            return None

    async def handle_frame(self, raw: bytes) -> bytes | None:
        """Publish one frame; return the reply for the DAU (None: no reply)."""
        self.stats.frames += 1
        try:
            frame = parse_frame(raw)
            conversion = convert_frame(frame)  # DataTime and CN: a DAU misconfiguration is answered now
        except Hj212Error as exc:
            return await self._handle_bad(raw, str(exc), exc.code, qn_rtn_for(exc))
        if conversion.unknown_codes or conversion.invalid_fields or conversion.adjusted_fields:
            self.stats.unknown_codes += len(conversion.unknown_codes)
            self.stats.invalid_fields += len(conversion.invalid_fields)
            log.info("hj212 frame from MN %s: codes outside the table %s, invalid %s, zero drift stored as 0 %s",
                     frame.mn, list(conversion.unknown_codes), list(conversion.invalid_fields),
                     list(conversion.adjusted_fields))
        refused = self._refusal(frame.mn, raw)
        if refused is not None:
            return await self._handle_bad(raw, *refused, QN_RTN_REJECTED)
        if not await self._publish(frame.mn, raw):
            return None
        if frame.wants_ack:
            self.stats.acks += 1
            return encode_data_reply(frame)
        return None

    def _refusal(self, mn: str, raw: bytes) -> tuple[str, str] | None:
        """(message, reason) when the collector, decoding this frame now, would store no reading."""
        decoded = decode_message(hj212_topic(self.city, mn), raw, self.clock())
        if decoded.rows or not decoded.rejections:
            return None
        first = decoded.rejections[0]
        return first.reason, first.reason_code

    async def _handle_bad(self, raw: bytes, message: str, code: str, qn_rtn: int) -> bytes | None:
        self.stats.bad_frames += 1
        header = peek_header(raw)
        mn = header.get("MN")
        log.info("hj212 bad frame from MN %s: %s (%s)", mn or "?", message, code)
        if not await self._publish(mn or UNKNOWN_MN, raw) or mn is None or "QN" not in header:
            return None  # a reply the DAU cannot match to a frame (no MN or QN to echo) is noise
        flag = header.get("Flag", "")
        if flag.isdigit() and not int(flag) & FLAG_ACK:
            return None
        self.stats.nacks += 1
        return encode_request_reply(header.get("QN"), mn, header.get("PW", ""), qn_rtn)

    async def _publish(self, mn: str, raw: bytes) -> bool:
        try:
            await self.broker.publish(hj212_topic(self.city, mn), raw, self.publish_timeout)
        except (BrokerUnavailable, TimeoutError) as exc:
            self.stats.publish_failures += 1
            log.warning("hj212 frame from MN %s not published (%s); no reply, the DAU will retransmit", mn, exc)
            return False
        return True


async def run_listener(mqtt_url: str, city: str, host: str, port: int) -> None:
    """Run until cancelled (the CLI's SIGINT/SIGTERM)."""
    listener = Hj212Listener(mqtt_url, city, host=host, port=port)
    await listener.start()
    try:
        await listener.serve_forever()
    finally:
        await listener.stop()
