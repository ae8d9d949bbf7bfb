"""Alerts, their history, acknowledgement and assignment. Every change made here is recorded and
announced by the alert engine's own history writer (``alerts.history.record``: an alert_history row and
a NOTIFY on ``sanitel_alerts`` carrying its id), so live streams see API changes and engine transitions
alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from sanitel.alerts import history
from sanitel.api.queries.sites import SUBTREE

COLUMNS = """alert_id, rule_id, fingerprint, subject, device_id, site_id, kind, severity, state, labels,
              annotations, summary, value, threshold, peak_value, started_at, fired_at, resolved_at, resolved_by,
              acknowledged_by, acknowledged_at, ack_comment, assignee, silenced_by, reminders, updated_at,
              incident_id, inhibited_by"""


@dataclass
class AlertFilters:
    """The alert list's filters as SQL conditions on ``alerts`` (unqualified columns) and their parameters;
    ``subtree`` when a site filter needs the site subtree CTE (``SUBTREE``)."""

    where: list[sql.Composable] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    subtree: bool = False

    def add(self, text: str, **values: Any) -> None:
        self.where.append(sql.SQL(text))
        self.params.update(values)


def alert_filters(*, states: Sequence[str] | None, severities: Sequence[str] | None, site_id: str | None,
                  kind: str | None, device_id: str | None, rule_id: str | None, acknowledged: bool | None,
                  start: datetime | None, end: datetime | None) -> AlertFilters:
    """Only the filters given become conditions, so each combination gets a plan that fits it (the list of
    open alerts, the common case, uses the partial index on open alerts)."""
    f = AlertFilters(params={"site_id": site_id}, subtree=site_id is not None)
    if states is not None:
        f.add("state = ANY(%(states)s)", states=states)
        if "resolved" not in states:
            f.add("state <> 'resolved'")
    if severities is not None:
        f.add("severity = ANY(%(sevs)s)", sevs=severities)
    if site_id is not None:
        f.add("site_id IN (SELECT site_id FROM subtree)")
    if kind is not None:
        f.add("kind = %(kind)s", kind=kind)
    if device_id is not None:
        f.add("device_id = %(device_id)s", device_id=device_id)
    if rule_id is not None:
        f.add("rule_id = %(rule_id)s", rule_id=rule_id)
    if acknowledged is not None:
        f.add("(acknowledged_at IS NOT NULL) = %(acked)s", acked=acknowledged)
    if start is not None:
        f.add("started_at >= %(start)s", start=start)
    if end is not None:
        f.add("started_at < %(end)s", end=end)
    return f


async def list_alerts(conn: AsyncConnection, filters: AlertFilters, *, after: tuple[datetime, int] | None,
                      limit: int) -> list[dict[str, Any]]:
    """Newest first (by start time), keyset-paged on (started_at, alert_id)."""
    where = list(filters.where)
    params = {**filters.params, "limit": limit}
    if after is not None:
        where.append(sql.SQL("(started_at, alert_id) < (%(a_ts)s, %(a_id)s)"))
        params.update(a_ts=after[0], a_id=after[1])
    query = sql.SQL("{subtree} SELECT {columns} FROM alerts {where}"
                    " ORDER BY started_at DESC, alert_id DESC LIMIT %(limit)s").format(
        subtree=sql.SQL(SUBTREE if filters.subtree else ""), columns=sql.SQL(COLUMNS),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def get_alert(conn: AsyncConnection, alert_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {COLUMNS} FROM alerts WHERE alert_id = %s", (alert_id,))
    return await cur.fetchone()


async def alert_history(conn: AsyncConnection, alert_id: int) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT id, alert_id, at, from_state, to_state, actor, comment, details"
                      " FROM alert_history WHERE alert_id = %s ORDER BY at, id", (alert_id,))
    return await cur.fetchall()


async def acknowledge(conn: AsyncConnection, alert_id: int, actor: str, comment: str | None
                      ) -> dict[str, Any] | None:
    """Acknowledge an open alert; None when it is not open (resolved, or does not exist)."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"""UPDATE alerts SET acknowledged_by = %(actor)s, acknowledged_at = now(), ack_comment = %(comment)s,
                                 updated_at = now()
                WHERE alert_id = %(id)s AND state <> 'resolved' RETURNING {COLUMNS}""",
            {"id": alert_id, "actor": actor, "comment": comment})
        alert = await cur.fetchone()
        if alert is not None:
            await conn.execute(*history.record(alert, alert["state"], "acknowledged", actor=actor, comment=comment))
    return alert


async def resolve_by_hand(conn: AsyncConnection, alert_id: int, actor: str, comment: str | None
                          ) -> dict[str, Any] | None:
    """Resolve an open alert by hand — what ``alerts.lifecycle.Lifecycle.clear`` does in the engine (ThingsBoard's
    clear): the evaluator does not raise it again for the episode it belongs to, only for the condition's next
    occurrence. None when it is not open."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT state FROM alerts WHERE alert_id = %s AND state <> 'resolved' FOR UPDATE",
                          (alert_id,))
        before = await cur.fetchone()
        if before is None:
            return None
        await cur.execute(
            f"""UPDATE alerts SET state = 'resolved', resolved_at = greatest(now(), started_at),
                                 resolved_by = %(actor)s, updated_at = now()
                WHERE alert_id = %(id)s RETURNING {COLUMNS}""", {"id": alert_id, "actor": actor})
        alert = await cur.fetchone()
        assert alert is not None  # locked above
        await conn.execute(*history.record(alert, before["state"], "resolved", actor=actor, comment=comment,
                                           details={"reason": "cleared by hand"}))
    return alert


async def assign(conn: AsyncConnection, alert_id: int, actor: str, assignee: str | None) -> dict[str, Any] | None:
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"UPDATE alerts SET assignee = %(assignee)s, updated_at = now() WHERE alert_id = %(id)s"
            f" RETURNING {COLUMNS}", {"id": alert_id, "assignee": assignee})
        alert = await cur.fetchone()
        if alert is not None:
            await conn.execute(*history.record(alert, alert["state"], "assigned", actor=actor,
                                               details={"assignee": assignee}))
    return alert


async def firing_counts(conn: AsyncConnection) -> list[tuple[str, str, int]]:
    """(state, severity, count) of open alerts, for /metrics."""
    cur = await conn.execute(
        "SELECT state, severity, count(*)::int FROM alerts WHERE state <> 'resolved' GROUP BY 1, 2")
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]
