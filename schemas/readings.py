"""Typed readings, one schema per reading kind, with units in the names and physical ranges enforced.

A message on ``sanitation/{city}/{kind}/{device_id}/{stream}`` carries one reading (a JSON object) or
several (a JSON array). Every reading has ``ts`` — the device's time: exactly RFC 3339 with an offset, or
epoch milliseconds (``schemas.timestamps``) — and ``seq``, the device's sequence number where it has one.
Unknown fields are kept (stored in ``extra``), never dropped. Ranges are physical limits, not alert thresholds.

What the collector adds to these schemas (``ingest/decode.py``, docs/ingest.md): integer fields take integral
numbers (``2.0``, JSON Schema 2020-12); member names must be unique within an object; U+0000 in free text follows
``NUL_RULE``; identifiers never contain it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from sanitel.schemas.timestamps import RFC3339_PATTERN
from sanitel.schemas.topics import DeviceKind

# PostgreSQL text and jsonb cannot hold U+0000; the collector's one rule for it (ingest/decode.py applies it).
NUL_RULE = ("U+0000 (NUL): trailing NULs are padding and are removed; any other NUL is stored as U+FFFD and the "
            "value as received is kept, as JSON text, in extra._raw_json (padding alone keeps no copy). Length "
            "limits apply after that.")


def _r(lo: float, hi: float, unit: str, doc: str = "") -> Meta:
    """The physical range of a float field, used as ``Annotated[float, _r(...)]``."""
    return Meta(ge=lo, le=hi, description=f"{doc} [{unit}]".strip())


def _text(max_length: int, doc: str = "", min_length: int | None = None) -> Meta:
    """Free text: any characters; U+0000 follows ``NUL_RULE``."""
    return Meta(min_length=min_length, max_length=max_length, description=f"{doc}{'. ' if doc else ''}{NUL_RULE}")


Ts = Annotated[
    # The pattern and format are published for gateway developers; the collector checks ts with
    # schemas.timestamps (same grammar, plus valid dates, leap seconds and range), answering bad_timestamp.
    Annotated[str, Meta(extra_json_schema={"pattern": RFC3339_PATTERN, "format": "date-time"},
                        description="RFC 3339 date-time (RFC 3339 §5.6): T and Z in either case, the offset "
                                    "required, any number of fractional digits (kept to the microsecond); no space "
                                    "for T, no ISO 8601 basic form")]
    | Annotated[int, Meta(description="epoch milliseconds (UTC); an integral number such as 1.7e12 counts")],
    Meta(description="device time of the reading: RFC 3339 with offset, or epoch milliseconds"),
]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1, description="per-device sequence number (0 when absent)")]
Ident = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                            description="identifier: ASCII letters, digits and _ . : -, starting with a letter or "
                                        "digit; never repaired (a NUL or any other character makes it out of "
                                        "range)")]
Flag = Literal["N", "F", "M", "S", "D", "C", "T", "B"]

WorkMode = Literal["idle", "transport", "sweep", "sweep_left", "sweep_right", "wander_hose", "unload", "charging"]
ChargingState = Literal["not_charging", "charging", "charged", "fault"]
WasteCategory = Literal["recyclable", "hazardous", "kitchen", "other"]
Detection = Literal["mis_sorted", "bag_outside", "overflow", "scattered_waste", "littering", "smoke_fire"]
CemsDataKind = Literal["rtd", "minute", "hour", "day"]

# Vehicle fields shared by sweepers and collection trucks: one definition, so the two kinds' ranges cannot drift.
# Battery fields are GB/T 32960.3-2016's real-time vehicle and battery data (the
# clause, §7.2.3, not verified here); absent on diesel vehicles.
Lat = Annotated[float, _r(-90, 90, "degrees", "WGS-84 latitude")]
Lon = Annotated[float, _r(-180, 180, "degrees", "WGS-84 longitude")]
SpeedKmh = Annotated[float, _r(0, 200, "km/h")]
HeadingDeg = Annotated[float, _r(0, 360, "degrees")]
OdometerKm = Annotated[float, _r(0, 10_000_000, "km", "may wrap or reset")]
SocPct = Annotated[float, _r(0, 100, "%", "battery state of charge")]
PackVoltageV = Annotated[float, _r(0, 1500, "V")]
PackCurrentA = Annotated[float, _r(-1000, 1000, "A", "negative while charging")]
CellVoltageV = Annotated[float, _r(0, 15, "V")]
BatteryTempMaxC = Annotated[float, _r(-40, 210, "°C", "highest probe")]
BatteryTempMinC = Annotated[float, _r(-40, 210, "°C", "lowest probe")]
InsulationKohm = Annotated[float, _r(0, 60_000, "kΩ")]
AlarmLevel = Annotated[int, Meta(ge=0, le=3, description="GB/T 32960 alarm level 0-3")]
AlarmFlags = Annotated[int, Meta(ge=0, le=2**32 - 1, description="GB/T 32960 32-bit general alarm flag")]


class Reading(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields every reading has. ``device_id`` may be omitted on a device topic (the topic names it)."""

    table: ClassVar[str]
    kind: ClassVar[str]
    stream: ClassVar[str]

    ts: Ts
    seq: Seq = 0
    device_id: Ident | None = None

    def problem(self) -> tuple[str, str] | None:
        """A rule across fields that JSON Schema cannot state: (reason code, message) when this reading breaks it.
        The collector dead-letters such a reading with that reason (ingest/decode.py)."""
        return None


class SweeperTelemetry(Reading):
    """Electric street sweeper: GB/T 32960.3 vehicle data plus EN 15430-1 sweeper records."""

    table: ClassVar[str] = "sweeper_telemetry"
    kind: ClassVar[str] = "sweeper"
    stream: ClassVar[str] = "telemetry"

    lat: Lat | None = None
    lon: Lon | None = None
    speed_kmh: SpeedKmh | None = None
    heading_deg: HeadingDeg | None = None
    odometer_km: OdometerKm | None = None
    soc_pct: SocPct | None = None
    pack_voltage_v: PackVoltageV | None = None
    pack_current_a: PackCurrentA | None = None
    cell_voltage_max_v: CellVoltageV | None = None
    cell_voltage_min_v: CellVoltageV | None = None
    battery_temp_max_c: BatteryTempMaxC | None = None
    battery_temp_min_c: BatteryTempMinC | None = None
    insulation_kohm: InsulationKohm | None = None
    motor_temp_c: Annotated[float, _r(-40, 210, "°C")] | None = None
    motor_rpm: Annotated[float, _r(-20_000, 20_000, "rpm")] | None = None
    charging_state: ChargingState | None = None
    work_mode: WorkMode | None = None
    fan_speed_rpm: Annotated[float, _r(0, 20_000, "rpm", "suction fan")] | None = None
    brush_on: bool | None = None
    water_tank_pct: Annotated[float, _r(0, 100, "%")] | None = None
    hopper_fill_pct: Annotated[float, _r(0, 100, "%")] | None = None
    swept_distance_km: Annotated[float, _r(0, 10_000_000, "km", "counter; may wrap or reset")] | None = None
    work_hours_h: Annotated[float, _r(0, 1_000_000, "h", "counter; may wrap or reset")] | None = None
    alarm_level: AlarmLevel | None = None
    alarm_flags: AlarmFlags | None = None


class StationTelemetry(Reading):
    """Garbage transfer station: compactor, hopper, weighbridge, boundary odour and noise, leachate."""

    table: ClassVar[str] = "station_telemetry"
    kind: ClassVar[str] = "transfer_station"
    stream: ClassVar[str] = "telemetry"

    compactor_running: bool | None = None
    compactor_pressure_mpa: Annotated[float, _r(0, 100, "MPa")] | None = None
    hopper_level_pct: Annotated[float, _r(0, 100, "%")] | None = None
    h2s_mg_m3: Annotated[float, _r(0, 1000, "mg/m³", "boundary H2S")] | None = None
    nh3_mg_m3: Annotated[float, _r(0, 1000, "mg/m³", "boundary NH3")] | None = None
    odour_concentration: Annotated[float, _r(0, 1_000_000, "dimensionless", "odour concentration")] | None = None
    noise_dba: Annotated[float, _r(0, 194, "dB(A)", "boundary noise")] | None = None
    leachate_level_pct: Annotated[float, _r(0, 100, "%")] | None = None
    deodoriser_on: bool | None = None
    truck_id: Annotated[str, _text(32, "truck id or plate")] | None = None
    weighbridge_in_t: Annotated[float, _r(0, 100, "t", "gross weight in")] | None = None
    weighbridge_out_t: Annotated[float, _r(0, 100, "t", "tare weight out")] | None = None


class BinDeposit(Reading):
    """A household's deposit at an RFID bin / smart scale (GB/T 19095-2019 categories)."""

    table: ClassVar[str] = "bin_deposits"
    kind: ClassVar[str] = "bin"
    stream: ClassVar[str] = "event"

    household_id: Annotated[str, _text(64, "RFID card id", min_length=1)]
    category: WasteCategory
    weight_kg: Annotated[float, _r(0, 500, "kg", "net weight")]
    point_id: Ident | None = None


class BinStatus(Reading):
    """Bin status. Fill sensors are ultrasonic and noisy: readings slightly outside 0-100 % are accepted
    and clamped on storage; only physically impossible values are rejected."""

    table: ClassVar[str] = "bin_status"
    kind: ClassVar[str] = "bin"
    stream: ClassVar[str] = "status"

    point_id: Ident | None = None
    fill_level_pct: Annotated[float, _r(-50, 200, "%", "raw ultrasonic fill level")] | None = None
    lid_open: bool | None = None
    temperature_c: Annotated[float, _r(-40, 1000, "°C", "inside the bin (fire)")] | None = None
    fire_alarm: bool | None = None
    battery_pct: Annotated[float, _r(0, 100, "%")] | None = None


class CameraDetection(Reading):
    """An AI camera's detection at a sorting point."""

    table: ClassVar[str] = "camera_detections"
    kind: ClassVar[str] = "camera"
    stream: ClassVar[str] = "event"

    detection: Detection
    confidence: Annotated[float, _r(0, 1, "fraction")]
    point_id: Ident | None = None
    object_count: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    image_ref: Annotated[str, _text(512, "reference to the stored image")] | None = None


_C = Annotated[float, _r(0, 100_000, "mg/m³")]
_Hg = Annotated[float, _r(0, 100, "mg/m³")]


class CemsReading(Reading):
    """Incinerator stack CEMS reading (one line). ``*_zs_mg_m3`` are values the analyser already normalised
    to 11 % O2 dry; both measured and normalised are kept. ``*_flag`` is the HJ 212 data flag."""

    table: ClassVar[str] = "cems_readings"
    kind: ClassVar[str] = "cems"
    stream: ClassVar[str] = "telemetry"

    data_kind: CemsDataKind = "rtd"
    source: Literal["json", "hj212"] = "json"  # hj212: decoded from an HJ 212-2017 frame
    plant_id: Ident | None = None
    line_id: Ident | None = None
    gas_is_dry: bool = True
    dust_mg_m3: _C | None = None
    dust_zs_mg_m3: _C | None = None
    dust_flag: Flag | None = None
    so2_mg_m3: _C | None = None
    so2_zs_mg_m3: _C | None = None
    so2_flag: Flag | None = None
    nox_mg_m3: _C | None = None
    nox_zs_mg_m3: _C | None = None
    nox_flag: Flag | None = None
    co_mg_m3: _C | None = None
    co_zs_mg_m3: _C | None = None
    co_flag: Flag | None = None
    hcl_mg_m3: _C | None = None
    hcl_zs_mg_m3: _C | None = None
    hcl_flag: Flag | None = None
    hf_mg_m3: _C | None = None
    hf_zs_mg_m3: _C | None = None
    hf_flag: Flag | None = None
    toc_mg_m3: _C | None = None
    toc_zs_mg_m3: _C | None = None
    toc_flag: Flag | None = None
    nh3_mg_m3: _C | None = None
    nh3_zs_mg_m3: _C | None = None
    nh3_flag: Flag | None = None
    hg_mg_m3: _Hg | None = None
    hg_zs_mg_m3: _Hg | None = None
    hg_flag: Flag | None = None
    o2_pct: Annotated[float, _r(0, 21, "% vol", "flue-gas oxygen")] | None = None
    o2_flag: Flag | None = None
    h2o_pct: Annotated[float, _r(0, 100, "% vol", "flue-gas moisture")] | None = None
    h2o_flag: Flag | None = None
    flue_temp_c: Annotated[float, _r(-50, 1500, "°C")] | None = None
    flue_pressure_kpa: Annotated[float, _r(-200, 300, "kPa")] | None = None
    flue_velocity_m_s: Annotated[float, _r(0, 200, "m/s")] | None = None
    flue_flow_m3_h: Annotated[float, _r(0, 1e9, "m³/h")] | None = None
    furnace_temp_c: Annotated[float, _r(0, 2000, "°C", "furnace average temperature")] | None = None


# Collection trucks and weighbridges (issue 15). Weights are kilograms. No national standard fixes an on-board scale's
# message; the ranges are physical: a 3-axle collection truck's gross mass is at most 25 t (GB 1589-2016 §4.3, not
# verified here), so 60 t bounds any payload, and a weighbridge platform weighs up to 100 t (GB/T 7723-2017's
# usual ranges, not verified here).
Powertrain = Literal["electric", "diesel", "cng", "hybrid"]
CompactorState = Literal["idle", "compacting", "fault"]
LifterState = Literal["stowed", "lifting", "fault"]
ShiftState = Literal["depot", "to_route", "collecting", "to_tip", "tipping", "returning", "off_shift"]
TruckEventKind = Literal["pickup", "tip"]
WEIGHT_TOLERANCE_KG = 1.0  # a ticket's net may differ from gross − tare by rounding only (the contract's rule)


class TruckTelemetry(Reading):
    """Garbage collection truck: position, GB/T 32960.3 battery data (electric trucks), on-board scale, compactor
    and lifter, and where its shift stands."""

    table: ClassVar[str] = "truck_telemetry"
    kind: ClassVar[str] = "truck"
    stream: ClassVar[str] = "telemetry"

    lat: Lat | None = None
    lon: Lon | None = None
    speed_kmh: SpeedKmh | None = None
    heading_deg: HeadingDeg | None = None
    odometer_km: OdometerKm | None = None
    soc_pct: SocPct | None = None
    pack_voltage_v: PackVoltageV | None = None
    pack_current_a: PackCurrentA | None = None
    cell_voltage_max_v: CellVoltageV | None = None
    cell_voltage_min_v: CellVoltageV | None = None
    battery_temp_max_c: BatteryTempMaxC | None = None
    battery_temp_min_c: BatteryTempMinC | None = None
    insulation_kohm: InsulationKohm | None = None
    alarm_level: AlarmLevel | None = None
    alarm_flags: AlarmFlags | None = None
    powertrain: Powertrain | None = None
    load_kg: Annotated[float, _r(0, 60_000, "kg", "on-board scale: current payload")] | None = None
    rated_payload_kg: Annotated[float, _r(0, 60_000, "kg", "the truck's rated payload")] | None = None
    compactor_state: CompactorState | None = None
    lifter_state: LifterState | None = None
    route_id: Ident | None = None
    shift_state: ShiftState | None = None


class TruckEvent(Reading):
    """A collection truck's pickup (a bin lifted at a sorting point, weighed by the lifter scale) or tip (its load
    unloaded at a transfer station or plant, weighed by the on-board scale). A pickup names its point (point_id)
    or bin (bin_tag), a tip its site (site_id): otherwise the reading is dead-lettered missing_field."""

    table: ClassVar[str] = "truck_events"
    kind: ClassVar[str] = "truck"
    stream: ClassVar[str] = "event"

    event: TruckEventKind
    weight_kg: Annotated[float, _r(0, 20_000, "kg", "pickup: weight lifted; tip: weight unloaded")]
    point_id: Ident | None = None
    bin_tag: Annotated[str, _text(64, "the bin's RFID tag")] | None = None
    category: WasteCategory | None = None
    site_id: Ident | None = None
    lat: Lat | None = None
    lon: Lon | None = None

    def problem(self) -> tuple[str, str] | None:
        if self.event == "pickup" and self.point_id is None and not self.bin_tag:
            return "missing_field", "a pickup needs point_id or bin_tag (which point or bin was emptied)"
        if self.event == "tip" and self.site_id is None:
            return "missing_field", "a tip needs site_id (the transfer station or plant where the load went)"
        return None


class WeighbridgeTicket(Reading):
    """A weighbridge ticket at a transfer station or plant (its weighbridge is a transfer_station device); ts is
    the ticket time. net_kg must equal gross_kg − tare_kg within 1 kg, else inconsistent_weights."""

    table: ClassVar[str] = "weighbridge_tickets"
    kind: ClassVar[str] = "transfer_station"
    stream: ClassVar[str] = "event"

    ticket_id: Annotated[str, _text(64, "the weighbridge's ticket number", min_length=1)]
    truck_id: Ident
    gross_kg: Annotated[float, _r(0, 100_000, "kg", "gross weight")]
    tare_kg: Annotated[float, _r(0, 100_000, "kg", "tare weight")]
    net_kg: Annotated[float, _r(0, 100_000, "kg", "net weight, gross − tare")]
    category: WasteCategory | None = None
    direction: Literal["in", "out"] = "in"

    def problem(self) -> tuple[str, str] | None:
        # net = gross − tare is what a net weight is (OIML R 76-1 T.5.3.3, not verified here)
        if abs(self.net_kg - (self.gross_kg - self.tare_kg)) > WEIGHT_TOLERANCE_KG:
            return "inconsistent_weights", (f"net_kg {self.net_kg} differs from gross_kg − tare_kg = "
                                            f"{self.gross_kg - self.tare_kg:g} by more than {WEIGHT_TOLERANCE_KG:g} kg")
        return None


READING_TYPES: tuple[type[Reading], ...] = (
    SweeperTelemetry, StationTelemetry, BinDeposit, BinStatus, CameraDetection, CemsReading,
    TruckTelemetry, TruckEvent, WeighbridgeTicket,
)
# (kind, stream) → the reading type a device topic carries.
BY_KIND_STREAM: dict[tuple[str, str], type[Reading]] = {(t.kind, t.stream): t for t in READING_TYPES}
# In a gateway batch, `stream` may be omitted: each kind's default.
DEFAULT_STREAM = {"sweeper": "telemetry", "transfer_station": "telemetry", "bin": "status",
                  "camera": "event", "cems": "telemetry", "truck": "telemetry"}
BY_TABLE: dict[str, type[Reading]] = {t.table: t for t in READING_TYPES}


def value_fields(reading_type: type[Reading]) -> tuple[str, ...]:
    """The type's own fields, in declaration order (the table's columns after device_id, ts, seq…)."""
    common = {"ts", "seq", "device_id"}
    return tuple(f for f in reading_type.__struct_fields__ if f not in common)


def table_columns(reading_type: type[Reading]) -> tuple[str, ...]:
    """Columns written for a reading, in COPY order."""
    return ("device_id", "ts", "seq", "received_at", *value_fields(reading_type), "extra")


class GatewayReading(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The envelope of one reading inside a gateway batch (the rest of the object is the reading)."""

    kind: DeviceKind
    device_id: Ident
    stream: Literal["telemetry", "event", "status"] | None = None


class GatewayBatch(msgspec.Struct, kw_only=True):
    """``sanitation/{city}/gateway/{gateway_id}/batch``: many devices' readings in one message.
    Each item is a reading of its ``kind`` plus ``kind``, ``device_id`` and optional ``stream``."""

    readings: Annotated[list[dict[Any, Any]], Meta(min_length=1, max_length=10_000)]  # as msgspec reads a bare dict
    gateway_id: Ident | None = None
