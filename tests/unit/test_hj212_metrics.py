"""The decoder counts what it set aside from an HJ 212 frame without dropping the reading (issue 11, item 8)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import Counter

from sanitel.ingest.decode import decode_message
from sanitel.ingest.metrics import HJ212_INVALID_FIELDS, HJ212_UNKNOWN_CODES
from sanitel.schemas.hj212 import encode_frame

RECEIVED = datetime(2026, 5, 1, 0, 5, tzinfo=UTC)  # the frame's DataTime is 08:00 in Asia/Shanghai


def _value(counter: Counter, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and (labels is None or sample.labels == labels):
                total += sample.value
    return total


def test_unknown_codes_and_voided_fields_are_counted_and_the_reading_lands() -> None:
    cp = ("DataTime=20260501080000;a21026-Rtd=12.0,a21026-Flag=N;a19001-Rtd=21.05,a19001-Flag=N;"
          "i33101-Rtd=912.3,i33101-Flag=N")
    frame = encode_frame("31", "2011", "LHK-L1", "123456", cp, qn="20260501080000123", flag=4)
    unknown_before = _value(HJ212_UNKNOWN_CODES)
    o2_before = _value(HJ212_INVALID_FIELDS, {"column": "o2_pct"})

    decoded = decode_message("sanitation/shenzhen/cems/LHK-L1/hj212", frame, RECEIVED)

    assert not decoded.rejections and len(decoded.rows) == 1
    assert _value(HJ212_UNKNOWN_CODES) == unknown_before + 1
    assert _value(HJ212_INVALID_FIELDS, {"column": "o2_pct"}) == o2_before + 1
