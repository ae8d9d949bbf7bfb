"""The local stack is secure by default (issue 12, item 3): a real ``LocalStack`` on free ports and a temp data folder.

PostgreSQL asks every connection for a password (scram-sha-256) and each component has its own role; Mosquitto
refuses anonymous clients from its first moment; the generated secrets are private files, never printed; with
``broker_tls`` the broker also speaks TLS with a CA the stack made. Before this, the local stack trusted every local
connection as the superuser and ran an anonymous broker until someone registered a device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from sanitel.broker_auth import BrokerAuthFiles
from sanitel.ingest.collector import WORKERS_SHARE_GROUP, Collector
from sanitel.local_secrets import (
    BROKER_ACCOUNTS,
    TlsFiles,
    ensure_local_secrets,
    load_local_secrets,
    secrets_dir,
    simulator_devices_file,
    stack_secrets_file,
)
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.schemas.topics import subscription
from sanitel.secret_hash import verify_secret
from sanitel.servers import free_port
from sanitel.settings import DatabaseRole, Settings, load_settings
from sanitel.stack import LocalStack
from sanitel.stack_cli import bring_up, register_demo_fleet, status, up
from tests.support.mqtt_tools import count, wait_for

ENV_KEYS = ("SANITEL_DATA_DIR", "SANITEL_PG_PORT", "SANITEL_MQTT_PORT", "SANITEL_MQTT_TLS_PORT", "SANITEL_BROKER_TLS",
            "SANITEL_CONFIG")


@pytest.fixture(scope="module")
def stack(scratch_dir: Path) -> Iterator[tuple[Settings, LocalStack]]:
    """One local stack for the module, TLS listener included; stopped at the end."""
    data_dir = scratch_dir / f"stack-{free_port()}"
    settings = load_settings(data_dir=data_dir, pg_port=free_port(), mqtt_port=free_port(),
                             mqtt_tls_port=free_port(), broker_tls=True)
    local, _ = bring_up(settings)
    try:
        yield settings, local
    finally:
        local.down()


@pytest.fixture
def stack_env(stack: tuple[Settings, LocalStack], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The environment the ``sanitel`` commands read, naming the module's stack."""
    settings, _ = stack
    config = tmp_path / "sanitel.yaml"
    config.write_text("{}\n")
    for key, value in zip(ENV_KEYS, (settings.data_dir, settings.pg_port, settings.mqtt_port, settings.mqtt_tls_port,
                                     "true", config), strict=True):
        monkeypatch.setenv(key, str(value))
    return settings


def _connack(url: str, client_id: str = "probe", timeout: float = 10) -> mqtt.ReasonCode | None:
    """The broker's CONNACK reason for a client connecting with ``url``; None when none came."""
    client = paho_client(BrokerTarget.parse(url), client_id, protocol=mqtt.MQTTv5)
    reasons: list[mqtt.ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: reasons.append(reason)
    client.reconnect()
    deadline = time.monotonic() + timeout
    while not reasons and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return reasons[0] if reasons else None


def _secret_values(settings: Settings) -> list[str]:
    stored = load_local_secrets(settings.data_dir)
    assert stored is not None
    return [stored.superuser_password, *stored.role_passwords.values(), *stored.broker_passwords.values()]


def test_postgres_refuses_trust_and_wrong_passwords_and_each_component_has_its_role(
        stack: tuple[Settings, LocalStack]) -> None:
    """Attack: with ``trust`` any process on the machine (any user, any container sharing the host network) connected
    as the superuser without a password. Now pg_hba.conf asks for scram-sha-256 everywhere, the superuser's password
    is generated, and each component logs in as its own role."""
    settings, local = stack
    assert local.postgres is not None
    rules = [line.split() for line in (local.postgres.data_dir / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    for url in (f"postgresql://postgres@127.0.0.1:{settings.pg_port}/sanitel",
                f"postgresql://postgres:wrong@127.0.0.1:{settings.pg_port}/sanitel",
                f"postgresql://sanitel_ingest:wrong@127.0.0.1:{settings.pg_port}/sanitel"):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=10).close()
    expected: dict[DatabaseRole, str] = {"owner": "postgres", "ingest": "sanitel_ingest", "api": "sanitel_api",
                                         "evaluator": "sanitel_evaluator", "processor": "sanitel_processor"}
    for role, user in expected.items():
        with psycopg.connect(settings.database_url_for(role), connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user,)


@pytest.mark.parametrize("share_group", [None, WORKERS_SHARE_GROUP])
def test_broker_refuses_anonymous_clients_and_the_collector_account_subscribes(
        stack: tuple[Settings, LocalStack], share_group: str | None) -> None:
    """Attack: an anonymous broker lets anyone publish readings for any device and read every reading. The stack now
    writes the password file and ACL before Mosquitto first starts, so there is no anonymous moment. The collector's
    account subscribes plainly and, as ``sanitel collector --workers N`` (the default) does, on a shared
    subscription."""
    settings, local = stack
    assert local.mosquitto is not None
    assert "allow_anonymous false" in local.mosquitto.conf_file.read_text()
    refusals = ("Not authorized", "Bad user name or password")
    assert _connack(f"mqtt://127.0.0.1:{settings.mqtt_port}") in refusals
    assert _connack(f"mqtt://sanitel-collector:wrong@127.0.0.1:{settings.mqtt_port}") in refusals
    collector_url = settings.mqtt_url_for("collector")
    assert collector_url.startswith("mqtts://sanitel-collector:")  # broker_tls: the account's URL is the TLS one
    received: list[str] = []
    granted: list[list[mqtt.ReasonCode]] = []
    client = paho_client(BrokerTarget.parse(collector_url), "ignored", protocol=mqtt.MQTTv5)
    client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.append(codes)
    client.on_message = lambda _c, _u, msg: received.append(msg.topic)
    client.reconnect()
    client.subscribe(subscription(settings.city, share_group), qos=1)
    stored = load_local_secrets(settings.data_dir)
    assert stored is not None
    simulator = settings.local_broker_url(BROKER_ACCOUNTS["simulator"][0], stored.broker_passwords["simulator"])
    publisher = paho_client(BrokerTarget.parse(simulator), "ignored-too", protocol=mqtt.MQTTv5)
    publisher.reconnect()
    publisher.loop_start()
    try:
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            if granted:
                publisher.publish(f"sanitation/{settings.city}/sweeper/sw-acl-1/telemetry", b"{}", qos=1)
            client.loop(0.2)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        client.disconnect()
    assert granted and not granted[0][0].is_failure
    assert set(received) == {f"sanitation/{settings.city}/sweeper/sw-acl-1/telemetry"}


def test_secrets_are_private_made_once_and_reused(stack: tuple[Settings, LocalStack]) -> None:
    """Attack: another local user reads the generated passwords (or the broker's hashes and account list) from
    world-readable files. Secrets, keys and the broker's auth files are 0600, their folders 0700."""
    settings, _ = stack
    before = load_local_secrets(settings.data_dir)
    assert before is not None and ensure_local_secrets(settings.data_dir) == before  # made once, then reused
    tls = TlsFiles.for_data_dir(settings.data_dir)
    broker = BrokerAuthFiles.for_data_dir(settings.data_dir)
    mosquitto_conf = settings.data_dir.absolute() / "mosquitto" / "mosquitto.conf"
    for private in (stack_secrets_file(settings.data_dir), tls.ca_key, tls.server_key, broker.password_file,
                    broker.acl_file, mosquitto_conf):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    for folder in (secrets_dir(settings.data_dir), tls.ca_key.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert len(set(_secret_values(settings))) == len(_secret_values(settings))  # one of its own each


def test_stack_up_again_and_status_print_no_password(stack_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Attack: URLs printed with their passwords end up in terminals, CI logs and screenshots. ``stack up`` (run again:
    idempotent) and ``stack status`` show URLs redacted."""
    capsys.readouterr()
    assert up(argparse.Namespace()) == 0
    assert status(argparse.Namespace()) == 0
    out = capsys.readouterr().out
    assert "running" in out and "timescaledb" in out and f":{stack_env.pg_port}" in out
    for secret in _secret_values(stack_env):
        assert secret not in out


def test_collector_over_tls_with_the_generated_ca_stores_a_reading_and_an_untrusting_client_cannot_connect(
        stack: tuple[Settings, LocalStack], make_collector: Callable[..., Collector]) -> None:
    """TLS end to end (broker_tls): a collector that trusts the stack's CA receives over mqtts a reading published over
    mqtts and stores it, as the ingest role; a client that does not trust the CA fails the handshake (no plain-text
    fallback, no trust on first use)."""
    settings, _ = stack
    stored = load_local_secrets(settings.data_dir)
    assert stored is not None
    collector_url = settings.mqtt_url_for("collector")
    assert collector_url.startswith("mqtts://") and f":{settings.mqtt_tls_port}?ca=" in collector_url
    ingest_db = settings.database_url_for("ingest")
    make_collector(ingest_db, collector_url)
    ts_ms = int((datetime(2026, 11, 20, tzinfo=UTC) + timedelta(minutes=1)).timestamp() * 1000)
    publisher = paho_client(BrokerTarget.parse(settings.local_broker_url(
        BROKER_ACCOUNTS["simulator"][0], stored.broker_passwords["simulator"])), "sim", protocol=mqtt.MQTTv5)
    publisher.reconnect()
    publisher.loop_start()
    try:
        info = publisher.publish(f"sanitation/{settings.city}/sweeper/sw-tls-1/telemetry",
                                 json.dumps({"ts": ts_ms, "soc_pct": 42}).encode(), qos=1)
        info.wait_for_publish(30)
        assert info.is_published()
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    owner = settings.database_url_for("owner")
    assert wait_for(lambda: count(owner, "SELECT count(*) FROM sweeper_telemetry WHERE device_id = 'sw-tls-1'") == 1,
                    30)
    untrusting = BrokerTarget.parse(f"mqtts://sanitel-collector:{stored.broker_passwords['collector']}"
                                    f"@127.0.0.1:{settings.mqtt_tls_port}")
    with pytest.raises(ssl.SSLCertVerificationError):
        paho_client(untrusting, "untrusting").reconnect()


def test_run_registers_the_demo_fleet_so_the_simulator_publishes_as_each_device(
        stack: tuple[Settings, LocalStack]) -> None:
    """``sanitel run``: the demo's devices are registered with broker credentials of their own (kept in a 0600 file for
    the simulator's --credentials), the HJ 212 units with the PW their frames carry; a device's credentials then log in,
    and a device publishing another device's topic is refused. Registering again keeps the passwords."""
    settings, _ = stack
    path = asyncio.run(register_demo_fleet(settings, "demo"))
    assert path == simulator_devices_file(settings.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    devices: dict[str, str] = json.loads(path.read_text())["devices"]
    assert len(devices) == 70 and "cems-p2-l1" in devices
    with psycopg.connect(settings.database_url_for("owner")) as conn:
        with_credentials = conn.execute("SELECT count(*) FROM devices WHERE mqtt_password_hash IS NOT NULL"
                                        " AND device_id = ANY(%s)", (list(devices),)).fetchone()
        (hj212_hash,) = conn.execute("SELECT hj212_password_hash FROM devices WHERE device_id = 'cems-p2-l1'"
                                     ).fetchone() or (None,)
    assert with_credentials == (70,)
    assert hj212_hash is not None and verify_secret("123456", hj212_hash)  # demo.yaml plant p2's PW (the default)
    device_url = settings.local_broker_url("sw-0001", devices["sw-0001"])
    assert wait_for(lambda: _connack(device_url, "sw-0001") == "Success", 15)  # the broker reloads its files
    assert _connack(settings.local_broker_url("sw-0001", "wrong"), "sw-0001") != "Success"
    again = asyncio.run(register_demo_fleet(settings, "demo"))
    assert json.loads(again.read_text())["devices"] == devices
    assert wait_for(lambda: _connack(device_url, "sw-0001") == "Success", 15)


def test_a_second_stack_start_keeps_working_with_the_same_secrets(stack: tuple[Settings, LocalStack]) -> None:
    """Restarting the stack reuses the stored secrets: the cluster's superuser password and the roles' still match."""
    settings, local = stack
    before = load_local_secrets(settings.data_dir)
    local.down()
    bring_up(settings)  # the module's fixture stops it again
    assert load_local_secrets(settings.data_dir) == before
    with psycopg.connect(settings.database_url_for("processor"), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("sanitel_processor",)
    assert _connack(f"mqtt://127.0.0.1:{settings.mqtt_port}") in ("Not authorized", "Bad user name or password")
