"""Fault injection with ground truth.

A fault is planned before the run from a :class:`FaultSpec` (a scenario's ``faults:`` list or the
command line's ``--faults spike,silence``): which devices, from when to when. Planning writes one
ground-truth record per device and fault (see :mod:`simulators.truth`) and wires the fault in at
one of three places:

- the **model** (what the device really does): ``burst`` (reports far faster), ``emission_exceedance``
  (a CEMS pollutant held above its half-hourly limit), ``charger_failure`` (the depot charger
  delivers nothing), ``bin_fire``; and the CEMS regulatory cases (issue 13): ``furnace_dips`` (the furnace
  below 850 °C for 3-4 minutes, ``count`` times in one local day), ``dau_outage_backfill`` (the data unit
  silent for hours, then re-sending the span as minute data), ``o2_calibration`` (the O2 analyser calibrated
  while the pollutant values still carry normalised values), ``over_range`` (a pollutant above its
  analyser's range, flagged T); and the truck faults (issue 15): ``missed_pickup``, ``late_round``, ``overweight``,
  ``off_route``, ``never_weighed``, ``weighbridge_mismatch``, each changing one shift of a truck, whose model
  records what then happened (models/truck.py), and ``truck_telematics_outage`` (the truck's terminal silent during a
  haul while the truck keeps working);
- the **reading** (what the device says): ``spike``, ``stuck_sensor``, ``silence`` (nothing is
  sent), ``clock_skew`` (the device's clock is off), ``malformed`` with reason ``wrong_type`` or
  ``out_of_range``;
- the **message** (what the network does with it): ``duplicate`` (sent twice, as a redelivery),
  ``out_of_order`` (held back and released in reverse), ``malformed`` with reason ``invalid_json``
  (a truncated payload; for HJ 212 units a broken CRC).

The injector also shows the ground truth what a faulted device really sent: a bin's or a station's readings, as the
faults left them (and only those that will be stored), go to the device's signal watches (:mod:`simulators.truth`),
so "full" and "exceeded" are judged on the spiked, frozen or missing values the alert rules will see; and a silence
expects an offline alert when the gap it left between stored readings is longer than the inactivity timeout.

Message faults are not planned on devices behind a gateway — their readings travel inside the
gateway's batches; reading faults apply to the items of a batch.

The CEMS regulatory faults are planned around what the line does anyway (its outages, maintenance and daily
calibrations) and around faults planned before them on the same line, so each shows its own effect; two
``furnace_dips`` faults never share a line (their dips would add up within a day).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sanitel.emission_limits import default_limits, mee_rules
from sanitel.errors import ConfigError
from sanitel.simulators.clock import Duration, LocalTime, SignedDuration, TimeOfDay, rfc3339
from sanitel.simulators.models.base import stable_seed
from sanitel.simulators.models.cems import (
    BUCKET_S,
    DIP_C,
    DIP_EDGE_S,
    DIP_S,
    DIPS_MAX_INTERVAL_S,
    O2_SPAN_GAS,
    O2_ZERO_GAS,
    RAMP_S,
    SHOULDER_C,
    SHOULDER_S,
    CemsLine,
    Dip,
    Window,
)
from sanitel.simulators.models.truck import OUTAGE_S, SHIFT_FAULTS, TELEMATICS_OUTAGE
from sanitel.simulators.truth import GroundTruth, SignalWatch, TruthRecord

if TYPE_CHECKING:
    from sanitel.simulators.fleet import Fleet

FaultKind = Literal["spike", "stuck_sensor", "silence", "clock_skew", "duplicate", "out_of_order", "malformed",
                    "burst", "emission_exceedance", "charger_failure", "bin_fire",
                    "furnace_dips", "dau_outage_backfill", "o2_calibration", "over_range",
                    "missed_pickup", "late_round", "overweight", "off_route", "never_weighed", "weighbridge_mismatch",
                    "truck_telematics_outage"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DeviceKind = Literal["sweeper", "transfer_station", "bin", "camera", "cems", "truck"]
MalformedReason = Literal["invalid_json", "wrong_type", "out_of_range"]
Pollutant = Literal["nox", "co", "so2", "dust", "hcl"]

# The collector rejects readings further ahead than this (settings.max_future_skew_s default).
MAX_FUTURE_SKEW_S = 300.0
# A device is offline after a gap longer than this between its readings: the DEFAULT of devices.inactivity_timeout_s
# (schemas/migrations/0001_registry.sql), which the offline rules read. Restated here until the kernel names it
# (tests/unit/test_truth_definitions.py holds the two equal).
OFFLINE_TIMEOUT_S = 900.0

# Which device kinds a fault can hit, and its default target kind.
TARGET_KINDS: dict[str, tuple[str, ...]] = {
    "spike": ("sweeper", "transfer_station", "bin", "cems"),
    "stuck_sensor": ("sweeper", "transfer_station", "bin", "cems"),
    "silence": ("sweeper", "transfer_station", "bin", "camera", "cems"),
    "clock_skew": ("sweeper", "transfer_station", "bin", "camera", "cems"),
    "duplicate": ("sweeper", "transfer_station", "bin", "camera", "cems"),
    "out_of_order": ("sweeper", "transfer_station", "bin", "camera", "cems"),
    "malformed": ("sweeper", "transfer_station", "bin", "camera", "cems"),
    "burst": ("sweeper", "transfer_station", "cems"),
    "emission_exceedance": ("cems",),
    "charger_failure": ("sweeper",),
    "bin_fire": ("bin",),
    "furnace_dips": ("cems",),
    "dau_outage_backfill": ("cems",),
    "o2_calibration": ("cems",),
    "over_range": ("cems",),
    **{kind: ("truck",) for kind in SHIFT_FAULTS},
    TELEMATICS_OUTAGE: ("truck",),
}
# The CEMS regulatory cases: planned around the line's own events and earlier faults on it (module docstring).
CEMS_EVENTS = frozenset({"furnace_dips", "dau_outage_backfill", "o2_calibration", "over_range"})
MESSAGE_FAULTS = frozenset({"duplicate", "out_of_order"})
DEFAULT_DURATION_S: dict[str, float] = {
    "spike": 0.0, "stuck_sensor": 1800.0, "silence": 1200.0, "clock_skew": 600.0, "duplicate": 600.0,
    "out_of_order": 600.0, "malformed": 600.0, "burst": 120.0, "emission_exceedance": 3600.0,
    "charger_failure": 3 * 3600.0, "bin_fire": 1800.0,
    # furnace_dips: the part of one local day the dips are spread over
    "furnace_dips": 6 * 3600.0, "dau_outage_backfill": 4 * 3600.0, "o2_calibration": 900.0, "over_range": 1200.0,
    # truck faults change a whole shift (models/truck.py); late_round's duration is how late the shift leaves
    **dict.fromkeys(SHIFT_FAULTS, 0.0), "late_round": 5 * 3600.0,
    TELEMATICS_OUTAGE: OUTAGE_S,  # how long the truck's terminal is silent, from a little into a haul to the tip
}
# Two truck faults that cannot share a shift: a load dumped short of the weighbridge is never weighed, so no ticket
# can disagree with its pickups. They are planned on different trucks; on a fleet of one truck the second waits for
# the truck's next shift.
TRUCK_CONFLICTS = {"never_weighed": "weighbridge_mismatch", "weighbridge_mismatch": "never_weighed"}
# The field a sensor fault hits by default, per device kind; a spike's value (inside the schema's
# physical range, so the row is stored — it is an outlier, not a rejection).
SENSOR_FIELD = {"sweeper": "soc_pct", "transfer_station": "h2s_mg_m3", "bin": "fill_level_pct", "cems": "o2_pct"}
SPIKE_FIELD = {"sweeper": "battery_temp_max_c", "transfer_station": "h2s_mg_m3", "bin": "fill_level_pct",
               "cems": "co_mg_m3"}
SPIKE_VALUE = {"battery_temp_max_c": 120.0, "h2s_mg_m3": 5.0, "fill_level_pct": 180.0, "co_mg_m3": 2000.0}
# Malformed readings: the field that gets a wrong type or an impossible value, per kind and stream.
MALFORMED_FIELD = {"sweeper": "soc_pct", "transfer_station": "noise_dba", "bin": "fill_level_pct",
                   "camera": "confidence", "cems": "o2_pct"}
IMPOSSIBLE = {"soc_pct": 150.0, "noise_dba": 250.0, "fill_level_pct": 500.0, "weight_kg": -1.0,
              "confidence": 1.7, "o2_pct": 25.0}
# The concentration (normalised, mg/m³) an exceedance holds: above GB 18485 1-hour and EU half-hourly
# limits (NOx 300/400, CO 100/100, SO2 100/200, dust 30/30, HCl 60/60).
EXCEEDANCE_LEVEL = {"nox": 480.0, "co": 180.0, "so2": 260.0, "dust": 45.0, "hcl": 90.0}
HALF_HOUR_S = 1800.0
# over_range: the analysers' upper range limits (mg/m³ measured, typical incinerator CEMS ranges; editable per
# fault with `analyser_range`) and how far above it the flue gas really is by default.
ANALYSER_RANGE = {"so2": 1000.0, "nox": 1000.0, "co": 1000.0, "dust": 200.0, "hcl": 200.0}
OVER_RANGE_FACTOR = 1.6
# the lowest normalisation factor of a running line: 10 / (21 - 6.2 % O2), the model's lowest flue-gas O2
MIN_ZS_FACTOR = 10.0 / 14.8
EVENT_MARGIN_S = 1800.0  # a CEMS regulatory fault keeps this far from the line's other events
BACKFILL_TAIL_S = 600.0  # … and a back-fill ends this long before the run does, so the span is re-sent in it


class FaultSpec(BaseModel):
    """One entry of a scenario's ``faults:`` list (every key but ``kind`` has a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    devices: int | list[str] = Field(1, description="how many devices (picked by the seed) or their ids")
    device_kind: DeviceKind | None = None
    after: Duration | None = Field(None, description="start this long after the run starts")
    at: TimeOfDay | None = Field(None, description="start at this local time of day (first after the run start)")
    duration: Duration | None = None
    field: str | None = Field(None, pattern=r"^[a-z0-9_]+$")
    offset: SignedDuration | None = Field(None, description="clock_skew: e.g. +10m (future) or -2h (late)")
    reason: MalformedReason | None = None
    factor: float | None = Field(None, gt=1, le=1000, description="burst: report this many times faster")
    pollutant: Pollutant | None = None
    level: float | None = Field(None, ge=0, description="spike value, exceedance level (mg/m³, normalised), or "
                                                        "over_range: the true measured concentration (mg/m³)")
    analyser_range: float | None = Field(None, gt=0, le=100_000,
                                         description="over_range: the analyser's upper range limit (mg/m³ measured)")
    count: int | None = Field(None, ge=1, le=1000,
                              description="spike: how many readings; furnace_dips: how many dips in the day (6)")
    group: int | None = Field(None, ge=2, le=1000, description="out_of_order: messages reversed per group")

    @model_validator(mode="after")
    def _parameters_fit_kind(self) -> FaultSpec:
        applies = {"offset": ("clock_skew",), "reason": ("malformed",), "factor": ("burst",),
                   "pollutant": ("emission_exceedance", "over_range"), "count": ("spike", "furnace_dips"),
                   "group": ("out_of_order",), "field": ("spike", "stuck_sensor", "malformed"),
                   "level": ("spike", "emission_exceedance", "over_range"), "analyser_range": ("over_range",)}
        for key, kinds in applies.items():
            if getattr(self, key) is not None and self.kind not in kinds:
                raise ValueError(f"'{key}' applies only to {' and '.join(kinds)} faults; remove it from this "
                                 f"{self.kind} fault")
        if self.after is not None and self.at is not None:
            raise ValueError("give 'after' (offset from the run start) or 'at' (local time), not both")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError("'devices' must be at least 1, or a list of device ids")
        if self.device_kind is not None and self.device_kind not in TARGET_KINDS[self.kind]:
            raise ValueError(f"{self.kind} faults apply to {', '.join(TARGET_KINDS[self.kind])} devices, "
                             f"not {self.device_kind}")
        if self.kind == "over_range" and self.level is not None and self.level <= self.range_limit():
            raise ValueError(f"over_range: 'level' {self.level:g} must be above the analyser's range "
                             f"({self.range_limit():g} mg/m³); raise it or set 'analyser_range' lower")
        return self

    def range_limit(self) -> float:
        """over_range: the analyser's upper range limit (mg/m³ measured)."""
        return self.analyser_range or ANALYSER_RANGE[self.pollutant or "so2"]


# What ``--faults NAME`` injects: spread over device kinds so that even the demo fleet has enough
# devices for ``--faults all``, each on a device that reports often enough to show the effect.
PRESETS: dict[str, tuple[dict[str, Any], ...]] = {
    "spike": ({"device_kind": "transfer_station"},),
    "stuck_sensor": ({"device_kind": "sweeper"},),
    "silence": ({"device_kind": "sweeper"},),
    "clock_skew": ({"device_kind": "sweeper", "offset": 600.0}, {"device_kind": "transfer_station", "offset": -7200.0}),
    "duplicate": ({"device_kind": "transfer_station"},),
    "out_of_order": ({"device_kind": "sweeper"},),
    "malformed": ({"device_kind": "sweeper", "reason": "invalid_json"},
                  {"device_kind": "cems", "reason": "wrong_type"},
                  {"device_kind": "transfer_station", "reason": "out_of_range"}),
    "burst": ({"device_kind": "sweeper"},),
    "emission_exceedance": ({"device_kind": "cems"},),
    "charger_failure": ({"device_kind": "sweeper"},),
    "bin_fire": ({"device_kind": "bin"},),
    # six dips (a violation) and, on another line, five (within the rule): the pair shows where the line is
    "furnace_dips": ({"device_kind": "cems", "count": 6}, {"device_kind": "cems", "count": 5, "_needs": 2}),
    "dau_outage_backfill": ({"device_kind": "cems"},),
    "o2_calibration": ({"device_kind": "cems"},),
    "over_range": ({"device_kind": "cems", "pollutant": "so2"},),
    **{kind: ({"device_kind": "truck"},) for kind in SHIFT_FAULTS},
    TELEMATICS_OUTAGE: ({"device_kind": "truck"},),
}
NEEDS = "_needs"  # a preset left out when the fleet has fewer devices of its kind than this


def parse_fault_names(text: str, available: dict[str, int] | None = None) -> list[FaultSpec]:
    """``--faults spike,silence`` (or ``all``) → specs with defaults (see PRESETS): ``clock_skew``
    gives two faults (+10 min: rejected as future; −2 h: late but stored), ``malformed`` one per
    reason, ``furnace_dips`` two (six dips, and five on another line: left out with a single line). With
    ``all``, faults on device kinds the fleet lacks (``available`` counts) are left out."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    everything = names == ["all"]
    if everything:
        names = list(FAULT_KINDS)
    specs: list[FaultSpec] = []
    for name in names:
        if name not in FAULT_KINDS:
            raise ConfigError(f"--faults: unknown fault {name!r}; use a comma-separated list of "
                              f"{', '.join(FAULT_KINDS)} (or 'all')")
        for preset in PRESETS[name]:
            have = None if available is None else available.get(preset["device_kind"], 0)
            if everything and have == 0:
                continue
            if NEEDS in preset and have is not None and have < preset[NEEDS]:
                continue
            specs.append(FaultSpec(kind=name, **{k: v for k, v in preset.items() if k != NEEDS}))
    return specs


# --- the injectors ----------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """An encoded message ready to publish; ``t`` is the simulated time it is sent."""

    topic: str
    payload: bytes
    t: float
    kind: str
    device_id: str
    readings: int = 1


class ActiveFault:
    """A planned fault on one device: a window and the ground-truth record it keeps counting into."""

    stage: Literal["reading", "message", "watch"] = "watch"

    def __init__(self, record: TruthRecord) -> None:
        self.record = record
        self.start = record.start
        self.end = record.end

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    @property
    def dead_letters(self) -> bool:
        """What this fault touches never reaches the tables (it goes to the dead letters)."""
        return "dead_letter" in self.record.expected_effect

    def sent(self, t: float) -> None:
        """A reading of the device at ``t`` went out and will be stored (whether or not this fault touched it)."""

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        self.record.messages += 1
        return reading

    def on_message(self, message: Message, out: list[Message]) -> None:
        out.append(message)

    def drain(self, out: list[Message]) -> None:
        """Release anything still held back (the run is ending)."""


class Spike(ActiveFault):
    stage = "reading"

    def __init__(self, record: TruthRecord, field: str, value: float, count: int) -> None:
        super().__init__(record)
        self.field, self.value, self.left = field, value, count
        self.end = math.inf  # the first `count` readings at or after start, whenever they come

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        if self.left <= 0 or self.field not in reading:
            return reading
        reading[self.field] = self.value
        self.left -= 1
        self.record.messages += 1
        self.record.end = t
        if self.left == 0:
            self.end = t
        return reading


class StuckSensor(ActiveFault):
    stage = "reading"

    def __init__(self, record: TruthRecord, field: str) -> None:
        super().__init__(record)
        self.field = field
        self.value: Any = None

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        if self.field not in reading:
            return reading
        if self.value is None:
            self.value = reading[self.field]
            self.record.details["value"] = self.value
        reading[self.field] = self.value
        self.record.messages += 1
        return reading


class Silence(ActiveFault):
    """Nothing is sent in the window. Whether that raises an offline alert is planned from the window's length and
    then measured as the offline rules do: the gap between the last stored reading before the window and the first
    after it (``details.gap_s``), against the inactivity timeout — a device reporting every 5 minutes that goes
    quiet for 12 leaves a gap of 15 or 20."""

    stage = "reading"

    def __init__(self, record: TruthRecord, alert: str | None) -> None:
        super().__init__(record)
        self.alert = alert  # the offline rule for this device kind (None: cameras only send events)
        self.last_before: float | None = None
        self.measured = False

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        self.record.messages += 1
        return None

    def sent(self, t: float) -> None:
        if t < self.start:
            self.last_before = t
        elif t >= self.end and not self.measured and self.last_before is not None:
            self.measured = True
            gap = t - self.last_before
            self.record.details["gap_s"] = round(gap, 3)
            self.record.expected_effect.pop("alert", None)
            if self.alert is not None and gap > OFFLINE_TIMEOUT_S:
                self.record.expected_effect["alert"] = self.alert


class ClockSkew(ActiveFault):
    stage = "reading"

    def __init__(self, record: TruthRecord, offset_s: float) -> None:
        super().__init__(record)
        self.offset_s = offset_s

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        reading["ts"] += self.offset_s
        self.record.messages += 1
        return reading


class MalformedReading(ActiveFault):
    """A field with the wrong type (a string where a number belongs) or a physically impossible value."""

    stage = "reading"

    def __init__(self, record: TruthRecord, reason: str, field: str) -> None:
        super().__init__(record)
        self.reason, self.field = reason, field

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        field = self.field if self.field in reading else self._any_number(reading)
        if field is None:
            return reading
        reading[field] = "n/a" if self.reason == "wrong_type" else IMPOSSIBLE.get(field, 1e12)
        self.record.messages += 1
        return reading


    @staticmethod
    def _any_number(reading: dict[str, Any]) -> str | None:
        """Sparse readings (a truck on the weighbridge, a deposit) lack the usual field: take another."""
        for key, value in reading.items():
            if key not in ("ts", "seq") and isinstance(value, float):
                return key
        return None


class InvalidPayload(ActiveFault):
    """Bytes that do not parse: a JSON payload cut short (a partial write), or an HJ 212 frame whose
    CRC no longer matches."""

    stage = "message"

    def on_message(self, message: Message, out: list[Message]) -> None:
        message.payload = corrupt(message.payload)
        self.record.messages += 1
        out.append(message)


def corrupt(payload: bytes) -> bytes:
    if payload.startswith(b"##"):  # HJ 212: flip the CRC's last hex digit
        crc_end = len(payload) - 2
        last = payload[crc_end - 1:crc_end]
        return payload[:crc_end - 1] + (b"0" if last != b"0" else b"1") + payload[crc_end:]
    return payload[: max(1, len(payload) * 3 // 5)]


class Duplicate(ActiveFault):
    stage = "message"

    def on_message(self, message: Message, out: list[Message]) -> None:
        out.append(message)
        out.append(Message(message.topic, message.payload, message.t, message.kind, message.device_id,
                           message.readings))
        self.record.messages += 1


class OutOfOrder(ActiveFault):
    """Holds messages back and releases each group newest first."""

    stage = "message"

    def __init__(self, record: TruthRecord, group: int) -> None:
        super().__init__(record)
        self.group = group
        self.held: list[Message] = []

    def on_message(self, message: Message, out: list[Message]) -> None:
        self.held.append(message)
        self.record.messages += 1
        if len(self.held) >= self.group:
            self.drain(out)

    def drain(self, out: list[Message]) -> None:
        out.extend(reversed(self.held))
        self.held = []


class FaultInjector:
    """Applies the planned faults to a run's readings and messages. ``watches``: the signal watches of faulted
    devices (handed over by their models), which see each reading as sent — after the faults, and only when it
    will be stored."""

    def __init__(self, faults: Iterable[ActiveFault] = (),
                 watches: dict[str, list[SignalWatch]] | None = None) -> None:
        self.faults = list(faults)
        self.by_device: dict[str, list[ActiveFault]] = {}
        for fault in self.faults:
            self.by_device.setdefault(fault.record.device_id, []).append(fault)
        self.watches = watches or {}

    def reading(self, device_id: str, t: float, reading: dict[str, Any]) -> dict[str, Any] | None:
        faults = self.by_device.get(device_id, ())
        stored = True
        for fault in faults:
            if not fault.active(t):
                continue
            if fault.stage == "message":  # a payload cut short later: the reading never reaches a table
                stored = stored and not fault.dead_letters
                continue
            touched = fault.record.messages  # every fault counts the readings it changes
            changed = fault.on_reading(reading, t)
            if changed is None:
                return None
            stored = stored and not (fault.dead_letters and fault.record.messages != touched)
            reading = changed
        if stored:
            for fault in faults:
                fault.sent(t)
            for watch in self.watches.get(device_id, ()):
                watch.see(t, reading)
        return reading

    def message(self, message: Message, out: list[Message]) -> None:
        faults = self.by_device.get(message.device_id, ())
        for fault in faults:
            # a window has closed: whatever it held back goes out before newer messages
            if isinstance(fault, OutOfOrder) and fault.held and not fault.active(message.t):
                fault.drain(out)
        pending = [message]
        for fault in faults:
            if fault.stage == "message" and fault.active(message.t):
                staged: list[Message] = []
                for m in pending:
                    fault.on_message(m, staged)
                pending = staged
        out.extend(pending)

    def drain(self, out: list[Message]) -> None:
        for fault in self.faults:
            fault.drain(out)


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanContext:
    fleet: Fleet
    seed: int
    start: float
    end: float
    truth: GroundTruth
    #: simulated time is wall-clock time (a real-time run starting now): only then can a device clock
    #: running ahead put readings in the collector's future
    realtime: bool = False


@dataclass(slots=True)
class _Planned:
    """What planning has handed out so far: faults per device, their windows, the lines with furnace dips."""

    used: Counter[str] = field(default_factory=Counter)
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    dips: set[str] = field(default_factory=set)
    truck_faults: dict[str, set[str]] = field(default_factory=dict)


def plan_faults(specs: Sequence[FaultSpec], ctx: PlanContext) -> FaultInjector:
    """Choose devices and windows for every spec (deterministic for the seed), record ground truth
    and wire model faults into the models. Raises ConfigError for a spec the fleet cannot satisfy."""
    planned = _Planned()
    injectors: list[ActiveFault] = []
    for index, spec in enumerate(specs):
        rng = random.Random(stable_seed(ctx.seed, "fault", str(index), spec.kind))
        kind = spec.device_kind or TARGET_KINDS[spec.kind][0]
        for device_id in _targets(spec, kind, ctx.fleet, rng, planned):
            planned.used[device_id] += 1
            injectors += _plan_one(spec, index, device_id, ctx, rng, planned)
    return FaultInjector(injectors, _hand_over_watches(ctx.fleet, {f.record.device_id for f in injectors}))


def _hand_over_watches(fleet: Fleet, faulted: set[str]) -> dict[str, list[SignalWatch]]:
    """Every reading of a faulted device passes the injector (run.py): its signal watches are fed there, with the
    reading as sent, and no longer by the model with the reading as generated."""
    out: dict[str, list[SignalWatch]] = {}
    for device_id in sorted(faulted):
        model = fleet.owners.get(device_id)
        watches = model.signal_watches(device_id) if model is not None else []
        for watch in watches:
            watch.handed_over = True
        if watches:
            out[device_id] = watches
    return out


def _targets(spec: FaultSpec, kind: str, fleet: Fleet, rng: random.Random, planned: _Planned) -> list[str]:
    message_level = spec.kind in MESSAGE_FAULTS or (spec.kind == "malformed" and _reason(spec) == "invalid_json")
    if isinstance(spec.devices, list):
        unknown = [d for d in spec.devices if fleet.kind_of(d) is None and d not in fleet.points]
        if unknown:
            raise ConfigError(f"faults: {spec.kind}: unknown device id(s) {', '.join(unknown[:5])}; "
                              "device ids look like sw-0001, ts-0001, bin-00001-k, cam-00001, cems-p1-l1")
        batched = [d for d in spec.devices if d in fleet.gateway_devices]
        if message_level and batched:
            raise ConfigError(f"faults: {spec.kind}: {', '.join(batched[:5])} send through a gateway, whose "
                              "batches carry many devices; pick devices that publish on their own")
        return list(spec.devices)
    every = fleet.fault_candidates(kind, message_level=message_level)
    if spec.kind in CEMS_EVENTS:
        candidates = _event_candidates(spec, every, planned)
    else:
        # prefer devices no other fault touches (cleaner ground truth); share them when the fleet is small
        candidates = [d for d in every if d not in planned.used] or every
        if spec.kind in TRUCK_CONFLICTS:  # … but not a truck whose shift the conflicting fault has taken: there it
            # would wait for the next shift, a day later (outside a one-day run) — as it must on a one-truck fleet
            clash = TRUCK_CONFLICTS[spec.kind]
            candidates = [d for d in candidates if clash not in planned.truck_faults.get(d, ())] or candidates
    if not candidates:
        raise ConfigError(f"faults: {spec.kind}: the scenario has no {kind} devices to fault; add "
                          f"{kind} devices to the scenario or set device_kind to one of "
                          f"{', '.join(TARGET_KINDS[spec.kind])}")
    return rng.sample(candidates, min(spec.devices, len(candidates)))


def _event_candidates(spec: FaultSpec, every: list[str], planned: _Planned) -> list[str]:
    """The least-faulted lines; for furnace dips only lines without dips (two sets of dips on one line and day
    would add up to a verdict neither record states)."""
    if spec.kind == "furnace_dips":
        every = [d for d in every if d not in planned.dips]
        if not every and planned.dips:
            raise ConfigError("faults: furnace_dips: every CEMS line already has furnace dips planned; give fewer "
                              "furnace_dips faults (or name the lines with 'devices') or add lines to the scenario")
    fewest = min((planned.used[d] for d in every), default=0)
    return [d for d in every if planned.used[d] == fewest]


def _reason(spec: FaultSpec) -> str:
    return spec.reason or "invalid_json"


def _window(spec: FaultSpec, ctx: PlanContext, rng: random.Random) -> tuple[float, float]:
    duration = spec.duration if spec.duration is not None else DEFAULT_DURATION_S[spec.kind]
    span = max(ctx.end - ctx.start, 0.0) if math.isfinite(ctx.end) else 86_400.0
    if spec.after is not None:
        start = ctx.start + spec.after
    elif spec.at is not None:
        start = ctx.fleet.local.next_time_of_day(ctx.start, spec.at)
    elif spec.kind == "charger_failure":  # the midday charge between the two shifts
        start = ctx.fleet.local.next_time_of_day(ctx.start, 11 * 3600.0)
    else:
        earliest = ctx.start + 0.1 * span
        latest = max(earliest, ctx.start + span - duration - 0.05 * span)
        start = rng.uniform(earliest, latest)
    if spec.kind == "emission_exceedance":
        # start on a half-hour boundary so at least one whole averaging period lies inside the window
        start = math.ceil(start / HALF_HOUR_S) * HALF_HOUR_S
    return start, start + duration


def _plan_one(spec: FaultSpec, index: int, device_id: str, ctx: PlanContext, rng: random.Random,
              planned: _Planned) -> list[ActiveFault]:
    fleet = ctx.fleet
    kind = fleet.kind_of(device_id) or "bin"
    if spec.kind in CEMS_EVENTS:
        start, end = _event_window(spec, device_id, ctx, rng, planned)
    else:
        start, end = _window(spec, ctx, rng)
    planned.windows.setdefault(device_id, []).append((start, end))
    details: dict[str, Any] = {"spec": index}

    def record(effect: dict[str, Any]) -> TruthRecord:
        return ctx.truth.add(TruthRecord(device_id, kind, spec.kind, start, end, effect, details=details))

    planners: dict[str, Callable[[], list[ActiveFault]]] = {
        "spike": lambda: _plan_spike(spec, kind, details, record),
        "stuck_sensor": lambda: _plan_stuck(spec, kind, details, record),
        "silence": lambda: [Silence(record(_silence_effect(kind, end - start)), _offline_alert(kind))],
        "clock_skew": lambda: _plan_skew(spec, ctx.realtime, details, record),
        "duplicate": lambda: [Duplicate(record({"rows": "deduplicated"}))],
        "out_of_order": lambda: _plan_out_of_order(spec, details, record),
        "malformed": lambda: _plan_malformed(spec, kind, fleet.protocol_of(device_id), details, record),
        "burst": lambda: _plan_burst(spec, device_id, start, end, fleet, details, record),
        "emission_exceedance": lambda: _plan_exceedance(spec, device_id, start, end, fleet, details, record),
        "charger_failure": lambda: _plan_charger(device_id, start, end, fleet, record),
        "bin_fire": lambda: _plan_fire(device_id, start, end, fleet),
        "furnace_dips": lambda: _plan_dips(spec, fleet.cems_line(device_id), start, end, ctx, rng, details, planned),
        "dau_outage_backfill": lambda: _plan_backfill(fleet.cems_line(device_id), start, end, ctx, details, record),
        "o2_calibration": lambda: _plan_o2_calibration(fleet.cems_line(device_id), start, end, details, record),
        "over_range": lambda: _plan_over_range(spec, fleet.cems_line(device_id), start, end, ctx, details, record),
        **{kind: (lambda: _plan_truck(spec, device_id, ctx, details, planned))
           for kind in (*SHIFT_FAULTS, TELEMATICS_OUTAGE)},
    }
    return planners[spec.kind]()


Recorder = Callable[[dict[str, Any]], TruthRecord]

def _offline_alert(kind: str) -> str | None:
    """The offline rule of a device kind (alerts/rules/offline.yaml); cameras only send events: none."""
    return None if kind == "camera" else "cems_offline" if kind == "cems" else "device_offline"


def _silence_effect(kind: str, duration_s: float) -> dict[str, Any]:
    """Planned: offline alerts need a silence longer than the inactivity timeout (the run then measures the gap
    the silence really left, :class:`Silence`), and cameras (event-only) have none: their silence says nothing."""
    effect: dict[str, Any] = {"rows": "missing"}
    alert = _offline_alert(kind)
    if alert is not None and duration_s > OFFLINE_TIMEOUT_S:
        effect["alert"] = alert
    return effect


def _plan_spike(spec: FaultSpec, kind: str, details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    field = spec.field or SPIKE_FIELD[kind]
    value = spec.level if spec.level is not None else SPIKE_VALUE.get(field, 1000.0)
    details.update(field=field, value=value)
    effect = {"rows": "stored", "no_alert": "single_reading_spike"}
    return [Spike(record(effect), field, value, spec.count or 1)]


def _plan_stuck(spec: FaultSpec, kind: str, details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    field = spec.field or SENSOR_FIELD[kind]
    details["field"] = field
    return [StuckSensor(record({"rows": "stored"}), field)]


def _plan_skew(spec: FaultSpec, realtime: bool, details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    offset = spec.offset if spec.offset is not None else 600.0
    details["offset_s"] = offset
    if offset > MAX_FUTURE_SKEW_S and realtime:
        effect = {"dead_letter": "ts_in_future"}
    elif offset > MAX_FUTURE_SKEW_S:
        # a compressed or replayed run lies in the past: the skewed readings are ahead of the fleet's
        # clock but not of the collector's, so they are stored
        effect = {"rows": "stored"}
        details["future_only_in_real_time"] = True
    else:
        effect = {"rows": "stored_late" if offset < 0 else "stored"}
    return [ClockSkew(record(effect), offset)]


def _plan_out_of_order(spec: FaultSpec, details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    group = spec.group or 5
    details["group"] = group
    return [OutOfOrder(record({"rows": "stored_out_of_order"}), group)]


def _plan_malformed(spec: FaultSpec, kind: str, protocol: str, details: dict[str, Any],
                    record: Recorder) -> list[ActiveFault]:
    reason = _reason(spec)
    field = spec.field or MALFORMED_FIELD[kind]
    details.update(reason=reason) if reason == "invalid_json" else details.update(reason=reason, field=field)
    if protocol == "hj212":  # HJ 212 frames fail in the codec, except an impossible value
        dead = {"invalid_json": "hj212_bad_crc", "wrong_type": "hj212_bad_value"}.get(reason, reason)
    else:
        dead = reason
    if reason == "invalid_json":
        return [InvalidPayload(record({"dead_letter": dead}))]
    return [MalformedReading(record({"dead_letter": dead}), reason, field)]


def _plan_burst(spec: FaultSpec, device_id: str, start: float, end: float, fleet: Fleet,
                details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    factor = spec.factor or 20.0
    details["factor"] = factor
    fleet.model_of(device_id).add_burst(start, end, factor)
    return [ActiveFault(record({"rows": "stored"}))]


def _plan_exceedance(spec: FaultSpec, device_id: str, start: float, end: float, fleet: Fleet,
                     details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    pollutant = spec.pollutant or "nox"
    level = spec.level if spec.level is not None else EXCEEDANCE_LEVEL[pollutant]
    details.update(pollutant=pollutant, level_zs_mg_m3=level)
    fleet.cems_line(device_id).add_exceedance(pollutant, start, end, level)
    return [ActiveFault(record({"alert": f"cems_{pollutant}_half_hourly"}))]


def _plan_charger(device_id: str, start: float, end: float, fleet: Fleet, record: Recorder) -> list[ActiveFault]:
    fleet.sweeper(device_id).add_charger_fault(start, end)
    # whether SOC then falls below the alarm threshold depends on the day: the model records a
    # separate `low_soc` record (alert sweeper_low_soc) when it does
    return [ActiveFault(record({"rows": "stored", "charging_state": "fault"}))]


def _plan_fire(device_id: str, start: float, end: float, fleet: Fleet) -> list[ActiveFault]:
    # the point picks the bin and records the fire itself (source "injected"), with the bin's id
    fleet.point_of(device_id).add_fire(start, end - start)
    return []


def _plan_truck(spec: FaultSpec, device_id: str, ctx: PlanContext, details: dict[str, Any],
                planned: _Planned) -> list[ActiveFault]:
    """A truck fault changes the first shift leaving at or after the fault's time (``at``/``after``, else the run's
    start); the truck records what it then does as ground truth (models/truck.py), so a fault whose shift lies
    beyond the run leaves none. A fault that conflicts with one planned on the same truck (TRUCK_CONFLICTS) takes
    the shift a day later."""
    if spec.after is not None:
        after = ctx.start + spec.after
    elif spec.at is not None:
        after = ctx.fleet.local.next_time_of_day(ctx.start, spec.at)
    else:
        after = ctx.start
    taken = planned.truck_faults.setdefault(device_id, set())
    if TRUCK_CONFLICTS.get(spec.kind) in taken:
        after += 86_400.0
        details["next_shift_because"] = TRUCK_CONFLICTS[spec.kind]
    taken.add(spec.kind)
    if spec.kind == "late_round":
        details["delay_s"] = spec.duration if spec.duration is not None else DEFAULT_DURATION_S["late_round"]
    if spec.kind == TELEMATICS_OUTAGE:  # the first haul to the tip at or after `after` (models/truck.py)
        details["duration_s"] = spec.duration if spec.duration is not None else DEFAULT_DURATION_S[TELEMATICS_OUTAGE]
        details["timeout_s"] = OFFLINE_TIMEOUT_S
    ctx.fleet.truck(device_id).add_fault(spec.kind, after, details)
    return []


# --- the CEMS regulatory cases (issue 13) ---------------------------------------------------------


def _event_window(spec: FaultSpec, device_id: str, ctx: PlanContext, rng: random.Random,
                  planned: _Planned) -> tuple[float, float]:
    """A window for a CEMS regulatory fault: from ``at``/``after`` as given, else drawn (seeded) until it keeps
    ``EVENT_MARGIN_S`` from the line's own events and the faults planned on it before (the first draw when none
    does); shaped per kind (:func:`_shape`)."""
    line = ctx.fleet.cems_line(device_id)
    horizon = ctx.end if math.isfinite(ctx.end) else ctx.start + 2 * 86_400.0
    busy = [(w.start, w.end) for w in line.busy_windows(ctx.start, horizon)] + planned.windows.get(device_id, [])
    fixed = spec.after is not None or spec.at is not None
    first: tuple[float, float] | None = None
    for _ in range(1 if fixed else 64):
        start, end = _shape(spec, *_window(spec, ctx, rng), ctx)
        first = first or (start, end)
        if not any(a - EVENT_MARGIN_S < end and start < b + EVENT_MARGIN_S for a, b in busy):
            return start, end
    assert first is not None
    return first


def _shape(spec: FaultSpec, start: float, end: float, ctx: PlanContext) -> tuple[float, float]:
    """over_range starts five minutes into a half-hour (a 20-minute event then lies inside one half-hourly
    average); a back-fill covers whole minutes and ends ``BACKFILL_TAIL_S`` before the run does (so the span is
    re-sent within it); furnace dips lie in one local day. Every window is kept inside the run."""
    duration, step, tail = end - start, 1.0, 0.0
    if spec.kind == "over_range":
        start, step = math.ceil(start / HALF_HOUR_S) * HALF_HOUR_S + 300.0, HALF_HOUR_S
    elif spec.kind == "dau_outage_backfill":
        start, duration, step, tail = math.ceil(start / 60.0) * 60.0, max(60.0, round(duration / 60.0) * 60.0), \
            60.0, BACKFILL_TAIL_S
    if math.isfinite(ctx.end) and start + duration + tail > ctx.end:
        start -= math.ceil((start + duration + tail - ctx.end) / step) * step
        if start < ctx.start:
            start += math.ceil((ctx.start - start) / step) * step
        duration = max(min(duration, ctx.end - tail - start), 0.0)
    if spec.kind == "furnace_dips":
        day_start, day_end = _local_day(ctx.fleet.local, start)
        if start + duration > day_end:
            start = max(day_start, day_end - duration, ctx.start)
            duration = day_end - start
    return start, start + duration


def _local_day(local: LocalTime, t: float) -> tuple[float, float]:
    """The natural (local) day holding ``t``: its midnight and the next (wall-clock arithmetic, so a DST day
    is 23 or 25 hours long)."""
    midnight = local.datetime(t).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp(), (midnight + timedelta(days=1)).timestamp()


def _plan_dips(spec: FaultSpec, line: CemsLine, start: float, end: float, ctx: PlanContext, rng: random.Random,
               details: dict[str, Any], planned: _Planned) -> list[ActiveFault]:
    """Furnace dips below 850 °C, each in its own 5-minute bucket (models/cems.py ``BUCKET_S``), spread over
    [start, end) in one local day. Order No. 10 (unverified figure, ``mee_rules()``): more than 5 five-minute
    averages below 850 °C in a natural day is a violation."""
    if line.interval_s > DIPS_MAX_INTERVAL_S:
        raise ConfigError(f"faults: furnace_dips on {line.device_id}: the line reports every {line.interval_s:g} s; "
                          f"a 3-4-minute dip pulls a 5-minute average below 850 °C only with a reading at least "
                          f"every {DIPS_MAX_INTERVAL_S:g} s — set the plant's interval to 60s or less")
    planned.dips.add(line.device_id)
    wanted = spec.count or 6
    # a dip needs a burning furnace: none while the line is out (the window is placed clear of outages unless
    # `at`/`after` put it there)
    dips = [d for d in _dip_plan(start, end, wanted, rng)
            if not any(w.start < d.event.end and d.event.start < w.end for w in line.outages)]
    allowed = mee_rules().furnace_max_below_per_day
    # more than allowed: the Order No. 10 violation; within the allowance the day is compliant, but each dip is
    # still a 5-minute average below 850 °C, which the warning cems_furnace_below_850 reports
    effect: dict[str, Any] = (
        {"alert": "cems_furnace_850_daily"} if len(dips) > allowed
        else {"alert": "cems_furnace_below_850", "no_alert": "cems_furnace_850_daily"})
    day_start, day_end = _local_day(ctx.fleet.local, start)
    details.update(dips=len(dips), local_day=ctx.fleet.local.datetime(start).date().isoformat(),
                   dip_buckets=[rfc3339(d.bucket) for d in dips], below_850_s=[round(d.end - d.start) for d in dips],
                   dip_c=list(DIP_C), shoulder_c=list(SHOULDER_C), allowed_per_day=allowed)
    if len(dips) != wanted:
        details["dips_requested"] = wanted  # the window (or the run) holds fewer
    # the verdict is the natural day's: the record spans the day (as much of it as the run holds)
    record = ctx.truth.add(TruthRecord(line.device_id, line.kind, spec.kind, max(day_start, ctx.start),
                                       min(day_end, ctx.end), effect, details=details))
    line.add_furnace_dips(dips, record)  # the model counts the readings below 850 °C into the record
    return []


def _dip_plan(start: float, end: float, count: int, rng: random.Random) -> list[Dip]:
    """``count`` dips, one per equal slot of [start, end), each in a clock-aligned 5-minute bucket whose whole
    event (ramp, shoulder, bucket, shoulder, ramp) lies in its slot; fewer when the window is too short."""
    need = 2 * (SHOULDER_S + RAMP_S) + 2 * BUCKET_S  # an event, and room to align its bucket
    count = min(count, int(max(end - start, 0.0) // need))
    slot = (end - start) / count if count else 0.0
    dips = []
    for i in range(count):
        lo = start + i * slot + SHOULDER_S + RAMP_S
        hi = start + (i + 1) * slot - SHOULDER_S - RAMP_S - BUCKET_S
        first = math.ceil(lo / BUCKET_S) * BUCKET_S
        bucket = first + BUCKET_S * rng.randint(0, int((hi - first) // BUCKET_S))
        below = rng.uniform(*DIP_S)
        lead = rng.uniform(DIP_EDGE_S, BUCKET_S - DIP_EDGE_S - below)
        dips.append(Dip(bucket, bucket + lead, bucket + lead + below))
    return dips


def _plan_backfill(line: CemsLine, start: float, end: float, ctx: PlanContext, details: dict[str, Any],
                   record: Recorder) -> list[ActiveFault]:
    """The data unit sends nothing in [start, end), then re-sends the span as minute data (one reading or CN 2051
    frame per minute) just before its first real-time reading after it."""
    effect: dict[str, Any] = {"rows": "stored_late", "verdict": "valid_after_backfill"}
    if ctx.realtime:
        effect["alert"] = "cems_offline"  # live, the unit is silent for hours before it re-sends
    else:
        # replayed, the minute data land before any later reading: the stored data have no gap
        details["offline_only_in_real_time"] = True
    details.update(outage_h=round((end - start) / 3600.0, 3), minutes=round((end - start) / 60.0),
                   resent_as="HJ 212 CN=2051 minute data" if line.protocol == "hj212"
                   else "JSON readings with data_kind minute")
    line.add_backfill(Window(start, end), record(effect))  # the model counts the minute messages
    return []


def _plan_o2_calibration(line: CemsLine, start: float, end: float, details: dict[str, Any],
                         record: Recorder) -> list[ActiveFault]:
    details.update(o2_flag="C", zero_gas_o2_pct=O2_ZERO_GAS, span_gas_o2_pct=O2_SPAN_GAS,
                   discarded_minutes=round((end - start) / 60.0, 1),
                   discard="every pollutant's normalised value (-ZsRtd) while O2 is flagged C: the data unit "
                           "normalised with calibration gas")
    line.add_o2_calibration(Window(start, end), record({"no_alert": "o2_calibration"}))
    return []


def _plan_over_range(spec: FaultSpec, line: CemsLine, start: float, end: float, ctx: PlanContext,
                     details: dict[str, Any], record: Recorder) -> list[ActiveFault]:
    pollutant = spec.pollutant or "so2"
    range_limit = spec.range_limit()
    level = spec.level if spec.level is not None else OVER_RANGE_FACTOR * range_limit
    details.update(pollutant=pollutant, flag="T", analyser_range_mg_m3=range_limit, true_level_mg_m3=level,
                   reported_mg_m3=range_limit)
    line.add_over_range(pollutant, Window(start, end), level, range_limit,
                        record({"alert": f"cems_{pollutant}_over_range"}))
    _over_range_exceedance(line, pollutant, start, end, range_limit, ctx)
    return []


def _over_range_exceedance(line: CemsLine, pollutant: str, start: float, end: float, range_limit: float,
                           ctx: PlanContext) -> None:
    """The half-hours an over-range event lifts above the EU half-hourly limit (column A) even counted at the
    range limit — at least ``range_limit × MIN_ZS_FACTOR`` normalised for the minutes inside, 0 for the rest:
    a record of their own (source model), expecting ``cems_<pollutant>_half_hourly``."""
    limit = default_limits().get(("eu.half_hour_a", pollutant))
    if limit is None:
        return
    at_least = range_limit * MIN_ZS_FACTOR
    lifted = []
    half_hour = math.floor(start / HALF_HOUR_S) * HALF_HOUR_S
    while half_hour < end:
        inside = min(end, half_hour + HALF_HOUR_S) - max(start, half_hour)
        if inside / HALF_HOUR_S * at_least > limit:
            lifted.append(half_hour)
        half_hour += HALF_HOUR_S
    if lifted:
        ctx.truth.add(TruthRecord(
            line.device_id, line.kind, "over_range_exceedance", max(lifted[0], ctx.start),
            min(lifted[-1] + HALF_HOUR_S, ctx.end), {"alert": f"cems_{pollutant}_half_hourly"}, source="model",
            details={"pollutant": pollutant, "caused_by": "over_range", "half_hour_a_mg_m3": limit,
                     "zs_at_least_mg_m3": round(at_least, 1)}))
