"""Fault injection: every fault does what it says to the messages, and the ground truth says exactly
what was done (device, kind, window, expected effect)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

import msgspec
import pytest

from sanitel.errors import ConfigError
from sanitel.schemas import hj212
from sanitel.schemas.topics import DEVICE_KINDS
from sanitel.simulators.clock import parse_instant
from sanitel.simulators.contract import ContractError, check_message, reading_time
from sanitel.simulators.faults import FAULT_KINDS, FaultSpec, parse_fault_names
from sanitel.simulators.run import Simulation, generate
from sanitel.simulators.scenario import load_scenario, parse_scenario
from sanitel.simulators.truth import TruthRecord, read_ground_truth
from tests.support import simulator_runs as fixtures


@pytest.fixture(scope="module")
def faulted() -> tuple[tuple[tuple[str, bytes, float], ...], Simulation]:
    return fixtures.faulted_demo_day()


@pytest.fixture(scope="module")
def records(faulted: tuple[Any, Simulation]) -> dict[str, list[TruthRecord]]:
    out: dict[str, list[TruthRecord]] = defaultdict(list)
    for record in faulted[1].truth.injected():
        out[record.fault].append(record)
    return out


def device_messages(messages: tuple[tuple[str, bytes, float], ...], device: str,
                    start: float = float("-inf"), end: float = float("inf")) -> list[tuple[str, bytes, float]]:
    return [m for m in messages if m[0].split("/")[3] == device and start <= m[2] < end]


def only(records: dict[str, list[TruthRecord]], fault: str, **details: Any) -> TruthRecord:
    matching = [r for r in records[fault] if all(r.details.get(k) == v for k, v in details.items())]
    assert len(matching) == 1, f"expected one {fault} {details}, got {matching}"
    return matching[0]


def test_every_fault_kind_is_recorded_with_device_window_and_expected_effect(
        faulted: tuple[Any, Simulation], records: dict[str, list[TruthRecord]], tmp_path: Path) -> None:
    assert set(records) == set(FAULT_KINDS)
    sim = faulted[1]
    for record in sim.truth.injected():
        assert sim.fleet.kind_of(record.device_id) == record.kind and record.kind in DEVICE_KINDS
        assert sim.start <= record.start <= record.end <= sim.end
        assert record.expected_effect and set(record.expected_effect) <= {"alert", "no_alert", "dead_letter", "rows",
                                                                          "charging_state"}
        assert record.messages > 0, f"{record.fault} on {record.device_id} touched no message"
    written = read_ground_truth(sim.truth.write(tmp_path / "truth.jsonl"))
    assert len(written) == len(sim.truth.records)
    assert [r["start"] for r in written] == sorted(r["start"] for r in written)
    first = written[0]
    assert set(first) == {"device_id", "kind", "fault", "source", "start", "end", "expected_effect", "messages",
                          "details"}
    assert first["start"].endswith("Z") and parse_instant(first["start"]) >= sim.start


def test_expected_effects_name_the_dead_letter_reason_and_the_alert(records: dict[str, list[TruthRecord]]) -> None:
    # the demo day lies in the past: a clock 10 minutes ahead is not ahead of the collector's clock
    ahead = only(records, "clock_skew", offset_s=600.0)
    assert ahead.expected_effect == {"rows": "stored"} and ahead.details["future_only_in_real_time"]
    assert only(records, "clock_skew", offset_s=-7200.0).expected_effect == {"rows": "stored_late"}
    assert only(records, "duplicate").expected_effect == {"rows": "deduplicated"}
    assert only(records, "silence").expected_effect["alert"] == "device_offline"
    assert only(records, "emission_exceedance").expected_effect == {"alert": "cems_nox_half_hourly"}
    assert only(records, "bin_fire").expected_effect == {"alert": "bin_fire"}
    reasons = {r.details["reason"]: r.expected_effect["dead_letter"] for r in records["malformed"]}
    assert set(reasons) == {"invalid_json", "wrong_type", "out_of_range"}


def test_malformed_payloads_really_are_malformed(faulted: tuple[Any, Simulation],
                                                 records: dict[str, list[TruthRecord]]) -> None:
    messages = faulted[0]
    assert records["malformed"]
    for record in records["malformed"]:
        inside = device_messages(messages, record.device_id, record.start, record.end)
        assert len(inside) == record.messages > 0
        for topic, payload, _ in inside:
            with pytest.raises(ContractError) as caught:
                check_message(topic, payload)
            if record.details["reason"] == "invalid_json":
                with pytest.raises((msgspec.DecodeError, hj212.Hj212Error)):
                    hj212.parse_frame(payload) if payload.startswith(b"##") else msgspec.json.decode(payload)
            else:
                assert record.details["field"] in str(caught.value) or "Expected" in str(caught.value)
        for topic, payload, _ in device_messages(messages, record.device_id, record.end):
            check_message(topic, payload)  # healthy again after the window


def test_duplicates_are_byte_identical_redeliveries(faulted: tuple[Any, Simulation],
                                                    records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "duplicate")
    inside = device_messages(faulted[0], record.device_id, record.start, record.end)
    counts = Counter(payload for _, payload, _ in inside)
    assert set(counts.values()) == {2} and len(counts) == record.messages
    before = device_messages(faulted[0], record.device_id, end=record.start)
    assert set(Counter(p for _, p, _ in before).values()) == {1}


def test_silent_device_sends_nothing_in_its_window(faulted: tuple[Any, Simulation],
                                                   records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "silence")
    messages = faulted[0]
    assert device_messages(messages, record.device_id, record.start, record.end) == []
    assert device_messages(messages, record.device_id, record.start - 3600, record.start)
    assert device_messages(messages, record.device_id, record.end, record.end + 3600)


def test_clock_skew_offsets_the_device_time(faulted: tuple[Any, Simulation],
                                            records: dict[str, list[TruthRecord]]) -> None:
    assert records["clock_skew"]
    for record in records["clock_skew"]:
        inside = device_messages(faulted[0], record.device_id, record.start, record.end)
        assert len(inside) == record.messages > 0
        for topic, payload, sent in inside:
            (checked,) = check_message(topic, payload)
            assert reading_time(checked.reading) - sent == pytest.approx(record.details["offset_s"], abs=0.01)


def test_out_of_order_delivery_reorders_but_loses_nothing(faulted: tuple[Any, Simulation],
                                                          records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "out_of_order")
    seqs = [msgspec.json.decode(p)["seq"] for t, p, _ in faulted[0] if t.split("/")[3] == record.device_id]
    assert seqs != sorted(seqs)
    assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs)))  # none lost, none doubled


def test_stuck_sensor_freezes_one_field(faulted: tuple[Any, Simulation],
                                        records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "stuck_sensor")
    field = record.details["field"]
    values = {msgspec.json.decode(p)[field] for _, p, _ in
              device_messages(faulted[0], record.device_id, record.start, record.end)}
    assert values == {record.details["value"]}
    before = {msgspec.json.decode(p)[field] for _, p, _ in
              device_messages(faulted[0], record.device_id, record.start - 7200, record.start)}
    assert len(before) > 1


def test_spike_is_one_stored_outlier(faulted: tuple[Any, Simulation], records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "spike")
    field, value = record.details["field"], record.details["value"]
    spiked = [(t, p) for t, p, _ in device_messages(faulted[0], record.device_id)
              if msgspec.json.decode(p).get(field) == value]
    assert len(spiked) == record.messages == 1
    check_message(*spiked[0])  # inside the physical range: stored, not dead-lettered


def test_burst_reports_many_times_faster(faulted: tuple[Any, Simulation],
                                         records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "burst")
    span = record.end - record.start
    inside = device_messages(faulted[0], record.device_id, record.start, record.end)
    before = device_messages(faulted[0], record.device_id, record.start - span, record.start)
    assert len(inside) >= 5 * max(len(before), 1)
    for message in inside:
        check_message(*message[:2])


def _nox_half_hours(messages: tuple[tuple[str, bytes, float], ...], device: str) -> dict[int, float]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for topic, payload, _ in device_messages(messages, device):
        (checked,) = check_message(topic, payload)
        reading: Any = checked.reading
        if reading.nox_flag == "N":
            buckets[int(reading_time(reading) // 1800)].append(reading.nox_zs_mg_m3)
    return {bucket: mean(values) for bucket, values in buckets.items() if len(values) >= 30}


def test_emission_exceedance_lifts_a_whole_half_hour_average(faulted: tuple[Any, Simulation],
                                                             records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "emission_exceedance")
    assert record.start % 1800 == 0 and record.end - record.start >= 1800
    averages = _nox_half_hours(faulted[0], record.device_id)
    inside = [avg for bucket, avg in averages.items() if record.start <= bucket * 1800 < record.end]
    outside = [avg for bucket, avg in averages.items() if not record.start - 1800 <= bucket * 1800 < record.end]
    assert inside and min(inside) > 400   # EU half-hourly limit (A) for NOx
    assert max(outside) < 250


def test_charger_failure_leaves_the_battery_uncharged(faulted: tuple[Any, Simulation],
                                                      records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "charger_failure")
    readings = [msgspec.json.decode(p) for _, p, _ in
                device_messages(faulted[0], record.device_id, record.start, record.end)]
    faulty = [r for r in readings if r["charging_state"] == "fault"]
    assert faulty and all(r["pack_current_a"] == 0 for r in faulty)
    assert max(r["soc_pct"] for r in faulty) <= faulty[0]["soc_pct"]
    low = [r for r in faulted[1].truth.records if r.fault == "low_soc" and r.device_id == record.device_id]
    assert low and low[0].expected_effect == {"alert": "sweeper_low_soc"} and low[0].start > record.start


def test_bin_fire_heats_the_bin_and_the_camera_sees_smoke(faulted: tuple[Any, Simulation],
                                                          records: dict[str, list[TruthRecord]]) -> None:
    record = only(records, "bin_fire")
    statuses = [msgspec.json.decode(p) for t, p, _ in
                device_messages(faulted[0], record.device_id, record.start, record.end) if t.endswith("/status")]
    assert any(s["fire_alarm"] and s["temperature_c"] >= 60 for s in statuses)
    point = record.details["point_id"]
    camera = f"cam-{point[3:]}"
    seen = [msgspec.json.decode(p)["detection"] for _, p, _ in
            device_messages(faulted[0], camera, record.start, record.start + 60)]
    assert "smoke_fire" in seen


def test_faults_reach_devices_behind_a_gateway() -> None:
    scenario = load_scenario("district").scaled(0.02)
    silenced = "bin-00002-k"
    spec = FaultSpec(kind="silence", devices=[silenced], after=0, duration=7200)
    sim = Simulation(scenario, seed=4, start=parse_instant("2026-11-22T07:00:00+08:00"), duration_s=7200.0,
                     faults=[spec])
    carried = [r.device_id for m in sim.messages() if "/gateway/" in m.topic for r in check_message(m.topic, m.payload)]
    assert carried and silenced not in carried and "bin-00002-o" in carried
    (record,) = sim.truth.injected()
    assert record.messages > 0
    duplicate = FaultSpec(kind="duplicate", devices=[silenced])
    with pytest.raises(ConfigError, match="gateway"):
        Simulation(scenario, seed=4, start=0.0, duration_s=60.0, faults=[duplicate])


def test_ground_truth_file_written_by_generate(tmp_path: Path) -> None:
    path = tmp_path / "gt" / "truth.jsonl"
    messages = list(generate("demo", seed=2, start="2026-11-22T12:00:00+08:00", duration_s=3 * 3600.0,
                             faults="silence,duplicate", ground_truth_path=path))
    assert messages
    injected = [r for r in read_ground_truth(path) if r["source"] == "injected"]
    assert {r["fault"] for r in injected} == {"silence", "duplicate"}


def test_fault_specs_validate_with_clear_errors() -> None:
    with pytest.raises(ConfigError, match="unknown fault 'spikes'"):
        parse_fault_names("spike,spikes")
    with pytest.raises(ValueError, match="'offset' applies only to clock_skew"):
        FaultSpec(kind="silence", offset="+10m")
    with pytest.raises(ValueError, match="emission_exceedance faults apply to cems"):
        FaultSpec(kind="emission_exceedance", device_kind="sweeper")
    bad = {"name": "x", "districts": [{"id": "d", "lat": 22.5, "lon": 114.0}], "sweepers": {"count": 1},
           "faults": [{"kind": "clock_skew", "offset": "ten minutes"}]}
    with pytest.raises(ConfigError, match=r"faults\.0\.offset: .*'ten minutes' is not a duration"):
        parse_scenario(bad, source="bad.yaml")
    with pytest.raises(ConfigError, match="unknown device id"):
        Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=60.0,
                   faults=[FaultSpec(kind="silence", devices=["sw-9999"])])
    with pytest.raises(ConfigError, match="no cems devices"):
        Simulation(load_scenario("demo").model_copy(update={"plants": []}), seed=1, start=0.0, duration_s=60.0,
                   faults="emission_exceedance")


def test_silence_expects_an_offline_alert_only_past_the_inactivity_timeout() -> None:
    specs = [FaultSpec(kind="silence", devices=["cems-p1-l1"], after=0, duration="30m"),
             FaultSpec(kind="silence", devices=["cam-00001"], after=0, duration="30m"),
             FaultSpec(kind="silence", devices=["sw-0001"], after=0, duration="10m"),
             FaultSpec(kind="silence", devices=["ts-0001"], after=0, duration="16m")]
    sim = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3600.0, faults=specs)
    effects = {r.device_id: r.expected_effect for r in sim.truth.injected()}
    assert effects == {"cems-p1-l1": {"rows": "missing", "alert": "cems_offline"},
                       "cam-00001": {"rows": "missing"},
                       "sw-0001": {"rows": "missing"},
                       "ts-0001": {"rows": "missing", "alert": "device_offline"}}


def test_a_clock_running_ahead_is_rejected_only_in_real_time() -> None:
    spec = FaultSpec(kind="clock_skew", devices=["sw-0001"], offset="+10m", after=0, duration="10m")
    live = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3600.0, faults=[spec], realtime=True)
    (record,) = live.truth.injected()
    assert record.expected_effect == {"dead_letter": "ts_in_future"}
    small = FaultSpec(kind="clock_skew", devices=["sw-0001"], offset="+2m", after=0, duration="10m")
    (record,) = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3600.0, faults=[small],
                           realtime=True).truth.injected()
    assert record.expected_effect == {"rows": "stored"}  # within the collector's tolerance (5 min)
