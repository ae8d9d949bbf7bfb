"""Issue 12 items 4 and 5, the HJ 212 TCP listener: a data unit (DAU) is told 9014 ("received") only for a frame
that is stored, and no peer on the TCP port can pin the listener's connections.

Against a real Mosquitto (with the ACL ``sanitel.broker_auth`` generates where it matters) and a real PostgreSQL;
each test's docstring names the attack it shows."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from sanitel.broker_auth import BrokerAccount, BrokerAuthFiles, hash_password
from sanitel.ingest.hj212_tcp import Hj212Listener
from sanitel.processors.registry import DeviceRegistry
from sanitel.schemas import hj212
from sanitel.secret_hash import hash_secret
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.support.mqtt_tools import count, wait_for

CITY = "sectest"
PW = "s3cret-PW"
CP = "DataTime=20240501080000;a21002-Rtd=52.1,a21002-ZsRtd=40.0,a21002-Flag=N;a19001-Rtd=8.0,a19001-Flag=N"
DEADLINE_S = 30.0  # for anything asynchronous to happen; generous for a slow CI machine


def frame(qn: str, mn: str = "DAU-1", pw: str = PW, cp: str = CP) -> bytes:
    """A valid real-time data upload (CN 2011) whose Flag asks for a reply."""
    return hj212.encode_frame("31", "2011", mn, pw, cp, qn=qn, flag=5)


@asynccontextmanager
async def running(mqtt_url: str, **options: Any) -> AsyncIterator[Hj212Listener]:
    listener = Hj212Listener(mqtt_url, CITY, port=0, publish_timeout=10.0, **options)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


async def reply_to(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> hj212.Hj212Frame:
    writer.write(raw)
    await writer.drain()
    return await read_reply(reader)


async def read_reply(reader: asyncio.StreamReader, timeout: float = DEADLINE_S) -> hj212.Hj212Frame:
    return hj212.parse_frame(await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout))


async def closed_by_listener(reader: asyncio.StreamReader, timeout: float = DEADLINE_S) -> bytes:
    """What the listener still sent before it closed the connection (EOF or reset); TimeoutError when it did not
    close it within ``timeout``."""
    received = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Poll the event loop's own state (listener statistics) without blocking the listener."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
    return True


def register(db_url: str, mn: str, *, kind: str = "cems", password: str | None = PW) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash) VALUES (%s, %s, %s)",
                     (mn, kind, hash_secret(password) if password is not None else None))


# --- the broker refuses the publish ---------------------------------------------------------------

def test_the_limits_the_accounts_and_the_registry_come_from_settings() -> None:
    """The deployed listener (``sanitel hj212-listener``) has every limit on, publishes with its own broker
    account and reads the registry with the ingest role (nothing is connected here)."""
    settings = load_settings(database_url="postgresql://owner@127.0.0.1:1/sanitel",
                             ingest_database_url="postgresql://sanitel_ingest@127.0.0.1:1/sanitel",
                             mqtt_url="mqtt://127.0.0.1:1", hj212_mqtt_url="mqtt://hj212:pw@127.0.0.1:1",
                             city=CITY, hj212_max_connections=3, hj212_idle_timeout_s=7, hj212_write_timeout_s=2,
                             hj212_frames_per_minute=11, hj212_require_password=False, registry_refresh_s=42)
    listener = Hj212Listener.from_settings(settings, host="127.0.0.1", port=0)
    assert (listener.max_connections, listener.idle_timeout, listener.write_timeout, listener.frames_per_minute,
            listener.require_password) == (3, 7, 2, 11, False)
    assert listener.broker.target.username == "hj212"
    assert isinstance(listener.registry, DeviceRegistry)
    assert (listener.registry.url, listener.registry.refresh_s) == (
        "postgresql://sanitel_ingest@127.0.0.1:1/sanitel", 42)


async def test_a_frame_the_broker_refuses_is_never_acknowledged(
        make_mosquitto: Callable[..., MosquittoServer], tmp_path: Path) -> None:
    """Attack / fault: the listener runs with a broker account whose ACL does not let it publish
    ``cems/+/hj212`` (here the collector's read-only role). Under MQTT 3.1.1 Mosquitto acknowledges the denied
    publish like any other and drops it, and the DAU was told 9014: its data was lost without a trace. With
    MQTT 5 the PUBACK says 0x87 (not authorized): no 9014, counted, logged; the account the ACL gives
    ``cems/+/hj212`` (role hj212) is acknowledged."""
    files = BrokerAuthFiles(tmp_path / "passwd", tmp_path / "acl")
    files.write([BrokerAccount("wrong-account", hash_password("pw1"), service_role="collector"),
                 BrokerAccount("hj212-listener", hash_password("pw2"), service_role="hj212"),
                 BrokerAccount("collector", hash_password("pw3"), service_role="collector")], CITY)
    broker = make_mosquitto(password_file=files.password_file, acl_file=files.acl_file)
    denied_url = f"mqtt://wrong-account:pw1@127.0.0.1:{broker.port}"
    allowed_url = f"mqtt://hj212-listener:pw2@127.0.0.1:{broker.port}"
    async with aiomqtt.Client("127.0.0.1", broker.port, username="collector", password="pw3",
                              protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe(f"sanitation/{CITY}/cems/+/hj212", qos=1)
        async with running(denied_url) as listener:
            assert await listener.broker.wait_connected(DEADLINE_S)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame("20240501080000001"))
            await writer.drain()
            with pytest.raises(TimeoutError):
                await read_reply(reader, timeout=3)  # nothing: the DAU retransmits, as after any lost reply
            assert (listener.stats.publish_refused, listener.stats.acks) == (1, 0)
            writer.close()
        async with running(allowed_url) as listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            assert (await reply_to(reader, writer, frame("20240501080000002"))).cn == "9014"
            writer.close()
        async with asyncio.timeout(DEADLINE_S):
            delivered = await anext(aiter(sub.messages))
        assert delivered.payload == frame("20240501080000002")  # only the acknowledged one reached the broker


# --- connection limits ------------------------------------------------------------------------------

async def test_connections_over_the_cap_are_closed_at_once(mqtt_server: MosquittoServer) -> None:
    """Attack: open connections until the listener (or the host's file descriptors) gives out. Over
    ``hj212_max_connections`` a connection is closed at once and counted; the DAUs already connected are
    served, and a slot that frees up is used again."""
    async with running(mqtt_server.url, max_connections=2) as listener:
        first = await asyncio.open_connection("127.0.0.1", listener.port)
        second = await asyncio.open_connection("127.0.0.1", listener.port)
        for n, (reader, writer) in enumerate((first, second)):
            assert (await reply_to(reader, writer, frame(f"2024050108000000{n}"))).cn == "9014"
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame("20240501080000003"))
        assert await closed_by_listener(reader) == b""  # not served: closed without a reply
        assert listener.stats.connections_refused == 1
        assert (await reply_to(*first, frame("20240501080000004"))).cn == "9014"  # the others are still served
        second[1].close()
        await until(lambda: listener.active_connections == 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        assert (await reply_to(reader, writer, frame("20240501080000005"))).cn == "9014"
        writer.close()
        first[1].close()


async def test_a_silent_or_trickling_peer_is_closed_after_the_idle_timeout(mqtt_server: MosquittoServer) -> None:
    """Attack: connect and send nothing, or half a frame, to hold a connection slot for ever. A frame must be
    complete within ``hj212_idle_timeout_s`` of the previous one."""
    async with running(mqtt_server.url, idle_timeout=0.5) as listener:
        silent = await asyncio.open_connection("127.0.0.1", listener.port)
        trickling = await asyncio.open_connection("127.0.0.1", listener.port)
        trickling[1].write(frame("20240501080000001")[:30])
        assert await closed_by_listener(silent[0]) == b""
        assert await closed_by_listener(trickling[0]) == b""
        assert listener.stats.idle_timeouts == 2
        await until(lambda: listener.active_connections == 0)


async def test_a_peer_that_never_reads_its_replies_is_cut_off_after_the_write_timeout(
        mqtt_server: MosquittoServer) -> None:
    """Attack: send frames that ask for a reply and never read the replies. Once the socket buffers are full,
    writing the next reply waits for ever and the connection (its slot, its buffers) is pinned. With
    ``hj212_write_timeout_s`` the listener cuts the peer off (abort: closing would wait for the unread data)."""
    async with running(mqtt_server.url, write_timeout=1.0, frames_per_minute=10**9) as listener:
        loop = asyncio.get_running_loop()
        peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window it advertises
        peer.setblocking(False)
        await loop.sock_connect(peer, ("127.0.0.1", listener.port))
        burst = b"".join(frame(f"20240501080{n:06d}") for n in range(50))

        async def flood() -> None:
            # sends until the listener stops reading (it waits to write) and then until it cuts the peer off
            with pytest.raises(OSError):  # reset / broken pipe once the listener aborts the connection
                while True:
                    await loop.sock_sendall(peer, burst)

        sender = asyncio.create_task(flood())
        try:
            await until(lambda: listener.stats.write_timeouts == 1, timeout=120)
            await until(lambda: listener.active_connections == 0)
            assert listener.stats.acks > 100  # it did answer until the peer's buffers were full
            async with asyncio.timeout(DEADLINE_S):
                await sender
        finally:
            sender.cancel()
            peer.close()


async def test_a_peer_sending_faster_than_the_frame_rate_is_disconnected(mqtt_server: MosquittoServer) -> None:
    """Attack: flood the listener with frames (each one is decoded, checked, published and stored, and a wrong
    password costs a scrypt). Over ``hj212_frames_per_minute`` the connection is closed before the excess frame
    is published. The clock is the test's: nothing here depends on how fast the machine is."""
    now = [1000.0]
    async with (running(mqtt_server.url, frames_per_minute=3, monotonic=lambda: now[0]) as listener,
                aiomqtt.Client("127.0.0.1", mqtt_server.port) as sub):
        await sub.subscribe(f"sanitation/{CITY}/cems/DAU-RATE/hj212", qos=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"".join(frame(f"2024050108000000{n}", mn="DAU-RATE") for n in range(5)))
        await writer.drain()
        replies = await closed_by_listener(reader)
        assert [r.qn for r in map(hj212.parse_frame, replies.splitlines(keepends=True))] == [
            f"2024050108000000{n}" for n in range(3)]
        assert (listener.stats.rate_limited, listener.stats.frames) == (1, 3)
        async with asyncio.timeout(DEADLINE_S):
            published = [(await anext(aiter(sub.messages))).payload for _ in range(3)]
        assert published == [frame(f"2024050108000000{n}", mn="DAU-RATE") for n in range(3)]
        # a new connection starts with a minute's allowance; that one refills at frames_per_minute
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        for n in range(3):
            assert (await reply_to(reader, writer, frame(f"2024050108000001{n}", mn="DAU-RATE"))).cn == "9014"
        now[0] += 20.0  # one frame's worth
        assert (await reply_to(reader, writer, frame("20240501080000013", mn="DAU-RATE"))).cn == "9014"
        writer.write(frame("20240501080000014", mn="DAU-RATE"))
        assert await closed_by_listener(reader) == b""
        assert listener.stats.rate_limited == 2


# --- the registry: MN and password ----------------------------------------------------------------

@pytest.mark.clock
async def test_frames_the_registry_refuses_get_9011_and_are_dead_lettered(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Any]) -> None:
    """Attack: send readings for a plant's MN without knowing its password, or for an MN that has none
    registered. The listener used to answer 9014 to every well-formed frame and left the password to the
    collector, which refused them: the DAU was told its data was received while it was dead-lettered. Now it
    answers 9011 with QnRtn 4 (MN error: not registered, or not a CEMS unit) or 3 (PW error: none registered
    while one is required, or a wrong one), HJ 212-2017's table of request-reply codes, and still publishes
    the frame so the collector records why."""
    register(fresh_db, "DAU-OK")
    register(fresh_db, "DAU-NOPW", password=None)
    register(fresh_db, "BIN-1", kind="bin")
    make_collector(fresh_db, mqtt_server.url, city=CITY, hj212_require_password=True)
    cp = CP.replace("20240501080000", "20260310080000")  # a fixed past instant, 00:00 UTC
    sent = {
        "unknown MN": (frame("20260310080000001", mn="DAU-GHOST", cp=cp), "4", "hj212_no_password"),
        "no password": (frame("20260310080000002", mn="DAU-NOPW", cp=cp), "3", "hj212_no_password"),
        "wrong password": (frame("20260310080000003", mn="DAU-OK", pw="guess", cp=cp), "3", "hj212_wrong_password"),
        "not a CEMS unit": (frame("20260310080000004", mn="BIN-1", cp=cp), "4", "kind_mismatch"),
    }
    async with running(mqtt_server.url, registry=DeviceRegistry(fresh_db), require_password=True) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        for case, (raw, qn_rtn, _) in sent.items():
            reply = await reply_to(reader, writer, raw)
            assert (reply.cn, reply.cp.other) == ("9011", {"QnRtn": qn_rtn}), case
        good = frame("20260310080000005", mn="DAU-OK", cp=cp)
        assert (await reply_to(reader, writer, good)).cn == "9014"
        writer.close()
        assert (listener.stats.registry_refused, listener.stats.acks) == (4, 1)

    def landed() -> bool:
        return (count(fresh_db, "SELECT count(*) FROM cems_readings") == 1
                and count(fresh_db, "SELECT count(*) FROM dead_letters") == len(sent))

    assert await asyncio.to_thread(wait_for, landed, DEADLINE_S)
    with psycopg.connect(fresh_db) as conn:
        dead: dict[bytes, str] = dict(conn.execute("SELECT p.payload, d.reason_code FROM dead_letters d"
                                 " JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256").fetchall())
        stored = conn.execute("SELECT device_id FROM cems_readings").fetchall()
    assert dead == {raw: reason for raw, _, reason in sent.values()}
    assert stored == [("DAU-OK",)]


async def test_a_rotated_password_reaches_the_listener_within_seconds(
        fresh_db: str, mqtt_server: MosquittoServer) -> None:
    """Attack: a password that leaked is rotated in the registry, yet the listener keeps accepting it (a cache
    kept until restart). The registry LISTENs for changes: with a full reload only every hour, the new
    password is accepted and the old one refused within seconds of the UPDATE."""
    register(fresh_db, "DAU-ROT", password="old-pw")
    registry = DeviceRegistry(fresh_db, refresh_s=3600)
    async with running(mqtt_server.url, registry=registry) as listener:
        assert await asyncio.to_thread(registry.wait_listening, DEADLINE_S)  # the cache is in use from now on
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        assert (await reply_to(reader, writer, frame("20240501080000001", mn="DAU-ROT", pw="old-pw"))).cn == "9014"
        with psycopg.connect(fresh_db) as conn:
            conn.execute("UPDATE devices SET hj212_password_hash = %s WHERE device_id = 'DAU-ROT'",
                         (hash_secret("new-pw"),))
        async with asyncio.timeout(DEADLINE_S):
            while (await reply_to(reader, writer, frame("20240501080000002", mn="DAU-ROT", pw="new-pw"))).cn != "9014":
                await asyncio.sleep(0.2)
        refused = await reply_to(reader, writer, frame("20240501080000003", mn="DAU-ROT", pw="old-pw"))
        assert (refused.cn, refused.cp.other) == ("9011", {"QnRtn": "3"})
        writer.close()
