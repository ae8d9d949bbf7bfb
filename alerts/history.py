"""The one writer of alert history. Every transition of an alert — made by the engine (``lifecycle.py``)
or by a person through the API (acknowledge, assign) — is an ``alert_history`` row plus a NOTIFY on
``sanitel_alerts`` that carries the row's id, written by one statement in the caller's transaction (so
the notice goes out on commit, and never for a rolled-back change).

NOTIFY payload: ``{"event", "actor", "history_id", "alert": {…}}`` with the alert as the writer holds it;
when that would not fit PostgreSQL's 8000-byte payload limit, only the fields that identify the alert.

The statement is returned rather than run, so the engine's blocking connection and the API's async one
execute the same SQL: ``conn.execute(*record(...))`` yields one row, ``(history_id,)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from psycopg.types.json import Jsonb

NOTIFY_CHANNEL = "sanitel_alerts"
_NOTIFY_LIMIT = 7000  # PostgreSQL's NOTIFY payload limit is 8000 bytes; the history id adds at most 19 digits
_IDENTIFYING = ("alert_id", "rule_id", "fingerprint", "device_id", "site_id", "kind", "severity", "state")

# The notice is assembled around the new row's id in SQL, since the id exists only once the row does.
_RECORD = """
WITH entry AS (
    INSERT INTO alert_history (alert_id, at, from_state, to_state, actor, comment, details)
    VALUES (%(alert_id)s, coalesce(%(at)s::timestamptz, now()), %(from_state)s, %(to_state)s, %(actor)s,
            %(comment)s, %(details)s)
    RETURNING id)
SELECT id, pg_notify(%(channel)s, %(head)s || id || %(tail)s) FROM entry"""


class Statement(NamedTuple):
    query: str
    params: dict[str, Any]


def record(alert: Mapping[str, Any], from_state: str | None, to_state: str, *, actor: str | None = None,
           comment: str | None = None, details: Mapping[str, Any] | None = None,
           at: datetime | None = None) -> Statement:
    """The statement that records ``alert``'s transition to ``to_state`` and announces it. ``at`` is
    when it happened (None: the database's transaction time)."""
    head, tail = _notice(alert, to_state, actor)
    return Statement(_RECORD, {
        "alert_id": alert["alert_id"], "at": at, "from_state": from_state, "to_state": to_state, "actor": actor,
        "comment": comment, "details": Jsonb(dict(details or {})), "channel": NOTIFY_CHANNEL,
        "head": head, "tail": tail})


def _notice(alert: Mapping[str, Any], event: str, actor: str | None) -> tuple[str, str]:
    """The NOTIFY payload's JSON text before and after the history id."""
    shown = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in alert.items()}
    head = json.dumps({"event": event, "actor": actor})[:-1] + ', "history_id": '
    tail = ', "alert": ' + json.dumps(shown, default=str) + "}"
    if len(head) + len(tail) > _NOTIFY_LIMIT:  # large labels or summary: send what identifies the alert
        tail = ', "alert": ' + json.dumps({k: shown.get(k) for k in _IDENTIFYING}, default=str) + "}"
    return head, tail
