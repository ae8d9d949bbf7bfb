"""Fault injection: every fault does what it says to the messages, and the ground truth says exactly
what was done (device, kind, window, expected effect)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sanitel.errors import ConfigError
from sanitel.schemas import hj212
from sanitel.schemas.readings import BinStatus
from sanitel.schemas.topics import DEVICE_KINDS
from sanitel.signal_conditions import condition
from sanitel.simulators.cems_span import LineSpan, simulate_cems_line
from sanitel.simulators.clock import parse_instant, rfc3339
from sanitel.simulators.contract import ContractError, check_message, reading_time
from sanitel.simulators.faults import CEMS_EVENTS, FAULT_KINDS, FaultSpec, Message, parse_fault_names
from sanitel.simulators.models.cems import POLLUTANTS, minute_readings
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
                                                                          "charging_state", "verdict"}
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


def test_silence_expects_an_offline_alert_when_the_gap_it_left_is_longer_than_the_timeout() -> None:
    # planned from its length (840 s: no alert), measured from what was sent: the station reports every 60 s
    # (± 0.2 s), so 14 minutes without readings leave a gap of 15 intervals, 900 s ± the jitter — the offline rules
    # judge that gap against the inactivity timeout (900 s): seed 1 left 900.493 s (an alert), seed 4 899.548 s
    spec = FaultSpec(kind="silence", devices=["ts-0001"], after="1h", duration="14m")
    planned = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3 * 3600.0, faults=[spec])
    assert planned.truth.injected()[0].expected_effect == {"rows": "missing"}
    offline = []
    for messages, sim in [run_silence(spec, seed) for seed in (1, 4)]:
        (record,) = sim.truth.injected()
        sent = [t for topic, _, t in messages if topic.split("/")[3] == "ts-0001"]
        gap = min(t for t in sent if t >= record.end) - max(t for t in sent if t < record.start)
        assert record.details["gap_s"] == round(gap, 3) and 840.0 < gap < 960.0
        assert ("alert" in record.expected_effect) == (gap > 900.0)
        offline.append(record.expected_effect.get("alert"))
    assert offline == ["device_offline", None]


def run_silence(spec: FaultSpec, seed: int) -> tuple[list[tuple[str, bytes, float]], Simulation]:
    sim = Simulation(load_scenario("demo"), seed=seed, start=0.0, duration_s=3 * 3600.0, faults=[spec])
    messages = [(m.topic, m.payload, m.t) for m in sim.messages()]
    sim.finish(sim.end)
    return messages, sim


def test_every_bin_is_full_exactly_when_its_sent_readings_say_so(faulted: tuple[Any, Simulation]) -> None:
    """The ground truth of "full" is the rules' bin_full condition on the fill levels each bin sent (as stored:
    clamped to 0-100 %) — not the model's true fill: one record per episode, from the reading that starts it to
    the reading after its last (or the end of the run), counting its readings."""
    messages, sim = faulted
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for topic, payload, _ in messages:
        if topic.endswith("/status") or "/gateway/" in topic:
            for r in check_message(topic, payload):
                if isinstance(r.reading, BinStatus) and r.reading.fill_level_pct is not None:
                    sent[r.device_id].append((round(reading_time(r.reading), 3),
                                              min(max(r.reading.fill_level_pct, 0.0), 100.0)))
    full = condition("bin_full")
    expected = set()
    for device, series in sent.items():
        times = [t for t, _ in series]
        for a, b in full.episodes([v for _, v in series]):
            expected.add((device, times[a], times[b + 1] if b + 1 < len(times) else sim.end, b - a + 1))
    records = {(r.device_id, round(r.start, 3), round(r.end, 3), r.messages)
               for r in sim.truth.records if r.fault == "bin_full"}
    assert len(expected) >= 3 and records == expected
    assert all(r.expected_effect == {"alert": "bin_overflow"} and r.details["threshold"] == 90.0
               for r in sim.truth.records if r.fault == "bin_full")


def test_a_clock_running_ahead_is_rejected_only_in_real_time() -> None:
    spec = FaultSpec(kind="clock_skew", devices=["sw-0001"], offset="+10m", after=0, duration="10m")
    live = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3600.0, faults=[spec], realtime=True)
    (record,) = live.truth.injected()
    assert record.expected_effect == {"dead_letter": "ts_in_future"}
    small = FaultSpec(kind="clock_skew", devices=["sw-0001"], offset="+2m", after=0, duration="10m")
    (record,) = Simulation(load_scenario("demo"), seed=1, start=0.0, duration_s=3600.0, faults=[small],
                           realtime=True).truth.injected()
    assert record.expected_effect == {"rows": "stored"}  # within the collector's tolerance (5 min)


# --- the CEMS regulatory cases (issue 13): each fault's effect in the line's own readings --------------------

LINE = "cems-y1-l1"
DAY = "2026-03-09T00:00:00+08:00"  # a Shanghai day: local midnight is 16:00 UTC the day before
DAY_T = parse_instant(DAY)
LOCAL_DAY = (DAY_T, DAY_T + 86_400.0)


def line_day(*faults: FaultSpec, interval_s: float = 30.0, protocol: str = "json", hours: float = 24.0,
             seed: int = 3, **kw: Any) -> LineSpan:
    """One line (device cems-y1-l1) for ``hours`` from local midnight, no combustion excursions."""
    return simulate_cems_line(DAY, hours * 3600.0, seed=seed, interval_s=interval_s, protocol=protocol,
                              excursions_per_day=0, faults=list(faults), **kw)


def line_messages(*faults: FaultSpec, protocol: str, hours: float = 24.0) -> tuple[list[Message], Simulation]:
    """The same line's published messages (with their send times) and its ground truth."""
    scenario = parse_scenario({"name": "line", "plants": [{"id": "y1", "protocol": protocol, "excursions_per_day": 0}]})
    sim = Simulation(scenario, seed=3, start=DAY_T, duration_s=hours * 3600.0, faults=list(faults))
    messages = list(sim.messages())
    sim.finish(sim.end)
    return messages, sim


def ts(row: dict[str, Any]) -> float:
    return float(row["ts"].timestamp())


def injected(span: LineSpan, fault: str) -> TruthRecord:
    (record,) = [r for r in span.truth if r.fault == fault and r.source == "injected"]
    return record


def five_minute_means(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Clock-aligned 5-minute furnace averages (epoch seconds // 300: 5-minute boundaries in every real zone)."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        if row["data_kind"] == "rtd":
            buckets[int(ts(row) // 300)].append(row["furnace_temp_c"])
    return {b: mean(v) for b, v in buckets.items()}


@pytest.mark.parametrize("interval_s", [10.0, 30.0, 60.0])
@pytest.mark.parametrize(("count", "effect"), [(6, {"alert": "cems_furnace_850_daily"}),
                                               (5, {"alert": "cems_furnace_below_850",
                                                    "no_alert": "cems_furnace_850_daily"})])
def test_furnace_dips_make_exactly_that_many_five_minute_averages_below_850(
        interval_s: float, count: int, effect: dict[str, str]) -> None:
    spec = FaultSpec(kind="furnace_dips", devices=[LINE], count=count, at="06:00", duration="6h")
    span = line_day(spec, interval_s=interval_s)
    record = injected(span, "furnace_dips")
    assert record.expected_effect == effect and record.details["dips"] == count
    assert (record.start, record.end) == LOCAL_DAY  # a natural day's verdict: the record is the day
    means = five_minute_means(span.readings)
    low = sorted(b for b, m in means.items() if m < 850)
    # Order No. 10 (unverified figure): more than 5 five-minute averages below 850 °C in a natural day
    assert len(low) == count
    assert [rfc3339(b * 300.0) for b in low] == record.details["dip_buckets"]
    assert all(LOCAL_DAY[0] <= b * 300 < LOCAL_DAY[1] for b in low)
    # the arithmetic that makes each dip bucket's mean < 850 (models/cems.py BUCKET_S): readings come every I ± 0.2 s,
    # so a bucket holds at most n = ceil(300/(I − 0.2)) of them, at least d = floor(190/(I + 0.2)) in the dip
    # (≤ 841 °C), the rest on the shoulder (≤ 855 °C):
    #   I = 10 s: n = 31, d = 18: (18·841 + 13·855) / 31 = 846.9;  I = 30 s: n = 11, d = 6: (6·841 + 5·855) / 11 = 847.4;
    #   I = 60 s: n = 6, d = 3: (3·841 + 3·855) / 6 = 848.0
    worst = {10.0: (18 * 841 + 13 * 855) / 31, 30.0: (6 * 841 + 5 * 855) / 11, 60.0: (3 * 841 + 3 * 855) / 6}
    assert worst[interval_s] < 850 and max(means[b] for b in low) <= worst[interval_s]
    below = [r for r in span.readings if r["furnace_temp_c"] < 850]
    assert len(below) == record.messages and all(int(ts(r) // 300) in low for r in below)
    for bucket in low:  # each dip 3-4 minutes: its readings below 850 °C span at most 235 s
        times = [ts(r) for r in below if int(ts(r) // 300) == bucket]
        assert 190 - 2 * interval_s <= times[-1] - times[0] <= 235
    # never 5 minutes on end below 850 °C (the continuous-minutes rule must not fire)
    assert all(180 <= s <= 240 for s in record.details["below_850_s"])
    assert min(r["furnace_temp_c"] for r in span.readings if int(ts(r) // 300) not in low) >= 851


def test_furnace_dips_need_readings_at_least_every_minute() -> None:
    spec = FaultSpec(kind="furnace_dips", devices=[LINE], at="06:00")
    with pytest.raises(ConfigError, match=r"every 300 s.*60s or less"):
        line_day(spec, interval_s=300.0)


def test_json_backfill_leaves_a_gap_in_real_time_data_that_minute_readings_cover() -> None:
    spec = FaultSpec(kind="dau_outage_backfill", devices=[LINE], at="10:00", duration="4h")
    span = line_day(spec)
    record = injected(span, "dau_outage_backfill")
    start, end = DAY_T + 10 * 3600, DAY_T + 14 * 3600
    assert (record.start, record.end) == (start, end)
    assert record.expected_effect == {"rows": "stored_late", "verdict": "valid_after_backfill"}
    rtd = [ts(r) for r in span.readings if r["data_kind"] == "rtd"]
    assert not [t for t in rtd if start <= t < end]
    assert max(t for t in rtd if t < start) > start - 60 and min(t for t in rtd if t >= end) < end + 60
    minutes = [r for r in span.readings if r["data_kind"] == "minute"]
    # 4 h = 240 minutes, one reading each, stamped with the minute's start
    assert [ts(r) for r in minutes] == [start + 60 * k for k in range(240)] and record.messages == 240
    assert all(r["nox_flag"] == "N" and 6 <= r["o2_pct"] <= 12 and r["furnace_temp_c"] >= 880 for r in minutes)
    assert all(r["nox_zs_mg_m3"] is not None and r["extra"] == {"operating_state": "run"} for r in minutes)
    seqs = [r["seq"] for r in span.readings]  # in sending order: the minute data, then the next real-time reading
    assert seqs == sorted(set(seqs))


def test_hj212_backfill_resends_the_span_as_cn_2051_frames_after_the_outage() -> None:
    spec = FaultSpec(kind="dau_outage_backfill", devices=[LINE], at="02:00", duration="2h")
    messages, sim = line_messages(spec, protocol="hj212", hours=6)
    (record,) = sim.truth.injected()
    frames = [(m.t, hj212.parse_frame(m.payload)) for m in messages]
    minute = [(t, f) for t, f in frames if f.cn == "2051"]
    assert len(minute) == record.messages == 120
    assert all(t >= record.end for t, _ in minute)  # re-sent after the outage, before the next real-time frame
    assert not [f for t, f in frames if f.cn == "2011" and record.start <= t < record.end]
    rows = [r for _, f in minute for r in hj212.frame_to_cems_readings(f, device_id=f.mn)]
    assert [parse_instant(str(r["ts"])) for r in rows] == [record.start + 60 * k for k in range(120)]
    first = rows[0]
    assert first["data_kind"] == "minute" and first["nox_flag"] == "N" and first["nox_zs_mg_m3"] is not None
    low, high = (float(first["hj212"]["a21002"][k]) for k in ("Min", "Max"))  # type: ignore[index]
    assert low <= first["nox_mg_m3"] <= high  # type: ignore[operator]
    assert record.details["resent_as"] == "HJ 212 CN=2051 minute data"


def test_o2_calibration_flags_o2_c_while_pollutants_keep_normalised_values() -> None:
    span = line_day(FaultSpec(kind="o2_calibration", devices=[LINE], at="10:00"))
    record = injected(span, "o2_calibration")
    assert record.expected_effect == {"no_alert": "o2_calibration"} and record.details["discarded_minutes"] == 15
    inside = [r for r in span.readings if record.start <= ts(r) < record.end]
    assert len(inside) == record.messages and 29 <= len(inside) <= 31  # 15 min every 30 s
    assert all(r["o2_flag"] == "C" and r["nox_flag"] == "N" and r["nox_zs_mg_m3"] is not None for r in inside)
    middle = (record.start + record.end) / 2
    assert all(r["o2_pct"] < 0.2 for r in inside if ts(r) < middle)          # zero gas
    assert all(17.8 < r["o2_pct"] < 18.2 for r in inside if ts(r) >= middle)  # span gas
    # the data unit normalised with the calibration gas: C_zs = C × 10 / (21 − O2), so ×0.48 then ×3.3
    for r in inside:
        assert r["nox_zs_mg_m3"] == pytest.approx(r["nox_mg_m3"] * 10 / (21 - r["o2_pct"]), rel=0.01, abs=0.2)
    outside = [r for r in span.readings if not record.start <= ts(r) < record.end]
    assert {r["o2_flag"] for r in outside} == {"N", "C"}  # C only in the daily zero/span check (03:00)
    assert all(r["nox_flag"] == "C" for r in outside if r["o2_flag"] == "C")


def test_over_range_reports_the_range_limit_flagged_t_and_lifts_the_half_hour() -> None:
    span = line_day(FaultSpec(kind="over_range", devices=[LINE], at="10:00"))
    record = injected(span, "over_range")
    # 10:00 local is a half-hour boundary: the event starts 5 minutes into it and lasts 20 minutes
    assert (record.start, record.end) == (DAY_T + 10 * 3600 + 300, DAY_T + 10 * 3600 + 1500)
    assert record.expected_effect == {"alert": "cems_so2_over_range"}
    inside = [r for r in span.readings if record.start <= ts(r) < record.end]
    assert len(inside) == record.messages > 0
    assert all(r["so2_flag"] == "T" and r["so2_mg_m3"] == 1000.0 for r in inside)
    assert all(r["so2_flag"] == "N" and r["so2_mg_m3"] < 1000 for r in span.readings
               if not record.start <= ts(r) < record.end and r["o2_flag"] == "N")
    # counted at the range limit the half-hour 10:00-10:30 is far above the EU half-hourly limit (200): 20 of its
    # 30 minutes at ≥ 1000 × 10 / (21 − 6.2) = 675.7 normalised give ≥ 675.7 × 20/30 = 450.5
    half_hour = [r["so2_zs_mg_m3"] for r in span.readings if DAY_T + 36_000 <= ts(r) < DAY_T + 37_800]
    assert mean(half_hour) > 450
    (lifted,) = [r for r in span.truth if r.fault == "over_range_exceedance"]
    assert lifted.source == "model" and lifted.expected_effect == {"alert": "cems_so2_half_hourly"}
    assert (lifted.start, lifted.end) == (DAY_T + 36_000, DAY_T + 37_800)
    with pytest.raises(ValueError, match="must be above the analyser's range"):
        FaultSpec(kind="over_range", level=900)


def test_all_faults_include_the_cems_cases_and_plan_them_clear_of_each_other(
        faulted: tuple[Any, Simulation], records: dict[str, list[TruthRecord]]) -> None:
    counts = {"sweeper": 1, "transfer_station": 1, "bin": 1, "camera": 1}
    assert [(s.kind, s.count) for s in parse_fault_names("all", {**counts, "cems": 2}) if s.kind == "furnace_dips"] \
        == [("furnace_dips", 6), ("furnace_dips", 5)]
    # one line: the five-dip variant would share it with the six (and add up): left out
    assert [s.count for s in parse_fault_names("all", {**counts, "cems": 1}) if s.kind == "furnace_dips"] == [6]
    dips = {r.details["dips"]: r for r in records["furnace_dips"]}
    assert set(dips) == {5, 6} and dips[5].device_id != dips[6].device_id
    assert dips[6].expected_effect == {"alert": "cems_furnace_850_daily"}
    sim = faulted[1]
    for record in (r for r in sim.truth.injected() if r.fault in CEMS_EVENTS and r.fault != "furnace_dips"):
        line = sim.fleet.cems_line(record.device_id)
        others = [w for w in line.busy_windows(sim.start, sim.end) if w.start < record.end and record.start < w.end]
        assert not others, f"{record.fault} on {record.device_id} overlaps {others}"


def test_cems_faults_are_deterministic_for_the_seed() -> None:
    def windows(seed: int) -> list[tuple[str, str, float, float]]:
        sim = Simulation(load_scenario("demo"), seed=seed, start=DAY_T, duration_s=86_400.0,
                         faults="furnace_dips,dau_outage_backfill,o2_calibration,over_range")
        return [(r.device_id, r.fault, r.start, r.end) for r in sim.truth.records]

    assert windows(5) == windows(5) != windows(6)


def test_hj212_outage_is_marked_through_the_api_and_json_outage_by_the_data_unit() -> None:
    outage = [{"at": "02:00", "duration": "6h"}]
    for protocol in ("json", "hj212"):
        span = line_day(protocol=protocol, hours=10, outages=outage, calibration={})
        states = {r.fault: r for r in span.truth if r.fault in ("shut_down", "off", "start_up")}
        # shut-down 1 h, off 6 − 1 − 2 = 3 h, start-up 2 h
        assert {f: r.details["marked_hours"] for f, r in states.items()} == {"shut_down": 1, "off": 3, "start_up": 2}
        assert {f: r.expected_effect["no_alert"] for f, r in states.items()} == {
            "shut_down": "marked_shut_down", "off": "marked_shut", "start_up": "marked_start_up"}
        marks = Counter((r["extra"] or {}).get("operating_mark") for r in span.readings)
        if protocol == "json":
            assert {f: r.details["marked_by"] for f, r in states.items()} == dict.fromkeys(states, "dau")
            assert all("mark_via_api" not in r.expected_effect for r in states.values())
            assert marks == {None: marks[None], "shut_down": 120, "shut": 360, "start_up": 240}  # every 30 s
        else:
            assert marks == {None: len(span.readings)}  # HJ 212 has no mark field
            for record in states.values():
                assert record.details["marked_by"] == "api"
                assert record.expected_effect["mark_via_api"] == {
                    "mark": record.details["mark"], "starts_at": rfc3339(record.start), "ends_at": rfc3339(record.end),
                    "reason": f"simulated outage: {record.details['mark_zh']} ({record.details['mark']})"}
            off = states["off"]
            flagged = [r for r in span.readings if (r["extra"] or {}).get("hj212", {}).get("a01901", {}).get("Flag")]
            assert flagged and all(off.start <= ts(r) < off.end for r in flagged)  # 停运: furnace temperature F


# --- parsers and aggregation never raise anything but their documented errors -------------------------------

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 2000), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["10m", "-2h", "06:00", "so2", "cems", "6h"]))
_KEYS = st.sampled_from(["kind", "devices", "device_kind", "after", "at", "duration", "pollutant", "level",
                         "count", "analyser_range", "field", "offset", "reason", "factor", "group", "bogus"])


@settings(max_examples=300, deadline=None)
@given(spec=st.dictionaries(_KEYS, st.one_of(_VALUES, st.sampled_from(FAULT_KINDS)), max_size=8))
def test_fault_specs_raise_only_validation_errors(spec: dict[str, Any]) -> None:
    try:
        parsed = FaultSpec.model_validate(spec)
    except ValidationError:
        return
    assert parsed.kind in FAULT_KINDS and (parsed.kind == "over_range" or parsed.analyser_range is None)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from([*FAULT_KINDS, "all", ",", " ", "x", "spikes"]), max_size=6).map("".join),
       cems=st.integers(0, 3))
def test_fault_names_raise_only_config_errors(text: str, cems: int) -> None:
    try:
        specs = parse_fault_names(text, {"cems": cems, "sweeper": 1})
    except ConfigError:
        return
    if cems < 2:
        assert not [s for s in specs if s.kind == "furnace_dips" and s.count == 5]


_READINGS = st.lists(st.fixed_dictionaries({
    "ts": st.floats(1.7e9, 1.7e9 + 600), "flag": st.sampled_from("NCMT"), "o2": st.floats(0, 21),
    "value": st.floats(0, 1000), "zs": st.one_of(st.none(), st.floats(0, 5000))}), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(raw=_READINGS)
def test_minute_data_average_each_minute_within_its_readings(raw: list[dict[str, Any]]) -> None:
    readings = []
    for r in sorted(raw, key=lambda r: r["ts"]):
        reading: dict[str, Any] = {"ts": r["ts"], "plant_id": "y1", "line_id": "y1-l1", "gas_is_dry": True,
                                   "o2_pct": r["o2"], "o2_flag": r["flag"], "h2o_pct": 17.0, "h2o_flag": "N",
                                   "flue_temp_c": 150.0, "flue_pressure_kpa": -0.4, "flue_velocity_m_s": 16.0,
                                   "flue_flow_m3_h": 150_000.0, "furnace_temp_c": 950.0, "operating_state": "run"}
        for p in POLLUTANTS:
            reading[f"{p.name}_mg_m3"], reading[f"{p.name}_flag"] = r["value"], r["flag"]
            if r["zs"] is not None:
                reading[f"{p.name}_zs_mg_m3"] = r["zs"]
        readings.append(reading)
    minutes = minute_readings(readings, hj212=True)
    assert [m["ts"] for m in minutes] == sorted({math.floor(r["ts"] / 60) * 60 for r in readings})
    for m in minutes:
        group = [r for r in readings if math.floor(r["ts"] / 60) * 60 == m["ts"]]
        flagged = [r for r in group if r["nox_flag"] == m["nox_flag"]]
        assert flagged and Counter(r["nox_flag"] for r in group)[m["nox_flag"]] == max(
            Counter(r["nox_flag"] for r in group).values())
        low, high = min(r["nox_mg_m3"] for r in flagged), max(r["nox_mg_m3"] for r in flagged)
        assert low - 0.05 <= m["nox_mg_m3"] <= high + 0.05 and m["data_kind"] == "minute"
        assert m["hj212_min_max"]["nox_mg_m3"] == (low, high)
