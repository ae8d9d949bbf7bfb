"""Response models of the endpoints the supervisor console reads (issue 14): fleet positions, a site's effective
limits, and the sorting points' day. The console codes against these shapes: fields may be added, never renamed."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Kinds with a position on the fleet plot (trucks: issue 15's sixth device kind; until their readings exist the
# answer is their registry rows without positions).
FleetKind = Literal["sweeper", "truck"]

_TS = "2024-05-01T08:00:00+08:00"


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


# --- /fleet/positions ----------------------------------------------------------------------------------------


class FleetPosition(BaseModel):
    model_config = _example({"device_id": "sw-0001", "name": None, "site_id": "futian", "lat": 22.5431,
                             "lon": 114.0579, "soc_pct": 76.5, "online": True, "last_seen": _TS,
                             "position_ts": _TS})
    device_id: str
    name: str | None
    site_id: str | None
    lat: float | None = Field(description="from the device's newest telemetry row; null when it had none")
    lon: float | None
    soc_pct: float | None = Field(description="battery state of charge in the same row, %")
    online: bool = Field(description="heard from within the device's inactivity timeout (as /devices says)")
    last_seen: datetime | None = Field(description="when a reading of the device last arrived; null: never")
    position_ts: datetime | None = Field(None, description="device time of the row the position comes from")


class Extent(BaseModel):
    min_lat: float
    max_lat: float
    min_lon: float
    max_lon: float


class FleetPositions(BaseModel):
    kind: FleetKind
    items: list[FleetPosition]
    extent: Extent | None = Field(description="bounds of the positions given; null when no device has one")


# --- /sites/{site_id}/limits ---------------------------------------------------------------------------------


class SiteLimit(BaseModel):
    model_config = _example({"rule_id": "station_noise_night", "metric": "noise_dba", "op": ">", "threshold": 50.0,
                             "unit": "dB(A)", "period": "night", "hours": "22:00-06:00", "source": "GB 12348-2008",
                             "clear": None, "kind": "transfer_station", "severity": "minor", "unverified": False,
                             "params": {"noise_class": "2"}})
    rule_id: str
    metric: str
    op: str
    threshold: float = Field(description="after the site's parameters (grade, class, permit overrides)")
    unit: str | None
    period: Literal["day", "night"] | None = Field(description="the rule's local hours as day (they hold noon) or "
                                                               "night; null: all day")
    hours: str | None = Field(description="local hours in the site's time zone, e.g. 06:00-22:00")
    source: str | None = Field(description="the standard the limit comes from; null: a project default")
    clear: float | None = Field(None, description="where an active alert ends (hysteresis), if the rule has one")
    kind: str = Field(description="device kind the rule judges")
    severity: str
    unverified: bool = Field(False, description="the limit comes from one secondary source")
    params: dict[str, Any] = Field(default_factory=dict, description="the site parameters the limit depends on")


class SiteLimits(BaseModel):
    site_id: str
    timezone: str
    limits: list[SiteLimit]


# --- /reports/sorting-points ---------------------------------------------------------------------------------


class SortingPointDay(BaseModel):
    model_config = _example({"point_id": "sp-00001", "name": "Sorting point sp-00001", "site_id": "es-00001",
                             "households_registered": 320, "households_active": 208, "participation_rate": 0.65,
                             "deposits": 380, "weight_kg_by_category": {"kitchen": 210.4, "other": 95.0},
                             "detections_by_type": {"mis_sorted": 4}})
    point_id: str = Field(description="the point's site id (the point_id its bins and camera report)")
    name: str
    site_id: str = Field(description="the site the point belongs to (its estate); the point itself at the top")
    households_registered: int | None = Field(description="the point's `households` site parameter")
    households_active: int = Field(description="distinct RFID cards that deposited that day")
    participation_rate: float | None = Field(description="households_active / households_registered")
    deposits: int
    weight_kg_by_category: dict[str, float]
    detections_by_type: dict[str, int] = Field(description="AI camera detections at the point, by type")


class SortingPointsReport(BaseModel):
    day: date
    timezone: str
    points: list[SortingPointDay]
