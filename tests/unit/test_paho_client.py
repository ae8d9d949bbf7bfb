"""One paho client set-up (``sanitel.mqtt_wire.paho_client``) for every service that speaks MQTT through paho: the
collector, the HJ 212 listener, the alert sink and the simulators' paho engine. Built here without connecting."""

from __future__ import annotations

import re
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sanitel.ingest.buffered_client import BufferedClient
from sanitel.mqtt_wire import KEEPALIVE_S, RECONNECT_DELAY_S, BrokerTarget, paho_client

REPO = Path(__file__).resolve().parents[2]


def test_an_mqtt_3_client_takes_address_credentials_and_reconnect_delays_from_the_url() -> None:
    client = paho_client(BrokerTarget.parse("mqtt://alerts:s%40cret@broker.example:1884"), "sanitel-evaluator")
    assert (client.host, client.port, client.keepalive) == ("broker.example", 1884, KEEPALIVE_S)
    assert (client.username, client.password) == ("alerts", "s@cret")
    assert client.protocol == mqtt.MQTTv311 and client._client_id == b"sanitel-evaluator"
    assert client._clean_session is True and client._manual_ack is False
    assert (client._reconnect_min_delay, client._reconnect_max_delay) == RECONNECT_DELAY_S
    assert client._ssl_context is None


def test_no_user_name_in_the_url_means_no_credentials() -> None:
    client = paho_client(BrokerTarget.parse("mqtt://127.0.0.1:1883"), "sim")
    assert (client.username, client.password) == (None, None)


def test_mqtts_sets_tls_and_insecure_turns_off_hostname_checks() -> None:
    strict = paho_client(BrokerTarget.parse("mqtts://broker.example"), "a")
    assert strict.port == 8883 and strict._ssl_context is not None and strict._tls_insecure is False
    loose = paho_client(BrokerTarget.parse("mqtts://broker.example?insecure=1"), "b")
    assert loose._ssl_context is not None and loose._tls_insecure is True
    assert loose._ssl_context.check_hostname is False


def test_a_persistent_mqtt_5_session_with_manual_acks_and_its_own_client_class() -> None:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    client = paho_client(BrokerTarget.parse("mqtt://127.0.0.1:1883"), "collector-1", client_class=BufferedClient,
                         protocol=mqtt.MQTTv5, clean_start=False, properties=props, manual_ack=True, keepalive=45)
    assert isinstance(client, BufferedClient)
    assert client.protocol == mqtt.MQTTv5 and client._manual_ack and client.keepalive == 45
    assert client._clean_start is False and client._connect_properties is props


def test_the_in_flight_window_is_set_before_connecting() -> None:
    client = paho_client(BrokerTarget.parse("mqtt://127.0.0.1:1883"), "sim", max_inflight=200)
    assert client.max_inflight_messages == 200


def test_a_persistent_mqtt_3_session_turns_clean_session_off() -> None:
    client = paho_client(BrokerTarget.parse("mqtt://127.0.0.1:1883"), "fixed-id", clean_start=False)
    assert client._clean_session is False


def test_connect_properties_need_mqtt_5() -> None:
    with pytest.raises(ValueError, match="MQTT 5"):
        paho_client(BrokerTarget.parse("mqtt://127.0.0.1:1883"), "x", properties=Properties(PacketTypes.CONNECT))


def test_no_service_builds_its_own_paho_client() -> None:
    """Every MQTT client of the services comes from paho_client (tests and bench may build their own)."""
    construction = re.compile(r"\b(?:mqtt\.Client|BufferedClient|aiomqtt\.Client)\(")
    stages = ["sanitel", "schemas", "ingest", "processors", "alerts", "api", "simulators"]
    offenders = [f"{path.relative_to(REPO)}:{n}" for stage in stages for path in sorted((REPO / stage).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if construction.search(line) and not line.lstrip().startswith("class ")]
    assert offenders == [], "build paho clients with sanitel.mqtt_wire.paho_client"
