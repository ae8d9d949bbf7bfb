"""Check a published message against the wire contract in ``schemas/`` — and nothing else.

Used by the tests (every message of every kind and scenario must pass) so the simulator and the
collector can never drift apart: this module reads only ``schemas.topics``, ``schemas.readings`` and
``schemas.hj212``, never the simulator's own models. It is stricter than the collector in one way:
a field the schema does not know is an error here (the collector would keep it in ``extra``), because
for the simulator an unknown field is almost always a misspelt one. Deliberate extras are listed in
``DELIBERATE_EXTRAS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from sanitel.schemas import hj212
from sanitel.schemas.readings import BY_KIND_STREAM, DEFAULT_STREAM, GatewayBatch, GatewayReading, Reading
from sanitel.schemas.topics import DeviceTopic, GatewayTopic, Hj212Topic, SystemTopic, parse_topic

# Fields sent on purpose although no column holds them (they land in `extra`): a CEMS data unit's operating
# state (run/shut_down/off/start_up, always) and its operating-state mark during an outage (MEE announcement
# 2019 No. 50 codes, read by processors/cems_marks.py).
DELIBERATE_EXTRAS: dict[str, frozenset[str]] = {"cems": frozenset({"operating_state", "operating_mark"})}
_COMMON = frozenset({"ts", "seq", "device_id"})
_HJ212_BOOKKEEPING = frozenset({"source", "hj212"})  # keys frame_to_cems_readings adds for the collector


class ContractError(ValueError):
    """A message that breaks the wire contract; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class CheckedReading:
    kind: str
    device_id: str
    stream: str
    reading: Reading
    fields: frozenset[str]


def check_message(topic: str, payload: bytes) -> list[CheckedReading]:
    """The readings a message carries, each validated against its schema; ContractError otherwise."""
    try:
        parsed = parse_topic(topic)
    except ValueError as exc:
        raise ContractError(f"topic {topic!r}: {exc}") from None
    if isinstance(parsed, DeviceTopic):
        return [_device_reading(parsed, payload)]
    if isinstance(parsed, GatewayTopic):
        return _gateway_readings(parsed, payload)
    if isinstance(parsed, SystemTopic):
        raise ContractError(f"topic {topic!r}: sanitel publishes this family itself; a device must not")
    return _hj212_readings(parsed, payload)


def _device_reading(topic: DeviceTopic, payload: bytes) -> CheckedReading:
    try:
        data = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise ContractError(f"{topic.device_id}: payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"{topic.device_id}: a device message is one JSON object, not {type(data).__name__}")
    return _reading(topic.kind, topic.device_id, topic.stream, data)


def _gateway_readings(topic: GatewayTopic, payload: bytes) -> list[CheckedReading]:
    try:
        batch = msgspec.json.decode(payload, type=GatewayBatch)
    except msgspec.DecodeError as exc:
        raise ContractError(f"gateway {topic.gateway_id}: {exc}") from None
    if batch.gateway_id is not None and batch.gateway_id != topic.gateway_id:
        raise ContractError(f"gateway_id {batch.gateway_id!r} differs from the topic's {topic.gateway_id!r}")
    out = []
    for i, item in enumerate(batch.readings):
        try:
            envelope = msgspec.convert(item, GatewayReading)
        except msgspec.ValidationError as exc:
            raise ContractError(f"gateway {topic.gateway_id} readings[{i}]: {exc}") from None
        stream = envelope.stream or DEFAULT_STREAM[envelope.kind]
        fields = {k: v for k, v in item.items() if k not in ("kind", "stream")}
        out.append(_reading(envelope.kind, envelope.device_id, stream, fields))
    return out


def _hj212_readings(topic: Hj212Topic, payload: bytes) -> list[CheckedReading]:
    try:
        frame = hj212.parse_frame(payload)
        if frame.mn != topic.mn:
            raise ContractError(f"frame MN {frame.mn!r} differs from the topic's {topic.mn!r}")
        readings = hj212.frame_to_cems_readings(frame, device_id=topic.mn)
    except hj212.Hj212Error as exc:
        raise ContractError(f"HJ 212 frame from {topic.mn}: {exc.code}: {exc}") from None
    return [_reading("cems", topic.mn, "telemetry", {k: v for k, v in r.items() if k not in _HJ212_BOOKKEEPING})
            for r in readings]


def _reading(kind: str, device_id: str, stream: str, data: dict[str, Any]) -> CheckedReading:
    where = f"{kind} {device_id} {stream}"
    reading_type = BY_KIND_STREAM.get((kind, stream))
    if reading_type is None:
        raise ContractError(f"{where}: no schema for kind {kind!r} on stream {stream!r}")
    unknown = set(data) - set(reading_type.__struct_fields__) - DELIBERATE_EXTRAS.get(kind, frozenset())
    if unknown:
        raise ContractError(f"{where}: fields not in {reading_type.__name__}: {', '.join(sorted(unknown))}")
    if data.get("device_id") not in (None, device_id):
        raise ContractError(f"{where}: device_id {data['device_id']!r} differs from the topic's")
    known = {k: v for k, v in data.items() if k in reading_type.__struct_fields__}
    try:
        reading = msgspec.convert(known, reading_type)
    except msgspec.ValidationError as exc:
        raise ContractError(f"{where}: {exc}") from None
    _check_ts(where, reading.ts)
    return CheckedReading(kind, device_id, stream, reading, frozenset(data))


def _check_ts(where: str, ts: str | int) -> None:
    if isinstance(ts, int):
        if not 946_684_800_000 <= ts <= 32_503_680_000_000:
            raise ContractError(f"{where}: ts {ts} is not epoch milliseconds")
        return
    try:
        value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(f"{where}: ts {ts!r} is not RFC 3339") from None
    if value.tzinfo is None:
        raise ContractError(f"{where}: ts {ts!r} has no offset")


def reading_time(reading: Reading) -> float:
    """A reading's ``ts`` as epoch seconds (for ordering and window checks)."""
    ts = reading.ts
    if isinstance(ts, int):
        return ts / 1000.0
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
