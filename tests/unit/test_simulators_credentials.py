"""``sanitel simulate --credentials FILE`` without a broker: the file's format and permissions, which sender a
topic needs, and the checks made before any connection is opened."""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from sanitel.cli import main
from sanitel.errors import ConfigError
from sanitel.mqtt_wire import BrokerTarget
from sanitel.servers import free_port
from sanitel.simulators import connections
from sanitel.simulators.connections import DevicePublisher
from sanitel.simulators.credentials import Sender, SenderCredentials, load_credentials, parse_credentials, sender_of
from sanitel.simulators.run import Simulation, generate, simulate
from sanitel.simulators.scenario import load_scenario

SECRET = "s3cret-do-not-print"
START = "2026-11-22T06:30:00+08:00"


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def make(document: object, mode: int = 0o600, name: str = "credentials.json") -> Path:
        path = tmp_path / name
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        os.chmod(path, mode)
        return path

    return make


def test_a_private_file_loads(write: Callable[..., Path]) -> None:
    path = write({"devices": {"sw-0001": SECRET, "cems-p1-l1": "x"}, "gateways": {"gw-00001": "y"}})
    creds = load_credentials(path)
    assert creds.password(Sender("devices", "sw-0001")) == SECRET
    assert creds.password(Sender("gateways", "gw-00001")) == "y"
    assert creds.password(Sender("devices", "gw-00001")) is None  # a gateway is not a device
    assert SECRET not in repr(creds) and "2 devices, 1 gateways" in repr(creds)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o601])
def test_a_file_others_may_read_or_change_is_refused(write: Callable[..., Path], mode: int) -> None:
    path = write({"devices": {"sw-0001": SECRET}}, mode)
    with pytest.raises(ConfigError, match=rf"mode {mode:04o} lets other users .* chmod 600 ") as refused:
        load_credentials(path)
    assert SECRET not in str(refused.value)


def test_a_symbolic_link_missing_file_or_folder_is_refused(write: Callable[..., Path], tmp_path: Path) -> None:
    target = write({"devices": {"sw-0001": SECRET}})
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_credentials(link)
    with pytest.raises(ConfigError, match="no such file"):
        load_credentials(tmp_path / "nowhere.json")
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_credentials(folder)


@pytest.mark.parametrize(("text", "message"), [
    ('{"devices": {"sw-0001": "' + SECRET + '",}}', r"not JSON \(.* at line 1 column \d+\)"),
    ("[]", "the top level must be an object"),
    ({"device": {"sw-0001": SECRET}}, r"unknown key\(s\) 'device'; expected 'devices' and 'gateways'"),
    ({"devices": [SECRET]}, "'devices' must be an object of id → password"),
    ({"devices": {"sw:0001": SECRET}}, r"devices: id 'sw:0001' is not a broker user name; ids must match"),
    ({"devices": {"sw 1": SECRET}}, "is not a broker user name"),
    ({"devices": {"sw-0001": ""}}, "devices.sw-0001: the password must be a non-empty string"),
    ({"devices": {"sw-0001": 123456}}, "devices.sw-0001: the password must be a non-empty string"),
    ({"devices": {"gw-1": SECRET}, "gateways": {"gw-1": SECRET}}, "gw-1 listed both as device and as gateway"),
    ({"devices": {}}, r"no credentials in it"),
])
def test_malformed_files_say_what_is_wrong_without_quoting_passwords(text: object, message: str) -> None:
    data = text if isinstance(text, str) else json.dumps(text)
    with pytest.raises(ConfigError, match=message) as refused:
        parse_credentials(data, source="creds.json")
    assert SECRET not in str(refused.value) and "creds.json" in str(refused.value)


@pytest.mark.parametrize(("topic", "sender"), [
    ("sanitation/sz/sweeper/sw-0001/telemetry", Sender("devices", "sw-0001")),
    ("sanitation/sz/camera/cam-00001/event", Sender("devices", "cam-00001")),
    ("sanitation/sz/cems/cems-p2-l1/hj212", Sender("devices", "cems-p2-l1")),  # HJ 212 frames: the unit itself
    ("sanitation/sz/gateway/gw-00001/batch", Sender("gateways", "gw-00001")),
    ("sanitation/sz/alerts/critical", None),
    ("elsewhere/x", None),
])
def test_the_sender_a_topic_needs(topic: str, sender: Sender | None) -> None:
    assert sender_of(topic) == sender


@pytest.mark.parametrize("scenario", ["demo", "district"])
def test_every_message_has_a_sender_of_the_run(scenario: str) -> None:
    """The senders listed up front (and checked against the file) are exactly those whose topics the run uses:
    every device except the bins behind a gateway, plus the gateways."""
    loaded = load_scenario(scenario).scaled(0.05) if scenario == "district" else load_scenario(scenario)
    sim = Simulation(loaded, seed=1, start=0.0, duration_s=0.0, city="sz", faults=[])
    senders = set(sim.senders())
    used = {sender_of(topic) for topic, _, _ in generate(loaded, seed=1, start=START, duration_s=1800.0, faults=[],
                                                         city="sz")}
    assert None not in used and used <= senders
    if scenario == "district":
        assert any(s.section == "gateways" for s in senders)
        assert not any(s.sender_id in sim.fleet.gateway_devices for s in senders)


def test_missing_credentials_are_refused_before_connecting() -> None:
    creds = SenderCredentials({"sw-0001": SECRET}, {}, "creds.json")
    senders = [Sender("devices", "sw-0001"), Sender("devices", "sw-0002"), Sender("gateways", "gw-00001")]
    target = BrokerTarget.parse(f"mqtt://127.0.0.1:{free_port()}")  # nothing listens: nothing may connect
    with pytest.raises(ConfigError, match=r"no password for 2 of the 3 senders of this run \(device sw-0002, "
                                          r"gateway gw-00001\)") as refused:
        DevicePublisher(target, creds, senders)
    assert SECRET not in str(refused.value)


def test_too_many_connections_for_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "MAX_CONNECTIONS", 2)
    senders = [Sender("devices", f"sw-000{n}") for n in range(1, 4)]
    creds = SenderCredentials({s.sender_id: SECRET for s in senders}, {}, "creds.json")
    with pytest.raises(ConfigError, match=r"3 senders in one process.*simulator service account"):
        DevicePublisher(BrokerTarget.parse("mqtt://127.0.0.1:1"), creds, senders)


def test_the_open_file_limit_is_raised_or_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: set_to.append(limits))
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    connections._ensure_descriptors(2000)
    assert set_to == [(2000 + connections._SPARE_DESCRIPTORS, 4096)]
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 1024))
    with pytest.raises(ConfigError, match=r"need 2,064 open files, the limit is 1,024"):
        connections._ensure_descriptors(2000)


@pytest.mark.parametrize(("options", "message"), [
    ({"engine": "fast"}, "--engine fast is for load runs as the simulator service account"),
    ({"client_id": "me"}, "each device's client id is its own id; drop --client-id"),
])
def test_options_that_contradict_per_device_connections(write: Callable[..., Path], options: dict[str, str],
                                                        message: str) -> None:
    path = write({"devices": {"sw-0001": SECRET}})
    with pytest.raises(ConfigError, match=message):
        simulate("demo", broker_url=f"mqtt://127.0.0.1:{free_port()}", city="sz", seed=1, duration_s=60.0, speed=0.0,
                 start=START, credentials=path, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "extra", "message"), [
    (0o644, [], "lets other users read or change the device passwords it holds; make it private with: chmod 600"),
    (0o600, ["--engine", "fast"], "--engine fast is for load runs"),
    (0o600, [], "no password for 69 of the 70 senders of this run"),
])
def test_the_command_reports_credentials_problems_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              write: Callable[..., Path], mode: int,
                                                              extra: list[str], message: str) -> None:
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    path = write({"devices": {"sw-0001": SECRET}}, mode)
    code = main(["simulate", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--speed", "max", "--quiet",
                 "--credentials", str(path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and SECRET not in err
