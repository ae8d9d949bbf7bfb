"""Alerts: filter and page (each with its incident; or grouped by incident), detail, history, acknowledge, assign,
resolve by hand, and the live stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from psycopg import AsyncConnection

from sanitel.api.deps import Context, Db, Supervisor, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Acknowledge, AlertHistoryEntry, AlertState, Assign, DeviceKind, Page, Severity
from sanitel.api.params import DEFAULT_PAGE, Cursor, FromTime, Ident, Limit, ToTime, decode_cursor, encode_cursor
from sanitel.api.queries import alerts as queries
from sanitel.api.queries import incidents as incident_queries
from sanitel.api.routes.incidents import Alert, Incident, incident_page
from sanitel.api.stream import AlertBroadcaster, matches, sse_frame

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=error_responses(401, 403, 422))

AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="alert id", examples=[17])]
KEEPALIVE_S = 15.0
_SSE_EXAMPLE = 'id: 1\nevent: alert\ndata: {"event": "acknowledged", "alert": {"alert_id": 17}}\n\n'


@router.get("", response_model=Page[Alert] | Page[Incident], summary="List alerts, newest first",
            description="Each alert names its incident (`incident_id`) and, while one holds back its notification, "
                        "the inhibition (`inhibited_by`). With `group=incident`: the incidents (newest first) that have "
                        "an alert the filters take, each with all its alerts inside, root first — as `/incidents`.")
async def list_alerts(
    conn: Db, _: Viewer,
    state: Annotated[list[AlertState] | None, Query(description="one or more states")] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more severities")] = None,
    site_id: Annotated[Ident | None, Query(description="alerts at this site or below it")] = None,
    kind: DeviceKind | None = None,
    device_id: Ident | None = None,
    rule_id: Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00]*$")] = None,
    acknowledged: bool | None = None,
    from_: FromTime = None, to: ToTime = None,
    limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
    group: Annotated[Literal["incident"] | None, Query(description="`incident`: incidents with their alerts")] = None,
) -> Page[Alert] | Page[Incident]:
    if from_ is not None and to is not None and from_ >= to:
        raise ApiError(422, "`from` must be before `to`", field="query.from")
    after = decode_cursor(cursor, datetime, int) if cursor else None
    filters = queries.alert_filters(states=state, severities=severity, site_id=site_id, kind=kind, device_id=device_id,
                                    rule_id=rule_id, acknowledged=acknowledged, start=from_, end=to)
    if group == "incident":
        found = await incident_queries.list_incidents(conn, states=None, members=filters, after=after, limit=limit)
        return incident_page(found, limit)
    rows = await queries.list_alerts(conn, filters, after=after, limit=limit)
    items = [Alert.model_validate(r) for r in rows]
    last = items[-1] if len(items) == limit else None
    return Page(items=items, next_cursor=encode_cursor(last.started_at, last.alert_id) if last else None)


@router.get(
    "/stream", summary="Live alert changes (Server-Sent Events)",
    description="`text/event-stream`. Each alert change arrives as `event: alert` whose data is the JSON the "
                "alert engine announced (`{\"event\": …, \"alert\": {…}}`). `event: resync` means changes may "
                "have been missed (re-fetch `/alerts`); `event: overflow` means this client read too slowly and "
                "the stream ends. A comment line is sent every 15 s to keep proxies from closing the stream.",
    response_class=StreamingResponse,
    responses={503: error_responses(503)[503], 200: {"content": {"text/event-stream": {"example": _SSE_EXAMPLE}}}})
async def alert_stream(
    request: Request, ctx: Context, _: Viewer,
    severity: Annotated[list[Severity] | None, Query()] = None,
    site_id: Annotated[list[Ident] | None, Query(description="exact site ids")] = None,
    device_id: Annotated[list[Ident] | None, Query()] = None,
    kind: Annotated[list[DeviceKind] | None, Query()] = None,
) -> StreamingResponse:
    filters = {"severity": _set(severity), "site_id": _set(site_id), "device_id": _set(device_id),
               "kind": _set(kind)}
    if not await ctx.alert_stream.ready(timeout=5):
        raise ApiError(503, "the alert stream cannot reach the database; retry shortly", code="unavailable",
                       headers={"Retry-After": "5"})
    return StreamingResponse(_events(request, ctx.alert_stream, filters), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _set(values: Sequence[str] | None) -> set[str] | None:
    return set(values) if values else None


async def _events(request: Request, broadcaster: AlertBroadcaster, filters: dict[str, set[str] | None]
                  ) -> AsyncIterator[bytes]:
    ids = itertools.count(1)
    async with broadcaster.subscribe() as subscription:
        yield b": listening\n\n"  # tells the client the subscription is live
        while not await request.is_disconnected():
            try:
                event = await asyncio.wait_for(subscription.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if event.event == "alert" and not matches(event.data, filters):
                continue
            yield sse_frame(event, next(ids))
            if event.event == "overflow":
                return


@router.get("/{alert_id}", response_model=Alert, summary="One alert", responses=error_responses(404))
async def get_alert(alert_id: AlertId, conn: Db, _: Viewer) -> Alert:
    row = await queries.get_alert(conn, alert_id)
    if row is None:
        raise not_found("alert", alert_id)
    return Alert.model_validate(row)


@router.get("/{alert_id}/history", response_model=list[AlertHistoryEntry],
            summary="Every transition of an alert, oldest first", responses=error_responses(404))
async def alert_history(alert_id: AlertId, conn: Db, _: Viewer) -> list[AlertHistoryEntry]:
    if await queries.get_alert(conn, alert_id) is None:
        raise not_found("alert", alert_id)
    return [AlertHistoryEntry.model_validate(r) for r in await queries.alert_history(conn, alert_id)]


@router.post("/{alert_id}/acknowledge", response_model=Alert, summary="Acknowledge an open alert (supervisor)",
             description="Stops reminders; recorded in the alert's history with who, when and the comment. "
                         "Acknowledging again replaces the comment. A resolved alert cannot be acknowledged (409).",
             responses=error_responses(404, 409))
async def acknowledge(alert_id: AlertId, body: Acknowledge, conn: Db, who: Supervisor) -> Alert:
    row = await queries.acknowledge(conn, alert_id, who.name, body.comment)
    if row is None:
        raise await _not_open(conn, alert_id)
    return Alert.model_validate(row)


@router.post("/{alert_id}/assign", response_model=Alert, summary="Assign an alert to someone (supervisor)",
             responses=error_responses(404))
async def assign(alert_id: AlertId, body: Assign, conn: Db, who: Supervisor) -> Alert:
    row = await queries.assign(conn, alert_id, who.name, body.assignee)
    if row is None:
        raise not_found("alert", alert_id)
    return Alert.model_validate(row)


@router.post("/{alert_id}/resolve", response_model=Alert, summary="Resolve an open alert by hand (supervisor)",
             description="For a condition the supervisor knows is over (a fire put out, a sensor replaced) before "
                         "the data shows it. Recorded in the history with who, when and the comment; `resolved_by` "
                         "names who. The evaluator does not raise it again for the same episode, only for the "
                         "condition's next occurrence. A resolved alert cannot be resolved again (409).",
             responses=error_responses(404, 409))
async def resolve(alert_id: AlertId, body: Acknowledge, conn: Db, who: Supervisor) -> Alert:
    row = await queries.resolve_by_hand(conn, alert_id, who.name, body.comment)
    if row is None:
        raise await _not_open(conn, alert_id, "resolved")
    return Alert.model_validate(row)


async def _not_open(conn: AsyncConnection, alert_id: int, action: str = "acknowledged") -> ApiError:
    if await queries.get_alert(conn, alert_id) is None:
        return not_found("alert", alert_id)
    return ApiError(409, f"alert {alert_id} is resolved; only pending or firing alerts can be {action}")
