"""The weekly street sanitation index (issue 15, item 5; docs/sanitation-index.md gives every formula and why).

The seeds' districts assess each street weekly, by inspection; this computes the same kind of score from the IoT
data. Per street (a sorting point's parent site of kind estate or urban_village) and local ISO week, five
components, each 0–100 (100 = nothing wrong):

    clearance  on-time clearance rate of the street's points: on_time / (on_time + late + missed), judged by
               sanitel/clearance.py for each day of the week (days not over yet count what is already final;
               no_data deadlines, which the fleet had not reported by, are in neither count)
    overflow   bin-overflow hours per bin, from bin_status with the ``bin_full`` condition of
               sanitel/signal_conditions.yaml (the alert rule's own definition)
    odour      hours with an odour alert (station_h2s, station_nh3, station_odour) firing at a transfer station of
               the street's district (the stored alerts' durations: the rules' own thresholds and smoothing)
    noise      the same for station_noise_day and station_noise_night
    sweeping   sweeping hours of the sweepers sited on the street against a planned shift per sweeper and day

The index is the weighted mean of the components that have data (weights renormalised over those), so a street
without sweepers is not punished for a sensor it does not have; ``components`` says which were missing.

Blocking psycopg code (``execute(…).fetchall()`` only), shared by ``sanitel report sanitation-index`` and the API.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sanitel.processors.clearance import (
    STREET_KINDS,
    fetch_pickups,
    fleet_reports,
    judge_days,
    scheduled_points,
    zone,
)
from sanitel.signal_conditions import condition

if TYPE_CHECKING:
    import psycopg

# Weights sum to 1. Project choice, not verified against any district's assessment form (docs/sanitation-index.md).
WEIGHTS: dict[str, float] = {"clearance": 0.40, "overflow": 0.20, "odour": 0.15, "noise": 0.10, "sweeping": 0.15}
ODOUR_RULES = ("station_h2s", "station_nh3", "station_odour")
NOISE_RULES = ("station_noise_day", "station_noise_night")  # not the night event rule: a peak, not a duration
# hours in a week at which an hours-based component reaches 0: a full day of overflow (per bin) or exceedance
HOURS_AT_ZERO = 24.0
PLANNED_SWEEP_H_PER_DAY = 8.0  # one shift per sweeper and day (project default, unverified)
SWEEP_GAP_CAP = timedelta(minutes=5)  # a gap between two readings counts as sweeping up to this long
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def parse_week(text: str) -> date:
    """``YYYY-Www`` (ISO 8601 week) → its Monday; ValueError with the expected form otherwise."""
    match = _WEEK.match(text.strip())
    try:
        if match is None:
            raise ValueError
        return date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO week; write YYYY-Www, e.g. 2026-W48") from None


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Street:
    street_id: str
    name: str
    district_id: str | None
    timezone: str


# -- pure scoring -----------------------------------------------------------------------------------------------

def hours_score(hours: float) -> float:
    """0 h → 100, ``HOURS_AT_ZERO`` h or more → 0, linear between."""
    return round(100.0 * max(0.0, 1.0 - hours / HOURS_AT_ZERO), 1)


def weighted_index(components: Mapping[str, float | None]) -> float | None:
    """Weighted mean of the components with a value (weights renormalised over them); None when none has one."""
    have = {k: v for k, v in components.items() if v is not None}
    total = sum(WEIGHTS[k] for k in have)
    return None if not have else round(sum(WEIGHTS[k] * v for k, v in have.items()) / total, 1)


def union_hours(intervals: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime) -> float:
    """Hours of [start, end) covered by at least one interval (overlaps counted once)."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    total = timedelta(0)
    cur_a: datetime | None = None
    cur_b = start
    for a, b in clipped:
        if cur_a is None or a > cur_b:
            if cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None:
        total += cur_b - cur_a
    return total / timedelta(hours=1)


def overflow_intervals(readings: Sequence[tuple[datetime, float]]) -> list[tuple[datetime, datetime]]:
    """The ``bin_full`` episodes of one bin's readings (time order) as intervals: from the reading that made it full
    to the reading that ended it, or to the last reading for an episode still open (what the data shows, no
    guess beyond it)."""
    if not readings:
        return []
    times = [t for t, _ in readings]
    out = []
    for first, last in condition("bin_full").episodes([v for _, v in readings]):
        out.append((times[first], times[last + 1] if last + 1 < len(times) else times[last]))
    return out


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by index (highest first; streets without one last) with their rank (ties share one)."""
    rows.sort(key=lambda r: (r["index"] is None, -(r["index"] or 0.0), r["street_id"]))
    rank, last = 0, object()
    for i, r in enumerate(rows, start=1):
        if r["index"] is None:
            r["rank"] = None
            continue
        if r["index"] != last:
            rank, last = i, r["index"]
        r["rank"] = rank
    return rows


# -- reading --------------------------------------------------------------------------------------------------

def streets_under(conn: psycopg.Connection, root: str | None) -> list[Street]:
    """Streets at or below ``root`` (all when None), each with its district (nearest district ancestor)."""
    rows = conn.execute("""
        WITH RECURSIVE tree AS (
            SELECT site_id FROM sites WHERE %(root)s::text IS NULL OR site_id = %(root)s
            UNION SELECT s.site_id FROM sites s JOIN tree t ON s.parent_id = t.site_id
        ), up AS (
            SELECT s.site_id AS street_id, s.parent_id AS at, 0 AS depth FROM sites s JOIN tree t USING (site_id)
             WHERE s.kind = ANY(%(streets)s)
            UNION ALL
            SELECT up.street_id, p.parent_id, up.depth + 1 FROM up JOIN sites p ON p.site_id = up.at
             WHERE p.kind <> 'district' AND up.depth < 20
        )
        SELECT s.site_id, s.name, s.timezone,
               (SELECT d.site_id FROM up JOIN sites d ON d.site_id = up.at
                 WHERE up.street_id = s.site_id AND d.kind = 'district' LIMIT 1)
          FROM sites s JOIN tree t USING (site_id)
         WHERE s.kind = ANY(%(streets)s) ORDER BY s.site_id""", {"root": root, "streets": list(STREET_KINDS)}).fetchall()
    return [Street(str(sid), str(name), None if dist is None else str(dist), str(tz)) for sid, name, tz, dist in rows]


_BIN_ROWS = """
      FROM bin_status b LEFT JOIN devices d ON d.device_id = b.device_id
      JOIN sites p ON p.site_id = coalesce(b.point_id, d.site_id)
     WHERE p.kind = 'sorting_point' AND p.parent_id = ANY(%(streets)s) AND b.fill_level_pct IS NOT NULL
       AND b.ts >= %(start)s AND b.ts < %(end)s"""


def _bins_reporting(conn: psycopg.Connection, street_ids: Sequence[str], start: datetime,
                    end: datetime) -> dict[str, int]:
    """street → bins with a fill reading in [start, end). A reading belongs to the point it names, else to its
    device's site."""
    rows = conn.execute("SELECT p.parent_id, count(DISTINCT b.device_id)::int" + _BIN_ROWS + " GROUP BY 1",
                        {"streets": list(street_ids), "start": start, "end": end}).fetchall()
    return {str(k): int(n) for k, n in rows}


def _bin_readings(conn: psycopg.Connection, street_ids: Sequence[str], start: datetime,
                  end: datetime) -> dict[str, dict[str, list[tuple[datetime, float]]]]:
    """street → bin → (ts, fill) in time order, of the bins that can have been full: a smoothed value (median or
    mean) reaches the threshold only if a raw reading does, so a bin whose readings all stay below it is left in
    the database (a city's bins report ~30 million readings a week; few are ever full). Starts a little before
    the window so the smoothing window is full at its start."""
    full = condition("bin_full")
    threshold, _ = full.limits()
    lead = timedelta(hours=6)  # ≥ bin_full's window of readings at any reporting rate bins use (minutes apart)
    hot = "HAVING max(b.fill_level_pct) >= %(threshold)s" if full.op in (">", ">=") else ""
    rows = conn.execute(f"""
        WITH hot AS (SELECT b.device_id {_BIN_ROWS} GROUP BY b.device_id {hot})
        SELECT p.parent_id, b.device_id, b.ts, b.fill_level_pct {_BIN_ROWS}
           AND b.device_id IN (SELECT device_id FROM hot)
         ORDER BY b.device_id, b.ts""", {"streets": list(street_ids), "start": start - lead, "end": end,
                                         "threshold": threshold}).fetchall()
    out: dict[str, dict[str, list[tuple[datetime, float]]]] = defaultdict(lambda: defaultdict(list))
    for street, device, ts, fill in rows:
        out[street][device].append((ts, float(fill)))
    return out


def _station_alerts(conn: psycopg.Connection, district_ids: Sequence[str], rules: Sequence[str], start: datetime,
                    end: datetime, now: datetime) -> dict[str, list[tuple[datetime, datetime]]]:
    """district → intervals during which one of ``rules`` fired at a station in it (pending never counts: a
    condition that did not hold for the rule's ``for`` is no exceedance). An alert still open lasts until now."""
    rows = conn.execute("""
        WITH RECURSIVE tree AS (
            SELECT site_id, site_id AS district_id FROM sites WHERE site_id = ANY(%(districts)s)
            UNION SELECT s.site_id, t.district_id FROM sites s JOIN tree t ON s.parent_id = t.site_id
        )
        SELECT DISTINCT t.district_id, a.alert_id, a.started_at, coalesce(a.resolved_at, %(now)s)
          FROM alerts a LEFT JOIN devices d ON d.device_id = a.device_id
          JOIN tree t ON t.site_id = coalesce(a.site_id, d.site_id)
         WHERE a.rule_id = ANY(%(rules)s) AND a.fired_at IS NOT NULL
           AND a.started_at < %(end)s AND coalesce(a.resolved_at, %(now)s) > %(start)s""",
        {"districts": list(district_ids), "rules": list(rules), "start": start, "end": end, "now": now}).fetchall()
    out: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for district, _, a, b in rows:
        out[district].append((a, b))
    return out


def _stations_reporting(conn: psycopg.Connection, district_ids: Sequence[str], start: datetime,
                        end: datetime) -> dict[str, int]:
    """district → its transfer stations with a reading in [start, end). A week in which no station sent anything
    has no odour or noise component: no alert then is no data, not a clean week (as bins without readings)."""
    rows = conn.execute("""
        WITH RECURSIVE tree AS (
            SELECT site_id, site_id AS district_id FROM sites WHERE site_id = ANY(%(districts)s)
            UNION SELECT s.site_id, t.district_id FROM sites s JOIN tree t ON s.parent_id = t.site_id
        )
        SELECT t.district_id, count(*)::int FROM devices d JOIN tree t ON t.site_id = d.site_id
         WHERE d.kind = 'transfer_station'
           AND EXISTS (SELECT 1 FROM station_telemetry r
                        WHERE r.device_id = d.device_id AND r.ts >= %(start)s AND r.ts < %(end)s)
         GROUP BY 1""", {"districts": list(district_ids), "start": start, "end": end}).fetchall()
    return {str(k): int(n) for k, n in rows}


def _sweeping(conn: psycopg.Connection, street_ids: Sequence[str], start: datetime,
              end: datetime) -> dict[str, tuple[int, float]]:
    """street → (sweepers sited there, hours they swept): the time from each reading in a sweep mode to the next
    reading, each gap capped at ``SWEEP_GAP_CAP`` (a sweeper that went silent is not sweeping for us)."""
    fleet: dict[str, int] = dict(conn.execute("SELECT site_id, count(*)::int FROM devices WHERE kind = 'sweeper'"
                              " AND site_id = ANY(%(streets)s) GROUP BY 1", {"streets": list(street_ids)}).fetchall())
    rows = conn.execute("""
        SELECT d.site_id, coalesce(sum(least(extract(epoch FROM nxt - ts), %(cap)s)), 0)::float8 / 3600
          FROM (SELECT device_id, ts, work_mode, lead(ts) OVER (PARTITION BY device_id ORDER BY ts) AS nxt
                  FROM sweeper_telemetry
                 WHERE ts >= %(start)s AND ts < %(end)s
                   AND device_id IN (SELECT device_id FROM devices WHERE kind = 'sweeper'
                                      AND site_id = ANY(%(streets)s))) r
          JOIN devices d USING (device_id)
         WHERE r.work_mode LIKE 'sweep%%' AND r.nxt IS NOT NULL
         GROUP BY 1""", {"streets": list(street_ids), "start": start, "end": end,
                         "cap": SWEEP_GAP_CAP.total_seconds()}).fetchall()
    hours = {str(k): float(h) for k, h in rows}
    return {s: (int(fleet.get(s, 0)), hours.get(s, 0.0)) for s in street_ids}


# -- the report -------------------------------------------------------------------------------------------------

def build_index(conn: psycopg.Connection, site_id: str | None, monday: date, now: datetime) -> dict[str, Any]:
    """The index of every street at or below ``site_id`` (all streets when None) for the ISO week starting
    ``monday``, as known at ``now``, ranked, with the previous week's index and the change."""
    streets = streets_under(conn, site_id)
    this_week = _score_week(conn, site_id, streets, monday, now)
    last_week = _score_week(conn, site_id, streets, monday - timedelta(days=7), now)
    rows = []
    for street in streets:
        cur, prev = this_week[street.street_id], last_week[street.street_id]
        rows.append({"street_id": street.street_id, "name": street.name, "district_id": street.district_id,
                     "index": cur["index"], "previous_index": prev["index"],
                     "change": None if cur["index"] is None or prev["index"] is None
                     else round(cur["index"] - prev["index"], 1),
                     "components": cur["components"], "inputs": cur["inputs"]})
    return {"site_id": site_id, "week": week_label(monday), "as_of": now.isoformat(), "weights": WEIGHTS,
            "streets": ranked(rows)}


def _week_bounds(monday: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the local week in UTC (a same-zone comparison would be by wall clock across DST)."""
    return (datetime.combine(monday, time(0), tz).astimezone(UTC),
            datetime.combine(monday + timedelta(days=7), time(0), tz).astimezone(UTC))


def _score_week(conn: psycopg.Connection, site_id: str | None, streets: Sequence[Street], monday: date,
                now: datetime) -> dict[str, dict[str, Any]]:
    if not streets:
        return {}
    # one window wide enough for every street's local week (street zones may differ); each street clips its own
    zones = {s.timezone for s in streets}
    bounds = [_week_bounds(monday, zone(z)) for z in zones]
    start, end = min(b[0] for b in bounds), max(b[1] for b in bounds)
    ids = [s.street_id for s in streets]
    districts = sorted({s.district_id for s in streets if s.district_id})
    points, _ = scheduled_points(conn, site_id)
    pickups = fetch_pickups(conn, start - timedelta(days=1), end + timedelta(days=1),
                            point_ids=[p.point_id for p in points])
    days = [monday + timedelta(days=i) for i in range(7)]
    verdicts = judge_days(points, pickups, days, now, fleet_reports(conn, points, days))
    bins = _bin_readings(conn, ids, start, end)
    reporting = _bins_reporting(conn, ids, start, end)
    odour = _station_alerts(conn, districts, ODOUR_RULES, start, end, now)
    noise = _station_alerts(conn, districts, NOISE_RULES, start, end, now)
    stations = _stations_reporting(conn, districts, start, end)
    sweeping = _sweeping(conn, ids, start, end)
    out = {}
    for street in streets:
        w_start, w_end = _week_bounds(monday, zone(street.timezone))
        upto = min(max(now, w_start), w_end)  # the part of the week that has happened
        mine = [v for v in verdicts if v.street_id == street.street_id]
        finished = [v for v in mine if v.status in ("on_time", "late", "missed")]
        on_time = sum(1 for v in finished if v.status == "on_time")
        no_data = sum(1 for v in mine if v.status == "no_data")
        n_bins = reporting.get(street.street_id, 0)
        bin_hours = sum(union_hours(overflow_intervals(r), w_start, upto) for r in bins[street.street_id].values())
        has_stations = bool(street.district_id and stations.get(street.district_id))
        odour_h = union_hours(odour[street.district_id or ""], w_start, upto) if has_stations else None
        noise_h = union_hours(noise[street.district_id or ""], w_start, upto) if has_stations else None
        sweepers, swept_h = sweeping[street.street_id]
        planned_h = sweepers * PLANNED_SWEEP_H_PER_DAY * (upto - w_start) / timedelta(days=1)
        components: dict[str, float | None] = {
            "clearance": round(100.0 * on_time / len(finished), 1) if finished else None,
            "overflow": hours_score(bin_hours / n_bins) if n_bins else None,
            "odour": None if odour_h is None else hours_score(odour_h),
            "noise": None if noise_h is None else hours_score(noise_h),
            "sweeping": round(100.0 * min(1.0, swept_h / planned_h), 1) if planned_h > 0 else None,
        }
        out[street.street_id] = {"index": weighted_index(components), "components": components, "inputs": {
            "clearance_finished": len(finished), "clearance_on_time": on_time, "clearance_no_data": no_data,
            "bins": n_bins, "overflow_bin_hours": round(bin_hours, 2),
            "odour_hours": None if odour_h is None else round(odour_h, 2),
            "noise_hours": None if noise_h is None else round(noise_h, 2),
            "sweepers": sweepers, "swept_hours": round(swept_h, 2), "planned_sweep_hours": round(planned_h, 2)}}
    return out


def index_csv(report: Mapping[str, Any]) -> str:
    """One row per street: rank, index, change and each component (flat, for a spreadsheet)."""
    buf = io.StringIO()
    fields = ["week", "rank", "street_id", "name", "district_id", "index", "previous_index", "change",
              *(f"{k}_score" for k in WEIGHTS)]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in report["streets"]:
        writer.writerow({"week": report["week"], **{k: r[k] for k in fields[1:8]},
                         **{f"{k}_score": r["components"][k] for k in WEIGHTS}})
    return buf.getvalue()
