"""The collection-truck checks (issue 15; ``kind: builtin`` rules of alerts/rules/truck.yaml).

Each check turns the rows of a bounded span into episodes per subject; the evaluator reconciles them with the stored
alerts like any rule's (``evaluator._evaluate_check``). What "certain evidence" means for each (issue 18):

- ``point_not_cleared`` (subject ``point:<site>``, the contract's): ``sanitel.clearance.judge_clearance`` — the code
  the daily clearance report and the simulators' ground truth use — says overdue, late or missed: the episode starts
  at the deadline (never before it), and ends at the first pickup of the category after it; overlapping episodes of
  the point's categories are one alert (its summary names them all). Days of the whole look-back are judged;
  a point again only when its verdict may have changed (a pickup there, a deadline or a day's end passed — with no
  new row —, its schedule, the fleet's first report, an open alert): ``TruckMemo``.
- ``load_not_weighed`` (subject the truck): the first pickup not yet followed by a weighbridge ticket of the truck;
  the episode starts when the wait (``within``) is over — judged against the data clock, so a collector working
  through a backlog never makes a ticket look missing — and ends at the ticket.
- ``weighbridge_mismatch`` (the truck): a ticket whose net is off the pickups summed since the truck's previous
  ticket (within a day) by more than both tolerances; from the ticket to the truck's next ticket.
- ``truck_overweight``, ``truck_off_route``, ``truck_idle`` (the truck): telemetry of the trucks that sent some since
  the last pass, or have an open alert, re-read from before the earliest of them: the rolling median (k of n) or
  the ``for`` of the engine's own timeline (``alerts/timeline.py``) over it.
- ``overflow_not_picked_up`` (the bin): the bin_full condition over the bin's fill readings, and the collecting
  trucks' positions within ``distance_m`` of its point while it held, without a pickup at that point; only the
  bins of points a truck came near (``NearLog``), and those with an open alert, are judged.

What the checks read is kept between the passes of one evaluator and topped up with the rows stored since
(``PickupLog``, ``NearLog``, ``TelemetryLog``): at the reference city's size re-reading it every 5 s did not fit.

Pure functions first (unit-tested), the database glue at the end.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg

from sanitel.alerts import queries
from sanitel.alerts.queries import Pickup, Ticket, TruckRow
from sanitel.alerts.rules import CheckRule, Limits
from sanitel.alerts.subjects import Registry, Subject, subject_key
from sanitel.alerts.timeline import Cursor, Episode, Policy, Sample, Status, advance, judge
from sanitel.clearance import (
    ClearanceSchedule,
    PickupAt,
    day_bounds,
    deadline,
    fleet_first_report,
    judge_clearance,
    parse_clearance,
)
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
# the telemetry log reaches back this far: beyond the longest read of the telemetry checks in steady passes (idle:
# twice its ``for`` of 30 minutes and 10 minutes); a longer read falls back to the database
TELEMETRY_SPAN = timedelta(hours=2)
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
    memo: TruckMemo = field(default_factory=lambda: TruckMemo())  # the evaluator's, kept between its passes


# --------------------------------------------------------------------------------------------
# Kept between passes
# --------------------------------------------------------------------------------------------


@dataclass
class PickupLog:
    """The pickups from ``since`` on, kept between passes and topped up with the rows stored since the last one:
    re-reading a city's pickups of the look-back (three days, 270,000 rows at the reference size) every pass cost
    seconds (issue 15, scale). The rows are the database's, which a pass that rolls back does not change, so the
    log outlives a failed pass. ``fresh``: the points with a pickup read by the last top-up (None: all rows are)."""

    since: datetime | None = None
    upto: datetime | None = None
    rows: list[Pickup] = field(default_factory=list)
    fresh: frozenset[str] | None = None

    def refresh(self, conn: psycopg.Connection, since: datetime, upto: datetime) -> None:
        """Holds every pickup from ``since`` stored before ``upto`` (a no-op when it already does)."""
        if self.since is None or self.upto is None or since < self.since or upto < self.upto:
            self.rows, self.fresh = queries.pickups_stored(conn, since, None, upto), None
        elif upto > self.upto or since > self.since:
            new = queries.pickups_stored(conn, since, self.upto, upto) if upto > self.upto else []
            kept = self.rows[bisect.bisect_left(self.rows, since, key=lambda p: p.ts):]
            self.rows = sorted(kept + new, key=lambda p: p.ts) if new else kept  # late rows: anywhere
            self.fresh = frozenset(p.point_id for p in new if p.point_id is not None)
        self.since, self.upto = since, upto

    def between(self, since: datetime, until: datetime) -> list[Pickup]:
        """The pickups in [since, until] (device time), in time order; ``since`` no earlier than the log's."""
        assert self.since is not None and since >= self.since, "refresh the log from this early first"
        return self.rows[bisect.bisect_left(self.rows, since, key=lambda p: p.ts):
                         bisect.bisect_right(self.rows, until, key=lambda p: p.ts)]


class PointGrid:
    """Which points lie within ``radius_m`` of a position: the points binned into cells at least ``radius_m`` wide,
    so a position looks at its cell and the eight around it, then measures."""

    def __init__(self, places: Mapping[str, tuple[float, float]], radius_m: float) -> None:
        self.places, self.radius_m = places, radius_m
        self._lat_step = radius_m / 111_000.0 if radius_m > 0 else 1.0
        # a degree of longitude is shortest at the points' highest latitude: cells that wide there are wide
        # enough at every latitude of the points (a position farther from all of them is near none)
        narrowest = min((math.cos(math.radians(lat)) for lat, _ in places.values()), default=1.0)
        self._lon_step = self._lat_step / max(narrowest, 0.01)
        self._cells: dict[tuple[int, int], list[str]] = defaultdict(list)
        for point, (lat, lon) in places.items():
            self._cells[self._cell(lat, lon)].append(point)

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return int(lat // self._lat_step), int(lon // self._lon_step)

    def near(self, lat: float, lon: float) -> list[str]:
        row, col = self._cell(lat, lon)
        return [point for cell in itertools.product((row - 1, row, row + 1), (col - 1, col, col + 1))
                for point in self._cells.get(cell, ())
                if distance_to_path_m(lat, lon, [self.places[point]]) <= self.radius_m]


@dataclass
class NearLog:
    """Collecting trucks' readings near a sorting point (``PointGrid``) and each truck's newest reading, from
    ``since`` on, kept between passes and topped up with the telemetry stored since the last one: a city's trucks
    send about 300,000 readings an hour, which the overflow check's hour of look-back re-read, and compared with
    every point, every pass (issue 15, scale)."""

    grid: PointGrid = field(default_factory=lambda: PointGrid({}, 0.0))
    since: datetime | None = None
    upto: datetime | None = None
    near: list[tuple[str, datetime, str]] = field(default_factory=list)  # (truck, ts, point), time order
    heard: dict[str, datetime] = field(default_factory=dict)  # truck → its newest reading's device time

    def refresh(self, conn: psycopg.Connection, places: Mapping[str, tuple[float, float]], radius_m: float,
                since: datetime, upto: datetime) -> None:
        """Holds what was stored before ``upto`` from ``since`` on, about these points (a no-op when it does)."""
        if places != self.grid.places or radius_m != self.grid.radius_m:  # a registry's change may move none
            self.grid, self.since = PointGrid(places, radius_m), None
        if self.since is None or self.upto is None or since < self.since or upto < self.upto:
            self.near = self._near(queries.collecting_positions(conn, since, None, upto))
            self.heard = queries.newest_telemetry(conn, since, None, upto)
        elif upto > self.upto or since > self.since:
            kept = self.near[bisect.bisect_left(self.near, since, key=lambda n: n[1]):]
            new = self._near(queries.collecting_positions(conn, since, self.upto, upto)) if upto > self.upto else []
            self.near = sorted(kept + new, key=lambda n: n[1]) if new else kept  # late rows: anywhere
            for truck, ts in (queries.newest_telemetry(conn, since, self.upto, upto).items()
                              if upto > self.upto else ()):
                self.heard[truck] = max(ts, self.heard.get(truck, ts))
        self.since, self.upto = since, upto

    def _near(self, rows: Iterable[tuple[str, datetime, float, float]]) -> list[tuple[str, datetime, str]]:
        out = [(truck, ts, point) for truck, ts, lat, lon in rows for point in self.grid.near(lat, lon)]
        out.sort(key=lambda n: n[1])
        return out


@dataclass
class TelemetryLog:
    """Every truck's telemetry from ``since`` on, kept between passes and topped up with the rows stored since the
    last one: the overweight, off-route and idle checks each re-read their trucks' last 10 to 40 minutes every
    pass (about 330,000 rows a pass at the reference size, issue 15). ``rows`` answers for a truck from the log
    when the log reaches back far enough, and from the database otherwise."""

    since: datetime | None = None
    upto: datetime | None = None
    by_truck: dict[str, list[TruckRow]] = field(default_factory=dict)  # time order

    def refresh(self, conn: psycopg.Connection, since: datetime, upto: datetime) -> None:
        """Holds every truck's telemetry from ``since`` stored before ``upto`` (a no-op when it does)."""
        if self.since is None or self.upto is None or since < self.since or upto < self.upto:
            self.by_truck = defaultdict(list)
            for truck, row in queries.truck_rows_stored(conn, since, None, upto):
                self.by_truck[truck].append(row)
        elif upto > self.upto or since > self.since:
            if since > self.since:
                for truck, rows in self.by_truck.items():
                    if rows and rows[0].ts < since:
                        self.by_truck[truck] = rows[bisect.bisect_left(rows, since, key=lambda r: r.ts):]
            added: set[str] = set()
            for truck, row in queries.truck_rows_stored(conn, since, self.upto, upto) if upto > self.upto else ():
                self.by_truck.setdefault(truck, []).append(row)
                added.add(truck)
            for truck in added:  # late rows: anywhere
                self.by_truck[truck].sort(key=lambda r: r.ts)
        self.since, self.upto = since, upto

    def rows(self, conn: psycopg.Connection, starts: Mapping[str, datetime], upto: datetime, lookback: int = 0
             ) -> dict[str, list[TruckRow]]:
        """As ``queries.truck_rows``: per truck its rows from its start, after its last ``lookback`` readings with
        a load before it (marked ``lookback``)."""
        out: dict[str, list[TruckRow]] = {}
        missing: dict[str, datetime] = {}
        for truck, start in starts.items():
            found = self._from_log(truck, start, lookback) if self.since is not None and start >= self.since \
                and self.upto == upto else None
            if found is None:
                missing[truck] = start
            else:
                out[truck] = found
        out.update(queries.truck_rows(conn, missing, upto, lookback))
        return out

    def _from_log(self, truck: str, start: datetime, lookback: int) -> list[TruckRow] | None:
        rows = self.by_truck.get(truck, [])
        i = bisect.bisect_left(rows, start, key=lambda r: r.ts)
        before = [r for r in rows[:i] if r.load_kg is not None][-lookback:] if lookback else []
        if len(before) < lookback and any(r.load_kg is not None for r in rows[i:]):
            return None  # its window reaches back before the log: the database has the readings
        return [dataclasses.replace(r, lookback=True) for r in before] + rows[i:]


@dataclass(frozen=True, slots=True)
class PointVerdict:
    """A sorting point's last judged episodes and what they were judged from, but its pickups and the clock."""

    inputs: tuple[Any, ...]
    judged_at: datetime
    recheck_at: datetime  # a deadline or a day's end passes, or a pickup stamped later becomes known
    finding: Finding | None  # None: the rule is disabled there
    limits: Limits | None


@dataclass(frozen=True)
class BinPlaces:
    """The bins the overflow check watches (in its scope, at a site with a position) and where they stand."""

    point_of: Mapping[str, str]  # bin → its point
    bins_at: Mapping[str, list[str]]  # point → its bins
    places: Mapping[str, tuple[float, float]]  # point → (lat, lon)

    @classmethod
    def of(cls, registry: Registry, rule: CheckRule) -> BinPlaces:
        point_of: dict[str, str] = {}
        bins_at: dict[str, list[str]] = defaultdict(list)
        places: dict[str, tuple[float, float]] = {}
        for d, dev in registry.devices.items():
            site = registry.sites.get(dev.site_id) if dev.kind == "bin" and dev.site_id is not None else None
            if site is None or site.latitude is None or site.longitude is None or not registry.in_scope(rule, d):
                continue
            point_of[d] = site.site_id
            bins_at[site.site_id].append(d)
            places[site.site_id] = (site.latitude, site.longitude)
        return cls(point_of, dict(bins_at), places)


@dataclass
class TruckMemo:
    """What the truck checks keep between one evaluator's passes: logs of the rows they read (topped up pass by
    pass), the bins' places (per registry object: ``RegistryCache`` hands out a new one after a change) and the
    point verdicts, dropped when a pass or the rule fails (their alerts were rolled back with it) or the rule
    object changes."""

    pickups: PickupLog = field(default_factory=PickupLog)
    near: NearLog = field(default_factory=NearLog)
    telemetry: TelemetryLog = field(default_factory=TelemetryLog)
    points: dict[str, PointVerdict] = field(default_factory=dict)
    schedules: dict[str, list[ClearanceSchedule]] = field(default_factory=dict)
    judged_with: tuple[Registry, CheckRule] | None = None
    bins: tuple[Registry, CheckRule, BinPlaces] | None = None

    def forget_verdicts(self) -> None:
        self.points.clear()

    def bin_places(self, registry: Registry, rule: CheckRule) -> BinPlaces:
        if self.bins is None or self.bins[0] is not registry or self.bins[1] is not rule:
            self.bins = (registry, rule, BinPlaces.of(registry, rule))
        return self.bins[2]

    def for_points(self, registry: Registry, rule: CheckRule) -> bool:
        """Forgets what another rule decided; with another registry, keeps the verdicts (each point's schedules,
        time zone and limits are compared before one is kept: a registry changes by one device or site at a
        time, and judging a city's points again costs seconds). True: the registry is another one."""
        if self.judged_with is not None and self.judged_with[0] is registry and self.judged_with[1] is rule:
            return False
        if self.judged_with is None or self.judged_with[1] is not rule:
            self.points.clear()
        self.schedules = _schedules(registry, rule)
        self.judged_with = (registry, rule)
        return True


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
                       judged_at: datetime, fleet_first: Mapping[date, datetime | None] | None = None
                       ) -> list[tuple[Episode, dict[str, Any]]]:
    """Per day whose status is overdue, late or missed: an episode from the deadline to the first pickup of the
    category after it (open while there is none). The value is how late, in minutes. ``fleet_first``: each day's
    first fleet data (``fleet_first_report``); a no_data day is no episode. None: the fleet reported from each
    day's start."""
    found: list[tuple[Episode, dict[str, Any]]] = []
    for day in days:
        first = day_bounds(day, tz)[0] if fleet_first is None else fleet_first[day]
        status = judge_clearance(schedule, day, tz, pickups, judged_at, fleet_first_report=first)
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


def unserved(found: Sequence[Visit], pickups: Sequence[Pickup], heard_until: Mapping[str, datetime]) -> list[Visit]:
    """The visits with no pickup by that truck at that point during them (give or take PICKUP_SLACK), judged only
    once the truck's telemetry has gone on past the slack after the visit (``heard_until``: its newest reading
    stored). A truck sends its pickup events and telemetry in time order, so by then a pickup of that visit would
    be stored too; before, a visit whose pickup was still on its way (or still being made) looked unserved."""
    return [v for v in found if heard_until.get(v.truck_id, v.end) > v.end + PICKUP_SLACK
            and not any(p.truck_id == v.truck_id and p.point_id == v.point_id
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
    return registry.limits(rule, subject)


def _trucks(registry: Registry, rule: CheckRule) -> list[str]:
    return sorted(d for d, device in registry.devices.items() if device.kind == "truck" and registry.in_scope(rule, d))


_logged: dict[str, str] = {}  # site → the clearance problem logged (once, until it changes)


def _schedules(registry: Registry, rule: CheckRule) -> dict[str, list[ClearanceSchedule]]:
    """Every sorting point in the rule's scope with a clearance schedule → its schedules."""
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
    return schedules


def _points(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    """Every sorting point with a clearance schedule, every local day of the look-back — judged again only when
    something it depends on changed since its last verdict: a pickup there, a deadline or a day's end passed, the
    days of the look-back, the fleet's first report of a day, or it has an open alert (its lateness grows)."""
    memo = span.memo
    new_registry = memo.for_points(registry, rule)
    if not memo.schedules:
        return _open_only(registry, rule, span)
    since = span.horizon - timedelta(days=1)  # a day judged in the look-back sees its pickups from its start
    memo.pickups.refresh(conn, since, span.upto)
    first_reports: dict[tuple[datetime, datetime], datetime | None] = {}  # a local day's [start, end) → its first

    def fleet_first(day: date, tz: ZoneInfo) -> datetime | None:
        bounds = day_bounds(day, tz)
        if bounds not in first_reports:
            first_reports[bounds] = fleet_first_report(conn, *bounds, stored_before=span.upto)
        return first_reports[bounds]

    due: dict[str, tuple[Any, ...]] = {}
    shared: dict[tuple[tuple[ClearanceSchedule, ...], str], tuple[Any, ...]] = {}  # most points share schedules
    for point, found in memo.schedules.items():
        zone = registry.timezone(point)
        if (key := (tuple(found), zone)) not in shared:
            shared[key] = _point_inputs(found, ZoneInfo(zone), span, fleet_first)
        inputs = shared[key]
        old = memo.points.get(point)
        if (old is None or memo.pickups.fresh is None or point in memo.pickups.fresh or old.inputs != inputs
                or span.judged_at >= old.recheck_at or span.judged_at < old.judged_at
                or subject_key("point", point) in span.open_subjects
                or (new_registry and _point_limits(registry, rule, point) != old.limits)):
            due[point] = inputs
    by_point: dict[str, list[PickupAt]] = defaultdict(list)
    for p in memo.pickups.rows:  # all of the log (from ``since``): later stamps than judged_at give recheck_at
        if p.point_id in due:
            by_point[p.point_id].append(PickupAt(p.category, p.ts))
    out: dict[str, Finding] = {}
    for point, inputs in due.items():
        verdict = _judge_point(registry, rule, span, point, inputs, by_point.get(point, []))
        memo.points[point] = verdict
        if verdict.finding is not None:
            out[verdict.finding.subject.key] = verdict.finding
    _add_open(out, registry, rule, span)
    return out


def _point_inputs(schedules: Sequence[ClearanceSchedule], tz: ZoneInfo, span: Span,
                  fleet_first: Callable[[date, ZoneInfo], datetime | None]) -> tuple[Any, ...]:
    """What a point's verdict depends on but its pickups and the clock: its schedules, the days each is judged on
    (those of the look-back whose deadline is in it) and the fleet's first report of each."""
    first, last = span.horizon.astimezone(tz).date(), span.judged_at.astimezone(tz).date()
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    per_schedule = tuple((schedule, tuple(d for d in days if deadline(schedule, d, tz) >= span.horizon))
                         for schedule in schedules)
    judged_days = sorted({d for _, ds in per_schedule for d in ds})
    return tz, per_schedule, tuple((d, fleet_first(d, tz)) for d in judged_days)


def _judge_point(registry: Registry, rule: CheckRule, span: Span, point: str, inputs: tuple[Any, ...],
                 pickups: Sequence[PickupAt]) -> PointVerdict:
    tz, per_schedule, firsts = inputs
    first_of = dict(firsts)
    known = [p for p in pickups if p.at <= span.judged_at]
    episodes: list[tuple[Episode, dict[str, Any]]] = []
    recheck = [p.at for p in pickups if p.at > span.judged_at]
    for schedule, days_due in per_schedule:
        # a deadline no truck had reported by is no_data (the kernel's), no episode: as the report says
        episodes += clearance_episodes(schedule, days_due, tz, known, span.judged_at,
                                       {d: first_of[d] for d in days_due})
        for day in days_due:
            recheck += [t for t in (deadline(schedule, day, tz), day_bounds(day, tz)[1]) if t > span.judged_at]
    found = merge(episodes)
    limits = _point_limits(registry, rule, point)
    finding = None if limits is None else Finding(registry.subject(subject_key("point", point)), limits, _ALWAYS,
                                                  [e for e, _ in found], [d for _, d in found])
    # an open episode's lateness grows with the clock: judged again every pass
    recheck_at = span.judged_at if any(e.open for e, _ in found) else min(recheck, default=datetime.max.replace(
        tzinfo=UTC))
    return PointVerdict(inputs, span.judged_at, recheck_at, finding, limits)


def _point_limits(registry: Registry, rule: CheckRule, point: str) -> Limits | None:
    return _limits(registry, rule, registry.subject(subject_key("point", point)))


def _add_open(out: dict[str, Finding], registry: Registry, rule: CheckRule, span: Span) -> None:
    """Open alerts of subjects not judged (the point lost its schedule, the truck its scope): re-judged, as clean
    (unless the rule is disabled there)."""
    for key in span.open_subjects:
        if key not in out and (limits := _limits(registry, rule, subject := registry.subject(key))) is not None:
            out[key] = Finding(subject, limits, _ALWAYS)


def _open_only(registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    _add_open(out, registry, rule, span)
    return out


def _pickups(conn: psycopg.Connection, since: datetime, span: Span) -> list[Pickup]:
    """The pickups in [since, judged_at] stored before the pass, from the memo's log when it reaches back so far."""
    log_since = span.horizon - timedelta(days=1)
    if since < log_since:
        return [p for p in queries.pickups_stored(conn, since, None, span.upto) if p.ts <= span.judged_at]
    span.memo.pickups.refresh(conn, log_since, span.upto)
    return span.memo.pickups.between(since, span.judged_at)


def _events_by_truck(conn: psycopg.Connection, since: datetime, span: Span
                     ) -> tuple[dict[str, list[Pickup]], dict[str, list[Ticket]]]:
    by_pickup: dict[str, list[Pickup]] = defaultdict(list)
    for p in _pickups(conn, since, span):
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


def _truck_rows(conn: psycopg.Connection, span: Span, starts: Mapping[str, datetime], lookback: int = 0
                ) -> dict[str, list[TruckRow]]:
    """The trucks' telemetry from their starts, from the memo's log of the last TELEMETRY_SPAN (of the data
    clock) — the database's for a start before it."""
    span.memo.telemetry.refresh(conn, span.judged_at - TELEMETRY_SPAN, span.upto)
    return span.memo.telemetry.rows(conn, starts, span.upto, lookback)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a per-device check found for one device: its episodes, each with its summary's details."""

    episodes: list[Episode]
    details: list[dict[str, Any]]
    limits: Limits | None = None  # judged against the device's own limit, not the rule's (truck_idle)


Judge = Callable[[str, Subject, Limits], Verdict]


def _each_device(registry: Registry, rule: CheckRule, starts: Mapping[str, datetime], judge_device: Judge
                 ) -> dict[str, Finding]:
    """The loop the per-device checks share: each device read from its start, with the rule's limits at its subject
    (a device where the rule is disabled is not judged), judged by ``judge_device``."""
    out: dict[str, Finding] = {}
    for device, start in starts.items():
        subject = registry.subject(subject_key("device", device))
        limits = _limits(registry, rule, subject)
        if limits is None:
            continue
        verdict = judge_device(device, subject, limits)
        out[subject.key] = Finding(subject, verdict.limits or limits, start, verdict.episodes, verdict.details)
    return out


def _overweight(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    readings = condition("truck_overweight").smoothing.readings
    starts = _telemetry_starts(registry, rule, span, timedelta(minutes=10))
    rows = _truck_rows(conn, span, starts, lookback=readings - 1)

    def judge_truck(truck: str, subject: Subject, limits: Limits) -> Verdict:
        rated = _number(registry.params(subject).get("rated_payload_kg"))
        truck_rows = rows.get(truck, [])
        episodes = held_episodes(overweight_samples(truck_rows, rated, limits.threshold, limits.clear), Policy())
        return Verdict(episodes, [_load_details(truck_rows, e, rated) for e in episodes])

    return _each_device(registry, rule, starts, judge_truck)


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
    rows = _truck_rows(conn, span, starts)
    routes = queries.routes(conn, sorted(starts)) if starts else []

    def judge_truck(truck: str, _: Subject, limits: Limits) -> Verdict:
        truck_rows = rows.get(truck, [])
        paths = _paths(registry, [r for r in routes if r.truck_id == truck], truck_rows)
        episodes = held_episodes(off_route_samples(truck_rows, paths, limits.threshold), Policy(for_=rule.for_))
        return Verdict(episodes, [{"route_id": _route_at(truck_rows, e), "distance_m": e.peak} for e in episodes])

    return _each_device(registry, rule, starts, judge_truck)


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
    rows = _truck_rows(conn, span, starts)

    def judge_truck(truck: str, subject: Subject, limits: Limits) -> Verdict:
        params = registry.params(subject)
        minutes = _number(params.get("idle_limit_min")) or limits.threshold  # the truck's own limit first
        depot = registry.sites.get(str(params.get("depot_site_id")))
        place = (depot.latitude, depot.longitude) if depot and depot.latitude is not None \
            and depot.longitude is not None else None
        episodes = held_episodes(idle_samples(rows.get(truck, []), place), Policy(for_=timedelta(minutes=minutes)))
        details = [{"idle_min": ((e.ended_at or span.judged_at) - e.start).total_seconds() / 60} for e in episodes]
        return Verdict(episodes, details, Limits(minutes, None))

    return _each_device(registry, rule, starts, judge_truck)


def _overflow(conn: psycopg.Connection, registry: Registry, rule: CheckRule, span: Span) -> dict[str, Finding]:
    """Bins at sorting points with a position; read from before the earliest bin or truck reading stored this pass
    (or the start of an open alert): the collecting trucks near a point, then the full episodes of the bins at the
    points they visited (a bin no truck came near cannot overflow unserved) and of those with an open alert."""
    full = condition(cast(str, rule.condition))
    watched = span.memo.bin_places(registry, rule)
    anchors = [c.first_ts for d, c in span.changed.get("bin_status", {}).items() if d in watched.point_of]
    anchors += [c.first_ts for c in span.changed.get(queries.TRUCK_TELEMETRY, {}).values()]
    anchors += list(span.open_subjects.values())
    if not watched.point_of or not anchors:
        return _open_only(registry, rule, span)
    since = max(min(anchors) - VISIT_LOOKBACK, span.horizon)
    radius = cast(float, rule.distance_m)
    span.memo.near.refresh(conn, watched.places, radius, since, span.upto)
    near = span.memo.near.near[bisect.bisect_left(span.memo.near.near, since, key=lambda n: n[1]):]
    judged = {b for point in {p for _, _, p in near} for b in watched.bins_at[point]}
    judged |= {key.split(":", 1)[1] for key in span.open_subjects if key.split(":", 1)[1] in watched.point_of}
    fills = queries.fill_rows(conn, dict.fromkeys(judged, since), span.upto, full.smoothing.readings - 1)

    def judge_bin(bin_id: str, _: Subject, limits: Limits) -> Verdict:
        """Its full episodes first; those a truck passed by without a pickup replace them below."""
        rows = fills.get(bin_id, [])
        smoothed = full.smoothing.rolling([v for _, v, _ in rows])
        samples = [Sample(ts, ts, v, judge(v, full.op, limits.threshold, limits.clear))
                   for (ts, _, lookback), v in zip(rows, smoothed, strict=True) if not lookback]
        episodes = held_episodes(samples, Policy())
        return Verdict(episodes, [{} for _ in episodes])

    out = _each_device(registry, rule, dict.fromkeys(sorted(judged), since), judge_bin)
    full_bins = {f.subject.id: f.episodes for f in out.values()}
    wanted = {watched.point_of[b] for b, episodes in full_bins.items() if episodes}
    near = [n for n in near if n[2] in wanted]
    served = [p for p in _pickups(conn, since - PICKUP_SLACK, span) if p.point_id in wanted] if near else []
    missed = unserved(visits(near), served, span.memo.near.heard)
    for bin_id, episodes in full_bins.items():
        finding = out[subject_key("device", bin_id)]
        found = overflow_episodes(episodes, [v for v in missed if v.point_id == watched.point_of[bin_id]])
        finding.episodes, finding.details = [e for e, _ in found], [d for _, d in found]
    _add_open(out, registry, rule, span)
    return out
