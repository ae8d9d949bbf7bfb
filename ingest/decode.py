"""Turn one MQTT message (topic + raw bytes) into typed rows, or into rejections with a reason.

Pure and fast: no I/O. Every way a message can be bad maps to one machine-readable reason code
(`REASONS`) and a message that names the field; a batch with one bad reading among good ones keeps
the good ones and rejects the bad one with its index.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from sanitel.schemas.readings import (
    BY_KIND_STREAM,
    DEFAULT_STREAM,
    GatewayBatch,
    GatewayReading,
    Reading,
    value_fields,
)
from sanitel.schemas.records import Decoded, Rejection, Row
from sanitel.schemas.topics import DEVICE_KINDS, DeviceTopic, GatewayTopic, Hj212Topic, TopicError, parse_topic

REASONS = {
    "payload_too_large": "the message is larger than the limit",
    "not_utf8": "the payload is not UTF-8",
    "invalid_json": "the payload is not JSON (NaN and Infinity are not JSON either)",
    "wrong_shape": "JSON of the wrong shape (object or array of objects expected)",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong type",
    "out_of_range": "a value is outside its physical range",
    "bad_topic": "the topic is outside the grammar",
    "unknown_kind": "the device kind is not one of the five",
    "device_mismatch": "device_id in the payload differs from the topic",
    "bad_timestamp": "ts is not RFC 3339 with an offset nor epoch milliseconds",
    "ts_in_future": "ts is too far in the future",
    "ts_too_old": "ts is before 2000-01-01",
    "unknown_device": "the device is not registered and auto-registration is off",
    "kind_mismatch": "the device is registered as another kind",
    "hj212_unsupported": "HJ 212 frames cannot be decoded by this collector",
    "storage_rejected": "the database refused the row",
}
OLDEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENVELOPE_KEYS = frozenset(("kind", "stream", "device_id"))
_json = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 256 * 1024
    max_future_skew: timedelta = timedelta(minutes=5)


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_FIELDS = {t: value_fields(t) for t in BY_KIND_STREAM.values()}
_FIELD_SETS = {t: frozenset(f) | {"ts", "seq", "device_id"} for t, f in _FIELDS.items()}


def decode_message(topic: str, payload: bytes, received_at: datetime, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode a message; never raises for bad input."""
    out = Decoded()
    try:
        if len(payload) > limits.max_payload_bytes:
            raise _Reject("payload_too_large", f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}")
        try:
            parsed = parse_topic(topic)
        except TopicError as exc:
            raise _Reject(exc.code, str(exc)) from None
        if isinstance(parsed, Hj212Topic):
            _decode_hj212(parsed, payload, received_at, limits, out)
            return out
        if isinstance(parsed, DeviceTopic) and _decode_common_case(parsed, payload, received_at, limits, out):
            return out
        body = _parse_json(payload)
        if isinstance(parsed, DeviceTopic):
            _decode_device_message(parsed, body, received_at, limits, out)
        else:
            _decode_gateway_batch(parsed, body, received_at, limits, out)
    except _Reject as exc:
        kind = parsed.kind if "parsed" in locals() and isinstance(parsed, DeviceTopic) else None
        device = parsed.device_id if "parsed" in locals() and isinstance(parsed, DeviceTopic) else None
        out.rejections.append(Rejection(exc.code, str(exc), None, kind, device))
    return out


def _strict(reading_type: type[Reading]) -> type[Reading]:
    return types.new_class(reading_type.__name__, (reading_type,), {"forbid_unknown_fields": True})


# The common case — valid readings without unknown fields — decodes straight into typed structs, several times
# faster than JSON → dict → struct. Anything else (unknown fields to keep, bad input to explain) takes the
# general path below, which gives the same result for valid input and the precise reason for bad input.
_FAST = {key: msgspec.json.Decoder(_strict(t) | list[_strict(t)])  # type: ignore[misc]  # list[] of a class made at run time
         for key, t in BY_KIND_STREAM.items()}


def _decode_common_case(topic: DeviceTopic, payload: bytes, received_at: datetime, limits: DecodeLimits,
                        out: Decoded) -> bool:
    decoder = _FAST.get((topic.kind, topic.stream))
    if decoder is None:
        return False
    try:
        payload.decode("utf-8")
        decoded = decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    items, indexed = (decoded, True) if isinstance(decoded, list) else ([decoded], False)
    if not items:
        return False
    rows = []
    for i, reading in enumerate(items):
        try:
            rows.append(_reading_to_row(type(reading).__mro__[1], reading, None, topic.device_id, received_at,
                                        limits, i if indexed else None))
        except _Reject:
            return False
    out.rows.extend(rows)
    return True


def _parse_json(payload: bytes) -> Any:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject("not_utf8", f"payload is not UTF-8: byte {exc.start} is invalid") from None
    try:
        return _json.decode(payload)
    except msgspec.DecodeError as exc:
        raise _Reject("invalid_json", f"payload is not valid JSON: {exc}") from None


def _decode_device_message(topic: DeviceTopic, body: Any, received_at: datetime, limits: DecodeLimits,
                           out: Decoded) -> None:
    reading_type = BY_KIND_STREAM.get((topic.kind, topic.stream))
    if reading_type is None:
        raise _Reject("bad_topic", f"{topic.kind} devices do not publish on the {topic.stream!r} stream")
    if isinstance(body, dict):
        items, indexed = [body], False
    elif isinstance(body, list) and body:
        items, indexed = body, True
    else:
        raise _Reject("wrong_shape", "payload must be a JSON object (one reading) or a non-empty array of them")
    for i, item in enumerate(items):
        index = i if indexed else None
        try:
            out.rows.append(_to_row(reading_type, item, topic.device_id, received_at, limits, index))
        except _Reject as exc:
            out.rejections.append(Rejection(exc.code, str(exc), index, topic.kind, topic.device_id))


def _decode_gateway_batch(topic: GatewayTopic, body: Any, received_at: datetime, limits: DecodeLimits,
                          out: Decoded) -> None:
    try:
        batch = msgspec.convert(body, GatewayBatch)
    except msgspec.ValidationError as exc:
        raise _Reject("wrong_shape", f"gateway batch: {exc}") from None
    if batch.gateway_id is not None and batch.gateway_id != topic.gateway_id:
        raise _Reject("device_mismatch", f"gateway_id {batch.gateway_id!r} differs from topic's {topic.gateway_id!r}")
    for i, item in enumerate(batch.readings):
        kind = item.get("kind") if isinstance(item, dict) else None
        device = item.get("device_id") if isinstance(item, dict) else None
        try:
            if isinstance(kind, str) and kind not in DEVICE_KINDS:
                raise _Reject("unknown_kind", f"unknown device kind {kind!r}; expected one of {', '.join(DEVICE_KINDS)}")
            envelope = _convert(item, GatewayReading)
            stream = envelope.stream or DEFAULT_STREAM[envelope.kind]
            reading_type = BY_KIND_STREAM.get((envelope.kind, stream))
            if reading_type is None:
                raise _Reject("bad_topic", f"{envelope.kind} devices do not publish on the {stream!r} stream")
            out.rows.append(_to_row(reading_type, item, envelope.device_id, received_at, limits, i))
        except _Reject as exc:
            out.rejections.append(Rejection(exc.code, f"readings[{i}]: {exc}", i,
                                            kind if isinstance(kind, str) else None,
                                            device if isinstance(device, str) else None))


def _convert(item: Any, reading_type: type) -> Any:
    if not isinstance(item, dict):
        raise _Reject("wrong_shape", f"a reading must be a JSON object, not {type(item).__name__}")
    try:
        return msgspec.convert(item, reading_type)
    except msgspec.ValidationError as exc:
        raise _Reject(_classify(str(exc)), str(exc)) from None


def _classify(message: str) -> str:
    if "missing required field" in message:
        return "missing_field"
    if any(op in message for op in ("<=", ">=", "length", "must match pattern")):
        return "out_of_range"
    if message.startswith("Invalid enum value"):
        return "out_of_range"
    return "wrong_type"


def _to_row(reading_type: type[Reading], item: Any, device_id: str, received_at: datetime, limits: DecodeLimits,
            index: int | None) -> Row:
    reading = _convert(item, reading_type)
    known = _FIELD_SETS[reading_type]
    extra = {k: v for k, v in item.items() if k not in known and k not in _ENVELOPE_KEYS} or None
    return _reading_to_row(reading_type, reading, extra, device_id, received_at, limits, index)


def _reading_to_row(reading_type: type[Reading], reading: Reading, extra: dict[str, Any] | None, device_id: str,
                    received_at: datetime, limits: DecodeLimits, index: int | None) -> Row:
    if reading.device_id is not None and reading.device_id != device_id:
        raise _Reject("device_mismatch", f"device_id {reading.device_id!r} in the payload differs from {device_id!r}")
    ts = parse_device_time(reading.ts)
    if ts > received_at + limits.max_future_skew:
        raise _Reject("ts_in_future", f"ts {ts.isoformat()} is more than {limits.max_future_skew} ahead of receive "
                                      f"time {received_at.isoformat()}; check the device clock")
    if ts < OLDEST_TS:
        raise _Reject("ts_too_old", f"ts {ts.isoformat()} is before 2000-01-01 (epoch milliseconds expected, not seconds)")
    values = (device_id, ts, reading.seq, received_at,
              *[getattr(reading, f) for f in _FIELDS[reading_type]], extra)
    return Row(reading_type.table, reading_type.kind, device_id, ts, values, index)


def parse_device_time(ts: str | int) -> datetime:
    """RFC 3339 with an offset, or epoch milliseconds → aware UTC datetime."""
    if isinstance(ts, int):
        try:
            return _EPOCH + timedelta(milliseconds=ts)
        except OverflowError:
            raise _Reject("bad_timestamp", f"ts {ts} is out of range for epoch milliseconds") from None
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        raise _Reject("bad_timestamp", f"ts {ts!r} is not RFC 3339 (e.g. 2026-11-22T07:00:00.000Z)") from None
    if parsed.tzinfo is None:
        raise _Reject("bad_timestamp", f"ts {ts!r} has no UTC offset; add Z or +08:00")
    return parsed.astimezone(UTC)


def _decode_hj212(topic: Hj212Topic, payload: bytes, received_at: datetime, limits: DecodeLimits,
                  out: Decoded) -> None:
    try:
        from sanitel.schemas import hj212
    except ModuleNotFoundError:
        raise _Reject("hj212_unsupported", "HJ 212 decoding is not available in this build") from None
    from sanitel.schemas.readings import CemsReading

    try:
        frame = hj212.parse_frame(payload)
    except hj212.Hj212Error as exc:
        raise _Reject(f"hj212_{exc.code}", str(exc)) from None
    if frame.mn != topic.mn:
        raise _Reject("device_mismatch", f"frame MN {frame.mn!r} differs from the topic's {topic.mn!r}")
    try:
        readings = hj212.frame_to_cems_readings(frame, device_id=topic.mn)
    except hj212.Hj212Error as exc:
        raise _Reject(f"hj212_{exc.code}", str(exc)) from None
    for i, item in enumerate(readings):
        try:
            row = _to_row(CemsReading, item, topic.mn, received_at, limits, i if len(readings) > 1 else None)
        except _Reject as exc:
            out.rejections.append(Rejection(exc.code, str(exc), i, "cems", topic.mn))
            continue
        row.via_hj212, row.hj212_pw = True, frame.pw
        out.rows.append(row)
