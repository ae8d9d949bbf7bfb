"""The exact paho-mqtt pin, made visible: ingest/buffered_client.py (the collector's client) overrides and calls
private parts of paho-mqtt 2.2.0. Each test here checks one of them — by name, by signature, and by feeding real
MQTT packets through a socket pair — so a paho upgrade that moves one fails here, naming the file to revisit,
instead of failing as lost or unacknowledged messages in production."""

from __future__ import annotations

import inspect
import socket
import struct
import threading
from collections.abc import Iterator

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest

from sanitel.ingest.buffered_client import ACK_BARRIER_FILTER, BufferedClient
from tests.support.mqtt_tools import socketpair_client

REVISIT = ("ingest/buffered_client.py relies on it (its docstring lists every paho internal it uses): revisit that "
           "file before moving the paho-mqtt pin in pyproject.toml")


def pin_broken(what: str) -> str:
    return f"paho-mqtt {paho.mqtt.__version__}: {what}. {REVISIT}"


# name → the parameters (after self) buffered_client.py overrides it with or calls it with
PRIVATE_METHODS = {
    "_sock_recv": ["bufsize"],
    "loop_read": ["max_packets"],
    "_handle_publish": [],
    "_handle_on_message": ["message"],
    "_packet_queue": ["command", "packet", "mid", "qos", "info"],
    "_easy_log": ["level", "fmt", "args"],
}
PRIVATE_ATTRIBUTES = ["_sock", "_in_packet", "_protocol", "_manual_ack", "_userdata", "_in_callback_mutex",
                      "suppress_exceptions"]


def new_client() -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pin", protocol=mqtt.MQTTv5, manual_ack=True)


@pytest.mark.parametrize(("name", "params"), PRIVATE_METHODS.items())
def test_each_paho_method_it_overrides_or_calls_is_there_with_the_same_parameters(name: str, params: list[str]) -> None:
    method = getattr(mqtt.Client, name, None)
    assert callable(method), pin_broken(f"Client.{name} is gone")
    found = [p for p in inspect.signature(method).parameters if p != "self"]
    assert found == params, pin_broken(f"Client.{name} now takes ({', '.join(found)}), not ({', '.join(params)})")


@pytest.mark.parametrize("name", PRIVATE_ATTRIBUTES)
def test_each_paho_attribute_it_reads_is_set_by_the_constructor(name: str) -> None:
    assert hasattr(new_client(), name), pin_broken(f"Client() no longer sets {name}")


def test_the_incoming_packet_still_carries_its_command_and_body() -> None:
    in_packet = new_client()._in_packet
    assert isinstance(in_packet, dict) and {"command", "packet"} <= in_packet.keys(), pin_broken(
        f"Client._in_packet has no 'command'/'packet' keys any more ({sorted(in_packet)})")


def test_mqtt_message_is_still_built_from_mid_and_raw_topic() -> None:
    params = list(inspect.signature(mqtt.MQTTMessage).parameters)
    assert params == ["mid", "topic"], pin_broken(f"MQTTMessage() now takes ({', '.join(params)})")
    message = mqtt.MQTTMessage(mid=7, topic=b"a/b")
    message.qos, message.dup, message.retain, message.payload, message.timestamp = 1, False, False, b"x", 0.0
    assert message._topic == b"a/b", pin_broken("MQTTMessage keeps the raw topic somewhere other than _topic")


def test_the_constants_it_builds_packets_from() -> None:
    assert (mqtt.PUBLISH, mqtt.PUBACK) == (0x30, 0x40), pin_broken("the PUBLISH/PUBACK constants changed")
    assert hasattr(mqtt, "MQTT_LOG_ERR"), pin_broken("MQTT_LOG_ERR is gone")


# --- the same internals at work: real packets through a socket pair, no broker ------------------------------


def publish_packet(topic: str, mid: int, payload: bytes, properties: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH at QoS 1, as a broker sends it."""
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", mid)
    body += bytes((len(properties),)) + properties + payload
    assert len(body) < 128  # one length byte is enough for these
    return bytes((0x32, len(body))) + body


@pytest.fixture
def wired() -> Iterator[tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]]:
    with socketpair_client("pin") as wired:
        yield wired


def test_paho_reads_through_sock_recv_and_hands_publish_to_handle_publish(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, broker, received = wired
    # two packets in one segment, the second with a property (content type) that must be skipped
    broker.sendall(publish_packet("sanitation/x/bin/b1/telemetry", 1, b'{"a":1}')
                   + publish_packet("sanitation/x/bin/b2/telemetry", 2, b"{}", properties=b"\x03\x00\x01j"))
    rc = client.loop_read()
    assert rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, pin_broken(f"loop_read over our _sock_recv returned {rc}")
    got = [(m.topic, m.mid, m.qos, m.payload) for m in received]
    assert got == [("sanitation/x/bin/b1/telemetry", 1, 1, b'{"a":1}'), ("sanitation/x/bin/b2/telemetry", 2, 1, b"{}")], (
        pin_broken("a PUBLISH no longer reaches on_message through _sock_recv → _handle_publish → _handle_on_message"))


def recv_exactly(broker: socket.socket, n: int) -> bytes:
    broker.settimeout(5)
    data = b""
    while len(data) < n:
        data += broker.recv(n - len(data))
    return data


def test_ack_many_goes_out_through_packet_queue_as_pubacks_in_order(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, broker, _ = wired
    rc = client.ack_many([5, 3, 65535])
    assert rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, pin_broken(f"_packet_queue returned {rc}")
    expected = b"".join(bytes((0x40, 2)) + struct.pack("!H", mid) for mid in (5, 3, 65535))
    assert recv_exactly(broker, len(expected)) == expected, pin_broken("_packet_queue no longer writes a raw PUBACK "
                                                                         "blob as it is")


def test_wait_acks_read_returns_only_once_the_broker_answered_a_packet_sent_after_the_acks(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    """A broker answers a client's packets in order: the UNSUBACK of a filter sent after the PUBACKs says it has
    read them (the collector waits for it before it disconnects)."""
    client, broker, _ = wired
    client.ack_many([7, 8])
    assert recv_exactly(broker, 8) == b"\x40\x02\x00\x07\x40\x02\x00\x08"
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(client.wait_acks_read(10)))
    waiter.start()
    header = recv_exactly(broker, 2)
    assert header[0] == 0xA2, pin_broken("unsubscribe() no longer sends an UNSUBSCRIBE")  # (flags 0010, §3.10.1)
    body = recv_exactly(broker, header[1])
    mid = struct.unpack("!H", body[:2])[0]
    assert ACK_BARRIER_FILTER.encode() in body
    waiter.join(0.3)
    assert waiter.is_alive() and outcome == []  # no answer yet: still waiting
    broker.sendall(bytes((0xB0, 4)) + struct.pack("!H", mid) + b"\x00\x11")  # UNSUBACK: no subscription existed
    client.loop_read()
    waiter.join(5)
    assert outcome == [True], pin_broken("an UNSUBACK no longer reaches on_unsubscribe with its packet id")


def test_wait_acks_read_gives_up_when_the_broker_does_not_answer(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, _, _ = wired
    assert client.wait_acks_read(0.2) is False


# --- the fast path: PUBLISH packets taken straight out of the read buffer (issue 16) -----------------------------


def mqtt5_publish(topic: str, mid: int, payload: bytes, qos: int = 1, properties: bytes = b"") -> bytes:
    """Any size: the remaining length as a variable byte integer (MQTT 5 §1.5.5)."""
    body = struct.pack("!H", len(topic)) + topic.encode() + (struct.pack("!H", mid) if qos else b"")
    body += bytes((len(properties),)) + properties + payload
    length, n = bytearray(), len(body)
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes((0x30 | qos << 1,)) + bytes(length) + body


def read_until(client: BufferedClient, received: list[mqtt.MQTTMessage], count: int) -> None:
    for _ in range(1000):  # each loop_read takes what has arrived; the socket pair is local, so this ends at once
        rc = client.loop_read()
        assert rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS, f"loop_read returned {rc}"
        if len(received) >= count:
            return
    raise AssertionError(f"only {len(received)} of {count} messages delivered")


def test_a_stream_of_publishes_split_anywhere_is_delivered_once_each_in_order(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, broker, received = wired
    expected = [(f"sanitation/x/bin/b{i}/telemetry", i, 0 if i % 7 == 0 else 1, b"p" * (i * 13 % 300))
                for i in range(1, 401)]
    stream = b""
    for topic, mid, qos, body in expected:
        stream += mqtt5_publish(topic, mid, body, qos, properties=b"\x03\x00\x01j" if mid % 5 == 0 else b"")
        if mid % 50 == 0:
            stream += bytes((0xD0, 0))  # a PINGRESP among them: paho's reader takes it
    for cut in range(0, len(stream), 997):  # segments that end inside headers and bodies
        broker.sendall(stream[cut:cut + 997])
        client.loop_read()
    read_until(client, received, len(expected))
    assert [(m.topic, m.mid, m.qos, m.payload) for m in received] == [
        (topic, mid if qos else 0, qos, body) for topic, mid, qos, body in expected]


def test_a_malformed_publish_after_good_ones_is_refused_by_paho_after_the_good_ones_are_delivered(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, broker, received = wired
    bad = bytes((0x32, 6)) + struct.pack("!H", 1) + b"t" + struct.pack("!H", 9) + b"\x7f"  # properties past the end
    broker.sendall(mqtt5_publish("a/b", 1, b"x") + mqtt5_publish("a/c", 2, b"y") + bad)
    rc = client.loop_read()
    assert [m.mid for m in received] == [1, 2]
    assert rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # the connection is dropped: the broker redelivers


def test_a_message_from_the_fast_path_fills_every_slot_of_mqtt_message(
        wired: tuple[BufferedClient, socket.socket, list[mqtt.MQTTMessage]]) -> None:
    client, broker, received = wired
    broker.sendall(mqtt5_publish("a/b", 3, b"x") + mqtt5_publish("a/c", 4, b"y"))  # the second: the fast path
    client.loop_read()
    assert [m.mid for m in received] == [3, 4]
    for name in mqtt.MQTTMessage.__slots__:  # an unset slot would raise AttributeError in whoever reads it
        getattr(received[1], name)
    assert (received[1].topic, received[1].dup, received[1].retain) == ("a/c", False, False)
