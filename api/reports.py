"""The daily operations summary per district: per-device day figures joined to districts with pandas.

A district's day is its local calendar day (the district site's time zone), so "1 May" in Shenzhen is
16:00 UTC 30 April to 16:00 UTC 1 May.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from psycopg import AsyncConnection

from sanitel.api.models import DistrictDay
from sanitel.api.queries import reports as queries

CATEGORIES = ("recyclable", "hazardous", "kitchen", "other")
DETECTIONS = ("mis_sorted", "overflow", "smoke_fire")
COLUMNS = list(DistrictDay.model_fields)


def local_day(day: date, timezone: str) -> tuple[datetime, datetime]:
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    start = datetime.combine(day, time.min, zone)
    return start, datetime.combine(day + timedelta(days=1), time.min, zone)


async def daily_summary(conn: AsyncConnection, day: date, district_id: str | None) -> pd.DataFrame:
    """One row per district (columns as ``DistrictDay``), ordered by district id."""
    districts = pd.DataFrame(await queries.districts(conn, district_id),
                             columns=["district_id", "district", "timezone"])
    if districts.empty:
        return pd.DataFrame(columns=COLUMNS)
    parts = []
    for timezone, group in districts.groupby("timezone"):
        start, end = local_day(day, str(timezone))
        parts.append(await _summary_for(conn, group, start, end))
    out = pd.concat(parts, ignore_index=True).sort_values("district_id", ignore_index=True)
    out["date"] = day
    return out[COLUMNS]


async def _summary_for(conn: AsyncConnection, districts: pd.DataFrame, start: datetime, end: datetime
                       ) -> pd.DataFrame:
    ids = districts["district_id"].tolist()
    devmap = _frame(await queries.device_districts(conn, ids), ["device_id", "kind", "district_id"])
    sweepers = _frame(await queries.sweeper_day(conn, ids, start, end),
                      ["device_id", "readings", "swept_km", "work_h", "min_soc_pct", "swept"])
    stations = _frame(await queries.station_day(conn, ids, start, end),
                      ["device_id", "readings", "trucks", "net_t", "max_h2s", "max_nh3", "max_noise"])
    deposits = _frame(await queries.deposit_day(conn, ids, start, end), ["device_id", "category", "deposits", "weight_kg"])
    detections = _frame(await queries.detections_day(conn, ids, start, end), ["device_id", "detection", "n"])
    others = _frame(await queries.other_readings_day(conn, ids, start, end), ["device_id", "readings"])
    per_district = [
        _devices(devmap),
        _reporting(devmap, [sweepers["device_id"], stations["device_id"], deposits["device_id"],
                            detections["device_id"], others["device_id"]]),
        _sweepers(devmap, sweepers),
        _stations(devmap, stations),
        _deposits(devmap, deposits),
        _frame(await queries.households_day(conn, ids, start, end), ["district_id", "households"]),
        _detections(devmap, detections),
        _alerts(_frame(await queries.alerts_day(conn, ids, start, end),
                       ["district_id", "opened", "critical", "acked", "open_at_end"])),
    ]
    out = districts[["district_id", "district"]]
    for frame in per_district:
        out = out.merge(frame, on="district_id", how="left")
    return _fill(out)


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _by_district(devmap: pd.DataFrame, per_device: pd.DataFrame) -> pd.core.groupby.DataFrameGroupBy:
    return per_device.merge(devmap[["device_id", "district_id"]], on="device_id").groupby("district_id")


def _devices(devmap: pd.DataFrame) -> pd.DataFrame:
    return devmap.groupby("district_id").size().rename("devices").reset_index()


def _sweepers(devmap: pd.DataFrame, day: pd.DataFrame) -> pd.DataFrame:
    g = _by_district(devmap, day)
    return pd.DataFrame({"sweepers_active": g["swept"].sum(), "swept_km": g["swept_km"].sum(),
                         "sweeper_work_h": g["work_h"].sum(), "sweeper_min_soc_pct": g["min_soc_pct"].min()}
                        ).reset_index()


def _stations(devmap: pd.DataFrame, day: pd.DataFrame) -> pd.DataFrame:
    g = _by_district(devmap, day)
    return pd.DataFrame({"station_trucks": g["trucks"].sum(), "station_net_t": g["net_t"].sum(),
                         "station_max_h2s_mg_m3": g["max_h2s"].max(), "station_max_nh3_mg_m3": g["max_nh3"].max(),
                         "station_max_noise_dba": g["max_noise"].max()}).reset_index()


def _deposits(devmap: pd.DataFrame, day: pd.DataFrame) -> pd.DataFrame:
    joined = day.merge(devmap[["device_id", "district_id"]], on="device_id")
    kg = joined.pivot_table(index="district_id", columns="category", values="weight_kg", aggfunc="sum")
    kg = kg.reindex(columns=list(CATEGORIES)).add_suffix("_kg")
    totals = joined.groupby("district_id").agg(deposits=("deposits", "sum"), deposit_kg=("weight_kg", "sum"))
    return totals.join(kg, how="outer").reset_index()


def _detections(devmap: pd.DataFrame, day: pd.DataFrame) -> pd.DataFrame:
    joined = day.merge(devmap[["device_id", "district_id"]], on="device_id")
    counts = joined.pivot_table(index="district_id", columns="detection", values="n", aggfunc="sum")
    counts = counts.reindex(columns=list(DETECTIONS))
    counts["camera_detections"] = joined.groupby("district_id")["n"].sum()
    return counts.reset_index()


def _alerts(day: pd.DataFrame) -> pd.DataFrame:
    return day.rename(columns={"opened": "alerts_opened", "critical": "alerts_critical",
                               "acked": "alerts_acknowledged", "open_at_end": "alerts_open_at_end"})


def _reporting(devmap: pd.DataFrame, seen: list[pd.Series]) -> pd.DataFrame:
    """Devices that sent anything during the day, per district (every per-device frame only lists
    devices with at least one row)."""
    reporting = devmap[devmap["device_id"].isin(pd.concat(seen).unique())]
    return reporting.groupby("district_id").size().rename("devices_reporting").reset_index()


_NULLABLE = {"sweeper_min_soc_pct", "station_max_h2s_mg_m3", "station_max_nh3_mg_m3", "station_max_noise_dba"}


def _fill(out: pd.DataFrame) -> pd.DataFrame:
    """Absent figures are zero (nothing happened), except maxima/minima, which stay null (nothing measured)."""
    for column in COLUMNS:
        if column in ("district_id", "district", "date"):
            continue
        if column not in out:
            out[column] = None
        if column in _NULLABLE:
            out[column] = out[column].astype("float64").round(3)
            continue
        filled = out[column].fillna(0)
        out[column] = filled.astype("int64") if DistrictDay.model_fields[column].annotation is int \
            else filled.astype("float64").round(3)
    return out


def to_models(frame: pd.DataFrame) -> list[DistrictDay]:
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [DistrictDay.model_validate(r) for r in records]
