"""Incinerator emissions: a plant's daily compliance report (with each line's regulatory judgement), its annual
report, and its stored averages.

Thin: validates, then calls ``processors.compliance`` (which holds the SQL and the checks, shared with
``sanitel report emissions``). That code is blocking, so it runs in a worker thread on the request's pooled
connection (``api.blocking``), with the report's CSV and chart rendering. Neither route gives a verdict on
averages that lag the readings: the report marks such a line ``pending`` with the reason, the averages list
names its device under ``behind``.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from sanitel.api.blocking import run_blocking
from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import ApiError, error_responses
from sanitel.errors import ConfigError
from sanitel.processors import annual_report, compliance
from sanitel.processors.cems_averages import local_day_bounds

router = APIRouter(prefix="/plants", tags=["emissions"], responses=error_responses(401, 403, 422))

PlantId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                              description="plant site id", examples=["shenzhen-laohukeng"])]
Day = Annotated[date, Query(description="local day of the plant, YYYY-MM-DD")]
Line = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
                                   description="one line: line site id or CEMS device id")]


@router.get("/{plant_id}/compliance", summary="Daily emission compliance (GB 18485-2014, EU 2010/75/EU)",
            responses={**error_responses(404), 200: {"content": {"text/csv": {}, "image/png": {}}}})
async def plant_compliance(plant_id: PlantId, day: Day, conn: Db, _: Viewer, line: Line = None,
                           format: Annotated[Literal["json", "csv", "png"], Query()] = "json") -> Response:
    try:
        report = await run_blocking(conn, compliance.build_report, plant_id, day, line)
    except ConfigError as exc:
        raise ApiError(409, f"the plant's limit overrides do not validate: {exc}", code="bad_limits") from None
    if not report["lines"] and not report["registered"]:
        raise ApiError(404, f"plant {plant_id!r} does not exist and has no CEMS averages")
    if format == "csv":
        csv = await anyio.to_thread.run_sync(compliance.report_csv, report)
        return Response(csv, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{plant_id}-{day}.csv"'})
    if format == "png":
        series = await run_blocking(conn, compliance.half_hour_series, plant_id, day, line)
        png = await anyio.to_thread.run_sync(compliance.report_png, report, series)
        return Response(png, media_type="image/png")
    return JSONResponse(report)


@router.get("/{plant_id}/compliance/annual",
            summary="Annual emission report (2010/75/EU yearly rules, GB 18485-2014, MEE Order No. 10)",
            description="Per line and pollutant: EU daily values discarded for the measuring system (≤ 10 a year), "
                        "the 97 % column-B rule over the year's half-hours, CO's 97 %-of-days rule, daily "
                        "exceedances; GB days with 24-hour exceedances; Order No. 10 furnace-violation days, marked "
                        "hours against the 60 h cap, marks over their limit, marked dust above 150 mg/m³. Days not "
                        "ended yet are left out and counted as `pending_days`.",
            responses={**error_responses(404), 200: {"content": {"text/csv": {}}}})
async def plant_compliance_annual(plant_id: PlantId, conn: Db, _: Viewer,
                                  year: Annotated[int, Query(ge=1970, le=9998, description="local calendar year")],
                                  line: Line = None,
                                  format: Annotated[Literal["json", "csv"], Query()] = "json") -> Response:
    try:
        report = await run_blocking(conn, annual_report.build_annual, plant_id, year, line)
    except ConfigError as exc:
        raise ApiError(409, f"the plant's limit overrides do not validate: {exc}", code="bad_limits") from None
    if not report["lines"] and not report["registered"]:
        raise ApiError(404, f"plant {plant_id!r} does not exist and has no CEMS averages")
    if format == "csv":
        csv = await anyio.to_thread.run_sync(annual_report.annual_csv, report)
        return Response(csv, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{plant_id}-{year}.csv"'})
    return JSONResponse(report)


@router.get("/{plant_id}/averages", summary="Stored CEMS averages of a plant's local day",
            description="The averages the scheduled processor stored. `behind` lists the devices with readings "
                        "that those averages do not reflect yet (stored after they were computed), with the "
                        "reason: until the next pass, a missing or invalid period there is not final.")
async def plant_averages(plant_id: PlantId, day: Day, conn: Db, _: Viewer, line: Line = None,
                         period: Annotated[list[Literal["10min", "30min", "1h", "1d"]] | None, Query()] = None,
                         pollutant: Annotated[str | None, Query(pattern=r"^[a-z0-9]{1,8}$")] = None,
                         ) -> dict[str, Any]:
    tz = await run_blocking(conn, compliance.plant_timezone, plant_id)
    start, end = local_day_bounds(day, tz)
    rows = await run_blocking(conn, compliance.fetch_averages, plant_id, start, end, line,
                              periods=period or ("10min", "30min", "1h", "1d"))
    if pollutant:
        rows = [r for r in rows if r["pollutant"] == pollutant]
    for r in rows:
        r["period_start"], r["period_end"] = r["period_start"].isoformat(), r["period_end"].isoformat()
    # stored averages that lag the readings say so: these devices have readings they do not reflect yet
    late = await run_blocking(conn, compliance.averages_behind, plant_id, start, end, line)
    behind = [{"device_id": device_id, **compliance.behind_summary(b, tz)} for device_id, b in sorted(late.items())]
    return {"plant_id": plant_id, "day": day.isoformat(), "timezone": tz, "items": rows, "behind": behind}
