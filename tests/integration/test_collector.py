"""The collector against the real private broker and database: every valid reading lands exactly once,
bad input goes to dead letters with its raw bytes, and nothing stops the collector."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer, free_port
from sanitel.settings import load_settings
from tests.support.mqtt_tools import count, publish, start_collector_process, wait_for

CITY = "shenzhen"


# Device time of the readings: a fixed instant in the past (midnight UTC, 08:00 in Shanghai). The collector
# refuses only device times ahead of its own clock, so no test here depends on when it runs.
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)
FAR_FUTURE = "2100-01-01T00:00:00Z"  # ahead of any receive time: a device clock gone wrong


def device_ms(offset_s: float = 0) -> int:
    """Epoch milliseconds ``offset_s`` seconds from DEVICE_TIME."""
    return int((DEVICE_TIME.timestamp() + offset_s) * 1000)


def topic(kind: str, device: str, stream: str = "telemetry") -> str:
    return f"sanitation/{CITY}/{kind}/{device}/{stream}"


def j(body: object) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.clock
def test_every_reading_kind_lands_with_device_time_receive_time_and_extra(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    make_collector(fresh_db, mqtt_server.url)
    ts = device_ms(-60)
    messages = [
        (topic("sweeper", "sw-1"), j({"ts": ts, "seq": 1, "soc_pct": 81.5, "work_mode": "sweep", "fw": "2.1"})),
        (topic("transfer_station", "ts-1"), j({"ts": ts, "seq": 1, "h2s_mg_m3": 0.02, "noise_dba": 58})),
        (topic("bin", "bin-1-k", "event"), j({"ts": ts, "household_id": "h-77", "category": "kitchen",
                                              "weight_kg": 1.3})),
        (topic("bin", "bin-1-k", "status"), j({"ts": ts, "fill_level_pct": 103.0})),
        (topic("camera", "cam-1", "event"), j({"ts": ts, "detection": "mis_sorted", "confidence": 0.91})),
        (topic("cems", "cems-p1-l1"), j({"ts": ts, "nox_mg_m3": 120.0, "nox_flag": "N", "o2_pct": 8.5})),
        (topic("truck", "tr-1"), j({"ts": ts, "load_kg": 3200.0, "shift_state": "collecting"})),
        (topic("truck", "tr-1", "event"), j({"ts": ts, "event": "pickup", "point_id": "sp-1", "weight_kg": 42.0})),
        (topic("transfer_station", "ts-1", "event"), j({"ts": ts, "ticket_id": "T-1", "truck_id": "tr-1",
                                                        "gross_kg": 12_000, "tare_kg": 9_000, "net_kg": 3_000})),
    ]
    publish(mqtt_server.port, messages)
    tables = ["sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
              "cems_readings", "truck_telemetry", "truck_events", "weighbridge_tickets"]
    assert wait_for(lambda: all(count(fresh_db, f"SELECT count(*) FROM {t}") == 1 for t in tables), 15)
    with psycopg.connect(fresh_db) as conn:
        ts_db, received, extra = one_row(conn.execute("SELECT ts, received_at, extra FROM sweeper_telemetry"))
        fill, fill_extra = one_row(conn.execute("SELECT fill_level_pct, extra FROM bin_status"))
        seen: dict[str, datetime] = dict(conn.execute("SELECT device_id, last_ts FROM device_last_seen").fetchall())
        kinds: dict[str, str] = dict(conn.execute("SELECT device_id, kind FROM devices").fetchall())
    assert ts_db == datetime.fromtimestamp(ts / 1000, UTC)
    assert received > ts_db  # receive time is kept beside device time
    assert extra == {"fw": "2.1"}
    assert fill == 100.0 and fill_extra == {"raw_fill_level_pct": 103.0}  # clamped, raw kept
    assert set(seen) == {"sw-1", "ts-1", "bin-1-k", "cam-1", "cems-p1-l1", "tr-1"}
    assert kinds["cems-p1-l1"] == "cems" and kinds["bin-1-k"] == "bin" and kinds["tr-1"] == "truck"


BAD_MESSAGES: list[tuple[str, bytes, str]] = [
    (topic("sweeper", "sw-bad"), b"{not json", "invalid_json"),
    (topic("sweeper", "sw-bad"), b"\xff\xfe\x00garbage", "not_utf8"),
    (topic("sweeper", "sw-bad"), b'"a string"', "wrong_shape"),
    (topic("sweeper", "sw-bad"), b'{"ts": 1763798400000, "soc_pct": "high"}', "wrong_type"),
    (topic("sweeper", "sw-bad"), b'{"ts": 1763798400000, "soc_pct": NaN}', "invalid_json"),
    (topic("sweeper", "sw-bad"), b'{"ts": 1763798400000, "soc_pct": 140}', "out_of_range"),
    (topic("bin", "bin-bad", "event"),
     b'{"ts": 1763798400000, "household_id": "h", "category": "other", "weight_kg": -2}', "out_of_range"),
    (topic("cems", "cems-bad"), b'{"ts": 1763798400000, "o2_pct": 23}', "out_of_range"),
    ("sanitation/shenzhen/spaceship/x-1/telemetry", b'{"ts": 1763798400000}', "unknown_kind"),
    (topic("sweeper", "sw-bad"), b'{"ts": 1763798400000, "device_id": "sw-other"}', "device_mismatch"),
    (topic("sweeper", "sw-bad"), j({"ts": FAR_FUTURE}), "ts_in_future"),
    (topic("sweeper", "sw-bad"), b'{"ts": "1999-01-01T00:00:00Z"}', "ts_too_old"),
    (topic("sweeper", "sw-bad"), j({"ts": device_ms(), "pad": "x" * (256 * 1024)}), "payload_too_large"),
]


@pytest.mark.clock
def test_bad_input_goes_to_dead_letters_and_the_collector_keeps_going(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    collector = make_collector(fresh_db, mqtt_server.url)
    good = [(topic("sweeper", f"sw-{i}"), j({"ts": device_ms(-10), "seq": i, "soc_pct": 50})) for i in range(20)]
    interleaved = [m for pair in zip(good, [(t, p) for t, p, _ in BAD_MESSAGES], strict=False) for m in pair]
    interleaved += good[len(BAD_MESSAGES):]
    publish(mqtt_server.port, interleaved)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == len(BAD_MESSAGES), 15)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == len(good), 15)
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute("SELECT d.topic, p.payload, d.reason_code, d.reason, d.received_at FROM dead_letters d "
                              "JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256").fetchall()
    by_payload = {bytes(p): (t, code, reason, at) for t, p, code, reason, at in stored}
    for bad_topic, payload, code in BAD_MESSAGES:
        t, stored_code, reason, at = by_payload[payload[:64 * 1024]]  # raw bytes kept exactly (64 KiB at most)
        assert (t, stored_code) == (bad_topic, code)
        assert reason and at is not None
    rejected: Counter[str] = Counter()
    for metric in collector.metrics.registry.collect():
        if metric.name == "sanitel_readings_rejected":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    rejected[sample.labels["reason"]] += int(sample.value)
    assert sum(rejected.values()) == len(BAD_MESSAGES) and rejected["out_of_range"] == 3


def test_a_batch_with_one_bad_reading_lands_the_good_ones_and_dead_letters_the_bad_with_its_index(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    with psycopg.connect(fresh_db) as conn:  # a gateway batch is accepted only for the devices behind it
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-9')")
        conn.execute("INSERT INTO devices (device_id, kind, gateway_id) "
                     "SELECT 'bin-' || i || '-k', 'bin', 'gw-9' FROM generate_series(0, 5) i")
    make_collector(fresh_db, mqtt_server.url)
    ts = device_ms(-30)
    batch = {"gateway_id": "gw-9", "readings": [
        {"kind": "bin", "device_id": f"bin-{i}-k", "stream": "event", "ts": ts, "household_id": f"h{i}",
         "category": "kitchen", "weight_kg": -1 if i == 3 else 1.0 + i} for i in range(6)]}
    publish(mqtt_server.port, [("sanitation/shenzhen/gateway/gw-9/batch", j(batch))])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 1, 15)
    assert count(fresh_db, "SELECT count(*) FROM bin_deposits") == 5
    assert count(fresh_db, "SELECT reading_index FROM dead_letters WHERE device_id = 'bin-3-k'") == 3


def test_redelivery_never_creates_a_second_row_or_dead_letter(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    make_collector(fresh_db, mqtt_server.url)
    reading = (topic("sweeper", "sw-dup"), j({"ts": device_ms(-5), "seq": 42, "soc_pct": 60}))
    bad = (topic("sweeper", "sw-dup"), b"{broken")
    publish(mqtt_server.port, [reading, bad, reading, bad, reading])
    time.sleep(1.0)
    publish(mqtt_server.port, [reading, bad])  # in a later batch, too
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") >= 1, 10)
    time.sleep(0.5)
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1
    assert count(fresh_db, "SELECT count(*) FROM dead_letters") == 1


def test_a_backlog_many_receive_windows_deep_drains_every_reading_once_and_acknowledges_every_message(
        fresh_db: str, mqtt_server: MosquittoServer, scratch_dir: Path) -> None:
    # Receive Maximum 100 (the queue bound) and batches of 40: the backlog is 30 windows deep, so the broker can
    # only send more as acknowledgements come back, and a batch commits while the next is decoded (issue 16)
    settings = load_settings(database_url=fresh_db, mqtt_url=mqtt_server.url, data_dir=scratch_dir / "deep",
                             collector_metrics_port=0, collector_flush_ms=50, collector_client_id="deep-backlog",
                             collector_queue_max=100, collector_batch_size=40)

    def run() -> Collector:
        collector = Collector(settings)
        collector.start()
        assert collector.wait_connected(10), "collector did not connect to the broker"
        return collector

    def received(collector: Collector) -> float:
        return collector.metrics.registry.get_sample_value("sanitel_messages_received_total", {"kind": "sweeper"}) or 0

    run().stop()  # the persistent session exists: the broker queues for it while no collector runs
    n = 3000
    publish(mqtt_server.port, [(topic("sweeper", f"sw-deep-{i % 30}"), j({"ts": device_ms(-i), "seq": i}))
                               for i in range(n)])
    collector = run()
    try:
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == n, 120)
    finally:
        collector.stop()
    assert received(collector) == n  # none delivered twice
    assert count(fresh_db, "SELECT count(DISTINCT (device_id, seq)) FROM sweeper_telemetry") == n
    # every message was acknowledged: a new run of the session gets only what is published after it
    collector = run()
    try:
        publish(mqtt_server.port, [(topic("sweeper", "sw-deep-last"), j({"ts": device_ms(), "seq": n}))])
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry WHERE device_id = "
                                                "'sw-deep-last'") == 1, 30)
    finally:
        collector.stop()
    assert received(collector) == 1


def test_unknown_device_is_dead_lettered_when_auto_registration_is_off(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('sw-known', 'sweeper')")
    make_collector(fresh_db, mqtt_server.url, auto_register_devices=False)
    publish(mqtt_server.port, [(topic("sweeper", "sw-known"), j({"ts": device_ms(-1), "soc_pct": 10})),
                               (topic("sweeper", "sw-stranger"), j({"ts": device_ms(-1), "soc_pct": 10})),
                               (topic("bin", "sw-known", "status"), j({"ts": device_ms(-1), "fill_level_pct": 10}))])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 2, 15)
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1
    with psycopg.connect(fresh_db) as conn:
        reasons: dict[str, str] = dict(conn.execute("SELECT device_id, reason_code FROM dead_letters").fetchall())
        assert one_row(conn.execute("SELECT count(*) FROM devices"))[0] == 1
    assert reasons == {"sw-stranger": "unknown_device", "sw-known": "kind_mismatch"}


def scrape(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return ""


def test_sigterm_flushes_acks_and_exits_zero_and_a_restart_takes_the_rest(
        fresh_db: str, mqtt_server: MosquittoServer, scratch_dir: Path) -> None:
    def run_collector() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        # a flush interval and batch size never reached: only the stop can write what was taken
        proc = start_collector_process(fresh_db, mqtt_server.url, scratch_dir / "sigterm", client_id="sigterm-test",
                                       metrics_port=port, extra_env={"SANITEL_COLLECTOR_FLUSH_MS": "60000",
                                                                     "SANITEL_COLLECTOR_BATCH_SIZE": "100000"})
        assert wait_for(lambda: "sanitel_broker_connected 1.0" in scrape(port), 20)
        return proc, port

    proc, port = run_collector()
    try:
        publish(mqtt_server.port, [(topic("sweeper", "sw-t"), j({"ts": device_ms(-1), "seq": i})) for i in range(500)])
        time.sleep(1.0)
        assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 0  # nothing flushed yet
        assert "sanitel_write_latency_seconds_bucket" in scrape(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    flushed_on_stop = count(fresh_db, "SELECT count(*) FROM sweeper_telemetry")
    assert flushed_on_stop > 0
    # whatever was still with the broker was not acknowledged: the next run takes it, exactly once
    proc, _ = run_collector()
    try:
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 500, 5) or \
            flushed_on_stop == 500
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 500


@pytest.mark.clock
def test_hj212_frames_land_and_a_wrong_password_is_dead_lettered(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    from sanitel.schemas.hj212 import encode_frame
    from sanitel.secret_hash import hash_secret

    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash) VALUES ('MN4403001', 'cems', %s)",
                     (hash_secret("123456"),))
    make_collector(fresh_db, mqtt_server.url)
    # HJ 212 DataTime is the plant's local time (Asia/Shanghai by default)
    local_cn = DEVICE_TIME.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d%H%M%S")
    assert local_cn == "20260310080000"
    cp = f"DataTime={local_cn};a21002-Rtd=120.5,a21002-ZsRtd=150.2,a21002-Flag=N;a19001-Rtd=8.1,a19001-Flag=N"
    good = encode_frame("31", "2011", "MN4403001", "123456", cp)
    wrong = encode_frame("31", "2011", "MN4403001", "000000", cp.replace("120.5", "121.5"))
    hj_topic = "sanitation/shenzhen/cems/MN4403001/hj212"
    publish(mqtt_server.port, [(hj_topic, good), (hj_topic, wrong)])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM dead_letters") == 1, 15)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM cems_readings") == 1, 5)
    with psycopg.connect(fresh_db) as conn:
        ts, nox, zs, source = one_row(conn.execute("SELECT ts, nox_mg_m3, nox_zs_mg_m3, source FROM cems_readings"))
        code = one_row(conn.execute("SELECT reason_code FROM dead_letters"))[0]
    assert ts == DEVICE_TIME  # 08:00 in Shanghai is midnight UTC
    assert (round(nox, 1), round(zs, 1), source) == (120.5, 150.2, "hj212")
    assert code == "hj212_wrong_password"


def test_mqtt5_properties_on_a_publish_are_skipped_and_the_payload_lands_intact(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    make_collector(fresh_db, mqtt_server.url)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.MessageExpiryInterval = 3600
    props.UserProperty = [("gateway", "gw-7"), ("firmware", "x" * 300)]  # > 127 bytes: a 2-byte length
    body = {"ts": device_ms(-1), "seq": 9, "soc_pct": 66.5, "note": "é" * 200}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mqtt_server.port)
    client.loop_start()
    try:
        client.publish(topic("sweeper", "sw-props"), j(body), qos=1, properties=props).wait_for_publish(10)
        client.publish(topic("sweeper", "sw-props"), j({**body, "seq": 10}), qos=0).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 2, 15)
    with psycopg.connect(fresh_db) as conn:
        soc, extra = one_row(conn.execute("SELECT soc_pct, extra FROM sweeper_telemetry WHERE seq = 9"))
    assert soc == 66.5 and extra == {"note": "é" * 200}
    assert count(fresh_db, "SELECT count(*) FROM dead_letters") == 0
