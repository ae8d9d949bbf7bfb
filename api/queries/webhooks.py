"""Alert webhooks (``alert_webhooks``): the receivers the alert engine POSTs signed notifications to. The
signing secret is written once, when a webhook is made (or its secret rotated), and never read back here."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

_LIST = """SELECT w.webhook_id, w.url, w.matchers, w.group_by, w.send_resolved, w.max_attempts, w.enabled,
                  w.created_at,
                  count(d.notification_id) FILTER (WHERE d.status = 'pending') AS pending,
                  count(d.notification_id) FILTER (WHERE d.status = 'failed') AS failed
             FROM alert_webhooks w LEFT JOIN alert_webhook_deliveries d USING (webhook_id)"""


async def list_webhooks(conn: AsyncConnection) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_LIST + " GROUP BY w.webhook_id ORDER BY w.webhook_id")
    return await cur.fetchall()


async def get_webhook(conn: AsyncConnection, webhook_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(_LIST + " WHERE w.webhook_id = %s GROUP BY w.webhook_id", (webhook_id,))
    return await cur.fetchone()


async def insert_webhook(conn: AsyncConnection, webhook_id: str, url: str, matchers: list[dict[str, str]],
                         group_by: list[str], send_resolved: bool, max_attempts: int, secret: str) -> bool:
    """False when the id is taken."""
    cur = await conn.execute(
        """INSERT INTO alert_webhooks (webhook_id, url, matchers, group_by, send_resolved, max_attempts, secret)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (webhook_id) DO NOTHING""",
        (webhook_id, url, Jsonb(matchers), group_by, send_resolved, max_attempts, secret))
    return cur.rowcount == 1


async def set_secret(conn: AsyncConnection, webhook_id: str, secret: str) -> bool:
    cur = await conn.execute("UPDATE alert_webhooks SET secret = %s WHERE webhook_id = %s", (secret, webhook_id))
    return cur.rowcount == 1


async def delete_webhook(conn: AsyncConnection, webhook_id: str) -> bool:
    """Its queued deliveries go with it (ON DELETE CASCADE)."""
    cur = await conn.execute("DELETE FROM alert_webhooks WHERE webhook_id = %s", (webhook_id,))
    return cur.rowcount == 1
