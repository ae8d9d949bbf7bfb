"""Electric street sweeper (GB/T 32960.3 vehicle data + EN 15430-1 sweeper records).

A sweeper's day: parked and charging at its district depot; at shift start it drives to its route and
sweeps it street by street (main brush, side brushes left/right, now and then the wander hose);
hopper fill rises and the water tank empties while sweeping; when the hopper is nearly full or the
tank nearly empty it returns to the depot, unloads, refills and goes back out; at shift end it
returns, unloads and charges. State of charge drains with the work and recovers on the charger
(constant current to 80 %, slower above); the pack warms with current and cools towards the air.

The distance and work-hour counters are 16-bit registers of 0.1 units, so they wrap at 6553.5 — the
collector must compute deltas with wrap detection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from sanitel.schemas.readings import SweeperTelemetry
from sanitel.schemas.topics import device_topic
from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import (
    DeviceInfo,
    DeviceModel,
    Emission,
    IncidentSink,
    SeqCounter,
    ambient_at,
    ambient_temp_c,
    clamp,
    device_rng,
    in_windows,
    pick_weighted,
    r1,
    r2,
    r3,
    r6,
)
from sanitel.simulators.models.routes import District, Route, move_towards
from sanitel.simulators.truth import TruthRecord

PARKED, OUT, SWEEP, RETURN, UNLOAD, REFILL = "parked", "out", "sweep", "return", "unload", "refill"

COUNTER_WRAP = 6553.6  # 16-bit register in 0.1 units: 0 … 6553.5
CELLS = 100  # LFP cells in series (≈ 320 V pack)

# Thresholds the model reports as ground truth when it crosses them (GB/T 32960 alarm bits).
LOW_SOC_PCT = 20.0
HIGH_BATTERY_TEMP_C = 55.0
ALARM_BIT_BATTERY_HIGH_TEMP = 1 << 1
ALARM_BIT_LOW_SOC = 1 << 4

# %/h of state of charge drawn in each work mode (before the vehicle's own factor)
DRAIN_PCT_H = {"sweep": 10.0, "sweep_left": 10.5, "sweep_right": 10.5, "wander_hose": 6.0,
               "transport": 8.0, "unload": 5.0, "idle": 0.4, "charging": 0.0}
CURRENT_A = {"sweep": 55.0, "sweep_left": 58.0, "sweep_right": 58.0, "wander_hose": 32.0,
             "transport": 45.0, "unload": 35.0, "idle": 2.0}
WATER_PCT_H = {"sweep": 14.0, "sweep_left": 15.0, "sweep_right": 15.0, "wander_hose": 110.0}
SWEEP_MODES = (("sweep", 0.6), ("sweep_left", 0.15), ("sweep_right", 0.15), ("wander_hose", 0.1))


class Sweeper(DeviceModel):
    kind: ClassVar[str] = SweeperTelemetry.kind

    def __init__(
        self,
        device_id: str,
        *,
        seed: int,
        city: str,
        start: float,
        local: LocalTime,
        district: District,
        shifts: Sequence[tuple[float, float]],
        interval_s: float,
        parked_interval_s: float,
        incidents: IncidentSink,
    ) -> None:
        self.device_id = device_id
        self.rng = rng = device_rng(seed, device_id)
        self.topic = device_topic(city, self.kind, device_id, SweeperTelemetry.stream)
        self.local = local
        self.district = district
        self.shifts = tuple(shifts)
        self.interval_s = interval_s
        self.parked_interval_s = parked_interval_s
        self.incidents = incidents
        self.seq = SeqCounter(rng)
        self.route = Route.random_block(district, rng)
        self.depot = district.depot()
        # vehicle-to-vehicle variation: older packs drain faster, some routes collect more litter
        self.drain_factor = rng.uniform(0.9, 1.1)
        self.litter_factor = rng.uniform(0.7, 1.3)
        self.sweep_speed_kmh = rng.uniform(4.5, 7.5)
        self.insulation_kohm = rng.uniform(8_000, 25_000)

        self.t = start
        self.start = start
        self.phase = PARKED
        self.mode = "idle"
        self.mode_until = start
        self.phase_until = start
        self.x, self.y = self.depot
        self.heading = rng.uniform(0, 360)
        self.route_s = 0.0
        self.speed_kmh = 0.0
        self.current_a = 0.0
        self.soc = rng.uniform(92.0, 100.0)
        self.battery_temp = ambient_temp_c(local, start) + 1.0
        self.motor_temp = ambient_temp_c(local, start)
        self.water = rng.uniform(85.0, 100.0)
        self.hopper = rng.uniform(0.0, 10.0)
        self.odometer = rng.uniform(2_000.0, 80_000.0)
        self.swept = rng.uniform(0.0, COUNTER_WRAP)
        self.hours = rng.uniform(0.0, COUNTER_WRAP)
        self.charger_faults: list[tuple[float, float]] = []
        self.resume_after_depot = False
        self._low_soc: TruthRecord | None = None
        self._hot: TruthRecord | None = None
        self._first = start + rng.uniform(0.0, interval_s)
        self._sod_t, self._sod = math.nan, 0.0

    # --- interface ---------------------------------------------------------------------------

    def first_due(self) -> float:
        return self._first

    def max_interval(self) -> float:
        return self.parked_interval_s

    def devices(self) -> list[DeviceInfo]:
        lat, lon = self.district.to_latlon(*self.depot)
        return [DeviceInfo(self.device_id, self.kind, self.district.district_id,
                           {"depot": [round(lat, 6), round(lon, 6)], "route_km": round(self.route.length / 1000, 2)})]

    def add_charger_fault(self, start: float, end: float) -> None:
        """Incident hook: the depot charger delivers nothing in [start, end)."""
        self.charger_faults.append((start, end))

    def step(self, t: float, out: list[Emission]) -> float:
        dt = max(t - self.t, 0.0)
        self.t = t
        self._advance(t, dt)
        self._thermal(t, dt)
        self._watch_thresholds(t)
        out.append(Emission(self.topic, self.device_id, self.kind, "telemetry", t, self._reading(t)))
        jitter = self.rng.uniform(-0.2, 0.2)
        idle = self.phase == PARKED and self.mode != "charging"
        return t + self.cadence(t, self.parked_interval_s if idle else self.interval_s) + jitter

    # --- behaviour ---------------------------------------------------------------------------

    def _in_shift(self, t: float) -> bool:
        return in_windows(self._seconds_of_day(t), self.shifts)

    def _shift_ending(self, t: float) -> bool:
        """True in the last 20 minutes of a shift: time to head back."""
        return not in_windows((self._seconds_of_day(t) + 1200.0) % 86_400.0, self.shifts)

    def _seconds_of_day(self, t: float) -> float:
        """Local time of day, worked out once per step (several decisions in a step ask for it)."""
        if t != self._sod_t:
            self._sod_t, self._sod = t, self.local.seconds_of_day(t)
        return self._sod

    def _charger_ok(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.charger_faults)

    def _advance(self, t: float, dt: float) -> None:
        PHASES[self.phase](self, t, dt)
        self.soc = clamp(self.soc - DRAIN_PCT_H.get(self.mode, 0.0) * self.drain_factor * dt / 3600.0, 0.0, 100.0)
        if self.mode != "idle" and self.mode != "charging":
            self.hours = (self.hours + dt / 3600.0) % COUNTER_WRAP

    def _parked(self, t: float, dt: float) -> None:
        self.speed_kmh = 0.0
        # the dispatcher sends a vehicle out only with enough charge for a useful stint
        if self._in_shift(t) and not self._shift_ending(t) and self.soc > 30.0:
            self._set_phase(OUT, "transport")
            return
        if self.soc >= 99.5:
            self.mode, self.current_a = "idle", 1.0
            return
        self.mode = "charging"
        if not self._charger_ok(t):
            self.current_a = 0.0
            return
        # constant current to 80 %, then tapering (constant voltage)
        rate_pct_h, self.current_a = (30.0, -95.0) if self.soc < 80.0 else (10.0, -32.0)
        self.soc = min(100.0, self.soc + rate_pct_h * dt / 3600.0)

    def _drive_out(self, t: float, dt: float) -> None:
        tx, ty = self.route.at(self.route_s)[:2]
        self._drive(dt, tx, ty, self.rng.uniform(20.0, 32.0))
        if (self.x, self.y) == (tx, ty):  # at the route: brushes down, sweeping pace from here
            self._set_phase(SWEEP, "sweep")
            self.mode_until = t + self.rng.uniform(180, 600)
            self.speed_kmh, self.current_a = self.sweep_speed_kmh, CURRENT_A["sweep"]

    def _sweep(self, t: float, dt: float) -> None:
        if self._should_return(t):
            return
        if t >= self.mode_until:
            self._next_sweep_mode(t)
        if self.mode == "wander_hose":  # parked at the kerb, hosing by hand
            self.speed_kmh = 0.0
        else:
            self.speed_kmh = max(0.0, self.rng.gauss(self.sweep_speed_kmh, 0.8))
            step_m = self.speed_kmh / 3.6 * dt
            self.route_s += step_m
            self.x, self.y, self.heading = self.route.at(self.route_s)
            self.odometer += step_m / 1000.0
            self.swept = (self.swept + step_m / 1000.0) % COUNTER_WRAP
            litter_pct_h = 11.0 * self.litter_factor * (1.0 + 0.3 * math.sin(self.route_s / 700.0))
            self.hopper = clamp(self.hopper + litter_pct_h * dt / 3600.0, 0.0, 100.0)
        self.water = clamp(self.water - WATER_PCT_H[self.mode] * dt / 3600.0, 0.0, 100.0)
        self.current_a = CURRENT_A[self.mode] + self.rng.gauss(0.0, 3.0)

    def _should_return(self, t: float) -> bool:
        full, dry, ending = self.hopper >= 90.0, self.water <= 8.0, self._shift_ending(t)
        low = self.soc <= 15.0  # the driver heads home on the low-charge warning
        if not (full or dry or ending or low):
            return False
        self.resume_after_depot = (full or dry) and not (ending or low)
        self._set_phase(RETURN, "transport")
        return True

    def _next_sweep_mode(self, t: float) -> None:
        mode = self.mode = pick_weighted(self.rng, SWEEP_MODES)
        self.mode_until = t + (self.rng.uniform(120, 300) if mode == "wander_hose" else self.rng.uniform(180, 900))

    def _drive_back(self, t: float, dt: float) -> None:
        self._drive(dt, *self.depot, self.rng.uniform(20.0, 32.0))
        if (self.x, self.y) == self.depot:
            self.speed_kmh, self.current_a = 0.0, CURRENT_A["unload"]
            self._set_phase(UNLOAD, "unload")
            self.phase_until = t + self.rng.uniform(300, 600)

    def _unload(self, t: float, dt: float) -> None:
        self.speed_kmh = 0.0
        self.current_a = CURRENT_A["unload"]
        self.hopper = max(0.0, self.hopper - 20.0 * dt / 60.0)  # tipping the hopper: ~5 minutes
        if t >= self.phase_until and self.hopper <= 0.0:
            self._set_phase(REFILL, "idle")
            self.phase_until = t + self.rng.uniform(240, 420)

    def _refill(self, t: float, dt: float) -> None:
        self.speed_kmh, self.current_a = 0.0, CURRENT_A["idle"]
        self.water = min(100.0, self.water + 25.0 * dt / 60.0)
        if t < self.phase_until or self.water < 100.0:
            return
        if self.resume_after_depot and self._in_shift(t) and not self._shift_ending(t) and self.soc > 25.0:
            self._set_phase(OUT, "transport")
        else:
            self._set_phase(PARKED, "charging")
            self._parked(t, 0.0)  # on the charger (or not) from this very reading
        self.resume_after_depot = False

    def _drive(self, dt: float, tx: float, ty: float, speed_kmh: float) -> None:
        self.speed_kmh = speed_kmh
        step_m = speed_kmh / 3.6 * dt
        self.x, self.y, self.heading, _ = move_towards(self.x, self.y, tx, ty, step_m)
        self.odometer += step_m / 1000.0
        self.current_a = CURRENT_A["transport"] + self.rng.gauss(0.0, 4.0)

    def _set_phase(self, phase: str, mode: str) -> None:
        self.phase, self.mode = phase, mode

    def _thermal(self, t: float, dt: float) -> None:
        """First-order lag towards air temperature plus I²R-like heating (τ ≈ 40 min pack, 15 min motor)."""
        air = ambient_at(self._seconds_of_day(t))
        target = air + 0.12 * abs(self.current_a)
        self.battery_temp += (target - self.battery_temp) * (1.0 - math.exp(-dt / 2400.0))
        motor_target = air + 0.9 * self.speed_kmh + (8.0 if self.mode.startswith(("sweep", "wander")) else 0.0)
        self.motor_temp += (motor_target - self.motor_temp) * (1.0 - math.exp(-dt / 900.0))

    def _watch_thresholds(self, t: float) -> None:
        """Report crossings of the alarm thresholds as ground truth, whatever caused them."""
        low, hot = self.soc < LOW_SOC_PCT, self.battery_temp > HIGH_BATTERY_TEMP_C
        if low or self._low_soc is not None:
            self._low_soc = self._watch(t, self._low_soc, low, "low_soc",
                                        {"alert": "sweeper_low_soc"}, {"threshold_pct": LOW_SOC_PCT})
        if hot or self._hot is not None:
            self._hot = self._watch(t, self._hot, hot, "battery_high_temp",
                                    {"alert": "sweeper_battery_high_temp"}, {"threshold_c": HIGH_BATTERY_TEMP_C})

    def _watch(self, t: float, open_record: TruthRecord | None, active: bool, name: str,
               effect: dict[str, Any], details: dict[str, Any]) -> TruthRecord | None:
        if active and open_record is None:
            return self.incidents(TruthRecord(self.device_id, self.kind, name, t, math.inf, effect,
                                              source="model", details=details))
        if open_record is not None:
            open_record.messages += 1
            if not active:
                open_record.end = t
                return None
        return open_record

    # --- the reading -------------------------------------------------------------------------

    def _reading(self, t: float) -> dict[str, Any]:
        rand = self.rng.random  # uniform noise: a gauss() per field costs more than the whole reading
        lat, lon = self.district.to_latlon(self.x + 4.0 * rand() - 2.0, self.y + 4.0 * rand() - 2.0)
        cell_v = 3.0 + 0.004 * self.soc - 0.0008 * self.current_a
        mode = self.mode
        sweeping = mode == "sweep" or mode == "sweep_left" or mode == "sweep_right"
        alarm_flags = (ALARM_BIT_LOW_SOC if self.soc < LOW_SOC_PCT else 0) | (
            ALARM_BIT_BATTERY_HIGH_TEMP if self.battery_temp > HIGH_BATTERY_TEMP_C else 0)
        charging_state = "not_charging"
        if self.phase == PARKED:
            charging_state = "charged" if mode == "idle" else "charging" if self._charger_ok(t) else "fault"
        return {
            "ts": t,
            "seq": self.seq(),
            "lat": r6(lat),
            "lon": r6(lon),
            "speed_kmh": r1(self.speed_kmh),
            "heading_deg": r1(self.heading),
            "odometer_km": r2(self.odometer),
            "soc_pct": r1(self.soc),
            "pack_voltage_v": r1(CELLS * cell_v),
            "pack_current_a": r1(self.current_a),
            "cell_voltage_max_v": r3(cell_v + 0.005 + 0.015 * rand()),
            "cell_voltage_min_v": r3(cell_v - 0.005 - 0.015 * rand()),
            "battery_temp_max_c": r1(self.battery_temp + 0.8 + 1.2 * rand()),
            "battery_temp_min_c": r1(self.battery_temp - 0.8 - 1.2 * rand()),
            "insulation_kohm": float(int(self.insulation_kohm + 300.0 * rand())),
            "motor_temp_c": r1(self.motor_temp),
            "motor_rpm": float(int(self.speed_kmh * 115.0)),
            "charging_state": charging_state,
            "work_mode": mode,
            "fan_speed_rpm": float(int(2200.0 + 400.0 * rand())) if sweeping else 0.0,
            "brush_on": sweeping,
            "water_tank_pct": r1(self.water),
            "hopper_fill_pct": r1(self.hopper),
            "swept_distance_km": r1(self.swept) % COUNTER_WRAP,
            "work_hours_h": r1(self.hours) % COUNTER_WRAP,
            "alarm_level": 2 if alarm_flags else 0,
            "alarm_flags": alarm_flags,
        }


# phase → what a step does in it (a class-level table: building a dict of bound methods every step
# cost more than the step itself)
PHASES = {PARKED: Sweeper._parked, OUT: Sweeper._drive_out, SWEEP: Sweeper._sweep, RETURN: Sweeper._drive_back,
          UNLOAD: Sweeper._unload, REFILL: Sweeper._refill}
