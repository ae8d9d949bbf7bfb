"""The sorting points' day (issue 14's console page): participation, deposits and AI-camera detections of every
sorting point under a district or estate, for one local calendar day."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query

from sanitel.api.console_models import SortingPointDay, SortingPointsReport
from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.params import Ident
from sanitel.api.queries import sites as site_queries
from sanitel.api.queries import sorting_points as queries

router = APIRouter(prefix="/reports", tags=["reports"], responses=error_responses(401, 403, 422))

# One answer, not a page: a district of Shenzhen has a few thousand points (DESIGN.md: 22,000 in the city); past
# this, the caller narrows to an estate.
MAX_POINTS = 5000


@router.get("/sorting-points", response_model=SortingPointsReport, responses=error_responses(404),
            summary="Participation, deposits and camera detections of the sorting points under a site, for a day",
            description="Every sorting point at or below `site_id` (a district, an estate or a point), for the local "
                        "calendar `day` in that site's time zone: households that deposited (distinct RFID cards) "
                        "against the point's registered `households` site parameter, deposits, weight per waste "
                        "category, and AI-camera detections by type.")
async def sorting_points_day(
    conn: Db, _: Viewer,
    site_id: Annotated[Ident, Query(description="district, estate or sorting point", examples=["futian"])],
    day: Annotated[date, Query(description="local calendar day", examples=["2024-05-01"])],
) -> SortingPointsReport:
    if not date(1970, 1, 2) <= day <= date(2199, 12, 30):
        raise ApiError(422, "day must be between 1970-01-02 and 2199-12-30", field="query.day")
    site = await site_queries.get_site(conn, site_id)
    if site is None:
        raise not_found("site", site_id)
    points = await site_queries.sorting_points_below(conn, site_id)
    if len(points) > MAX_POINTS:
        raise ApiError(422, f"{len(points)} sorting points are under {site_id!r}, more than {MAX_POINTS}: ask for "
                            "one estate or a smaller district", field="query.site_id")
    start, end = local_day(day, site["timezone"])
    ids = [p["site_id"] for p in points]
    deposits = {r["point_id"]: r for r in await queries.deposits_by_point(conn, ids, start, end)}
    detections: dict[str, dict[str, int]] = {}
    for row in await queries.detections_by_point(conn, ids, start, end):
        detections.setdefault(row["point_id"], {})[row["detection"]] = row["n"]
    return SortingPointsReport(day=day, timezone=site["timezone"], points=[
        point_day(p, deposits.get(p["site_id"]), detections.get(p["site_id"], {})) for p in points])


def local_day(day: date, timezone: str) -> tuple[datetime, datetime]:
    """[start, end) of the calendar day in the zone (23 or 25 hours long on a daylight-saving change)."""
    zone = ZoneInfo(timezone)
    return (datetime.combine(day, time(), zone), datetime.combine(day + timedelta(days=1), time(), zone))


def point_day(point: dict[str, Any], deposits: dict[str, Any] | None, detections: dict[str, int]) -> SortingPointDay:
    registered = registered_households(point["params"])
    active = deposits["households"] if deposits else 0
    return SortingPointDay(
        point_id=point["site_id"], name=point["name"], site_id=point["parent_id"] or point["site_id"],
        households_registered=registered,
        households_active=active, participation_rate=round(active / registered, 4) if registered else None,
        deposits=deposits["deposits"] if deposits else 0,
        weight_kg_by_category={k: float(v) for k, v in ((deposits or {}).get("weight_kg_by_category") or {}).items()},
        detections_by_type=detections)


def registered_households(params: Any) -> int | None:
    """The point's ``households`` site parameter (what ``sanitel run`` registers from the simulated point); None
    when it is missing or not a positive whole number."""
    value = params.get("households") if isinstance(params, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value
