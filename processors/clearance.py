"""The daily clearance report (issue 15, items 3 and 5): per sorting point and category, was the waste picked up by
its deadline; per planned truck route, were the points visited in plan order; per area, the tonnage lifted at the
points against the tonnage received at weighbridges.

The judgement itself is the kernel's (sanitel/clearance.py ``judge_clearance``), shared with the alert pack's
``point_not_cleared``, and so is the one query of whether the fleet reported at all that day
(``fleet_first_report``): a deadline the fleet had not reported by is ``no_data``, not missed, in the report, the
stored rows and the alert alike. This module reads the inputs and keeps the verdicts in ``clearance_days``
(migrations 0084, 0085), which the scheduled processor refreshes for "yesterday" and "today" of each point
(``derive_recent``).

Written against a plain ``psycopg.Connection`` (``execute(…).fetchall()`` only), so the API runs the same code through
``api.blocking.run_blocking`` and a report equals what ``sanitel report clearance`` prints.

Known limits: a pickup that names only a bin's RFID tag (no ``point_id``) is not attributed to a point (the registry
does not map tags to points yet); a pickup stored after its day was last judged by the processor corrects the stored
row only while that day is "yesterday" — the report, computed live, always sees it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sanitel.clearance import (
    ClearanceSchedule,
    ClearanceStatus,
    PickupAt,
    day_bounds,
    deadline,
    fleet_first_report,
    judge_clearance,
    parse_clearance,
)
from sanitel.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("sanitel.clearance")
STREET_KINDS = ("estate", "urban_village")  # the truck contract: a sorting point's parent of these kinds is its street
SECTIONS = ("points", "streets", "routes", "tonnage")
STATUSES = ("on_time", "late", "missed", "no_data", "overdue", "pending")  # the counts of a report's totals
# [start, end) of a local day (``day_bounds``) → device time of the fleet's first data that day (None: none)
FleetReports = Mapping[tuple[datetime, datetime], datetime | None]
# a site's day may start up to 14 h before or after UTC midnight (UTC+14 … UTC−12): pickups are fetched this wide
_ZONE_SLACK = timedelta(hours=15)


@dataclass(frozen=True)
class Point:
    point_id: str
    street_id: str | None
    timezone: str
    schedules: tuple[ClearanceSchedule, ...]

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)


@dataclass(frozen=True)
class Pickup:
    point_id: str | None
    truck_id: str
    category: str | None
    at: datetime
    weight_kg: float


@dataclass(frozen=True)
class ClearanceRow:
    point_id: str
    street_id: str | None
    category: str
    day: date
    due_by: time
    deadline: datetime
    status: ClearanceStatus
    first_pickup_at: datetime | None
    pickups: int
    weight_kg: float


def zone(name: str) -> ZoneInfo:
    """A site's time zone; an unknown name (the registry does not validate it) falls back to UTC, as the daily
    operations summary does (api/reports.py)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# -- reading ------------------------------------------------------------------------------------------------------

_TREE = """
    WITH RECURSIVE tree AS (
        SELECT site_id FROM sites WHERE %(root)s::text IS NULL OR site_id = %(root)s
        UNION
        SELECT s.site_id FROM sites s JOIN tree t ON s.parent_id = t.site_id
    )"""


def site_info(conn: psycopg.Connection, site_id: str) -> tuple[str, str, str] | None:
    """(kind, name, timezone) of a site, or None when it does not exist."""
    row = conn.execute("SELECT kind, name, timezone FROM sites WHERE site_id = %s", (site_id,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))


def scheduled_points(conn: psycopg.Connection, root: str | None) -> tuple[list[Point], list[dict[str, str]]]:
    """Sorting points at or below ``root`` (every one when None) with a ``clearance`` parameter, and the points
    whose parameter does not validate (``{"point_id", "error"}``: reported, never silently dropped)."""
    rows = conn.execute(_TREE + """
        SELECT p.site_id, CASE WHEN parent.kind = ANY(%(streets)s) THEN parent.site_id END,
               p.timezone, p.params -> 'clearance'
          FROM sites p JOIN tree t ON t.site_id = p.site_id LEFT JOIN sites parent ON parent.site_id = p.parent_id
         WHERE p.kind = 'sorting_point' AND p.params ? 'clearance'
         ORDER BY p.site_id""", {"root": root, "streets": list(STREET_KINDS)}).fetchall()
    points: list[Point] = []
    invalid: list[dict[str, str]] = []
    for point_id, street_id, timezone, raw in rows:
        try:
            schedules = parse_clearance({"clearance": raw}, where=point_id)
        except ConfigError as exc:
            invalid.append({"point_id": point_id, "error": str(exc)})
            continue
        points.append(Point(point_id, street_id, timezone, tuple(schedules)))
    return points, invalid


def fetch_pickups(conn: psycopg.Connection, start: datetime, end: datetime, *, point_ids: Sequence[str] | None = None,
                  truck_ids: Sequence[str] | None = None) -> list[Pickup]:
    """Pickups (truck_events, event 'pickup') in [start, end), at these points and/or by these trucks."""
    rows = conn.execute("""
        SELECT point_id, device_id, category, ts, weight_kg FROM truck_events
         WHERE event = 'pickup' AND ts >= %(start)s AND ts < %(end)s
           AND (%(points)s::text[] IS NULL OR point_id = ANY(%(points)s))
           AND (%(trucks)s::text[] IS NULL OR device_id = ANY(%(trucks)s))
         ORDER BY ts, device_id""",
        {"start": start, "end": end, "points": None if point_ids is None else list(point_ids),
         "trucks": None if truck_ids is None else list(truck_ids)}).fetchall()
    return [Pickup(p, t, c, ts, float(w or 0.0)) for p, t, c, ts, w in rows]


def fleet_reports(conn: psycopg.Connection, points: Sequence[Point], days: Iterable[date]) -> dict[
        tuple[datetime, datetime], datetime | None]:
    """The fleet's first data on each local day of ``days`` in the points' zones: one probe per distinct day."""
    wanted = {day_bounds(d, tz) for d in days for tz in {p.tz for p in points}}
    return {b: fleet_first_report(conn, *b, stored_before=None) for b in sorted(wanted)}


# -- judging (pure) -----------------------------------------------------------------------------------------------

def judge_point_day(point: Point, pickups: Sequence[Pickup], day: date, now: datetime,
                    fleet_first: datetime | None) -> list[ClearanceRow]:
    """The point's schedules on its local ``day``, from its pickups (any day: those outside are ignored) and the
    fleet's first data that day (``fleet_first_report``)."""
    tz = point.tz
    start, end = day_bounds(day, tz)
    known = [p for p in pickups if p.point_id == point.point_id and start <= p.at < end and p.at <= now]
    at_point = [PickupAt(p.category, p.at) for p in known]  # every category: any pickup is fleet data
    out = []
    for schedule in point.schedules:
        mine = [p for p in known if p.category is None or p.category == schedule.category]
        status = judge_clearance(schedule, day, tz, at_point, now, fleet_first_report=fleet_first)
        out.append(ClearanceRow(point.point_id, point.street_id, schedule.category, day, schedule.by,
                                deadline(schedule, day, tz), status, min((p.at for p in mine), default=None),
                                len(mine), sum(p.weight_kg for p in mine)))
    return out


def judge_days(points: Sequence[Point], pickups: Sequence[Pickup], days: Iterable[date], now: datetime,
               fleet: FleetReports) -> list[ClearanceRow]:
    """Every point's every day; ``fleet`` must hold each of those local days (``fleet_reports``)."""
    by_point: dict[str | None, list[Pickup]] = defaultdict(list)
    for p in pickups:
        by_point[p.point_id].append(p)
    return [row for day in days for point in points for row in judge_point_day(
        point, by_point[point.point_id], day, now, fleet[day_bounds(day, point.tz)])]


def in_order_visits(planned: Sequence[str], visited: Sequence[str]) -> int:
    """How many planned points were visited in plan order: the longest common subsequence of the plan and the
    points in the order the truck first picked up at them. A skipped point and a point visited out of order both
    cost one; a point visited that the plan does not name costs nothing (route adherence counts the plan)."""
    prev = [0] * (len(visited) + 1)
    for p in planned:
        cur = [0]
        for j, v in enumerate(visited):
            cur.append(prev[j] + 1 if p == v else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def first_visits(pickups: Iterable[Pickup]) -> list[str]:
    """Points in the order of their first pickup (pickups sorted by time)."""
    seen: dict[str, None] = {}
    for p in sorted(pickups, key=lambda p: p.at):
        if p.point_id is not None:
            seen.setdefault(p.point_id, None)
    return list(seen)


# -- the scheduled processor ------------------------------------------------------------------------------------

def derive_recent(conn: psycopg.Connection, now: datetime) -> int:
    """Judge every scheduled point's local "yesterday" and "today" as of ``now`` and store them in
    ``clearance_days``; returns the rows written. Yesterday is re-judged so that its pending/overdue rows turn
    final (on_time, late or missed) once it has ended, and a no_data row turns into a verdict when the fleet's data
    arrive late. Only rows that changed are written (a city's points make
    ~90,000 rows a pass, nearly all unchanged), so ``judged_at`` is when a row's verdict was last given."""
    points, invalid = scheduled_points(conn, None)
    for bad in invalid:
        log.warning("clearance schedule skipped: %s", bad["error"])
    if not points:
        return 0
    wanted = {(p.point_id, d) for p in points for d in _recent_days(p.tz, now)}
    days = sorted({d for _, d in wanted})
    start = datetime.combine(days[0], time(0), ZoneInfo("UTC")) - _ZONE_SLACK
    end = datetime.combine(days[-1] + timedelta(days=1), time(0), ZoneInfo("UTC")) + _ZONE_SLACK
    pickups = fetch_pickups(conn, start, end, point_ids=[p.point_id for p in points])
    stored = _stored(conn, days)
    rows = [r for r in judge_days(points, pickups, days, now, fleet_reports(conn, points, days))
            if (r.point_id, r.day) in wanted and stored.get((r.point_id, r.category, r.day)) != _facts(r)]
    with conn.transaction():
        store(conn, rows, now)
    return len(rows)


def _facts(r: ClearanceRow) -> tuple[Any, ...]:
    return (r.street_id, r.due_by, r.deadline, r.status, r.first_pickup_at, r.pickups, r.weight_kg)


def _stored(conn: psycopg.Connection, days: Sequence[date]) -> dict[tuple[str, str, date], tuple[Any, ...]]:
    rows = conn.execute("SELECT point_id, category, day, street_id, due_by, deadline, status, first_pickup_at,"
                        " pickups, weight_kg FROM clearance_days WHERE day = ANY(%s)", (list(days),)).fetchall()
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in rows}


def _recent_days(tz: ZoneInfo, now: datetime) -> tuple[date, date]:
    today = now.astimezone(tz).date()
    return today - timedelta(days=1), today


def store(conn: psycopg.Connection, rows: Sequence[ClearanceRow], judged_at: datetime) -> None:
    with conn.cursor() as cur:
        cur.executemany("""
            INSERT INTO clearance_days (point_id, category, day, street_id, due_by, deadline, status, first_pickup_at,
                                        pickups, weight_kg, judged_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (point_id, category, day) DO UPDATE SET
                street_id = EXCLUDED.street_id, due_by = EXCLUDED.due_by, deadline = EXCLUDED.deadline,
                status = EXCLUDED.status, first_pickup_at = EXCLUDED.first_pickup_at, pickups = EXCLUDED.pickups,
                weight_kg = EXCLUDED.weight_kg, judged_at = EXCLUDED.judged_at""",
            [(r.point_id, r.category, r.day, r.street_id, r.due_by, r.deadline, r.status, r.first_pickup_at,
              r.pickups, r.weight_kg, judged_at) for r in rows])


# -- the report -----------------------------------------------------------------------------------------------------

def build_report(conn: psycopg.Connection, site_id: str, day: date, now: datetime) -> dict[str, Any]:
    """The clearance report of ``site_id`` (a district, a street, or any site above sorting points) for its local
    ``day``, as known at ``now``. Raises LookupError for an unknown site."""
    info = site_info(conn, site_id)
    if info is None:
        raise LookupError(f"site {site_id!r} does not exist")
    kind, name, timezone = info
    start, end = day_bounds(day, zone(timezone))
    points, invalid = scheduled_points(conn, site_id)
    pickups = fetch_pickups(conn, start - _ZONE_SLACK, end + _ZONE_SLACK, point_ids=[p.point_id for p in points])
    rows = judge_days(points, pickups, [day], now, fleet_reports(conn, points, [day]))
    return {
        "site_id": site_id, "kind": kind, "name": name, "day": day.isoformat(), "timezone": timezone,
        "as_of": now.isoformat(), "day_over": now >= end,
        "totals": _counts(rows),
        "streets": [{"street_id": street, **_counts(group)} for street, group in _group_streets(rows)],
        "points": [_point_json(r) for r in rows],
        "invalid_schedules": invalid,
        "routes": route_adherence(conn, [p.point_id for p in points], day, start, end),
        "tonnage": tonnage(conn, site_id, [p.point_id for p in points], start, end),
    }


def _counts(rows: Sequence[ClearanceRow]) -> dict[str, Any]:
    """Counts per status; on_time_pct over the verdicts only: pending and overdue are not a result yet, and no_data
    is none at all (the fleet had not reported by the deadline) — neither on time nor missed."""
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    finished = counts["on_time"] + counts["late"] + counts["missed"]
    return {"scheduled": len(rows), **counts,
            "on_time_pct": None if not finished else round(100.0 * counts["on_time"] / finished, 1)}


def _group_streets(rows: Sequence[ClearanceRow]) -> list[tuple[str | None, list[ClearanceRow]]]:
    groups: dict[str | None, list[ClearanceRow]] = defaultdict(list)
    for r in rows:
        groups[r.street_id].append(r)
    return sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))


def _point_json(r: ClearanceRow) -> dict[str, Any]:
    return {"point_id": r.point_id, "street_id": r.street_id, "category": r.category,
            "by": r.due_by.strftime("%H:%M"), "deadline": r.deadline.isoformat(), "status": r.status,
            "first_pickup_at": None if r.first_pickup_at is None else r.first_pickup_at.isoformat(),
            "pickups": r.pickups, "weight_kg": round(r.weight_kg, 1)}


def route_adherence(conn: psycopg.Connection, point_ids: Sequence[str], day: date, start: datetime,
                    end: datetime) -> list[dict[str, Any]]:
    """Routes valid on ``day`` that plan at least one of ``point_ids``: planned points, how many were visited in
    plan order (``in_order_visits``) by the route's truck that day, and their share. The whole local day counts,
    not only the shift (a round that overruns its shift still visited its points)."""
    routes = conn.execute("""
        SELECT route_id, truck_id, points FROM truck_routes
         WHERE valid_from <= %(day)s AND (valid_to IS NULL OR valid_to >= %(day)s) AND points && %(points)s::text[]
         ORDER BY route_id""", {"day": day, "points": list(point_ids)}).fetchall()
    if not routes:
        return []
    by_truck: dict[str, list[Pickup]] = defaultdict(list)
    for p in fetch_pickups(conn, start, end, truck_ids=sorted({str(r[1]) for r in routes})):
        by_truck[p.truck_id].append(p)
    out = []
    for route_id, truck_id, planned in routes:
        plan = list(planned or [])
        visited = first_visits(by_truck[truck_id])
        done = in_order_visits(plan, visited)
        out.append({"route_id": route_id, "truck_id": truck_id, "planned": len(plan), "visited": len(
            set(visited) & set(plan)), "in_plan_order": done,
            "adherence_pct": None if not plan else round(100.0 * done / len(plan), 1),
            "skipped": [p for p in plan if p not in set(visited)]})
    return out


def tonnage(conn: psycopg.Connection, site_id: str, point_ids: Sequence[str], start: datetime,
            end: datetime) -> list[dict[str, Any]]:
    """Per category: kg lifted at the area's points (lifter scale, pickups) and kg received (net, direction 'in')
    at weighbridges of the area (tickets of ``transfer_station``-kind devices sited at or below ``site_id``).
    Pickups name their point, tickets their station: the two need not match for one area (trucks tip outside the
    district), so the difference is shown, not judged — the alert pack judges per truck."""
    lifted: dict[str, float | None] = dict(conn.execute("""
        SELECT coalesce(category, 'unknown'), sum(weight_kg)::float8 FROM truck_events
         WHERE event = 'pickup' AND ts >= %(start)s AND ts < %(end)s AND point_id = ANY(%(points)s)
         GROUP BY 1""", {"start": start, "end": end, "points": list(point_ids)}).fetchall())
    received: dict[str, float | None] = dict(conn.execute(_TREE + """
        SELECT coalesce(w.category, 'unknown'), sum(w.net_kg)::float8 FROM weighbridge_tickets w
          JOIN devices d ON d.device_id = w.device_id JOIN tree t ON t.site_id = d.site_id
         WHERE w.ts >= %(start)s AND w.ts < %(end)s AND w.direction = 'in'
         GROUP BY 1""", {"root": site_id, "start": start, "end": end}).fetchall())
    out = []
    for category in sorted(set(lifted) | set(received)):
        a, b = float(lifted.get(category) or 0.0), float(received.get(category) or 0.0)
        out.append({"category": category, "collected_kg": round(a, 1), "received_kg": round(b, 1),
                    "difference_kg": round(b - a, 1)})
    return out


def report_csv(report: Mapping[str, Any], section: str = "points") -> str:
    """One section of the report as CSV (``SECTIONS``): a console or spreadsheet reads one table at a time."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; use one of {', '.join(SECTIONS)}")
    rows: list[dict[str, Any]] = [{k: v for k, v in r.items() if k != "skipped"} | (
        {"skipped": " ".join(r["skipped"])} if "skipped" in r else {}) for r in report[section]]
    buf = io.StringIO()
    fields = ["site_id", "day", *(rows[0].keys() if rows else _EMPTY_HEADERS[section])]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"site_id": report["site_id"], "day": report["day"], **r})
    return buf.getvalue()


_EMPTY_HEADERS = {
    "points": ["point_id", "street_id", "category", "by", "deadline", "status", "first_pickup_at", "pickups",
               "weight_kg"],
    "streets": ["street_id", "scheduled", *STATUSES, "on_time_pct"],
    "routes": ["route_id", "truck_id", "planned", "visited", "in_plan_order", "adherence_pct", "skipped"],
    "tonnage": ["category", "collected_kg", "received_kg", "difference_kg"],
}
