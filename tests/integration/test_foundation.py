"""The ground everything stands on: servers come up from nothing, migrations, hypertables, broker."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from sanitel.db import HYPERTABLES, apply_migrations, load_migrations, one_row, timescaledb_info
from sanitel.errors import SanitelError
from sanitel.servers import MosquittoServer, PostgresServer, free_port, port_in_use


def test_migrations_apply_twice(fresh_db: str) -> None:
    # fresh_db is already migrated; a second and third run must change nothing
    assert apply_migrations(fresh_db) == []
    assert apply_migrations(fresh_db) == []
    with psycopg.connect(fresh_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in load_migrations()]


def test_every_reading_table_is_a_hypertable(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute(
            "SELECT hypertable_name, column_name FROM timescaledb_information.dimensions"
        ).fetchall()
        info = timescaledb_info(conn)
    assert {name for name, col in rows if col == "ts"} >= set(HYPERTABLES)
    assert info["license"] == "apache"
    assert info["version"].startswith("2.")


def test_stack_comes_up_from_nothing_and_down_leaves_no_process(scratch_dir: Path) -> None:
    pg = PostgresServer(scratch_dir / "fromnothing-pg", free_port(), fsync=False)
    mq = MosquittoServer(scratch_dir / "fromnothing-mqtt", free_port())
    pg.start()
    mq.start()
    try:
        assert apply_migrations(pg.url)  # everything applied on a brand-new cluster
        assert port_in_use(pg.port) and port_in_use(mq.port)
    finally:
        pg.stop()
        mq.stop()
    assert not pg.running() and not mq.running()
    assert not port_in_use(pg.port) and not port_in_use(mq.port)
    # a restart keeps the data
    pg.start()
    try:
        with psycopg.connect(pg.url) as conn:
            assert one_row(conn.execute("SELECT count(*) FROM schema_migrations"))[0] == len(load_migrations())
    finally:
        pg.stop()


def test_message_published_to_private_broker_is_received(mqtt_server: MosquittoServer) -> None:
    got = threading.Event()
    received: list[bytes] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append(bytes(msg.payload))  # a received payload is bytes: bytes() returns it as is
        got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.subscribe("sanitation/test/#", qos=1)
    sub.loop_start()
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
        pub.connect("127.0.0.1", mqtt_server.port)
        pub.loop_start()
        # retry until the subscription is active
        for _ in range(50):
            pub.publish("sanitation/test/x", b"hello", qos=1).wait_for_publish(2)
            if got.wait(0.1):
                break
        pub.loop_stop()
        pub.disconnect()
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert received and received[0] == b"hello"


def test_port_in_use_is_a_clear_error(scratch_dir: Path, mqtt_server: MosquittoServer) -> None:
    clash = MosquittoServer(scratch_dir / "clash", mqtt_server.port)
    with pytest.raises(SanitelError, match=rf"port {mqtt_server.port} is already in use.*SANITEL_MQTT_PORT"):
        clash.start()
