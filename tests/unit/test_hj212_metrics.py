"""The decoder counts what it set aside from an HJ 212 frame without dropping the reading (issue 11, item 8); the TCP
listener's frame-rate bucket, log limiter and registry verdicts (issue 12, items 4 and 5)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import Counter

from sanitel.ingest.decode import decode_message
from sanitel.ingest.hj212_tcp import Hj212Listener, LogLimiter, TokenBucket
from sanitel.ingest.metrics import HJ212_INVALID_FIELDS, HJ212_UNKNOWN_CODES
from sanitel.processors.registry import DeviceEntry, DeviceRegistry, Hj212Check
from sanitel.schemas.hj212 import QN_RTN_BAD_MN, QN_RTN_BAD_PW, encode_frame
from sanitel.secret_hash import hash_secret

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


# --- the TCP listener's limits and registry verdicts (issue 12 items 4 and 5), without servers ----------------

class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_frame_rate_bucket_allows_a_minutes_burst_then_refills_at_the_rate() -> None:
    clock = _Clock()
    bucket = TokenBucket(6, clock)  # 6 a minute: one every 10 s
    assert [bucket.take() for _ in range(7)] == [True] * 6 + [False]
    clock.now += 9.9
    assert not bucket.take()
    clock.now += 0.1
    assert bucket.take() and not bucket.take()
    clock.now += 3600  # a long pause refills one minute's worth, not more
    assert sum(bucket.take() for _ in range(10)) == 6


def test_refused_connections_are_logged_at_most_once_a_minute_with_how_many_were_held_back() -> None:
    clock = _Clock()
    limiter = LogLimiter(60, clock)
    assert limiter.due() == 0
    assert [limiter.due() for _ in range(3)] == [None] * 3
    clock.now += 60
    assert limiter.due() == 3 and limiter.due() is None


class _Registry:
    """The registry's answers for a few MNs (sanitel.processors.registry.DeviceRegistry's own check)."""

    def __init__(self, entries: dict[str, DeviceEntry]) -> None:
        self.entries = entries
        self.real = DeviceRegistry("postgresql://unused@127.0.0.1:1/x")

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def lookup(self, device_ids: list[str]) -> dict[str, DeviceEntry]:
        return {d: self.entries[d] for d in device_ids if d in self.entries}

    def check_password(self, mn: str, entry: DeviceEntry | None, password: str | None, *,
                       require_password: bool) -> Hj212Check:
        return self.real.check_password(mn, entry, password, require_password=require_password)


@pytest.mark.parametrize(("require", "auto_register", "mn", "pw", "verdict"), [
    (True, True, "DAU-OK", "right", None),
    (True, True, "DAU-OK", "wrong", ("hj212_wrong_password", QN_RTN_BAD_PW)),
    (True, True, "DAU-OK", None, ("hj212_wrong_password", QN_RTN_BAD_PW)),
    (True, True, "DAU-NOPW", "any", ("hj212_no_password", QN_RTN_BAD_PW)),
    (True, True, "DAU-GHOST", "any", ("hj212_no_password", QN_RTN_BAD_MN)),
    (True, True, "BIN-1", "right", ("kind_mismatch", QN_RTN_BAD_MN)),
    (False, True, "DAU-NOPW", "any", None),
    (False, True, "DAU-GHOST", "any", None),  # the collector registers it on first sight
    (False, False, "DAU-GHOST", "any", ("unknown_device", QN_RTN_BAD_MN)),
    (False, True, "DAU-OK", "wrong", ("hj212_wrong_password", QN_RTN_BAD_PW)),  # a password set is always checked
])
def test_the_listener_refuses_what_the_collectors_registry_checks_refuse(
        require: bool, auto_register: bool, mn: str, pw: str | None, verdict: tuple[str, int] | None) -> None:
    stored = hash_secret("right")
    registry = _Registry({"DAU-OK": DeviceEntry("cems", None, stored), "DAU-NOPW": DeviceEntry("cems", None, None),
                          "BIN-1": DeviceEntry("bin", None, stored)})
    listener = Hj212Listener("mqtt://127.0.0.1:1", "shenzhen", registry=registry, require_password=require,
                             auto_register=auto_register)
    refusal = listener._check_registry(registry, mn, pw)
    assert (refusal[1:] if refusal else None) == verdict
