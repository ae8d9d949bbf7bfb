"""Incidents: alerts that share a place and time are one incident, notified once, root cause first; and
inhibition rules as data (``alerts/rules/incidents.yaml``; a file of that name in ``rules_dir`` replaces it).

Run after each evaluation pass (``service.py``), in one transaction under the evaluator's advisory lock, with one
set of queries per pass whatever the number of alerts; idempotent — running it twice at the same ``now`` changes
nothing the second time.

**Place.** An alert's place is the site of its device or subject (a bin, the point's camera and the point itself
share the sorting point; a line's CEMS unit its line; a station's devices the station); devices of the
``own_place_kinds`` (sweepers: they move) and alerts without a site are each their own place.

**Time.** A fired alert joins the open incident of its place, or opens one. An incident stays open while a member is
pending or firing and for ``group_interval`` after its last member resolved (taking new alerts of its place in that
time), then resolves. The root is the member whose rule comes first in ``root_cause_order`` (ties: the earliest
start); severity is the most severe member's.

**Notifications** (``notify/outbox.py`` describes the payload): the first waits ``group_wait`` after the incident
opened, so that a bin fire and the camera's smoke go out as one; members that join an announced incident go out as
one ``updated`` at most every ``group_interval``; a member's reminder (``lifecycle.remind``) as one ``reminder``; the
resolution as one ``resolved``. An alert is listed in a notification when the lifecycle announced it (a silence did
not mute it) and no inhibition holds it.

**Inhibition.** While a rule's source holds, target alerts on the same device or place keep their state but are
inhibited: ``alerts.inhibited_by`` says by what (``{"rule", "source": "alert" | "mark" | "outage", …}``), the history
records ``inhibited`` / ``released``, and they are left out of notifications. Sources: firing alerts (sharing the
``equal`` labels with the target); furnace marks of the target's line (``cems_marks``: current, covering the alert's
start or still open); a station outage — more than ``more_than`` of a place's devices (those the offline rules
watch) with a firing offline alert, at least ``min_offline`` of them — which turns the place's incident into a
"station outage" whose notification lists the offline alerts it inhibits.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.rows import dict_row

from sanitel.alerts import history
from sanitel.alerts.evaluator import EVALUATOR_LOCK_ID
from sanitel.alerts.lifecycle import ALERT_COLUMNS, Alert
from sanitel.alerts.notify.outbox import enqueue, load_webhooks
from sanitel.alerts.rules import AVERAGES_TABLE, DEFAULT_RULES_PACKAGE, INCIDENT_RULES_FILE, JUDGEMENTS_TABLE, RuleSet
from sanitel.alerts.subjects import Registry, RegistryCache
from sanitel.db import one_row
from sanitel.durations import parse_duration
from sanitel.errors import ConfigError
from sanitel.schemas.readings import BY_TABLE
from sanitel.schemas.topics import SEVERITIES

log = logging.getLogger("sanitel.alerts.incidents")

INCIDENTS_FILE = INCIDENT_RULES_FILE
READINGS = "readings"  # rule_sources: every reading table
RULE_SOURCES = frozenset({*BY_TABLE, AVERAGES_TABLE, JUDGEMENTS_TABLE})
# cems_marks.mark (migration 0080)
MARK_CODES = ("bake_out", "start_up", "shut_down", "shut", "fault", "accident", "cms_maintenance",
              "cms_calibration", "cms_fault", "cms_outage")
OUTAGE_KIND = "station_outage"
MAX_LISTED = 100  # members in one notification; ``incident.members_total`` says how many there are
# fired alerts without an incident are looked for this far back (updated_at): the step runs after every pass, so
# only a step that failed leaves any behind
LOOKBACK = timedelta(hours=1)
_GLOB = re.compile(r"^[A-Za-z0-9_.*?-]{1,128}$")
_LABEL = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_KIND = re.compile(r"^[a-z_]{1,32}$")


# ------------------------------------------------------------------------------------------------
# The rules file
# ------------------------------------------------------------------------------------------------

class IncidentRulesError(ConfigError):
    """incidents.yaml does not validate; the message names the file, the key and the fix."""


@dataclass(frozen=True, slots=True)
class Target:
    rule_ids: tuple[str, ...] = ()  # globs
    except_ids: tuple[str, ...] = ()
    rule_sources: frozenset[str] = frozenset()

    def matches(self, rule_id: str, source: str | None) -> bool:
        if any(fnmatchcase(rule_id, g) for g in self.except_ids):
            return False
        return any(fnmatchcase(rule_id, g) for g in self.rule_ids) or (source is not None and source in self.rule_sources)


@dataclass(frozen=True, slots=True)
class Outage:
    rules: tuple[str, ...]  # globs of the offline rules whose alerts count a device as offline
    more_than: float  # share of the place's devices
    min_offline: int


@dataclass(frozen=True, slots=True)
class Inhibition:
    name: str
    target: Target
    alerts: tuple[str, ...] = ()  # source: firing alerts of these rules (globs) …
    equal: tuple[str, ...] = ()  # … sharing these labels with the target
    marks: tuple[str, ...] = ()  # source: furnace marks of the target's line
    outage: Outage | None = None  # source: a station outage at the target's place


@dataclass(frozen=True)
class IncidentRules:
    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    own_place_kinds: tuple[str, ...] = ("sweeper",)
    root_cause_order: tuple[str, ...] = ()
    inhibit: tuple[Inhibition, ...] = ()
    origin: str = INCIDENTS_FILE

    def rank(self, rule_id: str) -> int:
        """Causal rank: the position of the first pattern matching the rule id; unlisted rules after all."""
        return next((i for i, g in enumerate(self.root_cause_order) if fnmatchcase(rule_id, g)),
                    len(self.root_cause_order))


def _fail(origin: str, key: str, problem: str, fix: str) -> IncidentRulesError:
    return IncidentRulesError(f"{origin}: key '{key}': {problem} — fix: {fix}")


def _mapping(value: Any, key: str, origin: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(origin, key, f"expected a mapping, not {type(value).__name__}",
                    f"write {key}: {{{', '.join(f'{k}: …' for k in allowed[:2])}}}")
    for name in value:
        if name not in allowed:
            where = f"{key}.{name}" if key != "(top level)" else str(name)
            raise _fail(origin, where, "unknown key", f"remove it, or use one of {', '.join(allowed)}")
    return value


def _names(value: Any, key: str, origin: str, pattern: re.Pattern[str], what: str, *,
           allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(origin, key, f"expected a non-empty list of {what}", f"write {key}: [<{what}>, …]")
    known = set(allowed) if allowed is not None else None
    for i, item in enumerate(value):
        if not isinstance(item, str) or not pattern.match(item):
            raise _fail(origin, f"{key}.{i}", f"{item!r} is not a valid {what}",
                        "use letters, digits, '_', '.', '-' (and * ? in globs), at most 128 characters")
        if known is not None and item not in known:
            raise _fail(origin, f"{key}.{i}", f"{item!r} is not one of the {what}s",
                        f"use one of {', '.join(sorted(known))}")
    return tuple(value)


def _duration(data: Mapping[str, Any], key: str, default: timedelta, origin: str) -> timedelta:
    if key not in data:
        return default
    try:
        value = parse_duration(data[key])
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fail(origin, key, str(exc), "write a duration like 30s, 5m") from None
    if value > timedelta(days=1):
        raise _fail(origin, key, f"{data[key]!r} is longer than a day", "use at most 1d")
    return value


def _number(value: Any, key: str, origin: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
        raise _fail(origin, key, f"{value!r} is not a number in [{low:g}, {high:g})",
                    f"give a number such as {(low + high) / 2:g}")
    return float(value)


def _count(value: Any, key: str, origin: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise _fail(origin, key, f"{value!r} is not a whole number of devices (1 or more)", "give e.g. 2")
    return value


def _target(value: Any, key: str, origin: str) -> Target:
    data = _mapping(value, key, origin, ("rule_ids", "except", "rule_sources"))
    if "rule_ids" not in data and "rule_sources" not in data:
        raise _fail(origin, key, "names no alerts", f"add {key}.rule_ids: [<rule id or glob>] or "
                                                    f"{key}.rule_sources: {READINGS}")
    rule_ids = _names(data["rule_ids"], f"{key}.rule_ids", origin, _GLOB, "rule id glob") if "rule_ids" in data else ()
    excepted = _names(data["except"], f"{key}.except", origin, _GLOB, "rule id glob") if "except" in data else ()
    sources: frozenset[str] = frozenset()
    if "rule_sources" in data:
        raw = data["rule_sources"]
        names = _names(raw, f"{key}.rule_sources", origin, _GLOB, "rule source", allowed=(READINGS, *RULE_SOURCES))
        sources = frozenset(BY_TABLE if READINGS in names else ()) | (frozenset(names) - {READINGS})
    return Target(rule_ids, excepted, sources)


def _outage(value: Any, key: str, origin: str) -> Outage:
    data = _mapping(value, key, origin, ("rules", "more_than", "min_offline"))
    if "rules" not in data:
        raise _fail(origin, f"{key}.rules", "missing", f"add {key}.rules: [device_offline]")
    return Outage(_names(data["rules"], f"{key}.rules", origin, _GLOB, "rule id glob"),
                  _number(data.get("more_than", 0.5), f"{key}.more_than", origin, 0.0, 1.0),
                  _count(data.get("min_offline", 2), f"{key}.min_offline", origin))


def _inhibition(item: Any, key: str, origin: str) -> Inhibition:
    data = _mapping(item, key, origin, ("name", "source", "target", "equal"))
    for required in ("name", "source", "target"):
        if required not in data:
            raise _fail(origin, f"{key}.{required}", "missing", f"add {key}.{required}: …")
    name = _names(data["name"], f"{key}.name", origin, _GLOB, "name")
    if len(name) != 1:
        raise _fail(origin, f"{key}.name", "expected one name", f"write {key}.name: <name>")
    source = _mapping(data["source"], f"{key}.source", origin, ("alerts", "marks", "outage"))
    if len(source) != 1:
        raise _fail(origin, f"{key}.source", "needs exactly one of alerts, marks, outage",
                    "keep one source per rule; write several rules for several sources")
    target = _target(data["target"], f"{key}.target", origin)
    equal: tuple[str, ...] = ()
    if "equal" in data:
        if "alerts" not in source:
            raise _fail(origin, f"{key}.equal", "only an alerts source compares labels (marks match the line, an "
                                                "outage the place)", f"remove {key}.equal")
        equal = _names(data["equal"], f"{key}.equal", origin, _LABEL, "label name")
    if "alerts" in source:
        if not equal:
            raise _fail(origin, f"{key}.equal", "an alerts source needs the labels it shares with its targets",
                        f"add {key}.equal: [device_id]")
        return Inhibition(name[0], target, alerts=_names(source["alerts"], f"{key}.source.alerts", origin, _GLOB,
                                                         "rule id glob"), equal=equal)
    if "marks" in source:
        return Inhibition(name[0], target, marks=_names(source["marks"], f"{key}.source.marks", origin, _GLOB,
                                                        "mark", allowed=MARK_CODES))
    return Inhibition(name[0], target, outage=_outage(source["outage"], f"{key}.source.outage", origin))


def parse_incident_rules(data: Any, origin: str = INCIDENTS_FILE) -> IncidentRules:
    """incidents.yaml as loaded YAML → IncidentRules; IncidentRulesError (a ConfigError) names the key and the fix."""
    top = _mapping(data, "(top level)", origin,
                   ("rules", "group_wait", "group_interval", "own_place_kinds", "root_cause_order", "inhibit"))
    if top.get("rules", []) != []:
        raise _fail(origin, "rules", "incidents.yaml defines no alert rules", "move the rules to another file, "
                                                                              "keep 'rules: []' here")
    kinds = _own_place_kinds(top, origin)
    order = _names(top["root_cause_order"], "root_cause_order", origin, _GLOB, "rule id glob") \
        if "root_cause_order" in top else ()
    raw_inhibit = top.get("inhibit", [])
    if not isinstance(raw_inhibit, list):
        raise _fail(origin, "inhibit", f"expected a list, not {type(raw_inhibit).__name__}",
                    "write inhibit: [{name: …, source: …, target: …}, …]")
    inhibit = tuple(_inhibition(item, f"inhibit.{i}", origin) for i, item in enumerate(raw_inhibit))
    seen: set[str] = set()
    for i, rule in enumerate(inhibit):
        if rule.name in seen:
            raise _fail(origin, f"inhibit.{i}.name", f"{rule.name!r} is used twice", "give each rule its own name")
        seen.add(rule.name)
    return IncidentRules(_duration(top, "group_wait", timedelta(seconds=30), origin),
                         _duration(top, "group_interval", timedelta(minutes=5), origin), kinds, order, inhibit, origin)


def _own_place_kinds(top: Mapping[str, Any], origin: str) -> tuple[str, ...]:
    if "own_place_kinds" not in top:
        return IncidentRules.own_place_kinds  # the default
    if top["own_place_kinds"] in (None, []):
        return ()  # every device belongs to its site
    return _names(top["own_place_kinds"], "own_place_kinds", origin, _KIND, "device kind")


def shipped_incident_file() -> Path:
    return Path(str(resources.files(DEFAULT_RULES_PACKAGE) / "rules" / INCIDENTS_FILE))


def incident_file(rules_dir: Path | None) -> Path:
    """``rules_dir/incidents.yaml`` when there is one, else the shipped file."""
    if rules_dir is not None and (rules_dir / INCIDENTS_FILE).is_file():
        return rules_dir / INCIDENTS_FILE
    return shipped_incident_file()


def load_incident_rules(rules_dir: Path | None = None) -> IncidentRules:
    path = incident_file(rules_dir)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise IncidentRulesError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise IncidentRulesError(f"{path}: not valid YAML: {exc}") from None
    return parse_incident_rules(loaded, str(path))


# ------------------------------------------------------------------------------------------------
# The incident step
# ------------------------------------------------------------------------------------------------

@dataclass
class Incident:
    """One row of ``incidents``."""

    incident_id: int
    place: str
    kind: str
    title: str
    root_alert_id: int | None
    severity: str
    state: str
    started_at: datetime
    opened_at: datetime
    quiet_since: datetime | None
    resolved_at: datetime | None
    notified_at: datetime | None
    last_notified_at: datetime | None
    member_order: list[int]
    announced: dict[str, int]
    details: dict[str, Any]

    def as_json(self, members_total: int) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "place": self.place, "kind": self.kind, "title": self.title,
                "severity": self.severity, "state": self.state, "root_alert_id": self.root_alert_id,
                "started_at": _json(self.started_at), "opened_at": _json(self.opened_at),
                "resolved_at": _json(self.resolved_at), "members_total": members_total}

    def stored(self, now: datetime) -> dict[str, Any]:
        """The parameters of ``_write``'s UPDATE."""
        return {"incident_id": self.incident_id, "kind": self.kind, "title": self.title,
                "root_alert_id": self.root_alert_id, "severity": self.severity, "state": self.state,
                "started_at": self.started_at, "quiet_since": self.quiet_since, "resolved_at": self.resolved_at,
                "notified_at": self.notified_at, "last_notified_at": self.last_notified_at,
                "member_order": self.member_order, "announced": json.dumps(self.announced),
                "details": json.dumps(self.details), "now": now}


INCIDENT_COLUMNS = tuple(f.name for f in fields(Incident))


@dataclass(frozen=True, slots=True)
class Mark:
    mark_id: int
    device_id: str
    line_id: str | None
    mark: str
    starts_at: datetime
    ends_at: datetime | None

    def covers(self, ts: datetime) -> bool:
        return self.starts_at <= ts and (self.ends_at is None or ts < self.ends_at)


@dataclass
class IncidentReport:
    ran: bool
    opened: int = 0
    resolved: int = 0
    notifications: int = 0
    inhibition_changes: int = 0


@dataclass
class _Changes:
    """What the step writes, collected so that each kind of write is one statement."""

    alerts: dict[int, Alert] = field(default_factory=dict)  # incident_id or inhibited_by changed
    inhibitions: list[tuple[Alert, dict[str, Any] | None]] = field(default_factory=list)  # for the history
    notifications: list[tuple[Incident, dict[str, Any]]] = field(default_factory=list)


def maintain(conn: psycopg.Connection, now: datetime, rules: IncidentRules, ruleset: RuleSet | None = None,
             registry_cache: RegistryCache | None = None) -> IncidentReport:
    """Group, inhibit and notify after a pass at wall-clock ``now`` (the pass's). Skips (ran=False) while another
    evaluator holds the evaluation lock: it will run the step after its own pass. ``registry_cache``: the
    evaluator's (the service shares it; the caller drops it when this raises); None: the registry is read anew."""
    with conn.transaction():
        if not one_row(conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (EVALUATOR_LOCK_ID,)))[0]:
            return IncidentReport(ran=False)
        incidents = _open_incidents(conn)
        before = {i.incident_id: _stored(i) for i in incidents.values()}
        alerts = _work_alerts(conn, list(incidents), now - LOOKBACK)
        registry = Registry.load(conn) if registry_cache is None else registry_cache.get(conn)
        step = _Step(now, rules, registry, ruleset, alerts, _marks(conn, rules, alerts))
        changes = _Changes()
        step.inhibit(alerts, changes)
        report = IncidentReport(ran=True, inhibition_changes=len(changes.inhibitions))
        report.opened = step.attach(conn, alerts, incidents, changes)
        members: dict[int, list[Alert]] = {}
        for alert in alerts:
            if alert.incident_id is not None:
                members.setdefault(alert.incident_id, []).append(alert)
        for incident_id, incident in incidents.items():
            step.review(incident, members.get(incident_id, []), changes)
        report.resolved = sum(1 for i in incidents.values() if i.state == "resolved")
        _write(conn, now, [i for i in incidents.values() if before.get(i.incident_id) != _stored(i)], changes)
        report.notifications = len(changes.notifications)
    return report


class _Step:
    def __init__(self, now: datetime, rules: IncidentRules, registry: Registry, ruleset: RuleSet | None,
                 alerts: Sequence[Alert], marks: Sequence[Mark]) -> None:
        self.now = now
        self.rules = rules
        self.registry = registry
        self.ruleset = ruleset
        self.firing = [a for a in alerts if a.state == "firing"]
        self.marks = marks
        self.outages = {rule.name: self._outages(rule.outage) for rule in rules.inhibit if rule.outage is not None}

    # --- place and rank -------------------------------------------------------------------------
    def place(self, alert: Alert) -> str:
        if alert.device_id is not None and alert.kind in self.rules.own_place_kinds:
            return f"device:{alert.device_id}"
        return alert.site_id or alert.subject or alert.fingerprint

    def _order(self, alert: Alert) -> tuple[int, datetime, int]:
        return self.rules.rank(alert.rule_id), alert.started_at, alert.alert_id

    def _source(self, rule_id: str) -> str | None:
        rule = self.ruleset.rules.get(rule_id) if self.ruleset is not None else None
        return getattr(rule, "source", None)

    # --- inhibition -----------------------------------------------------------------------------
    def _outages(self, outage: Outage) -> dict[str, dict[str, Any]]:
        """Places where more than ``more_than`` of the watched devices have a firing offline alert."""
        offline: dict[str, set[str]] = {}
        for alert in self.firing:
            if alert.device_id is not None and any(fnmatchcase(alert.rule_id, g) for g in outage.rules):
                offline.setdefault(self.place(alert), set()).add(alert.device_id)
        found = {}
        for place, devices in offline.items():
            watched = self._watched(place, outage)
            total = len(watched | devices)
            down = len(devices)
            if down >= outage.min_offline and down > outage.more_than * total:
                found[place] = {"place": place, "offline": down, "devices": total}
        return found

    def _watched(self, place: str, outage: Outage) -> set[str]:
        """The devices at a place that the outage's offline rules watch (all of them without a rule set)."""
        devices = self.registry.devices_at(place)
        if self.ruleset is None:
            return set(devices)
        rules = [r for r in self.ruleset.enabled() if any(fnmatchcase(r.id, g) for g in outage.rules)]
        return {d for d in devices if any(self.registry.in_scope(r, d) for r in rules)}

    def inhibit(self, alerts: Sequence[Alert], changes: _Changes) -> None:
        """Recompute ``inhibited_by`` for open alerts and for fired alerts joining an incident now; an alert
        already resolved in an incident keeps what it had."""
        for alert in alerts:
            if alert.state == "resolved" and alert.incident_id is not None:
                continue
            held = self._held_by(alert)
            if held != alert.inhibited_by:
                changes.inhibitions.append((alert, held))
                alert.inhibited_by = held
                changes.alerts[alert.alert_id] = alert

    def _held_by(self, alert: Alert) -> dict[str, Any] | None:
        source = self._source(alert.rule_id)
        for rule in self.rules.inhibit:
            if not rule.target.matches(alert.rule_id, source):
                continue
            held = self._alert_source(rule, alert) or self._mark_source(rule, alert) or self._outage_source(rule, alert)
            if held is not None:
                return held
        return None

    def _alert_source(self, rule: Inhibition, alert: Alert) -> dict[str, Any] | None:
        if not rule.alerts:
            return None
        wanted = [alert.labels.get(k) for k in rule.equal]
        if not all(wanted):
            return None
        for source in self.firing:
            if source.alert_id != alert.alert_id and any(fnmatchcase(source.rule_id, g) for g in rule.alerts) \
                    and [source.labels.get(k) for k in rule.equal] == wanted:
                return {"rule": rule.name, "source": "alert", "alert_id": source.alert_id, "rule_id": source.rule_id}
        return None

    def _mark_source(self, rule: Inhibition, alert: Alert) -> dict[str, Any] | None:
        if not rule.marks:
            return None
        for mark in self.marks:
            same_line = mark.device_id == alert.device_id or (mark.line_id is not None and mark.line_id == alert.site_id)
            if same_line and mark.mark in rule.marks and (mark.covers(alert.started_at) or mark.covers(self.now)):
                return {"rule": rule.name, "source": "mark", "mark_id": mark.mark_id, "mark": mark.mark,
                        "starts_at": _json(mark.starts_at), "ends_at": _json(mark.ends_at)}
        return None

    def _outage_source(self, rule: Inhibition, alert: Alert) -> dict[str, Any] | None:
        if rule.outage is None:
            return None
        outage = self.outages[rule.name].get(self.place(alert))
        return {"rule": rule.name, "source": "outage", **outage} if outage is not None else None

    # --- grouping -------------------------------------------------------------------------------
    def attach(self, conn: psycopg.Connection, alerts: Sequence[Alert], incidents: dict[int, Incident],
               changes: _Changes) -> int:
        """Fired alerts without an incident join their place's open incident, or open one; returns how many
        incidents were opened."""
        by_place = {i.place: i for i in incidents.values()}
        waiting: dict[str, list[Alert]] = {}
        for alert in alerts:
            if alert.incident_id is None:
                waiting.setdefault(self.place(alert), []).append(alert)
        new_places = sorted(p for p in waiting if p not in by_place)
        for incident in _open(conn, self.now, new_places, [min(a.started_at for a in waiting[p]) for p in new_places]):
            incidents[incident.incident_id] = incident
            by_place[incident.place] = incident
        for place, joining in waiting.items():
            for alert in joining:
                alert.incident_id = by_place[place].incident_id
                changes.alerts[alert.alert_id] = alert
        return len(new_places)

    # --- an incident's state and notifications --------------------------------------------------
    def review(self, incident: Incident, members: list[Alert], changes: _Changes) -> None:
        if not members:  # its alerts were deleted: nothing to say about it
            incident.state, incident.resolved_at = "resolved", incident.resolved_at or self.now
            return
        members.sort(key=self._order)
        self._describe(incident, members)
        listed = [m for m in members if self._listed(incident, m)]
        all_resolved = all(m.state == "resolved" for m in members)
        incident.quiet_since = (incident.quiet_since or self.now) if all_resolved else None
        event = self._event(incident, listed, all_resolved)
        if event is not None:
            self._notify(incident, event, listed, len(members), changes)
        first_pending = incident.notified_at is None and bool(listed)  # its group wait has not ended
        if all_resolved and not first_pending and incident.quiet_since is not None \
                and self.now >= incident.quiet_since + self.rules.group_interval:
            incident.state = "resolved"
            incident.resolved_at = max(m.resolved_at or self.now for m in members)
            if incident.notified_at is not None:
                announced = [m for m in members if str(m.alert_id) in incident.announced] or listed or members
                self._notify(incident, "resolved", announced, len(members), changes)

    def _describe(self, incident: Incident, members: list[Alert]) -> None:
        root = members[0]
        outage = next((o[incident.place] for o in self.outages.values() if incident.place in o), None)
        if outage is not None:
            incident.kind, incident.details = OUTAGE_KIND, dict(outage)
        incident.root_alert_id = root.alert_id
        incident.member_order = [m.alert_id for m in members]
        incident.severity = min((m.severity for m in members), key=_severity_rank)
        incident.started_at = min(m.started_at for m in members)
        if incident.kind == OUTAGE_KIND:
            details = incident.details
            incident.title = (f"station outage at {incident.place}: {details.get('offline')} of "
                              f"{details.get('devices')} devices offline")
        else:
            more = f" (+{len(members) - 1} related)" if len(members) > 1 else ""
            incident.title = f"{root.summary}{more}"[:500]

    def _listed(self, incident: Incident, alert: Alert) -> bool:
        """Is the alert one the incident's notifications list: announced (not silenced), not inhibited — or, in a
        station outage, one of the offline alerts the outage stands for."""
        if alert.fired_at is None or alert.last_notified_at is None:
            return False
        held = alert.inhibited_by
        return held is None or (incident.kind == OUTAGE_KIND and held.get("source") == "outage")

    def _event(self, incident: Incident, listed: list[Alert], all_resolved: bool) -> str | None:
        if not listed:
            return None
        if incident.notified_at is None:
            return "firing" if self.now >= incident.opened_at + self.rules.group_wait else None
        if all_resolved or (incident.last_notified_at is not None
                            and self.now < incident.last_notified_at + self.rules.group_interval):
            return None
        if any(str(m.alert_id) not in incident.announced for m in listed):
            return "updated"
        if any(m.reminders > incident.announced.get(str(m.alert_id), m.reminders) for m in listed):
            return "reminder"
        return None

    def _notify(self, incident: Incident, event: str, listed: list[Alert], total: int, changes: _Changes) -> None:
        incident.notified_at = incident.notified_at or self.now
        incident.last_notified_at = self.now
        incident.announced = {**incident.announced, **{str(m.alert_id): m.reminders for m in listed}}
        changes.notifications.append((incident, payload(event, incident, listed, total)))


def payload(event: str, incident: Incident, listed: Sequence[Alert], total: int) -> dict[str, Any]:
    """An incident notification (``notify/outbox.py`` documents it): the first listed member at the top level."""
    head = listed[0].as_json()
    return {**head, "event": event, "severity": incident.severity, "incident_id": incident.incident_id,
            "incident": incident.as_json(total), "members": [m.as_json() for m in listed[:MAX_LISTED]]}


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# ------------------------------------------------------------------------------------------------
# Queries: each runs once per step
# ------------------------------------------------------------------------------------------------

_ALERT_SELECT = "SELECT " + ", ".join(ALERT_COLUMNS) + " FROM alerts"
_INCIDENT_SELECT = "SELECT " + ", ".join(INCIDENT_COLUMNS) + " FROM incidents"


def _stored(incident: Incident) -> tuple[Any, ...]:
    """What the step may change, to write only incidents that changed."""
    return tuple(json.dumps(getattr(incident, k), sort_keys=True, default=str) for k in INCIDENT_COLUMNS)


def _incident(row: Mapping[str, Any]) -> Incident:
    return Incident(**{k: row[k] for k in INCIDENT_COLUMNS})


def _open_incidents(conn: psycopg.Connection) -> dict[int, Incident]:
    rows = conn.cursor(row_factory=dict_row).execute(_INCIDENT_SELECT + " WHERE state = 'open' FOR UPDATE").fetchall()
    return {r["incident_id"]: _incident(r) for r in rows}


def _work_alerts(conn: psycopg.Connection, incident_ids: list[int], since: datetime) -> list[Alert]:
    """Members of the open incidents, and fired alerts not in an incident yet (open, or resolved lately)."""
    rows = conn.cursor(row_factory=dict_row).execute(
        _ALERT_SELECT + " WHERE incident_id = ANY(%(ids)s) OR (incident_id IS NULL AND fired_at IS NOT NULL"
                        " AND (state <> 'resolved' OR updated_at >= %(since)s)) ORDER BY alert_id FOR UPDATE",
        {"ids": incident_ids, "since": since}).fetchall()
    return [Alert(**{k: r[k] for k in ALERT_COLUMNS}) for r in rows]


def _marks(conn: psycopg.Connection, rules: IncidentRules, alerts: Sequence[Alert]) -> list[Mark]:
    codes = sorted({code for rule in rules.inhibit for code in rule.marks})
    judged = [a for a in alerts if a.state != "resolved" or a.incident_id is None]  # those ``inhibit`` judges
    devices = sorted({a.device_id for a in judged if a.device_id})
    sites = sorted({a.site_id for a in judged if a.site_id})
    if not codes or not (devices or sites):
        return []
    rows = conn.execute(
        "SELECT mark_id, device_id, line_id, mark, starts_at, ends_at FROM cems_marks"
        " WHERE superseded_by IS NULL AND NOT withdrawn AND mark = ANY(%s) AND (device_id = ANY(%s) OR line_id = ANY(%s))"
        " ORDER BY starts_at, mark_id", (codes, devices, sites)).fetchall()
    return [Mark(*row) for row in rows]


def _open(conn: psycopg.Connection, now: datetime, places: list[str], starts: list[datetime]) -> list[Incident]:
    """New open incidents, one per place (described by ``review`` before the step ends)."""
    if not places:
        return []
    rows = conn.cursor(row_factory=dict_row).execute(
        "INSERT INTO incidents (place, title, severity, state, started_at, opened_at, updated_at)"
        " SELECT place, '', 'warning', 'open', started_at, %(now)s, %(now)s"
        " FROM unnest(%(places)s::text[], %(starts)s::timestamptz[]) AS n(place, started_at)"
        " RETURNING " + ", ".join(INCIDENT_COLUMNS), {"now": now, "places": places, "starts": starts}).fetchall()
    return [_incident(r) for r in rows]


def _write(conn: psycopg.Connection, now: datetime, incidents: Iterable[Incident], changes: _Changes) -> None:
    if changes.alerts:
        changed = list(changes.alerts.values())
        conn.execute(
            "UPDATE alerts a SET incident_id = c.incident_id, inhibited_by = c.inhibited_by::jsonb"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS c(alert_id, incident_id, inhibited_by)"
            " WHERE a.alert_id = c.alert_id",
            ([a.alert_id for a in changed], [a.incident_id for a in changed],
             [json.dumps(a.inhibited_by) if a.inhibited_by is not None else None for a in changed]))
    if changes.inhibitions:
        statements = [history.record(alert.as_json(), alert.state, "inhibited" if held else "released",
                                     details={"inhibited_by": held} if held else {}, at=now)
                      for alert, held in changes.inhibitions]
        conn.cursor().executemany(statements[0].query, [s.params for s in statements])
    rows = [i.stored(now) for i in incidents]
    if rows:
        conn.cursor().executemany(
            "UPDATE incidents SET kind = %(kind)s, title = %(title)s, root_alert_id = %(root_alert_id)s,"
            " severity = %(severity)s, state = %(state)s, started_at = %(started_at)s, quiet_since = %(quiet_since)s,"
            " resolved_at = %(resolved_at)s, notified_at = %(notified_at)s, last_notified_at = %(last_notified_at)s,"
            " member_order = %(member_order)s, announced = %(announced)s::jsonb, details = %(details)s::jsonb,"
            " updated_at = %(now)s WHERE incident_id = %(incident_id)s", rows)
    if changes.notifications:
        webhooks = load_webhooks(conn)
        for incident, body in changes.notifications:
            enqueue(conn, body, history_id=None, webhooks=webhooks, incident_id=incident.incident_id)
