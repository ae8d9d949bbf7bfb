"""decode_message never raises (issue 11): property tests over arbitrary bytes on arbitrary topics, arbitrary
JSON (deep nesting, extreme dates and numbers, NUL, lone surrogates, duplicate names, huge arrays), readings
shaped like every kind/stream's schema with fuzzed values, gateway batches and HJ 212 frames.

For every input: a ``Decoded`` comes back, with rows or rejections (never both empty, unless the topic is one
sanitel itself publishes), every reason code documented and none ``internal_error`` (the safety net catching
something is still a bug to find here), and nothing PostgreSQL cannot store (NUL) in a row or a rejection.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import msgspec.inspect
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sanitel.ingest.decode import OLDEST_TS, REASONS, DecodeLimits, decode_message
from sanitel.schemas.readings import BY_KIND_STREAM, Reading
from sanitel.schemas.records import Decoded
from sanitel.schemas.topics import DEVICE_KINDS, ID_PATTERN, STREAMS

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = DecodeLimits()
ID = re.compile(ID_PATTERN)
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def check(topic: str, payload: bytes) -> Decoded:
    out = decode_message(topic, payload, NOW, LIMITS)
    assert isinstance(out, Decoded)
    if out.ignored is not None:
        assert not out.rows and not out.rejections
        return out
    assert out.rows or out.rejections, "neither a row nor a rejection"
    event("rows" if out.rows else "no rows")  # --hypothesis-show-statistics: what the examples reached
    for code in sorted({r.reason_code for r in out.rejections}):
        event(code)
    for r in out.rejections:
        assert r.reason_code in REASONS or r.reason_code.startswith("hj212_"), r.reason_code
        assert r.reason_code != "internal_error", r.reason
        assert r.reason and "\x00" not in r.reason and len(r.reason) <= 1001
        assert r.kind is None or r.kind in DEVICE_KINDS
        assert r.device_id is None or ID.fullmatch(r.device_id)
    for row in out.rows:
        assert ID.fullmatch(row.device_id), row.device_id
        assert OLDEST_TS <= row.ts <= NOW + LIMITS.max_future_skew and row.ts.tzinfo is not None
        for value in row.values:
            assert storable(value), value
        extra = row.values[-1]
        if extra is not None:
            json.dumps(extra)  # what the writer's Jsonb does
    return out


def storable(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(storable(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, datetime))


# --- building blocks -------------------------------------------------------------------------------------------

KINDS = [*DEVICE_KINDS, "gateway", "alerts", "tractor", ""]
TOPIC_STREAMS = [*STREAMS, "batch", "hj212", "critical", ""]
valid_topics = st.builds(lambda k, d, s: f"sanitation/shenzhen/{k}/{d}/{s}",
                         st.sampled_from(KINDS), st.sampled_from(["sw-1", "gw-1", "MN0001", "x\x00", "a\n", "+"]),
                         st.sampled_from(TOPIC_STREAMS))
topics = st.one_of(
    valid_topics,
    st.sampled_from([f"sanitation/shenzhen/{k}/dev-1/{s}" for (k, s) in BY_KIND_STREAM]
                    + ["sanitation/shenzhen/gateway/gw-1/batch", "sanitation/shenzhen/cems/MN0001/hj212"]),
    st.lists(st.sampled_from(["sanitation", "shenzhen", "sweeper", "sw-1", "telemetry", "", "#", "alerts"]),
             max_size=8).map("/".join),
    st.text(max_size=60),
)

EXTREME_DATES = [
    "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:60Z", "2016-12-31T23:59:60Z", "2026-11-22t07:59:00z", "2026-11-22T07:59:00.123456789+08:00",
    "20261122T075900Z", "2026-11-22 07:59:00Z", "2026-11-22T24:00:00Z", "2026-11-22T07:59:00+24:00",
    "2026-11-22T07:59:00", "２０２６-11-22T07:59:00Z", "2026-11-22T07:59:00Z\x00", "",
]
EXTREME_NUMBERS = [0, -0.0, 1e308, -1e308, 5e-324, 2.0, 2.5, 1e16, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
                   -(10**30), NOW_MS, float(NOW_MS), NOW_MS // 1000, 10**20, -(10**20)]
nul_text = st.text(alphabet=st.sampled_from("ab-\x00\u00e9\u4e2d\U0001f600"), max_size=12)
texts = st.one_of(st.text(max_size=20), nul_text, st.sampled_from(EXTREME_DATES),
                  st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))  # a lone surrogate
numbers = st.one_of(st.integers(min_value=-(10**40), max_value=10**40),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EXTREME_NUMBERS))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


class Obj(tuple[tuple[str, Any], ...]):
    """A JSON object as written: its members in order, names possibly repeated."""


def objects(values: st.SearchStrategy[Any], names: st.SearchStrategy[str] = texts) -> st.SearchStrategy[Obj]:
    return st.lists(st.tuples(names, values), max_size=6).map(lambda pairs: Obj(tuple(pairs)))


json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | objects(inner), max_leaves=25)
plain_values = st.recursive(st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=8)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five: enough valid input to reach the row path, enough junk to probe it."""
    return st.integers(0, 4).flatmap(lambda k: good if k else bad)


def render(value: Any, ascii_only: bool) -> str:
    """JSON text, with objects written member by member (duplicates kept) and lone surrogates escaped (or, with
    ``ascii_only`` off, encoded raw later, which makes the bytes invalid UTF-8)."""
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{render(v, ascii_only)}"
                              for k, v in value) + "}"
    if isinstance(value, dict):
        return render(Obj(tuple(value.items())), ascii_only)
    if isinstance(value, list):
        return "[" + ",".join(render(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encoded(value: Any, ascii_only: bool) -> bytes:
    return render(value, ascii_only).encode("utf-8", "surrogatepass")


# --- schema-shaped readings -------------------------------------------------------------------------------------

def _bare(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    return t


def fuzzed(t: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Mostly plausible values for a field of this type, sometimes wrong ones."""
    t = _bare(t)
    if isinstance(t, msgspec.inspect.UnionType):
        return st.one_of([fuzzed(m) for m in t.types])
    if isinstance(t, msgspec.inspect.NoneType):
        return st.none()
    if isinstance(t, msgspec.inspect.BoolType):
        return st.booleans()
    if isinstance(t, msgspec.inspect.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        hi = t.le if t.le is not None else 2**63 - 1
        return mostly(st.integers(lo, hi) | st.integers(lo, min(hi, 2**53)).map(float),
                      st.sampled_from(EXTREME_NUMBERS) | scalars)
    if isinstance(t, msgspec.inspect.FloatType):
        low = float(t.ge) if t.ge is not None else -1e9
        high = float(t.le) if t.le is not None else 1e9
        return mostly(st.floats(low, high) | st.integers(math.ceil(low), math.floor(high)), numbers | scalars)
    if isinstance(t, msgspec.inspect.LiteralType):
        return mostly(st.sampled_from(list(t.values)), st.sampled_from(["", "x", "N\x00"]) | scalars)
    if isinstance(t, msgspec.inspect.StrType):
        if t.pattern:
            return mostly(st.from_regex(ID, fullmatch=True), st.sampled_from(["x\x00", "x\n", "", "a/b"]) | scalars)
        return mostly(nul_text | st.text(max_size=t.max_length or 20), scalars)
    return scalars


timestamps = mostly(
    st.integers(NOW_MS - 86_400_000, NOW_MS + 60_000)
    | st.integers(NOW_MS - 86_400_000, NOW_MS).map(float)
    | st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 11, 21),
                   timezones=st.sampled_from([UTC, *(timezone(timedelta(hours=h)) for h in (-12, -8, 5.5, 8, 14))]))
    .map(lambda d: d.isoformat()),
    st.sampled_from(EXTREME_DATES) | st.sampled_from(EXTREME_NUMBERS) | scalars,
)


def reading_for(reading_type: type[Reading]) -> st.SearchStrategy[Obj]:
    info = msgspec.inspect.type_info(reading_type)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: (timestamps if f.name == "ts" else fuzzed(f.type)) for f in info.fields if f.name != "device_id"}
    extras = st.sampled_from(["fw", "kind", "stream", "fw\x00", "_raw_json", "note", "a\x00b", "", "\x00"])

    @st.composite
    def build(draw: st.DrawFn) -> Obj:
        names = draw(st.lists(st.sampled_from(sorted(fields)), max_size=len(fields), unique=True))
        pairs = [("ts", draw(timestamps))] + [(n, draw(fields[n])) for n in names if n != "ts"]
        pairs += draw(st.lists(st.tuples(extras, mostly(plain_values | nul_text, json_values)), max_size=3,
                               unique_by=lambda p: p[0]))
        if draw(st.integers(0, 19)) == 0:  # now and then, a name twice
            pairs.append(draw(st.sampled_from(pairs)))
        return Obj(tuple(pairs))

    return build()


KIND_STREAMS = sorted(BY_KIND_STREAM)


@st.composite
def device_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    kind, stream = draw(st.sampled_from(KIND_STREAMS))
    reading_type = BY_KIND_STREAM[(kind, stream)]
    body: Any = draw(reading_for(reading_type) | st.lists(reading_for(reading_type), max_size=4))
    return f"sanitation/shenzhen/{kind}/dev-1/{stream}", encoded(body, draw(mostly(st.just(True), st.just(False))))


@st.composite
def gateway_items(draw: st.DrawFn) -> Obj:
    kind, stream = draw(st.sampled_from(KIND_STREAMS))
    reading = draw(reading_for(BY_KIND_STREAM[(kind, stream)]))
    device = draw(mostly(st.from_regex(ID, fullmatch=True), st.sampled_from(["gw-sw-\x00bad", "pad\x00", "a\n", ""])))
    envelope: list[tuple[str, Any]] = [("kind", draw(mostly(st.just(kind), st.sampled_from(["rocket", "bin\x00"])))),
                                       ("device_id", device)]
    if draw(st.booleans()):
        envelope.append(("stream", draw(mostly(st.just(stream), st.just("banana")))))
    return Obj((*envelope, *(p for p in reading if p[0] not in ("kind", "stream", "device_id"))))


@st.composite
def gateway_batches(draw: st.DrawFn) -> tuple[str, bytes]:
    items: Any = draw(st.lists(mostly(gateway_items(), json_values), min_size=0, max_size=5))
    pairs: list[tuple[str, Any]] = [("readings", items)]
    if draw(st.booleans()):
        pairs.insert(0, ("gateway_id", draw(mostly(st.just("gw-1"), st.sampled_from(["gw-2", "gw\x00", 5])))))
    return "sanitation/shenzhen/gateway/gw-1/batch", encoded(Obj(tuple(pairs)), draw(mostly(st.just(True),
                                                                                          st.just(False))))


# --- the properties -----------------------------------------------------------------------------------------------

@FAST
@given(topics, st.binary(max_size=300))
def test_arbitrary_bytes_on_arbitrary_topics(topic: str, payload: bytes) -> None:
    check(topic, payload)


@FAST
@given(st.sampled_from([f"sanitation/shenzhen/{k}/dev-1/{s}" for (k, s) in KIND_STREAMS]
                       + ["sanitation/shenzhen/gateway/gw-1/batch"]), json_values, st.booleans())
def test_arbitrary_json(topic: str, value: Any, ascii_only: bool) -> None:
    check(topic, encoded(value, ascii_only))


@FAST
@given(device_messages())
def test_schema_shaped_readings_with_fuzzed_values_on_every_kind_and_stream(message: tuple[str, bytes]) -> None:
    check(*message)


@FAST
@given(gateway_batches())
def test_gateway_batches(message: tuple[str, bytes]) -> None:
    check(*message)


@SLOW
@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":', '{"ts":1,"x":[']), st.sampled_from(KIND_STREAMS))
def test_deep_nesting(depth: int, opener: str, kind_stream: tuple[str, str]) -> None:
    closer = {"[": "]", '{"a":': "}", '{"ts":1,"x":[': "]}"}[opener]
    payload = (opener * depth + "1" + closer * depth).encode()
    check(f"sanitation/shenzhen/{kind_stream[0]}/dev-1/{kind_stream[1]}", payload)


@SLOW
@given(st.integers(0, 40_000), st.sampled_from(["{}", "1", f'{{"ts":{NOW_MS}}}', '{"ts":"x"}', "[]"]),
       st.booleans())
def test_huge_arrays(n: int, item: str, gateway: bool) -> None:
    items = "[" + ",".join([item] * n) + "]"
    if gateway:
        check("sanitation/shenzhen/gateway/gw-1/batch", f'{{"readings":{items}}}'.encode())
    else:
        check("sanitation/shenzhen/sweeper/dev-1/telemetry", items.encode())


CODES = mostly(st.sampled_from(["a21026", "a21002", "a34013", "a19001", "a01012", "a00000"]),
               st.sampled_from(["a01902", "a21018", "i33310", "zz999", ""]))
SUFFIXES = ["Rtd", "ZsRtd", "Avg", "ZsAvg", "Min", "Max", "Cou", "Flag", "Zz"]
cp_values = mostly(st.floats(0, 500).map(lambda v: f"{v:.3f}"),
                   st.sampled_from(["-0.3", "21.05", "1e400", "NaN", "-", "N", "F", "", "00", "9" * 40])
                   | st.floats(allow_nan=False).map(str) | st.text(alphabet="0123456789.-eE", max_size=12))
data_times = mostly(st.datetimes(min_value=datetime(2026, 11, 1), max_value=datetime(2026, 11, 22, 15))
                    .map(lambda d: d.strftime("%Y%m%d%H%M%S")),  # Asia/Shanghai local time, before NOW
                    st.sampled_from(["00010101000000", "00010101000000", "99991231235959", "20261122080000123",
                                     "20260229000000", "2026112208000", ""])
                    | st.text(alphabet="0123456789", min_size=14, max_size=17))


@st.composite
def hj212_frames(draw: st.DrawFn) -> bytes:
    from sanitel.schemas import hj212

    groups = draw(st.lists(st.lists(st.tuples(CODES, st.sampled_from(SUFFIXES), cp_values),
                                    min_size=1, max_size=4), max_size=5))
    cp = [f"DataTime={draw(data_times)}"] if draw(st.integers(0, 5)) else []
    cp += [",".join(f"{c}-{s}={v}" for c, s, v in group) for group in groups]
    cn = draw(mostly(st.sampled_from(["2011", "2051", "2061", "2031"]), st.sampled_from(["9014", "1234"])))
    mn = draw(mostly(st.just("MN0001"), st.just("OTHER")))
    try:
        return hj212.encode_frame("31", cn, mn, "123456", ";".join(cp), qn="20261122080000000",
                                  flag=draw(st.sampled_from([4, 5, None])))
    except hj212.Hj212Error:
        return b"##0000\r\n"


@FAST
@given(hj212_frames() | st.binary(max_size=200))
def test_hj212_frames(frame: bytes) -> None:
    check("sanitation/shenzhen/cems/MN0001/hj212", frame)


@FAST
@given(device_messages())
def test_the_fast_path_and_the_general_path_agree(message: tuple[str, bytes]) -> None:
    """An unknown field sends a message down the general path; apart from ``extra`` the result is the same."""
    topic, payload = message
    fast = check(topic, payload)
    if fast.rejections or not payload.endswith(b"}") or payload.startswith(b"["):
        return  # valid single readings only: invalid ones may be explained differently, which is allowed
    probed = check(topic, payload[:-1] + (b',"zz_probe":1}' if payload != b"{}" else b'"zz_probe":1}'))
    assert not probed.rejections
    assert [r.values[:-1] for r in probed.rows] == [r.values[:-1] for r in fast.rows]
    for before, after in zip(fast.rows, probed.rows, strict=True):
        assert after.values[-1] == {**(before.values[-1] or {}), "zz_probe": 1}
