"""MQTT 3.1.1 packet encoding for the two places that speak the protocol without paho: the API's broker
health probe (one CONNECT, no session left behind) and the simulators' lean load publisher."""

from __future__ import annotations

import struct

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
