"""Reports of issue 15: the daily clearance report of a district or street, and the weekly street sanitation
index (docs/sanitation-index.md). JSON, or CSV with ``format=csv`` or ``Accept: text/csv``. Viewer role.

Both are computed when asked, as of the request's instant: a day or week still running says so (``day_over``,
``pending`` / ``overdue`` statuses), a point is never "missed" before its day has ended, and never on a deadline the
fleet had not reported by (``no_data``: sanitel/clearance.py, the alert ``point_not_cleared``'s definition)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, Response

from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.params import Ident
from sanitel.api.queries import clearance as queries
from sanitel.processors.clearance import report_csv
from sanitel.processors.sanitation_index import index_csv, parse_week

router = APIRouter(prefix="/reports", tags=["reports"], responses=error_responses(401, 403, 422))

Format = Annotated[Literal["json", "csv"] | None, Query(description="json or csv (default: by the Accept header)")]
Accept = Annotated[str | None, Header(include_in_schema=False)]


def _wants_csv(format: str | None, accept: str | None) -> bool:
    if format is not None:
        return format == "csv"
    return accept is not None and "text/csv" in accept and "application/json" not in accept


def _csv(text: str, filename: str) -> Response:
    return Response(text, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/clearance", summary="Daily clearance of a district or street (issue 15)",
            description="Per sorting point and category: scheduled, on time, late, missed (pending / overdue while "
                        "the day runs), or no_data when no truck of the fleet had reported between the day's start "
                        "and the deadline (counted apart: neither on time nor missed, not in the on-time share); "
                        "per street the counts and on-time share; per planned truck route the points "
                        "visited in plan order; per category the tonnage lifted at the points against the net "
                        "received at the area's weighbridges. CSV: one table, chosen by `section`.",
            responses={**error_responses(404), 200: {"content": {"text/csv": {}}}})
async def clearance_report(
    conn: Db, _: Viewer,
    site_id: Annotated[Ident, Query(description="a district, a street (estate / urban village) or any site above "
                                                "sorting points")],
    day: Annotated[date, Query(description="local day of the site, YYYY-MM-DD")],
    format: Format = None, accept: Accept = None,
    section: Annotated[Literal["points", "streets", "routes", "tonnage"], Query(
        description="the table a CSV holds")] = "points",
) -> Response:
    if not date(1970, 1, 1) <= day <= date(2199, 12, 31):
        raise ApiError(422, "day must be between 1970-01-01 and 2199-12-31", field="query.day")
    report = await queries.clearance_report(conn, site_id, day, datetime.now(UTC))
    if report is None:
        raise not_found("site", site_id)
    if _wants_csv(format, accept):
        text = await anyio.to_thread.run_sync(report_csv, report, section)
        return _csv(text, f"clearance-{site_id}-{day}-{section}.csv")
    return JSONResponse(report)


@router.get("/sanitation-index", summary="Weekly street sanitation index, ranked (issue 15)",
            description="Per street (estate / urban village) at or below `site_id` (default: all): five components "
                        "0-100 (on-time clearance, bin-overflow hours, odour and noise exceedance hours at the "
                        "district's stations, sweeper coverage), their weighted index, rank and change from the "
                        "previous week. Formulas and weights: docs/sanitation-index.md.",
            responses={**error_responses(404), 200: {"content": {"text/csv": {}}}})
async def sanitation_index(
    conn: Db, _: Viewer,
    week: Annotated[str, Query(max_length=10, description="ISO week, YYYY-Www", examples=["2026-W48"])],
    site_id: Annotated[Ident | None, Query(description="district or street whose streets to rank")] = None,
    format: Format = None, accept: Accept = None,
) -> Response:
    try:
        monday = parse_week(week)
    except ValueError as exc:
        raise ApiError(422, str(exc), field="query.week") from None
    if not date(1970, 1, 5) <= monday <= date(2199, 12, 23):
        raise ApiError(422, "week must be between 1970 and 2199", field="query.week")
    if site_id is not None and not await queries.site_exists(conn, site_id):
        raise not_found("site", site_id)
    report: dict[str, Any] = await queries.sanitation_index_report(conn, site_id, monday, datetime.now(UTC))
    if _wants_csv(format, accept):
        text = await anyio.to_thread.run_sync(index_csv, report)
        return _csv(text, f"sanitation-index-{report['week']}.csv")
    return JSONResponse(report)
