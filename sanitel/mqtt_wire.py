"""Broker URLs, and MQTT 3.1.1 packet encoding for the two places that speak the protocol without paho:
the API's broker health probe (one CONNECT, no session left behind) and the simulators' lean publisher.

A broker URL is ``mqtt://user:password@host:1883`` or ``mqtts://…:8883`` with optional query options
``ca``, ``cert``, ``key`` (file paths), ``insecure`` and ``client_id``."""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from sanitel.errors import SanitelError

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

    @classmethod
    def parse(cls, url: str) -> BrokerTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise SanitelError(f"{url!r} is not a broker URL; use mqtt://user:password@host:1883 or "
                               "mqtts://user:password@host:8883")
        try:
            port = parts.port
        except ValueError:
            raise SanitelError(f"{url!r} has a malformed port; use e.g. mqtt://localhost:1883") from None
        tls = parts.scheme in ("mqtts", "ssl")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"ca", "cert", "key", "insecure", "client_id"}
        if unknown:
            raise SanitelError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; "
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
        )

    def redacted(self) -> str:
        """The URL without the password, for logs and the progress line."""
        auth = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
