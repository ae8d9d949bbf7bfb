"""Request and response models — the API's contract, kept apart from the storage rows.

Every model carries an example so ``/docs`` shows a realistic request and response.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from sanitel.api.params import ApiTime, Ident, LongText, ShortText, contains_nul
from sanitel.broker_auth import USERNAME_PATTERN
from sanitel.schemas.topics import DeviceKind as DeviceKind  # re-exported: the API takes the wire contract's kinds

T = TypeVar("T")

SiteKind = Literal["district", "estate", "urban_village", "sorting_point", "transfer_station", "depot", "plant", "line"]
Severity = Literal["critical", "major", "minor", "warning"]
AlertState = Literal["pending", "firing", "resolved"]
Aggregate = Literal["avg", "min", "max", "sum", "count", "first", "last"]
WasteCategory = Literal["recyclable", "hazardous", "kitchen", "other"]

_TS = "2024-05-01T08:00:00+08:00"


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(None, description="pass as `cursor` to get the next page; null on the last")


# --- sites -------------------------------------------------------------------------------------------

class Site(BaseModel):
    model_config = _example({"site_id": "futian", "kind": "district", "name": "Futian District", "parent_id": None,
                             "timezone": "Asia/Shanghai", "latitude": 22.52, "longitude": 114.05, "params": {},
                             "created_at": _TS})
    site_id: str
    kind: SiteKind
    name: str
    parent_id: str | None
    timezone: str
    latitude: float | None
    longitude: float | None
    params: dict[str, Any] = Field(description="per-site rule parameters (odour grade, noise class, permit limits)")
    created_at: datetime


class SiteDetail(Site):
    model_config = _example({"site_id": "ts-futian-01", "kind": "transfer_station", "name": "Futian TS 1",
                             "parent_id": "futian", "timezone": "Asia/Shanghai", "latitude": 22.53,
                             "longitude": 114.06, "params": {"odour_grade": 2, "noise_class": 2},
                             "created_at": _TS, "child_count": 0, "device_counts": {"transfer_station": 1},
                             "open_alerts": 1})
    child_count: int = Field(description="sites directly below this one")
    device_counts: dict[str, int] = Field(description="devices at this site and below, by kind")
    open_alerts: int = Field(description="pending or firing alerts at this site and below")


# --- devices -----------------------------------------------------------------------------------------

# An id that becomes a broker username (device or gateway registration): narrower than Ident, no ':'
# (Mosquitto's password file separator); ids the collector auto-registered may still hold one.
BrokerIdent = Annotated[str, StringConstraints(pattern=rf"^{USERNAME_PATTERN}$")]
# HJ 212-2017 §6.3 (data segment): PW is up to 9 characters and cannot hold the segment separators ; , & =
# (the codec's own check: schemas/hj212.py _PW).
Hj212Password = Annotated[str, StringConstraints(pattern=r"^[^;,&=\x00-\x1f]{1,9}$")]


class Device(BaseModel):
    model_config = _example({"device_id": "SW-0001", "kind": "sweeper", "site_id": "depot-futian",
                             "name": "Sweeper 1", "inactivity_timeout_s": 900, "metadata": {"vendor": "BYD"},
                             "auto_registered": False, "registered_at": _TS, "has_credentials": True,
                             "gateway_id": None, "has_hj212_password": False,
                             "last_ts": _TS, "last_received": _TS, "online": True})
    device_id: str
    kind: DeviceKind
    site_id: str | None
    name: str | None
    inactivity_timeout_s: int
    metadata: dict[str, Any]
    auto_registered: bool = Field(description="registered by the collector on first sight, not by an admin")
    registered_at: datetime
    has_credentials: bool = Field(description="MQTT credentials have been issued")
    gateway_id: str | None = Field(description="the gateway whose batches may carry this device's readings")
    has_hj212_password: bool = Field(description="an HJ 212 access password (PW) is registered; only its hash "
                                                 "is stored and it is never returned")
    last_ts: datetime | None = Field(description="newest device time received")
    last_received: datetime | None = Field(description="when the device was last heard from")
    online: bool | None = Field(description="heard from within its inactivity timeout; null if never heard")


class DeviceRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"device_id": "SW-0001", "kind": "sweeper", "site_id": "depot-futian", "name": "Sweeper 1",
         "inactivity_timeout_s": 900, "metadata": {"vendor": "BYD", "plate": "粤B-D1234"}}]})
    device_id: BrokerIdent = Field(description="also the MQTT username and the {device_id} topic segment "
                                               "(letters, digits, _ . -; no ':')")
    kind: DeviceKind
    site_id: Ident | None = None
    name: ShortText | None = None
    inactivity_timeout_s: int = Field(900, ge=10, le=30 * 86400)
    metadata: dict[str, Any] = Field(default_factory=dict)
    gateway_id: Ident | None = Field(None, description="a registered gateway that may send this device's readings")
    hj212_password: Hj212Password | None = Field(
        None, description="cems only: the HJ 212 access password (PW) its data unit sends; write-only, stored "
                          "as a salted hash")

    @field_validator("metadata")
    @classmethod
    def _metadata_storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > 8000:
            raise ValueError("metadata must be under 8000 characters of JSON")
        if contains_nul(value):  # jsonb cannot hold U+0000
            raise ValueError("metadata must not contain NUL characters")
        if "hj212_password" in value:  # metadata is shown to every viewer
            raise ValueError("an HJ 212 password never goes into metadata: send it as the hj212_password field "
                             "(or PUT /devices/{device_id}/hj212-password), which stores only a hash")
        return value


class Hj212PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"password": "123456"}]})
    password: Hj212Password = Field(description="the PW the data unit sends (1-9 characters, none of ; , & =)")


class MqttCredentials(BaseModel):
    model_config = _example({"username": "SW-0001", "password": "q8Zb…shown once…", "broker_url":
                             "mqtt://127.0.0.1:11883", "topic_prefix": "sanitation/shenzhen/sweeper/SW-0001/",
                             "broker_reloaded": True})
    username: str
    password: str = Field(description="shown once; only a hash is stored")
    broker_url: str
    topic_prefix: str = Field(description="the device may publish only below this prefix (a gateway: only "
                                          "<prefix>batch)")
    broker_reloaded: bool = Field(description="the broker was told to re-read its password file and ACL")


class RegisteredDevice(BaseModel):
    device: Device
    credentials: MqttCredentials


# --- gateways ----------------------------------------------------------------------------------------

MAX_GATEWAY_DEVICES = 10_000


class Gateway(BaseModel):
    model_config = _example({"gateway_id": "GW-futian-1", "name": "Futian bins LoRa gateway", "site_id": "futian",
                             "registered_at": _TS, "has_credentials": True, "devices": ["BIN-0001", "BIN-0002"]})
    gateway_id: str
    name: str | None
    site_id: str | None
    registered_at: datetime
    has_credentials: bool = Field(description="MQTT credentials have been issued")
    devices: list[str] = Field(description="the devices whose readings its batches may carry")


class GatewayDevices(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"devices": ["BIN-0001"]}]})
    devices: list[Ident] = Field(max_length=MAX_GATEWAY_DEVICES,
                                 description="registered device ids; a device is behind one gateway at most, so "
                                             "listing one moves it here")


class GatewayRegistration(GatewayDevices):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"gateway_id": "GW-futian-1", "name": "Futian bins LoRa gateway", "site_id": "futian",
         "devices": ["BIN-0001", "BIN-0002"]}]})
    gateway_id: BrokerIdent = Field(description="also its MQTT username and the {gateway_id} topic segment; "
                                                "must not be a device id or a service account's name")
    name: ShortText | None = None
    site_id: Ident | None = None


class RegisteredGateway(BaseModel):
    gateway: Gateway
    credentials: MqttCredentials


# --- readings ----------------------------------------------------------------------------------------

class Reading(BaseModel):
    model_config = _example({"device_id": "SW-0001", "kind": "sweeper", "type": "sweeper_telemetry", "ts": _TS,
                             "seq": 1042, "received_at": _TS,
                             "values": {"soc_pct": 76.5, "speed_kmh": 8.2, "work_mode": "sweep"}, "extra": None})
    device_id: str
    kind: str
    type: str = Field(description="reading type (the table it is stored in)")
    ts: datetime = Field(description="device time")
    seq: int
    received_at: datetime
    values: dict[str, Any]
    extra: dict[str, Any] | None = Field(description="fields the device sent that the schema does not know")


class DeviceLatest(BaseModel):
    device_id: str
    kind: str
    site_id: str | None = None
    readings: list[Reading] = Field(description="the newest reading of each type the device reports")


class MetricInfo(BaseModel):
    model_config = _example({"kind": "sweeper", "type": "sweeper_telemetry", "metric": "soc_pct", "unit": "%",
                             "description": "battery state of charge"})
    kind: str
    type: str
    metric: str
    unit: str | None
    description: str | None


class HistoryPoint(BaseModel):
    ts: datetime = Field(description="bucket start (or the reading's time when not bucketed)")
    value: float | None
    count: int = Field(description="readings in the bucket that had a value (valid readings, from a rollup)")
    status: str | None = Field(None, description="rollups only: valid, invalid, missing, not_operating, "
                                                 "in_progress")
    provisional: bool = Field(False, description="present (true) only on a bucket a rollup serves but does not "
                                                 "hold yet — late or live data, computed from the raw readings "
                                                 "until the scheduled processor rolls it up; absent means final")

    @model_serializer(mode="wrap")
    def _only_when_provisional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # the hot path returns up to 10,000 points: "provisional": false on each would say nothing
        data: dict[str, Any] = handler(self)
        if not self.provisional:
            data.pop("provisional", None)
        return data


class HistorySource(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    source: Literal["rollup", "raw"] = Field(description="rollup: a rollup table holds these buckets; raw: "
                                                        "computed from the readings in this response")
    table: str


class History(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{
                             "device_id": "SW-0001", "metric": "soc_pct", "unit": "%", "aggregate": "avg",
                             "bucket": "1h", "from": "2024-05-01T00:00:00+08:00", "to": "2024-05-02T00:00:00+08:00",
                             "source": "sweeper_telemetry_5m + sweeper_telemetry",
                             "sources": [{"from": "2024-05-01T00:00:00+08:00", "to": "2024-05-01T23:00:00+08:00",
                                          "source": "rollup", "table": "sweeper_telemetry_5m"},
                                         {"from": "2024-05-01T23:00:00+08:00", "to": "2024-05-02T00:00:00+08:00",
                                          "source": "raw", "table": "sweeper_telemetry"}],
                             "points": [{"ts": "2024-05-01T00:00:00+08:00", "value": 81.2, "count": 60},
                                        {"ts": "2024-05-01T23:00:00+08:00", "value": 52.0, "count": 31,
                                         "provisional": True}]}]})
    device_id: str
    metric: str
    unit: str | None
    aggregate: Aggregate | None = Field(description="null for raw readings")
    bucket: str | None
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    source: str = Field(description="the tables the figures came from, joined by ' + ' (a rollup table where "
                                    "one holds them)")
    sources: list[HistorySource] = Field(description="which source served which part of [from, to), in order")
    points: list[HistoryPoint]
    next_cursor: str | None = Field(None, description="raw readings only: the next page, null on the last")


# --- deposits ----------------------------------------------------------------------------------------

class Deposit(BaseModel):
    device_id: str
    ts: datetime
    seq: int
    point_id: str | None
    household_id: str
    category: WasteCategory
    weight_kg: float


class CategoryTotal(BaseModel):
    category: WasteCategory
    deposits: int
    weight_kg: float


class DepositReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{
        "scope": "point", "id": "sp-futian-0001", "from": "2024-05-01T00:00:00+08:00",
        "to": "2024-05-02T00:00:00+08:00", "deposits": 2, "weight_kg": 3.4, "households": 2,
        "totals": [{"category": "kitchen", "deposits": 1, "weight_kg": 2.1},
                   {"category": "recyclable", "deposits": 1, "weight_kg": 1.3}],
        "items": [{"device_id": "BIN-0001", "ts": _TS, "seq": 7, "point_id": "sp-futian-0001",
                   "household_id": "HH-0042", "category": "kitchen", "weight_kg": 2.1}],
        "next_cursor": None}]})
    scope: Literal["household", "point"]
    id: str
    from_: datetime = Field(alias="from", serialization_alias="from")
    to: datetime
    deposits: int
    weight_kg: float
    households: int
    totals: list[CategoryTotal] = Field(description="per category over the whole range (not just this page)")
    items: list[Deposit]
    next_cursor: str | None


# --- alerts ------------------------------------------------------------------------------------------

class Alert(BaseModel):
    model_config = _example({"alert_id": 17, "rule_id": "sweeper_low_soc", "fingerprint": "sweeper_low_soc:SW-0001",
                             "subject": "device:SW-0001", "device_id": "SW-0001", "site_id": "depot-futian",
                             "kind": "sweeper", "severity": "major", "state": "firing",
                             "labels": {"district": "futian"}, "annotations": {},
                             "summary": "battery SOC 9.5 % below 10 %", "value": 9.5, "threshold": 10.0,
                             "peak_value": 9.1, "started_at": _TS, "fired_at": _TS, "resolved_at": None,
                             "resolved_by": None, "acknowledged_by": None, "acknowledged_at": None,
                             "ack_comment": None, "assignee": None, "silenced_by": None, "reminders": 0,
                             "updated_at": _TS})
    alert_id: int
    rule_id: str
    fingerprint: str
    subject: str | None = Field(description="what the alert is about: device:ID, site:ID or point:ID")
    device_id: str | None
    site_id: str | None
    kind: str | None
    severity: Severity
    state: AlertState
    labels: dict[str, Any]
    annotations: dict[str, Any]
    summary: str
    value: float | None = Field(description="the value that last triggered or held the alert")
    threshold: float | None
    peak_value: float | None = Field(description="worst value of the episode")
    started_at: datetime = Field(description="device time the condition began")
    fired_at: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="who resolved it by hand, if anyone")
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_comment: str | None
    assignee: str | None
    silenced_by: int | None = Field(description="the silence that last muted its notifications")
    reminders: int
    updated_at: datetime


class AlertHistoryEntry(BaseModel):
    model_config = _example({"id": 3, "alert_id": 17, "at": _TS, "from_state": "firing", "to_state": "acknowledged",
                             "actor": "duty-supervisor", "comment": "crew on the way", "details": {}})
    id: int
    alert_id: int
    at: datetime
    from_state: str | None
    to_state: str
    actor: str | None
    comment: str | None
    details: dict[str, Any]


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"comment": "crew on the way"}]})
    comment: LongText | None = None


class Assign(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"assignee": "li.wei"}]})
    assignee: ShortText | None = Field(description="who handles the alert; null to unassign")


# --- silences ----------------------------------------------------------------------------------------

class Matcher(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$", examples=["site_id"],
                       description="an alert field (rule_id, device_id, site_id, kind, severity) or label")
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: str = Field(max_length=256, pattern=r"^[^\x00]*$", examples=["ts-futian-01"])


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "matchers": [{"label": "site_id", "op": "=", "value": "ts-futian-01"}],
        "starts_at": "2024-05-01T22:00:00+08:00", "ends_at": "2024-05-02T02:00:00+08:00",
        "comment": "compactor maintenance"}]})
    matchers: list[Matcher] = Field(min_length=1, max_length=20)
    starts_at: ApiTime | None = Field(None, description="default: now")
    ends_at: ApiTime
    comment: LongText = ""


class Silence(BaseModel):
    model_config = _example({"silence_id": 4, "matchers": [{"label": "site_id", "op": "=", "value": "ts-futian-01"}],
                             "starts_at": _TS, "ends_at": "2024-05-01T12:00:00+08:00", "created_by": "duty-supervisor",
                             "comment": "compactor maintenance", "created_at": _TS, "status": "active"})
    silence_id: int
    matchers: list[Matcher]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime
    status: Literal["pending", "active", "expired"]


# --- reports -----------------------------------------------------------------------------------------

class DistrictDay(BaseModel):
    """One district's day of operations (local calendar day of the district's time zone)."""

    model_config = _example({
        "district_id": "futian", "district": "Futian District", "date": "2024-05-01", "devices": 120,
        "devices_reporting": 117, "sweepers_active": 38, "swept_km": 412.5, "sweeper_work_h": 233.0,
        "sweeper_min_soc_pct": 12.0, "station_trucks": 96, "station_net_t": 431.2, "station_max_h2s_mg_m3": 0.05,
        "station_max_nh3_mg_m3": 1.1, "station_max_noise_dba": 61.0, "deposits": 18211, "households": 9120,
        "deposit_kg": 30440.0, "recyclable_kg": 5120.0, "hazardous_kg": 41.0, "kitchen_kg": 14210.0,
        "other_kg": 11069.0, "camera_detections": 311, "mis_sorted": 120, "overflow": 12, "smoke_fire": 0,
        "alerts_opened": 23, "alerts_critical": 1, "alerts_open_at_end": 4, "alerts_acknowledged": 19})
    district_id: str
    district: str
    date: date
    devices: int
    devices_reporting: int
    sweepers_active: int
    swept_km: float
    sweeper_work_h: float
    sweeper_min_soc_pct: float | None
    station_trucks: int
    station_net_t: float
    station_max_h2s_mg_m3: float | None
    station_max_nh3_mg_m3: float | None
    station_max_noise_dba: float | None
    deposits: int
    households: int
    deposit_kg: float
    recyclable_kg: float
    hazardous_kg: float
    kitchen_kg: float
    other_kg: float
    camera_detections: int
    mis_sorted: int
    overflow: int
    smoke_fire: int
    alerts_opened: int
    alerts_critical: int
    alerts_open_at_end: int
    alerts_acknowledged: int


# --- health ------------------------------------------------------------------------------------------

CheckStatus = Literal["ok", "degraded", "down", "unknown"]


class Check(BaseModel):
    status: CheckStatus
    detail: str
    data: dict[str, Any] = Field(default_factory=dict)


class Health(BaseModel):
    model_config = _example({"status": "degraded", "time": _TS, "checks": {
        "database": {"status": "ok", "detail": "reachable", "data": {"timescaledb": "2.19.3", "license": "apache"}},
        "broker": {"status": "ok", "detail": "CONNACK accepted", "data": {"url": "mqtt://127.0.0.1:11883"}},
        "collector_lag": {"status": "ok", "detail": "last message 2.1 s ago", "data": {"lag_s": 2.1}},
        "spool": {"status": "ok", "detail": "empty", "data": {"files": 0, "bytes": 0}},
        "dead_letters": {"status": "ok", "detail": "0 in the last hour", "data": {"last_hour": 0}},
        "collector": {"status": "ok", "detail": "the collector last passed 12 s ago (every 30 s)", "data": {
            "last_pass_at": _TS, "lag_s": 12.0, "interval_s": 30.0, "overdue_after_s": 90.0, "instances": 1,
            "stopped_instances": 0}},
        "processor": {"status": "degraded", "detail": "the scheduled processor has never reported a pass: is it "
                      "running (`sanitel maintain`), and can it reach the database?", "data": {
                          "last_pass_at": None, "lag_s": None, "interval_s": None, "overdue_after_s": None,
                          "instances": 0, "stopped_instances": 0}},
        "evaluator": {"status": "ok", "detail": "the alert evaluator last passed 3 s ago (every 5 s)", "data": {
            "last_pass_at": _TS, "lag_s": 3.0, "interval_s": 5.0, "overdue_after_s": 15.0, "instances": 1,
            "stopped_instances": 0}}},
        "problems": ["processor: the scheduled processor has never reported a pass: is it running (`sanitel "
                     "maintain`), and can it reach the database?"]})
    status: CheckStatus = Field(description="worst of the checks; the HTTP status is 503 when `down`")
    time: datetime
    checks: dict[str, Check] = Field(description="database, broker, collector_lag, spool, dead_letters, and each "
                                     "background stage (collector, processor, evaluator: last pass, lag, interval, "
                                     "instances; degraded when overdue or never seen)")
    problems: list[str] = Field(default_factory=list,
                                description="one line per check that is not ok: which one, and what to check")


# --- truck routes ------------------------------------------------------------------------------------

class TruckRoutePlan(BaseModel):
    """A truck's planned route (issue 15): the ordered sorting points it collects in a shift and where it tips."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"truck_id": "TR-0001", "shift_start": "05:30", "shift_end": "11:00",
         "points": ["sp-futian-001", "sp-futian-002", "sp-futian-003"], "tip_site_id": "ts-futian-01",
         "valid_from": "2026-11-01", "valid_to": None}]})
    truck_id: Ident = Field(description="a registered device of kind truck")
    shift_start: time = Field(description="local time (the points' time zone) the shift starts")
    shift_end: time = Field(description="local time the shift ends; before shift_start for a shift past midnight")
    points: list[Ident] = Field(min_length=1, max_length=500,
                                description="sorting point site ids, in the order the truck visits them")
    tip_site_id: Ident | None = Field(None, description="the transfer station or plant where the truck tips")
    valid_from: date
    valid_to: date | None = Field(None, description="last day the plan holds (inclusive); null: until replaced")

    @model_validator(mode="after")
    def _dates_in_order(self) -> TruckRoutePlan:
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError("valid_to must not be before valid_from")
        return self


class TruckRoute(TruckRoutePlan):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"route_id": "R-futian-am-1", "truck_id": "TR-0001", "shift_start": "05:30:00", "shift_end": "11:00:00",
         "points": ["sp-futian-001", "sp-futian-002"], "tip_site_id": "ts-futian-01", "valid_from": "2026-11-01",
         "valid_to": None, "updated_at": _TS}]})
    route_id: str
    updated_at: datetime
