"""Broker URLs, the one paho client set-up every service shares, and MQTT 3.1.1 packet encoding for the two
places that speak the protocol without paho: the API's broker health probe (one CONNECT, no session left
behind) and the simulators' lean publisher.

A broker URL is ``mqtt://user:password@host:1883`` or ``mqtts://…:8883`` with optional query options
``ca``, ``cert``, ``key`` (file paths), ``insecure`` and ``client_id``."""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass, field
from typing import TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from sanitel.errors import SanitelError
from sanitel.urls import redact_url

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"


def utf8_field(text: str) -> bytes:
    """A length-prefixed UTF-8 string."""
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def remaining_length(n: int) -> bytes:
    """The variable-length 'remaining length' of a fixed header."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    """CONNECT with a clean session (nothing kept at the broker); a password is sent only with a user name."""
    flags = 0x02
    payload = utf8_field(client_id)
    if username is not None:
        flags |= 0x80
        payload += utf8_field(username)
        if password is not None:
            flags |= 0x40
            payload += utf8_field(password)
    body = utf8_field("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + remaining_length(len(body)) + body


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    client_id: str | None = None
    url: str = field(default="", repr=False)  # as given (with its password): shown only through redacted()

    @classmethod
    def parse(cls, url: str) -> BrokerTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise SanitelError(f"{redact_url(url)!r} is not a broker URL; use mqtt://user:password@host:1883 or "
                               "mqtts://user:password@host:8883")
        try:
            port = parts.port
        except ValueError:
            raise SanitelError(f"{redact_url(url)!r} has a malformed port; use e.g. mqtt://localhost:1883") from None
        tls = parts.scheme in ("mqtts", "ssl")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"ca", "cert", "key", "insecure", "client_id"}
        if unknown:
            raise SanitelError(f"{redact_url(url)!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                               "use ca, cert, key, insecure, client_id")
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            ca_file=query.get("ca"),
            cert_file=query.get("cert"),
            key_file=query.get("key"),
            insecure=query.get("insecure", "0").lower() in ("1", "true", "yes"),
            client_id=query.get("client_id"),
            url=url,
        )

    def redacted(self) -> str:
        """The URL without the password, for logs and the progress line."""
        return redact_url(self.url)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


# paho's network thread waits this long before its first reconnect attempt, doubling up to the cap
RECONNECT_DELAY_S = (1, 30)
KEEPALIVE_S = 30

ClientT = TypeVar("ClientT", bound=mqtt.Client)


@overload
def paho_client(target: BrokerTarget, client_id: str, *, protocol: mqtt.MQTTProtocolVersion = ...,
                clean_start: bool = ..., properties: Properties | None = ..., manual_ack: bool = ...,
                keepalive: int = ..., max_inflight: int | None = ...) -> mqtt.Client: ...


@overload
def paho_client(target: BrokerTarget, client_id: str, *, client_class: type[ClientT],
                protocol: mqtt.MQTTProtocolVersion = ..., clean_start: bool = ..., properties: Properties | None = ...,
                manual_ack: bool = ..., keepalive: int = ..., max_inflight: int | None = ...) -> ClientT: ...


def paho_client(target: BrokerTarget, client_id: str, *, client_class: type[mqtt.Client] = mqtt.Client,
                protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311, clean_start: bool = True,
                properties: Properties | None = None, manual_ack: bool = False,
                keepalive: int = KEEPALIVE_S, max_inflight: int | None = None) -> mqtt.Client:
    """A paho client for ``target``, configured but not connected: ``loop_start()`` connects from paho's network
    thread and reconnects after every loss (waiting ``RECONNECT_DELAY_S``); ``reconnect()`` connects now,
    raising OSError when the broker cannot be reached.

    Credentials and TLS (CA, client certificate, ``insecure``) come from the URL. ``clean_start=False`` keeps
    the session at the broker (MQTT 5: clean start off, with ``properties`` such as the session expiry;
    MQTT 3.1.1: clean session off); ``manual_ack`` leaves PUBACKs to the caller; ``client_class`` is a paho
    ``Client`` subclass such as the collector's ``BufferedClient``. ``max_inflight`` bounds unacknowledged QoS 1
    messages out (paho's default: 20); like every connection setting, paho accepts it only before connecting.
    """
    v5 = protocol == mqtt.MQTTv5
    if properties is not None and not v5:
        raise ValueError("CONNECT properties need MQTT 5")
    # paho refuses clean_session for MQTT 5, where the same choice is the CONNECT's clean start flag
    client = client_class(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                          clean_session=None if v5 else clean_start, manual_ack=manual_ack)
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set_context(target.ssl_context())  # paho takes hostname checking (``insecure``) from the context
    client.reconnect_delay_set(*RECONNECT_DELAY_S)
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    # records where and how to connect, without connecting: reconnect() and loop_start() use it
    if v5:
        client.connect_async(target.host, target.port, keepalive=keepalive, clean_start=clean_start,
                             properties=properties)
    else:
        client.connect_async(target.host, target.port, keepalive=keepalive)
    return client
