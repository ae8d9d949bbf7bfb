"""The one-pass decode of the common message (``ingest.decode._one_clean_reading``, issue 16) gives exactly what the
general path gives, and takes every clean reading the simulators send.

The fast path asks only "is this one clean reading?" and leaves everything else — and every rejection — to the
general path. So the property is equality with the general path alone (``_decode``): on the simulators' own clean
messages of every kind, each mutated the ways that must send it to the general path (a member null, sent as its
default or twice, a device_id, an unknown member, a time out of bounds, a value out of range, whitespace), and on
schema-shaped readings with fuzzed values. The last test shows the fast path is really taken, which equality alone
cannot tell.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from sanitel.ingest.decode import _Context, _decode, _one_clean_reading, decode_message
from sanitel.schemas.readings import BY_KIND_STREAM
from sanitel.schemas.records import Decoded
from sanitel.schemas.topics import DeviceTopic, parse_topic
from tests.support import simulator_runs as fixtures
from tests.unit.test_decode_properties import FAST, LIMITS, Obj, device_messages, encoded


def general(topic: str, payload: bytes, received_at: datetime) -> Decoded:
    return _decode(topic, payload, _Context(received_at, LIMITS))


@cache
def clean_messages() -> tuple[tuple[str, bytes, datetime], ...]:
    """The demo day's messages of one reading on a device topic, eight of each kind and stream, received when sent,
    without the members the schema does not know (the CEMS simulator sends ``operating_state``)."""
    taken: Counter[tuple[str, str]] = Counter()
    out = []
    for topic, payload, sent in fixtures.demo_day():
        parsed = parse_topic(topic)
        if not isinstance(parsed, DeviceTopic) or not payload.startswith(b"{"):
            continue
        key = (parsed.kind, parsed.stream)
        if taken[key] < 8:
            taken[key] += 1
            known = BY_KIND_STREAM[key].__struct_fields__
            body = {name: value for name, value in json.loads(payload).items() if name in known}
            out.append((topic, json.dumps(body, separators=(",", ":")).encode(), datetime.fromtimestamp(sent, UTC)))
    assert set(taken) == set(BY_KIND_STREAM), f"no message of {set(BY_KIND_STREAM) - set(taken)}"
    return tuple(out)


def _mutate(pairs: list[tuple[str, Any]], how: str, pick: int, device: str) -> list[tuple[str, Any]]:
    name, value = pairs[pick % len(pairs)]
    if how == "null":
        pairs[pick % len(pairs)] = (name, None)
    elif how == "twice, same value":
        pairs.append((name, value))
    elif how == "twice, another value":
        pairs.insert(0, (name, "x" if not isinstance(value, str) else 1))
    elif how == "seq 0":
        pairs = [p for p in pairs if p[0] != "seq"] + [("seq", 0)]
    elif how == "seq left out":
        pairs = [p for p in pairs if p[0] != "seq"]
    elif how == "own device_id":
        pairs.append(("device_id", device))
    elif how == "another device_id":
        pairs.append(("device_id", device + "x"))
    elif how == "unknown member":
        pairs.append(("fw", "2.1"))
    elif how == "an hour ahead":
        pairs = [("ts", "2099-01-01T00:00:00Z") if p[0] == "ts" else p for p in pairs]
    elif how == "before 2000":
        pairs = [("ts", "1999-12-31T23:59:59Z") if p[0] == "ts" else p for p in pairs]
    elif how == "epoch milliseconds":
        pairs = [("ts", 1_795_300_000_000) if p[0] == "ts" else p for p in pairs]
    elif how == "out of range":
        pairs[pick % len(pairs)] = (name, value + "\n" if isinstance(value, str) else 10**12)
    elif how == "quote in a string":
        pairs.append(("note\":", 1))
    return pairs


MUTATIONS = ["none", "null", "twice, same value", "twice, another value", "seq 0", "seq left out", "own device_id",
             "another device_id", "unknown member", "an hour ahead", "before 2000", "epoch milliseconds",
             "out of range", "quote in a string"]


@st.composite
def mutated_clean_messages(draw: st.DrawFn) -> tuple[str, bytes, datetime]:
    topic, payload, received = draw(st.sampled_from(clean_messages()))
    pairs = list(json.loads(payload).items())
    for how in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=2)):
        event(how)
        pairs = _mutate(pairs, how, draw(st.integers(0, 40)), topic.split("/")[3])
    text = encoded(Obj(tuple(pairs)), True)
    gap = draw(st.sampled_from([b"", b"", b" ", b"\t", b"\n "]))  # whitespace between tokens, now and then
    if gap:
        text = text.replace(b'":', b'"' + gap + b":" + gap).replace(b",", b"," + gap)
    return topic, text, received


@FAST
@given(mutated_clean_messages())
def test_clean_messages_and_their_mutants_read_as_the_general_path_reads_them(
        message: tuple[str, bytes, datetime]) -> None:
    topic, payload, received = message
    event("fast path" if _one_clean_reading(topic, payload, received, LIMITS) is not None else "general path")
    assert decode_message(topic, payload, received, LIMITS) == general(topic, payload, received)


@FAST
@given(device_messages())
def test_fuzzed_device_messages_read_as_the_general_path_reads_them(message: tuple[str, bytes]) -> None:
    topic, payload = message
    received = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    assert decode_message(topic, payload, received, LIMITS) == general(topic, payload, received)


def _variants(pairs: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Every member in turn null, sent twice, and (text) with a trailing newline — which Python's ``$`` lets an
    identifier pattern accept —, each also with seq left out or sent as 0 (its default, which the name count must
    not take for a member sent); and a weighbridge ticket whose net is not gross − tare."""
    out = []
    for i, (name, value) in enumerate(pairs):
        out.append([*pairs[:i], (name, None), *pairs[i + 1:]])
        out.append([*pairs, (name, value)])
        if isinstance(value, str):
            out.append([*pairs[:i], (name, value + "\n"), *pairs[i + 1:]])
    for seq in ([], [("seq", 0)]):
        without = [p for p in pairs if p[0] != "seq"] + seq
        out += [[*without, member] for member in without]
    if dict(pairs).get("net_kg") is not None:
        out.append([(n, v + 5 if n == "net_kg" else v) for n, v in pairs])
    return out


def test_every_member_sent_null_twice_or_with_a_newline_reads_as_the_general_path_reads_it() -> None:
    for topic, payload, received in clean_messages():
        for pairs in _variants(list(json.loads(payload).items())):
            text = encoded(Obj(tuple(pairs)), True)
            assert decode_message(topic, text, received, LIMITS) == general(topic, text, received), (topic, text)


def test_every_clean_reading_the_simulators_send_takes_the_fast_path() -> None:
    kinds: Counter[str] = Counter()
    for topic, payload, received in clean_messages():
        expected = general(topic, payload, received)
        assert len(expected.rows) == 1 and not expected.rejections, (topic, payload)
        assert _one_clean_reading(topic, payload, received, LIMITS) == expected.rows[0], (topic, payload)
        named = payload[:-1] + b',"device_id":"%s"}' % topic.split("/")[3].encode()  # as many gateways send it
        assert _one_clean_reading(topic, named, received, LIMITS) == expected.rows[0], (topic, named)
        kinds[topic.split("/")[2]] += 1
    assert set(kinds) == {kind for kind, _ in BY_KIND_STREAM}


def test_a_reading_type_whose_fields_the_fast_path_would_misread_fails_at_import(monkeypatch: Any) -> None:
    """The fast path takes a reading's fields positionally (``msgspec.structs.astuple``): value fields, then ts, seq,
    device_id. A type in another order must be refused when the decoders are built, not shift a column."""
    from sanitel.ingest import decode
    from sanitel.schemas.readings import SweeperTelemetry

    assert all(decode._clean_reading(t) for t in BY_KIND_STREAM.values())  # today's types are all in that order
    monkeypatch.setitem(decode._FIELDS, SweeperTelemetry, tuple(reversed(decode._FIELDS[SweeperTelemetry])))
    with pytest.raises(TypeError, match="SweeperTelemetry's fields are not"):
        decode._clean_reading(SweeperTelemetry)
