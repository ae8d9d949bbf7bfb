"""What one evaluator pass costs with the truck pack at the reference city's scale (issue 15).

On a PostgreSQL+TimescaleDB of its own (free port, data in a temp folder, ``sanitel.servers``):

1. migrate; register the ``shenzhen`` scenario's truck side as ``sanitel run`` does (``register_fleet``: districts,
   depots, estates, sorting points with their clearance schedules, transfer stations, the points' bins and cameras,
   the trucks and their planned routes) — without sweepers and plants, which the truck pack does not read;
2. bulk-load (COPY) one clean day of truck data, generated here per truck from its registered route: parked at the
   depot every ``parked_interval`` (60 s) until the shift, then a reading every ``--interval`` (30 s) driving depot →
   the route's points (a stop at each, one pickup per bin there) → its tip station (a tip event, a weighbridge ticket
   whose net is the pickups' sum) → depot, then parked again;
3. evaluator passes (``alerts.evaluator.Evaluator`` with the production ``EvaluatorConfig``, one kept across the
   passes and each followed by the incident step, as ``sanitel evaluator`` runs them) at a controlled ``now``
   (``--at``, local, default 20:00 of the day): first with the truck rules only (truck.yaml and ``truck_offline``),
   then — alerts, state and watermarks forgotten — with every shipped rule. Each: a cold first pass, then steady
   passes, each after the next ``evaluator_interval_s`` of the day's data was stored (what a running collector adds
   between two passes), ``now`` moved on as much.

Prints per configuration the cold pass, the median and max of the steady passes, the table tuples PostgreSQL read
for them (``pg_stat_all_tables``: sequential + index fetches, chunks included) and the peak RSS of this process
during the passes (VmHWM, reset after loading; "+passes" is what it rose by above the RSS at the reset, which holds
the bench's own generated day — about 2.9 GB at full scale — so the evaluator's share is the rise, not the peak).

    .venv/bin/python bench/alerts/truck_pack_scale.py                       # 2,500 trucks, 22,000 points
    .venv/bin/python bench/alerts/truck_pack_scale.py --trucks 250 --points 2200
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
from psycopg import AsyncConnection

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.incidents import load_incident_rules, maintain
from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from sanitel.db import apply_migrations, one_row
from sanitel.servers import PostgresServer, free_port
from sanitel.settings import load_settings
from sanitel.simulators.run import inventory, inventory_routes, inventory_sites
from sanitel.simulators.scenario import Scenario, load_scenario
from sanitel.stack_cli import register_fleet

CITY = "shenzhen"
DAY = "2026-03-09"  # a fixed past local day, as bench/alert_truth.py
SEED = 1
TRUCK_RULES_FILE = "truck.yaml"
TRUCK_OFFLINE_RULE = "truck_offline"
# the day's timetable of a route (assumed, not measured; the first pickup is weighed within load_not_weighed's 3 h
# for up to 11 points): minutes
TO_ROUTE_MIN, DRIVE_MIN, STOP_MIN, TO_TIP_MIN, TIPPING_MIN = 20.0, 8.0, 4.0, 30.0, 15.0
SPEED_KMH = 20.0
PICKUP_KG = (20.0, 120.0)  # one bin lifted: uniform between these
INCIDENT_RULES = load_incident_rules(None)  # the shipped incidents.yaml


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the city --------------------------------------------------------------------------------------------------------


def truck_side(trucks: int, points: int) -> Scenario:
    """The shenzhen scenario's trucks, sorting points and stations (stations in the scenario's proportion to the
    points), no sweepers and no plants."""
    city = load_scenario(CITY)
    stations = max(1, round(city.stations.count * points / city.sorting_points.count))
    return city.model_copy(update={
        "plants": [], "faults": [],
        "sweepers": city.sweepers.model_copy(update={"count": 0}),
        "stations": city.stations.model_copy(update={"count": stations}),
        "sorting_points": city.sorting_points.model_copy(update={"count": points}),
        "trucks": city.trucks.model_copy(update={"count": trucks})})


def register(url: str, scenario: Scenario) -> None:
    async def fleet() -> None:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            await register_fleet(conn, scenario, city=CITY, seed=SEED)

    asyncio.run(fleet())


# --- the day's data --------------------------------------------------------------------------------------------------


class Rows:
    """One table's generated rows, as COPY text lines in device-time order."""

    def __init__(self, columns: tuple[str, ...], ts: np.ndarray, lines: Sequence[str]) -> None:
        order = np.argsort(ts, kind="stable")
        self.columns = columns
        self.ts = ts[order]  # epoch seconds
        self.lines = [lines[i] for i in order]

    def between(self, start: float, end: float) -> str:
        first, last = np.searchsorted(self.ts, [start, end], side="left")
        return "".join(self.lines[first:last])


def iso(epochs: np.ndarray) -> np.ndarray:
    """Epoch seconds → ISO 8601 UTC text (COPY's timestamptz input)."""
    millis = np.rint(epochs * 1000).astype("int64").astype("datetime64[ms]")
    return np.char.add(np.datetime_as_string(millis, unit="ms"), "Z")


def _leg(a: tuple[float, float], b: tuple[float, float], minutes: float, step_s: float, t0: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings every step_s while driving from a to b in ``minutes`` starting at t0: (ts, lat, lon)."""
    ts = np.arange(t0, t0 + minutes * 60.0, step_s)
    f = (ts - t0) / (minutes * 60.0)
    return ts, a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])


def truck_day(route: dict[str, Any], depot: tuple[float, float], place: dict[str, tuple[float, float]],
              bins: dict[str, list[tuple[str, str]]], day_start: float, step_s: float, parked_s: float,
              rated_kg: float, rng: np.random.Generator
              ) -> tuple[list[tuple[np.ndarray, ...]], list[tuple[Any, ...]], tuple[float, float]]:
    """One truck's clean day: telemetry segments (ts, lat, lon, speed, load, shift_state), pickups (ts, point,
    bin, category, kg) and the tip (ts, kg)."""
    phase = float(rng.uniform(0, parked_s))  # the fleet's readings spread over the interval, not on one second
    shift_start = day_start + _seconds(route["shift_start"]) + phase
    segments: list[tuple[np.ndarray, ...]] = []

    def add(ts: np.ndarray, lat: Any, lon: Any, speed: float, load: float, state: str) -> None:
        n = len(ts)
        segments.append((ts, np.broadcast_to(lat, n), np.broadcast_to(lon, n), np.full(n, speed), np.full(n, load),
                         np.full(n, state, dtype=object)))

    add(np.arange(day_start + phase, shift_start, parked_s), depot[0], depot[1], 0.0, 0.0, "depot")
    t, here, load = shift_start, depot, 0.0
    pickups: list[tuple[Any, ...]] = []
    for k, point in enumerate(route["points"]):
        ts, lat, lon = _leg(here, place[point], TO_ROUTE_MIN if k == 0 else DRIVE_MIN, step_s, t)
        add(ts, lat, lon, SPEED_KMH, load, "to_route" if k == 0 else "collecting")
        t += (TO_ROUTE_MIN if k == 0 else DRIVE_MIN) * 60.0
        here = place[point]
        for j, (bin_id, category) in enumerate(bins.get(point, [])):
            kg = float(rng.uniform(*PICKUP_KG))
            pickups.append((t + 20.0 * j, point, bin_id, category, kg))
            load += kg
        add(np.arange(t, t + STOP_MIN * 60.0, step_s), here[0], here[1], 0.0, load, "collecting")
        t += STOP_MIN * 60.0
    station = place[route["tip_site_id"]]
    ts, lat, lon = _leg(here, station, TO_TIP_MIN, step_s, t)
    add(ts, lat, lon, SPEED_KMH, load, "to_tip")
    t += TO_TIP_MIN * 60.0
    tip = (t, load)
    add(np.arange(t, t + TIPPING_MIN * 60.0, step_s), station[0], station[1], 0.0, load, "tipping")
    t += TIPPING_MIN * 60.0
    ts, lat, lon = _leg(station, depot, TO_TIP_MIN, step_s, t)
    add(ts, lat, lon, SPEED_KMH, 0.0, "returning")
    t += TO_TIP_MIN * 60.0
    add(np.arange(t, day_start + 86_400.0 + phase, parked_s), depot[0], depot[1], 0.0, 0.0, "depot")
    assert load <= rated_kg * 2  # a clean day stays plausible
    return segments, pickups, tip


def _seconds(hhmm: str) -> float:
    hours, minutes = hhmm.split(":")
    return int(hours) * 3600.0 + int(minutes) * 60.0


def generate_day(scenario: Scenario, day_start: float, step_s: float) -> dict[str, Rows]:
    """The day's truck_telemetry, truck_events (pickups, tips) and weighbridge_tickets rows."""
    devices = inventory(scenario, seed=SEED, city=CITY)
    routes = inventory_routes(scenario, seed=SEED, city=CITY)
    place = {s["site_id"]: (float(s["lat"]), float(s["lon"])) for s in inventory_sites(scenario, seed=SEED, city=CITY)}
    bins: dict[str, list[tuple[str, str]]] = {}
    for d in devices:
        if d["kind"] == "bin":
            bins.setdefault(d["metadata"]["point_id"], []).append((d["device_id"], d["metadata"]["category"]))
    trucks = {d["device_id"]: d for d in devices if d["kind"] == "truck"}
    rng = np.random.default_rng(SEED)
    telemetry: list[tuple[np.ndarray, str]] = []
    events: list[tuple[float, str]] = []
    tickets: list[tuple[float, str]] = []
    rated = float(scenario.trucks.rated_payload_kg)
    for route in routes:
        truck = trucks[route["truck_id"]]
        depot = tuple(truck["metadata"]["depot"])
        segments, pickups, (tip_ts, tip_kg) = truck_day(route, (depot[0], depot[1]), place, bins, day_start, step_s,
                                                        float(scenario.trucks.parked_interval), rated, rng)
        ts = np.concatenate([s[0] for s in segments])
        columns = [np.concatenate([s[i] for s in segments]) for i in range(1, 6)]
        stamp = iso(ts)
        body = [f"{truck['device_id']}\t{a}\t0\t{a}\t{lat:.6f}\t{lon:.6f}\t{v:.1f}\t{kg:.1f}\t{rated:.0f}\t"
                f"{route['route_id']}\t{state}\n"
                for a, lat, lon, v, kg, state in zip(stamp, *columns, strict=True)]
        telemetry.append((ts, "".join(body)))  # one string a truck: sliced by time below
        for seq, (pts, point, bin_id, category, kg) in enumerate(pickups):
            a = iso(np.array([pts]))[0]
            events.append((pts, f"{truck['device_id']}\t{a}\t{seq}\t{a}\tpickup\t{kg:.1f}\t{point}\t{bin_id}\t"
                                f"{category}\t\\N\n"))
        a = iso(np.array([tip_ts]))[0]
        events.append((tip_ts, f"{truck['device_id']}\t{a}\t{len(pickups)}\t{a}\ttip\t{tip_kg:.1f}\t\\N\t\\N\t\\N\t"
                               f"{route['tip_site_id']}\n"))
        tare = 9000.0
        tickets.append((tip_ts, f"{route['tip_site_id']}\t{a}\t{len(tickets)}\t{a}\twb-{len(tickets):06d}\t"
                                f"{truck['device_id']}\t{tare + tip_kg:.1f}\t{tare:.1f}\t{tip_kg:.1f}\tother\tin\n"))
    return {
        "truck_telemetry": _telemetry_rows(telemetry),
        "truck_events": _rows(("device_id", "ts", "seq", "received_at", "event", "weight_kg", "point_id", "bin_tag",
                               "category", "site_id"), events),
        "weighbridge_tickets": _rows(("device_id", "ts", "seq", "received_at", "ticket_id", "truck_id", "gross_kg",
                                      "tare_kg", "net_kg", "category", "direction"), tickets)}


def _telemetry_rows(per_truck: list[tuple[np.ndarray, str]]) -> Rows:
    lines = [line for _, text in per_truck for line in text.splitlines(keepends=True)]
    ts = np.concatenate([t for t, _ in per_truck]) if per_truck else np.array([])
    return Rows(("device_id", "ts", "seq", "received_at", "lat", "lon", "speed_kmh", "load_kg", "rated_payload_kg",
                 "route_id", "shift_state"), ts, lines)


def _rows(columns: tuple[str, ...], found: list[tuple[float, str]]) -> Rows:
    return Rows(columns, np.array([t for t, _ in found]), [line for _, line in found])


def copy_between(url: str, tables: dict[str, Rows], start: float, end: float) -> int:
    """COPY every table's rows with device time in [start, end); returns how many."""
    total = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for table, rows in tables.items():
            text = rows.between(start, end)
            if not text:
                continue
            with conn.cursor().copy(f"COPY {table} ({', '.join(rows.columns)}) FROM STDIN") as copy:
                for chunk in _chunks(text):
                    copy.write(chunk)
            total += text.count("\n")
    return total


def _chunks(text: str, size: int = 1 << 22) -> Iterator[str]:
    buffer = io.StringIO(text)
    while chunk := buffer.read(size):
        yield chunk


# --- the passes ------------------------------------------------------------------------------------------------------


def truck_rules() -> RuleSet:
    """truck.yaml's rules and truck_offline (offline.yaml's other rules are other kinds')."""
    everything = load_files(default_rule_files())
    out = RuleSet()
    for rule_id, rule in everything.rules.items():
        if Path(everything.origins[rule_id]).name == TRUCK_RULES_FILE or rule_id == TRUCK_OFFLINE_RULE:
            out.add(rule, everything.origins[rule_id])
    return out


def tuples_read(conn: psycopg.Connection) -> int:
    """Table tuples read so far (sequential scans and index fetches, every table and chunk), once the counts stop
    moving: the evaluator's session flushes them when it goes idle, a moment after its commit."""
    last, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _tuples(conn)
        if now == last:
            return now
        last = now
    return last


def _tuples(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(one_row(conn.execute(
        "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_all_tables"
        " WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"))[0])


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Figures:
    name: str
    rules: int
    cold_s: float
    steady_s: list[float]
    cold_tuples: int
    steady_tuples: list[int]
    rows_added: list[int]
    peak_rss_mb: float
    base_rss_mb: float  # at the reset: the bench's own day of generated rows is most of it

    def line(self) -> str:
        return (f"{self.name:<10} {self.rules:>5} {self.cold_s:>8.2f} {statistics.median(self.steady_s):>10.2f} "
                f"{max(self.steady_s):>8.2f} {self.cold_tuples:>12,} {int(statistics.median(self.steady_tuples)):>12,} "
                f"{int(statistics.median(self.rows_added)):>8,} {self.peak_rss_mb:>8.0f} "
                f"{self.peak_rss_mb - self.base_rss_mb:>8.0f}")


HEADER = (f"{'rules':<10} {'count':>5} {'cold s':>8} {'steady med':>10} {'max':>8} {'cold tuples':>12} "
          f"{'steady tuples':>12} {'rows/pass':>8} {'RSS MB':>8} {'+passes':>8}")


def forget_alerts(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if one_row(conn.execute("SELECT to_regclass('incidents') IS NOT NULL"))[0]:
            conn.execute("DELETE FROM incidents")
        conn.execute("DELETE FROM alerts; DELETE FROM alert_eval_state; DELETE FROM alert_watermarks")


def measure(url: str, name: str, rules: RuleSet, tables: dict[str, Rows], now: datetime, step_s: float,
            passes: int, profile: Path | None = None) -> tuple[Figures, datetime]:
    """A cold pass at ``now``, then ``passes`` steady ones, each after the next step of data is stored (profiled
    into ``profile``, ``.<name>`` appended, when given)."""
    forget_alerts(url)
    reset_peak_rss()
    base = peak_rss_mb("VmRSS")
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as stats:
        evaluator = Evaluator(conn, rules, EvaluatorConfig())
        cold_s, cold_tuples = timed_pass(evaluator, conn, stats, now)
        log(f"  {name}: cold pass {cold_s:.2f} s, {cold_tuples:,} tuples read")
        steady, steady_tuples, added = [], [], []
        profiler = cProfile.Profile() if profile is not None else None
        for _ in range(passes):
            added.append(copy_between(url, tables, now.timestamp(), now.timestamp() + step_s))
            now += timedelta(seconds=step_s)
            if profiler is not None:
                profiler.enable()
            seconds, tuples = timed_pass(evaluator, conn, stats, now)
            if profiler is not None:
                profiler.disable()
            steady.append(seconds)
            steady_tuples.append(tuples)
            log(f"  {name}: steady pass {seconds:.2f} s ({added[-1]:,} rows stored before it, {tuples:,} tuples read)")
        if profiler is not None:
            profiler.dump_stats(f"{profile}.{name}")
    return Figures(name, len(rules.enabled()), cold_s, steady, cold_tuples, steady_tuples, added, peak_rss_mb(),
                   base), now


def timed_pass(evaluator: Evaluator, conn: psycopg.Connection, stats: psycopg.Connection, now: datetime
               ) -> tuple[float, int]:
    """One pass and the incident step after it, as the evaluator service runs them (sharing its registry): their
    duration (wall clock of this process) and the tuples they read."""
    before = tuples_read(stats)
    started = time.monotonic()
    evaluator.run_pass(now)
    maintain(conn, now, INCIDENT_RULES, evaluator.ruleset, evaluator.registry_cache)
    seconds = time.monotonic() - started
    conn.execute("SELECT pg_stat_force_next_flush()")  # this session's counts, visible to the other now
    conn.commit()
    return seconds, tuples_read(stats) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trucks", type=int, default=2500, help="trucks (default 2,500: the reference city)")
    parser.add_argument("--points", type=int, default=22000, help="sorting points (default 22,000)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between readings on shift (30)")
    parser.add_argument("--at", default="20:00", help="local time of the day of the first pass (default 20:00)")
    parser.add_argument("--passes", type=int, default=7, help="steady passes per configuration (default 7)")
    parser.add_argument("--only", choices=("trucks", "all"), help="measure one configuration only")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the steady passes here (pstats)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenario = truck_side(args.trucks, args.points)
    zone = ZoneInfo(scenario.timezone)
    day_start = datetime.fromisoformat(DAY).replace(tzinfo=zone)
    now = (day_start + timedelta(seconds=_seconds(args.at))).astimezone(UTC)
    step_s = load_settings().evaluator_interval_s
    log(f"truck pack at scale: {args.trucks:,} trucks, {args.points:,} points, {scenario.stations.count} stations; "
        f"day {DAY}, first pass at {args.at} local; steady passes every {step_s:g} s of data; "
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}")
    folder = Path(tempfile.mkdtemp(prefix="sanitel-bench-truckscale-"))
    folder.chmod(0o755)  # the postgres user traverses it
    pg = PostgresServer(folder / "pg", free_port(), fsync=False)
    try:
        pg.start()
        apply_migrations(pg.url)
        mark = time.monotonic()
        register(pg.url, scenario)
        log(f"  registered in {time.monotonic() - mark:.0f} s")
        mark = time.monotonic()
        tables = generate_day(scenario, day_start.timestamp(), args.interval)
        log(f"  generated in {time.monotonic() - mark:.0f} s: "
            + ", ".join(f"{t} {len(r.lines):,}" for t, r in tables.items()))
        mark = time.monotonic()
        loaded = copy_between(pg.url, tables, day_start.timestamp(), now.timestamp())
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE truck_telemetry, truck_events, weighbridge_tickets")
        log(f"  {loaded:,} rows loaded (COPY, then VACUUM ANALYZE) in {time.monotonic() - mark:.0f} s")
        figures = []
        configurations = {"trucks": truck_rules, "all": lambda: load_files(default_rule_files())}
        for name, rules in configurations.items():
            if args.only in (None, name):
                found, now = measure(pg.url, name, rules(), tables, now, step_s, args.passes, args.profile)
                figures.append(found)
        print(f"\n{HEADER}")
        for f in figures:
            print(f.line())
        print(f"\nevaluator_interval_s = {step_s:g}")
        return 0
    finally:
        pg.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
