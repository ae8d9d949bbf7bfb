"""Issue 12 items 1 and 5 at the collector: a gateway speaks only for the devices registered behind it, nothing
registers devices in bulk, and HJ 212 frames need the MN's registered password.

Through a real Mosquitto, a real collector (the deployed class, its own writer and registry) and a real
PostgreSQL; each test's docstring names the attack it shows. The broker here is anonymous: what is under test is
what the collector accepts from whoever may publish on a topic (the ACL tests are in test_gateways_acl.py)."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sanitel.ingest.collector import Collector
from sanitel.schemas.hj212 import encode_frame
from sanitel.secret_hash import hash_secret
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.support.mqtt_tools import count, publish, wait_for

CITY = "gwtest"
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed past instant: nothing here reads the clock
TS = int(DEVICE_TIME.timestamp() * 1000)
DEADLINE_S = 30.0  # for anything asynchronous; generous for a slow CI machine


def j(body: object) -> bytes:
    return json.dumps(body).encode()


def batch_topic(gateway_id: str) -> str:
    return f"sanitation/{CITY}/gateway/{gateway_id}/batch"


def deposit(device_id: str, n: int = 0) -> dict[str, Any]:
    return {"kind": "bin", "device_id": device_id, "stream": "event", "ts": TS + n, "household_id": f"h-{n}",
            "category": "kitchen", "weight_kg": 1.5}


def register(db: str, gateways: dict[str, list[str]], others: dict[str, str] | None = None) -> None:
    """Gateways with the bins behind them, and devices behind none (id → kind)."""
    with psycopg.connect(db) as conn:
        for gateway_id, bins in gateways.items():
            conn.execute("INSERT INTO gateways (gateway_id) VALUES (%s)", (gateway_id,))
            conn.execute("INSERT INTO devices (device_id, kind, gateway_id) SELECT d, 'bin', %s "
                         "FROM unnest(%s::text[]) d", (gateway_id, bins))
        for device_id, kind in (others or {}).items():
            conn.execute("INSERT INTO devices (device_id, kind) VALUES (%s, %s)", (device_id, kind))


def dead_letters(db: str) -> list[tuple[str, str, str, int | None]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT device_id, reason_code, reason, reading_index FROM dead_letters "
                            "ORDER BY reading_index NULLS LAST").fetchall()
    return [(str(d), str(code), str(reason), i) for d, code, reason, i in rows]


def sample(collector: Collector, name: str) -> float:
    return collector.metrics.registry.get_sample_value(name) or 0.0


class FrozenClock:
    """The collector's monotonic clock, moved by the test: the auto-registration limit then depends on nothing but
    the test (batches still close: a partial batch is cut once the queue stays empty for the flush time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def start_collector(scratch_dir: Path) -> Iterator[Callable[..., Collector]]:
    """Like conftest's make_collector, with the monotonic clock injected."""
    started: list[Collector] = []

    def start(db_url: str, mqtt_url: str, monotonic: Callable[[], float], **overrides: object) -> Collector:
        data_dir = Path(tempfile.mkdtemp(prefix="collector-", dir=scratch_dir))
        settings = load_settings(database_url=db_url, mqtt_url=mqtt_url, data_dir=data_dir, city=CITY,
                                 collector_metrics_port=0, collector_flush_ms=50,
                                 collector_client_id=f"gw-ingest-{len(started)}-{data_dir.name}", **overrides)
        collector = Collector(settings, serve_metrics=False, monotonic=monotonic)
        started.append(collector)
        collector.start()
        assert collector.wait_connected(DEADLINE_S), "collector did not connect to the broker"
        return collector

    yield start
    for collector in started:
        with contextlib.suppress(Exception):
            collector.stop()


def test_a_gateway_batch_lands_only_the_readings_of_its_own_devices(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: a gateway (or any client that may publish its batch topic) writes readings for devices it does
    not serve — a bin behind another gateway, a plant's CEMS unit — pre-empting their (device, ts, seq) slots and
    forging emission data, or invents ids to have them registered with the kind it chooses. Before, the collector
    took device_id and kind from each item: every reading landed and the unknown id was registered. Now only the
    readings of the devices registered behind that gateway land; each other is dead-lettered as
    not_behind_gateway, naming the device and the gateway (not where the device really is)."""
    register(fresh_db, {"gw-a": ["a-1", "a-2"], "gw-b": ["b-1"]}, {"cems-p1-l1": "cems"})
    collector = make_collector(fresh_db, mqtt_server.url, city=CITY)
    readings = [deposit("a-1", 1), deposit("b-1", 2), {"kind": "cems", "device_id": "cems-p1-l1", "ts": TS,
                "nox_mg_m3": 1.0, "nox_flag": "N"}, deposit("ghost-1", 3), deposit("a-2", 4)]
    publish(mqtt_server.port, [(batch_topic("gw-a"), j({"gateway_id": "gw-a", "readings": readings}))])

    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 3, DEADLINE_S)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM bin_deposits") == 2, DEADLINE_S)
    with psycopg.connect(fresh_db) as conn:
        stored = {r[0] for r in conn.execute("SELECT device_id FROM bin_deposits").fetchall()}
        devices = {r[0] for r in conn.execute("SELECT device_id FROM devices").fetchall()}
    assert stored == {"a-1", "a-2"}
    assert count(fresh_db, "SELECT count(*) FROM cems_readings") == 0
    assert devices == {"a-1", "a-2", "b-1", "cems-p1-l1"}  # the invented id was not registered
    letters = dead_letters(fresh_db)
    assert [(d, code, i) for d, code, _, i in letters] == [
        ("b-1", "not_behind_gateway", 1), ("cems-p1-l1", "not_behind_gateway", 2), ("ghost-1", "not_behind_gateway", 3)]
    for device, _, reason, _ in letters:
        assert f"'{device}'" in reason and "'gw-a'" in reason and "gw-b" not in reason
    assert collector.metrics.registry.get_sample_value(
        "sanitel_readings_rejected_total", {"kind": "bin", "reason": "not_behind_gateway"}) == 2


def test_a_batch_of_10000_invented_ids_creates_no_device(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer],
        make_collector: Callable[..., Collector]) -> None:
    """Attack: one gateway batch of 10,000 invented device ids. Before, it registered 10,000 devices (and 15
    minutes later raised 10,000 offline alerts). Now a gateway batch never registers a device: all 10,000 are
    not_behind_gateway, counted in the metric, stored as 100 dead letters and one summary."""
    broker = make_mosquitto(max_payload_bytes=1 << 20)  # 10,000 readings are about 750 KB
    register(fresh_db, {"gw-a": ["a-1"]})
    collector = make_collector(fresh_db, broker.url, city=CITY, max_payload_bytes=1 << 20,
                               auto_register_per_minute=100_000)
    readings = [{"kind": "bin", "device_id": f"fake-{i:05d}", "stream": "status", "ts": TS} for i in range(10_000)]
    payload = j({"readings": readings})
    publish(broker.port, [(batch_topic("gw-a"), payload)])

    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 101, DEADLINE_S)
    assert count(fresh_db, "SELECT count(*) FROM devices") == 1
    assert count(fresh_db, "SELECT count(*) FROM bin_status") == 0
    assert count(fresh_db, "SELECT count(*) FROM dead_letters WHERE reason_code = 'more_rejections' "
                           "AND strpos(reason, 'not_behind_gateway ×9900') > 0") == 1
    assert collector.metrics.registry.get_sample_value(
        "sanitel_readings_rejected_total", {"kind": "bin", "reason": "not_behind_gateway"}) == 10_000
    assert sample(collector, "sanitel_devices_auto_registered_total") == 0


def test_unknown_ids_on_device_topics_are_registered_at_most_at_the_configured_rate(
        fresh_db: str, mqtt_server: MosquittoServer, start_collector: Callable[..., Collector]) -> None:
    """Attack: a client that may publish device topics sends readings under 40 invented ids, each registered as a
    device (and later an offline alert each). Before, all 40 were registered. Now at most
    auto_register_per_minute (3 here) are registered per collector and minute; the readings of the others are
    dead-lettered as auto_register_limited and counted in sanitel_auto_register_refused_total. Once the clock
    has moved a minute on, three more may register."""
    clock = FrozenClock()
    collector = start_collector(fresh_db, mqtt_server.url, clock, auto_register_per_minute=3)
    messages = [(f"sanitation/{CITY}/sweeper/inv-{i:02d}/telemetry", j({"ts": TS, "seq": i, "soc_pct": 50}))
                for i in range(40)]
    publish(mqtt_server.port, messages)

    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 37, DEADLINE_S)
    assert count(fresh_db, "SELECT count(*) FROM devices") == 3
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 3
    assert count(fresh_db, "SELECT count(DISTINCT reason_code) FROM dead_letters "
                           "WHERE reason_code = 'auto_register_limited'") == 1
    assert sample(collector, "sanitel_devices_auto_registered_total") == 3
    assert sample(collector, "sanitel_auto_register_refused_total") == 37

    clock.now += 60  # a minute later: three more
    publish(mqtt_server.port, [(f"sanitation/{CITY}/sweeper/late-{i}/telemetry", j({"ts": TS, "soc_pct": 5}))
                               for i in range(5)])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 39, DEADLINE_S)
    assert count(fresh_db, "SELECT count(*) FROM devices") == 6
    assert sample(collector, "sanitel_devices_auto_registered_total") == 6


@pytest.mark.clock
def test_hj212_frames_of_an_mn_without_a_registered_password_are_refused(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: whoever can get a frame onto the HJ 212 topic (the listener accepts any TCP peer) writes emission
    readings for a plant's MN that has no password registered, or for an MN invented on the spot (registered on
    sight before). Before, a frame was checked only when a password was on record. Now, with
    hj212_require_password on (the default), both are dead-lettered as hj212_no_password, the invented MN is not
    registered, and the MN with a password still needs the right one."""
    register(fresh_db, {}, {"MN-NOPW": "cems"})
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash) VALUES ('MN-OK', 'cems', %s)",
                     (hash_secret("right-pw"),))
    make_collector(fresh_db, mqtt_server.url, city=CITY, hj212_require_password=True)
    cp = "DataTime=20260310080000;a21002-Rtd=120.5,a21002-Flag=N"  # 08:00 in Shanghai: DEVICE_TIME
    sent = [("MN-NOPW", "any"), ("MN-GHOST", "any"), ("MN-OK", "wrong-pw"), ("MN-OK", "right-pw")]
    publish(mqtt_server.port, [(f"sanitation/{CITY}/cems/{mn}/hj212", encode_frame("31", "2011", mn, pw, cp))
                               for mn, pw in sent])

    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 3, DEADLINE_S)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM cems_readings") == 1, DEADLINE_S)
    reasons = {d: (code, reason) for d, code, reason, _ in dead_letters(fresh_db)}
    assert {d: code for d, (code, _) in reasons.items()} == {
        "MN-NOPW": "hj212_no_password", "MN-GHOST": "hj212_no_password", "MN-OK": "hj212_wrong_password"}
    assert "wrong-pw" not in reasons["MN-OK"][1] and "scrypt" not in reasons["MN-OK"][1]  # nothing echoed
    assert count(fresh_db, "SELECT count(*) FROM devices WHERE device_id = 'MN-GHOST'") == 0
    assert count(fresh_db, "SELECT count(*) FROM cems_readings WHERE device_id = 'MN-OK'") == 1
