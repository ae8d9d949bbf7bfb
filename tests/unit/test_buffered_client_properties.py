"""The collector's own MQTT PUBLISH parser (ingest/buffered_client.py, issue 16's fast path) never raises on
hostile bytes: property tests over arbitrary packet bodies and arbitrary byte streams split anywhere.

A PUBLISH it cannot parse is left to paho's reader, which refuses it and drops the connection (the broker then
redelivers); what was before it in the stream is delivered, once, in order."""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.ingest.buffered_client import Publish, _Incoming, _publish, _variable_byte_integer
from tests.support.mqtt_tools import socketpair_client

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# PUBLISH at QoS 0 and 1 with every dup/retain flag: the commands the fast path parses
PUBLISH_COMMANDS = st.sampled_from([0x30, 0x31, 0x32, 0x33, 0x38, 0x39, 0x3A, 0x3B])


def remaining_length(n: int) -> bytes:
    """MQTT 5 §1.5.5 variable byte integer."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_reference(command: int, body: bytes) -> tuple[bytes, int, bytes] | None:
    """MQTT 5 §3.3.2 read plainly from a PUBLISH's body: topic, packet identifier (QoS > 0), properties skipped."""
    if len(body) < 3:
        return None
    pos = 2 + int.from_bytes(body[:2], "big")
    topic, mid = body[2:pos], 0
    if command & 0x06:
        if pos + 2 > len(body):
            return None
        mid, pos = int.from_bytes(body[pos:pos + 2], "big"), pos + 2
    length = 0
    for i in range(4):  # the properties' length: at most four bytes
        if pos >= len(body):
            return None
        byte, pos = body[pos], pos + 1
        length |= (byte & 0x7F) << 7 * i
        if not byte & 0x80:
            break
    else:
        return None
    pos += length
    return None if pos > len(body) else (topic, mid, body[pos:])


# bodies near the grammar: a plausible topic length, then arbitrary identifier, property length and payload bytes
NEAR_PUBLISH = st.builds(lambda topic, tail: struct.pack("!H", len(topic)) + topic + tail,
                         st.binary(max_size=20), st.binary(max_size=40))
# ... and with a packet identifier and a small properties length (0-3, or a two-byte one), as brokers send them
WITH_PROPERTIES = st.builds(lambda topic, mid, length, tail: struct.pack("!H", len(topic)) + topic
                            + struct.pack("!H", mid) + length + tail, st.binary(max_size=20), st.integers(0, 65535),
                            st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x03", b"\x81\x00", b"\x80\x01"]),
                            st.binary(max_size=40))


@SETTINGS
@given(command=PUBLISH_COMMANDS, data=st.one_of(st.binary(max_size=600), NEAR_PUBLISH, WITH_PROPERTIES),
       start=st.integers(0, 40),
       cut=st.integers(0, 40))
def test_the_publish_body_parser_never_raises_and_reads_only_its_slice(command: int, data: bytes, start: int,
                                                                       cut: int) -> None:
    end = max(start, len(data) - cut)
    publish = _publish(command, data, start, end)  # the bytes around the slice are the stream's other packets
    got = None if publish is None else (publish[0], publish[2], publish[1])  # (topic, mid, payload)
    assert got == parse_reference(command, data[start:end])
    if publish is not None:
        assert publish[3] == (command & 0x06) >> 1


@SETTINGS
@given(data=st.binary(max_size=8), pos=st.integers(0, 8))
def test_the_variable_byte_integer_reader_never_raises(data: bytes, pos: int) -> None:
    out = _variable_byte_integer(data, pos, len(data))
    if out is not None:
        value, after = out
        assert 0 <= value < 128 ** 4 and pos < after <= min(len(data), pos + 4)


def well_formed(topic: bytes, mid: int, payload: bytes, command: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if command & 0x06 else b"") + b"\x00"
    body += payload
    return bytes((command,)) + remaining_length(len(body)) + body


PACKETS = st.lists(st.one_of(
    # a well-formed PUBLISH (its topic bytes need not be UTF-8: the collector dead-letters those itself)
    st.tuples(st.just("good"), PUBLISH_COMMANDS, st.binary(max_size=30), st.integers(1, 65535),
              st.binary(max_size=300)),
    # a PUBLISH header around an arbitrary body: truncated topics, property lengths past the end, anything
    st.tuples(st.just("junk"), PUBLISH_COMMANDS, st.binary(max_size=0), st.just(0),
              st.one_of(st.binary(max_size=300), NEAR_PUBLISH)),
), min_size=1, max_size=12)


@SETTINGS
@given(packets=PACKETS, chunk=st.integers(1, 700), batched=st.booleans())
def test_a_stream_of_publishes_good_and_malformed_split_anywhere_never_raises(
        packets: list[tuple[str, int, bytes, int, bytes]], chunk: int, batched: bool) -> None:
    """Delivered one by one to ``on_message``, or (``batched``, as the collector takes them) to ``on_publishes``."""
    stream = b"".join(well_formed(topic, mid, payload, command) if kind == "good"
                      else bytes((command,)) + remaining_length(len(payload)) + payload
                      for kind, command, topic, mid, payload in packets)
    with socketpair_client("prop") as (client, broker, received):
        if batched:
            calls: list[int] = []

            def on_publishes(_client: object, _userdata: object, publishes: list[Publish]) -> None:
                calls.append(len(publishes))
                received.extend(_Incoming(*publish) for publish in publishes)

            client.on_publishes = on_publishes
        refused = False
        for cut in range(0, len(stream), chunk):
            broker.sendall(stream[cut:cut + chunk])
            if client.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:  # raises nothing, whatever the bytes
                refused = True  # paho drops the connection here; the broker redelivers what was not acknowledged
                break
    # everything delivered is, in order, a prefix of the packets that parse
    expected = []
    for kind, command, topic, mid, payload in packets:
        if kind != "good":
            break
        expected.append((topic, mid if command & 0x06 else 0, payload))
    got = [(m._topic, m.mid, m.payload) for m in received]
    assert got[:len(expected)] == expected[:len(got)]
    if len(expected) == len(packets):  # all well-formed: every one delivered, once
        assert not refused and got == expected
    if batched:
        assert all(calls) and sum(calls) == len(received)


@SETTINGS
@given(mids=st.lists(st.integers(1, 65535), max_size=50))
def test_a_batch_of_acknowledgements_is_the_bytes_paho_sends_for_each(mids: list[int]) -> None:
    queued: list[bytes] = []

    def capture(command: int, packet: bytes | bytearray, mid: int, qos: int, info: object = None) -> mqtt.MQTTErrorCode:
        queued.append(bytes(packet))  # what paho would write to the socket
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    with socketpair_client("acks") as (client, _broker, _received):
        client._packet_queue = capture  # type: ignore[method-assign]
        client.ack_many(mids)
        ours = b"".join(queued)
        queued.clear()
        for mid in mids:
            mqtt.Client.ack(client, mid, 1)  # paho's own, one PUBACK per call
    assert ours == b"".join(queued)
