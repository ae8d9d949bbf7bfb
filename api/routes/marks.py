"""Operating-state marks of incinerator lines (issue 13): the plant sets them, corrects them, withdraws them.

A mark says a furnace line was not in normal operation (启炉 start-up, 停炉 shut-down, 故障 fault …) or its
monitoring system was not measuring (维护, 校准 …) over a time span, per the MEE marking rules (announcement 2019
No. 50); marked periods are judged under their own rules (processors/cems_marks.py). Marks are an audit trail: who
(the API key's name, never the client's say), when, why; a correction is a new mark that supersedes the old one,
and the database refuses to rewrite or delete a stored mark (migration 0080's trigger).

Writes need the supervisor role — the role that acknowledges and silences alerts: marking a line changes what the
alerts and the compliance report judge, as a silence changes what is notified. Thin: the checks and SQL are
``processors.cems_marks``'s, shared with ``sanitel marks``, run on the request's connection (``api.blocking``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from sanitel.api.blocking import run_blocking
from sanitel.api.deps import Db, Supervisor, Viewer
from sanitel.api.errors import ApiError, error_responses
from sanitel.api.models import Page
from sanitel.api.params import (
    DEFAULT_PAGE,
    ApiTime,
    Cursor,
    FromTime,
    Ident,
    Limit,
    ToTime,
    decode_cursor,
    encode_cursor,
    time_range,
)
from sanitel.processors import cems_marks
from sanitel.processors.cems_marks import KEEP, MAX_REASON, MarkConflict, MarkError, MarkInvalid, MarkNotFound

router = APIRouter(prefix="/plants", tags=["emissions"], responses=error_responses(401, 403, 422))

__all__ = ["add_line_mark", "correct_plant_mark", "list_plant_marks", "plant_mark_history", "router"]

PlantId = Annotated[Ident, Path(description="plant site id", examples=["shenzhen-laohukeng"])]
LinePath = Annotated[Ident, Path(description="the line: its site id or its CEMS device id", examples=["lhk-l1"])]
MarkId = Annotated[int, Path(ge=1, le=2**63 - 1, description="mark id", examples=[12])]
LIST_DEFAULT = timedelta(days=31)

# every mark of processors.cems_marks.MARKS (a unit test holds the two equal)
MarkCode = Literal["bake_out", "start_up", "shut_down", "shut", "fault", "accident",
                   "cms_maintenance", "cms_calibration", "cms_fault", "cms_outage"]
_MARK_HELP = ("furnace: bake_out 烘炉, start_up 启炉, shut_down 停炉, shut 停运, fault 故障, accident 事故; monitoring "
              "system: cms_maintenance 维护, cms_calibration 校准, cms_fault 设备故障, cms_outage 断电/通讯中断")


def _says_why(text: str) -> str:
    if not text.strip():
        raise ValueError("the reason must say why (it is blank)")
    return text


Reason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON, pattern=r"^[^\x00]*$"),
                   AfterValidator(_says_why)]


class MarkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "mark": "start_up", "starts_at": "2026-11-28T06:00:00+08:00", "ends_at": "2026-11-28T10:30:00+08:00",
        "reason": "cold start after the annual overhaul (work order 2026-118)"}]})
    mark: MarkCode = Field(description=_MARK_HELP)
    starts_at: ApiTime = Field(description="start, RFC 3339 with offset")
    ends_at: ApiTime | None = Field(None, description="end (exclusive); absent or null: still open — close it "
                                                      "later with a correction that sets `ends_at`")
    reason: Reason = Field(description="why the line is marked; who marked it is the API key's name")


class MarkCorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"ends_at": "2026-11-28T10:30:00+08:00", "reason": "furnace above 850 °C since 10:30: start-up over"},
        {"withdraw": True, "reason": "entered on the wrong line"}]})
    mark: MarkCode | None = Field(None, description="the corrected mark; absent keeps it")
    starts_at: ApiTime | None = Field(None, description="the corrected start; absent keeps it")
    ends_at: ApiTime | None = Field(None, description="the corrected end: a time closes or moves it, an explicit "
                                                      "null reopens the mark, absent keeps it")
    reason: Reason = Field(description="why it is corrected")
    withdraw: bool = Field(False, description="remove the mark (then give only `reason`)")


class MarkOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "mark_id": 12, "plant_id": "shenzhen-laohukeng", "line_id": "lhk-l1", "device_id": "LHK-L1-CEMS",
        "mark": "start_up", "mark_zh": "启炉", "kind": "furnace", "starts_at": "2026-11-27T22:00:00+00:00",
        "ends_at": "2026-11-28T02:30:00+00:00", "reason": "cold start after the annual overhaul",
        "source": "api", "created_by": "duty-supervisor", "created_at": "2026-11-27T22:05:00+00:00",
        "supersedes": None, "superseded_by": None, "withdrawn": False, "status": "current"}]})
    mark_id: int
    plant_id: str | None
    line_id: str | None
    device_id: str
    mark: MarkCode
    mark_zh: str = Field(description="the mark's name in the MEE marking rules")
    kind: Literal["furnace", "monitoring_system"]
    starts_at: str = Field(description="RFC 3339, UTC")
    ends_at: str | None = Field(description="RFC 3339, UTC; null: still open")
    reason: str
    source: Literal["api", "cli", "dau"]
    created_by: str = Field(description="API key name, CLI user, or the data unit")
    created_at: str
    supersedes: int | None = Field(description="the mark this one corrects")
    superseded_by: int | None = Field(description="the correction that replaced this one")
    withdrawn: bool = Field(description="this row withdraws the mark it supersedes")
    status: Literal["current", "superseded", "withdrawn"]


class MarkHistory(BaseModel):
    mark_id: int = Field(description="the mark asked about")
    current_mark_id: int | None = Field(description="the newest of the chain while it is in force; null when the "
                                                    "mark was withdrawn")
    items: list[MarkOut] = Field(description="the chain of corrections, oldest first")


def _out(mark: cems_marks.StoredMark) -> MarkOut:
    return MarkOut.model_validate(mark.as_json())


def _api_error(exc: MarkError, line_at: str = "path.line") -> ApiError:
    if isinstance(exc, MarkNotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, MarkConflict):
        return ApiError(409, str(exc))
    assert isinstance(exc, MarkInvalid)
    field = line_at if exc.field == "line" else f"body.{exc.field}"
    return ApiError(422, f"{field}: {exc.detail}", field=field)


@router.get("/{plant_id}/marks", response_model=Page[MarkOut], summary="A plant's operating-state marks",
            description="Marks overlapping [`from`, `to`) (default: the 31 days to now), by start. Without "
                        "`include_superseded` only the marks in force; with it every row of the audit trail, "
                        "corrected and withdrawn ones too.", responses=error_responses(404))
async def list_plant_marks(plant_id: PlantId, conn: Db, _: Viewer, start: FromTime = None, end: ToTime = None,
                           line: Annotated[Ident | None, Query(description="one line: site id or CEMS device id")]
                           = None, include_superseded: bool = False, limit: Limit = DEFAULT_PAGE,
                           cursor: Cursor = None) -> Page[MarkOut]:
    start, end = time_range(start, end, LIST_DEFAULT)
    after = decode_cursor(cursor, datetime, int) if cursor else None
    try:
        devices = ([await run_blocking(conn, cems_marks.line_device, plant_id, line)] if line is not None
                   else await run_blocking(conn, cems_marks.plant_mark_devices, plant_id))
        marks = await run_blocking(conn, cems_marks.list_marks, devices, start, end, include_superseded,
                                   after=(after[0], after[1]) if after else None, limit=limit)
    except MarkError as exc:
        raise _api_error(exc, line_at="query.line") from None
    items = [_out(m) for m in marks]
    last = marks[-1] if len(marks) == limit else None
    return Page(items=items, next_cursor=encode_cursor(last.starts_at, last.mark_id) if last else None)


@router.post("/{plant_id}/lines/{line}/marks", response_model=MarkOut, status_code=status.HTTP_201_CREATED,
             summary="Mark a line's operating state over a time span (supervisor)",
             description="Recorded with the API key's name as who set it; a mark is never edited afterwards, only "
                         "corrected (POST …/corrections). An open mark (no `ends_at`) is closed by a correction.",
             responses=error_responses(404))
async def add_line_mark(plant_id: PlantId, line: LinePath, body: MarkIn, conn: Db, who: Supervisor) -> MarkOut:
    try:
        device_id = await run_blocking(conn, cems_marks.line_device, plant_id, line)
        stored = await run_blocking(conn, cems_marks.add_mark, device_id=device_id, mark=body.mark,
                                    starts_at=body.starts_at, ends_at=body.ends_at, reason=body.reason,
                                    source="api", created_by=who.name)
    except MarkError as exc:
        raise _api_error(exc) from None
    return _out(stored)


@router.post("/{plant_id}/marks/{mark_id}/corrections", response_model=MarkOut,
             status_code=status.HTTP_201_CREATED, summary="Correct or withdraw a mark (supervisor)",
             description="Stores a new mark that supersedes this one (the fields given changed, the rest kept), or "
                         "with `withdraw` one that removes it. Only the newest mark of a history can be corrected: "
                         "an older one is 409, naming the newer.", responses=error_responses(404, 409))
async def correct_plant_mark(plant_id: PlantId, mark_id: MarkId, body: MarkCorrectionIn, conn: Db,
                             who: Supervisor) -> MarkOut:
    ends_at = body.ends_at if "ends_at" in body.model_fields_set else KEEP
    try:
        stored = await run_blocking(conn, cems_marks.correct_mark, mark_id, mark=body.mark, starts_at=body.starts_at,
                                    ends_at=ends_at, reason=body.reason, source="api", created_by=who.name,
                                    withdraw=body.withdraw, plant_id=plant_id)
    except MarkError as exc:
        raise _api_error(exc) from None
    return _out(stored)


@router.get("/{plant_id}/marks/{mark_id}/history", response_model=MarkHistory,
            summary="A mark's history: the mark and every correction of it, oldest first",
            responses=error_responses(404))
async def plant_mark_history(plant_id: PlantId, mark_id: MarkId, conn: Db, _: Viewer) -> MarkHistory:
    chain = await run_blocking(conn, cems_marks.mark_history, mark_id)
    if not chain or chain[0].plant_id != plant_id:
        raise ApiError(404, f"mark {mark_id} does not exist at plant {plant_id!r}")
    head = chain[-1]
    current_mark_id = None if head.withdrawn else head.mark_id
    return MarkHistory(mark_id=mark_id, current_mark_id=current_mark_id, items=[_out(m) for m in chain])
