"""Alerts, their history, acknowledgement and assignment. Every change made here is recorded and
announced by the alert engine's own history writer (``alerts.history.record``: an alert_history row and
a NOTIFY on ``sanitel_alerts`` carrying its id), so live streams see API changes and engine transitions
alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from sanitel.alerts import history
from sanitel.api.queries.sites import SUBTREE

_COLUMNS = """alert_id, rule_id, fingerprint, subject, device_id, site_id, kind, severity, state, labels,
              annotations, summary, value, threshold, peak_value, started_at, fired_at, resolved_at, resolved_by,
              acknowledged_by, acknowledged_at, ack_comment, assignee, silenced_by, reminders, updated_at"""


async def list_alerts(conn: AsyncConnection, *, states: Sequence[str] | None, severities: Sequence[str] | None,
                      site_id: str | None, kind: str | None, device_id: str | None, rule_id: str | None,
                      acknowledged: bool | None, start: datetime | None, end: datetime | None,
                      after: tuple[datetime, int] | None, limit: int) -> list[dict[str, Any]]:
    """Newest first (by start time), keyset-paged on (started_at, alert_id).

    Only the filters given become conditions, so each combination gets a plan that fits it (the list of
    open alerts, the common case, uses the partial index on open alerts)."""
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"limit": limit, "site_id": site_id}
    def cond(text: str, **values: Any) -> None:
        where.append(sql.SQL(text))
        params.update(values)

    if states is not None:
        cond("state = ANY(%(states)s)", states=states)
        if "resolved" not in states:
            cond("state <> 'resolved'")
    if severities is not None:
        cond("severity = ANY(%(sevs)s)", sevs=severities)
    if site_id is not None:
        cond("site_id IN (SELECT site_id FROM subtree)")
    if kind is not None:
        cond("kind = %(kind)s", kind=kind)
    if device_id is not None:
        cond("device_id = %(device_id)s", device_id=device_id)
    if rule_id is not None:
        cond("rule_id = %(rule_id)s", rule_id=rule_id)
    if acknowledged is not None:
        cond("(acknowledged_at IS NOT NULL) = %(acked)s", acked=acknowledged)
    if start is not None:
        cond("started_at >= %(start)s", start=start)
    if end is not None:
        cond("started_at < %(end)s", end=end)
    if after is not None:
        cond("(started_at, alert_id) < (%(a_ts)s, %(a_id)s)", a_ts=after[0], a_id=after[1])
    query = sql.SQL("{subtree} SELECT {columns} FROM alerts {where}"
                    " ORDER BY started_at DESC, alert_id DESC LIMIT %(limit)s").format(
        subtree=sql.SQL(SUBTREE if site_id is not None else ""), columns=sql.SQL(_COLUMNS),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def get_alert(conn: AsyncConnection, alert_id: int) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM alerts WHERE alert_id = %s", (alert_id,))
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
                WHERE alert_id = %(id)s AND state <> 'resolved' RETURNING {_COLUMNS}""",
            {"id": alert_id, "actor": actor, "comment": comment})
        alert = await cur.fetchone()
        if alert is not None:
            await conn.execute(*history.record(alert, alert["state"], "acknowledged", actor=actor, comment=comment))
    return alert


async def assign(conn: AsyncConnection, alert_id: int, actor: str, assignee: str | None) -> dict[str, Any] | None:
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"UPDATE alerts SET assignee = %(assignee)s, updated_at = now() WHERE alert_id = %(id)s"
            f" RETURNING {_COLUMNS}", {"id": alert_id, "assignee": assignee})
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
