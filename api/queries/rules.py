"""Alert rules managed through the API (the ``alert_rules`` table the alert engine loads beside its
shipped YAML packs; a row with a shipped rule's id replaces that rule)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# Sent after every change, so an engine that listens can reload at once instead of at its next poll.
RULES_CHANNEL = "sanitel_rules"
_COLUMNS = "rule_id, definition, enabled, created_by, created_at, updated_by, updated_at"


async def list_rules(conn: AsyncConnection) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM alert_rules ORDER BY rule_id")
    return await cur.fetchall()


async def get_rule(conn: AsyncConnection, rule_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE rule_id = %s", (rule_id,))
    return await cur.fetchone()


async def insert_rule(conn: AsyncConnection, rule_id: str, definition: dict[str, Any], actor: str
                      ) -> dict[str, Any] | None:
    """Insert a new rule; None when a stored rule already has this id."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""INSERT INTO alert_rules (rule_id, definition, created_by, updated_by) VALUES (%s, %s, %s, %s)
            ON CONFLICT (rule_id) DO NOTHING RETURNING {_COLUMNS}""",
        (rule_id, Jsonb(definition), actor, actor))
    row = await cur.fetchone()
    if row is not None:
        await _announce(conn, rule_id)
    return row


async def upsert_rule(conn: AsyncConnection, rule_id: str, definition: dict[str, Any], actor: str
                      ) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""INSERT INTO alert_rules (rule_id, definition, created_by, updated_by) VALUES (%s, %s, %s, %s)
            ON CONFLICT (rule_id) DO UPDATE SET definition = EXCLUDED.definition, enabled = true,
                updated_by = EXCLUDED.updated_by, updated_at = now()
            RETURNING {_COLUMNS}""",
        (rule_id, Jsonb(definition), actor, actor))
    row = await cur.fetchone()
    assert row is not None
    await _announce(conn, rule_id)
    return row


async def delete_rule(conn: AsyncConnection, rule_id: str) -> bool:
    cur = await conn.execute("DELETE FROM alert_rules WHERE rule_id = %s", (rule_id,))
    if cur.rowcount:
        await _announce(conn, rule_id)
    return cur.rowcount == 1


async def _announce(conn: AsyncConnection, rule_id: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (RULES_CHANNEL, rule_id))
