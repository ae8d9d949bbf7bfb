"""Reports: the daily operations summary per district, as JSON or CSV."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import ApiError, error_responses
from sanitel.api.models import DistrictDay
from sanitel.api.params import Ident
from sanitel.api.queries import sites as site_queries
from sanitel.api.reports import daily_summary, to_models

router = APIRouter(prefix="/reports", tags=["reports"], responses=error_responses(401, 403, 422))

_CSV_EXAMPLE = "district_id,district,date,devices,devices_reporting,...\nfutian,Futian District,2024-05-01,120,117,...\n"


@router.get("/daily", response_model=list[DistrictDay],
            summary="Daily operations summary per district (JSON or CSV)",
            description="One row per district for the district's local calendar day: devices reporting, sweeping, "
                        "transfer-station throughput and worst boundary readings, deposits by category, camera "
                        "detections and alerts. `format=csv` returns the same rows as CSV.",
            responses={200: {"content": {"text/csv": {"example": _CSV_EXAMPLE}}}, 404: error_responses(404)[404]})
async def daily(
    conn: Db, _: Viewer,
    day: Annotated[date, Query(alias="date", description="local calendar day", examples=["2024-05-01"])],
    district_id: Annotated[Ident | None, Query(description="one district; default all")] = None,
    format: Literal["json", "csv"] = "json",
) -> Response | list[DistrictDay]:
    if not date(1970, 1, 1) <= day <= date(2199, 12, 31):
        raise ApiError(422, "date must be between 1970-01-01 and 2199-12-31", field="query.date")
    if district_id is not None and not await site_queries.site_exists(conn, district_id):
        raise ApiError(404, f"district {district_id!r} does not exist")
    frame = await daily_summary(conn, day, district_id)
    if format == "csv":
        return Response(frame.to_csv(index=False), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="sanitel-daily-{day}.csv"'})
    return to_models(frame)
