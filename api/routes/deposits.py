"""Bin deposits per household (RFID card) and per sorting point, with totals by waste category."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path
from psycopg import AsyncConnection

from sanitel.api.deps import Db, Viewer
from sanitel.api.errors import error_responses
from sanitel.api.models import CategoryTotal, Deposit, DepositReport
from sanitel.api.params import (
    DEFAULT_PAGE,
    Cursor,
    FromTime,
    Ident,
    Limit,
    ToTime,
    decode_cursor,
    encode_cursor,
    time_range,
)
from sanitel.api.queries import deposits as queries
from sanitel.api.queries.deposits import Scope

router = APIRouter(prefix="/deposits", tags=["deposits"], responses=error_responses(401, 403, 422))

_DEFAULT_RANGE = timedelta(days=30)
_HELP = "`from` defaults to 30 days before `to`, `to` to now; totals cover the whole range, items are paged."


@router.get("/households/{household_id}", response_model=DepositReport, response_model_by_alias=True,
            summary="Deposits of one household, with totals by category", description=_HELP)
async def household_deposits(
    household_id: Annotated[Ident, Path(description="RFID card id", examples=["HH-0042"])],
    conn: Db, _: Viewer, from_: FromTime = None, to: ToTime = None, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> DepositReport:
    return await _report(conn, "household", household_id, from_, to, limit, cursor)


@router.get("/points/{point_id}", response_model=DepositReport, response_model_by_alias=True,
            summary="Deposits at one sorting point, with totals by category", description=_HELP)
async def point_deposits(
    point_id: Annotated[Ident, Path(description="sorting point id", examples=["sp-futian-0001"])],
    conn: Db, _: Viewer, from_: FromTime = None, to: ToTime = None, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> DepositReport:
    return await _report(conn, "point", point_id, from_, to, limit, cursor)


async def _report(conn: AsyncConnection, scope: Scope, ident: str, from_: datetime | None, to: datetime | None,
                  limit: int, cursor: str | None) -> DepositReport:
    start, end = time_range(from_, to, default=_DEFAULT_RANGE)
    after = decode_cursor(cursor, datetime, str, int) if cursor else None
    totals, households = await queries.deposit_totals(conn, scope, ident, start, end)
    rows = await queries.deposit_items(conn, scope, ident, start, end, after, limit)
    last = rows[-1] if len(rows) == limit else None
    return DepositReport(
        scope=scope, id=ident, from_=start, to=end, households=households,
        deposits=sum(t["deposits"] for t in totals), weight_kg=round(sum(t["weight_kg"] for t in totals), 3),
        totals=[CategoryTotal.model_validate(t) for t in totals], items=[Deposit.model_validate(r) for r in rows],
        next_cursor=encode_cursor(last["ts"], last["device_id"], last["seq"]) if last else None)
