"""Issue 11, decode side: the messages that escaped decode_message, NUL, topics outside the grammar, integral
floats, envelope keys, duplicate keys — each case a test that fails without its fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sanitel.ingest import decode as decode_module
from sanitel.ingest.decode import REASONS, decode_message
from sanitel.schemas.readings import BY_TABLE, table_columns
from sanitel.schemas.records import Decoded, Rejection, Row

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
SW = "sanitation/shenzhen/sweeper/sw-0001/telemetry"
ST = "sanitation/shenzhen/transfer_station/ts-1/telemetry"
BIN_EVENT = "sanitation/shenzhen/bin/bin-1/event"
CAM = "sanitation/shenzhen/camera/cam-1/event"
GW = "sanitation/shenzhen/gateway/gw-1/batch"


def decode(topic: str, body: object) -> Decoded:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return decode_message(topic, payload, NOW)


def columns(row: Row) -> dict[str, Any]:
    return dict(zip(table_columns(BY_TABLE[row.table]), row.values, strict=True))


def one_row(topic: str, body: object) -> dict[str, Any]:
    out = decode(topic, body)
    assert not out.rejections and len(out.rows) == 1, (out.rows, out.rejections)
    return columns(out.rows[0])


def rejected(topic: str, body: object) -> Rejection:
    out = decode(topic, body)
    assert not out.rows and len(out.rejections) == 1, (out.rows, out.rejections)
    assert out.rejections[0].reason_code in REASONS
    return out.rejections[0]


def storable(value: object) -> bool:
    """What PostgreSQL text and jsonb can hold: no NUL anywhere, in names or values."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(storable(v) for v in value)
    return True


# --- 1. messages that escaped decode_message ----------------------------------------------------------------

def test_year_1_with_an_offset_is_bad_timestamp_not_an_overflow() -> None:
    assert rejected(SW, b'{"ts":"0001-01-01T00:00:00+01:00","seq":1}').reason_code == "bad_timestamp"


def test_year_9999_with_a_negative_offset_is_bad_timestamp() -> None:
    assert rejected(SW, {"ts": "9999-12-31T23:59:59-23:59", "seq": 1}).reason_code == "bad_timestamp"


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_json_nested_10000_deep_is_invalid_json_not_a_recursion_error(opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    for topic in (SW, GW):
        assert rejected(topic, opener * 10_000 + b"1" + closer * 10_000).reason_code == "invalid_json"


def test_nesting_is_limited_to_128_levels() -> None:
    def nested(levels: int) -> object:
        value: object = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    assert one_row(SW, {"ts": NOW_MS, "blob": nested(127)})["extra"]["blob"] is not None  # the reading + 127 = 128
    assert rejected(SW, {"ts": NOW_MS, "blob": nested(128)}).reason_code == "invalid_json"


def test_hj212_frame_from_year_1_is_rejected_not_raised() -> None:
    from sanitel.schemas import hj212

    frame = hj212.encode_frame("31", "2011", "MN0001", "123456", "DataTime=00010101000000;a21026-Rtd=10.0,a21026-Flag=N",
                               qn="20261122080000000", flag=4)
    out = decode_message("sanitation/shenzhen/cems/MN0001/hj212", frame, NOW)
    assert not out.rows and [r.reason_code for r in out.rejections] in (["hj212_bad_field"], ["bad_timestamp"])


def test_an_unexpected_exception_in_one_reading_is_an_internal_error_for_that_reading(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sanitel.ingest.metrics import DECODE_INTERNAL_ERRORS

    real = decode_module._reading_to_row

    def flaky(*args: Any) -> Row:
        if args[1].seq == 2:
            raise ZeroDivisionError("injected")
        return real(*args)

    monkeypatch.setattr(decode_module, "_reading_to_row", flaky)
    before = DECODE_INTERNAL_ERRORS.labels("ZeroDivisionError")._value.get()
    out = decode(SW, [{"ts": NOW_MS, "seq": 1, "fw": "x"}, {"ts": NOW_MS, "seq": 2, "fw": "x"},
                      {"ts": NOW_MS, "seq": 3, "fw": "x"}])
    assert [columns(r)["seq"] for r in out.rows] == [1, 3]
    (bad,) = out.rejections
    assert (bad.reason_code, bad.index, bad.device_id) == ("internal_error", 1, "sw-0001")
    assert bad.reason.startswith("ZeroDivisionError: injected at ") and "flaky" in bad.reason
    assert DECODE_INTERNAL_ERRORS.labels("ZeroDivisionError")._value.get() == before + 1


def test_an_unexpected_exception_outside_the_readings_is_an_internal_error_for_the_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(topic: str) -> object:
        raise KeyError("injected")

    monkeypatch.setattr(decode_module, "_parse_topic_cached", broken)
    out = decode(SW, {"ts": NOW_MS})
    assert not out.rows and [(r.reason_code, r.index) for r in out.rejections] == [("internal_error", None)]
    assert out.rejections[0].reason.startswith("KeyError")


def test_the_internal_error_counter_is_on_every_collectors_registry() -> None:
    from sanitel.ingest.metrics import CollectorMetrics

    names = {m.name for m in CollectorMetrics().registry.collect()}
    assert "sanitel_decode_internal_errors" in names
    assert "sanitel_decode_internal_errors" in {m.name for m in CollectorMetrics().registry.collect()}


# --- 2. NUL ---------------------------------------------------------------------------------------------------

def test_nul_padding_of_a_known_text_field_is_removed() -> None:
    row = one_row(ST, {"ts": NOW_MS, "truck_id": "TRK-01\u0000\u0000\u0000\u0000"})
    assert row["truck_id"] == "TRK-01" and row["extra"] is None


def test_an_interior_nul_becomes_u_fffd_and_the_original_is_kept_as_json_text() -> None:
    row = one_row(BIN_EVENT, {"ts": NOW_MS, "household_id": "h\u0000-77", "category": "kitchen", "weight_kg": 1.5})
    assert row["household_id"] == "h\ufffd-77"
    assert json.loads(row["extra"]["_raw_json"]) == {"household_id": "h\u0000-77"}
    assert storable(row)


def test_a_nul_only_string_becomes_empty() -> None:
    row = one_row(CAM, {"ts": NOW_MS, "detection": "overflow", "confidence": 0.8, "image_ref": "\u0000" * 8})
    assert row["image_ref"] == ""


def test_length_limits_apply_after_the_nul_rule() -> None:
    assert one_row(ST, {"ts": NOW_MS, "truck_id": "T" * 32 + "\u0000" * 40})["truck_id"] == "T" * 32
    assert rejected(BIN_EVENT, {"ts": NOW_MS, "household_id": "\u0000", "category": "other",
                                "weight_kg": 1}).reason_code == "out_of_range"  # min length 1, after stripping


def test_nul_in_unknown_field_names_and_values_at_any_depth() -> None:
    body = {"ts": NOW_MS, "fw": "2.1\u0000\u0000", "fw\u0000": "x", "a\u0000b": {"k\u0000": ["q\u0000r", 1]},
            "clean": "ok"}
    row = one_row(SW, body)
    extra = row["extra"]
    assert storable(row)
    assert extra["fw"] == "2.1" and extra["clean"] == "ok"
    assert extra["a\ufffdb"] == {"k": ["q\ufffdr", 1]}
    raw = json.loads(extra["_raw_json"])  # every member the rule changed beyond padding, as received
    assert raw == {"fw\u0000": "x", "a\u0000b": {"k\u0000": ["q\u0000r", 1]}}


def test_a_repaired_name_never_overwrites_another_member() -> None:
    row = one_row(SW, {"ts": NOW_MS, "soc_pct": 40, "soc_pct\u0000": 99, "fw\u0000": 1, "fw": 2})
    assert row["soc_pct"] == 40 and row["extra"]["fw"] == 2
    assert json.loads(row["extra"]["_raw_json"]) == {"soc_pct\u0000": 99, "fw\u0000": 1}


def test_a_devices_own_raw_json_member_is_not_lost() -> None:
    row = one_row(SW, {"ts": NOW_MS, "_raw_json": "mine", "x": "a\u0000b"})
    assert json.loads(row["extra"]["_raw_json"]) == {"x": "a\u0000b", "_raw_json": "mine"}


def test_nul_in_one_reading_of_an_array_lands_with_the_others() -> None:
    out = decode(SW, [{"ts": NOW_MS, "seq": 1}, {"ts": NOW_MS, "seq": 2, "fw": "v1\u0000\u0000"},
                      {"ts": NOW_MS, "seq": 3}])
    assert not out.rejections and [columns(r)["seq"] for r in out.rows] == [1, 2, 3]


def test_nul_in_a_gateway_items_device_id_rejects_that_item_alone_and_never_names_it() -> None:
    out = decode(GW, {"gateway_id": "gw-1", "readings": [
        {"kind": "bin", "device_id": "gw-bin-1", "stream": "status", "ts": NOW_MS, "fill_level_pct": 50.0},
        {"kind": "sweeper", "device_id": "gw-sw-\u0000bad", "ts": NOW_MS, "seq": 1},
        {"kind": "sweeper", "device_id": "gw-sw-pad\u0000", "ts": NOW_MS, "seq": 1},  # padding is not repaired in ids
        {"kind": "transfer_station", "device_id": "gw-ts-1", "ts": NOW_MS, "truck_id": "TRK-9\u0000\u0000",
         "note": "\u0000x\u0000"},
    ]})
    assert [(r.device_id, r.table) for r in out.rows] == [("gw-bin-1", "bin_status"), ("gw-ts-1", "station_telemetry")]
    assert [(r.index, r.reason_code, r.device_id, r.kind) for r in out.rejections] == [
        (1, "out_of_range", None, "sweeper"), (2, "out_of_range", None, "sweeper")]
    assert all(storable((r.values, r.device_id)) for r in out.rows)
    assert all(storable((r.reason, r.device_id, r.kind)) for r in out.rejections)


@pytest.mark.parametrize("field", ["device_id", "point_id"])
def test_nul_or_a_trailing_newline_in_a_payload_identifier_is_out_of_range(field: str) -> None:
    for bad in ("bin-1\u0000", "bin-1\n"):
        out = decode("sanitation/shenzhen/bin/bin-1/status", {"ts": NOW_MS, field: bad})
        assert [r.reason_code for r in out.rejections] in (["out_of_range"], ["device_mismatch"]), out
        assert not out.rows


def test_junk_kinds_and_ids_never_reach_a_rejection() -> None:
    out = decode(GW, {"readings": [{"kind": "rocket\u0000", "device_id": "r\u0000"}, {"kind": ["x"], "device_id": 5}]})
    assert [(r.kind, r.device_id) for r in out.rejections] == [(None, None), (None, None)]
    assert all(storable(r.reason) for r in out.rejections)


def test_lone_surrogate_escapes_are_invalid_json() -> None:
    for payload in (b'{"ts": 1, "note": "\\ud800"}', b'{"ts": 1, "note": "\\udc00x"}', b'{"ts": 1, "\\ud800": 1}'):
        assert rejected(SW, payload).reason_code == "invalid_json"


# --- 3. topics ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", [
    "sanitation/shenzhen/sweeper/sw-1/telemetry/extra",  # six levels: never reached the collector before
    "sanitation/shenzhen/sweeper",
    "sanitation/shenzhen/sweeper/sw-1",
    "sanitation/shenzhen",
    "sanitation",
    "sanitation/shenzhen//sw-1/telemetry",
    "sanitation/shenzhen/sweeper/sw-1\n/telemetry",  # Python's "$" matched before a final newline
    "sanitation/shenzhen\n/sweeper/sw-1/telemetry",
    "sanitation/Shenzhen/sweeper/sw-1/telemetry",
    "sanitation/shenzhen/gateway/gw-1/batch/x",
    "sanitation/shenzhen/sweeper/sw-1/telemetry/",
    "other/shenzhen/sweeper/sw-1/telemetry",
    "",
])
def test_a_topic_outside_the_grammar_is_bad_topic(topic: str) -> None:
    assert rejected(topic, {"ts": NOW_MS}).reason_code == "bad_topic"


@pytest.mark.parametrize("topic", ["sanitation/shenzhen/alerts/critical", "sanitation/shenzhen/alerts",
                                   "sanitation/shenzhen/alerts/major/extra"])
def test_the_alert_notifications_sanitel_publishes_are_ignored(topic: str) -> None:
    out = decode(topic, b"anything at all, of any size" * 100_000)
    assert not out.rows and not out.rejections and out.ignored


def test_alerts_under_a_malformed_city_are_still_bad_topic() -> None:
    assert rejected("sanitation/Bad City/alerts/critical", {}).reason_code == "bad_topic"


def test_the_collector_subscribes_to_everything_under_the_city() -> None:
    from sanitel.schemas.topics import subscription

    assert subscription("shenzhen") == "sanitation/shenzhen/#"
    assert subscription() == "sanitation/+/#"
    assert subscription("shenzhen", "sanitel") == "$share/sanitel/sanitation/shenzhen/#"


# --- 4./5. integers, envelope keys, duplicate keys ----------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"fw": "1.2"}], ids=["fast_path", "general_path"])
def test_integral_floats_are_integers(extra: dict[str, object]) -> None:
    row = one_row(SW, {"ts": float(NOW_MS), "seq": 7.0, "alarm_level": 2.0, "alarm_flags": 4096.0, **extra})
    assert (row["ts"], row["seq"], row["alarm_level"], row["alarm_flags"]) == (NOW, 7, 2, 4096)
    assert type(row["seq"]) is int and type(row["alarm_level"]) is int
    assert one_row(CAM, {"ts": NOW_MS, "detection": "overflow", "confidence": 0.5, "object_count": 3.0,
                         **extra})["object_count"] == 3


@pytest.mark.parametrize("body", [{"ts": NOW_MS, "seq": 1.5}, {"ts": NOW_MS, "alarm_level": 2.5},
                                  {"ts": NOW_MS + 0.5}])
def test_fractional_numbers_in_integer_fields_are_wrong_type(body: dict[str, object]) -> None:
    assert rejected(SW, body).reason_code == "wrong_type"


def test_integers_beyond_64_bits_are_judged_by_the_field() -> None:
    assert rejected(SW, b'{"ts": %d, "seq": 18446744073709551616}' % NOW_MS).reason_code == "out_of_range"
    assert rejected(SW, b'{"ts": 100000000000000000000, "seq": 1}').reason_code == "bad_timestamp"
    assert rejected(SW, b'{"ts": %d, "soc_pct": 100000000000000000000}' % NOW_MS).reason_code == "out_of_range"
    row = one_row(SW, b'{"ts": %d, "big": 123456789012345678901234567890}' % NOW_MS)
    assert row["extra"] == {"big": 123456789012345678901234567890}  # exactly


def test_kind_and_stream_on_a_device_topic_are_kept_in_extra() -> None:
    row = one_row(SW, {"ts": NOW_MS, "soc_pct": 61.0, "kind": "street-sweeper-v2", "stream": "can0"})
    assert row["extra"] == {"kind": "street-sweeper-v2", "stream": "can0"}


def test_envelope_keys_are_stripped_from_gateway_items_only() -> None:
    out = decode(GW, {"readings": [{"kind": "sweeper", "device_id": "sw-9", "stream": "telemetry", "ts": NOW_MS,
                                    "fw": "1"}]})
    assert columns(out.rows[0])["extra"] == {"fw": "1"}


DUPLICATES: list[tuple[str, bytes]] = [
    ("plain", b'{"ts": %d, "seq": 1, "soc_pct": 10.0, "soc_pct": 90.0}' % NOW_MS),
    ("compact", b'{"ts":%d,"soc_pct":10.0,"soc_pct":90.0}' % NOW_MS),
    ("spaced", b'{"ts" : %d , "soc_pct" : 10.0 , "soc_pct"\t:\n90.0}' % NOW_MS),
    ("escaped_name", b'{"ts": %d, "soc_pct": 10.0, "\\u0073oc_pct": 90.0}' % NOW_MS),
    ("unknown_field", b'{"ts": %d, "fw": "1", "fw": "2"}' % NOW_MS),
    ("nested", b'{"ts": %d, "fw": {"a": 1, "a": 2}}' % NOW_MS),
    ("ts", b'{"ts": %d, "ts": "2026-11-22T08:00:00Z"}' % NOW_MS),
]


@pytest.mark.parametrize(("case", "payload"), DUPLICATES, ids=[c for c, _ in DUPLICATES])
def test_duplicate_keys_are_rejected(case: str, payload: bytes) -> None:
    rejection = rejected(SW, payload)
    assert rejection.reason_code == "duplicate_key" and "RFC 8259" in rejection.reason


def test_duplicate_keys_reject_only_the_reading_that_has_them() -> None:
    out = decode(SW, b'[{"ts": %d, "seq": 1}, {"ts": %d, "seq": 2, "seq": 3}, {"ts": %d, "seq": 4}]'
                 % (NOW_MS, NOW_MS, NOW_MS))
    assert [columns(r)["seq"] for r in out.rows] == [1, 4]
    assert [(r.index, r.reason_code) for r in out.rejections] == [(1, "duplicate_key")]
    out = decode(GW, b'{"readings": [{"kind": "bin", "device_id": "b-1", "ts": %d, "kind": "bin"}, '
                     b'{"kind": "bin", "device_id": "b-2", "ts": %d}]}' % (NOW_MS, NOW_MS))
    assert [r.device_id for r in out.rows] == ["b-2"]
    assert [(r.index, r.reason_code, r.device_id) for r in out.rejections] == [(0, "duplicate_key", "b-1")]
    assert rejected(GW, b'{"readings": [], "readings": [{"kind": "bin", "device_id": "b", "ts": %d}]}'
                    % NOW_MS).reason_code == "duplicate_key"


@pytest.mark.parametrize("payload", [
    b'{"ts": %d, "note": "a\\":b", "other": "\\"x\\":"}' % NOW_MS,  # `":` inside strings
    b'{"ts": %d, "a": {"x": 1}, "b": {"x": 1}}' % NOW_MS,  # the same name in two objects
    b'{"ts": %d, "note": "x" }' % NOW_MS,
    b'{\n  "ts": %d,\n  "soc_pct": 1\n}' % NOW_MS,
])
def test_no_false_duplicates(payload: bytes) -> None:
    one_row(SW, payload)


def test_field_groups_read_off_the_schemas() -> None:
    """decode.py finds integer, free-text and identifier fields by inspecting the msgspec types; if msgspec's
    inspection changes shape, this says so instead of silently disabling a rule."""
    groups = {t.__name__: g for t, g in decode_module._GROUPS.items()}
    assert {"ts", "seq", "alarm_level", "alarm_flags"} <= groups["SweeperTelemetry"][0]
    assert groups["StationTelemetry"][1] == {"truck_id"}
    assert groups["BinDeposit"][1] == {"household_id"} and groups["CameraDetection"][1] == {"image_ref"}
    assert groups["CemsReading"][2] == {"device_id", "plant_id", "line_id"}
    assert groups["CameraDetection"][0] >= {"object_count"}


def test_the_batch_envelope_the_decoder_checks_is_the_published_one() -> None:
    import msgspec

    from sanitel.schemas.readings import GatewayBatch

    published = msgspec.json.schema(GatewayBatch)["$defs"]["GatewayBatch"]
    checked = msgspec.json.schema(decode_module._BatchEnvelope)["$defs"]["_BatchEnvelope"]
    for schema in (published, checked):
        schema["properties"]["readings"].pop("items", None)
        schema.pop("title"), schema.pop("description", None)
    assert published == checked


def test_an_item_of_a_gateway_batch_that_is_not_an_object_is_rejected_alone() -> None:
    out = decode(GW, {"readings": [1, {"kind": "bin", "device_id": "b", "ts": NOW_MS}, [2], None]})
    assert [r.device_id for r in out.rows] == ["b"]
    assert [(r.index, r.reason_code) for r in out.rejections] == [(0, "wrong_shape"), (2, "wrong_shape"),
                                                                   (3, "wrong_shape")]
