"""Probes for /health that are not SQL: the broker (a real MQTT CONNECT). The collector's spool is read with
``sanitel.processors.spool.inspect_spool``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from dataclasses import dataclass

from sanitel.errors import SanitelError
from sanitel.mqtt_wire import DISCONNECT, BrokerTarget, connect_packet

# MQTT 3.1.1 CONNACK return codes
_CONNACK = {0: "accepted", 1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorised"}


@dataclass(frozen=True)
class BrokerProbe:
    reachable: bool  # TCP connected and the broker answered CONNECT
    accepted: bool  # CONNACK return code 0
    detail: str


async def probe_broker(url: str, timeout: float = 3.0) -> BrokerProbe:
    try:
        target = BrokerTarget.parse(url)
    except SanitelError as exc:
        return BrokerProbe(False, False, str(exc))
    host, port, username, password = target.host, target.port, target.username, target.password
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=target.ssl_context() if target.tls else None), timeout)
        writer.write(connect_packet(f"sanitel-health-{secrets.token_hex(4)}", username, password, keepalive=10))
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(4), timeout)
        if reply[0] != 0x20:
            return BrokerProbe(True, False, f"unexpected reply to CONNECT (packet type {reply[0] >> 4})")
        code = reply[3]
        if code == 0:
            writer.write(DISCONNECT)
            await writer.drain()
        return BrokerProbe(True, code == 0, f"CONNACK {_CONNACK.get(code, f'code {code}')}")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        return BrokerProbe(False, False, f"cannot reach {host}:{port}: {exc.__class__.__name__} {exc}".strip())
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
