"""Small helpers for tests that talk to a real broker and database."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from sanitel.db import one_row
from sanitel.ingest.buffered_client import BufferedClient


def publish(port: int, messages: Iterable[tuple[str, bytes]], *, client_id: str = "", timeout: float = 60) -> int:
    """Publish at QoS 1 and wait for every PUBACK; returns how many were published."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "broker did not acknowledge a publish in time"
    finally:
        client.disconnect()
        client.loop_stop()
    return len(infos)


@contextlib.contextmanager
def socketpair_client(client_id: str) -> Iterator[tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]]:
    """The collector's MQTT client on one end of a socket pair (as if connected; the test is the broker at the
    other end), and the messages it delivers. No broker: for tests of what it makes of the bytes it reads."""
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                            manual_ack=True)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    received: list[mqtt.MQTTMessage] = []
    client.on_message = lambda _client, _userdata, message: received.append(message)
    try:
        yield client, broker, received
    finally:
        ours.close()
        broker.close()


class TopicRecorder:
    """Records what the broker delivers on ``topics`` (filters) at QoS 1, in arrival order."""

    def __init__(self, port: int, topics: Iterable[str], client_id: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(topic, 1) for topic in topics])
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload)))  # received payloads are bytes: kept as is

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[str, bytes]]:
        """What arrived once ``count`` messages have (or at ``timeout``), plus anything beyond the count that
        shows up within a short grace: an over-delivery fails the caller's comparison instead of hiding."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < count:
            time.sleep(0.05)
        time.sleep(0.2)
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def count(db_url: str, sql: str, *params: object) -> int:
    with psycopg.connect(db_url) as conn:
        return int(one_row(conn.execute(sql, params))[0])


def start_collector_process(db_url: str, mqtt_url: str, data_dir: Path, *, client_id: str, metrics_port: int = 0,
                            extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A real ``sanitel collector`` process (one: ``--workers 1``), for tests that kill it or measure its memory."""
    env = {**os.environ, "SANITEL_DATABASE_URL": db_url, "SANITEL_MQTT_URL": mqtt_url,
           "SANITEL_DATA_DIR": str(data_dir), "SANITEL_COLLECTOR_CLIENT_ID": client_id,
           "SANITEL_COLLECTOR_METRICS_PORT": str(metrics_port), **(extra_env or {})}
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / f"{client_id}.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "sanitel.cli", "collector", "--workers", "1"], env=env, stdout=log,
                            stderr=log)
