"""Issue 12 items 1, 2, 5 and 8 against a real Mosquitto: the password file and ACL sanitel generates from a real
registry (devices and a gateway registered through the API, service accounts per role).

Each test names the attack it shows. A publish counts as refused when the broker answers its PUBACK with a
failure reason code (MQTT 5 §3.4.2.1, 0x87 Not authorized) or drops the connection instead (Mosquitto 2.0 may
do either); that nothing refused reached a subscriber is proven with a positive control: an allowed message
sent after it arrives, and one subscriber receives one broker's messages in the order the broker took them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.reasoncodes import ReasonCode

from sanitel.api.app import create_app
from sanitel.api.credentials import set_service_account, sync_broker_files
from sanitel.broker_auth import BrokerAuthFiles, hash_password
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.secret_hash import verify_secret
from sanitel.servers import MosquittoServer
from sanitel.settings import Settings
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key
from tests.support.mqtt_tools import wait_for

CITY = "shenzhen"
SERVICES = {"svc-collector": "collector", "svc-hj212": "hj212", "svc-evaluator": "evaluator",
            "svc-probe": "api_probe"}
_payloads = itertools.count()


class Client:
    """A started MQTT 5 paho client (sanitel's own factory) that records CONNACK, PUBACKs, messages and
    disconnects."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.client = paho_client(BrokerTarget("127.0.0.1", port, username, password), client_id,
                                  protocol=mqtt.MQTTv5)
        self.connack: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnects: list[ReasonCode] = []
        self.subacks: dict[int, list[ReasonCode]] = {}
        self._connected = threading.Event()

        def on_connect(c: mqtt.Client, u: object, flags: object, reason: ReasonCode, props: object) -> None:
            self.connack = reason
            self._connected.set()

        self.client.on_connect = on_connect
        self.client.on_publish = lambda c, u, mid, reason, props: self.acks.__setitem__(mid, reason)
        self.client.on_message = lambda c, u, msg: self.messages.append(msg)
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.disconnects.append(reason)
        self.client.on_subscribe = lambda c, u, mid, reasons, props: self.subacks.__setitem__(mid, reasons)
        self.client.loop_start()
        assert self._connected.wait(10), f"no CONNACK for {username}"

    @property
    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        assert wait_for(lambda: mid in self.subacks, 10), "no SUBACK"
        return self.subacks[mid]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def connected(port: int, username: str, password: str, client_id: str | None = None) -> Iterator[Client]:
    client = Client(port, username, password, client_id or f"{username}-test")
    try:
        yield client
    finally:
        client.stop()


def publish_outcome(port: int, username: str, password: str, topic: str, *, retain: bool = False,
                    client_id: str | None = None) -> str:
    """'accepted' or 'refused' for one QoS 1 publish on a connection of its own (a refused publish may end the
    connection, and paho would resend it after reconnecting)."""
    with connected(port, username, password, client_id) as client:
        assert client.connack is not None and not client.connack.is_failure, client.connack
        info = client.client.publish(topic, f"p{next(_payloads)}".encode(), qos=1, retain=retain)
        assert wait_for(lambda: info.mid in client.acks or bool(client.disconnects), 10), f"no answer for {topic}"
        reason = client.acks.get(info.mid)
        return "accepted" if reason is not None and not reason.is_failure else "refused"


@dataclass
class Registry:
    """A registry (devices, a gateway, service accounts) and a broker that reads the files generated from it."""

    db_url: str
    server: MosquittoServer
    files: BrokerAuthFiles
    admin: dict[str, str]
    app_settings: Settings
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    def api(self) -> TestClient:
        return TestClient(create_app(self.app_settings, broker_auth=self.files))

    def can_connect(self, username: str, password: str | None = None) -> bool:
        client = Client(self.port, username, password or self.passwords[username], f"{username}-probe")
        client.stop()
        return client.connack is not None and not client.connack.is_failure

    def collector(self) -> Client:
        """The collector's account, with the collector's client id, subscribed to the whole city."""
        client = Client(self.port, "svc-collector", self.passwords["svc-collector"], "sanitel-collector-1")
        assert not client.subscribe(f"sanitation/{CITY}/#")[0].is_failure
        return client

    def prove_absent(self, subscriber: Client, refused: list[str], *, via: str, marker: str) -> None:
        """``marker`` (allowed for ``via``) is published after the refused attempts: once it has arrived, a refused
        message that had been let through would have arrived before it."""
        assert publish_outcome(self.port, via, self.passwords[via], marker) == "accepted"
        assert wait_for(lambda: marker in subscriber.topics, 10), "positive control did not arrive"
        assert not set(refused) & set(subscriber.topics), subscriber.topics


@pytest.fixture
def registry(fresh_db: str, tmp_path: Path, make_mosquitto: Callable[..., MosquittoServer]) -> Iterator[Registry]:
    files = BrokerAuthFiles(tmp_path / "auth" / "passwd", tmp_path / "auth" / "acl")

    async def services() -> dict[str, str]:
        conn = await psycopg.AsyncConnection.connect(fresh_db, autocommit=True)
        async with conn:
            made = {name: await set_service_account(conn, name, role) for name, role in SERVICES.items()}
            await sync_broker_files(conn, files, CITY, force=True)
        return made

    passwords = asyncio.run(services())
    server = make_mosquitto(password_file=files.password_file, acl_file=files.acl_file)
    reg = Registry(fresh_db, server, BrokerAuthFiles(files.password_file, files.acl_file, server.pid_file),
                   auth(mint_key(fresh_db, "admin")), api_settings(fresh_db, tmp_path, mqtt_url=server.url),
                   passwords)
    with reg.api() as api:
        for device_id, kind in (("SW-A", "sweeper"), ("SW-B", "sweeper"), ("CEMS-1", "cems"), ("BIN-1", "bin")):
            response = api.post("/devices", json={"device_id": device_id, "kind": kind}, headers=reg.admin)
            assert response.status_code == 201, response.text
            reg.passwords[device_id] = response.json()["credentials"]["password"]
        response = api.post("/gateways", json={"gateway_id": "GW-1", "devices": ["BIN-1"]}, headers=reg.admin)
        assert response.status_code == 201, response.text
        assert response.json()["credentials"]["broker_reloaded"] is True
        reg.passwords["GW-1"] = response.json()["credentials"]["password"]
    # the broker re-reads the files after SIGHUP, asynchronously: the last account registered can log in
    assert wait_for(lambda: reg.can_connect("GW-1"), 10), "the broker did not pick up the registry"
    yield reg
    server.kill()


def device_topic(kind: str, ident: str, stream: str, city: str = CITY) -> str:
    return f"sanitation/{city}/{kind}/{ident}/{stream}"


def test_device_publishes_only_its_own_kind_and_streams(registry: Registry) -> None:
    """Attack (issue 12 §1, §2): with ``pattern write sanitation/{city}/+/%u/+`` a device credential could publish
    a gateway batch under its own id (the collector takes device_id and kind from each item: readings for any
    device, CEMS emissions included), under any kind, any stream name and alerts/<its id>/…. Now device SW-A may
    write its own three streams only."""
    collector = registry.collector()
    try:
        for stream in ("telemetry", "event", "status"):
            assert publish_outcome(registry.port, "SW-A", registry.passwords["SW-A"],
                                   device_topic("sweeper", "SW-A", stream)) == "accepted", stream
        forged = [
            device_topic("sweeper", "SW-B", "telemetry"),  # another device
            device_topic("bin", "SW-A", "telemetry"),  # another kind under its own id
            device_topic("cems", "SW-A", "hj212"),  # raw HJ 212 frames: a CEMS unit's or the listener's
            device_topic("sweeper", "SW-A", "firmware"),  # a stream outside the grammar
            device_topic("gateway", "SW-A", "batch"),  # a gateway batch carrying any device's readings
            f"sanitation/{CITY}/alerts/critical",  # a forged alert notification
            f"sanitation/{CITY}/alerts/SW-A/x",
            device_topic("sweeper", "SW-A", "telemetry", city="lyon"),  # another city's tree
            "sanitation/shenzhen/sweeper/SW-A",
        ]
        outcomes = {topic: publish_outcome(registry.port, "SW-A", registry.passwords["SW-A"], topic)
                    for topic in forged}
        assert outcomes == dict.fromkeys(forged, "refused")
        registry.prove_absent(collector, forged, via="SW-A", marker=device_topic("sweeper", "SW-A", "telemetry"))
    finally:
        collector.stop()


def test_a_device_cannot_take_over_the_collector_session(registry: Registry) -> None:
    """Attack (issue 12 §2): a client connecting with the collector's client id ``sanitel-collector-1``
    disconnects the collector and takes over (or discards) its persistent session. With
    ``use_username_as_clientid`` the device's session is its own username's: the collector stays connected and
    keeps receiving."""
    collector = registry.collector()
    try:
        with connected(registry.port, "SW-A", registry.passwords["SW-A"], "sanitel-collector-1") as intruder:
            assert intruder.connack is not None and not intruder.connack.is_failure
            # a message published while the intruder is connected reaches the collector, which never dropped
            marker = device_topic("sweeper", "SW-B", "telemetry")
            assert publish_outcome(registry.port, "SW-B", registry.passwords["SW-B"], marker) == "accepted"
            assert wait_for(lambda: marker in collector.topics, 10)
            assert intruder.messages == [] and intruder.disconnects == []
        assert collector.disconnects == [] and collector.client.is_connected()
    finally:
        collector.stop()


def test_a_retained_publish_is_refused_and_never_replayed(registry: Registry) -> None:
    """Attack (issue 12 §2): a retained message stays at the broker and is replayed to every new subscriber — a
    restarted collector would store it again and again. The broker refuses retained publishes (MQTT 5:
    DISCONNECT 0x9A Retain not supported)."""
    topic = device_topic("sweeper", "SW-A", "status")
    collector = registry.collector()
    try:
        assert publish_outcome(registry.port, "SW-A", registry.passwords["SW-A"], topic, retain=True) == "refused"
        registry.prove_absent(collector, [topic], via="SW-A", marker=device_topic("sweeper", "SW-A", "event"))
    finally:
        collector.stop()
    late = registry.collector()  # a new subscription: a retained message would be delivered right away
    try:
        assert publish_outcome(registry.port, "SW-B", registry.passwords["SW-B"],
                               device_topic("sweeper", "SW-B", "event")) == "accepted"
        assert wait_for(lambda: bool(late.messages), 10)
        assert all(not m.retain and m.topic != topic for m in late.messages)
    finally:
        late.stop()


def test_a_gateway_publishes_its_own_batch_topic_only(registry: Registry) -> None:
    """Attack (issue 12 §1): a gateway credential used to publish another gateway's batches, a device's own
    topics or alerts. Now it may write sanitation/{city}/gateway/{its id}/batch and nothing else."""
    collector = registry.collector()
    password = registry.passwords["GW-1"]
    try:
        assert publish_outcome(registry.port, "GW-1", password, device_topic("gateway", "GW-1", "batch")) == "accepted"
        forged = [device_topic("gateway", "GW-2", "batch"), device_topic("bin", "BIN-1", "telemetry"),
                  device_topic("gateway", "GW-1", "telemetry"), f"sanitation/{CITY}/alerts/critical"]
        assert {t: publish_outcome(registry.port, "GW-1", password, t) for t in forged} == dict.fromkeys(forged,
                                                                                                          "refused")
        registry.prove_absent(collector, forged, via="GW-1", marker=device_topic("gateway", "GW-1", "batch"))
    finally:
        collector.stop()


def test_service_accounts_have_exactly_the_topics_they_need(registry: Registry) -> None:
    """Issue 12 §2, least privilege: the HJ 212 listener writes raw frames for any MN and nothing else, the alert
    publisher writes alerts and nothing else (it is the only one that can), the collector writes nothing, the API
    probe only connects: a SUBACK may grant it, but nothing is ever delivered to it."""
    pw = registry.passwords
    expected = {
        ("svc-hj212", device_topic("cems", "CEMS-1", "hj212")): "accepted",
        ("svc-hj212", device_topic("cems", "MN-NOT-REGISTERED", "hj212")): "accepted",
        ("svc-hj212", device_topic("cems", "CEMS-1", "telemetry")): "refused",
        ("svc-hj212", f"sanitation/{CITY}/alerts/critical"): "refused",
        ("svc-evaluator", f"sanitation/{CITY}/alerts/critical"): "accepted",
        ("svc-evaluator", device_topic("sweeper", "SW-A", "telemetry")): "refused",
        ("svc-evaluator", "sanitation/lyon/alerts/critical"): "refused",
        ("svc-collector", f"sanitation/{CITY}/alerts/critical"): "refused",
        ("svc-collector", device_topic("sweeper", "SW-A", "telemetry")): "refused",
        ("svc-probe", device_topic("sweeper", "SW-A", "telemetry")): "refused",
        ("svc-probe", f"sanitation/{CITY}/alerts/critical"): "refused",
    }
    assert {(user, topic): publish_outcome(registry.port, user, pw[user], topic) for user, topic in expected} \
        == expected
    with connected(registry.port, "svc-probe", pw["svc-probe"]) as probe:
        probe.subscribe(f"sanitation/{CITY}/#")
        collector = registry.collector()
        try:
            marker = device_topic("sweeper", "SW-A", "telemetry")
            assert publish_outcome(registry.port, "SW-A", pw["SW-A"], marker) == "accepted"
            assert wait_for(lambda: marker in collector.topics, 10)  # positive control
            assert probe.messages == []
        finally:
            collector.stop()


def test_a_colon_in_an_id_is_refused_and_never_reaches_the_password_file(registry: Registry,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    """Attack (issue 12 §8): ``:`` separates user and hash in Mosquitto's password file, so an id such as
    ``SW-A:x`` writes a line for user ``SW-A`` with a broken hash. Registration refuses such ids (API 422, CLI
    error); an old registry row holding one is left out of the file, which stays one ``user:hash`` per line, and
    every other account keeps working."""
    from sanitel.cli import main

    with registry.api() as api:
        assert_error(api.post("/devices", json={"device_id": "SW-A:x", "kind": "sweeper"}, headers=registry.admin),
                     422, "validation_error", "body.device_id")
        assert_error(api.post("/gateways", json={"gateway_id": "GW:1", "devices": []}, headers=registry.admin),
                     422, "validation_error", "body.gateway_id")
    monkeypatch.setenv("SANITEL_DATABASE_URL", registry.db_url)
    monkeypatch.setenv("SANITEL_DATA_DIR", str(registry.files.password_file.parent))
    assert main(["devices", "register", "SW-C:x", "--kind", "sweeper"]) == 2
    assert main(["gateways", "register", "GW:2"]) == 2
    assert "no ':'" in capsys.readouterr().err
    # a row from before the pattern was narrowed (the devices table itself still holds such auto-registered ids)
    with psycopg.connect(registry.db_url) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, mqtt_username, mqtt_password_hash)"
                     " VALUES ('SW-A:x', 'sweeper', 'SW-A:x', %s)", (hash_password("legacy"),))
    with registry.api() as api:  # any registry change rewrites the files
        response = api.post("/devices", json={"device_id": "SW-D", "kind": "sweeper"}, headers=registry.admin)
        assert response.status_code == 201, response.text
        registry.passwords["SW-D"] = response.json()["credentials"]["password"]
    lines = registry.files.password_file.read_text().splitlines()
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*:\$7\$[^:]+", line) for line in lines), lines
    assert "SW-A:x" not in registry.files.acl_file.read_text()
    assert wait_for(lambda: registry.can_connect("SW-D"), 10)
    assert registry.can_connect("SW-A") and not registry.can_connect("SW-A", "legacy")


def test_devices_gateways_and_services_share_one_username_namespace(registry: Registry) -> None:
    """Attack: a gateway registered under a device's id (or a service account's name) would add a second
    password line and a second ACL block for that username — the rights of both to either credential."""
    with registry.api() as api:
        for taken in ("SW-A", "svc-collector"):
            assert_error(api.post("/gateways", json={"gateway_id": taken, "devices": []}, headers=registry.admin),
                         409, "conflict")
        for taken in ("GW-1", "svc-evaluator"):
            assert_error(api.post("/devices", json={"device_id": taken, "kind": "bin"}, headers=registry.admin),
                         409, "conflict")
    with pytest.raises(Exception, match="gateway's broker username"):
        asyncio.run(_service_account(registry.db_url, "GW-1"))
    passwd = registry.files.password_file.read_text()
    assert sorted(line.split(":", 1)[0] for line in passwd.splitlines()) == sorted(
        [*SERVICES, "SW-A", "SW-B", "CEMS-1", "BIN-1", "GW-1"])


async def _service_account(db_url: str, name: str) -> str:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with conn:
        return await set_service_account(conn, name, "collector")


def test_the_hj212_password_is_write_only(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Attack (issue 12 §5): the HJ 212 password sat in devices.metadata in clear and GET /devices showed it to
    every viewer, who could then forge frames for the plant's MN. Now it is only ever written: stored as a salted
    hash, never in metadata, never in any response."""
    viewer = auth(mint_key(registry.db_url, "viewer"))
    with registry.api() as api:
        error = assert_error(api.post("/devices", json={"device_id": "CEMS-2", "kind": "cems",
                                                        "metadata": {"hj212_password": "123456"}},
                                      headers=registry.admin), 422, "validation_error", "body.metadata")
        assert "hj212_password field" in error["message"]
        assert_error(api.post("/devices", json={"device_id": "SW-9", "kind": "sweeper", "hj212_password": "123456"},
                              headers=registry.admin), 422, "validation_error", "body.hj212_password")
        assert_error(api.post("/devices", json={"device_id": "CEMS-2", "kind": "cems", "hj212_password": "a;b"},
                              headers=registry.admin), 422, "validation_error", "body.hj212_password")
        created = api.post("/devices", json={"device_id": "CEMS-2", "kind": "cems", "hj212_password": "Pw2024"},
                           headers=registry.admin)
        assert created.status_code == 201 and created.json()["device"]["has_hj212_password"] is True
        changed = api.put("/devices/CEMS-1/hj212-password", json={"password": "S3cret"}, headers=registry.admin)
        assert changed.status_code == 200 and changed.json()["has_hj212_password"] is True
        assert_error(api.put("/devices/SW-A/hj212-password", json={"password": "x"}, headers=registry.admin), 422,
                     "validation_error", "path.device_id")
        assert_error(api.put("/devices/NOPE/hj212-password", json={"password": "x"}, headers=registry.admin), 404,
                     "not_found")
        assert_error(api.put("/devices/CEMS-1/hj212-password", json={"password": "x"}, headers=viewer), 403,
                     "forbidden")
        shown = api.get("/devices", headers=viewer).text + api.get("/devices/CEMS-1", headers=viewer).text + \
            api.get("/devices/CEMS-2", headers=viewer).text + created.text + changed.text
    with psycopg.connect(registry.db_url) as conn:
        stored: dict[str, str] = dict(conn.execute(
            "SELECT device_id, hj212_password_hash FROM devices WHERE device_id LIKE 'CEMS-%'"
            " AND NOT metadata ? 'hj212_password'").fetchall())
    assert verify_secret("Pw2024", stored["CEMS-2"]) and verify_secret("S3cret", stored["CEMS-1"])
    for secret in ("Pw2024", "S3cret", stored["CEMS-1"], stored["CEMS-2"], "scrypt$"):
        assert secret not in shown

    from sanitel.cli import main
    monkeypatch.setenv("SANITEL_DATABASE_URL", registry.db_url)
    monkeypatch.setenv("SANITEL_DATA_DIR", str(registry.files.password_file.parent))
    assert main(["devices", "hj212-password", "CEMS-1", "--generate"]) == 0
    generated = re.findall(r"hj212 password: (\S+)", capsys.readouterr().out)[0]
    monkeypatch.setattr("sys.stdin", _Stdin("FromPipe\n"))
    assert main(["devices", "hj212-password", "CEMS-2"]) == 0
    assert "FromPipe" not in capsys.readouterr().out
    assert main(["devices", "hj212-password", "SW-A", "--generate"]) == 2  # not a CEMS unit
    with psycopg.connect(registry.db_url) as conn:
        stored = dict(conn.execute("SELECT device_id, hj212_password_hash FROM devices"
                                   " WHERE device_id LIKE 'CEMS-%'").fetchall())
    assert verify_secret(generated, stored["CEMS-1"]) and verify_secret("FromPipe", stored["CEMS-2"])


class _Stdin:
    """A piped standard input."""

    def __init__(self, text: str) -> None:
        self._text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self._text
