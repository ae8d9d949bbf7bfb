"""Everything the simulators publish validates against schemas/ — every kind, every shipped scenario —
and a run is a pure function of its seed."""

from __future__ import annotations

import hashlib
from collections import Counter

import msgspec
import pytest

from sanitel.schemas import hj212
from sanitel.schemas.readings import BY_KIND_STREAM
from sanitel.simulators.contract import ContractError, check_message
from sanitel.simulators.run import generate
from sanitel.simulators.scenario import Scenario, load_scenario
from tests.support import simulator_runs as fixtures


def _check_all(messages: list[tuple[str, bytes, float]]) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    for topic, payload, _ in messages:
        for checked in check_message(topic, payload):
            seen[(checked.kind, checked.stream)] += 1
    return seen


@pytest.fixture(scope="module")
def demo_day() -> list[tuple[str, bytes, float]]:
    return list(fixtures.demo_day())


def test_every_message_of_a_demo_day_validates_and_every_reading_type_appears(
        demo_day: list[tuple[str, bytes, float]]) -> None:
    seen = Counter((r.kind, r.stream) for _, r in fixtures.demo_day_readings())
    assert set(seen) == set(BY_KIND_STREAM), f"reading types never produced: {set(BY_KIND_STREAM) - set(seen)}"
    # the HJ 212 plant's frames went through the codec, not around it
    assert any(topic.endswith("/hj212") for topic, _, _ in demo_day)


@pytest.mark.parametrize(("name", "scale", "hours"), [("district", 0.1, 2.0), ("shenzhen", 0.0005, 1.0)])
def test_every_shipped_scenario_validates_at_small_scale(name: str, scale: float, hours: float) -> None:
    scenario = load_scenario(name).scaled(scale)
    messages = list(generate(scenario, seed=5, start="2026-11-22T05:00:00+08:00", duration_s=hours * 3600, faults=[]))
    seen = _check_all(messages)
    assert seen[("sweeper", "telemetry")] and seen[("cems", "telemetry")] and seen[("bin", "status")]
    if scenario.sorting_points.gateway_interval:
        assert any("/gateway/" in topic for topic, _, _ in messages)


def test_gateway_batches_carry_many_devices_each_valid() -> None:
    scenario = load_scenario("district").scaled(0.05)
    batches = [(t, p) for t, p, _ in generate(scenario, seed=2, start="2026-11-22T07:00:00+08:00",
                                              duration_s=1800.0, faults=[]) if "/gateway/" in t]
    assert batches
    sizes = [len(check_message(t, p)) for t, p in batches]
    assert max(sizes) > 1
    assert all(r.kind == "bin" for t, p in batches for r in check_message(t, p))


def test_hj212_frames_parse_with_the_shared_codec(demo_day: list[tuple[str, bytes, float]]) -> None:
    frames = [(t, p) for t, p, _ in demo_day if t.endswith("/hj212")]
    assert len(frames) > 2000  # one line every 30 s for a day
    frame = hj212.parse_frame(frames[0][1])
    assert (frame.st, frame.cn, frame.flag) == ("31", "2011", hj212.FLAG_V2017)
    assert frame.qn is not None and len(frame.qn) == 17
    assert {"a21002", "a21005", "a19001", "a34013"} <= set(frame.cp.codes)
    readings = hj212.frame_to_cems_readings(frame, device_id=frame.mn)
    assert readings[0]["nox_flag"] in ("N", "C", "M")


def test_the_checker_itself_rejects_what_breaks_the_contract() -> None:
    topic = "sanitation/shenzhen/sweeper/sw-0001/telemetry"
    check_message(topic, b'{"ts":"2026-11-22T07:00:00.123Z","seq":1,"soc_pct":50.0}')
    for bad in (b'{"ts":"2026-11-22T07:00:00Z","soc_pct":"high"}',     # wrong type
                b'{"ts":"2026-11-22T07:00:00Z","soc_pct":140}',        # out of range
                b'{"ts":"2026-11-22T07:00:00Z","soc_pc":40}',          # misspelt field
                b'{"ts":"2026-11-22T07:00:00"}',                       # no offset
                b'{"ts":"2026-11-22T07:00'):                           # not JSON
        with pytest.raises(ContractError):
            check_message(topic, bad)
    with pytest.raises(ContractError):
        check_message("sanitation/shenzhen/boat/b-1/telemetry", b"{}")


def _digest(messages: list[tuple[str, bytes, float]]) -> str:
    h = hashlib.sha256()
    for topic, payload, t in messages:
        h.update(topic.encode() + b"\0" + payload + b"\0" + repr(t).encode())
    return h.hexdigest()


def test_same_seed_same_messages_different_seed_different() -> None:
    def run(seed: int) -> list[tuple[str, bytes, float]]:
        return list(generate("demo", seed=seed, start="2026-11-22T06:00:00+08:00", duration_s=3600.0, faults="all"))

    first, again, other = run(3), run(3), run(4)
    assert len(first) > 1000
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_a_device_does_not_depend_on_the_rest_of_the_fleet() -> None:
    """Per-device randomness: adding devices to a scenario leaves existing devices' readings unchanged."""
    small = load_scenario("demo").scaled(0.5)
    big = load_scenario("demo")

    def sweeper_one(scenario: Scenario) -> list[bytes]:
        return [p for t, p, _ in generate(scenario, seed=9, start="2026-11-22T06:00:00+08:00",
                                          duration_s=1800.0, faults=[]) if "/sw-0001/" in t]

    assert sweeper_one(small) == sweeper_one(big)


def test_sequence_numbers_increase_per_device(demo_day: list[tuple[str, bytes, float]]) -> None:
    # per device and stream: a station's weighbridge counts its tickets apart from its telemetry (each stream is its
    # own table, deduplicated on (device_id, ts, seq))
    last: dict[tuple[str, str], int] = {}
    for topic, payload, _ in demo_day:
        if topic.endswith("/hj212"):
            continue
        key = (topic.split("/")[3], topic.split("/")[4])
        seq = msgspec.json.decode(payload)["seq"]
        assert seq > last.get(key, -1), f"{key}: seq {seq} after {last.get(key)}"
        last[key] = seq
    assert len(last) > 10, "the demo day has devices with sequence numbers"
