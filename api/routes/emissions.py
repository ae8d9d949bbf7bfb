"""Incinerator emissions: a plant's daily compliance report and its stored averages.

Thin: validates, then calls ``processors.compliance`` (which holds the SQL). Auth is applied where the
router is included (``app.include_router(router, dependencies=[Depends(require_role("viewer"))])``).
The routes are synchronous on purpose: the report code uses a blocking psycopg connection, and
FastAPI runs sync routes in its thread pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from sanitel.api.errors import ApiError, error_responses
from sanitel.processors import compliance
from sanitel.processors.cems_averages import local_day_bounds

from sanitel.db import connect
from sanitel.errors import ConfigError, SanitelError
from sanitel.settings import load_settings

router = APIRouter(prefix="/plants", tags=["emissions"], responses=error_responses(401, 403, 422))

PlantId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                              description="plant site id", examples=["shenzhen-laohukeng"])]
Day = Annotated[date, Query(description="local day of the plant, YYYY-MM-DD")]
Line = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                                   description="one line: line site id or CEMS device id")]


def get_conn() -> Iterator[psycopg.Connection]:
    """A connection per request from the settings' database URL (to be replaced by the API's pool)."""
    try:
        conn = connect(load_settings().effective_database_url, autocommit=True)
    except SanitelError as exc:
        raise ApiError(503, str(exc)) from None
    with conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(get_conn)]


@router.get("/{plant_id}/compliance", summary="Daily emission compliance (GB 18485-2014, EU 2010/75/EU)",
            responses={**error_responses(404), 200: {"content": {"text/csv": {}, "image/png": {}}}})
def plant_compliance(plant_id: PlantId, day: Day, conn: Conn, line: Line = None,
                     format: Annotated[Literal["json", "csv", "png"], Query()] = "json") -> Response:
    try:
        report = compliance.build_report(conn, plant_id, day, line)
    except ConfigError as exc:
        raise ApiError(409, f"the plant's limit overrides do not validate: {exc}", code="bad_limits") from None
    if not report["lines"] and not report["registered"]:
        raise ApiError(404, f"plant {plant_id!r} does not exist and has no CEMS averages")
    if format == "csv":
        return Response(compliance.report_csv(report), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{plant_id}-{day}.csv"'})
    if format == "png":
        series = compliance.half_hour_series(conn, plant_id, day, line)
        return Response(compliance.report_png(report, series), media_type="image/png")
    return JSONResponse(report)


@router.get("/{plant_id}/averages", summary="Stored CEMS averages of a plant's local day")
def plant_averages(plant_id: PlantId, day: Day, conn: Conn, line: Line = None,
                   period: Annotated[list[Literal["10min", "30min", "1h", "1d"]] | None, Query()] = None,
                   pollutant: Annotated[str | None, Query(pattern=r"^[a-z0-9]{1,8}$")] = None,
                   ) -> dict[str, Any]:
    tz = compliance.plant_timezone(conn, plant_id)
    start, end = local_day_bounds(day, tz)
    rows = compliance.fetch_averages(conn, plant_id, start, end, line, periods=period or ("10min", "30min", "1h", "1d"))
    if pollutant:
        rows = [r for r in rows if r["pollutant"] == pollutant]
    for r in rows:
        r["period_start"], r["period_end"] = r["period_start"].isoformat(), r["period_end"].isoformat()
    return {"plant_id": plant_id, "day": day.isoformat(), "timezone": tz, "items": rows}
