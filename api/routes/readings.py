"""Readings: the newest reading of a device, the history of any metric, and the metric catalogue."""

from __future__ import annotations

import zoneinfo
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from psycopg import AsyncConnection

from sanitel.api.blocking import run_blocking
from sanitel.api.catalog import Metric, all_metrics, metric_for
from sanitel.api.deps import ApiContext, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.latest import latest_for_device
from sanitel.api.models import Aggregate, DeviceKind, DeviceLatest, History, HistoryPoint, HistorySource, MetricInfo
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
from sanitel.api.rollups import (
    FIVE_MINUTES,
    MINUTE_ROLLUPS,
    MinuteRollup,
    RollupSource,
    Segment,
    bounded,
    bucket_ranges,
    minute_rollup_for,
    rollup_for,
    segments,
    source_label,
)
from sanitel.processors import cems_averages

router = APIRouter(tags=["readings"], responses=error_responses(401, 403, 422))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DeviceId = Annotated[Ident, Path(description="device id", examples=["SW-0001"])]


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@router.get("/readings/metrics", response_model=list[MetricInfo], summary="Metrics each device kind reports")
async def metric_catalogue(_: Viewer, kind: DeviceKind | None = None) -> list[MetricInfo]:
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
                "there: sweeper and station telemetry at multiples of 5 minutes with avg, min or max from the "
                "5-minute rollups (whole 5-minute buckets); CEMS pollutant averages at 10m/30m/1h/1d from "
                "`cems_averages` — validated averages (flag N, O2 guard) over the plant's local periods, what "
                "compliance is judged on. A rollup never hides late data: buckets it does not hold yet (rows "
                "written after the scheduled processor's last pass — a back-fill, a spool replay, the live "
                "edge) are computed from the raw readings in the same response and marked "
                "`provisional: true` until the processor rolls them up; `sources` says which source served "
                "which range. Without `bucket`, the raw readings, oldest first, paged (at most "
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
    served = await _bucketed(conn, ctx, found, device_id, start, end, width, aggregate, timezone, data_kind,
                             standard)
    return History(device_id=device_id, metric=metric, unit=found.unit, aggregate=aggregate, bucket=bucket,
                   from_=start, to=end, source=served.label, sources=_sources(served.parts),
                   points=[HistoryPoint.model_validate(r) for r in served.points])


@dataclass
class _Served:
    """Points of a bucketed history and which source served which range."""

    points: list[dict[str, Any]]
    parts: list[Segment]
    label: str = ""  # the response's ``source``; by default the tables of ``parts``

    def __post_init__(self) -> None:
        self.label = self.label or source_label(self.parts)


def _all_raw(rows: list[dict[str, Any]], table: str, start: datetime, end: datetime, provisional: bool) -> _Served:
    return _Served([r | {"provisional": provisional} for r in rows], segments(start, end, [(start, end)], None, table))


async def _bucketed(conn: AsyncConnection, ctx: ApiContext, metric: Metric, device_id: str, start: datetime,
                    end: datetime, width: timedelta, aggregate: str, timezone: str, data_kind: str,
                    standard: str | None) -> _Served:
    """From a rollup where one holds the series — its stale buckets from raw readings — else time_bucket over
    raw readings (see api/rollups.py)."""
    averages = rollup_for(metric, width, aggregate, data_kind, standard)
    if averages is not None:
        return await _from_averages(conn, averages, device_id, start, end)
    minute = await _minute_rollup(conn, ctx, metric, width, aggregate)
    edge = await queries.rollup_boundary(conn, minute, width, timezone) if minute else None
    if minute is None or edge is None:
        rows = await queries.bucketed_history(conn, metric, device_id, start, end, width, aggregate, timezone,
                                              data_kind)
        # a series a rollup will hold, before its first pass, is provisional: the rollup does not have it yet
        return _all_raw(rows, metric.table, start, end, provisional=minute is not None)
    watermark, boundary = edge
    return await _rollup_and_raw(conn, minute, watermark, boundary, metric, device_id, start, end, width,
                                 aggregate, timezone, data_kind)


async def _rollup_and_raw(conn: AsyncConnection, minute: MinuteRollup, watermark: datetime, boundary: datetime,
                          metric: Metric, device_id: str, start: datetime, end: datetime, width: timedelta,
                          aggregate: str, timezone: str, data_kind: str) -> _Served:
    """Buckets the rollup holds from the rollup; from raw readings the buckets it does not hold yet (a row
    stored after the watermark: late data) and the live edge from ``boundary``. No bucket is ever computed
    from both."""
    first = start - (start - _EPOCH) % FIVE_MINUTES  # the whole 5-minute bucket `from` falls in
    rolled_end = min(end, boundary)
    rollup_rows: list[dict[str, Any]] = []
    stale: list[datetime] = []
    if boundary > start:
        stale = await queries.unrolled_buckets(conn, metric.table, device_id, watermark, first, rolled_end, width,
                                               timezone)
        rollup_rows = await queries.minute_rollup_history(conn, minute, device_id, first, rolled_end, width,
                                                          timezone)
    raw = bucket_ranges(stale, width, timezone, start, rolled_end)
    if boundary < end:
        raw.append((max(start, boundary), end))
    raw_rows = await queries.bucketed_history_in(conn, metric, device_id, bounded(raw), width, aggregate, timezone,
                                                 data_kind)
    late = set(stale)
    points = [r | {"provisional": False} for r in rollup_rows if r["ts"] not in late]
    # raw rows of the gaps `bounded` closed are buckets the rollup holds: dropped
    points += [r | {"provisional": True} for r in raw_rows if r["ts"] in late or r["ts"] >= boundary]
    points.sort(key=lambda r: r["ts"])
    return _Served(points, segments(start, end, raw, minute.table, metric.table))


async def _from_averages(conn: AsyncConnection, averages: RollupSource, device_id: str, start: datetime,
                         end: datetime) -> _Served:
    """CEMS averages as stored, except the local days with readings they do not reflect yet: those are
    averaged from the readings by the processor's own code, not stored, and served provisional."""
    rows = await queries.rollup_history(conn, averages, device_id, start, end)
    late_days, computed = await run_blocking(conn, cems_averages.provisional_averages, device_id, start, end,
                                             averages.pollutant)
    day_starts = [a for a, _ in late_days]

    def late(ts: datetime) -> bool:
        i = bisect_right(day_starts, ts) - 1
        return i >= 0 and ts < late_days[i][1]

    points = [r | {"provisional": False} for r in rows if not late(r["ts"])]
    points += [{"ts": a.start, "value": a.avg_zs if averages.value_column == "avg_zs_mg_m3" else a.avg_meas,
                "count": a.n_valid, "status": a.status, "provisional": True}
               for a in computed if (a.pollutant, a.period, a.standard) == (
                   averages.pollutant, averages.period, averages.standard) and start <= a.start < end]
    points.sort(key=lambda r: r["ts"])
    raw = [(max(a, start), min(b, end)) for a, b in late_days if a < end and b > start]
    parts = segments(start, end, raw, averages.table, "cems_readings")
    # the averages keep their period and standard in the label: "cems_averages (1h, gb)"
    return _Served(points, parts, source_label(parts).replace(averages.table, averages.label))


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
                   from_=start, to=end, source=metric.table,
                   sources=_sources(segments(start, end, [(start, end)], None, metric.table)),
                   points=[HistoryPoint.model_validate(r) for r in rows], next_cursor=next_cursor)


def _sources(parts: list[Segment]) -> list[HistorySource]:
    return [HistorySource(from_=p.start, to=p.end, source=p.source, table=p.table) for p in parts]
