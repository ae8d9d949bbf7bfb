"""Incidents (kept by the alert evaluator, ``alerts/incidents.py``) with their member alerts, and a supervisor's
acknowledgement of an incident: every open member acknowledged, each recorded and announced by the alert engine's
own history writer, as ``acknowledge`` in ``alerts.py`` does for one alert."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from sanitel.alerts import history
from sanitel.api.queries.alerts import COLUMNS as ALERT_COLUMNS
from sanitel.api.queries.alerts import AlertFilters
from sanitel.api.queries.sites import SUBTREE

_COLUMNS = """incident_id, place, kind, title, root_alert_id, severity, state, started_at, opened_at, resolved_at,
              notified_at, last_notified_at, details, member_order"""


async def list_incidents(conn: AsyncConnection, *, states: Sequence[str] | None, members: AlertFilters | None,
                         after: tuple[datetime, int] | None, limit: int) -> list[dict[str, Any]]:
    """Newest first (by opening), keyset-paged on (opened_at, incident_id); with ``members``, only incidents with a
    member alert those filters take. Each with its ``members``, root first."""
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit}
    if states is not None:
        where.append(sql.SQL("i.state = ANY(%(i_states)s)"))
        params["i_states"] = list(states)
    if members is not None and members.where:
        # unqualified columns inside the subquery are the alert's (its FROM is nearest)
        where.append(sql.SQL("EXISTS (SELECT 1 FROM alerts WHERE alerts.incident_id = i.incident_id AND {})").format(
            sql.SQL(" AND ").join(members.where)))
        params.update(members.params)
    if after is not None:
        where.append(sql.SQL("(i.opened_at, i.incident_id) < (%(i_ts)s, %(i_id)s)"))
        params.update(i_ts=after[0], i_id=after[1])
    query = sql.SQL("{subtree} SELECT {columns} FROM incidents i {where}"
                    " ORDER BY i.opened_at DESC, i.incident_id DESC LIMIT %(limit)s").format(
        subtree=sql.SQL(SUBTREE if members is not None and members.subtree else ""), columns=sql.SQL(_COLUMNS),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await _with_members(conn, await cur.fetchall())


async def get_incident(conn: AsyncConnection, incident_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM incidents WHERE incident_id = %s", (incident_id,))
    row = await cur.fetchone()
    return (await _with_members(conn, [row]))[0] if row is not None else None


async def acknowledge(conn: AsyncConnection, incident_id: int, actor: str, comment: str | None) -> int | None:
    """Acknowledge every open member; returns how many were, or None when there is no such incident."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT incident_id FROM incidents WHERE incident_id = %s", (incident_id,))
        if await cur.fetchone() is None:
            return None
        await cur.execute(
            f"""UPDATE alerts SET acknowledged_by = %(actor)s, acknowledged_at = now(), ack_comment = %(comment)s,
                                 updated_at = now()
                WHERE incident_id = %(id)s AND state <> 'resolved' RETURNING {ALERT_COLUMNS}""",
            {"id": incident_id, "actor": actor, "comment": comment})
        acknowledged = await cur.fetchall()
        for alert in acknowledged:
            await conn.execute(*history.record(alert, alert["state"], "acknowledged", actor=actor, comment=comment,
                                               details={"incident_id": incident_id}))
    return len(acknowledged)


async def _with_members(conn: AsyncConnection, incidents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds ``members`` to each incident: in the evaluator's order (root first, then by causal rank), members it has
    not ordered yet after them by start."""
    if not incidents:
        return incidents
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE incident_id = ANY(%s) ORDER BY started_at, alert_id",
                      ([i["incident_id"] for i in incidents],))
    by_incident: dict[int, list[dict[str, Any]]] = {}
    for alert in await cur.fetchall():
        by_incident.setdefault(alert["incident_id"], []).append(alert)
    for incident in incidents:
        order = {alert_id: n for n, alert_id in enumerate(incident.pop("member_order") or [])}
        members = by_incident.get(incident["incident_id"], [])
        incident["members"] = sorted(members, key=lambda a: order.get(a["alert_id"], len(order)))  # stable
    return incidents
