"""One evaluation pass, on device time.

1. Take the rows stored since the last pass (``queries.safe_upto`` says which are surely committed).
2. For each rule, the subjects those rows touch (and, for window rules, subjects with a condition
   still active, so a window that closed without data can end it).
3. Per subject, resume from its stored cursor when all new data is newer than what was evaluated;
   otherwise — late or out-of-order data — re-evaluate from before the earliest new reading (its
   window, or the start of the alert it may belong to) with a fresh cursor.
4. Turn samples into episodes (``timeline``) and reconcile the episodes with the stored alerts
   (``lifecycle``): an episode matches the alert whose time span it overlaps. A threshold rule with a rolling
   smoothing (``{median: N}``, e.g. from ``condition: bin_full``) judges at each reading the statistic over the
   device's last N counted readings; the N−1 before the start come with the rows (``queries.reading_rows``), so a
   window spanning passes is judged as in one pass. A clock-aligned window is judged once it is closed: a reading
   after its end arrived from its subject, or ``close_grace`` has passed on the data clock (``_data_clock``: the
   newest device time stored lately; the wall clock after a quiet spell), so a collector draining a backlog hours
   behind the wall clock never has a window judged on the part of it that had arrived.
5. Reminders; alerts of removed rules resolve; cursors and watermarks are saved — all in the same
   transaction as the transitions, so a crash or restart neither loses nor repeats an alert.

The caller holds the pass transaction; two evaluators are kept apart by a transaction-level advisory
lock taken on the same connection that writes (``run_pass``): if that connection dies, its writes die
with it, so a second evaluator taking over can never double-fire.

One bad rule never stops the others: each rule is evaluated in a savepoint, and a rule that raises
(anything but a lost connection) is rolled back and quarantined — left out until its definition changes
or ``quarantine_retry`` has passed. Rules that did not validate on load (``RuleSet.problems``) and rules
quarantined here each raise the built-in alert ``rule_quarantined`` (subject ``rule:<id>``, warning),
which resolves once the rule validates and evaluates again.

Nothing hides a stage that stopped (issue 17), two more built-in alerts:
- ``stage_overdue`` (subject ``stage:collector`` / ``stage:processor``, critical): the stage's newest heartbeat
  (``sanitel/heartbeats.py``) is older than ``stage_overdue_factor`` × its interval, or it never reported; resolved
  when it reports again. The evaluator cannot say it has stopped itself: /health and Prometheus do.
- ``cems_averages_behind`` (subject ``device:<id>``, warning): a CEMS unit's readings are newer than its computed
  averages (``queries.averages_behind``). Its averages periods from the first such reading on are not judged —
  averages not computed yet are not "missing" or "invalid" data — and once readings have waited longer than
  ``averages_behind_after`` this alert says so; resolved when the averages catch up.

Emission limits come from the subject's plant and line (``sites.params.emission_limits``, the compliance report's
grammar). A site whose params the emission-limit rules cannot use (an ``emission_limits`` that does not parse,
``limits`` still naming such a rule) is checked once per pass: those rules skip the devices below it, the reason
is logged once and ``rule_quarantined`` fires for ``emission_limit rules at site <id>`` until the params are fixed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from sanitel.alerts import queries, trucks
from sanitel.alerts.lifecycle import Alert, Candidate, Lifecycle, alerts_for, fingerprint, open_alerts
from sanitel.alerts.notify.outbox import load_webhooks
from sanitel.alerts.queries import Change, Request
from sanitel.alerts.rules import (
    AVERAGES_BEHIND_RULE,
    AVERAGES_TABLE,
    BUILTIN_RULES,
    DEVICE_TABLES,
    JUDGEMENTS_TABLE,
    OFF_SHIFT,
    QUARANTINE_RULE,
    STAGE_OVERDUE_RULE,
    BuiltinRule,
    CheckRule,
    EventCountRule,
    Limits,
    OfflineRule,
    RateRule,
    RuleModel,
    RuleSet,
    ThresholdRule,
    WindowRule,
    render_summary,
    site_params_problems,
    smoothing_text,
)
from sanitel.alerts.silences import Silences
from sanitel.alerts.subjects import Registry, RegistryCache, Subject, subject_key
from sanitel.alerts.timeline import Cursor, Episode, Policy, Sample, Status, advance, judge
from sanitel.db import one_row
from sanitel.durations import format_duration
from sanitel.emission_limits import PARAMS_KEY
from sanitel.errors import ConfigError
from sanitel.heartbeats import Stage, judge_stages, read_heartbeats
from sanitel.schemas.readings import BY_TABLE
from sanitel.signal_conditions import Smoothing

log = logging.getLogger("sanitel.alerts")

EVALUATOR_LOCK_ID = 0x5A41E7  # pg advisory lock: one evaluation pass at a time, across processes
_TICK = timedelta(microseconds=1)
_EPOCH_ORIGIN = datetime(2000, 1, 3)  # time_bucket's origin (a Monday), in local time
# the stages ``stage_overdue`` watches: the evaluator cannot alert about itself (/health and /metrics do)
WATCHED_STAGES: tuple[Stage, ...] = ("collector", "processor")


@dataclass(frozen=True)
class EvaluatorConfig:
    lateness_horizon: timedelta = timedelta(days=2)  # older device times are not evaluated
    # a window is closed this long after its end, by the data clock (the newest device time any device's stored
    # reading has, never beyond the wall clock) — or as soon as a reading after its end arrived from its subject.
    # Not by the wall clock alone: a collector working through a backlog stores the windows' readings hours
    # late, and a window judged by the wall clock would be judged on the part that had arrived.
    close_grace: timedelta = timedelta(minutes=2)
    # the data clock holds while rows keep being stored (the newest less than this long ago); after a quiet
    # spell (nothing stored, or a restart) windows close by the wall clock again, or a silent device's last
    # window would wait for ever
    data_quiet_after: timedelta = timedelta(minutes=2)
    settle: timedelta = timedelta(seconds=30)  # see queries.safe_upto
    write_margin: timedelta = timedelta(seconds=5)  # longest a reading's write transaction takes to commit
    quarantine_retry: timedelta = timedelta(minutes=15)  # a rule that failed is tried again after this
    # stage_overdue: a stage is overdue after this many of its intervals; None: stages are not watched (an
    # evaluator of rules alone, as most tests run it; the service sets settings.stage_overdue_factor)
    stage_overdue_factor: float | None = None
    # cems_averages_behind fires once unaveraged readings were stored this long ago (write time); the service
    # sets maintain_interval_s × stage_overdue_factor, so a processor on schedule never raises it
    averages_behind_after: timedelta = timedelta(minutes=3)


@dataclass(frozen=True, slots=True)
class DataSeen:
    newest_ts: datetime  # the newest device time among the readings stored lately
    stored_at: datetime  # when the newest of them was stored (database clock)


@dataclass(frozen=True, slots=True)
class Failure:
    rule_hash: str  # the definition that failed: a changed one is tried at once
    at: datetime  # pass time of the failure
    error: str


@dataclass
class Quarantine:
    """Rules that failed while evaluated (rule id → failure). Kept by the service across passes; a fresh one
    per pass simply tries every rule again."""

    failures: dict[str, Failure] = field(default_factory=dict)

    def holds(self, rule: RuleModel, now: datetime, retry: timedelta) -> bool:
        """Is the rule still left out? Not once it changed or ``retry`` has passed since it failed."""
        failure = self.failures.get(rule.id)
        return failure is not None and failure.rule_hash == _rule_hash(rule) and now - failure.at < retry

    def forget_missing(self, rule_ids: Iterable[str]) -> None:
        keep = set(rule_ids)
        self.failures = {k: v for k, v in self.failures.items() if k in keep}


@dataclass
class PassReport:
    ran: bool  # False: another evaluator held the lock
    now: datetime | None = None
    transitions: list[tuple[int, str]] = field(default_factory=list)
    subjects: int = 0
    duration_s: float = 0.0


@dataclass
class _Pass:
    conn: psycopg.Connection
    now: datetime
    upto: datetime
    horizon: datetime
    registry: Registry
    lifecycle: Lifecycle
    changes: dict[str, dict[str, Change]]
    grace: timedelta
    write_margin: timedelta
    data_clock: datetime  # see EvaluatorConfig.close_grace
    subjects: int = 0
    # per CEMS device: readings its stored averages do not reflect yet (its averages periods from them on wait)
    averages_behind: dict[str, queries.AveragesBehind] = field(default_factory=dict)
    # quarantine key → why: sites whose params the emission-limit rules cannot use (``_param_problems``)
    param_problems: dict[str, str] = field(default_factory=dict)


@dataclass
class _Work:
    """One subject to evaluate for one rule in this pass."""

    subject: Subject
    limits: Limits
    tz: str
    devices: set[str] = field(default_factory=set)
    first_new: datetime | None = None
    cursor: Cursor = field(default_factory=Cursor)
    start: datetime | None = None  # device time evaluation reads from
    covered_from: datetime | None = None  # open alerts starting here or later are fully re-judged
    revisit: bool = False  # come back next pass even without new data (an open or not yet final window)
    # a programmed check's placeholders per episode start (``_evaluate_check``): what its summary shows
    details: dict[datetime, dict[str, Any]] = field(default_factory=dict)

    def saw(self, device_id: str, change: Change | None) -> None:
        self.devices.add(device_id)
        if change is not None and (self.first_new is None or change.first_ts < self.first_new):
            self.first_new = change.first_ts


class Evaluator:
    """Evaluates a rule set against one database. Not thread-safe: one connection, one pass at a time."""

    def __init__(self, conn: psycopg.Connection, ruleset: RuleSet, config: EvaluatorConfig | None = None,
                 quarantine: Quarantine | None = None, registry_cache: RegistryCache | None = None) -> None:
        self.conn = conn
        self.ruleset = ruleset
        self.config = config or EvaluatorConfig()
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        # the registry across passes (the service shares it with the incident step); None: one of its own
        self.registry_cache = registry_cache if registry_cache is not None else RegistryCache()
        self._logged_param_problems: dict[str, str] = {}  # logged once, until they change
        self._data_seen: DataSeen | None = None  # across passes: see EvaluatorConfig.close_grace
        self.truck_memo = trucks.TruckMemo()  # across passes: what the truck checks judged (alerts/trucks.py)

    # --- the pass -----------------------------------------------------------------------------
    def run_pass(self, now: datetime | None = None) -> PassReport:
        """Evaluate everything that changed; returns what happened. ``now`` (wall clock) is for tests."""
        started = time.monotonic()
        try:
            with self.conn.transaction():
                if not one_row(self.conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (EVALUATOR_LOCK_ID,)))[0]:
                    return PassReport(ran=False)
                upto = queries.safe_upto(self.conn, self.config.settle)
                now = now or datetime.now(UTC)
                ctx = self._context(now, upto)
                ctx.averages_behind = self._averages_behind(ctx)
                ctx.param_problems = self._param_problems(ctx)
                self.quarantine.forget_missing(r.id for r in self.ruleset.enabled())
                for rule in self.ruleset.enabled():
                    if not self.quarantine.holds(rule, now, self.config.quarantine_retry):
                        self._evaluate(ctx, rule)
                self._quarantine_alerts(ctx)
                self._stage_alerts(ctx)
                self._averages_behind_alerts(ctx)
                self._retire_removed_rules(ctx)
                self._remind(ctx)
                self._save_watermarks(ctx)
        except BaseException:
            # rolled back: a notification read in it may have been acted on, or its LISTEN undone with it; the
            # truck checks' verdicts stand for alerts that were not written
            self.registry_cache.drop()
            self.truck_memo.forget_verdicts()
            raise
        return PassReport(True, now, ctx.lifecycle.transitions, ctx.subjects, time.monotonic() - started)

    def _context(self, now: datetime, upto: datetime) -> _Pass:
        # Two clocks: device times are judged against the pass's wall clock ``now`` (which a test may set),
        # write times (``stored_at``) against the database's, which stamped them.
        horizon = now - self.config.lateness_horizon
        stored_since = upto - self.config.lateness_horizon  # the first pass's watermark
        marks: dict[str, datetime] = dict(self.conn.execute("SELECT source, stored_upto FROM alert_watermarks").fetchall())
        changes = {}
        for table in BY_TABLE:
            changes[table] = queries.changes(self.conn, table, marks.get(table, stored_since), upto, horizon)
        if queries.table_exists(self.conn, AVERAGES_TABLE):
            changes[AVERAGES_TABLE] = queries.averages_changes(
                self.conn, marks.get(AVERAGES_TABLE, stored_since), upto, horizon)
        if queries.table_exists(self.conn, JUDGEMENTS_TABLE):
            changes[JUDGEMENTS_TABLE] = queries.judgements_changes(
                self.conn, marks.get(JUDGEMENTS_TABLE, stored_since), upto, horizon)
        lifecycle = Lifecycle(self.conn, now=now, silences=Silences.load(self.conn, horizon),
                              webhooks=load_webhooks(self.conn))
        data_clock = self._data_clock(changes, now, upto)
        # after the pass's first statements: the notifications waiting on the connection have been read
        return _Pass(self.conn, now, upto, horizon, self.registry_cache.get(self.conn), lifecycle, changes,
                     self.config.close_grace, self.config.write_margin, data_clock)

    def _data_clock(self, changes: Mapping[str, Mapping[str, Change]], now: datetime, upto: datetime) -> datetime:
        """The newest device time of the readings stored lately, no later than ``now`` — behind the wall clock
        while a collector works through a backlog — or ``now`` once nothing was stored for a quiet spell."""
        stored = [c for table in BY_TABLE for c in changes.get(table, {}).values() if c.last_stored is not None]
        if stored:
            newest = min(now, max(c.last_ts for c in stored))
            if self._data_seen is not None and upto - self._data_seen.stored_at < self.config.data_quiet_after:
                newest = max(newest, self._data_seen.newest_ts)  # a batch of older rows does not turn it back
            self._data_seen = DataSeen(newest, max(cast(datetime, c.last_stored) for c in stored))
        seen = self._data_seen
        if seen is None or upto - seen.stored_at >= self.config.data_quiet_after:
            return now
        return seen.newest_ts

    def _save_watermarks(self, ctx: _Pass) -> None:
        self.conn.cursor().executemany(
            "INSERT INTO alert_watermarks (source, stored_upto) VALUES (%s, %s) ON CONFLICT (source)"
            " DO UPDATE SET stored_upto = greatest(alert_watermarks.stored_upto, EXCLUDED.stored_upto),"
            " updated_at = now()", [(source, ctx.upto) for source in ctx.changes])

    def _evaluate(self, ctx: _Pass, rule: RuleModel) -> None:
        transitions, subjects = len(ctx.lifecycle.transitions), ctx.subjects
        try:
            with self.conn.transaction():  # a savepoint: one broken rule never stops the others
                if isinstance(rule, OfflineRule):
                    _evaluate_offline(ctx, rule)
                elif isinstance(rule, CheckRule):
                    _evaluate_check(ctx, rule, self.truck_memo)
                elif isinstance(rule, WindowRule) and rule.source == AVERAGES_TABLE:
                    _evaluate_averages(ctx, rule)
                elif isinstance(rule, WindowRule) and rule.source == JUDGEMENTS_TABLE:
                    _evaluate_judgements(ctx, rule)
                elif isinstance(rule, WindowRule | EventCountRule):
                    _evaluate_windows(ctx, rule)
                else:
                    _evaluate_readings(ctx, rule)
        except psycopg.OperationalError as exc:
            if not isinstance(exc, psycopg.errors.QueryCanceled):
                raise  # the connection is gone: the pass as a whole is retried
            self._failed(ctx, rule, exc, transitions, subjects)  # a statement timeout: this rule's query
        except Exception as exc:  # anything this rule raises is its fault: a savepoint rolled it back …
            if self.conn.closed or self.conn.broken or isinstance(exc, psycopg.InterfaceError):
                raise  # … unless the connection went: no rule is to blame, the pass is retried
            self._failed(ctx, rule, exc, transitions, subjects)
        else:
            if self.quarantine.failures.pop(rule.id, None) is not None:
                log.info("rule %s evaluates again: out of quarantine", rule.id)

    def _failed(self, ctx: _Pass, rule: RuleModel, exc: Exception, transitions: int, subjects: int) -> None:
        del ctx.lifecycle.transitions[transitions:]  # rolled back with the savepoint
        ctx.subjects = subjects
        self.truck_memo.forget_verdicts()  # the alerts they stand for were rolled back too
        error = f"{type(exc).__name__}: {exc}".strip()
        known = self.quarantine.failures.get(rule.id)
        if known is None or known.error != error:
            log.error("rule %s failed and is quarantined (the other rules go on): %s", rule.id, error,
                      exc_info=not isinstance(exc, psycopg.Error))
        self.quarantine.failures[rule.id] = Failure(_rule_hash(rule), ctx.now, error)

    def _quarantine_alerts(self, ctx: _Pass) -> None:
        """One firing ``rule_quarantined`` alert per quarantined rule; resolved once the rule is back."""
        problems = dict(self.ruleset.problems)
        problems.update({rule_id: f"failed while evaluated: {f.error}" for rule_id, f in self.quarantine.failures.items()})
        problems.update(ctx.param_problems)
        candidates = []
        for key, problem in sorted(problems.items()):
            subject = Subject(subject_key("rule", key), None, None, None)
            labels = {"rule": key, **QUARANTINE_RULE.labels, "rule_id": QUARANTINE_RULE.id,
                      "severity": QUARANTINE_RULE.severity}
            first_line = problem.strip().splitlines()[0] if problem.strip() else "?"
            summary = render_summary(QUARANTINE_RULE, {"rule": key, "problem": first_line})[:500]
            candidates.append(Candidate(QUARANTINE_RULE, subject, fingerprint(QUARANTINE_RULE.id, subject.key), labels,
                                        None, Episode(ctx.now, ctx.now, None, None, None, None), summary))
        self._reconcile_builtin(ctx, QUARANTINE_RULE, candidates, resolved="the rule validates and evaluates again")

    def _stage_alerts(self, ctx: _Pass) -> None:
        """One firing ``stage_overdue`` alert per watched stage that is overdue or missing; resolved when it
        reports again (its heartbeat, on its own clock, against this pass's ``now``)."""
        factor = self.config.stage_overdue_factor
        if factor is None:
            return
        rule = STAGE_OVERDUE_RULE
        candidates = []
        for state in judge_stages(read_heartbeats(self.conn), ctx.now, overdue_factor=factor):
            if state.stage not in WATCHED_STAGES or state.status == "ok":
                continue
            key = subject_key("stage", state.stage)
            labels = {"stage": state.stage, **rule.labels, "rule_id": rule.id, "severity": rule.severity}
            limits = Limits(state.overdue_after_s, None) if state.overdue_after_s is not None else None
            candidates.append(Candidate(rule, Subject(key, None, None, None), fingerprint(rule.id, key), labels, limits,
                                        Episode(ctx.now, ctx.now, None, None, None, state.lag_s),
                                        render_summary(rule, {"detail": state.detail})[:500]))
        self._reconcile_builtin(ctx, rule, candidates, resolved="the stage reports again (or is not watched any more)")

    def _averages_behind(self, ctx: _Pass) -> dict[str, queries.AveragesBehind]:
        """The CEMS devices under an enabled averages rule whose readings are newer than their averages."""
        if AVERAGES_TABLE not in ctx.changes:  # no cems_averages table: nothing is averaged here
            return {}
        rules = [r for r in self.ruleset.enabled()
                 if isinstance(r, WindowRule) and r.source in (AVERAGES_TABLE, JUDGEMENTS_TABLE)]
        devices = sorted(d for d, device in ctx.registry.devices.items()
                         if device.kind == "cems" and any(ctx.registry.in_scope(r, d) for r in rules))
        return queries.averages_behind(self.conn, devices, ctx.horizon, ctx.upto)

    def _param_problems(self, ctx: _Pass) -> dict[str, str]:
        """Sites (and devices) whose own params the enabled emission-limit rules cannot use, as quarantine key →
        why; each newly seen or changed problem is logged once."""
        rules = [r for r in self.ruleset.enabled() if isinstance(r, WindowRule) and r.emission_limit is not None]
        problems: dict[str, str] = {}
        if rules:
            for site in ctx.registry.sites.values():
                found = site_params_problems(site.site_id, site.params, rules)
                if found:
                    problems[f"emission_limit rules at site {site.site_id}"] = "; ".join(found)
            for device in ctx.registry.devices.values():
                if device.kind == "cems" and device.metadata:
                    found = _device_param_problems(device.device_id, device.metadata, rules)
                    if found:
                        problems[f"emission_limit rules at device {device.device_id}"] = "; ".join(found)
        for key, problem in problems.items():
            if self._logged_param_problems.get(key) != problem:
                log.warning("%s: %s", key, problem)
        self._logged_param_problems = problems
        return problems

    def _averages_behind_alerts(self, ctx: _Pass) -> None:
        """``cems_averages_behind`` per device whose unaveraged readings have waited longer than
        ``averages_behind_after`` (write times, the database's clock); resolved once its averages caught up."""
        rule = AVERAGES_BEHIND_RULE
        waited = ctx.upto - self.config.averages_behind_after
        candidates = []
        for device_id, late in sorted(ctx.averages_behind.items()):
            if late.oldest_stored >= waited:
                continue  # as fresh as a processor on schedule leaves them
            subject = ctx.registry.subject(subject_key("device", device_id), "cems")
            labels = _labels(ctx, rule, subject)
            # in UTC, whatever the session's time zone: alert texts read the same from every host
            context = {**labels, "readings": late.readings, "first_ts": late.first_ts.astimezone(UTC).isoformat(),
                       "last_ts": late.last_ts.astimezone(UTC).isoformat()}
            candidates.append(Candidate(rule, subject, fingerprint(rule.id, subject.key), labels, None,
                                        Episode(ctx.now, ctx.now, None, None, None, float(late.readings)),
                                        render_summary(rule, context)[:500]))
        self._reconcile_builtin(ctx, rule, candidates, resolved="the averages caught up with the readings")

    def _reconcile_builtin(self, ctx: _Pass, rule: BuiltinRule, firing: Sequence[Candidate], *, resolved: str) -> None:
        """A built-in rule's alerts: open or update one per firing candidate, resolve the others of that rule."""
        standing = {a.subject: a for a in open_alerts(self.conn, rule.id)}
        for candidate in firing:
            alert = standing.pop(candidate.subject.key, None)
            if alert is None:
                ctx.lifecycle.open(candidate)
            else:
                ctx.lifecycle.update(alert, candidate)
        for alert in standing.values():
            ctx.lifecycle.resolve(alert, ctx.now, reason=resolved)

    # --- housekeeping -------------------------------------------------------------------------
    def _retire_removed_rules(self, ctx: _Pass) -> None:
        enabled = {r.id: r for r in self.ruleset.enabled()}
        for alert in open_alerts(self.conn):
            if alert.rule_id in BUILTIN_RULES or (alert.rule_id not in enabled and alert.rule_id in self.ruleset.problems):
                continue  # the engine's own; or a rule that does not validate now: its alerts wait for it
            rule = enabled.get(alert.rule_id)
            if rule is None:
                ctx.lifecycle.resolve(alert, ctx.now, reason="rule removed or disabled")
            elif not _still_applies(ctx.registry, rule, alert):
                ctx.lifecycle.resolve(alert, ctx.now, reason="the rule no longer applies here (scope or site parameters)")

    def _remind(self, ctx: _Pass) -> None:
        for alert in open_alerts(self.conn):
            rule = self.ruleset.rules.get(alert.rule_id) or BUILTIN_RULES.get(alert.rule_id)
            if rule is not None and alert.state == "firing":
                ctx.lifecycle.remind(alert, rule.reminder_every.total_seconds())


# ------------------------------------------------------------------------------------------------
# Shared steps
# ------------------------------------------------------------------------------------------------


def _still_applies(registry: Registry, rule: RuleModel, alert: Alert) -> bool:
    """Is the alert's subject still in the rule's scope, with the rule enabled for its site?"""
    if alert.device_id is not None and alert.device_id in registry.devices and not registry.in_scope(rule, alert.device_id):
        return False
    if isinstance(rule, OfflineRule) or alert.subject is None:
        return True
    subject = registry.subject(alert.subject, alert.kind)
    try:
        return registry.limits_with_site_chain(rule, subject) is not None
    except ConfigError:
        return True  # its site's params are broken (quarantined): the alert waits, as for a rule that does not validate


def _device_param_problems(device_id: str, metadata: Mapping[str, Any], rules: Sequence[RuleModel]) -> list[str]:
    """A device's own limits for emission-limit rules (``metadata.limits`` / ``metadata.params``): refused, since
    emission limits are set on the plant or line, where the compliance report reads them too."""
    where = f"devices.metadata of {device_id}"
    raw = metadata.get("params")
    params: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    found = site_params_problems(device_id, {"limits": metadata.get("limits")}, rules, where)
    found += site_params_problems(device_id, {"limits": params.get("limits")}, rules, f"{where}.params")
    if params.get(PARAMS_KEY) is not None:
        found.append(f"{where}.params.{PARAMS_KEY}: ignored — emission limits are set on the plant or line "
                     "(sites.params), where the compliance report reads them too — fix: move it to the line's site")
    return found


def _rule_hash(rule: RuleModel) -> str:
    return hashlib.sha1(rule.model_dump_json().encode()).hexdigest()[:16]


def _policy(rule: ThresholdRule | RateRule | WindowRule | EventCountRule) -> Policy:
    return Policy(for_=rule.for_, for_samples=getattr(rule, "for_readings", 1), keep_firing_for=rule.keep_firing_for,
                  higher_is_worse=rule.op in (">", ">=", "==", "!="))


def _lookback(rule: ThresholdRule | RateRule | WindowRule | EventCountRule) -> timedelta:
    # enough history before late data to see the episode it belongs to start
    base = max(rule.for_, rule.keep_firing_for, timedelta(minutes=10))
    return base + (getattr(rule, "width", None) or timedelta(0))


def _load_cursors(ctx: _Pass, rule: RuleModel, works: dict[str, _Work]) -> None:
    """Stored cursors of these subjects; one stored for another version of the rule is dropped."""
    if not works:
        return
    digest = _rule_hash(rule)
    for subject, state in ctx.conn.execute(
            "SELECT subject, cursor FROM alert_eval_state WHERE rule_id = %s AND subject = ANY(%s)",
            (rule.id, list(works))).fetchall():
        if state.get("rule_hash") == digest:
            works[subject].cursor = Cursor.from_json(state.get("cursor") or {})
            works[subject].devices.update(state.get("devices") or ())


def _save_cursors(ctx: _Pass, rule: RuleModel, works: Iterable[_Work]) -> None:
    digest = _rule_hash(rule)
    rows = []
    for w in works:
        if w.cursor.evaluated_upto is None and w.revisit and w.start is not None:
            w.cursor.evaluated_upto = w.start - _TICK  # nothing final yet: come back for it
        if w.cursor.evaluated_upto is not None:
            rows.append((rule.id, w.subject.key, w.cursor.evaluated_upto, w.cursor.active or w.revisit,
                         Jsonb({"rule_hash": digest, "cursor": w.cursor.to_json(), "devices": sorted(w.devices)})))
    ctx.conn.cursor().executemany(
        """INSERT INTO alert_eval_state (rule_id, subject, evaluated_upto, active, cursor) VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (rule_id, subject) DO UPDATE SET evaluated_upto = EXCLUDED.evaluated_upto,
               active = EXCLUDED.active, cursor = EXCLUDED.cursor, updated_at = now()""", rows)


def _active_subjects(ctx: _Pass, rule: RuleModel) -> list[str]:
    return [r[0] for r in ctx.conn.execute(
        "SELECT subject FROM alert_eval_state WHERE rule_id = %s AND active", (rule.id,)).fetchall()]


def _new_work(ctx: _Pass, rule: RuleModel, key: str, works: dict[str, _Work]) -> _Work | None:
    """The work item of a subject, created on first sight; None when the rule does not apply there."""
    if key in works:
        return works[key]
    subject = ctx.registry.subject(key, _source_kind(rule))
    try:
        limits = ctx.registry.limits_with_site_chain(rule, subject)
    except ConfigError:
        if not (isinstance(rule, WindowRule) and rule.emission_limit is not None):
            raise  # the rule as a whole is quarantined, as before
        return None  # one site's emission limits are broken: _param_problems reports it (rule_quarantined)
    if limits is None:
        return None
    works[key] = _Work(subject, limits, ctx.registry.subject_timezone(subject))
    return works[key]


def _source_kind(rule: RuleModel) -> str | None:
    source = getattr(rule, "source", None)
    if source in (AVERAGES_TABLE, JUDGEMENTS_TABLE):
        return "cems"
    return BY_TABLE[source].kind if source in BY_TABLE else None


def _plan_starts(ctx: _Pass, rule: ThresholdRule | RateRule | WindowRule | EventCountRule, works: dict[str, _Work],
                 existing: dict[str, list[Alert]],
                 floor: Callable[[datetime, str], datetime], after: Callable[[datetime, str], datetime]) -> None:
    """Resume where each subject stopped, or re-evaluate from before its late data (fresh cursor)."""
    for work in works.values():
        cursor = work.cursor
        fresh_data = work.first_new is None or (
            cursor.evaluated_upto is not None and floor(work.first_new, work.tz) > cursor.evaluated_upto)
        if cursor.evaluated_upto is not None and fresh_data:
            work.start = after(cursor.evaluated_upto, work.tz)
            work.covered_from = cursor.start if cursor.active else work.start
            continue
        anchor = floor(work.first_new, work.tz) if work.first_new is not None else ctx.horizon
        if cursor.active and cursor.start is not None:
            anchor = min(anchor, cursor.start)
        for alert in existing.get(fingerprint(rule.id, work.subject.key), ()):
            if alert.open:
                anchor = min(anchor, alert.started_at)
        work.start = max(floor(anchor - _lookback(rule), work.tz), ctx.horizon - _lookback(rule))
        work.covered_from = work.start
        work.cursor = Cursor()


def _existing(ctx: _Pass, rule: RuleModel, works: dict[str, _Work]) -> dict[str, list[Alert]]:
    return alerts_for(ctx.conn, [fingerprint(rule.id, k) for k in works], ctx.horizon - timedelta(days=1))


def _labels(ctx: _Pass, rule: RuleModel | BuiltinRule, subject: Subject) -> dict[str, str]:
    labels = ctx.registry.labels(subject)
    labels.update(rule.labels)
    labels["rule_id"] = rule.id
    labels["severity"] = rule.severity
    return labels


def _candidate(ctx: _Pass, rule: RuleModel, work: _Work, episode: Episode) -> Candidate:
    labels = _labels(ctx, rule, work.subject)
    limits = work.limits
    details = work.details.get(episode.start) or (next(reversed(work.details.values())) if work.details else {})
    context = {**labels, **details, **(limits.context if limits else {}), "value": episode.last_value,
               "peak": episode.peak,
               "threshold": limits.threshold if limits else None, "clear": limits.clear if limits else None,
               "subject": work.subject.key, "window": getattr(rule, "window", None),
               "for": format_duration(getattr(rule, "for_", timedelta(0))), "standard": rule.standard,
               "smoothing": smoothing_text(rule)}
    return Candidate(rule, work.subject, fingerprint(rule.id, work.subject.key), labels, limits, episode,
                     render_summary(rule, context))


def _overlaps(alert: Alert, episode: Episode) -> bool:
    far = datetime.max.replace(tzinfo=UTC)
    episode_end = episode.resolved_at or far
    if alert.resolved_by is not None:
        # cleared by hand (at wall-clock time): it stands for the episode it was part of, no later one
        return episode.start <= alert.started_at < episode_end
    alert_end = alert.resolved_at if not alert.open and alert.resolved_at else far
    return alert.started_at < episode_end and episode.start < alert_end


def _match(alerts: Sequence[Alert], episode: Episode) -> Alert | None:
    overlapping = [a for a in alerts if _overlaps(a, episode)]
    return next((a for a in overlapping if a.open), overlapping[-1] if overlapping else None)


def _reconcile(ctx: _Pass, rule: RuleModel, work: _Work, episodes: Sequence[Episode],
               alerts: list[Alert]) -> None:
    """Bring the stored alerts of one subject in line with its episodes."""
    lc = ctx.lifecycle
    explained: set[int] = set()
    for episode in episodes:
        alert = _match(alerts, episode)
        candidate = _candidate(ctx, rule, work, episode)
        if alert is None or (not alert.open and alert.resolved_by is None and _continues(alert, episode)):
            if not episode.fired and not episode.open:
                continue  # pending and over: nothing worth keeping
            if alert is not None:  # resolved alerts are final: the rest of the episode is a new alert
                episode = _after(episode, cast(datetime, alert.resolved_at))  # not open: resolved
                candidate = _candidate(ctx, rule, work, episode)
            if episode.open:  # the open slot is the new episode's (defensive: an open alert would have matched)
                for stale in [a for a in alerts if a.open]:
                    lc.resolve(stale, min(episode.start, ctx.now), reason="superseded by a new episode")
            alert = lc.open(candidate)
            alerts.append(alert)
        elif alert.open:
            if episode.fired and alert.state == "pending":
                lc.fire(alert, candidate)
            else:
                lc.update(alert, candidate)
        explained.add(alert.alert_id)
        if alert.open and episode.resolved_at is not None:
            lc.resolve(alert, episode.resolved_at)
    latest = work.cursor.evaluated_upto or ctx.now
    for alert in alerts:
        if alert.open and alert.alert_id not in explained and work.covered_from is not None \
                and alert.started_at >= work.covered_from:
            lc.resolve(alert, latest, reason="re-evaluated: the condition no longer holds")


def _continues(alert: Alert, episode: Episode) -> bool:
    """Does the episode go on after the (automatically) resolved alert it overlaps? (late data)"""
    assert alert.resolved_at is not None
    return episode.fired and (episode.resolved_at is None or episode.resolved_at > alert.resolved_at) \
        and (episode.fire_at or episode.start) > alert.resolved_at


def _after(episode: Episode, at: datetime) -> Episode:
    return Episode(max(episode.start, at), episode.fire_at, episode.ended_at, episode.resolved_at, episode.peak,
                   episode.last_value)


def _finish(ctx: _Pass, rule: RuleModel, works: dict[str, _Work], episodes: dict[str, list[Episode]],
            existing: dict[str, list[Alert]]) -> None:
    for key, work in works.items():
        _reconcile(ctx, rule, work, episodes.get(key, []), existing.setdefault(fingerprint(rule.id, key), []))
    _save_cursors(ctx, rule, works.values())
    ctx.subjects += len(works)


def _run(cursor: Cursor, samples: Sequence[Sample], policy: Policy) -> list[Episode]:
    episodes = advance(cursor, samples, policy)
    open_episode = cursor.episode()
    return episodes + ([open_episode] if open_episode else [])


# ------------------------------------------------------------------------------------------------
# Readings: threshold and rate
# ------------------------------------------------------------------------------------------------


def _reading_floor(ts: datetime, tz: str) -> datetime:
    return ts


def _reading_after(ts: datetime, tz: str) -> datetime:
    return ts + _TICK


def _evaluate_readings(ctx: _Pass, rule: ThresholdRule | RateRule) -> None:
    works: dict[str, _Work] = {}
    for device_id, change in ctx.changes.get(rule.source, {}).items():
        if ctx.registry.in_scope(rule, device_id):
            work = _new_work(ctx, rule, subject_key("device", device_id), works)
            if work is not None:
                work.saw(device_id, change)
    if not works:
        return
    _load_cursors(ctx, rule, works)
    existing = _existing(ctx, rule, works)
    _plan_starts(ctx, rule, works, existing, _reading_floor, _reading_after)
    # device subjects, each with the start _plan_starts set
    requests = [Request(cast(str, w.subject.device_id), w.subject.key, w.tz, cast(datetime, w.start))
                for w in works.values()]
    policy = _policy(rule)
    episodes: dict[str, list[Episode]] = {}
    if isinstance(rule, RateRule):
        rates = queries.rate_rows(ctx.conn, rule, requests, ctx.upto)
        for key, work in works.items():
            samples = [Sample(ts, ts, rate, judge(rate, rule.op, work.limits.threshold, work.limits.clear))
                       for ts, rate in rates.get(cast(str, work.subject.device_id), ())]
            episodes[key] = _run(work.cursor, samples, policy)
    else:
        rolling = rule.smoothing.rolling if rule.smoothing is not None else None
        readings = queries.reading_rows(ctx.conn, rule, requests, ctx.upto,
                                        lookback=rolling.readings - 1 if rolling is not None else 0)
        for key, work in works.items():
            samples = _reading_samples(rule, work.limits, readings.get(cast(str, work.subject.device_id), []),
                                       rolling)
            episodes[key] = _run(work.cursor, samples, policy)
    _finish(ctx, rule, works, episodes, existing)


def _reading_samples(rule: ThresholdRule, limits: Limits, rows: Sequence[queries.ReadingRow],
                     rolling: Smoothing | None) -> list[Sample]:
    """One sample per reading from the start (look-back rows only fill the window). With a rolling smoothing the
    value judged — and the alert's value — is the statistic over the device's last N counted readings, the reading
    itself included (``Smoothing.rolling``, as the ground truth computes it): no verdict before a full window.
    Readings that do not count (flags) are skipped and stay out of the window."""
    judged: Iterator[float | None] = iter(())
    if rolling is not None:
        judged = iter(rolling.rolling([v for _, v, counted, _ in rows if counted]))
    samples = []
    for ts, raw, counted, lookback in rows:
        value: float | None = raw
        if counted and rolling is not None:
            value = next(judged)
        if lookback:
            continue
        status = judge(value, rule.op, limits.threshold, limits.clear) if counted else Status.SKIP
        samples.append(Sample(ts, ts, value, status))
    return samples


# ------------------------------------------------------------------------------------------------
# Windows: aggregates over clock-aligned windows, event counts
# ------------------------------------------------------------------------------------------------


def bucket_floor(ts: datetime, width: timedelta, tz: str) -> datetime:
    """The start of the clock-aligned window holding ``ts``, in the time zone's local time (the same
    windows ``time_bucket(width, ts, tz)`` gives)."""
    zone = ZoneInfo(tz)
    local = ts.astimezone(zone).replace(tzinfo=None)
    start = _EPOCH_ORIGIN + ((local - _EPOCH_ORIGIN) // width) * width
    return start.replace(tzinfo=zone).astimezone(UTC)


def bucket_next(start: datetime, width: timedelta, tz: str) -> datetime:
    zone = ZoneInfo(tz)
    local = start.astimezone(zone).replace(tzinfo=None) + width
    return local.replace(tzinfo=zone).astimezone(UTC)


def _window_subject(rule: WindowRule | EventCountRule, registry: Registry, device_id: str) -> str:
    device = registry.devices[device_id]
    if rule.per == "site" and device.site_id:
        return subject_key("site", device.site_id)
    if rule.per == "point":
        return subject_key("point", device.site_id or device_id)  # rows with a point_id name their own
    return subject_key("device", device_id)


def _evaluate_windows(ctx: _Pass, rule: WindowRule | EventCountRule) -> None:
    width = rule.width
    works: dict[str, _Work] = {}
    changed = ctx.changes.get(rule.source, {})
    for device_id, change in changed.items():
        if ctx.registry.in_scope(rule, device_id):
            key = _window_subject(rule, ctx.registry, device_id)
            work = _new_work(ctx, rule, key, works)
            if work is not None:
                work.saw(device_id, change)
                _add_site_devices(ctx, rule, work)
    for key in _active_subjects(ctx, rule):  # an active condition ends when a window closes clean
        _new_work(ctx, rule, key, works)
    if not works:
        return
    _load_cursors(ctx, rule, works)
    existing = _existing(ctx, rule, works)
    _plan_starts(ctx, rule, works, existing, lambda ts, tz: bucket_floor(ts, width, tz),
                 lambda ts, tz: bucket_next(bucket_floor(ts, width, tz), width, tz))
    requests = [Request(d, k, w.tz, cast(datetime, w.start))  # the start _plan_starts set
                for k, w in works.items() for d in sorted(w.devices)]
    rows = queries.window_rows(ctx.conn, rule, requests, ctx.upto)
    policy = _policy(rule)
    episodes: dict[str, list[Episode]] = {}
    for key in set(rows) - set(works):  # point subjects named by the rows' point_id
        work = _new_work(ctx, rule, key, works)
        if work is not None:
            work.start = min(r.bucket for r in rows[key])
            work.covered_from = work.start
    for key, work in works.items():
        work.devices.update(d for r in rows.get(key, ()) for d in r.devices)  # read them next time too
        samples, tentative = _window_samples(ctx, rule, work, rows.get(key, []))
        episodes[key] = _run_with_tentative(work.cursor, samples, tentative, policy)
        work.revisit = tentative is not None
    _finish(ctx, rule, works, episodes, existing)


def _add_site_devices(ctx: _Pass, rule: WindowRule | EventCountRule, work: _Work) -> None:
    # a site's (or point's) window aggregates every device there, not only the one that sent data
    if rule.per != "device" and work.subject.site_id:
        work.devices.update(d for d in ctx.registry.devices_at(work.subject.site_id)
                            if ctx.registry.in_scope(rule, d))


def _window_samples(ctx: _Pass, rule: WindowRule | EventCountRule, work: _Work,
                    rows: Sequence[queries.WindowRow]) -> tuple[list[Sample], Sample | None]:
    """Samples of the closed windows (dense for counts: a window without events counted 0), and the
    still-open window's sample when the rule may fire early."""
    width, limits = rule.width, work.limits
    latest = max((r.last_ts for r in rows), default=None)
    by_clock = min(ctx.now, ctx.data_clock) - ctx.grace
    closed_upto = max(by_clock, latest) if latest else by_clock
    by_bucket = {r.bucket: r for r in rows}
    counting = isinstance(rule, EventCountRule) or rule.aggregate == "count"
    buckets = sorted(by_bucket)
    if counting and (buckets or work.cursor.evaluated_upto is not None):
        first = cast(datetime, work.start) if work.cursor.evaluated_upto is not None else buckets[0]  # planned
        buckets = _dense(first, closed_upto, width, work.tz, buckets)
    samples: list[Sample] = []
    tentative = None
    for bucket in buckets:
        end = bucket_next(bucket, width, work.tz)
        row = by_bucket.get(bucket)
        value, status = _window_verdict(rule, limits, row)
        if end <= closed_upto:
            samples.append(Sample(bucket, end, value, status))
        elif rule.early and status is Status.BREACH and row is not None:
            tentative = Sample(bucket, row.last_ts, value, status)  # fires at the event that reached the limit
    return samples, tentative


def _dense(first: datetime, closed_upto: datetime, width: timedelta, tz: str,
           have: Sequence[datetime]) -> list[datetime]:
    out: list[datetime] = []
    bucket = bucket_floor(first, width, tz)
    while bucket_next(bucket, width, tz) <= closed_upto and len(out) < 20_000:
        out.append(bucket)
        bucket = bucket_next(bucket, width, tz)
    return sorted(set(out) | set(have))


def _window_verdict(rule: WindowRule | EventCountRule, limits: Limits,
                    row: queries.WindowRow | None) -> tuple[float | None, Status]:
    if isinstance(rule, EventCountRule) or rule.aggregate == "count":
        value = row.value if row is not None and row.value is not None else 0.0
        return value, judge(value, rule.op, limits.threshold, limits.clear)
    if row is None or row.value is None or row.n_valid == 0:
        return None, Status.SKIP
    if row.n_valid < rule.min_valid_fraction * (row.n_valid + row.n_discarded):
        return row.value, Status.SKIP  # too many flagged readings: the window says nothing
    return row.value, judge(_validated(rule, limits, row.value), rule.op, limits.threshold, limits.clear)


def _validated(rule: WindowRule, limits: Limits, value: float) -> float:
    """2010/75/EU: the average minus the 95 % confidence interval (a share of the emission limit)."""
    if limits.confidence_interval is not None:  # an emission_limit rule: from the subject's limit set
        return value - limits.confidence_interval
    if not rule.confidence_interval_pct:
        return value
    of = rule.confidence_interval_of if rule.confidence_interval_of is not None else limits.threshold
    return value - rule.confidence_interval_pct / 100.0 * of


def _run_with_tentative(cursor: Cursor, samples: Sequence[Sample], tentative: Sample | None,
                        policy: Policy) -> list[Episode]:
    """Closed windows move the stored cursor; an open window that already breaches moves a copy."""
    episodes = advance(cursor, samples, policy)
    probe = cursor
    if tentative is not None:
        probe = cursor.copy()
        episodes += advance(probe, [tentative], policy)
    open_episode = probe.episode()
    return episodes + ([open_episode] if open_episode else [])


# ------------------------------------------------------------------------------------------------
# Emission averages (cems_averages, maintained by processors/cems_averages.py)
# ------------------------------------------------------------------------------------------------


def _processed_works(ctx: _Pass, rule: WindowRule, table: str
                     ) -> tuple[dict[str, _Work], dict[str, list[Alert]], list[Request]] | None:
    """The device subjects of a rule on a table the processor maintains (changed rows, active conditions, periods
    held back last time), their cursors and open alerts, and one request each from the start _plan_starts set;
    None when there is nothing to judge."""
    works: dict[str, _Work] = {}
    for device_id, change in ctx.changes.get(table, {}).items():
        if ctx.registry.in_scope(rule, device_id):
            work = _new_work(ctx, rule, subject_key("device", device_id), works)
            if work is not None:
                work.saw(device_id, change)
    for key in _active_subjects(ctx, rule):
        _new_work(ctx, rule, key, works)
    if not works:
        return None
    _load_cursors(ctx, rule, works)
    existing = _existing(ctx, rule, works)
    _plan_starts(ctx, rule, works, existing, lambda ts, tz: bucket_floor(ts, rule.width, tz), _reading_after)
    # device subjects (a subject of another key reads no rows)
    requests = [Request(cast(str, w.subject.device_id), k, w.tz, cast(datetime, w.start)) for k, w in works.items()]
    return works, existing, requests


def _evaluate_averages(ctx: _Pass, rule: WindowRule) -> None:
    planned = _processed_works(ctx, rule, AVERAGES_TABLE)
    if planned is None:
        return
    works, existing, requests = planned
    rows = queries.averages_rows(ctx.conn, rule, requests, ctx.upto, ctx.write_margin)
    policy = _policy(rule)
    episodes: dict[str, list[Episode]] = {}
    for key, work in works.items():
        samples: list[Sample] = []
        tentative: Sample | None = None
        late = ctx.averages_behind.get(cast(str, work.subject.device_id))
        for row in rows.get(cast(str, work.subject.device_id), ()):
            if row.status == "in_progress" or not row.final or (late is not None and row.end > late.first_ts):
                # not over; or computed before the unit reported past its end (a backlog still arriving
                # would make it look "missing"); or readings from inside or before it were stored after it
                # was computed (the averages are behind: cems_averages_behind): neither it nor any later
                # period is judged yet — except a period not over that the processor already calls invalid, which
                # it does only when that is certain from the data in (issue 18: never for the future; once over, a
                # backlog could still fill its missing half-hours, so it waits for the unit like any other)
                work.revisit = True
                if rule.aggregate == "invalid" and row.status == "invalid" and late is None and row.end > ctx.now:
                    value, status = _average_verdict(rule, work.limits, row)
                    tentative = Sample(row.start, max(row.start, min(ctx.now, row.end)), value, status)
                break
            value, status = _average_verdict(rule, work.limits, row)
            samples.append(Sample(row.start, row.end, value, status))
        episodes[key] = _run_with_tentative(work.cursor, samples, tentative, policy)
    _finish(ctx, rule, works, episodes, existing)


def _average_verdict(rule: WindowRule, limits: Limits, row: queries.AverageRow) -> tuple[float | None, Status]:
    if rule.aggregate == "invalid":
        # a discarded period is reported invalid — never as compliant; a marked, missing or not-operating one is
        # neither (the processor makes a day invalid only for > 5 half-hours discarded for the measuring system)
        if row.status not in ("valid", "invalid"):
            return None, Status.SKIP
        value = 1.0 if row.status == "invalid" else 0.0
        return value, judge(value, rule.op, limits.threshold, limits.clear)
    if row.status != "valid" or row.value is None:
        # invalid, missing, not operating, marked (a furnace mark: GB 18485-2014 / MEE Order No. 10 judge such
        # periods under their own rules, cems_daily_judgements): no verdict either way
        return row.value, Status.SKIP
    return row.value, judge(_validated(rule, limits, row.value), rule.op, limits.threshold, limits.clear)


# ------------------------------------------------------------------------------------------------
# Daily regulatory judgements (cems_daily_judgements, maintained by the scheduled processor)
# ------------------------------------------------------------------------------------------------


def _evaluate_judgements(ctx: _Pass, rule: WindowRule) -> None:
    """One sample per final day. A day not final yet (not over, or computed before the unit reported past its
    end) stops the device's samples there; an ``early`` rule fires on it when it already breaches — its value
    can only grow until the day ends — but an in-progress day is never an "ok" verdict."""
    planned = _processed_works(ctx, rule, JUDGEMENTS_TABLE)
    if planned is None:
        return
    works, existing, requests = planned
    rows = queries.judgement_rows(ctx.conn, rule, requests, ctx.upto, ctx.write_margin)
    policy = _policy(rule)
    episodes: dict[str, list[Episode]] = {}
    for key, work in works.items():
        samples, tentative = _judgement_samples(ctx, rule, work, rows.get(cast(str, work.subject.device_id), ()))
        episodes[key] = _run_with_tentative(work.cursor, samples, tentative, policy)
    _finish(ctx, rule, works, episodes, existing)


def _judgement_samples(ctx: _Pass, rule: WindowRule, work: _Work,
                       rows: Sequence[queries.JudgementRow]) -> tuple[list[Sample], Sample | None]:
    samples: list[Sample] = []
    late = ctx.averages_behind.get(cast(str, work.subject.device_id))
    for row in rows:
        status = judge(row.value, rule.op, work.limits.threshold, work.limits.clear)
        if not row.final or (late is not None and row.end > late.first_ts):
            # not over, or computed before all of the day was in (the processor is behind): not judged yet
            work.revisit = True
            if not (rule.early and status is Status.BREACH):
                return samples, None
            seen = max(row.start, min(ctx.now, row.end))  # the day's rows carry no device time of the breach
            return samples, Sample(row.start, seen, row.value, status)
        samples.append(Sample(row.start, row.end, row.value, status))
    return samples, None


# ------------------------------------------------------------------------------------------------
# Programmed checks (kind: builtin): alerts/trucks.py
# ------------------------------------------------------------------------------------------------


def _evaluate_check(ctx: _Pass, rule: CheckRule, memo: trucks.TruckMemo) -> None:
    """The check's findings (episodes per subject over a span it re-reads, open alerts' subjects included),
    reconciled like any rule's. Deadlines and waits are judged against the data clock: while a collector works
    through a backlog, a pickup or ticket still in it never makes a point look missed or a load unweighed."""
    open_subjects: dict[str, datetime] = {}
    for alert in open_alerts(ctx.conn, rule.id):
        if alert.subject is not None:
            open_subjects[alert.subject] = min(open_subjects.get(alert.subject, alert.started_at), alert.started_at)
    span = trucks.Span(ctx.now, min(ctx.now, ctx.data_clock), ctx.horizon, ctx.upto, ctx.changes, open_subjects,
                       memo)
    works: dict[str, _Work] = {}
    episodes: dict[str, list[Episode]] = {}
    for key, finding in trucks.judge_check(ctx.conn, ctx.registry, rule, span).items():
        work = _Work(finding.subject, finding.limits, ctx.registry.subject_timezone(finding.subject))
        work.covered_from = finding.covered_from
        work.cursor.evaluated_upto = span.judged_at
        work.details = {e.start: d for e, d in zip(finding.episodes, finding.details, strict=True)}
        works[key], episodes[key] = work, finding.episodes
    existing = _existing(ctx, rule, works)
    for key, work in works.items():
        _reconcile(ctx, rule, work, episodes[key], existing.setdefault(fingerprint(rule.id, key), []))
    ctx.subjects += len(works)


# ------------------------------------------------------------------------------------------------
# Offline
# ------------------------------------------------------------------------------------------------


def _evaluate_offline(ctx: _Pass, rule: OfflineRule) -> None:
    kinds = rule.kinds()
    open_by_device = {a.device_id for a in open_alerts(ctx.conn, rule.id) if a.device_id}
    changed_ids = {d for k in kinds for t in DEVICE_TABLES.get(k, ()) for d in ctx.changes.get(t, {})}
    timeout_s = int(rule.timeout.total_seconds()) if rule.timeout else None
    seen = {s.device_id: s for s in queries.last_seen(ctx.conn, kinds, ctx.now, timeout_s,
                                                      sorted(open_by_device | changed_ids))
            if ctx.registry.in_scope(rule, s.device_id)}
    timeouts = {d: s.timeout_s for d, s in seen.items()}
    live = {d: s for d, s in seen.items()  # silent now (receive time: our clock, not the device's)
            if ctx.now - (s.last_received or s.registered_at) > timedelta(seconds=timeouts[d])}
    gaps = _gaps(ctx, kinds, _offline_changes(ctx, kinds, seen), timeouts)
    expected = _expected_to_report(ctx, rule, [(d, s.last_ts) for d, s in live.items()]
                                   + [(d, prev) for d, pairs in gaps.items() for prev, _ in pairs])
    episodes: dict[str, list[Episode]] = defaultdict(list)
    for device_id, s in live.items():
        if expected(device_id, s.last_ts):
            start = (s.last_received or s.registered_at) + timedelta(seconds=timeouts[device_id])
            episodes[device_id].append(Episode(start, start, None, None, None, None))
    for device_id, pairs in gaps.items():
        for prev, nxt in pairs:  # silences in device time, seen when the data after them landed
            if expected(device_id, prev):
                start = prev + timedelta(seconds=timeouts[device_id])
                episodes[device_id].append(Episode(start, start, nxt, nxt, None, None))
    works: dict[str, _Work] = {}
    for device_id in set(episodes) | (open_by_device & set(seen)):
        subject = ctx.registry.subject(subject_key("device", device_id))
        work = _Work(subject, Limits(timeouts[device_id], None, {"timeout_s": timeouts[device_id]}),
                     ctx.registry.subject_timezone(subject))
        last = seen[device_id].last_ts or ctx.now
        work.cursor.evaluated_upto = last
        work.covered_from = datetime.min.replace(tzinfo=UTC)  # every open offline alert is re-judged
        works[subject.key] = work
    existing = _existing(ctx, rule, works)
    for key, work in works.items():
        device_id = cast(str, work.subject.device_id)  # offline subjects are devices
        found = sorted(episodes.get(device_id, []), key=lambda e: e.start)
        alerts = existing.setdefault(fingerprint(rule.id, key), [])
        _reconcile(ctx, rule, work, _merge_overlapping(found), alerts)
    ctx.subjects += len(works)


def _expected_to_report(ctx: _Pass, rule: OfflineRule,
                        silences: Sequence[tuple[str, datetime | None]]) -> Callable[[str, datetime | None], bool]:
    """Whether a device was expected to report during a silence that began after its reading at the given device
    time (None: it never reported). Always, unless the rule says ``only_while: on_shift``: then only when the
    truck's last telemetry by then states a shift state other than off_shift — none stated (or no reading at all)
    counts as on shift, so a box that never says is watched like any device (alerts/rules/offline.yaml)."""
    if rule.only_while is None:
        return lambda device_id, since: True
    states = queries.shift_states_at(ctx.conn, [(d, t) for d, t in silences if t is not None], ctx.upto)
    return lambda device_id, since: since is None or states.get((device_id, since)) != OFF_SHIFT


def _offline_changes(ctx: _Pass, kinds: Sequence[str], seen: dict[str, queries.LastSeen]) -> dict[str, datetime]:
    first: dict[str, datetime] = {}
    for kind in kinds:
        for table in DEVICE_TABLES.get(kind, ()):
            for device_id, change in ctx.changes.get(table, {}).items():
                if device_id in seen and (device_id not in first or change.first_ts < first[device_id]):
                    first[device_id] = change.first_ts
    return first


def _gaps(ctx: _Pass, kinds: Sequence[str], first_new: dict[str, datetime],
          timeouts: dict[str, int]) -> dict[str, list[tuple[datetime, datetime]]]:
    tables = [t for k in kinds for t in DEVICE_TABLES.get(k, ())]
    if not first_new or not tables:
        return {}
    previous = queries.previous_reading(ctx.conn, tables, first_new, ctx.horizon)
    starts = {d: previous.get(d, ts) for d, ts in first_new.items()}
    return queries.reading_gaps(ctx.conn, tables, starts, {d: timeouts[d] for d in starts}, ctx.upto)


def _merge_overlapping(episodes: Sequence[Episode]) -> list[Episode]:
    """A live silence and the same silence seen in device time are one episode."""
    out: list[Episode] = []
    for ep in episodes:
        if out and (out[-1].resolved_at is None or ep.start < out[-1].resolved_at):
            last = out[-1]
            end = None if last.resolved_at is None or ep.resolved_at is None else max(last.resolved_at, ep.resolved_at)
            out[-1] = Episode(last.start, last.fire_at, end, end, None, None)
        else:
            out.append(ep)
    return out
