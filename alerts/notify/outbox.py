"""The notification outbox: a notification is written in the same transaction as the change that caused
it, and delivered after commit by the sinks (MQTT, webhooks). A crash between the two delivers late; a
rolled-back change delivers nothing.

One notification per incident event (``incidents.py``): ``firing`` (the first, after the incident's
group wait), ``updated`` (new members of an announced incident, at most every group interval),
``reminder`` (a member's reminder), ``resolved`` (every member resolved). The row's ``alert_id`` is the
incident's first listed member (its root, unless the root is silenced or inhibited).

Payload (MQTT message body; a webhook POST lists its ``members``, see ``webhook.py``)::

    {"event": "firing" | "updated" | "reminder" | "resolved",
     # the first listed member, as before incidents — per-alert consumers keep working:
     "alert_id": 17, "rule_id": "bin_fire", "fingerprint": "…", "state": "firing", "summary": "…",
     "labels": {…}, "device_id": …, "site_id": …, "kind": …, "value": …, "peak_value": …, "threshold": …,
     "started_at": "…", "fired_at": "…", "resolved_at": …, "acknowledged_by": …, "assignee": …,
     "incident_id": 5, "inhibited_by": null,
     "severity": "critical",               # the incident's: the most severe member's
     "incident": {"incident_id": 5, "place": "sp-1", "kind": "alerts" | "station_outage", "title": "…",
                  "severity": "critical", "state": "open" | "resolved", "root_alert_id": 17,
                  "started_at": "…", "opened_at": "…", "resolved_at": null, "members_total": 2},
     "members": [{alert, as above}, …]}    # root first, then by causal rank; at most 100

``members`` lists the alerts the notification is about: announced (not silenced) and not inhibited —
except that a station outage lists the device_offline alerts it inhibits.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb

from sanitel.alerts.silences import Matcher, MatcherError, parse_matchers
from sanitel.errors import ConfigError
from sanitel.urls import redact_url

WEBHOOK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LABEL_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
MAX_URL_CHARS = 2000
DEFAULT_GROUP_BY = ("rule_id", "site_id")


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str
    url: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    send_resolved: bool
    max_attempts: int
    secret: str = field(default="", repr=False)  # HMAC key of the X-Sanitel-Signature header (webhook.py)

    def wants(self, labels: Mapping[str, str], event: str) -> bool:
        if event == "resolved" and not self.send_resolved:
            return False
        return all(m.matches(labels) for m in self.matchers)


_WEBHOOK_COLUMNS = "webhook_id, url, matchers, group_by, send_resolved, max_attempts, secret"


def webhook_from_row(row: Sequence[Any]) -> Webhook | None:
    """A row of ``_WEBHOOK_COLUMNS``; None when its stored matchers no longer validate (it takes nothing then,
    rather than everything)."""
    wid, url, matchers, group_by, send_resolved, max_attempts, secret = row
    try:
        parsed = tuple(parse_matchers(matchers, allow_empty=True)) if matchers else ()
    except ConfigError:
        return None
    return Webhook(wid, url, parsed, tuple(group_by), send_resolved, max_attempts, secret)


def load_webhooks(conn: psycopg.Connection) -> list[Webhook]:
    rows = conn.execute(f"SELECT {_WEBHOOK_COLUMNS} FROM alert_webhooks WHERE enabled ORDER BY webhook_id").fetchall()
    return [w for w in map(webhook_from_row, rows) if w is not None]


def load_webhook(conn: psycopg.Connection, webhook_id: str) -> Webhook | None:
    """One enabled webhook, as stored now (None: deleted, disabled or unusable)."""
    row = conn.execute(f"SELECT {_WEBHOOK_COLUMNS} FROM alert_webhooks WHERE enabled AND webhook_id = %s",
                       (webhook_id,)).fetchone()
    return webhook_from_row(row) if row is not None else None


# --- management (CLI ``sanitel webhooks``, ``sanitel evaluator --webhook``; the API has the same checks) ---

class WebhookError(ConfigError):
    """A webhook definition that cannot be stored; ``field`` names the offending part (``url``,
    ``matchers.0.value``, …)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def new_secret() -> str:
    """A webhook's signing secret: 256 random bits (secrets.token_urlsafe), shown once at creation."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_webhook(webhook_id: str, url: str, matchers: Any = (), group_by: Sequence[str] = DEFAULT_GROUP_BY,
                  max_attempts: int = 10) -> list[dict[str, str]]:
    """Validate a webhook definition (WebhookError naming the field); returns the matchers as stored."""
    if not WEBHOOK_ID.match(webhook_id):
        raise WebhookError("webhook_id", f"webhook id {webhook_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
                                         "starting with a letter or digit")
    check_url(url)
    raw = list(matchers)
    try:
        parsed = parse_matchers(raw, allow_empty=True)
    except MatcherError as exc:
        raise WebhookError(f"matchers.{exc.index}.{exc.key}", str(exc)) from None
    except ConfigError as exc:
        raise WebhookError("matchers", str(exc)) from None
    for i, label in enumerate(group_by):
        if not LABEL_NAME.match(label):
            raise WebhookError(f"group_by.{i}", f"group_by {label!r} is not a label name (lower case, digits, '_')")
    if not 1 <= max_attempts <= 100:
        raise WebhookError("max_attempts", "max_attempts must be between 1 and 100")
    return [{"label": m.label, "op": m.op, "value": m.value} for m in parsed]


def check_url(url: str) -> None:
    shown = redact_url(url)
    if len(url) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise WebhookError("url", f"url {shown[:80]!r}: at most {MAX_URL_CHARS} characters, no spaces or control "
                                  "characters")
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # e.g. a port that is not a number, an unclosed IPv6 bracket
        usable = False
    if not usable:
        raise WebhookError("url", f"url {shown!r} must be http:// or https:// with a host (and a valid port)")


def create_webhook(conn: psycopg.Connection, webhook_id: str, url: str, *, matchers: Sequence[Mapping[str, str]] = (),
                   group_by: Sequence[str] = DEFAULT_GROUP_BY, send_resolved: bool = True,
                   max_attempts: int = 10) -> str | None:
    """Store a new webhook; returns its signing secret (show it once), or None when the id is taken."""
    stored = check_webhook(webhook_id, url, matchers, group_by, max_attempts)
    secret = new_secret()
    row = conn.execute(
        """INSERT INTO alert_webhooks (webhook_id, url, matchers, group_by, send_resolved, max_attempts, secret)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (webhook_id) DO NOTHING RETURNING webhook_id""",
        (webhook_id, url, Jsonb(stored), list(group_by), send_resolved, max_attempts, secret)).fetchone()
    return secret if row is not None else None


def upsert_webhook(conn: psycopg.Connection, webhook_id: str, url: str, *, matchers: Sequence[Mapping[str, str]] = (),
                   group_by: Sequence[str] = DEFAULT_GROUP_BY, send_resolved: bool = True,
                   max_attempts: int = 10) -> str | None:
    """Create the webhook, or update and re-enable it keeping its secret; returns the secret when it was
    created (show it once), None when it existed."""
    stored = check_webhook(webhook_id, url, matchers, group_by, max_attempts)
    row = conn.execute(
        """INSERT INTO alert_webhooks (webhook_id, url, matchers, group_by, send_resolved, max_attempts, secret)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (webhook_id) DO UPDATE SET url = EXCLUDED.url, matchers = EXCLUDED.matchers,
               group_by = EXCLUDED.group_by, send_resolved = EXCLUDED.send_resolved,
               max_attempts = EXCLUDED.max_attempts, enabled = true
           RETURNING (xmax = 0) AS created, secret""",
        (webhook_id, url, Jsonb(stored), list(group_by), send_resolved, max_attempts, new_secret())).fetchone()
    assert row is not None
    created, secret = row
    return str(secret) if created else None


def rotate_secret(conn: psycopg.Connection, webhook_id: str) -> str | None:
    """A new signing secret for the webhook (the old one stops at once); None when there is no such webhook."""
    secret = new_secret()
    row = conn.execute("UPDATE alert_webhooks SET secret = %s WHERE webhook_id = %s RETURNING webhook_id",
                       (secret, webhook_id)).fetchone()
    return secret if row is not None else None


def delete_webhook(conn: psycopg.Connection, webhook_id: str) -> bool:
    """Remove a webhook and its queued deliveries (ON DELETE CASCADE); a POST already under way is the last."""
    return conn.execute("DELETE FROM alert_webhooks WHERE webhook_id = %s", (webhook_id,)).rowcount == 1


def list_webhooks(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every webhook with its delivery counts — never its secret."""
    cur = conn.execute(
        """SELECT w.webhook_id, w.url, w.matchers, w.group_by, w.send_resolved, w.max_attempts, w.enabled, w.created_at,
                  count(*) FILTER (WHERE d.status = 'pending') AS pending,
                  count(*) FILTER (WHERE d.status = 'failed') AS failed
             FROM alert_webhooks w LEFT JOIN alert_webhook_deliveries d USING (webhook_id)
            GROUP BY w.webhook_id ORDER BY w.webhook_id""")
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def enqueue(conn: psycopg.Connection, payload: dict[str, Any], *, history_id: int | None,
            webhooks: Sequence[Webhook], incident_id: int | None = None) -> int:
    """Store one notification and a delivery per webhook that wants it (its matchers match the payload's
    labels or any member's); returns its id."""
    row = conn.execute(
        "INSERT INTO alert_notifications (alert_id, history_id, event, severity, payload, incident_id)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING notification_id",
        (payload["alert_id"], history_id, payload["event"], payload["severity"], Jsonb(payload),
         incident_id)).fetchone()
    assert row is not None
    notification_id = int(row[0])
    labels = [payload.get("labels") or {}, *((m.get("labels") or {}) for m in payload.get("members") or ())]
    wanted = [w.webhook_id for w in webhooks if any(w.wants(lab, payload["event"]) for lab in labels)]
    if wanted:
        conn.execute(
            "INSERT INTO alert_webhook_deliveries (notification_id, webhook_id)"
            " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING", (notification_id, wanted))
    return notification_id
