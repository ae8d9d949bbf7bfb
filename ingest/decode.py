"""Turn one MQTT message (topic + raw bytes) into typed rows, or into rejections with a reason.

Pure and fast: no I/O. Every way a message can be bad maps to one machine-readable reason code
(`REASONS`) and a message that names the field; a batch with one bad reading among good ones keeps
the good ones and rejects the bad one with its index.

``decode_message`` never raises. An exception nobody foresaw (a bug) costs the one reading or message it came
from: it becomes an ``internal_error`` rejection naming the exception class and where it was raised, counted in
``sanitel_decode_internal_errors_total{exception=…}``.

What is accepted beyond the published JSON Schemas (docs/ingest.md, "What the decoder accepts"):

- ``ts``: exactly RFC 3339 ``date-time`` or epoch milliseconds (``schemas.timestamps``).
- Integer fields accept integral numbers (``2.0``): JSON Schema Validation 2020-12 §6.1.1, type "integer" is
  "any number with a zero fractional part"; ``2.5`` is ``wrong_type``.
- U+0000 (NUL), which PostgreSQL ``text`` and ``jsonb`` cannot hold, in a free-text field or anywhere in an unknown
  field (names and values): trailing NULs are padding and are removed; any other NUL becomes U+FFFD, and the
  members so changed are kept as received, as JSON text, in ``extra["_raw_json"]``. A NUL in an identifier
  (device_id, point_id, …) is never repaired: the reading is ``out_of_range``.
- Duplicate member names in one JSON object are rejected (``duplicate_key``): RFC 8259 §4 says receivers behave
  unpredictably, and I-JSON (RFC 7493 §2.3) forbids them.
- Lone UTF-16 surrogate escapes (``"\\ud800"``) are ``invalid_json`` (I-JSON, RFC 7493 §2.1; PostgreSQL cannot
  store them either); so is nesting deeper than ``MAX_JSON_DEPTH`` (RFC 8259 §9 lets a parser limit depth).
- Integers of any size are read exactly (RFC 8259 §6), then checked against the field's range.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import msgspec.inspect
from msgspec import Meta

from sanitel.ingest.metrics import DECODE_INTERNAL_ERRORS, HJ212_INVALID_FIELDS, HJ212_UNKNOWN_CODES
from sanitel.schemas import hj212
from sanitel.schemas.hj212_settings import DEFAULT_BASIS, Hj212Basis
from sanitel.schemas.readings import (
    BY_KIND_STREAM,
    DEFAULT_STREAM,
    CemsReading,
    GatewayReading,
    Ident,
    Reading,
    value_fields,
)
from sanitel.schemas.records import Decoded, Rejection, Row
from sanitel.schemas.timestamps import TimestampError, parse_timestamp
from sanitel.schemas.topics import (
    DEVICE_KINDS,
    ID_PATTERN,
    DeviceTopic,
    GatewayTopic,
    Hj212Topic,
    ParsedTopic,
    SystemTopic,
    TopicError,
    parse_topic,
)

REASONS = {
    "payload_too_large": "the message is larger than the limit",
    "not_utf8": "the payload is not UTF-8",
    "invalid_json": "the payload is not JSON (NaN, Infinity, lone surrogate escapes and nesting deeper than 128 "
                    "levels are not accepted either)",
    "duplicate_key": "a JSON object has two members with the same name",
    "wrong_shape": "JSON of the wrong shape (object or array of objects expected)",
    "missing_field": "a required field is absent (also: a truck pickup without point_id or bin_tag, a tip without "
                     "site_id)",
    "wrong_type": "a field has the wrong type",
    "out_of_range": "a value is outside its physical range, or an identifier outside its grammar",
    "bad_topic": "the topic is outside the grammar",
    "unknown_kind": f"the device kind is not one of {', '.join(DEVICE_KINDS)}",
    "device_mismatch": "device_id in the payload differs from the topic",
    "inconsistent_weights": "a weighbridge ticket's net_kg differs from gross_kg − tare_kg by more than 1 kg",
    "bad_timestamp": "ts is neither RFC 3339 with an offset nor epoch milliseconds, or is out of range",
    "ts_in_future": "ts is too far in the future",
    "ts_too_old": "ts is before 2000-01-01",
    "unknown_device": "the device is not registered and auto-registration is off",
    "kind_mismatch": "the device is registered as another kind",
    "not_behind_gateway": "a gateway batch holds a reading of a device not registered behind that gateway",
    "auto_register_limited": "the device is not registered and the collector's auto-registration limit was reached",
    "storage_rejected": "the database refused the row",
    "internal_error": "the decoder failed unexpectedly (a bug): the reason names the exception class",
}
OLDEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_JSON_DEPTH = 128  # objects and arrays, counted from the payload's top level
RAW_KEY = "_raw_json"  # in extra: the members the NUL rule changed, as received (JSON text)
_ENVELOPE_KEYS = frozenset(("kind", "stream", "device_id"))  # stripped from gateway items only
_NO_KEYS: frozenset[str] = frozenset()
_MAX_REASON = 1000  # characters of a rejection reason
_KINDS = frozenset(DEVICE_KINDS)
_ID = re.compile(ID_PATTERN)
_json = msgspec.json.Decoder()
# Parsed topics, by topic: a device sends on the same few topics for its whole life (issue 16: 2.8 µs a message to
# parse again). Bounded: a topic outside the cache is parsed as before; a refused topic is never cached.
_parse_topic_cached = functools.lru_cache(maxsize=1 << 16)(parse_topic)


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 256 * 1024
    max_future_skew: timedelta = timedelta(minutes=5)


@dataclass(slots=True)  # not frozen: one is made per message, and a frozen one costs three times as much to make
class _Context:
    received_at: datetime
    limits: DecodeLimits
    nul: bool = False  # the payload may hold U+0000 in a string: apply the NUL rule
    marked: bool = False  # parsed by _parse_exactly: objects with duplicate names are _DupDicts
    hj212_basis: Hj212Basis = DEFAULT_BASIS  # how an HJ 212 frame's DataTime and concentrations are read


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _DupDict(dict[str, Any]):
    """A JSON object that had duplicate member names (the last value kept, as msgspec does); rejected later,
    where the reading it belongs to is known."""

    __slots__ = ("duplicates",)

    def __init__(self, pairs: dict[str, Any], duplicates: tuple[str, ...]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def _field_groups(reading_type: type[Reading]) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(integer fields, free-text fields, identifier fields) of a reading type, read off its annotations."""
    ints: set[str] = set()
    texts: set[str] = set()
    idents: set[str] = set()
    info = msgspec.inspect.type_info(reading_type)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        field_type = _bare(f.type)
        members = tuple(map(_bare, field_type.types)) if isinstance(field_type, msgspec.inspect.UnionType) \
            else (field_type,)
        strs = [m for m in members if isinstance(m, msgspec.inspect.StrType)]
        if any(isinstance(m, msgspec.inspect.IntType) for m in members):
            ints.add(f.name)  # ts (str | int) is here: it is never repaired, the timestamp grammar decides
        elif strs:
            (idents if any(s.pattern for s in strs) else texts).add(f.name)
    return frozenset(ints), frozenset(texts), frozenset(idents)


def _bare(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type under a description (``Annotated[int, Meta(description=…)]`` is a Metadata around an IntType)."""
    while isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    return t


_FIELDS = {t: value_fields(t) for t in BY_KIND_STREAM.values()}
_FIELD_SETS = {t: frozenset(f) | {"ts", "seq", "device_id"} for t, f in _FIELDS.items()}
_GROUPS = {t: _field_groups(t) for t in BY_KIND_STREAM.values()}


def _values_getter(fields: tuple[str, ...] | list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The reading's value fields as a tuple, in one C call (issue 16: ~26 getattr calls per reading before)."""
    if len(fields) == 1:
        only = fields[0]
        return lambda reading: (getattr(reading, only),)
    if not fields:
        return lambda reading: ()
    return operator.attrgetter(*fields)


_VALUES = {t: _values_getter(f) for t, f in _FIELDS.items()}


def decode_message(topic: str, payload: bytes, received_at: datetime, limits: DecodeLimits = DecodeLimits(),
                   hj212_basis: Hj212Basis = DEFAULT_BASIS) -> Decoded:
    """Decode a message; never raises. Rows, or rejections, or (a topic sanitel itself publishes) ``ignored``.
    ``hj212_basis``: for an HJ 212 frame, the time zone its DataTime is local to and its gas basis (the device's
    registered settings, ``schemas/hj212_settings.py``)."""
    try:
        row = _one_clean_reading(topic, payload, received_at, limits)
        if row is not None:
            return Decoded([row], [])  # positionally: a third cheaper than by keyword
        return _decode(topic, payload, _Context(received_at, limits, hj212_basis=hj212_basis))
    except Exception as exc:  # the last line of defence: a decoder bug costs this message, never the collector
        return Decoded(rejections=[_internal_error(exc, None, None, None)])


def _decode(topic: str, payload: bytes, ctx: _Context) -> Decoded:
    out = Decoded()
    parsed: ParsedTopic | None = None
    try:
        try:
            parsed = _parse_topic_cached(topic)
        except TopicError as exc:
            raise _Reject(exc.code, str(exc)) from None
        if isinstance(parsed, SystemTopic):
            out.ignored = f"sanitation/{{city}}/{parsed.family}/… is published by sanitel itself, not a device"
            return out
        if len(payload) > ctx.limits.max_payload_bytes:
            raise _Reject("payload_too_large",
                          f"payload is {len(payload)} bytes; the limit is {ctx.limits.max_payload_bytes}")
        if isinstance(parsed, Hj212Topic):
            _decode_hj212(parsed, payload, ctx, out)
            return out
        if isinstance(parsed, DeviceTopic) and _decode_common_case(parsed, payload, ctx, out):
            return out
        body, ctx = _parse_json(payload, ctx)
        if isinstance(parsed, DeviceTopic):
            _decode_device_message(parsed, body, ctx, out)
        else:
            _decode_gateway_batch(parsed, body, ctx, out)
    except _Reject as exc:
        out.rows.clear()
        out.rejections.clear()
        kind, device = _topic_device(parsed)
        out.rejections.append(_rejection(exc.code, str(exc), None, kind, device))
    return out


def _topic_device(parsed: ParsedTopic | None) -> tuple[str | None, str | None]:
    if isinstance(parsed, DeviceTopic):
        return parsed.kind, parsed.device_id
    if isinstance(parsed, Hj212Topic):
        return "cems", parsed.mn
    return None, None


def _rejection(code: str, reason: str, index: int | None, kind: object, device: object) -> Rejection:
    """A rejection whose text fields the dead-letter table can always store: no NUL in the reason, a bounded
    reason, and kind and device_id only when they are valid (a label value or an id never comes from junk)."""
    if "\x00" in reason:
        reason = reason.replace("\x00", "\\x00")
    if len(reason) > _MAX_REASON:
        reason = f"{reason[:_MAX_REASON]}…"
    return Rejection(code, reason, index,
                     kind if isinstance(kind, str) and kind in _KINDS else None,
                     device if isinstance(device, str) and _ID.fullmatch(device) else None)


def _internal_error(exc: Exception, index: int | None, kind: object, device: object) -> Rejection:
    name = type(exc).__name__
    DECODE_INTERNAL_ERRORS.labels(name).inc()  # label values: exception class names, a bounded set
    try:
        detail = str(exc)
    except Exception:  # an exception whose message cannot be rendered is still reported by its class
        detail = "(message not renderable)"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:  # the innermost frame: where it was raised
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None  # (traceback.extract_tb would read source files)
    where = f" at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name}" if tb and code else ""
    return _rejection("internal_error", f"{name}: {detail[:300]}{where} (a decoder bug: please report it with "
                                        "this dead letter)", index, kind, device)


def _strict(reading_type: type[Reading]) -> type[Reading]:
    return types.new_class(reading_type.__name__, (reading_type,), {"forbid_unknown_fields": True})


# The common case — valid readings without unknown fields — decodes straight into typed structs, several times
# faster than JSON → dict → struct. Anything else (unknown fields to keep, NUL to repair, integral floats, duplicate
# names, bad input to explain) takes the general path below, which gives the same result for valid input and the
# precise reason for bad input.
@dataclass(frozen=True, slots=True)
class _CleanReading:
    """How one clean reading of a (kind, stream) is read in one pass (``_one_clean_reading``)."""

    decoder: msgspec.json.Decoder[Reading]  # one object of the reading's type, unknown fields refused
    reading_type: type[Reading]
    identifiers: tuple[str, ...]  # fields with an identifier grammar
    defaults: tuple[tuple[int, Any], ...]  # (position in values, default) of value fields whose default is not None


# The fast path reads a reading's fields with one ``msgspec.structs.astuple`` (0.4-0.5 µs a message less than the
# ``attrgetter`` of its ~25 value fields, issue 16), which gives them in the struct's own order. For every reading
# type today that is its value fields in declaration order, then the base class's ts, seq and device_id. It is
# checked here, for every type, so that a schema change that moves them fails at import instead of shifting columns.
_COMMON_LAST = ("ts", "seq", "device_id")
_astuple = msgspec.structs.astuple


def _clean_reading(reading_type: type[Reading]) -> _CleanReading:
    strict = _strict(reading_type)
    if strict.__struct_fields__ != (*_FIELDS[reading_type], *_COMMON_LAST):
        raise TypeError(f"{reading_type.__name__}'s fields are not (value fields…, {', '.join(_COMMON_LAST)}), the "
                        "order the fast path reads them in (ingest/decode.py _one_clean_reading)")
    defaults = {f.name: f.default for f in msgspec.structs.fields(reading_type)}
    return _CleanReading(
        msgspec.json.Decoder(strict), reading_type, tuple(sorted(_GROUPS[reading_type][2])),
        tuple((i, defaults[name]) for i, name in enumerate(_FIELDS[reading_type])
              if defaults[name] not in (None, msgspec.NODEFAULT)))


_CLEAN = {key: _clean_reading(t) for key, t in BY_KIND_STREAM.items()}
_FAST_LISTS = {key: msgspec.json.Decoder(list[_strict(t)])  # type: ignore[misc]  # list[] of a class made at run time
               for key, t in BY_KIND_STREAM.items()}


def _one_clean_reading(topic: str, payload: bytes, received_at: datetime, limits: DecodeLimits) -> Row | None:
    """The row of the message nearly every device sends — one reading on its own topic, valid, no unknown field —
    in one pass (issue 16: 19 → 14 µs a message on the bench machine); None for anything else, which the general
    path then decodes, accepts or rejects with its reason. Each check here only asks "is this clean?", in the
    order of ``_reading_to_row``'s rules; tests/unit/test_decode_fast_path.py holds both paths to one answer."""
    try:
        parsed = _parse_topic_cached(topic)
    except TopicError:
        return None
    if type(parsed) is not DeviceTopic:
        return None
    plan = _CLEAN.get((parsed.kind, parsed.stream))
    if plan is None or len(payload) > limits.max_payload_bytes or b"\\u0000" in payload:
        return None
    try:
        reading = plan.decoder.decode(payload)  # (msgspec refuses invalid UTF-8 in strings, and anywhere else)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    fields = _astuple(reading)  # (value fields…, ts, seq, device_id): checked in _clean_reading
    raw_ts, seq, sent_device_id = fields[-3:]
    device_id = parsed.device_id
    # every member name: ts, seq unless 0 (its default: sent or not), device_id, and the value fields set — the
    # fields not None, less seq when 0 (ts and seq are never None)
    members = len(fields) - fields.count(None) - (seq == 0)
    for i, default in plan.defaults:
        members -= fields[i] == default
    if not _names_all_kept(payload, members) and _has_duplicates(payload, len(_json.decode(payload))):
        return None
    if sent_device_id is not None and sent_device_id != device_id:
        return None
    for name in plan.identifiers:
        value = getattr(reading, name)
        if value is not None and value.endswith("\n"):
            return None
    if reading.problem() is not None:
        return None
    try:
        ts = parse_timestamp(raw_ts)
    except TimestampError:
        return None
    if ts > received_at + limits.max_future_skew or ts < OLDEST_TS:
        return None
    reading_type = plan.reading_type
    return Row(reading_type.table, reading_type.kind, device_id, ts,
               (device_id, ts, seq, received_at, *fields[:-3], None))


def _names_all_kept(payload: bytes, members_at_least: int) -> bool:
    """Whether the typed decode kept every member name of the JSON text, counted in C without a second parse:
    when no quote is followed by whitespace every name is written ``"…":``, so ``":`` counts every name, and more
    only when one sits inside a string. Names counted ≥ names ≥ distinct names ≥ ``members_at_least``: when the first
    equals the last, no name came twice. False (a member sent as null or as its default, a ``\\":`` inside a string)
    leaves it to the exact count."""
    return payload.count(b'":') == members_at_least and not _QUOTE_SPACE.search(payload)


def _decode_common_case(topic: DeviceTopic, payload: bytes, ctx: _Context, out: Decoded) -> bool:
    """A list of clean readings on a device topic (one reading: ``_one_clean_reading``)."""
    decoder = _FAST_LISTS.get((topic.kind, topic.stream))
    if decoder is None or b"\\u0000" in payload:  # a NUL to repair: the general path
        return False
    try:
        payload.decode("utf-8")
        items = decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    if not items:
        return False
    generic = _json.decode(payload)  # typed items are flat: the names kept are the members of each object
    if _has_duplicates(payload, sum(map(len, generic))):
        return False  # the general path says which reading has them
    rows = []
    for i, reading in enumerate(items):
        try:
            rows.append(_reading_to_row(type(reading).__mro__[1], reading, None, topic.device_id, ctx, i))
        except _Reject:
            return False
    out.rows.extend(rows)
    return True


# --- JSON -----------------------------------------------------------------------------------------------------

# Every string token of a JSON text, with the ':' after it when it is a member name. On valid JSON this tokenises
# exactly, in linear time: each string is consumed whole, so a match always starts at an opening quote. Only ever
# run on JSON a parser has accepted: on an unterminated string with escaped quotes it would try every quote.
_QUOTE_SPACE = re.compile(rb'"[ \t\n\r]')  # JSON whitespace (RFC 8259 §2) after a quote
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"\s*(:?)', re.DOTALL)


def _names_in_text(payload: bytes) -> int:
    """How many member names the JSON text holds, duplicates included (counted on the bytes, in C)."""
    return _STRINGS.findall(payload).count(b":")


def _shape(body: Any) -> tuple[int, int]:
    """(member names the parsed value kept — a duplicate name collapses into one —, nesting depth)."""
    if type(body) is dict and not any(isinstance(v, (dict, list)) for v in body.values()):
        return len(body), 1  # one flat reading: the common case
    members = depth = 0
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:  # iterative: the depth is what is being measured
        value, level = stack.pop()
        if isinstance(value, dict):
            members += len(value)
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        depth = max(depth, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return members, depth


def _has_duplicates(payload: bytes, unique_names: int) -> bool:
    """Whether the JSON text names a member more often than the parsed value (``unique_names`` members) kept."""
    # The common case in C: without a quote followed by whitespace, every name is written `"…":`, so counting `":`
    # finds every name, and more (a `\":` inside a string) only sends the payload to the exact count.
    if payload.count(b'":') == unique_names and not _QUOTE_SPACE.search(payload):
        return False
    return _names_in_text(payload) != unique_names


def _parse_json(payload: bytes, ctx: _Context) -> tuple[Any, _Context]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject("not_utf8", f"payload is not UTF-8: byte {exc.start} is invalid") from None
    exact = False
    try:
        body = _json.decode(payload)
    except RecursionError:
        raise _Reject("invalid_json", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except msgspec.ValidationError as exc:  # before DecodeError, its base class
        if not str(exc).startswith("Integer value out of range"):
            raise _Reject("invalid_json", f"payload is not valid JSON: {exc}") from None
        exact = True  # an integer beyond 64 bits is valid JSON (RFC 8259 §6): read it exactly, judge it later
    except msgspec.DecodeError as exc:
        raise _Reject("invalid_json", f"payload is not valid JSON: {exc}") from None
    if exact:  # msgspec stopped at the integer: the exact parse judges the rest (and _names_in_text needs valid JSON)
        body = _parse_exactly(text)
    members, depth = _shape(body)
    if depth > MAX_JSON_DEPTH:
        raise _Reject("invalid_json", f"JSON nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    duplicates = _has_duplicates(payload, members)
    if duplicates and not exact:
        body = _parse_exactly(text)
    nul = b"\\u0000" in payload
    if nul or duplicates or exact:
        ctx = _Context(ctx.received_at, ctx.limits, nul=nul, marked=duplicates or exact)
    return body, ctx


def _parse_exactly(text: str) -> Any:
    """The slow, exact parse: integers of any size, objects with duplicate names marked (``_DupDict``). Refuses
    what msgspec refuses (NaN, Infinity, numbers beyond a double, lone surrogates)."""
    try:
        body = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_finite_float)
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # lone surrogates ("\ud800") cannot be encoded
    except RecursionError:
        raise _Reject("invalid_json", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeEncodeError:
        raise _Reject("invalid_json", "payload is not valid JSON: a string holds a lone UTF-16 surrogate "
                                      "escape (RFC 7493 §2.1)") from None
    except ValueError as exc:
        raise _Reject("invalid_json", f"payload is not valid JSON: {str(exc)[:200]}") from None
    return body


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) == len(pairs):
        return members
    seen: set[str] = set()
    duplicates: dict[str, None] = {}
    for name, _ in pairs:
        if name in seen:
            duplicates[name] = None
        seen.add(name)
    return _DupDict(members, tuple(duplicates))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range for a double")
    return value


def _no_duplicates(value: object, where: str) -> None:
    if isinstance(value, _DupDict):
        names = ", ".join(repr(n) for n in value.duplicates[:5])
        raise _Reject("duplicate_key", f"{where} has more than one member named {names}; a JSON object's names "
                                       "must be unique (RFC 8259 §4, RFC 7493 §2.3)")


# --- messages -------------------------------------------------------------------------------------------------

def _decode_device_message(topic: DeviceTopic, body: Any, ctx: _Context, out: Decoded) -> None:
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
            out.rows.append(_to_row(reading_type, item, topic.device_id, ctx, index, envelope=False))
        except _Reject as exc:
            out.rejections.append(_rejection(exc.code, str(exc), index, topic.kind, topic.device_id))
        except Exception as exc:  # a decoder bug costs this reading, not the others
            out.rejections.append(_internal_error(exc, index, topic.kind, topic.device_id))


class _BatchEnvelope(msgspec.Struct, kw_only=True):
    """``GatewayBatch`` (the published schema) with its items left unchecked: each item is judged on its own, so
    an item that is not an object is that item's ``wrong_shape``, not the batch's. A unit test keeps the two
    envelopes' limits the same."""

    readings: Annotated[list[Any], Meta(min_length=1, max_length=10_000)]
    gateway_id: Ident | None = None


def _decode_gateway_batch(topic: GatewayTopic, body: Any, ctx: _Context, out: Decoded) -> None:
    _no_duplicates(body, "the batch object")
    try:
        batch = msgspec.convert(body, _BatchEnvelope)
    except msgspec.ValidationError as exc:
        raise _Reject("wrong_shape", f"gateway batch: {exc}") from None
    if batch.gateway_id is not None and batch.gateway_id != topic.gateway_id:
        raise _Reject("device_mismatch", f"gateway_id {batch.gateway_id!r} differs from topic's {topic.gateway_id!r}")
    items = batch.readings  # the decoded values themselves (``Any`` is not copied): duplicate-name marks survive
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, dict) else None
        device = item.get("device_id") if isinstance(item, dict) else None
        try:
            _no_duplicates(item, "the reading")
            if isinstance(kind, str) and kind not in _KINDS:
                raise _Reject("unknown_kind",
                              f"unknown device kind {kind[:64]!r}; expected one of {', '.join(DEVICE_KINDS)}")
            envelope = _convert(item, GatewayReading)
            if envelope.device_id.endswith("\n"):
                raise _Reject("out_of_range", f"device_id {envelope.device_id!r} must match {ID_PATTERN}")
            stream = envelope.stream or DEFAULT_STREAM[envelope.kind]
            reading_type = BY_KIND_STREAM.get((envelope.kind, stream))
            if reading_type is None:
                raise _Reject("bad_topic", f"{envelope.kind} devices do not publish on the {stream!r} stream")
            row = _to_row(reading_type, item, envelope.device_id, ctx, i, envelope=True)
            row.gateway_id = topic.gateway_id  # the writer accepts it only for a device registered behind this gateway
            out.rows.append(row)
        except _Reject as exc:
            out.rejections.append(_rejection(exc.code, f"readings[{i}]: {exc}", i, kind, device))
        except Exception as exc:  # a decoder bug costs this reading, not the others
            out.rejections.append(_internal_error(exc, i, kind, device))


def _convert(item: Any, reading_type: type) -> Any:
    if not isinstance(item, dict):
        raise _Reject("wrong_shape", f"a reading must be a JSON object, not {_json_type(item)}")
    try:
        return msgspec.convert(item, reading_type)
    except msgspec.ValidationError as exc:
        raise _Reject(_classify(str(exc)), str(exc)) from None


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null")


def _classify(message: str) -> str:
    if "missing required field" in message:
        return "missing_field"
    if any(op in message for op in ("<=", ">=", "length", "must match pattern", "matching regex", "out of range")):
        return "out_of_range"
    if message.startswith("Invalid enum value"):
        return "out_of_range"
    return "wrong_type"


# --- one reading ----------------------------------------------------------------------------------------------

def _to_row(reading_type: type[Reading], item: Any, device_id: str, ctx: _Context, index: int | None, *,
            envelope: bool) -> Row:
    """A reading (a decoded JSON object) → a row. ``envelope``: a gateway item, whose kind, stream and device_id
    are the batch's addressing and not kept in ``extra``; on a device topic they are ordinary unknown fields."""
    if not isinstance(item, dict):
        raise _Reject("wrong_shape", f"a reading must be a JSON object, not {_json_type(item)}")
    _no_duplicates(item, "the reading")
    ints, texts, _ = _GROUPS[reading_type]
    fixed: dict[str, Any] = {}
    originals: dict[str, Any] = {}  # members the NUL rule changed, as received
    for name in ints:  # JSON Schema 2020-12: 2.0 is an integer
        value = item.get(name)
        if type(value) is float and value.is_integer():
            fixed[name] = int(value)
    if ctx.nul:
        for name in texts:
            value = item.get(name)
            if type(value) is str and "\x00" in value:
                fixed[name], changed = _clean_text(value)
                if changed:
                    originals[name] = value
    reading = _convert({**item, **fixed} if fixed else item, reading_type)
    known = _FIELD_SETS[reading_type]
    skip = _ENVELOPE_KEYS if envelope else _NO_KEYS
    if ctx.nul or ctx.marked:
        extra = _clean_extra(item, known, skip, originals)
    else:
        extra = {k: v for k, v in item.items() if k not in known and k not in skip}
    if originals:
        if RAW_KEY in extra and RAW_KEY not in originals:
            originals[RAW_KEY] = item.get(RAW_KEY, extra[RAW_KEY])  # the device's own member of that name
        extra[RAW_KEY] = json.dumps(originals, ensure_ascii=False, separators=(",", ":"))
    return _reading_to_row(reading_type, reading, extra or None, device_id, ctx, index)


def _clean_text(text: str) -> tuple[str, bool]:
    """The NUL rule for one string: trailing NULs (padding) removed, any other NUL → U+FFFD. True when a NUL other
    than padding was replaced (the original must then be kept)."""
    stripped = text.rstrip("\x00")
    if "\x00" in stripped:
        return stripped.replace("\x00", "\ufffd"), True
    return stripped, False


def _clean_extra(item: dict[str, Any], known: frozenset[str], skip: frozenset[str],
                 originals: dict[str, Any]) -> dict[str, Any]:
    """The unknown members of a reading with the NUL rule applied to names and values at any depth; a member it
    changed beyond padding, or whose repaired name collides with another, is also kept as received in
    ``originals``."""
    extra: dict[str, Any] = {}
    for name, value in item.items():
        if name in known or name in skip:
            continue
        clean_name, name_changed = _clean_text(name) if "\x00" in name else (name, False)
        clean_value, value_changed = _clean_value(value)
        if clean_name != name and (clean_name in known or clean_name in skip or clean_name in item
                                   or clean_name in extra):
            originals[name] = value  # its repaired name is taken: kept as received only
            continue
        if name_changed or value_changed:
            originals[name] = value
        extra[clean_name] = clean_value
    return extra


def _clean_value(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        return _clean_text(value) if "\x00" in value else (value, False)
    if isinstance(value, dict):
        _no_duplicates(value, "an object inside the reading")
        out: dict[str, Any] = {}
        changed = False
        for name, member in value.items():
            clean_name, name_changed = _clean_text(name) if "\x00" in name else (name, False)
            clean_member, member_changed = _clean_value(member)
            if clean_name in out or (clean_name != name and clean_name in value):
                changed = True  # two names repair to one: the original member keeps both
                continue
            changed = changed or name_changed or member_changed
            out[clean_name] = clean_member
        return out, changed
    if isinstance(value, list):
        cleaned = [_clean_value(v) for v in value]  # depth is bounded by MAX_JSON_DEPTH
        return [v for v, _ in cleaned], any(c for _, c in cleaned)
    return value, False


def _reading_to_row(reading_type: type[Reading], reading: Reading, extra: dict[str, Any] | None, device_id: str,
                    ctx: _Context, index: int | None) -> Row:
    if reading.device_id is not None and reading.device_id != device_id:
        raise _Reject("device_mismatch", f"device_id {reading.device_id!r} in the payload differs from {device_id!r}")
    for name in _GROUPS[reading_type][2]:  # Python's "$" also matches before a final newline; ECMA-262's does not
        value = getattr(reading, name)
        if value is not None and value.endswith("\n"):
            raise _Reject("out_of_range", f"{name} {value!r} must match {ID_PATTERN}")
    problem = reading.problem()  # rules across fields (schemas.readings), e.g. a weighbridge's net = gross − tare
    if problem is not None:
        raise _Reject(*problem)
    ts = parse_device_time(reading.ts)
    limits = ctx.limits
    if ts > ctx.received_at + limits.max_future_skew:
        raise _Reject("ts_in_future", f"ts {ts.isoformat()} is more than {limits.max_future_skew} ahead of receive "
                                      f"time {ctx.received_at.isoformat()}; check the device clock")
    if ts < OLDEST_TS:
        raise _Reject("ts_too_old", f"ts {ts.isoformat()} is before 2000-01-01 (epoch milliseconds expected, not seconds)")
    values = (device_id, ts, reading.seq, ctx.received_at, *_VALUES[reading_type](reading), extra)
    return Row(reading_type.table, reading_type.kind, device_id, ts, values, index)


def parse_device_time(ts: str | int) -> datetime:
    """A reading's ``ts`` → aware UTC datetime, by the one shared grammar (``schemas.timestamps``)."""
    try:
        return parse_timestamp(ts)
    except TimestampError as exc:
        raise _Reject("bad_timestamp", str(exc)) from None


# --- HJ 212 -----------------------------------------------------------------------------------------------------

def _decode_hj212(topic: Hj212Topic, payload: bytes, ctx: _Context, out: Decoded) -> None:
    try:
        frame = hj212.parse_frame(payload)
    except hj212.Hj212Error as exc:
        raise _Reject(f"hj212_{exc.code}", str(exc)) from None
    if frame.mn != topic.mn:
        raise _Reject("device_mismatch", f"frame MN {frame.mn!r} differs from the topic's {topic.mn!r}")
    try:
        conversion = hj212.convert_frame(frame, device_id=topic.mn, tz=ctx.hj212_basis.tz,
                                         gas_is_dry=ctx.hj212_basis.gas_is_dry)
    except hj212.Hj212Error as exc:
        raise _Reject(f"hj212_{exc.code}", str(exc)) from None
    readings = conversion.readings
    # the raw values are kept in the reading's extra; the counters tell operators a data unit sends them
    HJ212_UNKNOWN_CODES.inc(len(conversion.unknown_codes))
    for column in conversion.invalid_fields:
        HJ212_INVALID_FIELDS.labels(column).inc()
    # HJ 212 is ASCII, and NUL is ASCII: a raw NUL byte in a field reaches the readings' strings
    item_ctx = _Context(ctx.received_at, ctx.limits, nul=b"\x00" in payload)
    for i, item in enumerate(readings):
        try:
            row = _to_row(CemsReading, item, topic.mn, item_ctx, i if len(readings) > 1 else None, envelope=False)
        except _Reject as exc:
            out.rejections.append(_rejection(exc.code, str(exc), i, "cems", topic.mn))
            continue
        except Exception as exc:  # a decoder bug costs this reading, not the others
            out.rejections.append(_internal_error(exc, i, "cems", topic.mn))
            continue
        row.via_hj212, row.hj212_pw = True, frame.pw
        out.rows.append(row)
