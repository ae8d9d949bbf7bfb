"""Device credentials on a real Mosquitto: the password file and per-account ACL sanitel generates (the attacks
on it are in tests/integration/security/test_gateways_acl.py).

Device A may publish under its own topic only; an unknown client, or a wrong password, is refused; a
device registered through the API can connect as soon as the API has rewritten the files and sent
SIGHUP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.reasoncodes import ReasonCode

from sanitel.api.app import create_app
from sanitel.api.credentials import set_service_account, sync_broker_files
from sanitel.broker_auth import BrokerAuthFiles, hash_password
from sanitel.servers import MosquittoServer
from tests.support.api_helpers import api_settings, auth, mint_key
from tests.support.mqtt_tools import wait_for

CITY = "shenzhen"


def connect(port: int, username: str | None, password: str | None, client_id: str,
            on_message: Callable[[mqtt.MQTTMessage], None] | None = None) -> tuple[mqtt.Client, ReasonCode]:
    """A started MQTT 5 client and its CONNACK reason code."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    result: dict[str, ReasonCode] = {}
    done = threading.Event()

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, props: object) -> None:
        result["rc"] = reason
        done.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = lambda c, u, msg: on_message(msg)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    return client, result["rc"]


@pytest.fixture
def broker(fresh_db: str, tmp_path: Path, make_mosquitto: Callable[..., MosquittoServer]
           ) -> Iterator[tuple[MosquittoServer, BrokerAuthFiles, dict[str, str]]]:
    """A broker whose auth files were generated from a registry holding device SW-A and the collector."""
    files = BrokerAuthFiles(tmp_path / "auth" / "passwd", tmp_path / "auth" / "acl")
    secrets = {"SW-A": "device-a-password"}
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, mqtt_username, mqtt_password_hash)"
                     " VALUES ('SW-A', 'sweeper', 'SW-A', %s)", (hash_password(secrets["SW-A"]),))

    async def prepare() -> str:
        conn = await psycopg.AsyncConnection.connect(fresh_db, autocommit=True)
        async with conn:
            password = await set_service_account(conn, "sanitel-collector", "service")
            await sync_broker_files(conn, files, CITY, force=True)
        return password

    secrets["sanitel-collector"] = asyncio.run(prepare())
    tmp_path.chmod(0o755)  # the files themselves are 0600: the broker runs as this user (as root: "user root")
    server = make_mosquitto(password_file=files.password_file, acl_file=files.acl_file)
    yield server, BrokerAuthFiles(files.password_file, files.acl_file, server.pid_file), secrets
    server.kill()


def test_device_publishes_only_under_its_own_topic(broker: tuple[MosquittoServer, BrokerAuthFiles, dict[str, str]]
                                                   ) -> None:
    server, _, secrets = broker
    received: list[str] = []
    subscriber, rc = connect(server.port, "sanitel-collector", secrets["sanitel-collector"], "collector",
                             on_message=lambda msg: received.append(msg.topic))
    assert rc == 0
    subscriber.subscribe(f"sanitation/{CITY}/#", qos=1)
    device_a, rc = connect(server.port, "SW-A", secrets["SW-A"], "SW-A")
    assert rc == 0
    acks: dict[int, ReasonCode] = {}
    device_a.on_publish = lambda c, u, mid, reason, props: acks.__setitem__(mid, reason)
    own, forged_topic = f"sanitation/{CITY}/sweeper/SW-A/telemetry", f"sanitation/{CITY}/sweeper/SW-B/telemetry"

    def own_arrives() -> bool:
        device_a.publish(own, b"{}", qos=1).wait_for_publish(2)
        return own in received

    try:
        # wait until the subscription is live: device A's own telemetry arrives
        assert wait_for(own_arrives, 10)
        received.clear()
        forged = device_a.publish(forged_topic, b"{}", qos=1)
        assert wait_for(lambda: forged.mid in acks, 10), "no PUBACK for the forged publish"
        assert acks[forged.mid].getName() == "Not authorized"  # MQTT 5 tells the device why
        # Mosquitto 2.0 may drop the connection after a denied publish; paho reconnects by itself
        assert wait_for(device_a.is_connected, 10)
        marker = device_a.publish(own, b"{}", qos=1)  # sent behind the forged message
        marker.wait_for_publish(5)
        assert wait_for(lambda: own in received, 10)
        # messages from one client are delivered in order: had the forged one passed, it came first
        assert received[0] == own and forged_topic not in received
    finally:
        for client in (subscriber, device_a):
            client.disconnect()
            client.loop_stop()


def test_unknown_clients_and_wrong_passwords_are_refused(
        broker: tuple[MosquittoServer, BrokerAuthFiles, dict[str, str]]) -> None:
    server, _, _ = broker
    for username, password in ((None, None), ("SW-A", "wrong"), ("SW-Z", "whatever")):
        client, rc = connect(server.port, username, password, f"probe-{username}")
        client.loop_stop()
        assert rc.is_failure and rc.getName() in ("Not authorized", "Bad user name or password"), rc


def test_device_registered_through_the_api_can_connect_after_reload(
        broker: tuple[MosquittoServer, BrokerAuthFiles, dict[str, str]], fresh_db: str, tmp_path: Path) -> None:
    server, files, _ = broker
    admin = auth(mint_key(fresh_db, "admin"))
    with TestClient(create_app(api_settings(fresh_db, tmp_path, mqtt_url=server.url), broker_auth=files)) as c:
        response = c.post("/devices", json={"device_id": "SW-B", "kind": "sweeper"}, headers=admin)
    assert response.status_code == 201, response.text
    creds = response.json()["credentials"]
    assert creds["broker_reloaded"] is True

    def connects() -> bool:
        client, rc = connect(server.port, "SW-B", creds["password"], "SW-B")
        client.disconnect()
        client.loop_stop()
        return rc == 0

    assert wait_for(connects, 10), "the broker did not pick up the new device after SIGHUP"
