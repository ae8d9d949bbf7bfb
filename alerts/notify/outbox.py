"""The notification outbox: a notification is written in the same transaction as the transition that
caused it, and delivered after commit by the sinks (MQTT, webhooks). A crash between the two delivers
late; a rolled-back pass delivers nothing.

Payload (MQTT message body, and each entry of a webhook's ``alerts``)::

    {"event": "firing" | "resolved" | "reminder", "alert_id": 17, "rule_id": "…", "fingerprint": "…",
     "severity": "major", "state": "firing", "summary": "…", "labels": {…}, "device_id": …, "site_id": …,
     "kind": …, "value": …, "peak_value": …, "threshold": …, "started_at": "…", "fired_at": "…",
     "resolved_at": …, "acknowledged_by": …, "assignee": …}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sanitel.alerts.silences import Matcher, parse_matchers
from sanitel.errors import ConfigError
from sanitel.urls import redact_url


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str
    url: str
    matchers: tuple[Matcher, ...]
    group_by: tuple[str, ...]
    send_resolved: bool
    max_attempts: int

    def wants(self, labels: Mapping[str, str], event: str) -> bool:
        if event == "resolved" and not self.send_resolved:
            return False
        return all(m.matches(labels) for m in self.matchers)


def load_webhooks(conn: psycopg.Connection) -> list[Webhook]:
    out = []
    for wid, url, matchers, group_by, send_resolved, max_attempts in conn.execute(
            "SELECT webhook_id, url, matchers, group_by, send_resolved, max_attempts FROM alert_webhooks"
            " WHERE enabled ORDER BY webhook_id").fetchall():
        try:
            parsed = tuple(parse_matchers(matchers)) if matchers else ()
        except ConfigError:
            continue
        out.append(Webhook(wid, url, parsed, tuple(group_by), send_resolved, max_attempts))
    return out


def upsert_webhook(conn: psycopg.Connection, webhook_id: str, url: str, *, matchers: Sequence[Mapping[str, str]] = (),
                   group_by: Sequence[str] = ("rule_id", "site_id"), send_resolved: bool = True,
                   max_attempts: int = 10) -> None:
    if matchers:
        parse_matchers(list(matchers))
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"webhook {webhook_id!r}: url {redact_url(url)!r} must start with http:// or https://")
    conn.execute(
        """INSERT INTO alert_webhooks (webhook_id, url, matchers, group_by, send_resolved, max_attempts)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (webhook_id) DO UPDATE SET url = EXCLUDED.url, matchers = EXCLUDED.matchers,
               group_by = EXCLUDED.group_by, send_resolved = EXCLUDED.send_resolved,
               max_attempts = EXCLUDED.max_attempts, enabled = true""",
        (webhook_id, url, Jsonb(list(matchers)), list(group_by), send_resolved, max_attempts))


def enqueue(conn: psycopg.Connection, payload: dict[str, Any], *, history_id: int | None,
            webhooks: Sequence[Webhook]) -> int:
    """Store one notification and a delivery per webhook that wants it; returns its id."""
    row = conn.execute(
        "INSERT INTO alert_notifications (alert_id, history_id, event, severity, payload)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING notification_id",
        (payload["alert_id"], history_id, payload["event"], payload["severity"], Jsonb(payload))).fetchone()
    assert row is not None
    notification_id = int(row[0])
    wanted = [w.webhook_id for w in webhooks if w.wants(payload.get("labels") or {}, payload["event"])]
    if wanted:
        conn.execute(
            "INSERT INTO alert_webhook_deliveries (notification_id, webhook_id)"
            " SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING", (notification_id, wanted))
    return notification_id
