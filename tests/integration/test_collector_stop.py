"""A collector stopped in the middle of a backlog leaves with the broker exactly what it had not committed.

It acknowledges each batch once committed, and before it disconnects it waits until the broker has read those
acknowledgements (``BufferedClient.wait_acks_read``; its own unit test shows the wait). A committed message
delivered again would be stored once all the same, but drained twice."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sanitel.ingest.collector import Collector
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.integration.test_collector_faults import register_fleet, rows, sweeper_messages
from tests.support.mqtt_tools import publish, wait_for

N = 100_000
QUIET_S = 3.0  # no message for this long: the session holds nothing more


def stored_seqs(db_url: str) -> set[int]:
    with psycopg.connect(db_url) as conn:
        return {seq for (seq,) in conn.execute("SELECT seq FROM sweeper_telemetry")}


def left_with_the_broker(port: int, client_id: str) -> list[int]:
    """The readings the broker still holds for the session: taken (and acknowledged) on that same session."""
    seqs: list[int] = []
    last = [time.monotonic()]
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with lock:
            seqs.append(json.loads(message.payload)["seq"])
            last[0] = time.monotonic()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=session)
    client.loop_start()
    try:
        assert wait_for(lambda: time.monotonic() - last[0] > QUIET_S, 120, interval=0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return list(seqs)


def test_a_collector_stopped_mid_backlog_leaves_the_broker_only_what_it_had_not_committed(
        fresh_db: str, make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> None:
    register_fleet(fresh_db)
    mq = make_mosquitto()
    settings = load_settings(database_url=fresh_db, mqtt_url=mq.url, collector_metrics_port=0,
                             data_dir=Path(tempfile.mkdtemp(prefix="stop-", dir=scratch_dir)),
                             collector_client_id="stopped-mid-backlog")
    first = Collector(settings)  # the session and its subscription: the backlog queues for it
    first.start()
    assert first.wait_connected(10)
    first.stop()
    for start in range(0, N, 50_000):  # (the helper's client queues at most 65,535 at once)
        publish(mq.port, sweeper_messages(50_000, start_seq=start))

    collector = Collector(settings)
    collector.start()
    assert wait_for(lambda: rows(fresh_db) >= N // 5, 120, interval=0.02)
    collector.stop()  # the broker is still sending: what the collector had taken is committed and acknowledged

    committed = stored_seqs(fresh_db)
    again = left_with_the_broker(mq.port, settings.collector_client_id)
    assert len(committed) < N, "the whole backlog was drained before the stop: nothing was tested"
    assert committed.isdisjoint(again), f"{len(committed & set(again))} committed messages were delivered again"
    assert committed | set(again) == set(range(N))  # and nothing was lost
