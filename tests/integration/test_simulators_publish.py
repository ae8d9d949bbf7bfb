"""Publishing to a real broker (private Mosquitto, no mocks): every message arrives, in order per
device, acknowledged; credentials, TLS, pacing and reconnects work."""

from __future__ import annotations

import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sanitel.errors import SanitelError
from sanitel.servers import MosquittoServer, free_port
from sanitel.simulators.connections import open_device_publisher
from sanitel.simulators.credentials import SenderCredentials, sender_of
from sanitel.simulators.publisher import open_publisher
from sanitel.simulators.run import generate, inventory, simulate
from sanitel.simulators.truth import read_ground_truth
from tests.support.mqtt_tools import TopicRecorder

START = "2026-11-22T06:30:00+08:00"  # sweepers on their way out, sorting slot about to open


class Subscriber(TopicRecorder):
    """Everything published under ``sanitation/{city}/#``."""

    def __init__(self, port: int, city: str) -> None:
        super().__init__(port, [f"sanitation/{city}/#"], client_id=f"sub-{city}-{port}")


@pytest.fixture
def subscriber(mqtt_server: MosquittoServer, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Subscriber]]:
    made: list[Subscriber] = []

    def make(city: str) -> Subscriber:
        made.append(Subscriber(mqtt_server.port, city))
        return made[-1]

    yield make
    for s in made:
        s.close()


def per_device(messages: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in messages:
        out[topic].append(payload)
    return out


@pytest.mark.parametrize(("engine", "faults"), [("paho", ""), ("fast", "duplicate,out_of_order,malformed")])
def test_a_demo_run_arrives_complete_and_in_order(mqtt_server: MosquittoServer, subscriber: Callable[[str], Subscriber],
                                                  engine: str, faults: str) -> None:
    city = f"sim{engine}"
    sub = subscriber(city)
    summary = simulate("demo", broker_url=mqtt_server.url, city=city, seed=5, duration_s=1200.0, speed=0.0,
                       start=START, faults=faults or [], engine=engine)
    expected = [(t, p) for t, p, _ in generate("demo", seed=5, start=START, duration_s=1200.0,
                                               faults=faults or [], city=city)]
    assert summary.messages == len(expected) > 500
    assert summary.acked == summary.messages and summary.errors == 0
    received = sub.wait_for(len(expected))
    assert Counter(received) == Counter(expected)           # every message, exactly as generated
    assert per_device(received) == per_device(expected)     # and in order per device and stream
    assert sum(summary.by_kind.values()) == summary.messages and summary.by_kind["sweeper"] > 0


def test_workers_share_the_fleet_and_the_ground_truth(mqtt_server: MosquittoServer,
                                                      subscriber: Callable[[str], Subscriber], tmp_path: Path) -> None:
    sub = subscriber("simworkers")
    summary = simulate("demo", broker_url=mqtt_server.url, city="simworkers", seed=8, duration_s=1800.0, speed=0.0,
                       start=START, faults="silence,duplicate,spike", engine="fast", workers=2,
                       ground_truth_path=tmp_path / "truth.jsonl")
    expected = [(t, p) for t, p, _ in generate("demo", seed=8, start=START, duration_s=1800.0,
                                               faults="silence,duplicate,spike", city="simworkers",
                                               ground_truth_path=tmp_path / "single.jsonl")]
    assert summary.messages == summary.acked == len(expected)
    assert summary.devices == 70
    received = sub.wait_for(len(expected))
    assert Counter(received) == Counter(expected)
    assert per_device(received) == per_device(expected)
    merged, single = read_ground_truth(tmp_path / "truth.jsonl"), read_ground_truth(tmp_path / "single.jsonl")
    assert merged == single and {r["fault"] for r in merged if r["source"] == "injected"} == {
        "silence", "duplicate", "spike"}
    assert not list(tmp_path.glob("*.part*"))


def test_real_time_pacing_and_rate_cap(mqtt_server: MosquittoServer) -> None:
    began = time.monotonic()
    paced = simulate("demo", broker_url=mqtt_server.url, city="simpace", seed=1, duration_s=120.0, speed=120.0,
                     start=START, faults=[])
    assert time.monotonic() - began >= 0.9  # 2 simulated minutes at ×120 take a second
    assert paced.messages > 0 and paced.acked == paced.messages
    capped = simulate("demo", broker_url=mqtt_server.url, city="simrate", seed=1, duration_s=3600.0, speed=0.0,
                      start=START, faults=[], rate=400.0, max_messages=400)
    assert capped.messages == 400
    assert capped.elapsed_s >= 0.9 and capped.rate <= 450


@pytest.fixture(scope="module")
def password_broker(make_mosquitto: Callable[..., MosquittoServer], scratch_dir: Path) -> MosquittoServer:
    passwords = scratch_dir / "sim-passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "fleet", "s3cret"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    return make_mosquitto(password_file=passwords)


@pytest.mark.parametrize("engine", ["paho", "fast"])
def test_credentials_in_the_url(password_broker: MosquittoServer, engine: str) -> None:
    url = f"mqtt://fleet:s3cret@127.0.0.1:{password_broker.port}"
    summary = simulate("demo", broker_url=url, city="simauth", seed=1, duration_s=300.0, speed=0.0, start=START,
                       faults=[], engine=engine)
    assert summary.acked == summary.messages > 0
    assert summary.broker == f"mqtt://fleet:***@127.0.0.1:{password_broker.port}"
    with pytest.raises(SanitelError, match=r"(?i)refused the connection.*(user name or password|not authori)"):
        open_publisher(f"mqtt://fleet:wrong@127.0.0.1:{password_broker.port}", engine=engine)


class TlsMosquitto(MosquittoServer):
    """The project's managed Mosquitto with its listener switched to TLS."""

    cert: Path
    key: Path

    def write_config(self) -> None:
        super().write_config()
        listener = f"listener {self.port} 127.0.0.1\n"
        text = self.conf_file.read_text().replace(listener, f"{listener}certfile {self.cert}\nkeyfile {self.key}\n")
        self.conf_file.write_text(text)


@pytest.fixture(scope="module")
def tls_broker(scratch_dir: Path) -> Iterator[tuple[MosquittoServer, Path]]:
    folder = scratch_dir / "sim-tls"
    folder.mkdir()
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = TlsMosquitto(folder / "mqtt", free_port())
    server.cert, server.key = cert, key
    server.start()
    yield server, cert
    server.kill()


@pytest.mark.parametrize("engine", ["paho", "fast"])
def test_tls_with_the_broker_ca(tls_broker: tuple[MosquittoServer, Path], engine: str) -> None:
    server, cert = tls_broker
    summary = simulate("demo", broker_url=f"mqtts://127.0.0.1:{server.port}?ca={cert}", city="simtls", seed=1,
                       duration_s=300.0, speed=0.0, start=START, faults=[], engine=engine)
    assert summary.acked == summary.messages > 0
    with pytest.raises(SanitelError, match=r"(?i)certificate verify failed"):
        open_publisher(f"mqtts://127.0.0.1:{server.port}", engine=engine)  # system CAs do not know it


@pytest.mark.parametrize("engine", ["paho", "fast"])
def test_publisher_reconnects_and_redelivers_after_a_broker_restart(
        make_mosquitto: Callable[..., MosquittoServer], engine: str) -> None:
    broker = make_mosquitto()
    publisher = open_publisher(broker.url, engine=engine)
    messages = [(t, p) for t, p, _ in generate("demo", seed=3, start=START, duration_s=900.0, faults=[])][:600]
    for topic, payload in messages[:300]:
        publisher.publish(topic, payload)
    broker.kill()  # unacknowledged messages are lost at the broker: the publisher must send them again
    broker.start()
    for topic, payload in messages[300:]:
        publisher.publish(topic, payload)
    assert publisher.flush(30)
    assert publisher.stats.acked == publisher.stats.sent == 600
    assert publisher.stats.reconnects >= 1
    publisher.close()


def demo_credentials() -> SenderCredentials:
    """Every demo device with a password: the anonymous test brokers accept any, which is enough to exercise the
    per-device connections (their refusals are tested against a password file in tests/integration/security)."""
    return SenderCredentials({d["device_id"]: f"pw-{d['device_id']}" for d in inventory("demo")}, {}, "test")


def test_per_device_connections_over_tls(tls_broker: tuple[MosquittoServer, Path]) -> None:
    """--credentials with mqtts://: every device's connection verifies the broker with the CA of the URL."""
    server, cert = tls_broker
    summary = simulate("demo", broker_url=f"mqtts://127.0.0.1:{server.port}?ca={cert}", city="simtlsdev", seed=1,
                       duration_s=600.0, speed=0.0, start=START, faults=[], credentials=demo_credentials())
    assert summary.acked == summary.messages > 0 and summary.errors == 0 and summary.refused == {}


def test_per_device_connections_reconnect_and_redeliver_after_a_broker_restart(
        make_mosquitto: Callable[..., MosquittoServer]) -> None:
    broker = make_mosquitto()
    credentials = demo_credentials()
    messages = [(t, p) for t, p, _ in generate("demo", seed=3, start=START, duration_s=900.0, faults=[])][:600]
    senders = sorted({s for s in (sender_of(t) for t, _ in messages) if s is not None}, key=str)
    publisher = open_device_publisher(broker.url, credentials, senders)
    for topic, payload in messages[:300]:
        publisher.publish(topic, payload)
    broker.kill()  # unacknowledged messages are lost at the broker: each connection must send its own again
    broker.start()
    for topic, payload in messages[300:]:
        publisher.publish(topic, payload)
    assert publisher.flush(60)
    assert publisher.stats.acked == publisher.stats.sent == 600
    assert publisher.stats.reconnects >= 1 and publisher.refused() == {}
    publisher.close()


def test_per_device_connections_split_over_workers(mqtt_server: MosquittoServer,
                                                   subscriber: Callable[[str], Subscriber]) -> None:
    """Each worker process opens the connections of its own share of the fleet (the credentials travel to it)."""
    sub = subscriber("simdevworkers")
    summary = simulate("demo", broker_url=mqtt_server.url, city="simdevworkers", seed=4, duration_s=900.0,
                       speed=0.0, start=START, faults=[], workers=2, credentials=demo_credentials())
    expected = [(t, p) for t, p, _ in generate("demo", seed=4, start=START, duration_s=900.0, faults=[],
                                               city="simdevworkers")]
    assert summary.messages == summary.acked == len(expected) and summary.errors == 0
    received = sub.wait_for(len(expected))
    assert per_device(received) == per_device(expected)
