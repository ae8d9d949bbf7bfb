"""Notifications: MQTT to a real subscriber on the private broker, webhooks with retry and backoff against a
local HTTP server, a dead webhook blocking nothing, the live stream, and the service as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedReader
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import psycopg
import pytest

from sanitel.alerts.notify.mqtt import MqttSink, deliver_pending
from sanitel.alerts.notify.outbox import upsert_webhook
from sanitel.alerts.notify.webhook import HttpLimits, RetryPolicy, WebhookDispatcher
from sanitel.api.stream import AlertBroadcaster, StreamEvent
from sanitel.db import one_row
from sanitel.heartbeats import record_pass
from sanitel.servers import MosquittoServer, free_port
from tests.support.alerts_db import add_device, alerts, at, insert, ruleset, run
from tests.support.db_clock import database_now
from tests.support.mqtt_tools import wait_for

CITY = "testcity"
FIRE = {"id": "t.bin_fire", "kind": "threshold", "summary": "{device_id} fire", "severity": "critical",
        "source": "bin_status", "field": "fire_alarm", "op": "==", "threshold": True}


class Subscriber:
    """A real MQTT client subscribed to the alert topics at QoS 1."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any], int]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{free_port()}")
        ready = threading.Event()
        self.client.on_subscribe = lambda *a, **k: ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload), m.qos))
        self.client.on_connect = lambda c, u, f, r, p=None: c.subscribe(f"sanitation/{CITY}/alerts/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mqtt_server: MosquittoServer) -> Iterator[Subscriber]:
    sub = Subscriber(mqtt_server.port)
    yield sub
    sub.close()


@pytest.fixture
def sink(mqtt_server: MosquittoServer) -> Iterator[MqttSink]:
    s = MqttSink(mqtt_server.url, CITY, client_id=f"evaluator-{free_port()}")
    assert s.wait_connected(10)
    yield s
    s.close()


def _fire(url: str, minutes: list[float], alarm: bool = True, device: str = "bin-1") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM devices WHERE device_id = %s", (device,)).fetchone():
            add_device(conn, device, "bin")
        insert(conn, "bin_status", device, [{"ts": at(m), "fire_alarm": alarm, "seq": int(m * 10)} for m in minutes])


def test_mqtt_notification_reaches_a_real_subscriber(fresh_db: str, subscriber: Subscriber, sink: MqttSink) -> None:
    rules = ruleset(FIRE)
    _fire(fresh_db, [0])
    run(fresh_db, rules)
    with psycopg.connect(fresh_db) as conn:
        assert deliver_pending(conn, sink) == (1, 0)
        assert deliver_pending(conn, sink) == (0, 0)  # marked published: never sent twice
    assert wait_for(lambda: len(subscriber.messages) == 1, 10)
    topic, payload, qos = subscriber.messages[0]
    assert topic == f"sanitation/{CITY}/alerts/critical" and qos == 1
    assert payload["event"] == "firing" and payload["summary"] == "bin-1 fire" and payload["device_id"] == "bin-1"
    assert payload["alert_id"] == alerts(fresh_db)[0]["alert_id"] and payload["labels"]["rule_id"] == "t.bin_fire"
    _fire(fresh_db, [1], alarm=False)
    run(fresh_db, rules)
    with psycopg.connect(fresh_db) as conn:
        deliver_pending(conn, sink)
    assert wait_for(lambda: len(subscriber.messages) == 2, 10)
    assert subscriber.messages[1][1]["event"] == "resolved" and subscriber.messages[1][1]["resolved_at"]


def test_unreachable_broker_keeps_notifications_for_later(fresh_db: str, make_mosquitto: Any) -> None:
    broker: MosquittoServer = make_mosquitto()
    sink = MqttSink(broker.url, CITY, client_id="evaluator-outage")
    assert sink.wait_connected(10)
    broker.kill()
    assert wait_for(lambda: not sink.connected, 10)
    _fire(fresh_db, [0])
    run(fresh_db, ruleset(FIRE))
    with psycopg.connect(fresh_db) as conn:
        assert deliver_pending(conn, sink) == (0, 1)  # not published, not lost
    broker.start()
    sub = Subscriber(broker.port)
    try:
        assert sink.wait_connected(30)
        with psycopg.connect(fresh_db) as conn:
            assert deliver_pending(conn, sink) == (1, 0)
        assert wait_for(lambda: len(sub.messages) == 1, 10)
    finally:
        sub.close()
        sink.close()


# --- webhooks ----------------------------------------------------------------------------------------

class Receiver:
    """A local HTTP receiver: answers ``fail_first`` requests with 500, then 200; with ``hang``, it answers
    nothing until ``release()`` (a receiver that accepts the connection and never answers in time)."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.requests: list[tuple[float, dict[str, Any]]] = []
        self.fail_first = fail_first
        self.released = threading.Event()
        if not hang:
            self.released.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append((time.monotonic(), body))
                receiver.released.wait(30)
                failing = len(receiver.requests) <= receiver.fail_first
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def test_webhook_is_retried_with_exponential_backoff(fresh_db: str) -> None:
    receiver = Receiver(fail_first=2)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        upsert_webhook(conn, "ops", receiver.url)
    _fire(fresh_db, [0])
    _fire(fresh_db, [0], device="bin-2")
    run(fresh_db, ruleset(FIRE))
    dispatcher = WebhookDispatcher(fresh_db, policy=RetryPolicy(base_backoff_s=0.4, jitter=0.0), poll_s=0.05)
    dispatcher.start()
    try:
        assert wait_for(lambda: len(receiver.requests) >= 3, 15, 0.05)
        time.sleep(0.3)
    finally:
        dispatcher.stop()
        receiver.close()
    times = [t for t, _ in receiver.requests]
    assert len(times) == 3  # two failures, then delivered: no more
    # at least 0.4 s, then 0.8 s (no upper bound: a slow machine may wait longer; tests/unit/test_webhook_retry.py
    # checks the schedule itself on a virtual clock)
    assert times[1] - times[0] >= 0.4 and times[2] - times[1] >= 0.8
    body = receiver.requests[-1][1]
    # both bins' alerts share rule and site: one grouped POST, Alertmanager-style
    assert body["status"] == "firing" and body["receiver"] == "ops" and len(body["alerts"]) == 2
    assert {a["device_id"] for a in body["alerts"]} == {"bin-1", "bin-2"}
    assert body["groupLabels"] == {"rule_id": "t.bin_fire", "site_id": ""}
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT status, attempts FROM alert_webhook_deliveries").fetchall()
    assert rows == [("delivered", 3), ("delivered", 3)]


def test_webhook_gives_up_on_a_4xx(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        upsert_webhook(conn, "gone", "http://127.0.0.1:9/nothing-listens", max_attempts=2)
    _fire(fresh_db, [0])
    run(fresh_db, ruleset(FIRE))
    dispatcher = WebhookDispatcher(fresh_db, policy=RetryPolicy(base_backoff_s=0.1, jitter=0.0),
                                   limits=HttpLimits(connect_timeout_s=1, read_timeout_s=1), poll_s=0.05)
    dispatcher.start()
    try:
        def failed() -> bool:
            with psycopg.connect(fresh_db) as conn:
                return one_row(conn.execute("SELECT status FROM alert_webhook_deliveries"))[0] == "failed"
        assert wait_for(failed, 15, 0.1)
    finally:
        dispatcher.stop()
    with psycopg.connect(fresh_db) as conn:
        attempts, error = one_row(conn.execute("SELECT attempts, last_error FROM alert_webhook_deliveries"))
    assert attempts == 2 and error  # max_attempts reached, the reason kept


def test_dead_webhook_blocks_neither_mqtt_nor_other_webhooks(fresh_db: str, subscriber: Subscriber,
                                                             sink: MqttSink) -> None:
    dead = Receiver(hang=True)  # accepts the connection, answers nothing until released
    healthy = Receiver()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        upsert_webhook(conn, "a-dead", dead.url)
        upsert_webhook(conn, "b-healthy", healthy.url)
    dispatcher = WebhookDispatcher(fresh_db, policy=RetryPolicy(base_backoff_s=5), limits=HttpLimits(read_timeout_s=6),
                                   poll_s=0.05)
    dispatcher.start()
    try:
        _fire(fresh_db, [0])
        run(fresh_db, ruleset(FIRE))
        with psycopg.connect(fresh_db) as conn:
            assert deliver_pending(conn, sink) == (1, 0)
        dispatcher.wake()
        assert wait_for(lambda: len(subscriber.messages) == 1, 5, 0.05)
        assert wait_for(lambda: len(healthy.requests) == 1, 5, 0.05)
        # neither waited for the dead receiver, which has not answered (it answers only when released) ...
        assert not dead.released.is_set()
        assert wait_for(lambda: len(dead.requests) == 1, 5, 0.05)  # ... and was tried all the same
    finally:
        dispatcher.stop()
        dead.close()
        healthy.close()


# --- live stream -------------------------------------------------------------------------------------

def test_engine_transitions_reach_the_api_alert_stream_with_their_history_id(fresh_db: str) -> None:
    async def first_notice() -> StreamEvent:
        broadcaster = AlertBroadcaster(fresh_db)
        try:
            async with broadcaster.subscribe() as subscription:  # returns once LISTEN is active
                _fire(fresh_db, [0])
                await asyncio.to_thread(run, fresh_db, ruleset(FIRE))
                return await asyncio.wait_for(subscription.queue.get(), 10)
        finally:
            await broadcaster.close()

    event = asyncio.run(first_notice())
    notice = json.loads(event.data)
    assert event.event == "alert" and notice["event"] == "firing" and notice["alert"]["device_id"] == "bin-1"
    with psycopg.connect(fresh_db) as conn:
        firing = conn.execute("SELECT id FROM alert_history WHERE to_state = 'firing'").fetchone()
    assert firing is not None and notice["history_id"] == firing[0]


# --- the service as a process --------------------------------------------------------------------------

def test_evaluator_process_notifies_serves_metrics_and_exits_on_sigterm(
        fresh_db: str, mqtt_server: MosquittoServer, subscriber: Subscriber, tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "test.yaml").write_text(json.dumps({"rules": [FIRE]}))
    (rules_dir / "incidents.yaml").write_text("rules: []\ngroup_wait: 0s\n")  # notify at once, not after 30 s
    # the evaluator process runs on the machine's clock: a reading received at the database's now is current
    # for it, and the shipped offline rule has nothing to say
    now = database_now(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "bin-1", "bin")
        insert(conn, "bin_status", "bin-1", [{"ts": now, "received_at": now, "fire_alarm": True}])
        # the collector and the scheduled processor have just passed: no stage_overdue alert about them
        record_pass(conn, "collector", "c1", interval_s=30, at=now, started_at=now)
        record_pass(conn, "processor", "p1", interval_s=60, at=now, started_at=now)
    port = free_port()
    env = {**os.environ, "SANITEL_DATABASE_URL": fresh_db, "SANITEL_MQTT_URL": mqtt_server.url,
           "SANITEL_CITY": CITY, "SANITEL_RULES_DIR": str(rules_dir), "SANITEL_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "evaluator", "--interval", "0.3",
                             "--metrics-port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # one incident for the bin's place: the shipped bin_fire is its root, the test's rule a member
        assert wait_for(lambda: any(a["rule_id"] == "t.bin_fire" for m in subscriber.messages
                                    for a in m[1].get("members", ())), 20), \
            cast(BufferedReader, proc.stdout).read1().decode() if proc.poll() is not None else "no notification"  # PIPE

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()
        # two firing: the test's rule and the shipped pack's bin_fire (loaded too) saw the same alarm
        assert wait_for(lambda: 'sanitel_alerts{severity="critical",state="firing"} 2.0' in metrics(), 10), metrics()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
