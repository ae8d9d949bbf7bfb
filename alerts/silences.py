"""Silences: label matchers plus a time window (e.g. planned maintenance at a station). A silenced alert
is still evaluated, kept and streamed — only its MQTT and webhook notifications are held back, and
sent if it is still firing when the silence ends (Alertmanager's behaviour).

An alert is silenced when a silence's matchers all match its labels and its window covers now — or
covers the alert's whole episode (device time): readings from a maintenance window that arrive late
stay quiet, while a condition still present after the window is announced, as Alertmanager would.

Matchers: ``[{"label": "site_id", "op": "=", "value": "ts-001"}, …]`` with op ``=``, ``!=``, ``=~``,
``!~`` (regular expressions match the whole value, as in Alertmanager). Webhooks filter with the same
matchers.

Regular expressions run on RE2 (google-re2), never on Python's ``re``: RE2 matches in time linear in
the length of the value, whatever the pattern, so a matcher such as ``(.*.*)*x`` — which makes a
backtracking engine take exponential time — cannot stall the evaluator, which matches every silence
against every alert while it holds the evaluation lock. The price is RE2's syntax: no backreferences
or look-arounds (https://github.com/google/re2/wiki/Syntax); such patterns are refused when the silence
or webhook is created, with the matcher named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import re2  # type: ignore[import-untyped]  # google-re2 ships no type information
from psycopg.types.json import Jsonb

from sanitel.errors import ConfigError

MATCHER_OPS = ("=", "!=", "=~", "!~")
REGEX_OPS = ("=~", "!~")
MAX_PATTERN_CHARS = 1024  # RE2 compiles in memory proportional to the pattern; values here are short anyway


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to whoever wrote it, not to stderr
    return options


_OPTIONS = _re2_options()


class MatcherError(ConfigError):
    """A matcher that cannot be used; ``index`` and ``key`` name it (API: ``matchers.<index>.<key>``)."""

    def __init__(self, index: int, key: str, message: str) -> None:
        super().__init__(f"matcher {index}: {message}")
        self.index = index
        self.key = key


def compile_pattern(pattern: str) -> Any:
    """An RE2 program matching the whole of a value (``fullmatch``); ValueError says why RE2 refuses it."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        raise ValueError(reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)) from None


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str
    # the compiled RE2 program of a regex matcher (=~, !~); compiled on construction
    program: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op in REGEX_OPS:
            object.__setattr__(self, "program", compile_pattern(self.value))

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = str(labels.get(self.label, ""))  # a missing label matches as the empty string
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = self.program.fullmatch(actual) is not None
        return bool(found) if self.op == "=~" else not found


def parse_matchers(raw: Any, *, allow_empty: bool = False) -> list[Matcher]:
    """Validate matchers from the API, the CLI or a stored row; MatcherError names the matcher, its key and
    the fix."""
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise ConfigError("matchers must be a non-empty list of {label, op, value}")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not {"label", "value"} <= set(item):
            raise MatcherError(i, "label", "needs 'label' and 'value' (and 'op', default '=')")
        op = str(item.get("op", "="))
        if op not in MATCHER_OPS:
            raise MatcherError(i, "op", f"op {op!r} is not one of {', '.join(MATCHER_OPS)}")
        try:
            out.append(Matcher(str(item["label"]), op, str(item["value"])))
        except ValueError as exc:
            raise MatcherError(i, "value", f"{item['value']!r} is not a regular expression RE2 accepts ({exc}) — fix: "
                                           "RE2 syntax, without backreferences or look-arounds") from None
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
