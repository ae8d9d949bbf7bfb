"""Silences: label matchers plus a time window (e.g. planned maintenance at a station). A silenced alert
is still evaluated, kept and streamed — only its MQTT and webhook notifications are held back, and
sent if it is still firing when the silence ends (Alertmanager's behaviour).

An alert is silenced when a silence's matchers all match its labels and its window covers now — or
covers the alert's whole episode (device time): readings from a maintenance window that arrive late
stay quiet, while a condition still present after the window is announced, as Alertmanager would.

Matchers: ``[{"label": "site_id", "op": "=", "value": "ts-001"}, …]`` with op ``=``, ``!=``, ``=~``,
``!~`` (regular expressions match the whole value, as in Alertmanager).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sanitel.errors import ConfigError

MATCHER_OPS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = str(labels.get(self.label, ""))  # a missing label matches as the empty string
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


def parse_matchers(raw: Any) -> list[Matcher]:
    """Validate matchers from the API or a file; ConfigError names the matcher and the fix."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("matchers must be a non-empty list of {label, op, value}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not {"label", "value"} <= set(item):
            raise ConfigError(f"matcher {i}: needs 'label' and 'value' (and 'op', default '=')")
        op = str(item.get("op", "="))
        if op not in MATCHER_OPS:
            raise ConfigError(f"matcher {i}: op {op!r} is not one of {', '.join(MATCHER_OPS)}")
        if op in ("=~", "!~"):
            try:
                re.compile(str(item["value"]))
            except re.error as exc:
                raise ConfigError(f"matcher {i}: {item['value']!r} is not a regular expression: {exc}") from None
        out.append(Matcher(str(item["label"]), op, str(item["value"])))
    return out


@dataclass(frozen=True, slots=True)
class Silence:
    silence_id: int
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def covers(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at


@dataclass
class Silences:
    """The silences that can matter to a pass: active now, or over the lateness horizon."""

    silences: Sequence[Silence] = ()

    @classmethod
    def load(cls, conn: psycopg.Connection, since: datetime) -> Silences:
        found = []
        for silence_id, matchers, starts_at, ends_at in conn.execute(
                "SELECT silence_id, matchers, starts_at, ends_at FROM silences WHERE ends_at > %s ORDER BY silence_id",
                (since,)).fetchall():
            try:
                found.append(Silence(silence_id, tuple(parse_matchers(matchers)), starts_at, ends_at))
            except ConfigError:
                continue  # a malformed row mutes nothing rather than everything
        return cls(found)

    def muting(self, labels: Mapping[str, str], now: datetime, episode: tuple[datetime, datetime | None] | None = None
               ) -> Silence | None:
        """The silence that mutes an alert with these labels now, or whose window holds its whole
        (ended) episode ``(start, end)``, if any."""
        for silence in self.silences:
            if not silence.matches(labels):
                continue
            if silence.covers(now):
                return silence
            if episode is not None and episode[1] is not None and silence.starts_at <= episode[0] \
                    and episode[1] <= silence.ends_at:
                return silence
        return None


def create_silence(conn: psycopg.Connection, matchers: Any, starts_at: datetime, ends_at: datetime,
                   created_by: str, comment: str = "") -> int:
    """Store a silence (validated); returns its id."""
    parsed = parse_matchers(matchers)
    if ends_at <= starts_at:
        raise ConfigError("a silence must end after it starts")
    if ends_at - starts_at > timedelta(days=366):
        raise ConfigError("a silence longer than a year is a disabled rule: disable the rule instead")
    row = conn.execute(
        "INSERT INTO silences (matchers, starts_at, ends_at, created_by, comment) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING silence_id",
        (Jsonb([{"label": m.label, "op": m.op, "value": m.value} for m in parsed]), starts_at, ends_at,
         created_by, comment)).fetchone()
    assert row is not None
    return int(row[0])


def expire_silence(conn: psycopg.Connection, silence_id: int, now: datetime | None = None) -> bool:
    """End a silence at ``now`` (default: the database's clock)."""
    cur = conn.execute("UPDATE silences SET ends_at = greatest(starts_at + interval '1 microsecond', at.now)"
                       " FROM (SELECT coalesce(%s::timestamptz, now()) AS now) AS at"
                       " WHERE silence_id = %s AND ends_at > at.now", (now, silence_id))
    return cur.rowcount == 1
