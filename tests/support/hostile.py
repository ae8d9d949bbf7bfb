"""Helpers for the black-box hostile-input tests (tests/integration/test_hostile_input.py).

Everything here talks to the system from the outside, as a device, an operator or a restart would:
a real ``sanitel collector`` process (so a crash takes down the collector, not the test run), the
broker over MQTT, the database over SQL, the published contract in ``docs/``. Nothing here imports
the collector's or the decoder's code.

The registry is set up as an operator sets up a deployment with the secure defaults (issue 12): a gateway and
the devices behind it are registered before it sends (a gateway batch is accepted only for those and never
registers a device), and every HJ 212 MN is registered with the salted hash of the PW its frames carry. Devices
publishing on their own topic are left to auto-registration, which stays well under its per-minute limit here
(each test's collector sees a few dozen device ids at most).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sanitel.secret_hash import hash_secret
from sanitel.servers import MosquittoServer, free_port
from tests.support.mqtt_tools import count, publish, start_collector_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_DIR = ROOT / "docs" / "contract"
INGEST_DOC = ROOT / "docs" / "ingest.md"

# The issue asks for "lands within 2 s". This machine is shared and slow (2 cores, other suites running), so
# every "lands" below waits up to LAND_S: a generous multiple of 2 s, an upper bound on waiting, not a speed claim.
LAND_S = 10.0
# Longest wait for the broker's answer when a stopped collector's session is checked for redelivered
# (unacknowledged) messages; the check itself ends at that answer (``session_leftovers``).
LEFTOVER_WATCH_S = 30.0
# an UNSUBSCRIBE of a filter the session never held: its UNSUBACK marks the end of the redelivered messages
_SYNC_FILTER = "sanitel-tests/leftover-sync"

# Device time of every reading: a fixed instant well in the past, so the collector's own (real) clock never
# matters (it refuses only device times ahead of its receive time).
DEVICE_TIME = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
DEVICE_MS = int(DEVICE_TIME.timestamp() * 1000)

READING_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
                  "cems_readings")


def j(body: object) -> bytes:
    """JSON as a device would send it (``ensure_ascii``: a U+0000 goes on the wire as the escape ``\\u0000``)."""
    return json.dumps(body).encode()


# --- the published contract ----------------------------------------------------------------------

def documented_reason_codes() -> set[str]:
    """The dead-letter reason codes docs/ingest.md lists (its table of ``| `code` | meaning |`` rows)."""
    return set(re.findall(r"^\|\s*`([a-z0-9_*]+)`\s*\|", INGEST_DOC.read_text(), flags=re.MULTILINE))


def is_documented(code: str, documented: set[str]) -> bool:
    return code in documented or (code.startswith("hj212_") and "hj212_*" in documented)


def schema_valid(schema_file: str, body: object) -> bool:
    """``body`` validates against the published JSON Schema ``docs/contract/<schema_file>``."""
    schema = json.loads((CONTRACT_DIR / schema_file).read_text())
    return bool(jsonschema_rs.validator_for(schema).is_valid(body))


def broker_payload_limit(server: MosquittoServer) -> int | None:
    """The smallest ``message_size_limit`` / ``max_packet_size`` in the broker's configuration (None: no limit)."""
    limits = [int(m.group(2)) for m in re.finditer(r"^\s*(message_size_limit|max_packet_size)\s+(\d+)",
                                                   server.conf_file.read_text(), flags=re.MULTILINE)]
    limits = [n for n in limits if n > 0]
    return min(limits) if limits else None


# --- the broker ----------------------------------------------------------------------------------

def _session_properties(expiry_s: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    return props


def session_leftovers(port: int, client_id: str, watch_s: float = LEFTOVER_WATCH_S,
                      expiry_s: int = 7 * 24 * 3600) -> list[tuple[str, bytes]]:
    """Topic and payload of the messages the broker still holds for a stopped collector's persistent session: reconnect
    with its client id (clean start off, session kept), note what is redelivered, acknowledge nothing, leave.
    Anything here was never acknowledged — i.e. is stuck — unless it was published after the collector stopped.

    When to stop watching: Mosquitto queues a resumed session's messages for sending right after its CONNACK, before
    it reads anything more from the client, and paho hands packets to the callbacks in the order they arrived. So
    an UNSUBSCRIBE sent at CONNACK (of a filter the session does not hold: the session is unchanged) is answered
    after every redelivered message; its UNSUBACK ends the watch — exact, and no fixed sleep."""
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    answered = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append((msg.topic, bytes(msg.payload)))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=True)
    client.on_message = on_message
    client.on_connect = lambda c, _u, _f, _r, _p: c.unsubscribe(_SYNC_FILTER)
    client.on_unsubscribe = lambda _c, _u, _m, _r, _p: answered.set()
    client.connect("127.0.0.1", port, clean_start=False, properties=_session_properties(expiry_s))
    client.loop_start()
    try:
        assert answered.wait(watch_s), f"the broker did not answer an UNSUBSCRIBE within {watch_s} s"
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return list(got)


def publish_oversized(port: int, topic: str, payload: bytes, timeout: float = 10.0) -> str:
    """Publish one message at QoS 1 on a connection of its own; return ``"acknowledged"`` when the broker sent a
    successful PUBACK, else a description of how it refused (failure reason code, dropped connection, no PUBACK)."""
    outcome: dict[str, str] = {}
    done = threading.Event()

    def on_publish(client: mqtt.Client, userdata: object, mid: int, reason: mqtt.ReasonCode,
                   properties: Properties | None) -> None:
        outcome["puback"] = "acknowledged" if not reason.is_failure else f"PUBACK with failure reason {reason}"
        done.set()

    def on_disconnect(client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags, reason: mqtt.ReasonCode,
                      properties: Properties | None) -> None:
        outcome.setdefault("disconnect", f"connection closed by the broker ({reason})")
        done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return f"refused by the client library ({mqtt.error_string(info.rc)})"
        done.wait(timeout)
    finally:
        client.loop_stop()  # before disconnect: no automatic reconnect resends the message
        client.disconnect()
    if "puback" in outcome:
        return outcome["puback"]
    return outcome.get("disconnect", f"no PUBACK within {timeout} s")


# --- the collector, as a process -----------------------------------------------------------------

def scrape(port: int) -> str:
    try:
        body: bytes = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return ""
    return body.decode()


def metric(text: str, name: str) -> float:
    """Sum of the samples of ``name`` (any labels) in a Prometheus text page; 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class CollectorProcess:
    """``sanitel collector`` as a real process with a fixed client id (persistent session) and data dir."""

    def __init__(self, db_url: str, mqtt_url: str, data_dir: Path, client_id: str, city: str) -> None:
        self.metrics_port = free_port()
        self.data_dir = data_dir
        self.client_id = client_id
        self.proc: subprocess.Popen[bytes] = start_collector_process(
            db_url, mqtt_url, data_dir, client_id=client_id, metrics_port=self.metrics_port,
            extra_env={"SANITEL_CITY": city, "SANITEL_COLLECTOR_FLUSH_MS": "50"})

    def log_tail(self, n: int = 3000) -> str:
        path = self.data_dir / f"{self.client_id}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 30) -> None:
        ok = wait_for(lambda: not self.alive() or "sanitel_broker_connected 1.0" in scrape(self.metrics_port),
                      timeout)
        assert ok and self.alive(), (f"collector did not start (exit code {self.proc.poll()}); its log ends:\n"
                                     f"{self.log_tail()}")

    def metrics(self) -> str:
        return scrape(self.metrics_port)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.alive():
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode


# --- the database --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeadLetter:
    topic: str
    reason_code: str
    reading_index: int | None
    device_id: str | None
    reason: str


def dead_letters(db_url: str, topic: str | None = None) -> list[DeadLetter]:
    sql = "SELECT topic, reason_code, reading_index, device_id, reason FROM dead_letters"
    params: tuple[object, ...] = ()
    if topic is not None:
        sql += " WHERE topic = %s"
        params = (topic,)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(sql + " ORDER BY topic, reading_index NULLS FIRST", params).fetchall()
    return [DeadLetter(*row) for row in rows]


def table_counts(db_url: str) -> dict[str, int]:
    return {t: count(db_url, f"SELECT count(*) FROM {t}") for t in (*READING_TABLES, "dead_letters")}


def dead_letter_payload_bytes(db_url: str) -> int:
    """Bytes of every bytea column of every table whose name mentions dead letters (wherever the raw payloads
    are kept: in dead_letters itself or in a table of their own)."""
    with psycopg.connect(db_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name ILIKE '%%dead%%' AND data_type = 'bytea'").fetchall()
        total = 0
        for table, column in columns:
            row = conn.execute(f'SELECT coalesce(sum(octet_length("{column}")), 0) FROM "{table}"').fetchone()
            total += int(row[0]) if row else 0
    return total


def register_gateway(db_url: str, gateway_id: str, devices: dict[str, str]) -> None:
    """Register ``gateway_id`` with ``devices`` (id → kind) behind it (``devices.gateway_id``), as an operator
    does before the gateway's first batch."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO gateways (gateway_id) VALUES (%s)", (gateway_id,))
        conn.execute("INSERT INTO devices (device_id, kind, gateway_id) "
                     "SELECT d, k, %s FROM unnest(%s::text[], %s::text[]) AS t (d, k)",
                     (gateway_id, list(devices), list(devices.values())))


def register_hj212(db_url: str, password: str, *mns: str) -> None:
    """Register each MN as a CEMS device with the salted hash of its HJ 212 password (the PW of its frames)."""
    with psycopg.connect(db_url) as conn:
        for mn in mns:
            conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash) VALUES (%s, 'cems', %s)",
                         (mn, hash_secret(password)))


def one(db_url: str, sql: str, *params: object) -> tuple[Any, ...]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None, f"no row for {sql} {params}"
    return tuple(row)


# --- one test's world: a city of its own, a collector, valid readings to publish behind the hostile ones ---

@dataclass
class Harness:
    """A city of its own on the shared broker (earlier tests' stopped collectors, whose sessions the broker
    keeps, subscribe to other cities), one collector process with a fixed client id, and the database."""

    db_url: str
    broker: MosquittoServer
    city: str
    data_dir: Path
    client_id: str
    collector: CollectorProcess | None = None
    _seq: int = 0
    valid_devices: list[str] = field(default_factory=list)

    # topics and readings
    def topic(self, kind: str, device: str, stream: str = "telemetry") -> str:
        return f"sanitation/{self.city}/{kind}/{device}/{stream}"

    def gateway_topic(self, gateway: str) -> str:
        return f"sanitation/{self.city}/gateway/{gateway}/batch"

    def hj212_topic(self, mn: str) -> str:
        return f"sanitation/{self.city}/cems/{mn}/hj212"

    def valid(self, device: str = "ok-1") -> tuple[str, bytes]:
        """A valid sweeper reading of its own (new seq); remembered, so the restart check can count them."""
        self._seq += 1
        self.valid_devices.append(device)
        return self.topic("sweeper", device), j({"ts": DEVICE_MS + self._seq * 1000, "seq": self._seq,
                                                  "soc_pct": 55.5})

    def rows_of(self, device: str, table: str = "sweeper_telemetry") -> int:
        return count(self.db_url, f"SELECT count(*) FROM {table} WHERE device_id = %s", device)

    # the collector
    def start(self, first: bool = False) -> CollectorProcess:
        self.collector = CollectorProcess(self.db_url, self.broker.url, self.data_dir, self.client_id, self.city)
        self.collector.wait_ready()
        if first:
            self._warm_up()
        return self.collector

    def _warm_up(self) -> None:
        """On a brand-new session the broker routes nothing to the collector before its SUBACK, which the process
        does not report: publish warm-up readings until one lands (they go to a device of their own)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            publish(self.broker.port, [self.valid("warm-up")])
            if wait_for(lambda: self.rows_of("warm-up") > 0, 1.0, 0.05):
                return
        raise AssertionError(f"collector never took a reading; its log ends:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.collector.log_tail() if self.collector else "(no collector)"

    def publish(self, messages: Iterable[tuple[str, bytes]]) -> None:
        publish(self.broker.port, list(messages))

    def lands(self, device: str, n: int = 1, table: str = "sweeper_telemetry", timeout: float = LAND_S) -> bool:
        return wait_for(lambda: self.rows_of(device, table) >= n, timeout, 0.05)

    # (c): a restart finds nothing stuck
    def restart_finds_nothing_stuck(self) -> None:
        """Stop the collector; the broker must hold nothing unacknowledged for its session; a new collector with
        the same client id takes a new valid reading, and no row or dead letter appears beyond that one."""
        assert self.collector is not None
        assert self.collector.alive(), (f"the collector died (exit code {self.collector.proc.poll()}); "
                                        f"its log ends:\n{self.log_tail()}")
        before = table_counts(self.db_url)
        code = self.collector.stop()
        assert code == 0, f"collector did not stop cleanly on SIGTERM (exit {code}); log:\n{self.log_tail()}"
        stuck = session_leftovers(self.broker.port, self.client_id)
        problems = []
        if stuck:
            problems.append(f"{len(stuck)} message(s) left unacknowledged in the collector's session: "
                            f"{[topic for topic, _ in stuck[:5]]}")
        self.start()
        probe_topic, probe = self.valid("probe")
        self.publish([(probe_topic, probe)])
        if not self.lands("probe", self.valid_devices.count("probe")):
            problems.append("after the restart a new valid reading did not land: the collector is stalled")
        after = table_counts(self.db_url)
        expected = {**before, "sweeper_telemetry": before["sweeper_telemetry"] + 1}
        if after != expected:
            problems.append(f"row counts changed across the restart (redelivered or stuck messages): "
                            f"{ {k: (before[k], after[k]) for k in before if after[k] != expected[k]} }")
        code = self.collector.stop()
        if code != 0:
            problems.append(f"restarted collector did not stop cleanly (exit {code})")
        stuck = session_leftovers(self.broker.port, self.client_id)
        if stuck:
            problems.append(f"after the restart, {len(stuck)} message(s) still unacknowledged: "
                            f"{[topic for topic, _ in stuck[:5]]}")
        assert not problems, "; ".join(problems) + f"\ncollector log ends:\n{self.log_tail()}"


# --- HJ 212 over TCP: the listener as a process --------------------------------------------------

class ListenerProcess:
    """``sanitel hj212-listener`` as a real process (its crash must not be the test run's). It reads the device
    registry (the MNs' HJ 212 password hashes) from ``db_url`` and publishes the frames with ``mqtt_url``."""

    def __init__(self, db_url: str, mqtt_url: str, city: str, log_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"hj212-listener-{self.port}.log"
        env = {**os.environ, "SANITEL_DATABASE_URL": db_url, "SANITEL_MQTT_URL": mqtt_url, "SANITEL_CITY": city,
               "SANITEL_DATA_DIR": str(log_dir)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "hj212-listener", "--port", str(self.port)],
                                     env=env, stdout=log, stderr=log)
        log.close()

    def wait_ready(self, timeout: float = 30) -> None:
        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        assert wait_for(lambda: self.proc.poll() is not None or listening(), timeout) and self.proc.poll() is None, \
            f"hj212-listener did not start; log:\n{self.log_tail()}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def read_frame(sock: socket.socket, timeout: float) -> bytes | None:
    """One ``…\\r\\n`` reply from the listener, or None when none comes within ``timeout`` (or the peer closed)."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while not buf.endswith(b"\r\n"):
            chunk = sock.recv(1)
            if not chunk:
                return buf or None
            buf += chunk
    except TimeoutError:
        return buf or None
    return buf


def drop_session(port: int, client_id: str) -> None:
    """End a stopped collector's persistent session on the shared broker (clean start, expiry 0), so the broker
    stops queueing for it once its test is over."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, clean_start=True, properties=_session_properties(0))
    client.loop_start()
    time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
