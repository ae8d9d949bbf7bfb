"""Incinerator stack CEMS, one per furnace line: flue-gas concentrations, O2, moisture, flow and furnace
temperature, as JSON readings or as HJ 212-2017 frames.

In normal operation each pollutant wanders slowly (a mean-reverting random walk) around the line's
typical value, on the normalised (11 % O2 dry) basis, and the measured dry value follows from the
flue gas's own O2: ``C_meas = C_ref × (21 − O2) / 10``. O2 stays within 6-12 %. Now and then
combustion upsets cause a CO spike of a minute or two, or NOx rises for a few minutes — too short to
move a half-hourly average (recorded as ground truth ``no_alert``).

A line can be shut down and started up again (``outages`` in the scenario): during shut-down and
start-up O2 climbs towards or falls from ambient air (~20.9 %), the furnace cools or heats, CO is
high. Near-ambient O2 makes the normalisation factor explode, so the data unit stops reporting
normalised (``-Zs``) values when O2 is above 19 % — the processors must flag, not alarm.

Daily the analysers run a zero/span calibration (flag ``C``, values are calibration gases, not flue
gas); maintenance windows are flagged ``M``. Data flagged C or M must not count towards averages.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sanitel.schemas.hj212 import FLAG_V2017, encode_cp, encode_frame, format_number
from sanitel.schemas.readings import CemsReading
from sanitel.schemas.topics import device_topic, hj212_topic
from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import DeviceInfo, DeviceModel, Emission, Format, IncidentSink, clamp, device_rng
from sanitel.simulators.truth import Source, TruthRecord


@dataclass(frozen=True, slots=True)
class Pollutant:
    name: str          # prefix of the CemsReading fields: <name>_mg_m3, <name>_zs_mg_m3, <name>_flag
    hj212_code: str | None   # None: HJ 212-2017 has no code of its own (sent in JSON only)
    mean: float        # typical normalised value, mg/m³ at 11 % O2 dry
    sigma: float
    span: float        # span-gas value read during calibration
    calibrated: bool   # measured by the gas analyser that runs the daily zero/span check
    decimals: int


POLLUTANTS: tuple[Pollutant, ...] = (
    Pollutant("dust", "a34013", 3.0, 0.6, 0.0, False, 2),
    Pollutant("so2", "a21026", 20.0, 5.0, 150.0, True, 1),
    Pollutant("nox", "a21002", 120.0, 15.0, 200.0, True, 1),
    Pollutant("co", "a21005", 10.0, 3.0, 120.0, True, 1),
    Pollutant("hcl", "a21024", 8.0, 2.0, 40.0, True, 2),
    Pollutant("hf", None, 0.3, 0.08, 4.0, True, 3),
    Pollutant("toc", None, 2.0, 0.5, 0.0, False, 2),
    Pollutant("nh3", "a21001", 2.0, 0.6, 10.0, True, 2),
    Pollutant("hg", "a20057", 0.01, 0.003, 0.0, False, 4),
)
O2_CODE, H2O_CODE = "a19001", "a01014"
O2_REF = 11.0
ZS_O2_LIMIT = 19.0    # above this the data unit reports no normalised values
RUN, SHUT_DOWN, OFF, START_UP = "run", "shut_down", "off", "start_up"
SHUT_DOWN_S, START_UP_S = 3600.0, 2 * 3600.0
TAU_S = 600.0          # how quickly a pollutant's random walk reverts to its mean


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


class CemsLine(DeviceModel):
    kind: ClassVar[str] = CemsReading.kind

    def __init__(
        self,
        device_id: str,
        *,
        seed: int,
        city: str,
        start: float,
        local: LocalTime,
        plant_id: str,
        line_id: str,
        interval_s: float,
        protocol: str,
        mn: str,
        password: str,
        calibration_s: tuple[float, float] | None,
        maintenance: Sequence[Window],
        outages: Sequence[Window],
        excursions_per_day: float,
        incidents: IncidentSink,
    ) -> None:
        self.device_id = device_id
        self.rng = rng = device_rng(seed, device_id)
        self.local = local
        self.plant_id, self.line_id = plant_id, line_id
        self.interval_s = interval_s
        self.protocol = protocol
        self.mn, self.password = mn, password
        self.topic = hj212_topic(city, mn) if protocol == "hj212" else device_topic(city, self.kind, device_id)
        self.calibration_s = calibration_s
        self.maintenance = tuple(maintenance)
        self.outages = tuple(outages)
        self.excursion_rate = excursions_per_day / 86_400.0
        self.incidents = incidents
        self.seq = rng.randrange(1, 1_000_000)

        self.factor = {p.name: rng.uniform(0.8, 1.2) for p in POLLUTANTS}  # each line runs a little differently
        self.level = {p.name: p.mean * self.factor[p.name] for p in POLLUTANTS}
        self.o2 = rng.uniform(8.0, 9.5)
        self.furnace = rng.uniform(930.0, 980.0)
        self.flow_factor = rng.uniform(0.85, 1.15)
        self.t = start
        self.excursion: tuple[str, float, float] | None = None  # (pollutant, ends, peak zs)
        self.next_excursion = start + rng.expovariate(self.excursion_rate) if self.excursion_rate else math.inf
        self.exceedances: list[tuple[str, Window, float]] = []  # injected: (pollutant, window, zs level)
        self._open: dict[str, TruthRecord] = {}
        self._first = start + rng.uniform(0.0, interval_s)

    # --- interface ---------------------------------------------------------------------------

    def first_due(self) -> float:
        return self._first

    def max_interval(self) -> float:
        return self.interval_s

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(self.device_id, self.kind, self.line_id,
                           {"plant_id": self.plant_id, "line_id": self.line_id, "protocol": self.protocol,
                            "mn": self.mn})]

    def add_exceedance(self, pollutant: str, start: float, end: float, level_zs: float) -> None:
        """Fault hook: hold ``pollutant`` at about ``level_zs`` (normalised) in [start, end)."""
        self.exceedances.append((pollutant, Window(start, end), level_zs))

    def step(self, t: float, out: list[Emission]) -> float:
        dt = max(t - self.t, 0.0)
        self.t = t
        state = self.operating_state(t)
        self._walk(t, dt, state)
        flag = self._analyser_flag(t)
        reading = self._reading(t, state, flag)
        fmt: Format = "hj212" if self.protocol == "hj212" else "json"
        out.append(Emission(self.topic, self.device_id, self.kind, CemsReading.stream, t, reading, fmt))
        return t + self.cadence(t, self.interval_s) + self.rng.uniform(-0.2, 0.2)

    # --- operating state -----------------------------------------------------------------------

    def operating_state(self, t: float) -> str:
        for w in self.outages:
            if t in w:
                span = w.end - w.start
                down = min(SHUT_DOWN_S, span / 3)
                up = min(START_UP_S, span / 3)
                state = SHUT_DOWN if t < w.start + down else START_UP if t >= w.end - up else OFF
                self._record(state, t, self._state_window(w, state),
                             {"no_alert": state}, {"o2_towards_pct": 20.9})
                return state
        return RUN

    @staticmethod
    def _state_window(w: Window, state: str) -> Window:
        span = w.end - w.start
        down, up = min(SHUT_DOWN_S, span / 3), min(START_UP_S, span / 3)
        return {SHUT_DOWN: Window(w.start, w.start + down), OFF: Window(w.start + down, w.end - up),
                START_UP: Window(w.end - up, w.end)}[state]

    def _progress(self, t: float, state: str) -> float:
        """0 → 1 through the current shut-down or start-up."""
        for w in self.outages:
            if t in w:
                window = self._state_window(w, state)
                return clamp((t - window.start) / max(window.end - window.start, 1.0), 0.0, 1.0)
        return 0.0

    def _analyser_flag(self, t: float) -> str:
        for w in self.maintenance:
            if t in w:
                self._record("maintenance", t, w, {"no_alert": "maintenance"}, {"flag": "M"})
                return "M"
        if self.calibration_s is not None:
            at, duration = self.calibration_s
            begun = (self.local.seconds_of_day(t) - at) % 86_400.0
            if begun < duration:
                self._record("calibration", t, Window(t - begun, t - begun + duration),
                             {"no_alert": "calibration"}, {"flag": "C"})
                return "C"
        return "N"

    def _record(self, name: str, t: float, window: Window, effect: dict[str, Any], details: dict[str, Any],
                source: Source = "model") -> None:
        """One ground-truth record per window; counts the messages sent inside it."""
        key = f"{name}@{window.start}"
        record = self._open.get(key)
        if record is None:
            for old in [k for k, r in self._open.items() if r.end <= t]:
                del self._open[old]
            record = self._open[key] = self.incidents(TruthRecord(
                self.device_id, self.kind, name, window.start, window.end, effect,
                source=source, details={"plant_id": self.plant_id, "line_id": self.line_id, **details}))
        record.messages += 1

    # --- values --------------------------------------------------------------------------------

    def _walk(self, t: float, dt: float, state: str) -> None:
        rng = self.rng
        keep = math.exp(-dt / TAU_S)
        shake = math.sqrt(max(1.0 - keep * keep, 0.0))
        for p in POLLUTANTS:
            mean = p.mean * self.factor[p.name]
            level = mean + (self.level[p.name] - mean) * keep + p.sigma * shake * rng.gauss(0.0, 1.0)
            self.level[p.name] = max(level, p.mean * 0.05)
        o2_keep = math.exp(-dt / 1800.0)
        self.o2 = clamp(8.8 + (self.o2 - 8.8) * o2_keep + 0.8 * math.sqrt(1 - o2_keep ** 2) * rng.gauss(0, 1),
                        6.2, 11.8)
        if state == RUN:
            self.furnace = clamp(self.furnace + rng.gauss(0.0, 3.0) + (955.0 - self.furnace) * 0.02, 880.0, 1050.0)
            self._maybe_excursion(t)

    def _maybe_excursion(self, t: float) -> None:
        if self.excursion is not None and t >= self.excursion[1]:
            self.excursion = None
        if t < self.next_excursion:
            return
        rng = self.rng
        self.next_excursion = t + rng.expovariate(self.excursion_rate)
        if rng.random() < 0.7:  # a CO puff: a minute or two
            pollutant, duration, peak = "co", rng.uniform(60.0, 120.0), rng.uniform(150.0, 300.0)
        else:                   # NOx drifts up for a few minutes before the SNCR catches it
            pollutant, duration, peak = "nox", rng.uniform(180.0, 300.0), rng.uniform(220.0, 280.0)
        self.excursion = (pollutant, t + duration, peak)
        self._record(f"{pollutant}_excursion", t, Window(t, t + duration), {"no_alert": "short_excursion"},
                     {"peak_zs_mg_m3": round(peak, 1)})

    def _zs_level(self, t: float, p: Pollutant) -> float:
        level = self.level[p.name]
        if self.excursion is not None and self.excursion[0] == p.name and t < self.excursion[1]:
            level = max(level, self.excursion[2] * self.rng.uniform(0.85, 1.0))
        for name, window, target in self.exceedances:
            if name == p.name and t in window:
                level = target * self.rng.uniform(0.95, 1.05)
        return level

    def _flue_o2(self, t: float, state: str) -> float:
        progress = self._progress(t, state)
        if state == SHUT_DOWN:
            return self.o2 + (20.6 - self.o2) * progress
        if state == START_UP:
            return 20.6 + (self.o2 - 20.6) * progress
        if state == OFF:
            return 20.6 + self.rng.gauss(0.0, 0.1)
        return self.o2

    def _furnace_temp(self, t: float, state: str) -> float:
        progress = self._progress(t, state)
        return {RUN: self.furnace, SHUT_DOWN: self.furnace - (self.furnace - 300.0) * progress,
                OFF: 150.0 + self.rng.gauss(0.0, 5.0), START_UP: 150.0 + (900.0 - 150.0) * progress}[state]

    def _measured(self, t: float, p: Pollutant, state: str, o2: float) -> float:
        if state == RUN:
            return self._zs_level(t, p) * (21.0 - o2) / (21.0 - O2_REF)
        progress = self._progress(t, state)
        # burners and a cold bed: poor burnout means high CO and dust, little NOx
        if state == OFF:
            return max(0.0, self.rng.gauss(0.02 * p.mean, 0.01 * p.mean))
        smoky = {"co": 8.0, "dust": 3.0, "toc": 3.0}.get(p.name, 0.4)
        fade = 1.0 - progress if state == SHUT_DOWN else progress
        return max(0.0, p.mean * smoky * (0.3 + 0.7 * fade) * self.rng.uniform(0.7, 1.3))

    def _calibration_gas(self, t: float, p: Pollutant) -> float:
        """Zero gas for the first half of the check, span gas for the second."""
        assert self.calibration_s is not None
        at, duration = self.calibration_s
        begun = (self.local.seconds_of_day(t) - at) % 86_400.0
        value = 0.0 if begun < duration / 2 else p.span
        return max(0.0, value + self.rng.gauss(0.0, 0.005 * (p.span or 1.0)))

    def _reading(self, t: float, state: str, flag: str) -> dict[str, Any]:
        rng = self.rng
        o2 = self._flue_o2(t, state)
        self.seq += 1
        reading: dict[str, Any] = {"ts": t, "seq": self.seq, "data_kind": "rtd", "plant_id": self.plant_id,
                                   "line_id": self.line_id, "gas_is_dry": True}
        for p in POLLUTANTS:
            pollutant_flag = flag if (p.calibrated or flag == "M") else "N"
            if pollutant_flag == "C":
                value = self._calibration_gas(t, p)
            elif pollutant_flag == "M":
                value = max(0.0, rng.gauss(0.0, 0.01 * p.mean))
            else:
                value = self._measured(t, p, state, o2) * rng.uniform(0.98, 1.02)
            reading[f"{p.name}_mg_m3"] = round(value, p.decimals)
            if pollutant_flag == "N" and o2 <= ZS_O2_LIMIT:  # no normalising near-ambient O2 or C/M data
                reading[f"{p.name}_zs_mg_m3"] = round(value * (21.0 - O2_REF) / (21.0 - o2), p.decimals)
            reading[f"{p.name}_flag"] = pollutant_flag
        o2_value = {"C": 0.0 if self._zero_phase(t) else 20.9, "M": 0.0}.get(flag, o2)
        # below 21 %: O2 >= 21 %vol is not physical in flue gas, and the codec voids it (schemas/hj212.py)
        reading["o2_pct"] = round(clamp(o2_value + rng.gauss(0.0, 0.03), 0.0, 20.95), 2)
        reading["o2_flag"] = flag
        running = state == RUN
        reading["h2o_pct"] = round((rng.uniform(15.5, 19.5) if running else rng.uniform(2.0, 8.0)), 2)
        reading["h2o_flag"] = flag
        flow = (150_000.0 if running else 60_000.0) * self.flow_factor * rng.uniform(0.97, 1.03)
        reading["flue_temp_c"] = round(rng.uniform(145.0, 158.0) if running else rng.uniform(40.0, 120.0), 1)
        reading["flue_pressure_kpa"] = round(rng.gauss(-0.4, 0.05), 3)
        reading["flue_velocity_m_s"] = round(flow / 3600.0 / 2.6, 2)
        reading["flue_flow_m3_h"] = round(flow, 0)
        reading["furnace_temp_c"] = round(self._furnace_temp(t, state), 1)
        reading["operating_state"] = state  # not in the schema: kept in `extra`, tells processors why
        return reading

    def _zero_phase(self, t: float) -> bool:
        if self.calibration_s is None:
            return False
        at, duration = self.calibration_s
        return (self.local.seconds_of_day(t) - at) % 86_400.0 < duration / 2


# --- HJ 212-2017 -------------------------------------------------------------------------------

ST_AIR = "31"       # air pollution source
CN_RTD = "2011"     # real-time data


def hj212_cp(reading: dict[str, Any], local: LocalTime) -> str:
    """The CP content of a real-time (2011) frame for a CEMS reading: ``DataTime`` in the plant's local
    time, then one group per code (``a21002-Rtd=…,a21002-ZsRtd=…,a21002-Flag=N``)."""
    t = reading["ts"]
    codes: dict[str, dict[str, str | float]] = {}
    for p in POLLUTANTS:
        if p.hj212_code is None:
            continue
        group: dict[str, str | float] = {"Rtd": reading[f"{p.name}_mg_m3"]}
        zs = reading.get(f"{p.name}_zs_mg_m3")
        if zs is not None:
            group["ZsRtd"] = zs
        group["Flag"] = reading[f"{p.name}_flag"]
        codes[p.hj212_code] = group
    codes[O2_CODE] = {"Rtd": reading["o2_pct"], "Flag": reading["o2_flag"]}
    codes[H2O_CODE] = {"Rtd": reading["h2o_pct"], "Flag": reading["h2o_flag"]}
    codes["a01011"] = {"Rtd": reading["flue_velocity_m_s"]}
    codes["a01012"] = {"Rtd": reading["flue_temp_c"]}
    codes["a01013"] = {"Rtd": reading["flue_pressure_kpa"]}
    flow = reading["flue_flow_m3_h"]  # a number, unless a malformed-reading fault put text there
    codes["a00000"] = {"Rtd": format_number(flow / 3600.0, 3) if isinstance(flow, float | int) else flow}  # m³/s
    codes["a01901"] = {"Rtd": reading["furnace_temp_c"]}
    return encode_cp(_local_stamp(t, local, "%Y%m%d%H%M%S"), codes, decimals=4)


def hj212_frame(reading: dict[str, Any], *, mn: str, password: str, local: LocalTime) -> bytes:
    """A complete HJ 212-2017 real-time data frame (``ST=31;CN=2011``, protocol-version Flag)."""
    t = reading["ts"]
    qn = _local_stamp(t, local, "%Y%m%d%H%M%S") + f"{int(t * 1000) % 1000:03d}"
    return encode_frame(ST_AIR, CN_RTD, mn, password, hj212_cp(reading, local), qn=qn, flag=FLAG_V2017)


def _local_stamp(t: float, local: LocalTime, fmt: str) -> str:
    return local.datetime(t).strftime(fmt)


def random_calibration_time(rng: random.Random, base_s: float, line_index: int) -> float:
    """Lines of one plant calibrate one after another, 20 minutes apart."""
    return (base_s + 1200.0 * line_index + rng.uniform(0.0, 60.0)) % 86_400.0
