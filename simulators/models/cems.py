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

Operating-state marks (MEE announcement 2019 No. 50; codes as in processors/cems_marks.py): a JSON data unit
sends ``operating_mark`` with every reading of an outage — ``shut_down`` (停炉) while the furnace is shut down,
``shut`` (停运) while it is off, ``start_up`` (启炉) while it starts up — beside the older ``operating_state``
(``run``/``shut_down``/``off``/``start_up``, always sent). HJ 212-2017 has no field for a furnace mark: an HJ 212
unit sends its frames as usual (the furnace temperature ``a01901`` flagged ``F``, 停运, while the furnace is
off) and the plant marks the periods through the API; the ground truth says so (``mark_via_api``).

Daily the analysers run a zero/span calibration (flag ``C``, values are calibration gases, not flue
gas); maintenance windows are flagged ``M``. Data flagged C or M must not count towards averages.

Fault hooks (planned by simulators/faults.py, each with its ground-truth record): furnace-temperature dips
(:meth:`CemsLine.add_furnace_dips`), an O2-analyser calibration while the pollutant analysers keep reporting
normalised values (:meth:`CemsLine.add_o2_calibration`), a pollutant above its analyser's range, flagged ``T``
(:meth:`CemsLine.add_over_range`), and a data-unit outage re-sent afterwards as minute data
(:meth:`CemsLine.add_backfill`: JSON ``data_kind: minute`` readings, or HJ 212 ``CN=2051`` frames).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sanitel.schemas.hj212 import FLAG_V2017, encode_cp, encode_frame, format_number
from sanitel.schemas.readings import CemsReading
from sanitel.schemas.topics import device_topic, hj212_topic
from sanitel.simulators.clock import LocalTime, rfc3339
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
O2_CODE, H2O_CODE, FURNACE_CODE = "a19001", "a01014", "a01901"
O2_REF = 11.0
ZS_O2_LIMIT = 19.0    # above this the data unit reports no normalised values
RUN, SHUT_DOWN, OFF, START_UP = "run", "shut_down", "off", "start_up"
SHUT_DOWN_S, START_UP_S = 3600.0, 2 * 3600.0
TAU_S = 600.0          # how quickly a pollutant's random walk reverts to its mean

# The mark a data unit sends for each outage state: the codes of MEE announcement 2019 No. 50 as
# processors/cems_marks.py names them (停炉 shut_down, 停运 shut, 启炉 start_up).
MARK_OF_STATE: dict[str, str] = {SHUT_DOWN: "shut_down", OFF: "shut", START_UP: "start_up"}
MARK_NAMES_ZH: dict[str, str] = {"shut_down": "停炉", "shut": "停运", "start_up": "启炉"}
# HJ 212-2017 data flag F (停运): what an HJ 212 unit puts on the furnace temperature while the furnace is off.
HJ212_FURNACE_FLAG = "a01901_flag"

# Furnace dips (the furnace_dips fault). Each dip lies inside one clock-aligned 5-minute bucket, 30 s or more
# from its edges, below 850 °C for DIP_S seconds; the rest of that bucket and a minute either side sit on a
# shoulder just above 850 °C, with 3-minute ramps to and from the furnace's normal temperature. The arithmetic
# (tests/unit/test_simulators_faults.py repeats it): with readings every I ≤ 60 s (± 0.2 s) a bucket holds at most
# n = ceil(300/(I − 0.2)) readings, at least d = floor(190/(I + 0.2)) of them in the dip, so its mean is at most
# (d·841 + (n − d)·855) / n — 846.9 °C at I = 10 s, 847.4 at 30 s, 848.0 at 60 s — below 850; every other bucket
# holds only shoulder, ramp or normal values, all ≥ 851 °C.
BUCKET_S = 300.0
DIP_C = (837.0, 841.0)
SHOULDER_C = (851.0, 855.0)
SHOULDER_S, RAMP_S = 60.0, 180.0
DIP_S = (190.0, 235.0)
DIP_EDGE_S = 30.0
DIPS_MAX_INTERVAL_S = 60.0

# O2-analyser calibration (the o2_calibration fault): zero gas (N2, 0 % O2) for the first half, then a certified
# span gas of 18 % O2 in N2 — below ZS_O2_LIMIT, so the data unit keeps normalising with it.
O2_ZERO_GAS, O2_SPAN_GAS = 0.0, 18.0

# Minute data (CN 2051) re-sent after an outage: the fields averaged per minute (min and max too, for HJ 212).
_AVERAGED = ("o2_pct", "h2o_pct", "flue_temp_c", "flue_pressure_kpa", "flue_velocity_m_s", "flue_flow_m3_h",
             "furnace_temp_c")
_DECIMALS = {"o2_pct": 2, "h2o_pct": 2, "flue_temp_c": 1, "flue_pressure_kpa": 3, "flue_velocity_m_s": 2,
             "flue_flow_m3_h": 0, "furnace_temp_c": 1} | {f"{p.name}_mg_m3": p.decimals for p in POLLUTANTS} \
    | {f"{p.name}_zs_mg_m3": p.decimals for p in POLLUTANTS}
MIN_MAX_KEY = "hj212_min_max"  # HJ 212 units only: {field: (min, max)} of a minute, for -Min/-Max


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True)
class Dip:
    """One furnace dip: below 850 °C in [start, end), inside the 5-minute bucket starting at ``bucket``."""

    bucket: float
    start: float
    end: float

    @property
    def event(self) -> Window:
        """Everything the dip touches: ramp, shoulder, the bucket, shoulder, ramp."""
        return Window(self.bucket - SHOULDER_S - RAMP_S, self.bucket + BUCKET_S + SHOULDER_S + RAMP_S)


@dataclass(slots=True)
class _Backfill:
    window: Window
    record: TruthRecord
    held: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _OverRange:
    pollutant: str
    window: Window
    level: float          # the true measured concentration, mg/m³ (above the range)
    range_limit: float    # the analyser's upper range limit, mg/m³: the value it reports, flagged T
    record: TruthRecord


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
        self.dips: list[tuple[Dip, TruthRecord]] = []
        self.o2_calibrations: list[tuple[Window, TruthRecord]] = []
        self.over_ranges: list[_OverRange] = []
        self.backfills: list[_Backfill] = []
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

    def step(self, t: float, out: list[Emission]) -> float:
        dt = max(t - self.t, 0.0)
        self.t = t
        state = self.operating_state(t)
        self._walk(t, dt, state)
        flag = self._analyser_flag(t)
        reading = self._reading(t, state, flag)
        fmt: Format = "hj212" if self.protocol == "hj212" else "json"
        if not self.backfills or not self._held_back(t, reading, out, fmt):
            out.append(Emission(self.topic, self.device_id, self.kind, CemsReading.stream, t, reading, fmt))
        return t + self.cadence(t, self.interval_s) + self.rng.uniform(-0.2, 0.2)

    # --- fault hooks ---------------------------------------------------------------------------

    def add_exceedance(self, pollutant: str, start: float, end: float, level_zs: float) -> None:
        """Fault hook: hold ``pollutant`` at about ``level_zs`` (normalised) in [start, end)."""
        self.exceedances.append((pollutant, Window(start, end), level_zs))

    def add_furnace_dips(self, dips: Sequence[Dip], record: TruthRecord) -> None:
        """Fault hook: the furnace temperature dips below 850 °C (see ``BUCKET_S`` above); ``record`` counts
        the readings below 850 °C."""
        self.dips += [(dip, record) for dip in dips]

    def add_o2_calibration(self, window: Window, record: TruthRecord) -> None:
        """Fault hook: the O2 analyser alone is calibrated (flag C) in ``window``; the pollutant analysers keep
        measuring flue gas (flag N) and the data unit keeps normalising their values with the O2 it reads — the
        calibration gas."""
        self.o2_calibrations.append((window, record))

    def add_over_range(self, pollutant: str, window: Window, level: float, range_limit: float,
                       record: TruthRecord) -> None:
        """Fault hook: ``pollutant`` is really at about ``level`` mg/m³ (measured) in ``window``, above its
        analyser's range: the analyser reports ``range_limit`` flagged T."""
        self.over_ranges.append(_OverRange(pollutant, window, level, range_limit, record))

    def add_backfill(self, window: Window, record: TruthRecord) -> None:
        """Fault hook: the data unit sends nothing in ``window`` and re-sends it as minute data with its
        first reading after the window; ``record`` counts the minute messages."""
        self.backfills.append(_Backfill(window, record))

    def busy_windows(self, start: float, end: float) -> list[Window]:
        """What the line does on its own in [start, end) that a planned fault should not overlap: outages,
        maintenance and the daily calibrations."""
        busy = [w for w in (*self.outages, *self.maintenance) if w.start < end and w.end > start]
        if self.calibration_s is not None:
            at, duration = self.calibration_s
            day = self.local.next_time_of_day(start - 86_400.0, at)
            while day < end:
                busy.append(Window(day, day + duration))
                day = self.local.next_time_of_day(day + 1.0, at)
        return busy

    # --- operating state -----------------------------------------------------------------------

    def operating_state(self, t: float) -> str:
        for w in self.outages:
            if t in w:
                span = w.end - w.start
                down = min(SHUT_DOWN_S, span / 3)
                up = min(START_UP_S, span / 3)
                state = SHUT_DOWN if t < w.start + down else START_UP if t >= w.end - up else OFF
                window = self._state_window(w, state)
                key = f"{state}@{window.start}"
                if key in self._open:
                    self._open[key].messages += 1
                else:
                    effect, details = self._mark_truth(state, window)
                    self._record(state, t, window, effect, details)
                return state
        return RUN

    def _mark_truth(self, state: str, window: Window) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ground truth of an outage state: exempt as a marked period (Order No. 10, within its yearly cap).
        A JSON unit marks it itself; an HJ 212 unit cannot, so the plant must mark it through the API."""
        mark = MARK_OF_STATE[state]
        effect: dict[str, Any] = {"no_alert": f"marked_{mark}"}
        details: dict[str, Any] = {"o2_towards_pct": 20.9, "mark": mark, "mark_zh": MARK_NAMES_ZH[mark],
                                   "marked_hours": round((window.end - window.start) / 3600.0, 4)}
        if self.protocol == "hj212":
            details["marked_by"] = "api"
            effect["mark_via_api"] = {"mark": mark, "starts_at": rfc3339(window.start), "ends_at": rfc3339(window.end),
                                      "reason": f"simulated outage: {MARK_NAMES_ZH[mark]} ({mark})"}
        else:
            details["marked_by"] = "dau"
        return effect, details

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
        cold = 150.0 + self.rng.gauss(0.0, 5.0)  # drawn in every state: one seed keeps giving the same day
        if state == RUN:
            return self._dipped(t, self.furnace) if self.dips else self.furnace
        progress = self._progress(t, state)
        return {SHUT_DOWN: self.furnace - (self.furnace - 300.0) * progress,
                OFF: cold, START_UP: 150.0 + (900.0 - 150.0) * progress}[state]

    def _dipped(self, t: float, normal: float) -> float:
        """The furnace temperature during a dip event (``BUCKET_S`` above), else ``normal``."""
        for dip, record in self.dips:
            event = dip.event
            if t not in event:
                continue
            if dip.start <= t < dip.end:
                record.messages += 1
                return self.rng.uniform(*DIP_C)
            shoulder = self.rng.uniform(*SHOULDER_C)
            if t < dip.bucket - SHOULDER_S:   # sagging towards the shoulder
                return normal + (shoulder - normal) * (t - event.start) / RAMP_S
            if t >= dip.bucket + BUCKET_S + SHOULDER_S:   # recovering from it
                return shoulder + (normal - shoulder) * (t - dip.bucket - BUCKET_S - SHOULDER_S) / RAMP_S
            return shoulder
        return normal

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

    def _o2_calibration_gas(self, t: float) -> float | None:
        """The gas the O2 analyser reads while it alone is calibrated (o2_calibration fault), else None."""
        for window, record in self.o2_calibrations:
            if t in window:
                record.messages += 1
                return O2_ZERO_GAS if t < (window.start + window.end) / 2 else O2_SPAN_GAS
        return None

    def _over_range(self, t: float, p: Pollutant) -> _OverRange | None:
        for event in self.over_ranges:
            if event.pollutant == p.name and t in event.window:
                return event
        return None

    def _reading(self, t: float, state: str, flag: str) -> dict[str, Any]:
        rng = self.rng
        o2 = self._flue_o2(t, state)
        o2_gas = self._o2_calibration_gas(t) if self.o2_calibrations and flag == "N" else None
        # the O2 the data unit normalises with: the flue gas's, or during an O2 calibration what the analyser reads
        # of the calibration gas
        o2_seen = o2 if o2_gas is None else round(clamp(o2_gas + rng.gauss(0.0, 0.03), 0.0, 20.95), 2)
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
                event = self._over_range(t, p) if self.over_ranges and state == RUN else None
                if event is not None and event.level * rng.uniform(0.95, 1.05) > event.range_limit:
                    value, pollutant_flag = event.range_limit, "T"  # clipped at the top of the range
                    event.record.messages += 1
            reading[f"{p.name}_mg_m3"] = round(value, p.decimals)
            # no normalising near-ambient O2, nor of calibration gas or maintenance data (C/M)
            if pollutant_flag in ("N", "T") and o2_seen <= ZS_O2_LIMIT:
                reading[f"{p.name}_zs_mg_m3"] = round(value * (21.0 - O2_REF) / (21.0 - o2_seen), p.decimals)
            reading[f"{p.name}_flag"] = pollutant_flag
        o2_value = {"C": 0.0 if self._zero_phase(t) else 20.9, "M": 0.0}.get(flag, o2)
        # below 21 %: O2 >= 21 %vol is not physical in flue gas, and the codec voids it (schemas/hj212.py)
        reading["o2_pct"] = round(clamp(o2_value + rng.gauss(0.0, 0.03), 0.0, 20.95), 2) if o2_gas is None else o2_seen
        reading["o2_flag"] = flag if o2_gas is None else "C"
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
        if not running:
            if self.protocol == "hj212":
                if state == OFF:  # HJ 212 has no mark field; the furnace temperature is flagged 停运
                    reading[HJ212_FURNACE_FLAG] = "F"
            else:
                reading["operating_mark"] = MARK_OF_STATE[state]  # the DAU's mark (extra.operating_mark)
        return reading

    def _zero_phase(self, t: float) -> bool:
        if self.calibration_s is None:
            return False
        at, duration = self.calibration_s
        return (self.local.seconds_of_day(t) - at) % 86_400.0 < duration / 2

    # --- back-fill after a data-unit outage ----------------------------------------------------------

    def _held_back(self, t: float, reading: dict[str, Any], out: list[Emission], fmt: Format) -> bool:
        """During a back-fill outage: keep the reading (True). After it: send the held span as minute data
        before this reading (False: the reading goes out too)."""
        for backfill in self.backfills:
            if t in backfill.window:
                backfill.held.append(reading)
                return True
            if t >= backfill.window.end and backfill.held:
                for minute in minute_readings(backfill.held, hj212=self.protocol == "hj212"):
                    self.seq += 1
                    minute["seq"] = self.seq
                    out.append(Emission(self.topic, self.device_id, self.kind, CemsReading.stream, t, minute, fmt))
                    backfill.record.messages += 1
                backfill.record.details["resent_at"] = rfc3339(t)
                backfill.held = []
                self.seq += 1
                reading["seq"] = self.seq  # sent after the minute data: numbered after them
        return False


def minute_readings(readings: Sequence[dict[str, Any]], *, hj212: bool = False) -> list[dict[str, Any]]:
    """Real-time readings → one minute-data reading (``data_kind: minute``) per clock minute, stamped with the
    minute's start (HJ 212 DataTime of CN 2051). Per pollutant the minute takes the flag most of its readings
    carry and averages the values under that flag; normalised values are averaged where those readings have
    them. ``hj212``: also keep each field's minimum and maximum (sent as ``-Min``/``-Max``)."""
    minutes: dict[float, list[dict[str, Any]]] = {}
    for reading in readings:
        minutes.setdefault(math.floor(reading["ts"] / 60.0) * 60.0, []).append(reading)
    return [_minute(at, group, hj212) for at, group in sorted(minutes.items())]


def _minute(at: float, group: list[dict[str, Any]], hj212: bool) -> dict[str, Any]:
    last = group[-1]
    out: dict[str, Any] = {"ts": at, "seq": 0, "data_kind": "minute", "plant_id": last["plant_id"],
                           "line_id": last["line_id"], "gas_is_dry": last["gas_is_dry"]}
    spread: dict[str, tuple[float, float]] = {}

    def average(name: str, rows: Sequence[dict[str, Any]]) -> None:
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            out[name] = round(sum(values) / len(values), _DECIMALS[name])
            spread[name] = (min(values), max(values))

    for p in POLLUTANTS:
        flag = _main_flag([r[f"{p.name}_flag"] for r in group])
        rows = [r for r in group if r[f"{p.name}_flag"] == flag]
        average(f"{p.name}_mg_m3", rows)
        average(f"{p.name}_zs_mg_m3", rows)
        out[f"{p.name}_flag"] = flag
    for name in _AVERAGED:
        average(name, group)
    out["o2_flag"] = _main_flag([r["o2_flag"] for r in group])
    out["h2o_flag"] = _main_flag([r["h2o_flag"] for r in group])
    for key in ("operating_state", "operating_mark", HJ212_FURNACE_FLAG):
        if key in last:
            out[key] = last[key]
    if hj212:
        out[MIN_MAX_KEY] = spread
    return out


def _main_flag(flags: Sequence[str]) -> str:
    """The flag most readings of a minute carry; on a tie, one that is not N (the minute is not all normal)."""
    counts = Counter(flags)
    return max(counts, key=lambda f: (counts[f], f != "N"))


# --- HJ 212-2017 -------------------------------------------------------------------------------

ST_AIR = "31"       # air pollution source
CN_RTD = "2011"     # real-time data
CN_MINUTE = "2051"  # minute data


def hj212_cp(reading: dict[str, Any], local: LocalTime) -> str:
    """The CP content of a data frame for a CEMS reading: ``DataTime`` in the plant's local time, then one group
    per code — real-time (2011): ``a21002-Rtd=…,a21002-ZsRtd=…,a21002-Flag=N``; minute data (2051):
    ``a21002-Min=…,a21002-Avg=…,a21002-Max=…,a21002-ZsAvg=…,a21002-Flag=N``."""
    t = reading["ts"]
    minute = reading.get("data_kind") == "minute"
    value_suffix, zs_suffix = ("Avg", "ZsAvg") if minute else ("Rtd", "ZsRtd")
    spread: dict[str, tuple[float, float]] = reading.get(MIN_MAX_KEY) or {}

    def values(name: str) -> dict[str, str | float]:
        value = reading[name]
        if name in spread:
            low, high = spread[name]
            return {"Min": low, value_suffix: value, "Max": high}
        return {value_suffix: value}

    codes: dict[str, dict[str, str | float]] = {}
    for p in POLLUTANTS:
        if p.hj212_code is None:
            continue
        group = values(f"{p.name}_mg_m3")
        zs = reading.get(f"{p.name}_zs_mg_m3")
        if zs is not None:
            group[zs_suffix] = zs
        group["Flag"] = reading[f"{p.name}_flag"]
        codes[p.hj212_code] = group
    codes[O2_CODE] = {**values("o2_pct"), "Flag": reading["o2_flag"]}
    codes[H2O_CODE] = {**values("h2o_pct"), "Flag": reading["h2o_flag"]}
    codes["a01011"] = values("flue_velocity_m_s")
    codes["a01012"] = values("flue_temp_c")
    codes["a01013"] = values("flue_pressure_kpa")
    flow = reading["flue_flow_m3_h"]  # a number, unless a malformed-reading fault put text there
    codes["a00000"] = {value_suffix: format_number(flow / 3600.0, 3) if isinstance(flow, float | int) else flow}  # m³/s
    codes[FURNACE_CODE] = values("furnace_temp_c")
    if HJ212_FURNACE_FLAG in reading:
        codes[FURNACE_CODE]["Flag"] = reading[HJ212_FURNACE_FLAG]
    return encode_cp(_local_stamp(t, local, "%Y%m%d%H%M%S"), codes, decimals=4)


def hj212_frame(reading: dict[str, Any], *, mn: str, password: str, local: LocalTime) -> bytes:
    """A complete HJ 212-2017 data frame (protocol-version Flag): ``ST=31;CN=2011`` for a real-time reading,
    ``CN=2051`` for minute data."""
    t = reading["ts"]
    qn = _local_stamp(t, local, "%Y%m%d%H%M%S") + f"{int(t * 1000) % 1000:03d}"
    cn = CN_MINUTE if reading.get("data_kind") == "minute" else CN_RTD
    return encode_frame(ST_AIR, cn, mn, password, hj212_cp(reading, local), qn=qn, flag=FLAG_V2017)


def _local_stamp(t: float, local: LocalTime, fmt: str) -> str:
    return local.datetime(t).strftime(fmt)


def random_calibration_time(rng: random.Random, base_s: float, line_index: int) -> float:
    """Lines of one plant calibrate one after another, 20 minutes apart."""
    return (base_s + 1200.0 * line_index + rng.uniform(0.0, 60.0)) % 86_400.0
