"""TCP listener for CEMS data acquisition units (DAUs) that speak HJ 212-2017 over TCP, not MQTT.

Each frame (``##…\\r\\n``) a DAU sends is published, raw and unchanged, to
``sanitation/{city}/cems/{mn}/hj212`` at QoS 1 — the topic DAUs with an MQTT gateway use — so TCP
frames enter exactly the same pipeline as MQTT ones: the collector decodes them, stores them, and
dead-letters bad ones with the reason (the collector is the single writer of dead letters).

Delivery: the DAU is acknowledged only after the broker's PUBACK says the broker took the message. The
listener speaks MQTT 5, whose PUBACK carries a reason code: a publish the broker refuses (Mosquitto 2 answers
one its ACL denies with 0x87 "not authorized", one over its size limit with 0x97/0x95) is a refusal, not an
acknowledgement. Under MQTT 3.1.1 the broker acknowledges a denied publish like any other and drops it, so the
DAU would be told its data was received while it was lost. A frame that could not be published, or was
refused, gets no reply and the DAU retransmits it, as HJ 212 DAUs do after their reply timeout. Duplicates are
harmless: the readings table is unique on (device, time, data kind, seq).

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
receive time) and the collector's registry checks (``processors/registry.DeviceRegistry``, kept current by
LISTEN/NOTIFY: an MN not registered, or registered as another kind, or without an HJ 212 password while one is
required, or a PW that does not match the stored hash), so it answers 9014 exactly when the collector will
store a reading.

Per device (``schemas/hj212_settings.py``): a DAU's ``DataTime`` is read in its own time zone and its
concentrations tagged dry or wet gas as registered — ``devices.metadata`` keys ``timezone`` and ``gas_is_dry``, else
the time zone of the device's plant, else the listener's defaults (Asia/Shanghai, dry). They come with the registry
entry the listener looks up anyway (cached, kept current by LISTEN/NOTIFY: a metadata change applies to the next
frame, without a restart). A stored value that cannot be used is skipped (the next level applies), counted in
``stats.device_settings_fallbacks`` and logged by the registry when it reads the entry.

Limits (settings ``hj212_*``), because DAUs connect from the field and a listener must survive a broken or
hostile peer: at most ``max_connections`` DAUs at once (further connections are closed at once); a connection
silent for ``idle_timeout`` is closed; a peer that does not read its replies for ``write_timeout`` is cut off
(socket buffers are kept small, so that is noticed after a few hundred unread replies, not megabytes); a peer
sending more than ``frames_per_minute`` (a token bucket holding one minute's allowance, so a DAU re-sending its
backlog after a reconnect may burst) is disconnected before the excess frame is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from sanitel.ingest.decode import decode_message
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.processors.registry import DeviceEntry, DeviceRegistry, Hj212Check, RegistryUnavailable
from sanitel.schemas.hj212 import (
    DEFAULT_TZ,
    FLAG_ACK,
    MAX_FRAME_BYTES,
    QN_RTN_BAD_MN,
    QN_RTN_BAD_PW,
    QN_RTN_REJECTED,
    Hj212Error,
    Hj212Frame,
    convert_frame,
    encode_data_reply,
    encode_request_reply,
    parse_frame,
    peek_header,
    qn_rtn_for,
)
from sanitel.schemas.hj212_settings import Hj212Basis, is_timezone
from sanitel.schemas.topics import hj212_topic
from sanitel.settings import Settings

log = logging.getLogger("sanitel.hj212")

DEFAULT_PORT = 9212
UNKNOWN_MN = "unknown"  # topic segment for frames whose MN cannot be read
CEMS_KIND = "cems"
# A reply is ~100 bytes; these bound what a peer that does not read can make the listener hold (the kernel
# doubles SO_SNDBUF) and make drain() block, so that the write timeout starts, after a few hundred replies.
SEND_BUFFER_BYTES = 16 * 1024
WRITE_BUFFER_BYTES = 16 * 1024
REFUSED_LOG_INTERVAL_S = 60.0  # refused connections are logged at most this often (a flood must not flood the log)

_DEFAULTS = Settings.model_construct()  # the settings' defaults, without reading the environment


@dataclass
class ListenerStats:
    connections: int = 0
    frames: int = 0
    bad_frames: int = 0
    acks: int = 0
    nacks: int = 0
    publish_failures: int = 0
    publish_refused: int = 0  # the broker answered with a failure reason code (e.g. 0x87: the ACL denies it)
    unknown_codes: int = 0  # codes outside HJ 212-2017's air table, kept raw (schemas/hj212.py)
    invalid_fields: int = 0  # implausible values stored as null with their raw value and reason
    connections_refused: int = 0  # over max_connections
    idle_timeouts: int = 0
    write_timeouts: int = 0
    rate_limited: int = 0  # connections closed for sending more than frames_per_minute
    registry_refused: int = 0  # frames the registry refuses (MN, kind, password): answered 9011, dead-lettered
    registry_unavailable: int = 0  # frames not answered because the registry could not be asked
    device_settings_fallbacks: int = 0  # frames of a device with an unusable stored timezone/gas_is_dry


class BrokerUnavailable(Exception):
    """A frame was not handed to the broker: no connection in time, or paho could not send it."""


class BrokerRefused(Exception):
    """The broker answered the publish with a failure reason code: it will not deliver the message."""


class Hj212Registry(Protocol):
    """What the listener needs of ``processors.registry.DeviceRegistry`` (tests may pass their own)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def lookup(self, device_ids: list[str]) -> dict[str, DeviceEntry]: ...

    def check_password(self, mn: str, entry: DeviceEntry | None, password: str | None, *,
                       require_password: bool) -> Hj212Check: ...


class TokenBucket:
    """``per_minute`` tokens a minute, holding at most one minute's worth; ``take()`` is False when empty.
    ``clock`` is monotonic seconds."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class LogLimiter:
    """Lets one log line through per ``interval_s``; ``due()`` returns how many were held back before it
    (None: hold this one back too). ``clock`` is monotonic seconds."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last: float | None = None
        self.held = 0

    def due(self) -> int | None:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval_s:
            self.held += 1
            return None
        held, self.held, self.last = self.held, 0, now
        return held


class BrokerLink:
    """One MQTT 5 connection for all DAUs: a paho client whose network thread connects and reconnects with
    backoff. ``publish`` (on the event loop) returns after a PUBACK with a success reason code."""

    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.target = BrokerTarget.parse(url)
        self.host, self.port = self.target.host, self.target.port
        # unique per process: two listeners with one client id would knock each other off the broker (a broker
        # with use_username_as_clientid replaces it with the account name anyway)
        self.client_id = client_id or f"sanitel-hj212-{socket.gethostname()}-{os.getpid()}"
        # MQTT 5: only its PUBACK says whether the broker accepted the message (reason code, MQTT 5.0 §3.4.2.1)
        self._client = paho_client(self.target, self.client_id, protocol=mqtt.MQTTv5)
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
        """QoS 1; returns once the broker has accepted the message. BrokerRefused when its PUBACK carries a
        failure reason code; BrokerUnavailable or TimeoutError when there was no PUBACK."""
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
            # nothing is published (nor acknowledged) until this is fixed: an operator's problem, not a DAU's
            log.error("hj212 listener: broker %s:%s refused the connection: %s", self.host, self.port, reason)
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
        # reason codes >= 0x80 are failures (MQTT 5.0 §3.4.2.1); 0x10 "no matching subscribers" is a success
        if reason.is_failure:
            puback.set_exception(BrokerRefused(f"{reason} (reason code 0x{reason.value:02x})"))
        else:
            puback.set_result(None)


class Hj212Listener:
    """``await start()``, then DAUs connect to ``host:port``; ``await stop()`` to close.

    ``from_settings`` builds the one the CLI runs; the keyword arguments (defaults: the settings' defaults) are
    for tests. Without a ``registry`` no registry check is made (tests without a database) and every frame is read
    with ``default_tz`` and ``gas_is_dry``; the listener starts and stops the registry it is given. ``clock`` is the
    receive time DataTime is judged by; ``monotonic`` drives the frame rate limit and the rate of log lines.
    """

    def __init__(self, mqtt_url: str, city: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 publish_timeout: float = 10.0, idle_timeout: float = _DEFAULTS.hj212_idle_timeout_s,
                 write_timeout: float = _DEFAULTS.hj212_write_timeout_s,
                 max_connections: int = _DEFAULTS.hj212_max_connections,
                 frames_per_minute: int = _DEFAULTS.hj212_frames_per_minute,
                 registry: Hj212Registry | None = None,
                 require_password: bool = _DEFAULTS.hj212_require_password,
                 auto_register: bool = _DEFAULTS.auto_register_devices, client_id: str | None = None,
                 default_tz: str = DEFAULT_TZ, gas_is_dry: bool = True,
                 clock: Callable[[], datetime] | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not is_timezone(default_tz):
            raise ValueError(f"default_tz {default_tz!r} is not an IANA time-zone name")
        self.city = city
        self.clock = clock or (lambda: datetime.now(UTC))  # receive time, as the collector will judge DataTime
        self.monotonic = monotonic
        self.host = host
        self.port = port
        self.publish_timeout = publish_timeout
        self.idle_timeout = idle_timeout  # HJ 212 DAUs send at least every few minutes
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.frames_per_minute = frames_per_minute
        self.registry = registry
        self.require_password = require_password
        self.auto_register = auto_register
        # how a device's frames are read when the registry says nothing else
        self.default_basis = Hj212Basis(default_tz, gas_is_dry)
        self.broker = BrokerLink(mqtt_url, client_id)
        self.stats = ListenerStats()
        self.active_connections = 0
        self._refused_log = LogLimiter(REFUSED_LOG_INTERVAL_S, monotonic)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()  # one per open DAU connection

    @classmethod
    def from_settings(cls, settings: Settings, *, host: str, port: int) -> Hj212Listener:
        """The listener as deployed: its own broker account, the ingest role's registry, the ``hj212_*`` limits."""
        registry = DeviceRegistry(settings.database_url_for("ingest"), refresh_s=settings.registry_refresh_s)
        return cls(settings.mqtt_url_for("hj212"), settings.city, host=host, port=port,
                   idle_timeout=settings.hj212_idle_timeout_s, write_timeout=settings.hj212_write_timeout_s,
                   max_connections=settings.hj212_max_connections,
                   frames_per_minute=settings.hj212_frames_per_minute, registry=registry,
                   require_password=settings.hj212_require_password, auto_register=settings.auto_register_devices)

    async def start(self) -> None:
        if self.registry is not None:
            self.registry.start()  # a thread of its own; lookups read the database until it listens
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
            # open connections are dropped: what they had not been answered for, their DAUs send again
            handlers = list(self._handlers)
            for handler in handlers:
                handler.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await self._server.wait_closed()
        await self.broker.stop()
        if self.registry is not None:
            await asyncio.to_thread(self.registry.stop)  # joins its thread

    # --- one DAU connection ----------------------------------------------------------------------
    async def _serve_dau(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.active_connections >= self.max_connections:
            self._refuse_connection(peer, writer)
            return
        self.active_connections += 1
        self.stats.connections += 1
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        abort = False
        try:
            self._bound_buffers(writer)
            bucket = TokenBucket(self.frames_per_minute, self.monotonic)
            while (raw := await self._read_frame(reader, peer)) is not None:
                if not bucket.take():
                    self.stats.rate_limited += 1
                    log.warning("hj212 DAU %s sends more than %d frames a minute; closing", peer,
                                self.frames_per_minute)
                    break
                reply = await self.handle_frame(raw)
                if reply and not await self._send(writer, reply, peer):
                    abort = True
                    break
                if not raw.endswith(b"\r\n"):
                    break  # truncated at EOF or oversized: the stream cannot be resynchronised
        except ConnectionError as exc:
            log.info("hj212 DAU %s: connection closed: %s", peer, exc)
        except asyncio.CancelledError:
            # stop(): not re-raised, since asyncio (3.11) logs a cancelled connection handler as an unhandled error
            abort = True
        finally:
            self.active_connections -= 1
            if handler is not None:
                self._handlers.discard(handler)
            await self._close(writer, peer, abort=abort)

    def _refuse_connection(self, peer: object, writer: asyncio.StreamWriter) -> None:
        self.stats.connections_refused += 1
        writer.close()  # nothing was written: it closes at once
        held = self._refused_log.due()
        if held is not None:
            log.warning("hj212 listener: %d DAU connections open (hj212_max_connections); refused %s%s",
                        self.max_connections, peer, f" and {held} more since the last such message" if held else "")

    @staticmethod
    def _bound_buffers(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)

    async def _send(self, writer: asyncio.StreamWriter, reply: bytes, peer: object) -> bool:
        """Write a reply; False when the peer has not taken it within the write timeout (the socket is
        to be aborted: closing would wait for the unread data to go)."""
        writer.write(reply)
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError:
            self.stats.write_timeouts += 1
            log.warning("hj212 DAU %s has not read its replies for %.0f s; closing", peer, self.write_timeout)
            return False
        return True

    async def _close(self, writer: asyncio.StreamWriter, peer: object, *, abort: bool) -> None:
        if abort:
            writer.transport.abort()
        else:
            writer.close()  # sends what is buffered first, which a peer that does not read could delay for ever
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.wait_closed()
        except TimeoutError:
            log.info("hj212 DAU %s did not take its last replies within %.0f s; aborting", peer, self.write_timeout)
            writer.transport.abort()
        except OSError:
            pass  # reset by the peer: closed all the same

    async def _read_frame(self, reader: asyncio.StreamReader, peer: object) -> bytes | None:
        """The next ``…\\r\\n``; at EOF a partial frame is returned as is (it is dead-lettered as
        truncated); more than a frame's maximum size without CRLF is returned cut (bad_length)."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial or None
        except asyncio.LimitOverrunError:
            log.warning("hj212 DAU %s: %d bytes without CRLF; closing", peer, MAX_FRAME_BYTES)
            return await reader.read(MAX_FRAME_BYTES)
        except TimeoutError:
            self.stats.idle_timeouts += 1
            log.info("hj212 DAU %s: idle for %.0f s; closing", peer, self.idle_timeout)
            return None

    # --- one frame -------------------------------------------------------------------------------
    async def handle_frame(self, raw: bytes) -> bytes | None:
        """Publish one frame; return the reply for the DAU (None: no reply)."""
        self.stats.frames += 1
        default = self.default_basis
        try:
            frame = parse_frame(raw)
            # DataTime and CN: a DAU misconfiguration is answered now, before anything is asked of the registry
            conversion = convert_frame(frame, tz=default.tz, gas_is_dry=default.gas_is_dry)
        except Hj212Error as exc:
            return await self._handle_bad(raw, str(exc), exc.code, qn_rtn_for(exc))
        if conversion.unknown_codes or conversion.invalid_fields or conversion.adjusted_fields:
            self.stats.unknown_codes += len(conversion.unknown_codes)
            self.stats.invalid_fields += len(conversion.invalid_fields)
            log.info("hj212 frame from MN %s: codes outside the table %s, invalid %s, zero drift stored as 0 %s",
                     frame.mn, list(conversion.unknown_codes), list(conversion.invalid_fields),
                     list(conversion.adjusted_fields))
        try:
            refused, basis = await self._registry_check(frame)
        except RegistryUnavailable as exc:
            # the collector will judge it; until the registry answers nothing is confirmed (the DAU retransmits)
            self.stats.registry_unavailable += 1
            log.warning("hj212 frame from MN %s published unconfirmed: %s", frame.mn, exc)
            await self._publish(frame.mn, raw)
            return None
        if refused is not None:
            self.stats.registry_refused += 1
            return await self._handle_bad(raw, *refused)
        if basis != default:
            try:  # DataTime in the device's own time zone (only a DataTime near year 2000 or 9999 can fail here)
                convert_frame(frame, tz=basis.tz, gas_is_dry=basis.gas_is_dry)
            except Hj212Error as exc:
                return await self._handle_bad(raw, str(exc), exc.code, qn_rtn_for(exc))
        decoded_refusal = self._refusal(frame.mn, raw, basis)
        if decoded_refusal is not None:
            return await self._handle_bad(raw, *decoded_refusal, QN_RTN_REJECTED)
        if not await self._publish(frame.mn, raw):
            return None
        if frame.wants_ack:
            self.stats.acks += 1
            return encode_data_reply(frame)
        return None

    async def _registry_check(self, frame: Hj212Frame) -> tuple[tuple[str, str, int] | None, Hj212Basis]:
        """((message, reason, QnRtn) when the collector's registry checks (processors/writer.py) will refuse the
        frame, else None; how the device's frames are read). Off the event loop: a lookup may read the database,
        and a password check runs scrypt."""
        if self.registry is None:
            return None, self.default_basis
        entry, refused = await asyncio.to_thread(self._registry_verdict, self.registry, frame.mn, frame.pw)
        return refused, self._basis(entry)

    def _basis(self, entry: DeviceEntry | None) -> Hj212Basis:
        """The device's time zone and gas basis: its registry entry's settings over the listener's defaults. An
        unusable stored setting is skipped (the next level applies) and counted."""
        if entry is None:
            return self.default_basis
        if entry.hj212.problems:  # the registry logs them when it reads the entry
            self.stats.device_settings_fallbacks += 1
        return entry.hj212.resolve(self.default_basis)

    def _registry_verdict(self, registry: Hj212Registry, mn: str,
                          password: str | None) -> tuple[DeviceEntry | None, tuple[str, str, int] | None]:
        """(the MN's registry entry, its refusal): one lookup serves the checks and the device's settings."""
        found = registry.lookup([mn])
        return found.get(mn), self._check_registry(registry, mn, password, found)

    def _check_registry(self, registry: Hj212Registry, mn: str, password: str | None,
                        found: dict[str, DeviceEntry] | None = None) -> tuple[str, str, int] | None:
        """The refusal of a frame of ``mn`` by the registry (``found``: what a lookup of ``mn`` gave, else one is
        made)."""
        entry = (registry.lookup([mn]) if found is None else found).get(mn)
        # QnRtn of the 9011 request reply, HJ 212-2017 table of request-reply codes (schemas/hj212.py): 3 "PW
        # 错误" for a missing or wrong password, 4 "MN 错误" for an MN this host does not know as a CEMS unit
        check = registry.check_password(mn, entry, password, require_password=self.require_password)
        if check is Hj212Check.WRONG_PASSWORD:
            return f"PW does not match the password registered for MN {mn}", "hj212_wrong_password", QN_RTN_BAD_PW
        if check is Hj212Check.NO_PASSWORD:
            return f"MN {mn} has no registered HJ 212 password", "hj212_no_password", QN_RTN_BAD_PW
        if entry is None:
            if self.require_password:  # an unregistered MN has no password: the collector refuses it
                return f"MN {mn} is not registered", "hj212_no_password", QN_RTN_BAD_MN
            if not self.auto_register:
                return f"MN {mn} is not registered", "unknown_device", QN_RTN_BAD_MN
            return None  # the collector registers it on first sight
        if entry.kind != CEMS_KIND:
            return f"MN {mn} is registered as a {entry.kind}", "kind_mismatch", QN_RTN_BAD_MN
        return None

    def _refusal(self, mn: str, raw: bytes, basis: Hj212Basis) -> tuple[str, str] | None:
        """(message, reason) when the collector, decoding this frame now as the device's, would store no reading."""
        decoded = decode_message(hj212_topic(self.city, mn), raw, self.clock(), hj212_basis=basis)
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
        topic = hj212_topic(self.city, mn)
        try:
            await self.broker.publish(topic, raw, self.publish_timeout)
        except BrokerRefused as exc:
            # not transient: every frame will be refused until the broker account or ACL is fixed
            self.stats.publish_refused += 1
            log.error("hj212 frame from MN %s refused by the broker on %s: %s; no reply, the DAU will retransmit "
                      "(may the listener's broker account publish there?)", mn, topic, exc)
            return False
        except (BrokerUnavailable, TimeoutError) as exc:
            self.stats.publish_failures += 1
            log.warning("hj212 frame from MN %s not published (%s); no reply, the DAU will retransmit", mn, exc)
            return False
        return True


async def run_listener(settings: Settings, host: str, port: int) -> None:
    """Run until cancelled (the CLI's SIGINT/SIGTERM)."""
    listener = Hj212Listener.from_settings(settings, host=host, port=port)
    await listener.start()
    try:
        await listener.serve_forever()
    finally:
        await listener.stop()
