"""Decoding: every way a message can be bad gets one reason code and a message naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sanitel.ingest.decode import REASONS, decode_message, parse_device_time
from sanitel.schemas.readings import BinStatus, SweeperTelemetry, table_columns
from sanitel.schemas.records import Rejection, Row

NOW = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
SW = "sanitation/shenzhen/sweeper/sw-0001/telemetry"
NOW_MS = int(NOW.timestamp() * 1000)


def decode(topic: str, body: object) -> tuple[list[Row], list[Rejection]]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = decode_message(topic, payload, NOW)
    return out.rows, out.rejections


def reason(topic: str, body: object) -> str:
    rows, rejections = decode(topic, body)
    assert not rows and len(rejections) == 1, (rows, rejections)
    assert rejections[0].reason_code in REASONS or rejections[0].reason_code.startswith("hj212_")
    return rejections[0].reason_code


def test_good_sweeper_reading_becomes_a_row_with_extra_fields_kept() -> None:
    rows, rejections = decode(SW, {"ts": "2026-11-22T07:59:00.5+08:00", "seq": 7, "soc_pct": 55, "firmware": "1.2"})
    assert not rejections
    (row,) = rows
    values = dict(zip(table_columns(SweeperTelemetry), row.values, strict=True))
    assert values["device_id"] == "sw-0001" and values["seq"] == 7 and values["soc_pct"] == 55
    assert values["ts"] == datetime(2026, 11, 21, 23, 59, 0, 500000, tzinfo=UTC)
    assert values["received_at"] == NOW
    assert values["extra"] == {"firmware": "1.2"}


def test_epoch_milliseconds_and_rfc3339_agree() -> None:
    assert parse_device_time(NOW_MS) == parse_device_time("2026-11-22T08:00:00Z") == NOW


@pytest.mark.parametrize(
    ("topic", "body", "code"),
    [
        (SW, b"{not json", "invalid_json"),
        (SW, b'{"ts": 1, "soc_pct": \xff}', "not_utf8"),
        (SW, b"\xc3\x28", "not_utf8"),
        (SW, b'{"ts": 1763798400000, "soc_pct": NaN}', "invalid_json"),
        (SW, b'{"ts": 1763798400000, "soc_pct": Infinity}', "invalid_json"),
        (SW, b'{"ts": 1763798400000, "soc_pct": 1e999}', "invalid_json"),  # overflows a double
        (SW, "just a string", "wrong_shape"),
        (SW, [], "wrong_shape"),
        (SW, {"soc_pct": 50}, "missing_field"),
        (SW, {"ts": NOW_MS, "soc_pct": "50"}, "wrong_type"),
        (SW, {"ts": NOW_MS, "brush_on": 1}, "wrong_type"),
        (SW, {"ts": NOW_MS, "soc_pct": 140}, "out_of_range"),
        (SW, {"ts": NOW_MS, "work_mode": "flying"}, "out_of_range"),
        ("sanitation/shenzhen/bin/bin-1/event",
         {"ts": NOW_MS, "household_id": "h1", "category": "kitchen", "weight_kg": -1.5}, "out_of_range"),
        ("sanitation/shenzhen/cems/cems-p1-l1/telemetry", {"ts": NOW_MS, "o2_pct": 21.5}, "out_of_range"),
        ("sanitation/shenzhen/tractor/t-1/telemetry", {"ts": NOW_MS}, "unknown_kind"),
        ("sanitation/shenzhen/sweeper/sw-1/banana", {"ts": NOW_MS}, "bad_topic"),
        ("sanitation/shenzhen/sweeper/telemetry", {"ts": NOW_MS}, "bad_topic"),
        ("sanitation/shenzhen/sweeper/sw-1/event", {"ts": NOW_MS}, "bad_topic"),
        (SW, {"ts": NOW_MS, "device_id": "sw-0002"}, "device_mismatch"),
        (SW, {"ts": NOW_MS + 5 * 60_000 + 1000}, "ts_in_future"),
        (SW, {"ts": "1999-12-31T23:59:59Z"}, "ts_too_old"),
        (SW, {"ts": 1763798400}, "ts_too_old"),  # epoch seconds, not milliseconds
        (SW, {"ts": "2026-11-22T08:00:00"}, "bad_timestamp"),
        (SW, {"ts": "yesterday"}, "bad_timestamp"),
        (SW, {"ts": NOW_MS, "seq": -1}, "out_of_range"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(topic: str, body: object, code: str) -> None:
    assert reason(topic, body) == code


def test_rejection_names_the_field() -> None:
    _, (rejection,) = decode(SW, {"ts": NOW_MS, "soc_pct": 140})
    assert "soc_pct" in rejection.reason and "100" in rejection.reason
    assert rejection.kind == "sweeper" and rejection.device_id == "sw-0001"


def test_payload_over_limit_is_rejected_before_parsing() -> None:
    big = json.dumps({"ts": NOW_MS, "note": "x" * (256 * 1024)}).encode()
    assert reason(SW, big) == "payload_too_large"


def test_array_with_one_bad_reading_keeps_the_good_ones() -> None:
    body = [{"ts": NOW_MS - 2000, "seq": 1, "soc_pct": 50}, {"ts": NOW_MS - 1000, "seq": 2, "soc_pct": 140},
            {"ts": NOW_MS, "seq": 3, "soc_pct": 49}]
    rows, rejections = decode(SW, body)
    assert [r.values[2] for r in rows] == [1, 3]
    assert [(r.index, r.reason_code) for r in rejections] == [(1, "out_of_range")]


def test_gateway_batch_routes_each_reading_and_rejects_only_the_bad_one() -> None:
    body = {"gateway_id": "gw-1", "readings": [
        {"kind": "bin", "device_id": "bin-1-k", "stream": "event", "ts": NOW_MS, "household_id": "h1",
         "category": "kitchen", "weight_kg": 1.2},
        {"kind": "bin", "device_id": "bin-1-k", "ts": NOW_MS, "fill_level_pct": 40},
        {"kind": "bin", "device_id": "bin-1-r", "ts": NOW_MS, "fill_level_pct": "full"},
        {"kind": "rocket", "device_id": "r-1", "ts": NOW_MS},
        {"kind": "camera", "device_id": "cam-1", "ts": NOW_MS, "detection": "mis_sorted", "confidence": 0.9},
    ]}
    rows, rejections = decode("sanitation/shenzhen/gateway/gw-1/batch", body)
    assert [(r.table, r.device_id) for r in rows] == [
        ("bin_deposits", "bin-1-k"), ("bin_status", "bin-1-k"), ("camera_detections", "cam-1")]
    assert [(r.index, r.reason_code) for r in rejections] == [(2, "wrong_type"), (3, "unknown_kind")]
    assert rejections[0].device_id == "bin-1-r"


def test_gateway_batch_of_wrong_shape_and_mismatched_gateway() -> None:
    assert reason("sanitation/shenzhen/gateway/gw-1/batch", {"readings": []}) == "wrong_shape"
    assert reason("sanitation/shenzhen/gateway/gw-1/batch", [1, 2]) == "wrong_shape"
    assert reason("sanitation/shenzhen/gateway/gw-1/batch",
                  {"gateway_id": "gw-2", "readings": [{"kind": "bin", "device_id": "b", "ts": NOW_MS}]}) \
        == "device_mismatch"


def test_bin_fill_level_noise_is_accepted_for_clamping() -> None:
    rows, rejections = decode("sanitation/shenzhen/bin/bin-1-k/status", {"ts": NOW_MS, "fill_level_pct": 104.2})
    assert not rejections
    assert dict(zip(table_columns(BinStatus), rows[0].values, strict=True))["fill_level_pct"] == 104.2


def test_reading_within_the_future_tolerance_is_accepted() -> None:
    rows, _ = decode(SW, {"ts": (NOW + timedelta(minutes=4)).isoformat()})
    assert len(rows) == 1


def test_every_reason_code_is_documented_for_gateway_developers() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "ingest.md").read_text()
    missing = [code for code in REASONS if f"`{code}`" not in doc]
    assert not missing, f"docs/ingest.md does not explain {missing}"
