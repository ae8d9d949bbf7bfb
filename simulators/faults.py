"""Fault injection with ground truth.

A fault is planned before the run from a :class:`FaultSpec` (a scenario's ``faults:`` list or the
command line's ``--faults spike,silence``): which devices, from when to when. Planning writes one
ground-truth record per device and fault (see :mod:`simulators.truth`) and wires the fault in at
one of three places:

- the **model** (what the device really does): ``burst`` (reports far faster), ``emission_exceedance``
  (a CEMS pollutant held above its half-hourly limit), ``charger_failure`` (the depot charger
  delivers nothing), ``bin_fire``;
- the **reading** (what the device says): ``spike``, ``stuck_sensor``, ``silence`` (nothing is
  sent), ``clock_skew`` (the device's clock is off), ``malformed`` with reason ``wrong_type`` or
  ``out_of_range``;
- the **message** (what the network does with it): ``duplicate`` (sent twice, as a redelivery),
  ``out_of_order`` (held back and released in reverse), ``malformed`` with reason ``invalid_json``
  (a truncated payload; for HJ 212 units a broken CRC).

Message faults are not planned on devices behind a gateway — their readings travel inside the
gateway's batches; reading faults apply to the items of a batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sanitel.errors import ConfigError
from sanitel.simulators.clock import Duration, SignedDuration, TimeOfDay
from sanitel.simulators.models.base import stable_seed
from sanitel.simulators.truth import GroundTruth, TruthRecord

if TYPE_CHECKING:
    from sanitel.simulators.fleet import Fleet

FaultKind = Literal["spike", "stuck_sensor", "silence", "clock_skew", "duplicate", "out_of_order", "malformed",
                    "burst", "emission_exceedance", "charger_failure", "bin_fire"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DeviceKind = Literal["sweeper", "transfer_station", "bin", "camera", "cems"]
MalformedReason = Literal["invalid_json", "wrong_type", "out_of_range"]
Pollutant = Literal["nox", "co", "so2", "dust", "hcl"]

# The collector rejects readings further ahead than this (settings.max_future_skew_s default).
MAX_FUTURE_SKEW_S = 300.0
# A device is offline after this long without a reading (devices.inactivity_timeout_s default).
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
}
MESSAGE_FAULTS = frozenset({"duplicate", "out_of_order"})
DEFAULT_DURATION_S: dict[str, float] = {
    "spike": 0.0, "stuck_sensor": 1800.0, "silence": 1200.0, "clock_skew": 600.0, "duplicate": 600.0,
    "out_of_order": 600.0, "malformed": 600.0, "burst": 120.0, "emission_exceedance": 3600.0,
    "charger_failure": 3 * 3600.0, "bin_fire": 1800.0,
}
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
    level: float | None = Field(None, ge=0, description="spike value, or exceedance level (mg/m³, normalised)")
    count: int | None = Field(None, ge=1, le=1000, description="spike: how many readings")
    group: int | None = Field(None, ge=2, le=1000, description="out_of_order: messages reversed per group")

    @model_validator(mode="after")
    def _parameters_fit_kind(self) -> FaultSpec:
        applies = {"offset": ("clock_skew",), "reason": ("malformed",), "factor": ("burst",),
                   "pollutant": ("emission_exceedance",), "count": ("spike",), "group": ("out_of_order",),
                   "field": ("spike", "stuck_sensor", "malformed"), "level": ("spike", "emission_exceedance")}
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
        return self


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
}


def parse_fault_names(text: str, available: dict[str, int] | None = None) -> list[FaultSpec]:
    """``--faults spike,silence`` (or ``all``) → specs with defaults (see PRESETS): ``clock_skew``
    gives two faults (+10 min: rejected as future; −2 h: late but stored), ``malformed`` one per
    reason. With ``all``, faults on device kinds the fleet lacks (``available`` counts) are left out."""
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
            if everything and available is not None and not available.get(preset["device_kind"]):
                continue
            specs.append(FaultSpec(kind=name, **preset))
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
    stage = "reading"

    def on_reading(self, reading: dict[str, Any], t: float) -> dict[str, Any] | None:
        self.record.messages += 1
        return None


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
    """Applies the planned faults to a run's readings and messages."""

    def __init__(self, faults: Iterable[ActiveFault] = ()) -> None:
        self.faults = list(faults)
        self.by_device: dict[str, list[ActiveFault]] = {}
        for fault in self.faults:
            self.by_device.setdefault(fault.record.device_id, []).append(fault)

    def reading(self, device_id: str, t: float, reading: dict[str, Any]) -> dict[str, Any] | None:
        for fault in self.by_device.get(device_id, ()):
            if fault.stage != "message" and fault.active(t):
                changed = fault.on_reading(reading, t)
                if changed is None:
                    return None
                reading = changed
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


def plan_faults(specs: Sequence[FaultSpec], ctx: PlanContext) -> FaultInjector:
    """Choose devices and windows for every spec (deterministic for the seed), record ground truth
    and wire model faults into the models. Raises ConfigError for a spec the fleet cannot satisfy."""
    used: set[str] = set()
    injectors: list[ActiveFault] = []
    for index, spec in enumerate(specs):
        rng = random.Random(stable_seed(ctx.seed, "fault", str(index), spec.kind))
        kind = spec.device_kind or TARGET_KINDS[spec.kind][0]
        for device_id in _targets(spec, kind, ctx.fleet, rng, used):
            used.add(device_id)
            injectors += _plan_one(spec, index, device_id, ctx, rng)
    return FaultInjector(injectors)


def _targets(spec: FaultSpec, kind: str, fleet: Fleet, rng: random.Random, used: set[str]) -> list[str]:
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
    # prefer devices no other fault touches (cleaner ground truth); share them when the fleet is small
    candidates = [d for d in every if d not in used] or every
    if not candidates:
        raise ConfigError(f"faults: {spec.kind}: the scenario has no {kind} devices to fault; add "
                          f"{kind} devices to the scenario or set device_kind to one of "
                          f"{', '.join(TARGET_KINDS[spec.kind])}")
    return rng.sample(candidates, min(spec.devices, len(candidates)))


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


def _plan_one(spec: FaultSpec, index: int, device_id: str, ctx: PlanContext,
              rng: random.Random) -> list[ActiveFault]:
    fleet = ctx.fleet
    kind = fleet.kind_of(device_id) or "bin"
    start, end = _window(spec, ctx, rng)
    details: dict[str, Any] = {"spec": index}

    def record(effect: dict[str, Any]) -> TruthRecord:
        return ctx.truth.add(TruthRecord(device_id, kind, spec.kind, start, end, effect, details=details))

    planners: dict[str, Callable[[], list[ActiveFault]]] = {
        "spike": lambda: _plan_spike(spec, kind, details, record),
        "stuck_sensor": lambda: _plan_stuck(spec, kind, details, record),
        "silence": lambda: [Silence(record(_silence_effect(kind, end - start)))],
        "clock_skew": lambda: _plan_skew(spec, ctx.realtime, details, record),
        "duplicate": lambda: [Duplicate(record({"rows": "deduplicated"}))],
        "out_of_order": lambda: _plan_out_of_order(spec, details, record),
        "malformed": lambda: _plan_malformed(spec, kind, fleet.protocol_of(device_id), details, record),
        "burst": lambda: _plan_burst(spec, device_id, start, end, fleet, details, record),
        "emission_exceedance": lambda: _plan_exceedance(spec, device_id, start, end, fleet, details, record),
        "charger_failure": lambda: _plan_charger(device_id, start, end, fleet, record),
        "bin_fire": lambda: _plan_fire(device_id, start, end, fleet),
    }
    return planners[spec.kind]()


Recorder = Callable[[dict[str, Any]], TruthRecord]


def _silence_effect(kind: str, duration_s: float) -> dict[str, Any]:
    """Offline alerts need a silence longer than the inactivity timeout, and cameras (event-only) have
    none: their silence says nothing."""
    effect: dict[str, Any] = {"rows": "missing"}
    if kind != "camera" and duration_s > OFFLINE_TIMEOUT_S:
        effect["alert"] = "cems_offline" if kind == "cems" else "device_offline"
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
