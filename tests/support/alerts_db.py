"""Helpers for the alert tests: registry rows, readings inserted by SQL, rule sets, one-call passes.

Every instant is fixed: device time starts at ``T0`` and an evaluation pass runs at ``NOW`` unless a test
says otherwise, so no alert test depends on the hour, the day or the time zone it runs in. The
evaluator judges device times against the pass's ``now`` and write times (``stored_at``, stamped by the
database) against the database's clock, so rows inserted here "now" are new to the next pass whatever
``NOW`` says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig, PassReport
from sanitel.alerts.incidents import IncidentRules, maintain
from sanitel.alerts.rules import RuleSet, default_rule_files, load_files, validate_rule_dict

# Device time of the tests: midnight UTC, 08:00 in Shanghai (the default site time zone below).
T0 = datetime(2026, 3, 10, tzinfo=UTC)
# The wall clock of a pass: a day and a half-hour after T0, as when T0 was "yesterday on the hour" —
# every window of a test has closed, and every reading is inside the evaluator's lateness horizon.
NOW = T0 + timedelta(days=1, minutes=30)


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def add_site(conn: psycopg.Connection, site_id: str, kind: str = "transfer_station", *, parent: str | None = None,
             params: Mapping[str, Any] | None = None, tz: str = "Asia/Shanghai") -> None:
    conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone, params) VALUES (%s, %s, %s, %s, %s, %s)",
                 (site_id, kind, site_id, parent, tz, Jsonb(dict(params or {}))))


def add_device(conn: psycopg.Connection, device_id: str, kind: str, *, site: str | None = None,
               timeout_s: int = 900, metadata: Mapping[str, Any] | None = None,
               registered_at: datetime = T0) -> None:
    conn.execute("INSERT INTO devices (device_id, kind, site_id, inactivity_timeout_s, metadata, registered_at)"
                 " VALUES (%s, %s, %s, %s, %s, %s)",
                 (device_id, kind, site, timeout_s, Jsonb(dict(metadata or {})), registered_at))


def insert(conn: psycopg.Connection, table: str, device_id: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Readings as the collector would store them (received_at = device time unless given), and the
    device's last-seen row."""
    for seq, row in enumerate(rows):
        values = {"device_id": device_id, "seq": row.get("seq", seq), "received_at": row.get("received_at", row["ts"]),
                  **{k: (Jsonb(v) if isinstance(v, dict) else v) for k, v in row.items() if k not in ("seq",)}}
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in values)
        conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(table), columns, sql.SQL(", ").join(sql.Placeholder() * len(values))), list(values.values()))
        conn.execute(
            "INSERT INTO device_last_seen (device_id, last_ts, last_received) VALUES (%s, %s, %s)"
            " ON CONFLICT (device_id) DO UPDATE SET last_ts = greatest(device_last_seen.last_ts, EXCLUDED.last_ts),"
            " last_received = greatest(device_last_seen.last_received, EXCLUDED.last_received)",
            (device_id, row["ts"], values["received_at"]))


def series(start: datetime, step_s: float, values: Iterable[Any], field: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"ts": start + timedelta(seconds=i * step_s), field: v, **extra} for i, v in enumerate(values)]


_SHIPPED = load_files(default_rule_files()).rules


def shipped_rules(*rule_ids: str) -> RuleSet:
    """The shipped rules of these ids, as the evaluator loads them."""
    out = RuleSet()
    for rule_id in rule_ids:
        out.add(_SHIPPED[rule_id], "shipped")
    return out


def ruleset(*rules: Mapping[str, Any]) -> RuleSet:
    out = RuleSet()
    for rule in rules:
        out.add(validate_rule_dict(dict(rule)), "test")
    return out


# incidents notified at once (the shipped group wait is for people, not tests)
AT_ONCE = IncidentRules(group_wait=timedelta(0), group_interval=timedelta(0))


def run(url: str, rules: RuleSet, now: datetime = NOW, **config: Any) -> PassReport:
    """One evaluation pass at ``now`` and the incident step after it (as the evaluator service runs them), on a
    connection of its own."""
    # the rows a test inserts were stored a moment ago, in one burst before the pass: as if the stream had then gone
    # quiet (data_quiet_after 0), windows close by ``now``; the backlog tests set it to the service's default
    config.setdefault("data_quiet_after", timedelta(0))
    with psycopg.connect(url) as conn:
        report = Evaluator(conn, rules, EvaluatorConfig(**config)).run_pass(now)
        if report.ran:
            maintain(conn, now, AT_ONCE, rules)
        return report


class KeptEvaluators:
    """``run`` with one Evaluator (and its connection) kept across the passes of a test, per database, rule ids and
    config — as the evaluator service keeps it. What an evaluator remembers between passes (the truck checks' logs
    and verdicts) must never change a verdict: a test passing with ``run`` must pass with this one."""

    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], tuple[psycopg.Connection, Evaluator]] = {}

    def run(self, url: str, rules: RuleSet, now: datetime = NOW, **config: Any) -> PassReport:
        config.setdefault("data_quiet_after", timedelta(0))
        key = (url, tuple(sorted(rules.rules)), tuple(sorted(config.items())))
        if key not in self._kept:
            conn = psycopg.connect(url)
            self._kept[key] = (conn, Evaluator(conn, rules, EvaluatorConfig(**config)))
        conn, evaluator = self._kept[key]
        report = evaluator.run_pass(now)
        if report.ran:
            maintain(conn, now, AT_ONCE, evaluator.ruleset)
        return report

    def close(self) -> None:
        for conn, _ in self._kept.values():
            conn.close()
        self._kept.clear()


def alerts(url: str, rule_id: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        if rule_id is None:
            return conn.execute("SELECT * FROM alerts ORDER BY started_at, alert_id").fetchall()
        return conn.execute("SELECT * FROM alerts WHERE rule_id = %s ORDER BY started_at, alert_id",
                            (rule_id,)).fetchall()


def history(url: str, alert_id: int) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT to_state FROM alert_history WHERE alert_id = %s ORDER BY id", (alert_id,)).fetchall()]


def notifications(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM alert_notifications ORDER BY notification_id").fetchall()
