"""Planned truck routes (issue 15): the ordered sorting points a collection truck visits in a shift and the site
where it tips. The clearance model and the truck alerts (``truck_off_route``) read them. Viewers read; supervisors
write. A plan is checked against the registry before it is stored: its truck is a registered truck, its points are
sorting points, its tip site a transfer station or plant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from psycopg import AsyncConnection

from sanitel.api.deps import Db, Supervisor, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Page, TruckRoute, TruckRoutePlan
from sanitel.api.params import DEFAULT_PAGE, Cursor, Ident, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import routes as queries

router = APIRouter(prefix="/routes", tags=["routes"], responses=error_responses(401, 403, 422))

RouteId = Annotated[Ident, Path(description="route id", examples=["R-futian-am-1"])]
POINT_KIND = "sorting_point"
TIP_KINDS = ("transfer_station", "plant")


@router.get("", response_model=Page[TruckRoute], summary="List planned truck routes")
async def list_routes(conn: Db, _: Viewer,
                      truck_id: Annotated[Ident | None, Query(description="only this truck's routes")] = None,
                      limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> Page[TruckRoute]:
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await queries.list_routes(conn, truck_id=truck_id, after=after, limit=limit)
    items = [TruckRoute.model_validate(r) for r in rows]
    return Page(items=items, next_cursor=encode_cursor(items[-1].route_id) if len(items) == limit else None)


@router.get("/{route_id}", response_model=TruckRoute, summary="One planned truck route",
            responses=error_responses(404))
async def get_route(route_id: RouteId, conn: Db, _: Viewer) -> TruckRoute:
    row = await queries.get_route(conn, route_id)
    if row is None:
        raise not_found("route", route_id)
    return TruckRoute.model_validate(row)


@router.put("/{route_id}", response_model=TruckRoute, summary="Create or replace a planned truck route (supervisor)",
            description="422 names the field: truck_id must be a registered truck, every point a sorting_point "
                        "site, tip_site_id a transfer_station or plant site.")
async def put_route(route_id: RouteId, plan: TruckRoutePlan, conn: Db, _: Supervisor) -> TruckRoute:
    await _check_plan(conn, plan)
    return TruckRoute.model_validate(await queries.put_route(conn, route_id, plan.model_dump()))


async def _check_plan(conn: AsyncConnection, plan: TruckRoutePlan) -> None:
    kind = await device_queries.device_kind(conn, plan.truck_id)
    if kind != "truck":
        what = "is not registered" if kind is None else f"is a {kind}"
        raise ApiError(422, f"truck_id {plan.truck_id!r} {what}; register it with kind 'truck' first",
                       field="body.truck_id")
    sites = [*plan.points, *([plan.tip_site_id] if plan.tip_site_id else [])]
    kinds = await queries.site_kinds(conn, sites)
    for i, point in enumerate(plan.points):
        if kinds.get(point) != POINT_KIND:
            raise ApiError(422, f"points[{i}] {point!r} {_is(kinds.get(point))}; a route visits sorting_point "
                                "sites", field=f"body.points.{i}")
    if plan.tip_site_id is not None and kinds.get(plan.tip_site_id) not in TIP_KINDS:
        raise ApiError(422, f"tip_site_id {plan.tip_site_id!r} {_is(kinds.get(plan.tip_site_id))}; a truck tips "
                            "at a transfer_station or plant site", field="body.tip_site_id")


def _is(kind: str | None) -> str:
    return "is not a registered site" if kind is None else f"is a {kind} site"
