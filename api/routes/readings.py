"""Readings: the newest reading of a device, the history of any metric, and the metric catalogue."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from psycopg import AsyncConnection

from sanitel.api.catalog import Metric, all_metrics, metric_for
from sanitel.api.deps import ApiContext, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.latest import latest_for_device
from sanitel.api.models import Aggregate, DeviceLatest, History, HistoryPoint, MetricInfo
from sanitel.api.params import (
    BUCKET_PATTERN,
    MAX_RAW_POINTS,
    Cursor,
    FromTime,
    Ident,
    ToTime,
    check_bucket_count,
    decode_cursor,
    encode_cursor,
    parse_bucket,
    time_range,
)
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import readings as queries
from sanitel.api.rollups import FIVE_MINUTES, MINUTE_ROLLUPS, MinuteRollup, minute_rollup_for, rollup_for

router = APIRouter(tags=["readings"], responses=error_responses(401, 403, 422))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DeviceId = Annotated[Ident, Path(description="device id", examples=["SW-0001"])]


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@router.get("/readings/metrics", response_model=list[MetricInfo], summary="Metrics each device kind reports")
async def metric_catalogue(_: Viewer, kind: Literal["sweeper", "transfer_station", "bin", "camera", "cems"]
                           | None = None) -> list[MetricInfo]:
    return [MetricInfo(kind=m.kind, type=m.table, metric=m.name, unit=m.unit, description=m.description)
            for m in all_metrics() if kind is None or m.kind == kind]


@router.get("/devices/{device_id}/latest", response_model=DeviceLatest,
            summary="Newest reading of each type the device reports", responses=error_responses(404))
async def device_latest(device_id: DeviceId, conn: Db, _: Viewer) -> DeviceLatest:
    device = await device_queries.get_device(conn, device_id)
    if device is None:
        raise not_found("device", device_id)
    readings = await latest_for_device(conn, device_id, device["kind"])
    return DeviceLatest(device_id=device_id, kind=device["kind"], site_id=device["site_id"], readings=readings)


@router.get(
    "/devices/{device_id}/history", response_model=History, response_model_by_alias=True,
    summary="History of one metric: raw readings, or aggregated per time bucket",
    description="With `bucket` (e.g. `5m`, `1h`, `1d`) one point per non-empty bucket, aggregated with "
                "`aggregate`; buckets align to `timezone`. Where a rollup holds the series it is served from "
                "there (`source` says which): sweeper and station telemetry at multiples of 5 minutes with avg, "
                "min or max from the 5-minute rollups (whole 5-minute buckets; raw readings after the rollup "
                "processor's watermark); CEMS pollutant averages at 10m/30m/1h/1d from `cems_averages` — "
                "validated averages (flag N, O2 guard) over the plant's local periods, what compliance is judged "
                "on. Without `bucket`, the raw readings, oldest first, paged (at most "
                f"{MAX_RAW_POINTS} per page). `from` defaults to 24 h before `to`, `to` to now.",
    responses=error_responses(404))
async def device_history(
    device_id: DeviceId, ctx: Context, conn: Db, _: Viewer,
    metric: Annotated[str, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", examples=["soc_pct"],
                                 description="a metric of the device's kind (see /readings/metrics)")],
    from_: FromTime = None, to: ToTime = None,
    bucket: Annotated[str | None, Query(pattern=BUCKET_PATTERN, max_length=32, examples=["5m"],
                                        description="bucket width: 30s, 5m, 1h, 1h30m, 1d …")] = None,
    aggregate: Aggregate = "avg",
    timezone: Annotated[str, Query(max_length=64, description="IANA zone buckets align to",
                                   examples=["Asia/Shanghai"])] = "UTC",
    data_kind: Literal["rtd", "minute", "hour", "day"] = "rtd",
    standard: Annotated[Literal["eu", "gb"] | None, Query(
        description="CEMS daily averages: 2010/75/EU (from half-hours) or GB 18485 (from hours)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RAW_POINTS, description="raw readings per page")] = 1000,
    cursor: Cursor = None,
) -> History:
    kind = await device_queries.device_kind(conn, device_id)
    if kind is None:
        raise not_found("device", device_id)
    found = _metric(kind, metric)
    if timezone not in _timezones():
        raise ApiError(422, f"unknown time zone {timezone!r}; use an IANA name such as Asia/Shanghai",
                       field="query.timezone")
    start, end = time_range(from_, to, default=timedelta(days=1))
    if bucket is None:
        return await _raw(conn, found, device_id, start, end, data_kind, limit, cursor)
    width = parse_bucket(bucket)
    check_bucket_count(start, end, width)
    source, rows = await _bucketed(conn, ctx, found, device_id, start, end, width, aggregate, timezone,
                                   data_kind, standard)
    return History(device_id=device_id, metric=metric, unit=found.unit, aggregate=aggregate, bucket=bucket,
                   from_=start, to=end, source=source, points=[HistoryPoint.model_validate(r) for r in rows])


async def _bucketed(conn: AsyncConnection, ctx: ApiContext, metric: Metric, device_id: str, start: datetime,
                    end: datetime, width: timedelta, aggregate: str, timezone: str, data_kind: str,
                    standard: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(source, points): from a rollup where one holds the series, else time_bucket over raw readings."""
    averages = rollup_for(metric, width, aggregate, data_kind, standard)
    if averages is not None:
        rows = await queries.rollup_history(conn, averages, device_id, start, end)
        if rows:  # averages not (yet) computed for this device fall back to the raw readings
            return averages.label, rows
    minute = await _minute_rollup(conn, ctx, metric, width, aggregate)
    boundary = await queries.rollup_boundary(conn, minute, width, timezone) if minute else None
    if minute is None or boundary is None:
        rows = await queries.bucketed_history(conn, metric, device_id, start, end, width, aggregate, timezone,
                                              data_kind)
        return metric.table, rows
    return await _rollup_then_raw(conn, minute, boundary, metric, device_id, start, end, width, aggregate,
                                  timezone, data_kind)


async def _rollup_then_raw(conn: AsyncConnection, minute: MinuteRollup, boundary: datetime, metric: Metric,
                           device_id: str, start: datetime, end: datetime, width: timedelta, aggregate: str,
                           timezone: str, data_kind: str) -> tuple[str, list[dict[str, Any]]]:
    """Buckets before ``boundary`` (the rollup processor's watermark, bucket-aligned) from the rollup, the
    rest from raw readings: no bucket is ever computed from both."""
    sources: list[str] = []
    rows: list[dict[str, Any]] = []
    if boundary > start:
        first = start - (start - _EPOCH) % FIVE_MINUTES  # the whole 5-minute bucket `from` falls in
        rows += await queries.minute_rollup_history(conn, minute, device_id, first, min(end, boundary), width,
                                                    timezone)
        sources.append(minute.table)
    if boundary < end:
        rows += await queries.bucketed_history(conn, metric, device_id, max(start, boundary), end, width, aggregate,
                                               timezone, data_kind)
        sources.append(metric.table)
    return " + ".join(sources), rows


async def _minute_rollup(conn: AsyncConnection, ctx: ApiContext, metric: Metric, width: timedelta,
                         aggregate: str) -> MinuteRollup | None:
    table = MINUTE_ROLLUPS.get(metric.table)
    if table is None:
        return None
    if table not in ctx.rollup_columns:
        ctx.rollup_columns[table] = await queries.rollup_columns(conn, table)
    return minute_rollup_for(metric, width, aggregate, ctx.rollup_columns[table])


def _metric(kind: str, name: str) -> Metric:
    found = metric_for(kind, name)
    if found is None:
        known = ", ".join(m.name for m in all_metrics() if m.kind == kind)
        raise ApiError(422, f"{kind} devices have no metric {name!r}; known: {known}", field="query.metric")
    return found


async def _raw(conn: AsyncConnection, metric: Metric, device_id: str, start: datetime, end: datetime, data_kind: str,
               limit: int, cursor: str | None) -> History:
    after = decode_cursor(cursor, datetime, int) if cursor else None
    rows = await queries.raw_history(conn, metric, device_id, start, end, after, limit, data_kind)
    next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["seq"]) if len(rows) == limit else None
    return History(device_id=device_id, metric=metric.name, unit=metric.unit, aggregate=None, bucket=None,
                   from_=start, to=end, source=metric.table, points=[HistoryPoint.model_validate(r) for r in rows],
                   next_cursor=next_cursor)
