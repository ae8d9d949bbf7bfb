"""The fleet on a map: every sweeper (later truck) at its newest position, for the console's fleet plot."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from sanitel.api.console_models import Extent, FleetKind, FleetPosition, FleetPositions
from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import error_responses
from sanitel.api.queries import fleet as queries

router = APIRouter(prefix="/fleet", tags=["devices"], responses=error_responses(401, 403, 422))


@router.get("/positions", response_model=FleetPositions, summary="Every device of a kind at its newest position",
            description="Position and state of charge from each device's newest telemetry row; `online` by the "
                        "device's inactivity timeout, as `/devices` says; `extent` bounds the positions given.")
async def fleet_positions(conn: Db, _: Viewer,
                          kind: Annotated[FleetKind, Query(description="device kind")] = "sweeper") -> FleetPositions:
    items = [FleetPosition.model_validate(r) for r in await queries.positions(conn, kind)]
    return FleetPositions(kind=kind, items=items, extent=extent_of(items))


def extent_of(items: list[FleetPosition]) -> Extent | None:
    placed = [(i.lat, i.lon) for i in items if i.lat is not None and i.lon is not None]
    if not placed:
        return None
    lats, lons = [p[0] for p in placed], [p[1] for p in placed]
    return Extent(min_lat=min(lats), max_lat=max(lats), min_lon=min(lons), max_lon=max(lons))
