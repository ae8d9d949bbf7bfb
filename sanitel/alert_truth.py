"""Alerts scored against the simulator's ground truth (issue 18): recall and false alerts per rule.

``sanitel simulate … --faults all --ground-truth FILE`` writes what the simulator did on purpose, one record a line
(simulators/truth.py). ``sanitel truth score --ground-truth FILE`` compares it with the alerts in the database;
:func:`score` is the comparison itself, pure, shared by that command, ``bench/alert_truth.py`` and the ground-truth
integration test (one definition of "raised", "missed" and "false").

- A record whose ``expected_effect.alert`` names a rule *expects* an alert of that rule on its device — or on its
  sorting point (``point:<details.point_id>``: the camera rules are per point) — while the record lasts. It is
  **matched** when an alert of exactly that rule was raised there (fired; a pending alert that never fired was not
  raised) at a time overlapping the record widened by ``slack`` on each side (MATCH_SLACK: the rules' ``for``
  durations, windows and the evaluator's pass interval); otherwise **missed**.
- A raised alert is **explained** when some expecting record matches it that way with its own rule or with one of
  the rule's ALSO siblings (below). An alert nothing explains is **false**; when it overlaps a ``no_alert`` record of
  the same device (a calibration, a marked shut-down, a single spike …) the reason names that record, since the
  ground truth says explicitly that nothing should fire there.
- **Excluded** (neither explained nor false): a verdict that data are missing, about a period in which the ground
  truth says the device really sent nothing for long enough to earn it (NO_DATA_VERDICTS). "Sent nothing" is a
  record of that device whose rows are ``missing`` (a silence) or dead-lettered (``expected_effect.dead_letter``).
  A ``*_daily_invalid`` alert of a line silent for hours that day is then a correct verdict no record names.
- **Late**: an expected alert that was raised but none of its alerts resolved within RESOLVE_SLACK of the record's
  end (a stuck alert). Records ending within LATE_HORIZON of the end of the scored span are not checked: their alert
  may rightly still be open. Reported, not part of ``passed`` (the targets of issue 18 are recall and false alerts).

Recall of a rule is matched / expected (1.0 for a rule nothing expected: there was nothing to miss).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sanitel.errors import SanitelError

if TYPE_CHECKING:
    import psycopg

# How far outside a record's [start, end] an alert explaining it may begin or end: a rule's `for` (up to 10 min),
# a closed window (a half-hour, an hour: the alert starts at the window's start, the record may start inside it),
# keep-firing and hysteresis after the end.
MATCH_SLACK = timedelta(hours=2)
# How long after a record ends its alert may still resolve: hysteresis, keep-firing, the next window.
DEFAULT_RESOLVE_SLACK = timedelta(minutes=90)
RESOLVE_SLACK: Mapping[str, timedelta] = {
    "device_offline": timedelta(minutes=5),      # the first reading after the silence ends it
    "truck_offline": timedelta(minutes=5),       # as device_offline
    "bin_fire": timedelta(minutes=45),           # a cooling bin stays above its alarm temperature, then keep-firing
    "bin_overflow": timedelta(minutes=40),       # emptied: the next status reports (every 5-10 min) fall below clear
    "sweeper_low_soc": timedelta(hours=2),       # charging back above the clear level takes a while
}
# The no_alert records a false alert's reason names, those it overlaps most first.
MAX_REASONS = 2
# A record that ends this close to the end of the scored span is not checked for resolution.
LATE_HORIZON = timedelta(hours=1)

# What else one physical event legitimately raises, besides the rule its ground-truth record names. ONE copy: the
# bench and the integration test import it. A sibling explains an alert; only the named rule counts for recall.
#   - a pollutant above its 2010/75/EU half-hourly limit (column A) for a half-hour or more is also above column B
#     (the 97 % limit) and lifts the GB 18485 1-hour average containing it; CO has the 10-minute rule instead of B
#   - six furnace dips below 850 °C in a day (the violation) raise first the day's early warning on the first dip
#   - a bin on fire is seen by its sorting point's camera (smoke or fire detection, per point)
ALSO: Mapping[str, frozenset[str]] = {
    "cems_dust_half_hourly": frozenset({"cems_dust_half_hourly_b", "cems_dust_gb_1h"}),
    "cems_toc_half_hourly": frozenset({"cems_toc_half_hourly_b"}),
    "cems_hcl_half_hourly": frozenset({"cems_hcl_half_hourly_b", "cems_hcl_gb_1h"}),
    "cems_hf_half_hourly": frozenset({"cems_hf_half_hourly_b"}),
    "cems_so2_half_hourly": frozenset({"cems_so2_half_hourly_b", "cems_so2_gb_1h"}),
    "cems_nox_half_hourly": frozenset({"cems_nox_half_hourly_b", "cems_nox_gb_1h"}),
    "cems_co_half_hourly": frozenset({"cems_co_10min", "cems_co_gb_1h"}),
    "cems_furnace_850_daily": frozenset({"cems_furnace_below_850"}),
    "bin_fire": frozenset({"camera_smoke_fire"}),
}


@dataclass(frozen=True, slots=True)
class NoDataVerdict:
    """A rule (by id suffix) whose alert says a period's data are missing or invalid: the alert starts at the
    period's start; it is a correct verdict when the device sent nothing for at least ``silent_at_least`` of it."""

    period: timedelta
    silent_at_least: timedelta


# 2010/75/EU Annex VI Part 8: a daily average is invalid when more than 5 half-hours of the day are discarded. A
# device silent for 5 half-hours' worth of the day (give or take the half-hours its edges cut) has earned it.
NO_DATA_VERDICTS: Mapping[str, NoDataVerdict] = {
    "_daily_invalid": NoDataVerdict(period=timedelta(days=1), silent_at_least=5 * timedelta(minutes=30)),
}


class TruthError(SanitelError):
    """A ground-truth record or an alert that cannot be scored (the message names which and why)."""


# --- the inputs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TruthEntry:
    """One ground-truth record, as far as scoring needs it."""

    device_id: str
    fault: str
    start: datetime
    end: datetime
    alert: str | None = None      # expected_effect.alert
    no_alert: str | None = None   # expected_effect.no_alert
    silent: bool = False          # the device sent nothing usable: rows missing or dead-lettered
    point_id: str | None = None   # details.point_id: a sorting point's per-point rules
    subjects: frozenset[str] = field(init=False, repr=False, compare=False)  # the alert subjects it is about

    def __post_init__(self) -> None:
        point = [f"point:{self.point_id}"] if self.point_id else []
        object.__setattr__(self, "subjects", frozenset({f"device:{self.device_id}", *point}))

    def describe(self) -> str:
        return f"{self.fault} on {self.device_id} {_when(self.start)}–{_when(self.end)}"


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    """One raised (fired) alert, as far as scoring needs it: a row of the ``alerts`` table."""

    rule_id: str
    subject: str
    started_at: datetime
    resolved_at: datetime | None = None
    device_id: str | None = None
    summary: str = ""

    @property
    def places(self) -> frozenset[str]:
        """The subjects it is about: its own, and its device's when it has one."""
        return frozenset({self.subject, *([f"device:{self.device_id}"] if self.device_id else [])})

    def at(self, entry: TruthEntry) -> bool:
        """Whether the alert is about the record's device or sorting point."""
        return self.subject in entry.subjects or (self.device_id is not None and self.device_id == entry.device_id)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.started_at <= end and (self.resolved_at is None or self.resolved_at >= start)

    def describe(self) -> str:
        until = _when(self.resolved_at) if self.resolved_at is not None else "open"
        return f"{self.rule_id} {self.subject} {_when(self.started_at)}–{until}"


def _when(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def _instant(value: object, what: str) -> datetime:
    """An aware datetime from a datetime or an RFC 3339 string (…Z or with an offset); TruthError otherwise."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().upper())
        except ValueError:
            raise TruthError(f"{what} {value!r} is not an RFC 3339 time") from None
    if not isinstance(value, datetime):
        raise TruthError(f"{what} must be a time, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise TruthError(f"{what} {value.isoformat()} has no time zone offset")
    return value


def _text(mapping: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
    value = mapping.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise TruthError(f"{what}: {key} must be a non-empty string, not {value!r}")
    return value


def parse_record(record: object) -> TruthEntry:
    """A ground-truth record (a JSON object of simulators/truth.py's format) → TruthEntry; TruthError otherwise."""
    if not isinstance(record, Mapping):
        raise TruthError(f"a ground-truth record must be an object, not {type(record).__name__}")
    device_id = _text(record, "device_id", "ground-truth record")
    what = f"ground-truth record of {device_id}"
    fault = _text(record, "fault", what)
    effect = record.get("expected_effect")
    details = record.get("details") or {}
    if not isinstance(effect, Mapping) or not isinstance(details, Mapping):
        raise TruthError(f"{what}: expected_effect and details must be objects")
    start, end = _instant(record.get("start"), f"{what}: start"), _instant(record.get("end"), f"{what}: end")
    if end < start:
        raise TruthError(f"{what}: ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    point = details.get("point_id")
    assert device_id is not None and fault is not None  # required
    return TruthEntry(device_id=device_id, fault=fault, start=start, end=end,
                      alert=_text(effect, "alert", what, required=False),
                      no_alert=_text(effect, "no_alert", what, required=False),
                      silent=effect.get("rows") == "missing" or effect.get("dead_letter") is not None,
                      point_id=point if isinstance(point, str) and point else None)


def parse_alert(row: object) -> RaisedAlert:
    """A row of the ``alerts`` table (a mapping: rule_id, subject, device_id, started_at, resolved_at, summary) →
    RaisedAlert; TruthError otherwise."""
    if not isinstance(row, Mapping):
        raise TruthError(f"an alert must be a mapping, not {type(row).__name__}")
    rule_id = _text(row, "rule_id", "alert")
    what = f"alert {rule_id}"
    device_id = _text(row, "device_id", what, required=False)
    subject = _text(row, "subject", what, required=False) or (f"device:{device_id}" if device_id else None)
    if subject is None:
        raise TruthError(f"{what}: has neither a subject nor a device")
    resolved = row.get("resolved_at")
    summary = row.get("summary")
    assert rule_id is not None  # required
    return RaisedAlert(rule_id=rule_id, subject=subject, device_id=device_id,
                       started_at=_instant(row.get("started_at"), f"{what}: started_at"),
                       resolved_at=None if resolved is None else _instant(resolved, f"{what}: resolved_at"),
                       summary=summary if isinstance(summary, str) else "")


def load_truth(path: str | Path) -> list[TruthEntry]:
    """The records of a ground-truth file (JSON Lines); TruthError names the line that cannot be read."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TruthError(f"cannot read the ground truth {path}: {exc.strerror or exc}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(parse_record(json.loads(line)))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise TruthError(f"{path}:{number}: not a JSON record ({exc})") from None
        except TruthError as exc:
            raise TruthError(f"{path}:{number}: {exc}") from None
    return entries


# --- the score -----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RuleScore:
    rule: str
    expected: int = 0   # records expecting this rule
    matched: int = 0    # … of which an alert of this rule was raised for
    missed: int = 0     # … of which none was
    raised: int = 0     # alerts of this rule raised in the scored span (explained, false or excluded)
    false: int = 0      # … that nothing explains
    excluded: int = 0   # … that are verdicts about time the device really sent nothing

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else 1.0

    def add(self, other: RuleScore) -> None:
        self.expected += other.expected
        self.matched += other.matched
        self.missed += other.missed
        self.raised += other.raised
        self.false += other.false
        self.excluded += other.excluded

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "expected": self.expected, "matched": self.matched, "missed": self.missed,
                "raised": self.raised, "false": self.false, "excluded": self.excluded, "recall": self.recall}


@dataclass(frozen=True, slots=True)
class Judged:
    """A raised alert with what scoring made of it (false: why nothing explains it; excluded: why it is right)."""

    alert: RaisedAlert
    reason: str

    def describe(self) -> str:
        summary = f" ({self.alert.summary})" if self.alert.summary else ""
        return f"{self.alert.describe()}: {self.reason}{summary}"


@dataclass(frozen=True, slots=True)
class Late:
    """An expected alert raised but not resolved in time after its record ended."""

    entry: TruthEntry
    resolved: tuple[datetime | None, ...]

    def describe(self) -> str:
        times = ", ".join(_when(t) if t is not None else "open" for t in self.resolved)
        return f"{self.entry.alert} for {self.entry.describe()}: resolved {times}"


@dataclass(slots=True)
class Score:
    rules: dict[str, RuleScore] = field(default_factory=dict)
    misses: list[TruthEntry] = field(default_factory=list)
    false_alerts: list[Judged] = field(default_factory=list)
    excluded: list[Judged] = field(default_factory=list)
    late: list[Late] = field(default_factory=list)

    @property
    def total(self) -> RuleScore:
        total = RuleScore("total")
        for row in self.rules.values():
            total.add(row)
        return total

    @property
    def recall(self) -> float:
        return self.total.recall

    @property
    def passed(self) -> bool:
        """Issue 18's targets: every expected alert raised (recall 100 %) and no false alert."""
        return not self.misses and not self.false_alerts

    def rule(self, rule: str) -> RuleScore:
        return self.rules.setdefault(rule, RuleScore(rule))

    def table(self) -> str:
        """Per rule: expected, matched, missed, raised, false, excluded, recall; then the totals and the details."""
        header = f"{'rule':<30} {'expected':>8} {'matched':>7} {'missed':>6} {'raised':>6} {'false':>5} " \
                 f"{'excluded':>8} {'recall':>7}"
        lines = [header, "-" * len(header)]
        for row in [*(self.rules[r] for r in sorted(self.rules)), self.total]:
            if row.rule == "total":
                lines.append("-" * len(header))
            recall = f"{100 * row.recall:6.1f}%" if row.expected else "      —"
            lines.append(f"{row.rule:<30} {row.expected:>8} {row.matched:>7} {row.missed:>6} {row.raised:>6} "
                         f"{row.false:>5} {row.excluded:>8} {recall:>7}")
        sections = (("missed", [f"{m.alert} for {m.describe()}" for m in self.misses]),
                    ("false alerts", [j.describe() for j in self.false_alerts]),
                    ("excluded (verdicts on time without data)", [j.describe() for j in self.excluded]),
                    ("late resolutions", [late.describe() for late in self.late]))
        for title, items in sections:
            if items:
                lines += ["", f"{title} ({len(items)}):", *(f"  {item}" for item in items)]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        def alert(j: Judged) -> dict[str, Any]:
            a = j.alert
            return {"rule": a.rule_id, "subject": a.subject, "device_id": a.device_id,
                    "started_at": a.started_at.isoformat(),
                    "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
                    "summary": a.summary, "reason": j.reason}

        def entry(e: TruthEntry) -> dict[str, Any]:
            return {"rule": e.alert, "device_id": e.device_id, "fault": e.fault, "start": e.start.isoformat(),
                    "end": e.end.isoformat()}

        return {"passed": self.passed, "rules": [self.rules[r].as_json() for r in sorted(self.rules)],
                "total": self.total.as_json(), "missed": [entry(m) for m in self.misses],
                "false_alerts": [alert(j) for j in self.false_alerts], "excluded": [alert(j) for j in self.excluded],
                "late_resolutions": [{**entry(late.entry),
                                      "resolved_at": [t.isoformat() if t else None for t in late.resolved]}
                                     for late in self.late]}


def _explains(entry: TruthEntry, alert: RaisedAlert, rules: frozenset[str], slack: timedelta) -> bool:
    return alert.rule_id in rules and alert.at(entry) and alert.overlaps(entry.start - slack, entry.end + slack)


def _silent_time(entries: Iterable[TruthEntry], start: datetime, end: datetime) -> timedelta:
    """How much of [start, end) the records (of one device) cover: the union of their spans, clipped."""
    spans = sorted((max(e.start, start), min(e.end, end)) for e in entries if e.start < end and e.end > start)
    covered, reached = timedelta(0), start
    for lo, hi in spans:
        lo = max(lo, reached)
        if hi > lo:
            covered += hi - lo
            reached = hi
    return covered


def _no_data_reason(alert: RaisedAlert, silent: Sequence[TruthEntry]) -> str | None:
    """Why a verdict of missing data is right, or None when it is not such a verdict or the device was not silent."""
    for suffix, verdict in NO_DATA_VERDICTS.items():
        if not alert.rule_id.endswith(suffix):
            continue
        mine = [e for e in silent if alert.at(e)]
        quiet = _silent_time(mine, alert.started_at, alert.started_at + verdict.period)
        if quiet >= verdict.silent_at_least:
            faults = ", ".join(sorted({e.describe() for e in mine}))
            return f"the device sent nothing for {quiet.total_seconds() / 3600:.1f} h of the period ({faults})"
    return None


def _false_reason(alert: RaisedAlert, no_alerts: Sequence[TruthEntry]) -> str:
    """Why nothing explains the alert: the no_alert records it overlaps most (a daily alert overlaps every one of
    its day), or that no record does."""
    during = [e for e in no_alerts if alert.at(e) and alert.overlaps(e.start, e.end)]
    if not during:
        return "no ground-truth record explains it"

    def overlap(e: TruthEntry) -> timedelta:
        return min(e.end, alert.resolved_at or e.end) - max(e.start, alert.started_at)

    during.sort(key=lambda e: (-overlap(e), e.start))
    shown = "; ".join(f"{e.no_alert} ({e.describe()})" for e in during[:MAX_REASONS])
    more = f" and {len(during) - MAX_REASONS} more" if len(during) > MAX_REASONS else ""
    return f"during no_alert {shown}{more}"


def score(alerts: Iterable[RaisedAlert | Mapping[str, Any]], truth: Iterable[TruthEntry | Mapping[str, Any]], *,
          also: Mapping[str, frozenset[str]] = ALSO, slack: timedelta = MATCH_SLACK,
          resolve_slack: Mapping[str, timedelta] = RESOLVE_SLACK, until: datetime | None = None) -> Score:
    """Score raised alerts (rows of ``alerts``, fired ones) against ground-truth records (dicts as written, or parsed
    entries); see the module docstring. ``until``: the end of the scored span (default: the latest record's end),
    for the resolution check. TruthError when an input cannot be read."""
    raised = [a if isinstance(a, RaisedAlert) else parse_alert(a) for a in alerts]
    entries = [r if isinstance(r, TruthEntry) else parse_record(r) for r in truth]
    end_of_run = until if until is not None else max((e.end for e in entries), default=None)
    result = Score()
    # (rule, subject) → the alerts of that rule about it; a city's bins make thousands of both sides
    alerts_at: dict[tuple[str, str], list[RaisedAlert]] = {}
    for alert in raised:
        result.rule(alert.rule_id).raised += 1
        for place in alert.places:
            alerts_at.setdefault((alert.rule_id, place), []).append(alert)
    expecting = [e for e in entries if e.alert is not None]
    for entry in expecting:
        assert entry.alert is not None
        row = result.rule(entry.alert)
        row.expected += 1
        candidates = {id(a): a for place in entry.subjects for a in alerts_at.get((entry.alert, place), [])}
        exact = [a for a in candidates.values() if _explains(entry, a, frozenset({entry.alert}), slack)]
        if not exact:
            row.missed += 1
            result.misses.append(entry)
            continue
        row.matched += 1
        if end_of_run is not None and entry.end < end_of_run - LATE_HORIZON:
            latest = entry.end + resolve_slack.get(entry.alert, DEFAULT_RESOLVE_SLACK)
            if not any(a.resolved_at is not None and a.resolved_at <= latest for a in exact):
                result.late.append(Late(entry, tuple(a.resolved_at for a in exact)))
    # (rule, subject) → the records that explain an alert of that rule about it: their own rule and its siblings
    explainers: dict[tuple[str, str], list[TruthEntry]] = {}
    for entry in expecting:
        assert entry.alert is not None
        for rule in {entry.alert, *also.get(entry.alert, ())}:
            for place in entry.subjects:
                explainers.setdefault((rule, place), []).append(entry)
    silent = [e for e in entries if e.silent]
    no_alerts = [e for e in entries if e.no_alert is not None]
    for alert in raised:
        near = (e for place in alert.places for e in explainers.get((alert.rule_id, place), []))
        if any(alert.overlaps(e.start - slack, e.end + slack) for e in near):
            continue
        row = result.rule(alert.rule_id)
        reason = _no_data_reason(alert, silent)
        if reason is not None:
            row.excluded += 1
            result.excluded.append(Judged(alert, reason))
        else:
            row.false += 1
            result.false_alerts.append(Judged(alert, _false_reason(alert, no_alerts)))
    return result


# --- reading the alerts --------------------------------------------------------------------------------------------


def truth_span(entries: Sequence[TruthEntry]) -> tuple[datetime, datetime] | None:
    """The time the records cover, earliest start to latest end (None without records)."""
    if not entries:
        return None
    return min(e.start for e in entries), max(e.end for e in entries)


def read_alerts(conn: psycopg.Connection, since: datetime, until: datetime) -> list[RaisedAlert]:
    """The alerts raised (fired) that were active at some time in [since, until)."""
    rows = conn.execute(
        "SELECT rule_id, subject, device_id, started_at, resolved_at, summary FROM alerts"
        " WHERE fired_at IS NOT NULL AND started_at < %s AND (resolved_at IS NULL OR resolved_at > %s)"
        " ORDER BY started_at, alert_id", (until, since)).fetchall()
    return [RaisedAlert(rule_id=r[0], subject=r[1] or f"device:{r[2]}", device_id=r[2], started_at=r[3],
                        resolved_at=r[4], summary=r[5] or "") for r in rows]


def score_database(url: str, truth_path: str | Path, *, since: datetime | None = None,
                   until: datetime | None = None) -> Score:
    """Score the alerts of the database at ``url`` against a ground-truth file, over [since, until) (default: the
    span the records cover): records overlapping it, alerts active in it."""
    from sanitel.db import connect

    entries = load_truth(truth_path)
    span = truth_span(entries)
    since = since or (span[0] if span else None)
    until = until or (span[1] if span else None)
    if since is None or until is None:
        raise TruthError(f"{truth_path} holds no records: give --from and --to, or a ground truth with records")
    if until <= since:
        raise TruthError("--to must be after --from")
    scoped = [e for e in entries if e.start < until and e.end >= since]
    with connect(url) as conn:
        alerts = read_alerts(conn, since, until)
    return score(alerts, scoped, until=until)


# --- sanitel truth score -------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sanitel.processors.marks_cli import parse_time

    p = sub.add_parser("truth", help="compare the alerts with a simulator's ground truth (recall, false alerts)")
    tsub = p.add_subparsers(dest="truth_command", required=True, metavar="ACTION")
    s = tsub.add_parser(
        "score", help="recall and false alerts per rule against a ground-truth file",
        description="Score the alerts in the database against the ground truth `sanitel simulate --ground-truth "
                    "FILE` wrote: per rule the alerts expected, matched (raised), missed, raised, false (nothing "
                    "explains them) and excluded (verdicts on time the device really sent nothing), and recall. "
                    "Exits 1 when an expected alert was missed or an alert is false (unless --report-only). "
                    "Matching rules: sanitel/alert_truth.py.")
    s.add_argument("--ground-truth", type=Path, required=True, metavar="FILE", help="the simulator's JSON Lines file")
    s.add_argument("--from", dest="since", type=parse_time, metavar="TIME",
                   help="score from this time (default: the earliest record's start)")
    s.add_argument("--to", dest="until", type=parse_time, metavar="TIME",
                   help="score until this time (default: the latest record's end)")
    s.add_argument("--json", action="store_true", help="JSON instead of a table")
    s.add_argument("--report-only", action="store_true", help="exit 0 whatever the score")
    s.set_defaults(func=run_score)


def run_score(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from sanitel.settings import load_settings

    out = out or sys.stdout
    result = score_database(load_settings().database_url_for("api"), args.ground_truth, since=args.since,
                            until=args.until)
    if args.json:
        json.dump(result.as_json(), out, indent=2, allow_nan=False)
        out.write("\n")
    else:
        total = result.total
        out.write(result.table() + "\n\n")
        out.write(f"recall {100 * total.recall:.1f} % ({total.matched} of {total.expected} expected alerts raised), "
                  f"{total.false} false alert(s), {total.excluded} excluded: "
                  f"{'PASS' if result.passed else 'FAIL'}\n")
    return 0 if result.passed or args.report_only else 1

