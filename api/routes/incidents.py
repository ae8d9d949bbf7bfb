"""Incidents: alerts of one place and time grouped by the alert evaluator (``alerts/incidents.py``), root cause
first; list, detail, and a supervisor's acknowledgement of all members at once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from sanitel.api import models
from sanitel.api.deps import Db, Supervisor, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Acknowledge, Page, Severity
from sanitel.api.params import DEFAULT_PAGE, Cursor, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import incidents as queries

router = APIRouter(prefix="/incidents", tags=["alerts"], responses=error_responses(401, 403, 422))

IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1, description="incident id", examples=[5])]
IncidentState = Literal["open", "resolved"]
_TS = "2024-05-01T08:00:00+08:00"
_ALERT_EXAMPLE: dict[str, Any] = dict(models.Alert.model_json_schema()["examples"][0])


class Alert(models.Alert):
    """An alert with its incident and, while one holds it back, the inhibition (the API's ``Alert`` schema)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**_ALERT_EXAMPLE, "incident_id": 5,
                                                                "inhibited_by": None}]})

    incident_id: int | None = Field(None, description="the incident it belongs to (once it fired)")
    inhibited_by: dict[str, Any] | None = Field(
        None, description='what holds back its notification: {"rule", "source": "alert" | "mark" | "outage", …}; '
                          "null when nothing does")


class Incident(BaseModel):
    """Alerts of one place (sorting point, station, furnace line …) and time."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "incident_id": 5, "place": "sp-0001", "kind": "alerts", "title": "BIN-17: fire alarm in the bin (+1 related)",
        "root_alert_id": 17, "severity": "critical", "state": "open", "started_at": _TS, "opened_at": _TS,
        "resolved_at": None, "notified_at": _TS, "last_notified_at": _TS, "details": {}, "members": []}]})
    incident_id: int
    place: str = Field(description="a site id (the alerts' sorting point, station or line), or the subject of an "
                                   "alert without a site")
    kind: Literal["alerts", "station_outage"]
    title: str
    root_alert_id: int | None = Field(description="the member most likely to be the cause (incidents.yaml's order)")
    severity: Severity = Field(description="the most severe member's")
    state: IncidentState
    started_at: datetime = Field(description="device time the earliest member began")
    opened_at: datetime
    resolved_at: datetime | None
    notified_at: datetime | None = Field(description="its first notification (after the group wait), if any")
    last_notified_at: datetime | None
    details: dict[str, Any] = Field(description="a station outage: place, offline, devices")
    members: list[Alert] = Field(description="root first, then by causal rank")


@router.get("", response_model=Page[Incident], summary="List incidents with their alerts, newest first")
async def list_incidents(
    conn: Db, _: Viewer,
    state: Annotated[list[IncidentState] | None, Query(description="one or more states")] = None,
    limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> Page[Incident]:
    after = decode_cursor(cursor, datetime, int) if cursor else None
    rows = await queries.list_incidents(conn, states=state, members=None, after=after, limit=limit)
    return incident_page(rows, limit)


def incident_page(rows: list[dict[str, Any]], limit: int) -> Page[Incident]:
    items = [Incident.model_validate(r) for r in rows]
    last = items[-1] if len(items) == limit else None
    return Page(items=items, next_cursor=encode_cursor(last.opened_at, last.incident_id) if last else None)


@router.get("/{incident_id}", response_model=Incident, summary="One incident", responses=error_responses(404))
async def get_incident(incident_id: IncidentId, conn: Db, _: Viewer) -> Incident:
    row = await queries.get_incident(conn, incident_id)
    if row is None:
        raise not_found("incident", incident_id)
    return Incident.model_validate(row)


@router.post("/{incident_id}/acknowledge", response_model=Incident,
             summary="Acknowledge every open alert of an incident (supervisor)",
             description="Each open member is acknowledged as `POST /alerts/{id}/acknowledge` would (its history says "
                         "who, when, the comment and the incident). An incident with no open member: 409.",
             responses=error_responses(404, 409))
async def acknowledge(incident_id: IncidentId, body: Acknowledge, conn: Db, who: Supervisor) -> Incident:
    count = await queries.acknowledge(conn, incident_id, who.name, body.comment)
    if count is None:
        raise not_found("incident", incident_id)
    if count == 0:
        raise ApiError(409, f"incident {incident_id} has no open alert to acknowledge")
    row = await queries.get_incident(conn, incident_id)
    assert row is not None  # incidents are never deleted
    return Incident.model_validate(row)
