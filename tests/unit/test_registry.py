"""The ingest side's device registry without a database: the cache never keeps a value a change raced with, is
bypassed while notifications cannot arrive, expires whole; HJ 212 passwords checked against salted hashes; the
auto-registration token bucket; and who may speak for a device (the writer's registry rules)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sanitel.processors.registry import DeviceEntry, DeviceRegistry, Hj212Check
from sanitel.processors.writer import ReadingWriter, TokenBucket
from sanitel.schemas.records import Row
from sanitel.secret_hash import hash_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BIN = DeviceEntry("bin", "gw-1", None)


def registry(clock: Clock | None = None, refresh_s: float = 300.0) -> DeviceRegistry:
    return DeviceRegistry("postgresql://unused", refresh_s=refresh_s, clock=clock or Clock())


def test_a_read_that_raced_with_a_change_is_not_cached() -> None:
    reg = registry()
    token, found = reg.cached(["b-1", "b-2"])
    assert found == {}
    reg.forget("b-1")  # a NOTIFY for b-1 arrives while the read is under way
    reg.remember({"b-1": BIN, "b-2": BIN}, token)
    assert reg.cached(["b-1", "b-2"])[1] == {"b-2": BIN}
    token, _ = reg.cached(["b-1"])  # a read begun after the change is kept
    reg.remember({"b-1": BIN}, token)
    assert reg.cached(["b-1"])[1] == {"b-1": BIN}


def test_a_notification_drops_the_entry_and_a_gateway_change_its_devices() -> None:
    reg = registry()
    token, _ = reg.cached([])
    reg.remember({"b-1": BIN, "b-2": DeviceEntry("bin", "gw-2", None), "s-1": DeviceEntry("sweeper", None, None)},
                 token)
    reg._on_notify("devices:s-1")
    reg._on_notify("gateways:gw-1")
    assert set(reg.cached(["b-1", "b-2", "s-1"])[1]) == {"b-2"}
    reg._on_notify("nonsense")  # unexpected: everything is dropped
    assert reg.cached(["b-2"])[1] == {}


def test_the_whole_cache_expires_after_refresh_s_and_a_read_across_it_is_not_kept() -> None:
    clock = Clock()
    reg = registry(clock, refresh_s=300)
    token, _ = reg.cached([])
    reg.remember({"b-1": BIN}, token)
    clock.now += 299
    assert reg.cached(["b-1"])[1] == {"b-1": BIN}
    token, _ = reg.cached([])
    clock.now += 1
    assert reg.cached(["b-1"])[1] == {}
    reg.remember({"b-1": BIN}, token)  # read before the reload: stale
    assert reg.cached(["b-1"])[1] == {}


def test_while_not_listening_a_started_registry_bypasses_its_cache() -> None:
    reg = registry()
    token, _ = reg.cached([])
    reg.remember({"b-1": BIN}, token)
    reg._started = True  # start() was called but LISTEN is not (yet, or no longer) up: notifications may be lost
    assert reg.cached(["b-1"])[1] == {}
    reg.remember({"b-2": BIN}, reg.cached([])[0])
    reg._listening = True
    assert reg.cached(["b-2"])[1] == {}


def test_hj212_passwords_are_checked_against_salted_hashes_and_verified_ones_are_remembered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reg = registry()
    stored = hash_secret("123456")
    entry = DeviceEntry("cems", None, stored)
    assert reg.check_password("MN1", entry, "123456", require_password=True) is Hj212Check.OK
    assert reg.check_password("MN1", entry, "654321", require_password=True) is Hj212Check.WRONG_PASSWORD
    assert reg.check_password("MN1", entry, None, require_password=False) is Hj212Check.WRONG_PASSWORD
    calls: list[str] = []

    def scrypt(secret: str, secret_hash: str) -> bool:
        calls.append(secret)
        return False

    monkeypatch.setattr("sanitel.secret_hash.verify_secret", scrypt)
    for _ in range(100):  # no scrypt per frame: neither for the right password nor for a wrong one tried before
        assert reg.check_password("MN1", entry, "123456", require_password=True) is Hj212Check.OK
        assert reg.check_password("MN1", entry, "654321", require_password=True) is Hj212Check.WRONG_PASSWORD
    assert calls == []
    rotated = DeviceEntry("cems", None, hash_secret("new-pw"))  # a new hash never matches what was verified before
    assert reg.check_password("MN1", rotated, "123456", require_password=True) is Hj212Check.WRONG_PASSWORD


def test_hj212_without_a_stored_hash_or_registration() -> None:
    reg = registry()
    bare = DeviceEntry("cems", None, None)
    assert reg.check_password("MN1", bare, "x", require_password=True) is Hj212Check.NO_PASSWORD
    assert reg.check_password("MN1", bare, "x", require_password=False) is Hj212Check.OK
    assert reg.check_password("MN1", None, "x", require_password=True) is Hj212Check.UNKNOWN_DEVICE
    legacy = DeviceEntry("cems", None, "sha256$abc$" + __import__("hashlib").sha256(b"abc123456").hexdigest())
    assert reg.check_password("MN1", legacy, "123456", require_password=True) is Hj212Check.OK  # migration 0060's


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock)
    assert bucket.available() == 60
    bucket.take(60)
    assert bucket.available() == 0
    clock.now += 10  # one a second
    assert bucket.available() == 10
    clock.now += 3600
    assert bucket.available() == 60  # never more than the burst
    assert TokenBucket(0, clock).available() == 0


def row(device: str, kind: str = "bin", *, gateway: str | None = None, pw: str | None = None,
        hj212: bool = False) -> Row:
    r = Row("bin_deposits", kind, device, datetime(2026, 3, 10, tzinfo=UTC), (), 0, via_hj212=hj212, hj212_pw=pw)
    r.gateway_id = gateway
    return r


def writer(**kwargs: object) -> ReadingWriter:
    return ReadingWriter("postgresql://unused", collector_id="c1", auto_register=True, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("entry", "code"), [
    (None, "not_behind_gateway"),  # unknown: the same words, nothing to enumerate
    (DeviceEntry("bin", "gw-2", None), "not_behind_gateway"),  # behind another gateway
    (DeviceEntry("bin", None, None), "not_behind_gateway"),  # behind none
    (DeviceEntry("sweeper", "gw-1", None), "kind_mismatch"),
    (DeviceEntry("bin", "gw-1", None), None),
])
def test_a_gateway_speaks_only_for_its_own_devices(entry: DeviceEntry | None, code: str | None) -> None:
    problem = writer()._registry_problem(row("b-1", gateway="gw-1"), entry, frozenset())
    assert (problem.reason_code if problem else None) == code
    if problem is not None and code == "not_behind_gateway":
        assert "'b-1'" in problem.reason and "'gw-1'" in problem.reason and "gw-2" not in problem.reason


def test_unknown_devices_on_their_own_topic_are_limited_or_unknown() -> None:
    w = writer()
    limited = w._registry_problem(row("b-9"), None, frozenset({"b-9"}))
    assert limited is not None and limited.reason_code == "auto_register_limited"
    unknown = w._registry_problem(row("b-8"), None, frozenset({"b-9"}))
    assert unknown is not None and unknown.reason_code == "unknown_device"


def test_hj212_rows_need_the_registered_password_and_never_echo_it() -> None:
    w = writer(require_hj212_password=True)
    stored = hash_secret("s3cret")
    with_pw = DeviceEntry("cems", None, stored)
    assert w._registry_problem(row("MN1", "cems", pw="s3cret", hj212=True), with_pw, frozenset()) is None
    wrong = w._registry_problem(row("MN1", "cems", pw="guess", hj212=True), with_pw, frozenset())
    assert wrong is not None and wrong.reason_code == "hj212_wrong_password"
    assert "s3cret" not in wrong.reason and stored not in wrong.reason and "guess" not in wrong.reason
    for entry in (DeviceEntry("cems", None, None), None):
        problem = w._registry_problem(row("MN1", "cems", pw="any", hj212=True), entry, frozenset())
        assert problem is not None and problem.reason_code == "hj212_no_password"
    lax = writer(require_hj212_password=False)
    assert lax._registry_problem(row("MN1", "cems", pw="any", hj212=True), DeviceEntry("cems", None, None),
                                 frozenset()) is None
