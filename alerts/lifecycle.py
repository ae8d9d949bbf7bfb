"""Every state transition of an alert, in one place.

    (new) ──► pending ──► firing ──► resolved
       └──────────────────┘  │  ▲        ▲
                              └──┘        └── clear (by hand, with who and why)
         acknowledge · assign · remind · silenced — recorded, the state does not change

One open alert per fingerprint (rule + subject) — the database's unique index on open fingerprints
makes a double fire impossible even if two evaluators disagreed. Each transition writes an
``alert_history`` row and a NOTIFY on ``sanitel_alerts`` (``history.record``: live streams; delivered on
commit). Firing and reminders are *announced* unless a silence mutes them: ``last_notified_at`` and
``reminders`` record it on the alert. Notifications themselves go out per incident (``incidents.py``, run
after each pass): it groups the announced alerts of one place and time and writes one outbox row
(``notify/outbox.py``) per incident event. A resolve is announced only for an alert whose firing was.
Reminders repeat every ``repeat_interval`` until the alert is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.alerts import history
from sanitel.alerts.notify.outbox import Webhook
from sanitel.alerts.rules import BuiltinRule, Limits, RuleModel
from sanitel.alerts.silences import Silences
from sanitel.alerts.subjects import Subject
from sanitel.alerts.timeline import Episode
from sanitel.db import one_row


@dataclass
class Alert:
    """One row of ``alerts``."""

    alert_id: int
    rule_id: str
    fingerprint: str
    subject: str | None
    device_id: str | None
    site_id: str | None
    kind: str | None
    severity: str
    state: str
    labels: dict[str, str]
    summary: str
    value: float | None
    threshold: float | None
    peak_value: float | None
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    condition_ended_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_comment: str | None
    assignee: str | None
    last_notified_at: datetime | None
    resolved_by: str | None
    silenced_by: int | None
    reminders: int
    annotations: dict[str, Any] = field(default_factory=dict)
    incident_id: int | None = None  # the incident it belongs to (incidents.py)
    inhibited_by: dict[str, Any] | None = None  # the inhibition holding back its notification, while one does

    @property
    def open(self) -> bool:
        return self.state != "resolved"

    def as_json(self) -> dict[str, Any]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}



ALERT_COLUMNS = tuple(f.name for f in fields(Alert))
_SELECT = "SELECT " + ", ".join(ALERT_COLUMNS) + " FROM alerts"


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(**{k: row[k] for k in ALERT_COLUMNS})


def get_alert(conn: psycopg.Connection, alert_id: int) -> Alert | None:
    row = conn.cursor(row_factory=dict_row).execute(_SELECT + " WHERE alert_id = %s", (alert_id,)).fetchone()
    return _alert(row) if row else None


def alerts_for(conn: psycopg.Connection, fingerprints: list[str], since: datetime) -> dict[str, list[Alert]]:
    """Per fingerprint: its open alert and the alerts resolved after ``since``, oldest first."""
    out: dict[str, list[Alert]] = {}
    if not fingerprints:
        return out
    rows = conn.cursor(row_factory=dict_row).execute(
        _SELECT + " WHERE fingerprint = ANY(%s) AND (state <> 'resolved' OR resolved_at >= %s)"
                  " ORDER BY fingerprint, started_at, alert_id", (fingerprints, since)).fetchall()
    for row in rows:
        out.setdefault(row["fingerprint"], []).append(_alert(row))
    return out


def open_alerts(conn: psycopg.Connection, rule_id: str | None = None) -> list[Alert]:
    query = _SELECT + " WHERE state <> 'resolved'"
    params: tuple[str, ...] = ()
    if rule_id is not None:
        query, params = query + " AND rule_id = %s", (rule_id,)
    return [_alert(r) for r in conn.cursor(row_factory=dict_row).execute(query, params).fetchall()]


@dataclass(frozen=True)
class Candidate:
    """What evaluation found for one subject: an episode of a rule's condition and how to describe it."""

    rule: RuleModel | BuiltinRule
    subject: Subject
    fingerprint: str
    labels: dict[str, str]
    limits: Limits | None
    episode: Episode
    summary: str


def fingerprint(rule_id: str, subject_key: str) -> str:
    return f"{rule_id}|{subject_key}"


class Lifecycle:
    """Transitions within the caller's transaction. ``now`` is the wall-clock time of the pass."""

    def __init__(self, conn: psycopg.Connection, *, now: datetime, silences: Silences | None = None,
                 webhooks: list[Webhook] | None = None) -> None:
        # ``webhooks`` is accepted for callers written before incidents: the incident step addresses them now
        del webhooks
        self.conn = conn
        self.now = now
        self.silences = silences or Silences()
        self.transitions: list[tuple[int, str]] = []  # (alert_id, event) made in this pass

    # --- engine-driven transitions ------------------------------------------------------------
    def open(self, c: Candidate) -> Alert:
        """A new alert for an episode: pending, or firing straight away when it already qualified — or,
        for an episode already over (late data), stored resolved with both transitions in its history."""
        ep = c.episode
        state = "firing" if ep.fired else "pending"
        over = ep.fired and ep.resolved_at is not None  # stored resolved: it never holds the open slot
        row = self.conn.cursor(row_factory=dict_row).execute(
            """INSERT INTO alerts (rule_id, fingerprint, subject, device_id, site_id, kind, severity, state, labels,
                                   summary, value, threshold, peak_value, started_at, fired_at, resolved_at,
                                   condition_ended_at, annotations, updated_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               RETURNING """ + ", ".join(ALERT_COLUMNS),
            (c.rule.id, c.fingerprint, c.subject.key, c.subject.device_id, c.subject.site_id, c.subject.kind,
             c.rule.severity, "resolved" if over else state, Jsonb(c.labels), c.summary, ep.last_value,
             c.limits.threshold if c.limits else None, ep.peak, ep.start, ep.fire_at,
             max(ep.resolved_at, ep.start) if over and ep.resolved_at is not None else None, ep.ended_at,
             Jsonb(_annotations(c)), self.now)).fetchone()
        assert row is not None
        alert = _alert(row)
        self._history(alert, None, state, details={"device_time": _iso(ep.fire_at or ep.start)})
        if state == "firing":
            self._announce(alert, "firing")
        if over:
            self._history(alert, "firing", "resolved",
                          details={"device_time": _iso(ep.resolved_at), "reason": "condition cleared"})
            self._announce(alert, "resolved")
        return alert

    def fire(self, alert: Alert, c: Candidate) -> None:
        assert alert.state == "pending"
        self._refresh(alert, c)
        self._set(alert, state="firing", fired_at=c.episode.fire_at)
        self._history(alert, "pending", "firing", details={"device_time": _iso(c.episode.fire_at)})
        self._announce(alert, "firing")

    def resolve(self, alert: Alert, at: datetime, *, actor: str | None = None, comment: str | None = None,
                reason: str = "condition cleared") -> None:
        """→ resolved at device time ``at`` (or by hand: ``actor``); a pending alert resolves silently."""
        if not alert.open:
            return
        before = alert.state
        self._set(alert, state="resolved", resolved_at=max(at, alert.started_at), resolved_by=actor)
        self._history(alert, before, "resolved", actor=actor, comment=comment,
                      details={"device_time": _iso(at), "reason": reason})
        if before == "firing":
            self._announce(alert, "resolved")

    def update(self, alert: Alert, c: Candidate) -> None:
        """Refresh what the alert shows (value, peak, start after late data, keep-firing end); no history."""
        self._refresh(alert, c)

    def remind(self, alert: Alert, every_s: float) -> bool:
        """Announce a firing, unacknowledged alert again when its last announcement is older than
        ``every_s`` (or announce it for the first time when a silence held it back)."""
        if alert.state != "firing" or alert.acknowledged_at is not None:
            return False
        if alert.last_notified_at is None:
            if self.silences.muting(alert.labels, self.now):
                return False
            self._history(alert, "firing", "notified", details={"reason": "no longer silenced"})
            return self._announce(alert, "firing")
        if (self.now - alert.last_notified_at).total_seconds() < every_s:
            return False
        if self.silences.muting(alert.labels, self.now):
            return False
        self._set(alert, reminders=alert.reminders + 1)
        self._history(alert, "firing", "reminded", details={"reminder": alert.reminders})
        return self._announce(alert, "reminder")

    # --- people-driven transitions ------------------------------------------------------------
    def acknowledge(self, alert: Alert, actor: str, comment: str | None = None) -> None:
        self._set(alert, acknowledged_by=actor, acknowledged_at=self.now, ack_comment=comment)
        self._history(alert, alert.state, "acknowledged", actor=actor, comment=comment)

    def assign(self, alert: Alert, assignee: str | None, actor: str) -> None:
        self._set(alert, assignee=assignee)
        self._history(alert, alert.state, "assigned", actor=actor, details={"assignee": assignee})

    def clear(self, alert: Alert, actor: str, comment: str | None = None) -> None:
        """Resolve by hand (ThingsBoard's clear). The episode it belonged to will not raise it again;
        the next occurrence of the condition will."""
        self.resolve(alert, max(self.now, alert.started_at), actor=actor, comment=comment, reason="cleared by hand")

    # --- internals ----------------------------------------------------------------------------
    def _refresh(self, alert: Alert, c: Candidate) -> None:
        ep = c.episode
        self._set(alert, value=ep.last_value if ep.last_value is not None else alert.value,
                  peak_value=ep.peak if ep.peak is not None else alert.peak_value,
                  started_at=min(alert.started_at, ep.start), condition_ended_at=ep.ended_at,
                  summary=c.summary, labels=c.labels,
                  threshold=c.limits.threshold if c.limits else alert.threshold)

    def _set(self, alert: Alert, **changes: Any) -> None:
        changes = {k: v for k, v in changes.items() if getattr(alert, k) != v}
        if not changes:
            return
        for key, value in changes.items():
            setattr(alert, key, value)
        assignments = ", ".join(f"{k} = %s" for k in changes)
        values = [Jsonb(v) if isinstance(v, dict) else v for v in changes.values()]
        self.conn.execute(f"UPDATE alerts SET {assignments}, updated_at = %s WHERE alert_id = %s",
                          (*values, self.now, alert.alert_id))

    def _history(self, alert: Alert, from_state: str | None, to_state: str, *, actor: str | None = None,
                 comment: str | None = None, details: dict[str, Any] | None = None) -> int:
        row = self.conn.execute(*history.record(alert.as_json(), from_state, to_state, actor=actor, comment=comment,
                                                details=details, at=self.now)).fetchone()
        assert row is not None
        history_id = int(row[0])
        self.transitions.append((alert.alert_id, to_state))
        return history_id

    def _announce(self, alert: Alert, event: str) -> bool:
        """Announce the event unless a silence mutes it; True when announced. The incident step
        (``incidents.py``) turns announced alerts into one notification per incident."""
        if event != "resolved":
            silence = self.silences.muting(alert.labels, self.now, (alert.started_at, alert.resolved_at))
            if silence is not None:
                if alert.silenced_by != silence.silence_id:
                    self._set(alert, silenced_by=silence.silence_id)
                    self._history(alert, alert.state, "silenced", details={"silence_id": silence.silence_id})
                return False
        elif alert.last_notified_at is None:
            return False  # its firing was never announced (silenced): no resolve notice either
        if event != "resolved":
            self._set(alert, last_notified_at=self.now)  # what the incident step reads
        return True


def _annotations(c: Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {"rule_kind": c.rule.kind}
    if c.rule.standard:
        out["standard"] = c.rule.standard
    if c.rule.unverified:
        out["unverified"] = True
    if c.limits is not None:
        out["clear"] = c.limits.clear
        out.update({k: v for k, v in c.limits.context.items() if v is not None})
    return out


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# --- module-level helpers for callers outside a pass, on a blocking connection ----------------
# (the API, on its async connection, makes the same changes in ``api/queries/alerts.py``; both record
# them with ``history.record``)


def acknowledge(conn: psycopg.Connection, alert_id: int, actor: str, comment: str | None = None,
                now: datetime | None = None) -> Alert | None:
    """Acknowledge an open alert (stops reminders); None when it is not open."""
    return _by_hand(conn, alert_id, now, lambda lc, a: lc.acknowledge(a, actor, comment))


def assign(conn: psycopg.Connection, alert_id: int, assignee: str | None, actor: str,
           now: datetime | None = None) -> Alert | None:
    return _by_hand(conn, alert_id, now, lambda lc, a: lc.assign(a, assignee, actor))


def clear(conn: psycopg.Connection, alert_id: int, actor: str, comment: str | None = None,
          now: datetime | None = None) -> Alert | None:
    return _by_hand(conn, alert_id, now, lambda lc, a: lc.clear(a, actor, comment))


def _by_hand(conn: psycopg.Connection, alert_id: int, now: datetime | None, action: Any) -> Alert | None:
    with conn.transaction():
        row = conn.cursor(row_factory=dict_row).execute(
            _SELECT + " WHERE alert_id = %s AND state <> 'resolved' FOR UPDATE", (alert_id,)).fetchone()
        if row is None:
            return None
        alert = _alert(row)
        when = now or one_row(conn.execute("SELECT now()"))[0]
        action(Lifecycle(conn, now=when), alert)
        return alert
