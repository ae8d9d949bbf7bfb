"""The local broker's size limits (sanitel/servers.py) against a real Mosquitto and collector: a payload over
the broker's limit never reaches the collector; one under it but over the collector's own limit is dead-lettered
with its payload capped."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
import psycopg

from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.servers import BROKER_LIMIT_HEADROOM, MosquittoServer
from tests.support.mqtt_tools import count, publish, wait_for

LIMIT = 2048  # SANITEL_MAX_PAYLOAD_BYTES of both the broker and the collector here
KEEP = 1024  # SANITEL_DEAD_LETTER_PAYLOAD_BYTES
TOPIC = "sanitation/shenzhen/sweeper/sw-big/telemetry"


def padded(size: int) -> bytes:
    head = b'{"ts": 1773100800000, "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def publish_once(port: int, payload: bytes, protocol: mqtt.MQTTProtocolVersion) -> str:
    """Publish at QoS 1 and say what came back first: ``puback`` (with its reason) or ``disconnected``."""
    outcome: list[str] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)

    def on_publish(c: mqtt.Client, u: object, mid: int, reason: mqtt.ReasonCode, p: object) -> None:
        outcome.append(f"puback {reason}")
        done.set()

    def on_disconnect(c: mqtt.Client, u: object, f: object, reason: mqtt.ReasonCode, p: object) -> None:
        outcome.append("disconnected")
        done.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(TOPIC, payload, qos=1)
        assert done.wait(15), "the broker neither acknowledged the message nor disconnected the client"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]


def received(collector: Collector) -> int:
    return int(sum(s.value for m in collector.metrics.registry.collect() if m.name == "sanitel_messages_received"
                   for s in m.samples if s.name.endswith("_total")))


def test_the_broker_refuses_oversized_messages_and_the_collector_dead_letters_a_capped_one(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer],
        make_collector: Callable[..., Collector]) -> None:
    broker = make_mosquitto(max_payload_bytes=LIMIT)
    assert broker.message_size_limit == LIMIT + BROKER_LIMIT_HEADROOM
    assert f"message_size_limit {broker.message_size_limit}" in broker.conf_file.read_text()
    collector = make_collector(fresh_db, broker.url, max_payload_bytes=LIMIT, dead_letter_payload_bytes=KEEP)

    # over the collector's limit, under the broker's: it arrives and is dead-lettered, its payload capped
    near = padded(broker.message_size_limit - 100)
    publish(broker.port, [(TOPIC, near)])
    # over the broker's payload limit: acknowledged to an MQTT 3.1.1 client, then dropped (and the client
    # disconnected, as Mosquitto 2.0 does); over its packet limit: the client is disconnected, nothing is read
    assert publish_once(broker.port, padded(broker.message_size_limit + 1), mqtt.MQTTv311) in (
        "puback Success", "disconnected")
    assert publish_once(broker.port, padded(broker.max_packet_size + 1), mqtt.MQTTv5) == "disconnected"
    # a valid message published behind them lands: the collector kept going, and whatever reached it did before
    publish(broker.port, [(TOPIC, json.dumps({"ts": 1773100800000, "seq": 1, "soc_pct": 50}).encode())])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1, 15)

    assert received(collector) == 2  # the refused ones never reached it
    with psycopg.connect(fresh_db) as conn:
        code, sha, size, kept = one_row(conn.execute(
            "SELECT d.reason_code, p.sha256, p.size, p.payload FROM dead_letters d "
            "JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256"))
    assert code == "payload_too_large"
    assert (sha, size, bytes(kept)) == (hashlib.sha256(near).hexdigest(), len(near), near[:KEEP])
    assert count(fresh_db, "SELECT count(*) FROM dead_letters") == 1
