"""The collection-truck checks (issue 15; ``kind: builtin`` rules of alerts/rules/truck.yaml).

Each check turns the rows of a bounded span into episodes per subject; the evaluator reconciles them with the stored
alerts like any rule's (``evaluator._evaluate_check``). What "certain evidence" means for each (issue 18):

- ``point_not_cleared`` (subject ``point:<site>``, the contract's): ``sanitel.clearance.judge_clearance`` — the code
  the daily clearance report and the simulators' ground truth use — says overdue, late or missed: the episode starts
  at the deadline (never before it), and ends at the first pickup of the category after it; overlapping episodes of
  the point's categories are one alert (its summary names them all). Days of the whole look-back
  are re-judged every pass (a deadline passes without any new row arriving).
- ``load_not_weighed`` (subject the truck): the first pickup not yet followed by a weighbridge ticket of the truck;
  the episode starts when the wait (``within``) is over — judged against the data clock, so a collector working
  through a backlog never makes a ticket look missing — and ends at the ticket.
- ``weighbridge_mismatch`` (the truck): a ticket whose net is off the pickups summed since the truck's previous
  ticket (within a day) by more than both tolerances; from the ticket to the truck's next ticket.
- ``truck_overweight``, ``truck_off_route``, ``truck_idle`` (the truck): telemetry of the trucks that sent some since
  the last pass, or have an open alert, re-read from before the earliest of them: the rolling median (k of n) or
  the ``for`` of the engine's own timeline (``alerts/timeline.py``) over it.
- ``overflow_not_picked_up`` (the bin): the bin_full condition over the bin's fill readings, and the collecting
  trucks' positions within ``distance_m`` of its point while it held, without a pickup at that point.

Pure functions first (unit-tested), the database glue at the end.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg

from sanitel.alerts import queries
from sanitel.alerts.queries import Pickup, Ticket, TruckRow
from sanitel.alerts.rules import CheckRule, Limits, limits_for
from sanitel.alerts.subjects import Registry, Subject, subject_key
from sanitel.alerts.timeline import Cursor, Episode, Policy, Sample, Status, advance, judge
from sanitel.clearance import ClearanceSchedule, PickupAt, day_bounds, deadline, judge_clearance, parse_clearance
from sanitel.errors import ConfigError
from sanitel.signal_conditions import condition

log = logging.getLogger("sanitel.alerts")

EARTH_RADIUS_M = 6_371_000.0
# weighbridge_mismatch: the pickups summed for a ticket go back to the truck's previous ticket, at most this far (a
# truck tips at least once a shift; a ticket with no previous one sums the day's pickups before it)
TRIP_SPAN = timedelta(days=1)
# shift states in which a truck may stand still (at the depot, on the tip, off shift): never "idle"
RESTING_STATES = frozenset({"depot", "tipping", "off_shift"})
DEPOT_RADIUS_M = 150.0  # a truck this close to its depot_site_id stands at the depot (project default)
VISIT_GAP = timedelta(minutes=5)  # a truck's readings near a point this close together are one visit
PICKUP_SLACK = timedelta(minutes=5)  # a pickup this long before or after a visit counts for it (clocks, lift time)
VISIT_LOOKBACK = timedelta(hours=1)  # overflow: read from this long before the earliest new reading
_ALWAYS = datetime.min.replace(tzinfo=UTC)  # covered_from of a check that re-judges every open alert each pass


@dataclass
class Finding:
    """A check's verdict on one subject: its episodes (with what the summary shows of each) since ``covered_from``
    — open alerts of the subject starting then or later and not explained by an episode are resolved."""

    subject: Subject
    limits: Limits
    covered_from: datetime
    episodes: list[Episode] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)  # one per episode: summary placeholders


@dataclass(frozen=True)
class Span:
    """The pass as a check sees it."""

    now: datetime  # wall clock of the pass
    judged_at: datetime  # the data clock: deadlines and waits are judged against it (never beyond ``now``)
    horizon: datetime  # older device times are not evaluated
    upto: datetime  # rows stored before this are committed
    changed: Mapping[str, Mapping[str, queries.Change]]  # table → device → what was stored this pass
    open_subjects: Mapping[str, datetime]  # subjects of the rule's open alerts → the earliest start


# --------------------------------------------------------------------------------------------
# Pure: episodes
# --------------------------------------------------------------------------------------------


def merge(found: Sequence[tuple[Episode, dict[str, Any]]]) -> list[tuple[Episode, dict[str, Any]]]:
    """Overlapping episodes (a point missed two days running, no pickup between; its kitchen and its other waste
    both overdue) are one, with the first's details — and every category named."""
    out: list[tuple[Episode, dict[str, Any]]] = []
    for episode, details in sorted(found, key=lambda f: f[0].start):
        if out and (out[-1][0].resolved_at is None or episode.start <= out[-1][0].resolved_at):
            last, kept = out[-1]
            end = None if last.resolved_at is None or episode.resolved_at is None else max(last.resolved_at,
                                                                                           episode.resolved_at)
            peak = max((v for v in (last.peak, episode.peak) if v is not None), default=None)
            if "category" in details and details["category"] not in kept["category"].split(", "):
                kept = {**kept, "category": f"{kept['category']}, {details['category']}"}
            out[-1] = (Episode(last.start, last.fire_at, end, end, peak, episode.last_value), kept)
        else:
            out.append((episode, details))
    return out


def clearance_episodes(schedule: ClearanceSchedule, days: Iterable[date], tz: ZoneInfo, pickups: Sequence[PickupAt],
                       judged_at: datetime) -> list[tuple[Episode, dict[str, Any]]]:
    """Per day whose status is overdue, late or missed: an episode from the deadline to the first pickup of the
    category after it (open while there is none). The value is how late, in minutes."""
    found: list[tuple[Episode, dict[str, Any]]] = []
    for day in days:
        status = judge_clearance(schedule, day, tz, pickups, judged_at)
        if status not in ("overdue", "late", "missed"):
            continue
        due = deadline(schedule, day, tz).astimezone(UTC)
        after = sorted(p.at for p in pickups if (p.category is None or p.category == schedule.category)
                       and due < p.at <= judged_at)
        end = after[0] if after else None
        late_min = ((end or judged_at) - due).total_seconds() / 60
        found.append((Episode(due, due, end, end, late_min, late_min),
                      {"category": schedule.category, "status": status,
                       "deadline": f"{day.isoformat()} {schedule.by.strftime('%H:%M')}"}))
    return merge(found)


def unweighed_episodes(pickups: Sequence[Pickup], tickets: Sequence[Ticket], within: timedelta,
                       judged_at: datetime) -> list[tuple[Episode, dict[str, Any]]]:
    """One truck: from the first pickup (> 0 kg) after a ticket, a ticket is due ``within``; an episode starts when
    that wait is over with none (never before) and ends at the ticket. The value is the kilograms picked up."""
    events = sorted([(p.ts, 0, p) for p in pickups] + [(t.ts, 1, t) for t in tickets], key=lambda e: (e[0], e[1]))
    found: list[tuple[Episode, dict[str, Any]]] = []
    first: datetime | None = None
    total = 0.0
    for ts, _, event in events:
        if isinstance(event, Ticket):
            if first is not None and ts > first + within:
                found.append(_unweighed(first + within, ts, total, first))
            first, total = None, 0.0
        elif event.weight_kg > 0:
            first = first or ts
            total += event.weight_kg
    if first is not None and judged_at >= first + within:
        found.append(_unweighed(first + within, None, total, first))
    return found


def _unweighed(start: datetime, end: datetime | None, total: float, first: datetime) -> tuple[Episode, dict[str, Any]]:
    return Episode(start, start, end, end, total, total), {"pickups_kg": total, "first_pickup": first.isoformat()}


def mismatch_episodes(pickups: Sequence[Pickup], tickets: Sequence[Ticket], judged_from: datetime, tolerance_pct: float,
                      tolerance_kg: float) -> list[tuple[Episode, dict[str, Any]]]:
    """One truck: each ticket at or after ``judged_from`` against its pickups since the previous ticket (at most
    TRIP_SPAN back); off by more than both tolerances → an episode from the ticket to the truck's next ticket. The
    value is the difference in % of the pickups (100 with none)."""
    found: list[tuple[Episode, dict[str, Any]]] = []
    ordered = sorted(tickets, key=lambda t: t.ts)
    for i, ticket in enumerate(ordered):
        if ticket.ts < judged_from:
            continue
        since = max(ordered[i - 1].ts if i else ticket.ts - TRIP_SPAN, ticket.ts - TRIP_SPAN)
        summed = sum(p.weight_kg for p in pickups if since < p.ts <= ticket.ts)
        difference = abs(ticket.net_kg - summed)
        pct = 100.0 * difference / summed if summed > 0 else 100.0
        if difference <= tolerance_kg or pct <= tolerance_pct:
            continue
        end = ordered[i + 1].ts if i + 1 < len(ordered) else None
        found.append((Episode(ticket.ts, ticket.ts, end, end, pct, pct),
                      {"ticket_id": ticket.ticket_id, "net_kg": ticket.net_kg, "pickups_kg": summed,
                       "difference_pct": pct}))
    return found


def held_episodes(samples: Sequence[Sample], policy: Policy) -> list[Episode]:
    """The engine's own timeline (``for``, hysteresis) over samples from a fresh start."""
    cursor = Cursor()
    episodes = advance(cursor, samples, policy)
    last = cursor.episode()
    return episodes + ([last] if last is not None else [])


def overweight_samples(rows: Sequence[TruckRow], rated_param: float | None, threshold: float,
                       clear: float | None) -> list[Sample]:
    """The truck_overweight condition per reading: load as % of the rated payload (the registry's, else the
    reading's), smoothed as the condition says (median of 5: at least 3 of the last 5 above); look-back rows only
    fill the window, and no verdict before it is full."""
    smoothing = condition("truck_overweight").smoothing
    judged: list[tuple[TruckRow, float]] = []
    for row in rows:
        rated = rated_param or row.rated_payload_kg
        if row.load_kg is not None and rated:
            judged.append((row, 100.0 * row.load_kg / rated))
    smoothed = smoothing.rolling([pct for _, pct in judged])
    return [Sample(row.ts, row.ts, value, judge(value, ">", threshold, clear))
            for (row, _), value in zip(judged, smoothed, strict=True) if not row.lookback]


def distance_to_path_m(lat: float, lon: float, path: Sequence[tuple[float, float]]) -> float:
    """Metres from a position to a polyline (an equirectangular projection around the position: exact enough
    within a city)."""
    if not path:
        return math.inf
    scale = math.cos(math.radians(lat))

    def xy(p: tuple[float, float]) -> tuple[float, float]:
        return (math.radians(p[1] - lon) * scale * EARTH_RADIUS_M, math.radians(p[0] - lat) * EARTH_RADIUS_M)

    points = [xy(p) for p in path]
    if len(points) == 1:
        return math.hypot(*points[0])
    return min(_to_segment(a, b) for a, b in itertools.pairwise(points))


def _to_segment(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to segment ab."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, -(a[0] * dx + a[1] * dy) / length2))
    return math.hypot(a[0] + t * dx, a[1] + t * dy)


def off_route_samples(rows: Sequence[TruckRow], path_of: Mapping[str | None, Sequence[tuple[float, float]]],
                      limit_m: float) -> list[Sample]:
    """Collecting with a position and a route path: BREACH farther than ``limit_m``; any other shift state ends it
    (CLEAR); no position or no route: no verdict."""
    samples = []
    for row in rows:
        if row.lookback:
            continue
        if row.shift_state is not None and row.shift_state != "collecting":
            samples.append(Sample(row.ts, row.ts, None, Status.CLEAR))
            continue
        path = path_of.get(row.route_id)
        if row.shift_state is None or row.lat is None or row.lon is None or not path:
            samples.append(Sample(row.ts, row.ts, None, Status.SKIP))
            continue
        distance = distance_to_path_m(row.lat, row.lon, path)
        samples.append(Sample(row.ts, row.ts, distance, judge(distance, ">", limit_m, None)))
    return samples


def idle_samples(rows: Sequence[TruckRow], depot: tuple[float, float] | None) -> list[Sample]:
    """On shift (not resting) at speed 0, away from the depot: BREACH; moving or resting: CLEAR; unknown: none."""
    samples = []
    for row in rows:
        if row.lookback:
            continue
        if row.shift_state is None or row.speed_kmh is None:
            status = Status.SKIP
        elif row.shift_state in RESTING_STATES or row.speed_kmh > 0 or _near(row, depot, DEPOT_RADIUS_M):
            status = Status.CLEAR
        else:
            status = Status.BREACH
        samples.append(Sample(row.ts, row.ts, row.speed_kmh, status))
    return samples


@dataclass(frozen=True, slots=True)
class Visit:
    """A truck's readings near a sorting point, consecutive (no gap above VISIT_GAP)."""

    truck_id: str
    point_id: str
    start: datetime
    end: datetime


def visits(near: Iterable[tuple[str, datetime, str]]) -> list[Visit]:
    """(truck, ts, point) readings → visits, in time order."""
    out: list[Visit] = []
    last: dict[tuple[str, str], int] = {}
    for truck, ts, point in sorted(near, key=lambda n: n[1]):
        i = last.get((truck, point))
        if i is not None and ts - out[i].end <= VISIT_GAP:
            out[i] = Visit(truck, point, out[i].start, ts)
        else:
            last[(truck, point)] = len(out)
            out.append(Visit(truck, point, ts, ts))
    return out


def unserved(found: Sequence[Visit], pickups: Sequence[Pickup]) -> list[Visit]:
    """The visits with no pickup by that truck at that point during them (give or take PICKUP_SLACK)."""
    return [v for v in found if not any(p.truck_id == v.truck_id and p.point_id == v.point_id
                                        and v.start - PICKUP_SLACK <= p.ts <= v.end + PICKUP_SLACK for p in pickups)]


def overflow_episodes(full: Sequence[Episode], missed: Sequence[Visit]) -> list[tuple[Episode, dict[str, Any]]]:
    """While the bin was full, a visit without pickup: from that visit until the bin is no longer full."""
    found: list[tuple[Episode, dict[str, Any]]] = []
    for episode in full:
        during = [v for v in missed if episode.start <= v.start and (episode.resolved_at is None
                                                                     or v.start < episode.resolved_at)]
        if during:
            first = min(during, key=lambda v: v.start)
            found.append((Episode(first.start, first.start, episode.ended_at, episode.resolved_at, episode.peak,
                                  episode.last_value),
                          {"truck_id": first.truck_id, "visited_at": first.start.isoformat()}))
    return found


def _near(row: TruckRow, place: tuple[float, float] | None, radius_m: float) -> bool:
    return place is not None and row.lat is not None and row.lon is not None \
        and distance_to_path_m(row.lat, row.lon, [place]) <= radius_m


# --------------------------------------------------------------------------------------------
# Database glue
# --------------------------------------------------------------------------------------------


def judge_check(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    """Subject key → finding, for every subject the check judged this pass (those of open alerts included)."""
    judges = {"point_not_cleared": _points, "load_not_weighed": _unweighed_loads, "weighbridge_mismatch": _mismatches,
              "truck_overweight": _overweight, "truck_off_route": _off_route, "truck_idle": _idle,
              "overflow_not_picked_up": _overflow}
    return judges[rule.check](conn, registry, rule, span)


def _limits(registry: Registry, rule: CheckRule, subject: Subject) -> Limits | None:
    return limits_for(rule, registry.params(subject))


def _trucks(registry: Registry, rule: CheckRule) -> list[str]:
    return sorted(d for d, device in registry.devices.items() if device.kind == "truck" and registry.in_scope(rule, d))


_logged: dict[str, str] = {}  # site → the clearance problem logged (once, until it changes)


def _points(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    """Every sorting point with a clearance schedule, every local day of the look-back."""
    schedules: dict[str, list[ClearanceSchedule]] = {}
    for site in registry.sites.values():
        if site.kind != "sorting_point" or (rule.scope.sites and not any(
                s.site_id in rule.scope.sites for s in registry.chain(site.site_id))):
            continue
        try:
            found = parse_clearance(registry.site_params(site.site_id), where=site.site_id)
        except ConfigError as exc:  # one site's broken params never stop the others' alerts
            if _logged.get(site.site_id) != str(exc):
                log.warning("point_not_cleared skips %s: %s", site.site_id, exc)
                _logged[site.site_id] = str(exc)
            continue
        if found:
            schedules[site.site_id] = found
    if not schedules:
        return _open_only(registry, rule, span)
    since = span.horizon - timedelta(days=1)  # a day judged in the look-back sees its pickups from its start
    by_point: dict[str, list[PickupAt]] = defaultdict(list)
    for p in queries.pickups(conn, since, span.judged_at, span.upto, sorted(schedules)):
        by_point[cast(str, p.point_id)].append(PickupAt(p.category, p.ts))
    out: dict[str, Finding] = {}
    reported: dict[tuple[datetime, datetime], bool] = {}  # [start, end) → some truck reported then

    def fleet_reported(start: datetime, end: datetime) -> bool:
        if (start, end) not in reported:
            reported[start, end] = queries.fleet_reported(conn, start, end, span.upto)
        return reported[start, end]

    for point, found in schedules.items():
        tz = ZoneInfo(registry.timezone(point))
        first, last = span.horizon.astimezone(tz).date(), span.judged_at.astimezone(tz).date()
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        episodes: list[tuple[Episode, dict[str, Any]]] = []
        for schedule in found:
            # A deadline before which no truck had reported that day says nothing about pickups (the fleet was not
            # connected yet, or its telemetry was lost): no verdict on it, as none on hours without data (issue 18).
            days_due = [d for d in days if deadline(schedule, d, tz) >= span.horizon
                        and fleet_reported(day_bounds(d, tz)[0], deadline(schedule, d, tz))]
            episodes += clearance_episodes(schedule, days_due, tz, by_point.get(point, []), span.judged_at)
        _add(out, registry, rule, subject_key("point", point), _ALWAYS, merge(episodes))
    _add_open(out, registry, rule, span)
    return out


def _add(out: dict[str, Finding], registry: Registry, rule: CheckRule, key: str, covered_from: datetime,
         found: Sequence[tuple[Episode, dict[str, Any]]], kind: str | None = None) -> None:
    subject = registry.subject(key, kind)
    limits = _limits(registry, rule, subject)
    if limits is None:
        return  # disabled there
    out[key] = Finding(subject, limits, covered_from, [e for e, _ in found], [d for _, d in found])


def _add_open(out: dict[str, Finding], registry: Registry, rule: CheckRule, span: Span) -> None:
    """Open alerts of subjects not judged (the point lost its schedule, the truck its scope): re-judged, as clean."""
    for key in span.open_subjects:
        if key not in out:
            _add(out, registry, rule, key, _ALWAYS, [])


def _open_only(registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    _add_open(out, registry, rule, span)
    return out


def _events_by_truck(conn: psycopg.Connection, since: datetime, span: Span
                     ) -> tuple[dict[str, list[Pickup]], dict[str, list[Ticket]]]:
    by_pickup: dict[str, list[Pickup]] = defaultdict(list)
    for p in queries.pickups(conn, since, span.judged_at, span.upto):
        by_pickup[p.truck_id].append(p)
    by_ticket: dict[str, list[Ticket]] = defaultdict(list)
    for t in queries.tickets(conn, since, span.judged_at, span.upto):
        by_ticket[t.truck_id].append(t)
    return by_pickup, by_ticket


def _unweighed_loads(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    if not _trucks(registry, rule):
        return _open_only(registry, rule, span)  # nothing to read (and no truck tables needed)
    out: dict[str, Finding] = {}
    within = cast(timedelta, rule.within)
    pickups, tickets = _events_by_truck(conn, span.horizon - within, span)
    for truck in _trucks(registry, rule):
        key = subject_key("device", truck)
        limits = _limits(registry, rule, registry.subject(key))
        if limits is None:
            continue
        wait = timedelta(hours=limits.threshold)  # `limits: {load_not_weighed: 2}` moves it per site (hours)
        found = [f for f in unweighed_episodes(pickups.get(truck, []), tickets.get(truck, []), wait, span.judged_at)
                 if f[0].start >= span.horizon or f[0].open]
        tz = ZoneInfo(registry.timezone(registry.devices[truck].site_id))
        for _, details in found:  # the summary shows the truck's local time, as point_not_cleared's deadline
            first = datetime.fromisoformat(details["first_pickup"]).astimezone(tz)
            details["first_pickup"] = first.strftime("%Y-%m-%d %H:%M")
        if found or key in span.open_subjects:
            out[key] = Finding(registry.subject(key), limits, _ALWAYS,
                               [e for e, _ in found], [d for _, d in found])
    _add_open(out, registry, rule, span)
    return out


def _mismatches(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    if not _trucks(registry, rule):
        return _open_only(registry, rule, span)
    out: dict[str, Finding] = {}
    pickups, tickets = _events_by_truck(conn, span.horizon - TRIP_SPAN, span)
    for truck in _trucks(registry, rule):
        key = subject_key("device", truck)
        limits = _limits(registry, rule, registry.subject(key))
        if limits is None:
            continue
        found = mismatch_episodes(pickups.get(truck, []), tickets.get(truck, []), span.horizon, limits.threshold,
                                  cast(float, rule.tolerance_kg))
        if found or key in span.open_subjects:
            out[key] = Finding(registry.subject(key), limits, _ALWAYS,
                               [e for e, _ in found], [d for _, d in found])
    _add_open(out, registry, rule, span)
    return out


def _telemetry_starts(registry: Registry, rule: CheckRule, span: Span, lookback: timedelta) -> dict[str, datetime]:
    """Trucks that sent telemetry this pass or have an open alert → where to read from: before the earliest new
    reading and the open alert's start, by ``lookback`` (a fresh timeline re-derives the episode from there)."""
    starts: dict[str, datetime] = {}
    for truck, change in span.changed.get(queries.TRUCK_TELEMETRY, {}).items():
        if registry.in_scope(rule, truck):
            starts[truck] = change.first_ts
    for key, started in span.open_subjects.items():
        per, ident = key.split(":", 1)
        if per == "device":
            starts[ident] = min(starts.get(ident, started), started)
    floor = span.horizon - lookback
    return {truck: max(ts - lookback, floor) for truck, ts in starts.items()}


def _overweight(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    readings = condition("truck_overweight").smoothing.readings
    starts = _telemetry_starts(registry, rule, span, timedelta(minutes=10))
    rows = queries.truck_rows(conn, starts, span.upto, lookback=readings - 1)
    out: dict[str, Finding] = {}
    for truck, start in starts.items():
        key = subject_key("device", truck)
        subject = registry.subject(key)
        limits = _limits(registry, rule, subject)
        if limits is None:
            continue
        rated = _number(registry.params(subject).get("rated_payload_kg"))
        truck_rows = rows.get(truck, [])
        episodes = held_episodes(overweight_samples(truck_rows, rated, limits.threshold, limits.clear), Policy())
        details = [_load_details(truck_rows, e, rated) for e in episodes]
        out[key] = Finding(subject, limits, start, episodes, details)
    return out


def _load_details(rows: Sequence[TruckRow], episode: Episode, rated: float | None) -> dict[str, Any]:
    seen = [r for r in rows if r.ts >= episode.start and r.load_kg is not None]
    row = max(seen, key=lambda r: r.load_kg or 0.0, default=None)
    if row is None:
        return {}
    return {"load_kg": row.load_kg, "rated_payload_kg": rated or row.rated_payload_kg}


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def _off_route(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    starts = _telemetry_starts(registry, rule, span, rule.for_ + timedelta(minutes=10))
    rows = queries.truck_rows(conn, starts, span.upto)
    routes = queries.routes(conn, sorted(starts)) if starts else []
    out: dict[str, Finding] = {}
    for truck, start in starts.items():
        key = subject_key("device", truck)
        subject = registry.subject(key)
        limits = _limits(registry, rule, subject)
        if limits is None:
            continue
        truck_rows = rows.get(truck, [])
        paths = _paths(registry, [r for r in routes if r.truck_id == truck], truck_rows)
        episodes = held_episodes(off_route_samples(truck_rows, paths, limits.threshold), Policy(for_=rule.for_))
        details = [{"route_id": _route_at(truck_rows, e), "distance_m": e.peak} for e in episodes]
        out[key] = Finding(subject, limits, start, episodes, details)
    return out


def _paths(registry: Registry, routes: Sequence[queries.Route], rows: Sequence[TruckRow]
           ) -> dict[str | None, list[tuple[float, float]]]:
    """Route id → the path through its points (sites with a position, in plan order). Readings that name no route
    (None) follow the truck's route valid on the reading's day (the first, when several are)."""
    def path(route: queries.Route) -> list[tuple[float, float]]:
        out = []
        for point in route.points:
            site = registry.sites.get(point)
            if site is not None and site.latitude is not None and site.longitude is not None:
                out.append((site.latitude, site.longitude))
        return out

    paths: dict[str | None, list[tuple[float, float]]] = {r.route_id: path(r) for r in routes}
    named = {r.route_id for r in rows if r.route_id is not None} - set(paths)
    for route in named:  # a route of another truck named in the telemetry: the plan it says it drives
        paths[route] = []
    if rows and any(r.route_id is None for r in rows):
        day = rows[-1].ts.date()
        valid = [r for r in routes if r.valid_from <= day and (r.valid_to is None or day <= r.valid_to)]
        if valid:
            paths[None] = paths[valid[0].route_id]
    return paths


def _route_at(rows: Sequence[TruckRow], episode: Episode) -> str:
    return next((r.route_id for r in rows if r.ts >= episode.start and r.route_id), "(planned)")


def _idle(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    starts = _telemetry_starts(registry, rule, span, 2 * rule.for_ + timedelta(minutes=10))
    rows = queries.truck_rows(conn, starts, span.upto)
    out: dict[str, Finding] = {}
    for truck, start in starts.items():
        key = subject_key("device", truck)
        subject = registry.subject(key)
        limits = _limits(registry, rule, subject)
        if limits is None:
            continue
        params = registry.params(subject)
        minutes = _number(params.get("idle_limit_min")) or limits.threshold  # the truck's own limit first
        depot = registry.sites.get(str(params.get("depot_site_id")))
        place = (depot.latitude, depot.longitude) if depot and depot.latitude is not None \
            and depot.longitude is not None else None
        episodes = held_episodes(idle_samples(rows.get(truck, []), place), Policy(for_=timedelta(minutes=minutes)))
        details = [{"idle_min": ((e.ended_at or span.judged_at) - e.start).total_seconds() / 60} for e in episodes]
        out[key] = Finding(subject, Limits(minutes, None), start, episodes, details)
    return out


def _overflow(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    """Bins at sorting points with a position; read from before the earliest bin or truck reading stored this pass
    (or the start of an open alert): the bin's full episodes there, and the collecting trucks near its point."""
    full = condition(cast(str, rule.condition))
    points = {d: registry.sites[dev.site_id] for d, dev in registry.devices.items()
              if dev.kind == "bin" and registry.in_scope(rule, d) and dev.site_id in registry.sites
              and registry.sites[dev.site_id].latitude is not None and registry.sites[dev.site_id].longitude is not None}
    anchors = [c.first_ts for d, c in span.changed.get("bin_status", {}).items() if d in points]
    anchors += [c.first_ts for c in span.changed.get(queries.TRUCK_TELEMETRY, {}).values()]
    anchors += list(span.open_subjects.values())
    if not points or not anchors:
        return _open_only(registry, rule, span)
    since = max(min(anchors) - VISIT_LOOKBACK, span.horizon)
    fills = queries.fill_rows(conn, dict.fromkeys(points, since), span.upto, full.smoothing.readings - 1)
    full_bins: dict[str, list[Episode]] = {}
    out: dict[str, Finding] = {}
    for bin_id in points:
        subject = registry.subject(subject_key("device", bin_id))
        limits = _limits(registry, rule, subject)
        if limits is None:
            continue
        rows = fills.get(bin_id, [])
        smoothed = full.smoothing.rolling([v for _, v, _ in rows])
        samples = [Sample(ts, ts, v, judge(v, full.op, limits.threshold, limits.clear))
                   for (ts, _, lookback), v in zip(rows, smoothed, strict=True) if not lookback]
        full_bins[bin_id] = held_episodes(samples, Policy())
        out[subject.key] = Finding(subject, limits, since)
    wanted = {points[b].site_id: (cast(float, points[b].latitude), cast(float, points[b].longitude))
              for b, episodes in full_bins.items() if episodes}
    radius = cast(float, rule.distance_m)
    near = [(truck, ts, point) for truck, ts, point, lat, lon in
            queries.truck_positions_near(conn, wanted, radius, since, span.upto)
            if distance_to_path_m(lat, lon, [wanted[point]]) <= radius]
    served = queries.pickups(conn, since - PICKUP_SLACK, span.judged_at, span.upto, sorted(wanted)) if near else []
    missed = unserved(visits(near), served)
    for bin_id, episodes in full_bins.items():
        finding = out.get(subject_key("device", bin_id))
        if finding is not None:
            found = overflow_episodes(episodes, [v for v in missed if v.point_id == points[bin_id].site_id])
            finding.episodes, finding.details = [e for e, _ in found], [d for _, d in found]
    _add_open(out, registry, rule, span)
    return out
