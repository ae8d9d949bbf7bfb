"""The simulators' ground truth says "full", "exceeded" and "offline" the way the alert rules do (issue 18): from the
one definition of ``sanitel/signal_conditions.yaml``, judged on the values the devices sent (after faults, as
stored), so a changed rule cannot silently disagree with the truth its test checks."""

from __future__ import annotations

import dataclasses
import math
import re
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel import signal_conditions
from sanitel.schemas.readings import BinStatus
from sanitel.signal_conditions import Condition, condition
from sanitel.simulators.clock import LocalTime, parse_instant
from sanitel.simulators.contract import check_message, reading_time
from sanitel.simulators.faults import OFFLINE_TIMEOUT_S, FaultInjector, Spike
from sanitel.simulators.models.base import Emission
from sanitel.simulators.models.sorting_point import STORED_FILL
from sanitel.simulators.models.station import TransferStation
from sanitel.simulators.run import Simulation
from sanitel.simulators.scenario import parse_scenario
from sanitel.simulators.truth import GroundTruth, SignalWatch, TruthRecord, signal_judge

MIGRATION = Path(__file__).resolve().parents[2] / "schemas" / "migrations" / "0001_registry.sql"
DAY = "2026-03-09T00:00:00+08:00"
EVERY_5_MIN = 300.0


def bin_watch(truth: GroundTruth, device_id: str = "bin-00001-k") -> SignalWatch:
    """A bin's watch as its sorting point makes it (models/sorting_point.py)."""
    return SignalWatch(signal_judge("bin_full", "bin_overflow", bounds=STORED_FILL), device_id, "bin", truth.add,
                       {"point_id": "sp-00001"})


def fed(values: list[float], watch_of: Any = bin_watch, field: str = "fill_level_pct") -> list[TruthRecord]:
    """Readings 5 minutes apart (reading i at t = 300·i) through a watch; the records it made, closed at the end."""
    truth = GroundTruth()
    watch = watch_of(truth)
    for i, v in enumerate(values):
        watch.see(i * EVERY_5_MIN, {field: v})
    return truth.records


def spans(records: list[TruthRecord]) -> list[tuple[float, float, int]]:
    return [(r.start, r.end, r.messages) for r in records]


def expected_spans(values: list[float], params: dict[str, Any] | None = None, name: str = "bin_full",
                   bounds: tuple[float, float] | None = STORED_FILL) -> list[tuple[float, float, int]]:
    """``Condition.episodes`` of the values as stored → (start t, end t, readings): from the reading that starts it
    to the reading after its last (none after: still open, inf)."""
    stored = [min(max(v, bounds[0]), bounds[1]) for v in values] if bounds else values
    return [(a * EVERY_5_MIN, (b + 1) * EVERY_5_MIN if b + 1 < len(values) else math.inf, b - a + 1)
            for a, b in signal_conditions.condition(name).episodes(stored, params)]  # as patched, if it is


# A bin hovering at 88-92 % for 40 minutes, then emptied (reading 11): never 3 readings in a row at 90 % or more
# (the old rule's "3 consecutive ≥ 90", which missed 14 of 147 such episodes).
HOVERING = [86.4, 88.7, 90.3, 89.2, 91.1, 88.9, 90.6, 89.7, 91.8, 88.5, 90.2, 2.4, 1.1, 3.0, 0.6]


def test_a_hovering_bin_is_full_by_the_median_of_its_last_five_readings() -> None:
    # bin_full: median of the last 5 readings ≥ 90 starts it, a median below 80 ends it (no verdict before 5):
    #   i=4  median(86.4 88.7 90.3 89.2 91.1) = 89.2  < 90   not yet
    #   i=5  median(88.7 90.3 89.2 91.1 88.9) = 89.2  < 90   not yet
    #   i=6  median(90.3 89.2 91.1 88.9 90.6) = 90.3  ≥ 90   full from t = 6 × 300 = 1800 s
    #   i=7..12 medians 89.7 90.6 89.7 90.2 89.7 88.5 ≥ 80   still full (emptied at i=11: the median lags)
    #   i=13 median(88.5 90.2 2.4 1.1 3.0)   = 3.0   < 80   ends at t = 13 × 300 = 3900 s; readings 6..12: 7
    assert not any(all(v >= 90 for v in HOVERING[i:i + 3]) for i in range(len(HOVERING) - 2))
    (record,) = fed(HOVERING)
    assert (record.start, record.end, record.messages) == (1800.0, 3900.0, 7)
    assert spans([record]) == expected_spans(HOVERING)
    assert record.fault == "bin_full" and record.source == "model" and record.kind == "bin"
    assert record.expected_effect == {"alert": "bin_overflow"}
    # the definition travels with the record: a reader sees what "full" meant
    assert record.details == {
        "condition": "bin_full", "field": "fill_level_pct", "op": ">=", "threshold": 90.0, "clear": 80.0,
        "smoothing": "median of the last 5 readings", "judged_on": "the values sent, after faults, as stored "
        "(clamped to 0-100)", "defined_in": "sanitel/signal_conditions.yaml", "point_id": "sp-00001"}


def test_one_wild_reading_of_95_is_not_full() -> None:
    # medians of 5 around a single 95: 70.5, 71.0, 70.9, 71.3 (i=4..7) — never near 90
    calm = [70.2, 71.0, 69.8, 70.5, 95.0, 71.3, 70.9, 72.0]
    # next to 88 %: median(88.0 88.4 95.0 88.9 88.2) = 88.4, median(88.4 95.0 88.9 88.2 88.6) = 88.9 — still < 90
    near = [88.0, 88.4, 95.0, 88.9, 88.2, 88.6, 88.1]
    assert fed(calm) == [] and fed(near) == []
    assert expected_spans(calm) == expected_spans(near) == []


def test_the_fill_level_is_judged_as_stored_clamped_to_0_100() -> None:
    # a bin stuffed above the rim reads 104-120 %: stored as 100; below 0 stored as 0. median(100 100 100 100 100)
    # = 100 ≥ 90 from i=4 (t=1200); then median(100 100 0 0 0) = 0 < 80 at i=9 (t=2700): readings 4..8, 5
    values = [104.0, 112.5, 120.0, 101.0, 100.0, 103.0, 108.0, -3.0, -1.0, -4.0]
    assert spans(fed(values)) == [(1200.0, 2700.0, 5)] == expected_spans(values)


def test_a_changed_definition_changes_the_truth(monkeypatch: pytest.MonkeyPatch) -> None:
    # HOVERING with a threshold of 85 (clear 75): median 89.2 ≥ 85 already at i=4 → from t=1200 to t=3900, 9 readings
    stricter = dataclasses.replace(condition("bin_full"), threshold=85.0, clear=75.0)
    original = signal_conditions.condition
    monkeypatch.setattr(signal_conditions, "condition",
                        lambda name: stricter if name == "bin_full" else original(name))
    assert spans(fed(HOVERING)) == [(1200.0, 3900.0, 9)] == expected_spans(HOVERING)
    assert fed(HOVERING)[0].details["threshold"] == 85.0


def test_a_changed_definition_changes_a_simulated_day_s_truth(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped, sent = day_of_bins(seed=5)
    assert shipped and shipped == {d: bin_episodes(v) for d, v in sent.items() if bin_episodes(v)}
    stricter = dataclasses.replace(condition("bin_full"), threshold=85.0, clear=75.0)
    original = signal_conditions.condition
    monkeypatch.setattr(signal_conditions, "condition",
                        lambda name: stricter if name == "bin_full" else original(name))
    changed, sent_again = day_of_bins(seed=5)
    assert sent_again == sent  # the same bins sent the same values …
    assert changed != shipped  # … and "full" moved with the definition, to its episodes at 85 %
    assert changed == {d: bin_episodes(v) for d, v in sent.items() if bin_episodes(v)}


POINTS: dict[str, Any] = {"name": "bins", "timezone": "Asia/Shanghai",
                          "sorting_points": {"count": 6, "status_interval": "5m", "cameras": 0}}


def day_of_bins(seed: int) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """A day of six sorting points: per bin its bin_full records (start, end) and the fill levels it sent (t, %)."""
    sim = Simulation(parse_scenario(POINTS, source="test"), seed=seed, start=parse_instant(DAY), duration_s=86_400.0)
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m in sim.messages():
        for r in check_message(m.topic, m.payload):
            if isinstance(r.reading, BinStatus) and r.reading.fill_level_pct is not None:
                sent[r.device_id].append((reading_time(r.reading), r.reading.fill_level_pct))
    sim.finish(sim.end)
    truth: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in sim.truth.records:
        if record.fault == "bin_full":
            truth[record.device_id].append((round(record.start, 3), round(record.end, 3)))
    return dict(truth), dict(sent)


def bin_episodes(sent: list[tuple[float, float]], end: float = parse_instant(DAY) + 86_400.0,
                 ) -> list[tuple[float, float]]:
    times = [round(t, 3) for t, _ in sent]  # as sent: RFC 3339 with milliseconds
    stored = [min(max(v, 0.0), 100.0) for _, v in sent]
    return [(times[a], times[b + 1] if b + 1 < len(times) else end)
            for a, b in signal_conditions.condition("bin_full").episodes(stored)]


def test_the_truth_is_the_same_for_the_same_seed() -> None:
    def records(seed: int) -> list[dict[str, Any]]:
        sim = Simulation(parse_scenario(POINTS, source="test"), seed=seed, start=parse_instant(DAY),
                         duration_s=86_400.0)
        for _ in sim.messages():
            pass
        sim.finish(sim.end)
        return [r.as_json() for r in sim.truth.sorted_records()]

    first = records(8)
    assert first and first == records(8)
    assert first != records(9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(700, 1000).map(lambda n: n / 10.0) | st.sampled_from([-5.0, 0.0, 79.9, 80.0, 90.0, 130.0]),
                max_size=40))
def test_reading_by_reading_equals_the_episodes_of_the_whole_series(values: list[float]) -> None:
    assert spans(fed(values)) == expected_spans(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40).map(lambda n: n / 100.0), max_size=30), st.sampled_from(["1", "2", "3"]))
def test_station_odour_follows_the_grade_reading_by_reading(values: list[float], grade: str) -> None:
    def watch_of(truth: GroundTruth) -> SignalWatch:
        judge = signal_judge("station_h2s_exceeded", "station_h2s", params={"odour_grade": grade})
        return SignalWatch(judge, "ts-0001", "transfer_station", truth.add)

    got = fed(values, watch_of, "h2s_mg_m3")
    assert spans(got) == expected_spans(values, {"odour_grade": grade}, "station_h2s_exceeded", None)
    assert all(r.details["params"] == {"odour_grade": grade} for r in got)


def test_a_city_of_bins_keeps_only_the_smoothing_window() -> None:
    truth = GroundTruth()
    watches = [bin_watch(truth, f"bin-{n:05d}-k") for n in range(500)]
    tracemalloc.start()
    try:
        for i in range(10):
            for w in watches:
                w.see(i * EVERY_5_MIN, {"fill_level_pct": 40.0 + (i % 7)})
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10, 110):  # ten times as many readings
            for w in watches:
                w.see(i * EVERY_5_MIN, {"fill_level_pct": 40.0 + (i % 7)})
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert all(len(w.window) == 5 for w in watches) and truth.records == []
    assert after - before < 5_000  # no growth with the run's length (500 bins × 100 readings more: 50,000 values)


# --- faulted devices: judged on what the faults left ----------------------------------------------------------------


def spiked(count: int, level: float) -> list[TruthRecord]:
    """A bin at 70 % whose readings pass a spike fault (count readings at ``level``) as run.py passes them."""
    truth = GroundTruth()
    watch = bin_watch(truth)
    watch.handed_over = True
    fault = TruthRecord("bin-00001-k", "bin", "spike", 3 * EVERY_5_MIN, 3 * EVERY_5_MIN, {"rows": "stored"})
    injector = FaultInjector([Spike(fault, "fill_level_pct", level, count)], {"bin-00001-k": [watch]})
    for i in range(12):
        injector.reading("bin-00001-k", i * EVERY_5_MIN, {"ts": i * EVERY_5_MIN, "fill_level_pct": 70.0})
    return [r for r in truth.records if r.fault == "bin_full"]


def test_a_spiked_bin_is_judged_on_the_spiked_values() -> None:
    # readings 3.. carry the spike: one 95 → median(70 70 70 95 70) = 70, none; three 95s (readings 3, 4, 5):
    # median(70 70 70 95 95) = 70 at i=4, median(70 70 95 95 95) = 95 ≥ 90 at i=5 (t=1500), then
    # median(70 95 95 95 70) = 95 at i=6, median(95 95 95 70 70) = 95 at i=7, median(95 95 70 70 70) = 70 < 80 at
    # i=8 (t=2400): readings 5..7, 3
    assert spiked(1, 95.0) == []
    assert spans(spiked(3, 95.0)) == [(1500.0, 2400.0, 3)]


def station_day(injector: FaultInjector | None, hours: float = 3.0) -> tuple[GroundTruth, list[float]]:
    """A station stepped as run.py steps it, its readings through ``injector`` when given; the H2S it sent."""
    truth = GroundTruth()
    start = parse_instant("2026-03-09T08:00:00+08:00")
    station = TransferStation("ts-0001", seed=2, city="x", start=start, local=LocalTime("Asia/Shanghai"),
                              interval_s=60.0, trucks_per_day=60.0, incidents=truth.add)
    if injector is not None:
        for watch in station.signal_watches("ts-0001"):
            watch.handed_over = True
        injector.watches = {"ts-0001": station.signal_watches("ts-0001")}
    sent: list[float] = []
    out: list[Emission] = []
    t = station.first_due()
    while t < start + hours * 3600.0:
        t_next = station.step(t, out)
        for e in out:
            body = e.body if injector is None else injector.reading(e.device_id, e.t, e.body)
            if body is not None and body.get("h2s_mg_m3") is not None:
                sent.append(body["h2s_mg_m3"])
        out.clear()
        t = t_next
    return truth, sent


def test_station_odour_exceeds_only_on_what_the_station_sent() -> None:
    clean, _ = station_day(None)
    assert clean.records == []  # a normal day stays under grade 2 (0.06 mg/m³ H2S, 1.5 NH3)

    def with_spike(count: int) -> tuple[GroundTruth, list[float]]:
        start = parse_instant("2026-03-09T09:00:00+08:00")
        fault = TruthRecord("ts-0001", "transfer_station", "spike", start, start, {"rows": "stored"})
        return station_day(FaultInjector([Spike(fault, "h2s_mg_m3", 0.2, count)]))

    one, _ = with_spike(1)
    assert one.records == []  # a single reading of 0.2 mg/m³: the median of 5 stays at the background
    six, sent = with_spike(6)
    (record,) = [r for r in six.records if r.fault == "station_h2s_exceeded"]
    # six readings of 0.2 in a row (s0..s5) amid a background of ~0.01: the median of 5 is 0.2 > 0.06 from s2
    # (b b .2 .2 .2) to the last window still holding three, (.2 .2 .2 b b) at s7, and the background (≤ 0.05,
    # the clear level) at s8: s2..s7, 6 readings exceeded
    (episode,) = condition("station_h2s_exceeded").episodes(sent, {"odour_grade": "2"})
    assert record.messages == episode[1] - episode[0] + 1 == 6
    assert sent[episode[0] - 2:episode[1] - 1] == [0.2] * 6 and max(sent[episode[1] + 1:episode[1] + 3]) <= 0.05
    assert record.expected_effect == {"alert": "station_h2s"}
    assert record.details["threshold"] == 0.06 and record.details["params"] == {"odour_grade": "2"}
    assert not [r for r in six.records if r.fault == "station_nh3_exceeded"]


# --- offline: the inactivity timeout the rules read ---------------------------------------------------------------


def test_the_offline_timeout_is_the_registry_default() -> None:
    sql = MIGRATION.read_text()
    (default,) = re.findall(r"inactivity_timeout_s\s+integer\s+NOT NULL\s+DEFAULT\s+(\d+)", sql)
    assert OFFLINE_TIMEOUT_S == float(default) == 900.0


def test_record_details_do_not_leak_between_records() -> None:
    first, second = fed(HOVERING), fed(HOVERING)
    first[0].details["note"] = "edited"
    assert "note" not in second[0].details


def test_the_shared_judge_follows_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = signal_judge("bin_full", "bin_overflow", bounds=STORED_FILL)
    assert signal_judge("bin_full", "bin_overflow", bounds=STORED_FILL) is shipped  # one for a city of bins
    other: Condition = dataclasses.replace(condition("bin_full"), clear=70.0)
    monkeypatch.setattr(signal_conditions, "condition", lambda name: other)
    assert signal_judge("bin_full", "bin_overflow", bounds=STORED_FILL).clear == 70.0
