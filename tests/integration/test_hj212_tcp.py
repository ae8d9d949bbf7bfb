"""The HJ 212 TCP listener against a real private Mosquitto: frames a DAU sends over TCP arrive on
``sanitation/{city}/cems/{mn}/hj212`` unchanged, and the DAU is answered only after the broker's PUBACK (MQTT 5).
Broker ACLs, limits and the registry checks: tests/integration/security/test_hj212_listener.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.ingest.hj212_tcp import Hj212Listener
from sanitel.processors.registry import DeviceRegistry
from sanitel.schemas import hj212
from sanitel.secret_hash import hash_secret
from sanitel.servers import MosquittoServer
from tests.support.mqtt_tools import count, wait_for

CITY = "testcity"
PW = "123456"
CP = "DataTime=20240501080000;a21002-Rtd=52.1,a21002-ZsRtd=40.0,a21002-Flag=N;a19001-Rtd=8.0,a19001-Flag=N"


def frame(qn: str, flag: int = 5, mn: str = "LHK-L1", cp: str = CP) -> bytes:
    return hj212.encode_frame("31", "2011", mn, PW, cp, qn=qn, flag=flag)


def _host_port(server: MosquittoServer) -> tuple[str, int]:
    return "127.0.0.1", server.port


def register_dau(db_url: str, mn: str, password: str = PW, *, metadata: dict[str, object] | None = None,
                 site_id: str | None = None) -> None:
    """A CEMS data unit with its HJ 212 password (a salted hash): the collector refuses frames of any other MN
    (settings.hj212_require_password, on by default). ``metadata`` is stored as given (no API validation)."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash, metadata, site_id)"
                     " VALUES (%s, 'cems', %s, %s, %s)",
                     (mn, hash_secret(password), Jsonb(metadata or {}), site_id))


@asynccontextmanager
async def running(server: MosquittoServer, publish_timeout: float = 5.0, db_url: str | None = None,
                  registry: DeviceRegistry | None = None,
                  clock: Callable[[], datetime] | None = None) -> AsyncIterator[Hj212Listener]:
    """A listener; with ``db_url`` (or a ``registry``) it checks frames against that database's registry, as
    deployed."""
    if registry is None and db_url is not None:
        registry = DeviceRegistry(db_url)
    listener = Hj212Listener(server.url, CITY, port=0, publish_timeout=publish_timeout, registry=registry,
                             clock=clock)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()


@asynccontextmanager
async def subscriber(server: MosquittoServer) -> AsyncIterator[aiomqtt.Client]:
    host, port = _host_port(server)
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(f"sanitation/{CITY}/cems/+/hj212", qos=1)
        yield client


async def next_message(client: aiomqtt.Client, timeout: float = 5.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        return await anext(aiter(client.messages))


async def read_reply(reader: asyncio.StreamReader, timeout: float = 5.0) -> hj212.Hj212Frame:
    return hj212.parse_frame(await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout))


async def test_valid_frames_are_published_unchanged_and_acknowledged(mqtt_server: MosquittoServer) -> None:
    async with subscriber(mqtt_server) as sub, running(mqtt_server) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        sent = frame("20240501080000001")
        writer.write(sent)
        await writer.drain()
        ack = await read_reply(reader)
        assert (ack.cn, ack.st, ack.qn, ack.mn, ack.flag) == ("9014", "91", "20240501080000001", "LHK-L1", 4)
        msg = await next_message(sub)
        assert (str(msg.topic), msg.payload, msg.qos) == (f"sanitation/{CITY}/cems/LHK-L1/hj212", sent, 1)
        # Flag without bit A: published, not answered — the next reply belongs to the next frame
        writer.write(frame("20240501080000002", flag=4) + frame("20240501080000003"))
        await writer.drain()
        assert (await read_reply(reader)).qn == "20240501080000003"
        assert [(await next_message(sub)).payload for _ in range(2)] == [
            frame("20240501080000002", flag=4), frame("20240501080000003")]
        writer.close()
        assert (listener.stats.frames, listener.stats.acks, listener.stats.bad_frames) == (3, 2, 0)


@pytest.mark.parametrize(("raw", "qn_rtn"), [
    (frame("20240501080000004").replace(b"\r\n", b"").rstrip(b"0123456789ABCDEF") + b"FFFF\r\n", 9),  # CRC
    # issue 11 item 1: this DataTime was answered 9014, then stalled the collector (OverflowError)
    (frame("20240501080000004", cp=CP.replace("20240501080000", "00010101000000")), 100),
    (frame("20240501080000004", cp=CP.replace("20240501080000", "20241301080000")), 100),  # month 13
    (hj212.encode_frame("31", "2021", "LHK-L1", "123456", CP, qn="20240501080000004", flag=5), 8),  # no data
    (frame("20240501080000004").replace(b"CN=2011", b"CN=2021").replace(b"##", b"#+", 1), None),  # header: no reply
])
async def test_bad_frames_are_published_for_dead_lettering_and_refused(
        mqtt_server: MosquittoServer, raw: bytes, qn_rtn: int | None) -> None:
    async with subscriber(mqtt_server) as sub, running(mqtt_server) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(raw + frame("20240501080000005"))
        await writer.drain()
        reply = await read_reply(reader)
        if qn_rtn is not None:
            assert (reply.cn, reply.qn, reply.mn, reply.cp.other) == (
                "9011", "20240501080000004", "LHK-L1", {"QnRtn": str(qn_rtn)})
            reply = await read_reply(reader)
        assert (reply.cn, reply.qn) == ("9014", "20240501080000005")
        bad = await next_message(sub)
        assert bad.payload == raw and str(bad.topic) == f"sanitation/{CITY}/cems/LHK-L1/hj212"
        writer.close()
        assert listener.stats.bad_frames == 1


async def test_a_frame_the_collector_would_refuse_for_its_time_is_not_acknowledged(
        mqtt_server: MosquittoServer) -> None:
    """9014 only for what the collector stores: a DataTime 10 minutes ahead of the host's clock (5 allowed) is
    answered 9011 QnRtn=2 (request rejected), and is still published, for the dead letter."""
    now = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)  # 08:00 in Asia/Shanghai, the DataTime of CP
    listener = Hj212Listener(mqtt_server.url, CITY, port=0, publish_timeout=5.0, clock=lambda: now)
    await listener.start()
    try:
        async with subscriber(mqtt_server) as sub:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            ahead = frame("20240501080000020", cp=CP.replace("20240501080000", "20240501081000"))
            writer.write(ahead + frame("20240501080000021"))
            await writer.drain()
            refused = await read_reply(reader)
            assert (refused.cn, refused.qn, refused.cp.other) == ("9011", "20240501080000020", {"QnRtn": "2"})
            assert (await read_reply(reader)).cn == "9014"
            assert (await next_message(sub)).payload == ahead
            writer.close()
    finally:
        await listener.stop()
    assert (listener.stats.bad_frames, listener.stats.acks, listener.stats.nacks) == (1, 1, 1)


async def test_unknown_codes_and_implausible_values_are_acknowledged(mqtt_server: MosquittoServer) -> None:
    """issue 11 item 7: they no longer cost the frame (the collector stores the rest): 9014."""
    cp = CP + ";a01902-Rtd=912.3;i33101-Rtd=880.5;a21026-Rtd=-0.3,a21026-Flag=N"
    async with subscriber(mqtt_server) as sub, running(mqtt_server) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        sent = frame("20240501080000030", cp=cp.replace("a19001-Rtd=8.0", "a19001-Rtd=21.05"))
        writer.write(sent)
        await writer.drain()
        assert (await read_reply(reader)).cn == "9014"
        assert (await next_message(sub)).payload == sent
        writer.close()
        assert (listener.stats.bad_frames, listener.stats.unknown_codes, listener.stats.invalid_fields) == (0, 1, 1)


async def test_garbage_and_a_frame_cut_by_the_connection_are_still_dead_lettered(mqtt_server: MosquittoServer) -> None:
    async with subscriber(mqtt_server) as sub, running(mqtt_server) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"hello\r\n" + frame("20240501080000006")[:40])
        writer.write_eof()
        assert await reader.read() == b""  # no reply to either: no MN to address / no Flag to honour
        first, second = await next_message(sub), await next_message(sub)
        assert (str(first.topic), first.payload) == (f"sanitation/{CITY}/cems/unknown/hj212", b"hello\r\n")
        assert second.payload == frame("20240501080000006")[:40]
        with pytest.raises(hj212.Hj212Error) as err:
            hj212.parse_frame(second.payload)  # what the collector will record as the reason
        assert err.value.code == "truncated"


async def test_no_acknowledgement_without_the_brokers_puback(make_mosquitto: Callable[..., MosquittoServer]) -> None:
    broker = make_mosquitto()
    async with running(broker, publish_timeout=1.5) as listener:
        assert await listener.broker.wait_connected(10)
        broker.stop()
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame("20240501080000007"))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n"), 3)  # not held by the broker: no ack
        assert listener.stats.publish_failures == 1
        broker.start()
        listener.publish_timeout = 15
        async with subscriber(broker) as sub:
            writer.write(frame("20240501080000007"))  # the DAU retransmits after its reply timeout
            await writer.drain()
            assert (await read_reply(reader, 20)).qn == "20240501080000007"
            assert (await next_message(sub)).payload == frame("20240501080000007")
        writer.close()


@pytest.mark.clock
async def test_tcp_frames_land_in_the_database_through_the_collector(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Any]) -> None:
    """End to end: DAU → TCP listener → broker → collector → cems_readings / dead_letters."""
    register_dau(fresh_db, "DAU-E2E")
    make_collector(fresh_db, mqtt_server.url, city=CITY)
    now = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed past instant: 08:00 in the plant's time zone
    data_time = hj212.format_data_time(now)
    assert data_time == "20260310080000"
    good = frame("20240501080000008", mn="DAU-E2E", cp=CP.replace("20240501080000", data_time))
    bad = good.replace(b"52.1", b"52.9")  # CRC no longer matches
    async with running(mqtt_server, db_url=fresh_db) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(good + bad)
        await writer.drain()
        assert (await read_reply(reader)).cn == "9014"
        assert (await read_reply(reader)).cp.other == {"QnRtn": "9"}
        writer.close()

    def landed() -> bool:
        return (count(fresh_db, "SELECT count(*) FROM cems_readings") == 1
                and count(fresh_db, "SELECT count(*) FROM dead_letters") == 1)

    assert await asyncio.to_thread(wait_for, landed, 15)
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT device_id, ts, source, data_kind, nox_mg_m3, nox_zs_mg_m3, o2_pct"
                           " FROM cems_readings").fetchone()
        dead = conn.execute("SELECT d.topic, p.payload, d.reason_code FROM dead_letters d"
                            " JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256").fetchone()
    assert row == ("DAU-E2E", now, "hj212", "rtd", pytest.approx(52.1), pytest.approx(40.0), pytest.approx(8.0))
    assert dead == (f"sanitation/{CITY}/cems/DAU-E2E/hj212", bad, "hj212_bad_crc")


@pytest.mark.clock
async def test_one_field_never_costs_the_reading_end_to_end(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Any]) -> None:
    """issue 11 items 1 and 7 through the listener, the broker, the collector and the database: unknown
    codes kept raw, an implausible O2 nulled with its raw value and reason, a zero-drift SO2 stored as 0,
    milliseconds in DataTime; an impossible DataTime is refused (9011) and dead-lettered, and the frame
    right behind it still lands."""
    register_dau(fresh_db, "DAU-E2E")
    make_collector(fresh_db, mqtt_server.url, city=CITY)
    cp = ("DataTime=20260310080000250;a21002-Rtd=52.1,a21002-ZsRtd=40.0,a21002-Flag=N;a19001-Rtd=21.05,"
          "a19001-Flag=N;a21026-Rtd=-0.3,a21026-Flag=N;a01902-Rtd=912.3;i33101-Rtd=880.5,i33101-Flag=N")
    good = frame("20260310080000250", mn="DAU-E2E", cp=cp)
    impossible = frame("20260310080000251", mn="DAU-E2E", cp=cp.replace("20260310080000250", "00010101000000"))
    behind = frame("20260310080000252", mn="DAU-E2E", cp=CP.replace("20240501080000", "20260310080100"))
    async with running(mqtt_server, db_url=fresh_db) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(good + impossible + behind)
        await writer.drain()
        assert (await read_reply(reader)).cn == "9014"
        refused = await read_reply(reader)
        assert (refused.cn, refused.cp.other) == ("9011", {"QnRtn": "100"})
        assert (await read_reply(reader)).cn == "9014"
        writer.close()

    def landed() -> bool:
        return (count(fresh_db, "SELECT count(*) FROM cems_readings") == 2
                and count(fresh_db, "SELECT count(*) FROM dead_letters") == 1)

    assert await asyncio.to_thread(wait_for, landed, 15)
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT ts, nox_mg_m3, o2_pct, o2_flag, so2_mg_m3, extra FROM cems_readings"
                           " ORDER BY ts LIMIT 1").fetchone()
        dead = conn.execute("SELECT reason_code FROM dead_letters").fetchone()
    assert row is not None and dead == ("hj212_bad_field",)
    ts, nox, o2, o2_flag, so2, extra = row
    assert ts == datetime(2026, 3, 10, 0, 0, 0, 250_000, tzinfo=UTC)
    assert (nox, o2, o2_flag, so2) == (pytest.approx(52.1), None, "N", 0.0)
    assert extra["hj212"] == {"a01902": {"Rtd": "912.3"}}
    assert extra["hj212_unknown"] == {"i33101-Rtd": "880.5", "i33101-Flag": "N"}
    assert extra["invalid"]["o2_pct"]["raw"] == "21.05" and "O2" in extra["invalid"]["o2_pct"]["reason"]
    adjusted = extra["adjusted"]["so2_mg_m3"]
    assert (adjusted["raw"], adjusted["stored"]) == ("-0.3", 0.0) and "zero drift" in adjusted["reason"]


# --- per-device settings: time zone and gas basis (issue 13 item 5) --------------------------------------------

DATA_TIME = "20261128120000"  # noon on the DAU's clock, whatever its time zone
SETTINGS_CLOCK = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # the listener's receive time: after every such noon
HOUR_S = 3600.0  # full registry reloads: never within a test, so only a NOTIFY explains a change


def noon_frame(qn: str, mn: str, data_time: str = DATA_TIME) -> bytes:
    return frame(qn, mn=mn, cp=CP.replace("20240501080000", data_time))


def stored(db_url: str, mn: str) -> list[tuple[datetime, bool]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT ts, gas_is_dry FROM cems_readings WHERE device_id = %s ORDER BY ts",
                            (mn,)).fetchall()
    return [(ts, dry) for ts, dry in rows]


@pytest.mark.clock
async def test_each_dau_is_read_in_its_own_time_zone_and_gas_basis(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Any]) -> None:
    """A plant whose analyser measures wet gas, a unit in Tokyo, a plant in Berlin: each frame says only "noon"
    and nothing about the gas. Their readings used to be stored as dry gas at noon in Shanghai. Now the device's
    ``metadata.gas_is_dry`` / ``metadata.timezone``, else its plant's ``sites.timezone``, decide; a stored value
    that is no setting at all falls back to the default (counted), and its frame is still stored."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES ('p-ber', 'plant', 'Berlin', "
                     "'Europe/Berlin')")
        conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES ('l-ber', 'line', "
                     "'Berlin line 1', 'p-ber', 'Europe/Berlin')")
    register_dau(fresh_db, "DAU-WET", metadata={"gas_is_dry": False})
    register_dau(fresh_db, "DAU-TYO", metadata={"timezone": "Asia/Tokyo"})
    register_dau(fresh_db, "DAU-SHA")
    register_dau(fresh_db, "DAU-BER", site_id="l-ber")
    register_dau(fresh_db, "DAU-BAD", metadata={"gas_is_dry": "no", "timezone": "Mars/Olympus_Mons"})
    make_collector(fresh_db, mqtt_server.url, city=CITY)
    mns = ["DAU-WET", "DAU-TYO", "DAU-SHA", "DAU-BER", "DAU-BAD"]
    async with running(mqtt_server, db_url=fresh_db, clock=lambda: SETTINGS_CLOCK) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        for n, mn in enumerate(mns):
            assert (await read_reply_to(reader, writer, noon_frame(f"2026112812000000{n}", mn))).cn == "9014", mn
        writer.close()
        assert listener.stats.device_settings_fallbacks == 1  # DAU-BAD's frame

    assert await asyncio.to_thread(wait_for, lambda: count(fresh_db, "SELECT count(*) FROM cems_readings") == 5,
                                   15)
    # 12:00 local: Shanghai UTC+8 → 04:00Z; Tokyo UTC+9 → 03:00Z; Berlin in November (CET, UTC+1) → 11:00Z
    noon_utc = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert stored(fresh_db, "DAU-WET") == [(noon_utc - timedelta(hours=8), False)]
    assert stored(fresh_db, "DAU-TYO") == [(noon_utc - timedelta(hours=9), True)]
    assert stored(fresh_db, "DAU-SHA") == [(noon_utc - timedelta(hours=8), True)]
    assert stored(fresh_db, "DAU-BER") == [(noon_utc - timedelta(hours=1), True)]
    assert stored(fresh_db, "DAU-BAD") == [(noon_utc - timedelta(hours=8), True)]  # the defaults


async def test_the_listener_judges_a_frame_in_the_time_zone_of_its_dau(
        fresh_db: str, mqtt_server: MosquittoServer) -> None:
    """A unit in Tokyo sends noon at 03:00Z — its current time. Read as Shanghai time that is 04:00Z, an hour
    ahead of the receive clock (5 minutes allowed), and it was answered 9011 QnRtn=2 (rejected) and dead-lettered.
    Now it is judged in its own zone; the same frame from a Shanghai unit is still an hour ahead."""
    register_dau(fresh_db, "DAU-TYO", metadata={"timezone": "Asia/Tokyo"})
    register_dau(fresh_db, "DAU-SHA")
    tokyo_noon = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    async with running(mqtt_server, db_url=fresh_db, clock=lambda: tokyo_noon) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        assert (await read_reply_to(reader, writer, noon_frame("20261128120000001", "DAU-TYO"))).cn == "9014"
        ahead = await read_reply_to(reader, writer, noon_frame("20261128120000002", "DAU-SHA"))
        assert (ahead.cn, ahead.cp.other) == ("9011", {"QnRtn": "2"})
        writer.close()

@pytest.mark.clock
async def test_a_changed_time_zone_applies_without_restarting(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Any]) -> None:
    """A unit registered without a time zone is found to run on Tokyo time: setting ``metadata.timezone`` must
    apply to its next frames (registry NOTIFY), not after a restart of the listener and the collectors. Full
    reloads are an hour apart here, so only the notification can explain the change."""
    register_dau(fresh_db, "DAU-CHG")
    collector = make_collector(fresh_db, mqtt_server.url, city=CITY, registry_refresh_s=HOUR_S)
    registry = DeviceRegistry(fresh_db, refresh_s=HOUR_S)
    async with running(mqtt_server, registry=registry, clock=lambda: SETTINGS_CLOCK) as listener:
        assert collector.registry is not None
        assert await asyncio.to_thread(collector.registry.wait_listening, 15)
        assert await asyncio.to_thread(registry.wait_listening, 15)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        assert (await read_reply_to(reader, writer, noon_frame("20261128120000000", "DAU-CHG"))).cn == "9014"
        assert await asyncio.to_thread(wait_for, lambda: len(stored(fresh_db, "DAU-CHG")) == 1, 15)
        assert stored(fresh_db, "DAU-CHG") == [(datetime(2026, 11, 28, 4, 0, tzinfo=UTC), True)]  # Shanghai
        with psycopg.connect(fresh_db) as conn:
            conn.execute("""UPDATE devices SET metadata = '{"timezone": "Asia/Tokyo"}' WHERE device_id = 'DAU-CHG'""")

        def tokyo_reading() -> bool:  # 12:mm Tokyo = 03:mm Z (before the change, 12:mm Shanghai = 04:mm Z)
            return any(ts.astimezone(UTC).hour == 3 for ts, _ in stored(fresh_db, "DAU-CHG"))

        async with asyncio.timeout(30):  # each frame a minute later than the one before, until one lands as Tokyo
            for minute in range(1, 60):
                raw = noon_frame(f"202611281200000{minute:02d}", "DAU-CHG", f"2026112812{minute:02d}00")
                assert (await read_reply_to(reader, writer, raw)).cn == "9014"
                if await asyncio.to_thread(wait_for, tokyo_reading, 1.0):
                    break
        writer.close()
    assert tokyo_reading()
    assert registry.lookup(["DAU-CHG"])["DAU-CHG"].hj212.timezone == "Asia/Tokyo"


async def read_reply_to(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> hj212.Hj212Frame:
    writer.write(raw)
    await writer.drain()
    return await read_reply(reader)


def test_the_registry_reads_the_settings_with_the_entry(fresh_db: str) -> None:
    """One query gives each CEMS device its settings: its own, else its plant's time zone (a line's parent plant
    first, as the CEMS averages judge local days: a line left at the column default follows its plant), else none;
    stored values that are no settings (a string, a misspelt zone, a huge nested value) are named, never raised;
    devices of other kinds carry none."""
    deep = "[" * 3000 + '"x"' + "]" * 3000  # 6 kB of JSON 3000 deep: json.loads of it raises RecursionError
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES ('p-ber', 'plant', 'P', "
                     "'Europe/Berlin'), ('p-tyo', 'plant', 'T', 'Asia/Tokyo')")
        conn.execute("INSERT INTO sites (site_id, kind, name, parent_id) VALUES ('l-ber', 'line', 'L', 'p-ber')")
    register_dau(fresh_db, "ON-LINE", site_id="l-ber")  # the line has the column default, Asia/Shanghai
    register_dau(fresh_db, "ON-PLANT", site_id="p-tyo")
    register_dau(fresh_db, "OWN", site_id="l-ber", metadata={"timezone": "Asia/Tokyo", "gas_is_dry": False})
    register_dau(fresh_db, "NOWHERE")
    register_dau(fresh_db, "BAD", site_id="l-ber")
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE devices SET metadata = jsonb_build_object('timezone', 'Europe/Berlinn', 'gas_is_dry', "
                     "%s::jsonb) WHERE device_id = 'BAD'", (deep,))
        conn.execute("""INSERT INTO devices (device_id, kind, metadata) VALUES ('SW-1', 'sweeper',
                        '{"timezone": "nowhere", "gas_is_dry": "?"}')""")
    entries = DeviceRegistry(fresh_db).lookup(["ON-LINE", "ON-PLANT", "OWN", "NOWHERE", "BAD", "SW-1"])
    settings = {mn: (e.hj212.timezone, e.hj212.gas_is_dry, len(e.hj212.problems)) for mn, e in entries.items()}
    assert settings == {"ON-LINE": ("Europe/Berlin", None, 0), "ON-PLANT": ("Asia/Tokyo", None, 0),
                        "OWN": ("Asia/Tokyo", False, 0), "NOWHERE": (None, None, 0),
                        "BAD": ("Europe/Berlin", None, 2),  # the plant's zone, the default gas basis
                        "SW-1": (None, None, 0)}
