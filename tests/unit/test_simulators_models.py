"""A believable day: each device kind behaves like the real fleet (read from what it publishes)."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from statistics import mean, median
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from sanitel.schemas.readings import (
    BinDeposit,
    BinStatus,
    CameraDetection,
    CemsReading,
    StationTelemetry,
    SweeperTelemetry,
)
from sanitel.signal_conditions import condition
from sanitel.simulators.clock import LocalTime, parse_instant
from sanitel.simulators.contract import check_message, reading_time
from sanitel.simulators.models.base import next_arrival
from sanitel.simulators.models.routes import District
from sanitel.simulators.models.sweeper import COUNTER_WRAP, Sweeper
from sanitel.simulators.run import generate
from sanitel.simulators.scenario import parse_scenario
from sanitel.simulators.truth import GroundTruth
from tests.support import simulator_runs as fixtures

SHANGHAI = ZoneInfo("Asia/Shanghai")
SWEEP_MODES = {"sweep", "sweep_left", "sweep_right"}


def local_hour(reading: Any) -> float:
    local = datetime.fromtimestamp(reading_time(reading), SHANGHAI)
    return local.hour + local.minute / 60 + local.second / 3600


def by_device(kind: str, stream: str | None = None) -> dict[str, list[Any]]:
    """The demo day's readings of one kind, per device, in time order."""
    out: dict[str, list[Any]] = defaultdict(list)
    for _, r in fixtures.demo_day_readings():
        if r.kind == kind and (stream is None or r.stream == stream):
            out[r.device_id].append(r.reading)
    for readings in out.values():
        readings.sort(key=reading_time)
    return out


def pairs(readings: list[Any]) -> Iterator[tuple[Any, Any]]:
    return itertools.pairwise(readings)


# --- sweepers ------------------------------------------------------------------------------------


def test_soc_drains_while_sweeping_and_recovers_while_charging() -> None:
    drops = rises = 0
    for device, readings in by_device("sweeper").items():
        for a, b in pairs(readings):
            a_: SweeperTelemetry = a
            if a_.work_mode in SWEEP_MODES and b.work_mode in SWEEP_MODES:
                assert b.soc_pct <= a_.soc_pct + 0.05, f"{device}: SOC rose while sweeping at {b.ts}"
                drops += b.soc_pct < a_.soc_pct
            if a_.charging_state == "charging" and b.charging_state == "charging":
                assert b.soc_pct >= a_.soc_pct - 0.05, f"{device}: SOC fell on the charger at {b.ts}"
                rises += b.soc_pct > a_.soc_pct
                assert b.pack_current_a < 0, "current is negative while charging"
    assert drops > 1000 and rises > 100


def test_sweepers_work_their_shifts_inside_their_district() -> None:
    districts = {"futian": (22.5431, 114.0579), "luohu": (22.5485, 114.1315)}
    sweepers = by_device("sweeper")
    assert sweepers
    for device, readings in sweepers.items():
        sweeping = [r for r in readings if r.work_mode in SWEEP_MODES]
        assert sweeping, f"{device} never swept"
        for r in sweeping:
            hour = local_hour(r)
            assert 5 <= hour < 11 or 14 <= hour < 20, f"{device} sweeping outside its shifts at {r.ts}"
            assert r.brush_on and r.fan_speed_rpm > 0 and 0 < r.speed_kmh < 15
        # within a few km of one of the district centres
        lat, lon = sweeping[0].lat, sweeping[0].lon
        assert min(math.dist((lat, lon), c) for c in districts.values()) < 0.04
        parked = [r for r in readings if r.work_mode in ("idle", "charging")]
        assert parked and all(r.speed_kmh == 0 for r in parked)


def test_sweepers_move_along_streets_with_a_plausible_heading() -> None:
    readings = by_device("sweeper")["sw-0001"]
    moving = [(a, b) for a, b in pairs(readings) if a.work_mode in SWEEP_MODES and b.work_mode in SWEEP_MODES]
    steps_m = [math.dist((a.lat * 111_320, a.lon * 102_800), (b.lat * 111_320, b.lon * 102_800)) for a, b in moving]
    assert median(steps_m) > 5           # it moves …
    assert max(steps_m) < 60             # … at sweeping pace (≤ 8 km/h over 10 s, plus GPS noise)
    assert len({round(r.heading_deg) for _, r in moving}) >= 2


def test_water_refills_and_hopper_unloads_at_the_depot() -> None:
    unloads = refills = 0
    for readings in by_device("sweeper").values():
        for a, b in pairs(readings):
            if b.hopper_fill_pct < a.hopper_fill_pct - 1:
                assert b.work_mode == "unload" or a.work_mode == "unload"
                unloads += 1
            if b.water_tank_pct > a.water_tank_pct + 1:
                assert b.speed_kmh == 0, "water is refilled standing at the depot"
                refills += 1
    assert unloads > 0 and refills > 0


def test_battery_temperature_follows_load_and_air() -> None:
    readings = [r for rs in by_device("sweeper").values() for r in rs]
    assert all(15 < r.battery_temp_min_c <= r.battery_temp_max_c < 55 for r in readings)
    working = mean(r.battery_temp_max_c for r in readings if r.work_mode in SWEEP_MODES | {"charging"})
    resting = mean(r.battery_temp_max_c for r in readings if r.work_mode == "idle" and local_hour(r) < 4)
    assert working > resting + 2


def test_distance_counter_wraps_like_a_16_bit_register() -> None:
    truth = GroundTruth()
    start = parse_instant("2026-11-22T05:00:00+08:00")
    sweeper = Sweeper("sw-9999", seed=1, city="shenzhen", start=start, local=LocalTime("Asia/Shanghai"),
                      district=District("futian", 22.5431, 114.0579, 3000.0), shifts=[(5 * 3600.0, 11 * 3600.0)],
                      interval_s=10.0, parked_interval_s=60.0, incidents=truth.add)
    sweeper.swept = COUNTER_WRAP - 0.5  # half a kilometre before the register wraps
    out: list[Any] = []
    t = sweeper.first_due()
    while t < start + 3 * 3600:
        t = sweeper.step(t, out)
    counters = [e.body["swept_distance_km"] for e in out]
    assert max(counters) < COUNTER_WRAP
    assert any(b < a - 6000 for a, b in pairs(counters)), "the counter never wrapped"


# --- transfer stations ----------------------------------------------------------------------------


def test_compaction_raises_odour_and_noise_and_lowers_the_hopper() -> None:
    running: list[StationTelemetry] = []
    idle: list[StationTelemetry] = []
    for readings in by_device("transfer_station", "telemetry").values():
        periodic = [r for r in readings if r.noise_dba is not None]
        for r in periodic:
            (running if r.compactor_running else idle).append(r)
            assert 0 <= r.leachate_level_pct <= 100
            assert r.h2s_mg_m3 < 0.06 and r.nh3_mg_m3 < 1.5  # below GB 14554 grade 2 on a normal day
        for a, b in pairs(periodic):
            # (a truck tipping in between — a reading of its own, so a gap in seq — refills the hopper)
            if a.compactor_running and b.compactor_running and b.seq == a.seq + 1:
                assert b.hopper_level_pct <= a.hopper_level_pct
    assert running and idle
    assert mean(r.noise_dba for r in running) > mean(r.noise_dba for r in idle) + 3
    assert mean(r.h2s_mg_m3 for r in running) > mean(r.h2s_mg_m3 for r in idle)
    assert all(r.compactor_pressure_mpa > 5 for r in running)


def test_trucks_weigh_in_full_and_out_empty_mostly_by_day() -> None:
    arrivals: dict[str, float] = {}
    weighed = 0
    for readings in by_device("transfer_station", "telemetry").values():
        for r in readings:
            if r.weighbridge_in_t is not None:
                arrivals[r.truck_id] = r.weighbridge_in_t
            if r.weighbridge_out_t is not None and r.truck_id in arrivals:
                assert r.weighbridge_out_t < arrivals[r.truck_id]
                weighed += 1
    hours = [local_hour(r) for rs in by_device("transfer_station", "telemetry").values() for r in rs if r.weighbridge_in_t]
    assert weighed > 50
    assert sum(5 <= h < 22 for h in hours) > 0.9 * len(hours)


def test_boundary_noise_is_lower_at_night() -> None:
    periodic = [r for rs in by_device("transfer_station", "telemetry").values() for r in rs if r.noise_dba is not None]
    night = [r.noise_dba for r in periodic if local_hour(r) >= 22 or local_hour(r) < 6]
    day = [r.noise_dba for r in periodic if 6 <= local_hour(r) < 22]
    assert median(day) > median(night) + 4
    assert max(night) < 55  # quiet enough for a class 2-4 area at night


# --- sorting points -------------------------------------------------------------------------------


def test_deposits_peak_in_the_sorting_time_slots() -> None:
    deposits: list[BinDeposit] = [r for rs in by_device("bin", "event").values() for r in rs]
    assert len(deposits) > 1000
    in_slots = sum(7 <= local_hour(r) < 9 or 19 <= local_hour(r) < 21 for r in deposits)
    assert in_slots / len(deposits) > 0.6  # 4 of 24 hours hold most of the day's deposits
    night = sum(local_hour(r) < 5 for r in deposits)
    assert night / len(deposits) < 0.02


def test_deposits_carry_household_category_and_weight() -> None:
    code = {"k": "kitchen", "r": "recyclable", "h": "hazardous", "o": "other"}
    categories: Counter[str] = Counter()
    for device, readings in by_device("bin", "event").items():
        for r in readings:
            assert r.category == code[device[-1]], f"{device} took {r.category}"
            assert r.household_id.startswith(f"hh-{device[4:9]}-")
            assert r.point_id == f"sp-{device[4:9]}"
            assert 0 < r.weight_kg <= 30
            categories[r.category] += 1
    assert categories.most_common(1)[0][0] == "kitchen" and categories["hazardous"] < categories["other"]


def test_fill_levels_rise_with_deposits_and_drop_on_collection() -> None:
    drops = []
    for readings in by_device("bin", "status").values():
        status: list[BinStatus] = readings
        for a, b in pairs(status):
            if b.fill_level_pct < a.fill_level_pct - 25:
                drops.append(local_hour(b))
    assert drops, "no bin was ever emptied"
    # collections run at 10:00 and 22:00 (± 20 min per point); the status after them shows the drop
    assert sum(9.6 <= h < 10.9 or 21.6 <= h < 22.9 for h in drops) > 0.8 * len(drops)


def test_a_bin_near_full_hovers_around_the_threshold_with_sensor_noise() -> None:
    """Issue 18: a bin that sits at about 90 % while nobody adds a bag reads 88-92 % for half an hour and more —
    full by the rules' definition (bin_full: the median of the last 5 readings), yet without 3 readings in a row
    at 90 % that the old rule wanted; single wild echoes stay single."""
    full = condition("bin_full")
    longest_hover, missed_by_three_in_a_row, lone_echoes = 0, 0, 0
    for readings in by_device("bin", "status").values():
        fill = [min(max(r.fill_level_pct, 0.0), 100.0) for r in readings]  # as stored
        run = 0
        for v in fill:
            run = run + 1 if 88 <= v <= 92 else 0
            longest_hover = max(longest_hover, run)
        for a, b in full.episodes(fill):
            span = fill[max(a - 4, 0):b + 1]  # the readings that made it full and kept it so
            missed_by_three_in_a_row += not any(all(v >= 90 for v in span[i:i + 3]) for i in range(len(span)))
        lone_echoes += sum(abs(b - a) > 30 and abs(b - c) > 30 for a, b, c in zip(fill, fill[1:], fill[2:], strict=False))
    assert longest_hover >= 6  # 6 readings 5 minutes apart: 30 minutes at 88-92 %
    assert missed_by_three_in_a_row >= 1
    assert lone_echoes >= 1  # and the smoothing has wild echoes to ignore (fill_outlier_prob)


def test_cameras_detect_more_at_peak_slots_with_confidences() -> None:
    detections: list[CameraDetection] = [r for rs in by_device("camera").values() for r in rs]
    assert len(detections) > 50
    assert all(0.5 <= d.confidence <= 1 and d.image_ref and d.point_id for d in detections)
    in_slots = sum(7 <= local_hour(d) < 9 or 19 <= local_hour(d) < 21 for d in detections)
    assert in_slots / len(detections) > 0.5


# --- CEMS -----------------------------------------------------------------------------------------


def cems_readings() -> dict[str, list[CemsReading]]:
    return by_device("cems")


def test_cems_oxygen_and_concentrations_are_typical_in_normal_operation() -> None:
    normal = [r for rs in cems_readings().values() for r in rs if r.o2_flag == "N"]
    assert len(normal) > 5000
    assert all(6.0 <= r.o2_pct <= 12.0 for r in normal)
    assert all(r.furnace_temp_c >= 850 for r in normal)
    assert 60 < median(r.nox_zs_mg_m3 for r in normal) < 200
    assert median(r.co_zs_mg_m3 for r in normal) < 30
    # measured dry values relate to normalised ones through the flue gas's own O2
    r = normal[100]
    assert r.nox_zs_mg_m3 == pytest.approx(r.nox_mg_m3 * 10 / (21 - r.o2_pct), rel=0.02)


def test_calibration_and_maintenance_are_flagged_c_and_m() -> None:
    lines = cems_readings()
    assert lines
    for device, readings in lines.items():
        calibration = [r for r in readings if r.nox_flag == "C"]
        assert calibration, f"{device} never calibrated"
        hours = {local_hour(r) for r in calibration}
        base = 3.0 if device.startswith("cems-p1") else 4.0
        assert all(base <= h < base + 1.5 for h in hours)
        span = max(reading_time(r) for r in calibration) - min(reading_time(r) for r in calibration)
        assert 600 <= span <= 900, "a 15-minute zero/span check"
        assert all(r.nox_zs_mg_m3 is None and r.dust_flag == "N" for r in calibration)
    maintained = [r for r in cems_readings()["cems-p2-l1"] if r.o2_flag == "M"]
    assert maintained and all(13 <= local_hour(r) < 14 for r in maintained)
    assert all(r.dust_flag == "M" and r.hg_flag == "M" for r in maintained)


def test_short_excursions_happen_without_moving_the_half_hour_average() -> None:
    readings = [r for rs in cems_readings().values() for r in rs if r.co_flag == "N"]
    spikes = [r for r in readings if r.co_zs_mg_m3 > 100]
    assert spikes, "no CO excursion in a day on three lines"
    buckets: dict[tuple[str, int], list[float]] = defaultdict(list)
    for device, rs in cems_readings().items():
        for r in rs:
            if r.co_flag == "N" and r.co_zs_mg_m3 is not None:
                buckets[(device, int(reading_time(r) // 1800))].append(r.co_zs_mg_m3)
    assert max(mean(v) for v in buckets.values() if len(v) > 40) < 100  # EU/GB CO half-hour limit


def test_a_line_shuts_down_and_starts_up_with_o2_towards_ambient() -> None:
    scenario = parse_scenario({"name": "outage", "plants": [
        {"id": "p9", "lines": 1, "calibration": None, "excursions_per_day": 0,
         "outages": [{"line": 1, "after": "1h", "duration": "6h"}]}]})
    by_state: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic, payload, _ in generate(scenario, seed=1, start=fixtures.DAY_START, duration_s=8 * 3600.0, faults=[]):
        check_message(topic, payload)
        reading = msgspec.json.decode(payload)
        by_state[reading["operating_state"]].append(reading)
    assert set(by_state) == {"run", "shut_down", "off", "start_up"}
    # the data unit's operating-state mark (MEE 2019 No. 50: 停炉, 停运, 启炉) with every reading of the outage
    marks = {state: {r.get("operating_mark") for r in readings} for state, readings in by_state.items()}
    assert marks == {"run": {None}, "shut_down": {"shut_down"}, "off": {"shut"}, "start_up": {"start_up"}}
    assert all(r["o2_pct"] > 20 for r in by_state["off"])
    assert all("nox_zs_mg_m3" not in r for r in by_state["off"])  # no normalising near-ambient O2
    startup_o2 = [r["o2_pct"] for r in by_state["start_up"]]
    assert startup_o2[0] > 18 and startup_o2[-1] < 12
    assert max(r["furnace_temp_c"] for r in by_state["off"]) < 300
    assert min(r["co_mg_m3"] for r in by_state["start_up"]) > max(r["co_mg_m3"] for r in by_state["off"])


# --- the shape of a day -----------------------------------------------------------------------------


def test_poisson_arrivals_follow_an_hourly_profile_exactly() -> None:
    import random

    local = LocalTime("UTC")
    rates = [0.0] * 24
    rates[7] = 100 / 3600  # 100 events, all between 07:00 and 08:00
    rng = random.Random(1)
    t, times = 0.0, []
    while (t := next_arrival(t, rng, rates, local)) < 10 * 86_400:
        times.append(t)
    assert 900 < len(times) < 1100
    assert all(7 * 3600 <= t % 86_400 < 8 * 3600 for t in times)
