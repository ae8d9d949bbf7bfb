"""The demo simulator publishes as the devices themselves (issue 12, "must show" 3), against a real Mosquitto whose
password file and per-account ACL come from ``sanitel.broker_auth``: each device over its own connection with its
own credentials, and every way a device's messages can fail to arrive is counted as an error, never as delivery."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sanitel.broker_auth import BrokerAccount, BrokerAuthFiles, hash_password, new_password
from sanitel.cli import main
from sanitel.servers import MosquittoServer
from sanitel.simulators.credentials import sender_of
from sanitel.simulators.run import generate, inventory, simulate
from tests.support.mqtt_tools import wait_for

CITY = "credcity"
SEED = 3
START = "2026-11-22T06:30:00+08:00"  # sweepers leaving, sorting slot opening: every kind of device sends
DURATION_S = 1200.0                   # 20 simulated minutes: every bin, station, sweeper and CEMS reports
COLLECTOR = "collector-credtest"


@dataclass
class Fleet:
    broker: MosquittoServer
    passwords: dict[str, str]   # device id → its real password
    kinds: dict[str, str]
    collector_password: str


@pytest.fixture(scope="module")
def fleet(make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> Fleet:
    """The demo fleet registered at a broker with auth on: one account per device with its kind, and a collector.
    ``sw-0002`` is registered with the wrong kind (bin), so its sweeper topics are outside its ACL."""
    devices = inventory("demo", seed=SEED, city=CITY)
    kinds = {d["device_id"]: d["kind"] for d in devices}
    passwords = {device_id: new_password() for device_id in kinds}
    collector_password = new_password()
    accounts = [BrokerAccount(d, hash_password(p), kind="bin" if d == "sw-0002" else kinds[d])
                for d, p in passwords.items()]
    accounts.append(BrokerAccount(COLLECTOR, hash_password(collector_password), service_role="collector"))
    folder = scratch_dir / "simcred"
    files = BrokerAuthFiles(folder / "passwd", folder / "acl")
    files.write(accounts, CITY)
    broker = make_mosquitto(password_file=files.password_file, acl_file=files.acl_file)
    return Fleet(broker, passwords, kinds, collector_password)


class Collector:
    """Counts what the broker delivers under ``sanitation/{CITY}/#``, by sender, logged in as a collector account."""

    def __init__(self, fleet: Fleet) -> None:
        self.by_sender: Counter[str] = Counter()
        self.lock = threading.Lock()
        subscribed, connected = threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=COLLECTOR, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(COLLECTOR, fleet.collector_password)
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", fleet.broker.port)
        self.client.loop_start()
        assert connected.wait(20), "the collector account could not connect"
        self.client.subscribe(f"sanitation/{CITY}/#", qos=1)
        assert subscribed.wait(20), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        sender = sender_of(msg.topic)
        with self.lock:
            self.by_sender[sender.sender_id if sender else msg.topic] += 1

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.by_sender)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(fleet: Fleet) -> Iterator[Collector]:
    made = Collector(fleet)
    yield made
    made.close()


def credentials_file(path: Path, passwords: dict[str, str]) -> Path:
    path.write_text(json.dumps({"devices": passwords}))
    path.chmod(0o600)
    return path


def expected_by_sender() -> Counter[str]:
    out: Counter[str] = Counter()
    for topic, _, _ in generate("demo", seed=SEED, start=START, duration_s=DURATION_S, faults=[], city=CITY):
        sender = sender_of(topic)
        assert sender is not None
        out[sender.sender_id] += 1
    return out


def run_demo(fleet: Fleet, credentials: Path) -> object:
    return simulate("demo", broker_url=f"mqtt://127.0.0.1:{fleet.broker.port}", city=CITY, seed=SEED,
                    duration_s=DURATION_S, speed=0.0, start=START, faults=[], credentials=credentials,
                    ack_timeout_s=60.0)


def test_every_device_publishes_over_its_own_connection(fleet: Fleet, collector: Collector, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The demo runs with device credentials only (no service account that may write every device's topics):
    each device's messages reach a collector account, counted by device. sw-0002 is registered with the wrong
    kind, so the ACL denies its sweeper topics: the broker answers those PUBLISHes with reason code 0x87 (MQTT 5)
    and they must be counted as errors — with MQTT 3.1.1, which the service-account path speaks, Mosquitto
    acknowledges a denied PUBLISH like an accepted one, and the run would report the lost messages as delivered."""
    expected = expected_by_sender()
    assert {d for d, k in fleet.kinds.items() if k != "camera"} <= set(expected)  # every device but cameras sends
    denied = expected.pop("sw-0002")
    caplog.set_level(logging.WARNING, logger="sanitel.simulators")
    summary = simulate("demo", broker_url=f"mqtt://127.0.0.1:{fleet.broker.port}", city=CITY, seed=SEED,
                       duration_s=DURATION_S, speed=0.0, start=START, faults=[],
                       credentials=credentials_file(tmp_path / "credentials.json", fleet.passwords),
                       ack_timeout_s=60.0)
    assert summary.messages == sum(expected.values()) + denied
    assert summary.acked == sum(expected.values())
    # every denied message is an error; the broker also closes the connection after a denial, which may count once
    assert summary.errors >= denied > 0
    # the broker's PUBACK 0x87 names the refusal; when its TCP reset discards that PUBACK (more PUBLISHes were unread
    # when it closed), the connection lost twice without an acknowledgement does (simulators/connections.py)
    assert list(summary.refused) == ["sw-0002"]
    assert summary.refused["sw-0002"] in (
        f"PUBLISH on sanitation/{CITY}/sweeper/sw-0002/telemetry: Not authorized",
        f"PUBLISH on sanitation/{CITY}/sweeper/sw-0002/telemetry: connection closed by the broker without an "
        "acknowledgement (refused)")
    assert wait_for(lambda: collector.snapshot() == expected, timeout=60), collector.snapshot() - expected
    assert "sw-0002" not in collector.snapshot()
    warned = [r.getMessage() for r in caplog.records if "sw-0002" in r.getMessage()]
    assert len(warned) == 1 and ("Not authorized" in warned[0] or "refused PUBLISH" in warned[0])  # one line, not
    # one per message


def test_a_wrong_password_shows_up_as_errors(fleet: Fleet, collector: Collector, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A device whose password in the credentials file is stale: the broker refuses its CONNECT. Its messages must
    be counted as errors (and the CLI must fail), with one log line naming the device — not dropped silently
    while the run reports success; the other devices go on publishing."""
    expected = expected_by_sender()
    expected.pop("sw-0002")  # outside its ACL (see above): errors too, not what this test is about
    wrong = {**fleet.passwords, "ts-0001": "not-its-password"}
    path = credentials_file(tmp_path / "credentials.json", wrong)
    caplog.set_level(logging.WARNING, logger="sanitel.simulators")
    summary = simulate("demo", broker_url=f"mqtt://127.0.0.1:{fleet.broker.port}", city=CITY, seed=SEED,
                       duration_s=DURATION_S, speed=0.0, start=START, faults=[], credentials=path, ack_timeout_s=60.0)
    lost = expected.pop("ts-0001")
    assert lost > 0
    assert set(summary.refused) == {"sw-0002", "ts-0001"}
    assert summary.refused["ts-0001"].startswith("CONNECT: ")
    assert summary.acked == sum(expected.values())
    assert summary.errors >= summary.messages - summary.acked == lost + expected_by_sender()["sw-0002"]
    assert wait_for(lambda: collector.snapshot() == expected, timeout=60), collector.snapshot() - expected
    warned = [r.getMessage() for r in caplog.records if "ts-0001" in r.getMessage()]
    assert len(warned) == 1 and "refused its credentials" in warned[0]
    assert "not-its-password" not in caplog.text


def test_the_cli_exits_non_zero_when_a_device_was_refused(fleet: Fleet, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``sanitel simulate --credentials``: a refused device makes the command fail, saying why."""
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    path = credentials_file(tmp_path / "credentials.json", {**fleet.passwords, "ts-0002": "stale"})
    code = main(["simulate", "--scenario", "demo", "--broker", f"mqtt://127.0.0.1:{fleet.broker.port}",
                 "--city", CITY, "--speed", "max", "--duration", "10m", "--start", START, "--faults", "none",
                 "--credentials", str(path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert "the broker refused 2 sender(s)" in captured.err and "ts-0002 (CONNECT: " in captured.out
    assert "stale" not in captured.out + captured.err


def test_a_readable_credentials_file_is_refused_before_connecting(fleet: Fleet, tmp_path: Path) -> None:
    """The file holds every device's password: one that other users can read is refused with the fix."""
    path = credentials_file(tmp_path / "credentials.json", fleet.passwords)
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match=r"chmod 600"):
        run_demo(fleet, path)
