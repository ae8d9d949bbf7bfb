"""Alerts against the simulator's ground truth (issue 18, Must show 4): recall and false alerts per rule, per seed.

For each seed, on servers of its own (PostgreSQL+TimescaleDB and Mosquitto on free ports, data in a temp folder):

1. migrate; register the scenario's sites (stations on odour grade 2 / noise class 2, as an operator would) and its
   fleet as ``sanitel run`` does (``register_fleet``: devices, gateways with their bins, HJ 212 passwords);
2. the marks an HJ 212 plant must enter through the API for its line outages (ground truth ``mark_via_api``: the
   unit cannot send them), entered before the day streams in — a plant marking its shut-down as it happens;
3. a ``sanitel collector`` process; the scheduled processor's pass (rollups, CEMS averages and daily judgement,
   ``processors/maintenance.run_pass``, no retention) and an evaluator pass with the shipped rule packs, in a loop
   while the day streams in, both at one controlled now: the morning after the simulated day, 02:00 local (the
   evaluator's lateness horizon measures from there; the next day, two hours old then, is open for both);
4. ``sanitel simulate --scenario S --speed max --faults all --seed N --start <fixed past day> --duration 24h10m
   --engine fast --rate 4000`` (the ten minutes past midnight complete the day; the rate is what one collector keeps
   up with here, see DEFAULT_RATE);
5. once every message is stored (each taken and written once, or the broker holds nothing more for the collector):
   a last processor pass and two evaluator passes (the last periods, then the passes
   that judge them), then ``sanitel/alert_truth.py``'s ``score`` — what ``sanitel truth score`` prints.

    .venv/bin/python bench/alert_truth.py --scenario district --seeds 1,2,3,4,5 [--replay] [--json FILE]
    .venv/bin/python bench/alert_truth.py --scenario shenzhen --scale 0.01 --seeds 1
    .venv/bin/python bench/alert_truth.py --scenario district --fleet trucks --seeds 1,2,3,4,5 --rate 2000

``--replay`` also judges each stored day again in one batch pass and scores that: a streamed result that differs
points at incremental evaluation, not at the rules. ``--fleet trucks`` keeps what the truck pack judges — the trucks,
the sorting points on their routes, the stations they tip at (same layout) — without the sweepers and the plant: a
quarter of the messages, for the truck rules' figures on a loaded machine. Figures: docs/benchmarks.md.

Prints each seed's table (rule, expected, matched, missed, raised, false, excluded, recall) with the missed and false
alerts named, then one line a seed. Exits 1 when a seed misses an expected alert or raises a false one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import yaml
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from sanitel.alert_truth import Score, score_database
from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.rules import default_rule_files, load_files
from sanitel.db import apply_migrations, one_row
from sanitel.processors.cems_marks import add_mark
from sanitel.processors.maintenance import run_pass
from sanitel.servers import BrokerBacklog, MosquittoServer, PostgresServer, free_port
from sanitel.settings import Settings, load_settings
from sanitel.simulators.run import generate, inventory
from sanitel.simulators.scenario import Scenario, load_scenario
from sanitel.simulators.truth import read_ground_truth
from sanitel.stack_cli import register_fleet

CITY = "shenzhen"
DAY = "2026-03-09"  # a fixed past local day: runs are comparable and every clock sees it as past
DURATION = "24h10m"  # the day and ten minutes of the next: the units report past midnight, so the day is complete
# The evaluator's collector writes take well under a second here; three days of lateness cover the day's data.
CONFIG = EvaluatorConfig(lateness_horizon=timedelta(days=3), write_margin=timedelta(seconds=1))
# Per-site parameters of the simulated sites (the shipped defaults, stated as an operator would register them).
SITE_PARAMS: dict[str, dict[str, Any]] = {"transfer_station": {"odour_grade": 2, "noise_class": 2}}
PASS_PAUSE_S = 2.0  # between evaluation passes while the day streams in
# The simulator's publishing rate (messages/s): what one collector keeps up with on this 2-core machine while the
# evaluator, the processor and the simulator share it. Faster, a backlog of 100,000s builds up in the broker, and the
# collector then keeps being disconnected ("Unspecified error") and sent the whole backlog again (docs/benchmarks.md).
DEFAULT_RATE = 4000
# Rows stored (readings less the duplicates, plus a dead letter per refused message) for the readings published:
# below this share, something lost data and the score would not be about the rules.
STORED_AT_LEAST = 0.99
SETTLED_S = 1.0  # nothing held by the broker and the stored row count unchanged this long


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class SeedResult:
    seed: int
    score: Score
    messages: int = 0
    refused: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    marks: int = 0
    passes: int = 0
    replayed: Score | None = None  # --replay: the same day judged in one batch pass
    readings: int = 0  # in the messages published
    rows: int = 0  # stored: readings (less duplicates) and dead letters


# --- the registry ----------------------------------------------------------------------------------------------------


def register(url: str, scenario: Scenario, seed: int) -> int:
    """The scenario's sites and fleet as ``sanitel run`` registers them (``register_fleet``: districts, depots,
    estates, sorting points with their clearance schedules, stations, plants and lines, then the devices and the
    trucks' routes), then the per-site parameters an operator states (SITE_PARAMS); returns the number of devices."""

    async def fleet() -> None:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            await register_fleet(conn, scenario, city=CITY, seed=seed)

    asyncio.run(fleet())
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, params in SITE_PARAMS.items():
            conn.execute("UPDATE sites SET params = params || %s WHERE kind = %s", (Jsonb(params), kind))
    return len(inventory(scenario, seed=seed, city=CITY))


def trucks_fleet(name: str) -> str:
    """A shipped scenario without its sweepers and plants, as a scenario file (``sanitel simulate`` reads it): what
    the truck pack judges — trucks, their routes' sorting points (bins, cameras), the stations they tip at — and the
    same layout, since trucks, points and stations are placed as in the whole scenario."""
    raw = yaml.safe_load(Path(load_scenario(name).source).read_text())
    raw["sweepers"] = {**raw.get("sweepers", {}), "count": 0}
    raw["plants"], raw["faults"] = [], []  # `--faults all` replaces the scenario's own anyway
    path = Path(tempfile.mkdtemp(prefix="sanitel-bench-trucks-")) / f"{name}-trucks.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def _api_marks(records: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {(r["device_id"], m["mark"], m["starts_at"], m["ends_at"]) for r in records
            if (m := r["expected_effect"].get("mark_via_api"))}


def planned_marks(scenario: Scenario, seed: int, start: datetime, folder: Path) -> list[dict[str, Any]]:
    """The ground-truth records asking for a mark through the API, known before the run: line outages of HJ 212
    plants (their units cannot mark them). Only those plants' lines are simulated (seconds); the run's own ground
    truth is compared with them afterwards."""
    plants = [p for p in scenario.plants if p.protocol == "hj212" and p.outages]
    if not plants:
        return []
    only = scenario.model_copy(update={"plants": plants, **{k: getattr(scenario, k).model_copy(update={"count": 0})
                                                           for k in ("sweepers", "stations", "sorting_points", "trucks")}})
    path = folder / "planned-marks.jsonl"
    for _ in generate(only, seed=seed, start=start, duration_s=86_400.0 + 600, faults=[], city=CITY,
                      ground_truth_path=path):
        pass
    return [r for r in read_ground_truth(path) if "mark_via_api" in r["expected_effect"]]


def enter_marks(url: str, records: list[dict[str, Any]]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        for record in records:
            mark = record["expected_effect"]["mark_via_api"]
            add_mark(conn, device_id=record["device_id"], mark=mark["mark"],
                     starts_at=datetime.fromisoformat(mark["starts_at"]),
                     ends_at=datetime.fromisoformat(mark["ends_at"]), reason=mark["reason"], source="api",
                     created_by="shift supervisor (bench)")
    return len(records)


# --- the chain -------------------------------------------------------------------------------------------------------


class Evaluation:
    """The scheduled processor's pass and an evaluator pass, in a loop while the day streams in."""

    def __init__(self, url: str, settings: Settings, now: datetime) -> None:
        self.url, self.settings, self.now = url, settings, now
        self.rules = load_files(default_rule_files())
        self.stop = threading.Event()
        self.passes = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            with psycopg.connect(self.url) as conn, psycopg.connect(self.url, autocommit=True) as processor:
                evaluator = Evaluator(conn, self.rules, CONFIG)
                while not self.stop.wait(PASS_PAUSE_S):
                    run_pass(processor, self.settings, now=self.now, retention=False)
                    evaluator.run_pass(self.now)
                    self.passes += 1
        except BaseException as exc:  # reported by finish(): a bench that hides a crash measures nothing
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(300)
        if self.error is not None:
            raise self.error
        time.sleep(CONFIG.write_margin.total_seconds())  # the last writes are surely seen by the processor
        with psycopg.connect(self.url) as conn, psycopg.connect(self.url, autocommit=True) as processor:
            # the last periods, then the passes that judge them
            run_pass(processor, self.settings, now=self.now, retention=False)
            for _ in range(2):
                Evaluator(conn, self.rules, CONFIG).run_pass(self.now)


def stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(one_row(conn.execute(
            "SELECT (SELECT count(*) FROM sweeper_telemetry) + (SELECT count(*) FROM station_telemetry)"
            " + (SELECT count(*) FROM bin_status) + (SELECT count(*) FROM bin_deposits)"
            " + (SELECT count(*) FROM camera_detections) + (SELECT count(*) FROM cems_readings)"
            " + (SELECT count(*) FROM truck_telemetry) + (SELECT count(*) FROM truck_events)"
            " + (SELECT count(*) FROM weighbridge_tickets) + (SELECT count(*) FROM dead_letters)"))[0])


def collector_metrics(metrics_port: int) -> dict[str, float]:
    """The collector's Prometheus samples, summed over their labels (name → value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[1]
            out[name] = out.get(name, 0.0) + float(value)
    return out


def wait_stored(url: str, metrics_port: int, backlog: BrokerBacklog, published: int, timeout: float = 600) -> None:
    """Until every published message is stored. Exact when the collector took each message once and wrote them all;
    after a reconnect (the broker sends what was unacknowledged again, so the counts say nothing) until the broker
    holds nothing for it (every message acknowledged: stored or spooled), the spool is empty and the stored rows stop
    changing. A quiet spell alone is no proof: a collector starved of CPU, or reconnecting, stores nothing for a while
    and then the rest."""
    finished, deadline = time.monotonic(), time.monotonic() + timeout
    last, since = -1, finished
    while time.monotonic() < deadline:
        metrics = collector_metrics(metrics_port)
        taken, written = (int(metrics.get(name, 0.0)) for name in ("sanitel_messages_received_total",
                                                                    "sanitel_batch_size_sum"))
        if taken == written == published:  # each message taken once, and all in batches written: exact
            log(f"  stored: {stored(url):,} rows; the collector took and wrote the {published:,} messages once each")
            return
        if backlog.held(finished) == 0 and metrics.get("sanitel_spool_backlog_bytes", 0.0) == 0.0:
            now = stored(url)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= SETTLED_S:
                taken = int(metrics.get("sanitel_messages_received_total", 0.0))
                log(f"  stored: {now:,} rows; the collector took {taken:,} messages for {published:,} published"
                    + (" (some twice: it reconnected)" if taken > published else ""))
                return
        time.sleep(0.5)
    raise RuntimeError(f"the broker still held {backlog.held(finished)} messages for the collector after "
                       f"{timeout:.0f} s")


def wait_collector(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the collector reports its first heartbeat: connected to the broker and subscribed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited with {proc.returncode}")
        with psycopg.connect(url) as conn:
            if conn.execute("SELECT 1 FROM stage_heartbeats WHERE stage = 'collector'").fetchone():
                return
        time.sleep(0.2)
    raise RuntimeError("the collector did not connect")


def registry_refusals(url: str) -> dict[str, list[str]]:
    """Readings the registry refused (reason → devices), and devices the collector met unregistered."""
    with psycopg.connect(url) as conn:
        refused = conn.execute(
            "SELECT reason_code, array_agg(DISTINCT device_id) FROM dead_letters WHERE reason_code = ANY(%s)"
            " GROUP BY 1", (["not_behind_gateway", "auto_register_limited", "unknown_device", "kind_mismatch",
                             "hj212_no_password", "hj212_wrong_password"],)).fetchall()
        auto = conn.execute("SELECT array_agg(device_id ORDER BY device_id) FROM devices WHERE auto_registered"
                            ).fetchone()
    out = {str(reason): sorted(d for d in devices if d) for reason, devices in refused}
    if auto and auto[0]:
        out["auto_registered"] = list(auto[0])
    return out


def replay(url: str, now: datetime, truth: Path) -> Score:
    """The stored day judged again in one batch pass, every alert and evaluation state forgotten: what the streamed
    evaluation should equal (a difference points at incremental evaluation, not at the rules)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if one_row(conn.execute("SELECT to_regclass('incidents') IS NOT NULL"))[0]:
            conn.execute("DELETE FROM incidents")  # they group the alerts forgotten next
        conn.execute("DELETE FROM alerts; DELETE FROM alert_eval_state; DELETE FROM alert_watermarks")
        Evaluator(conn, load_files(default_rule_files()), CONFIG).run_pass(now)
    return score_database(url, truth)


def _env(url: str, broker: MosquittoServer, folder: Path, metrics_port: int) -> dict[str, str]:
    return os.environ | {"SANITEL_DATABASE_URL": url, "SANITEL_MQTT_URL": broker.url, "SANITEL_DATA_DIR": str(folder),
                         "SANITEL_CITY": CITY, "SANITEL_COLLECTOR_METRICS_PORT": str(metrics_port),
                         "SANITEL_COLLECTOR_CLIENT_ID": f"bench-truth-{free_port()}"}


def simulate(args: argparse.Namespace, seed: int, start: str, broker: MosquittoServer, truth: Path,
             env: dict[str, str]) -> tuple[int, int]:
    """``sanitel simulate`` as a user runs it; returns the messages it published and the readings in them."""
    command = [sys.executable, "-m", "sanitel.cli", "simulate", "--scenario", args.scenario_file, "--speed", "max",
               "--faults", "all", "--seed", str(seed), "--start", start, "--duration", DURATION, "--city", CITY,
               "--broker", broker.url, "--ground-truth", str(truth), "--engine", args.engine, "--rate", str(args.rate),
               "--quiet"]
    if args.scale != 1.0:
        command += ["--scale", str(args.scale)]
    log("  " + " ".join(["sanitel", *command[3:]]))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sanitel simulate failed ({done.returncode}): {done.stderr[-2000:]}")
    published = readings = 0
    for line in done.stdout.splitlines():
        log(f"    {line}")
        words = line.replace(",", "").replace("(", "").split()
        if words[:1] == ["messages"] and words[1].isdigit() and words[2].isdigit():  # messages N (M readings, …
            published, readings = int(words[1]), int(words[2])
    if not published:
        raise RuntimeError(f"no message count in sanitel simulate's summary: {done.stdout[-500:]}")
    return published, readings


def run_seed(args: argparse.Namespace, seed: int, scenario: Scenario) -> SeedResult:
    folder = Path(tempfile.mkdtemp(prefix=f"sanitel-bench-truth-{seed}-"))
    folder.chmod(0o755)  # the postgres user traverses it
    pg = PostgresServer(folder / "pg", free_port(), fsync=False)
    broker = MosquittoServer(folder / "mqtt", free_port())
    collector: subprocess.Popen[bytes] | None = None
    backlog: BrokerBacklog | None = None
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        pg.start()
        broker.start()
        backlog = BrokerBacklog(broker.port)
        url = pg.url
        apply_migrations(url)
        zone = ZoneInfo(scenario.timezone)
        day_start = datetime.fromisoformat(DAY).replace(tzinfo=zone)
        now = (day_start + timedelta(days=1)).astimezone(UTC) + timedelta(hours=2)  # the morning after the day
        devices = register(url, scenario, seed)
        planned = planned_marks(scenario, seed, day_start, folder)
        marks = enter_marks(url, planned)
        timings["setup"] = time.monotonic() - began
        log(f"  seed {seed}: {devices} devices registered, {marks} API mark(s) entered "
            f"({timings['setup']:.0f} s for servers, registry and marks)")
        metrics_port = free_port()
        env = _env(url, broker, folder, metrics_port)
        with open(folder / "collector.log", "wb") as collector_log:  # the child keeps its own descriptor
            # one process: the wait reads its metrics (received and written messages)
            collector = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "collector", "--workers", "1"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=collector_log)
        wait_collector(url, collector)
        evaluation = Evaluation(url, load_settings(database_url=url, mqtt_url=broker.url, data_dir=folder, city=CITY),
                                now)
        evaluation.thread.start()
        truth = folder / "truth.jsonl"
        mark = time.monotonic()
        published, readings = simulate(args, seed, day_start.isoformat(), broker, truth, env)
        timings["simulate"] = time.monotonic() - mark
        wait_stored(url, metrics_port, backlog, published)
        rows = stored(url)
        if rows < STORED_AT_LEAST * readings:  # the score of a day half stored says nothing about the rules
            log(f"  WARNING: {rows:,} rows stored for {readings:,} readings published")
        timings["ingest"] = time.monotonic() - mark
        evaluation.finish()
        timings["evaluate"] = time.monotonic() - mark - timings["ingest"]
        records = read_ground_truth(truth)
        if _api_marks(records) != _api_marks(planned):
            log("  WARNING: the run's ground truth asks for other API marks than were entered")
        result = SeedResult(seed, score_database(url, truth), published, registry_refusals(url), timings, marks,
                            evaluation.passes, readings=readings, rows=rows)
        timings["total"] = time.monotonic() - began
        if stored(url) != rows:
            raise RuntimeError("rows were still arriving after the last evaluation: the score is not final")
        if args.replay:
            mark = time.monotonic()
            result.replayed = replay(url, now, truth)
            timings["replay"] = time.monotonic() - mark
        return result
    finally:
        if args.keep:  # the ground truth and the collector's log, also of a seed that failed
            kept = Path(args.keep)
            kept.mkdir(parents=True, exist_ok=True)
            for name in ("truth.jsonl", "collector.log"):
                if (folder / name).exists():
                    shutil.copy(folder / name, kept / f"{args.scenario}-{seed}-{name}")
        if backlog is not None:
            backlog.close()
        if collector is not None:
            collector.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                collector.wait(30)
        broker.stop()
        pg.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scenario", default="district", help="a shipped scenario (default district)")
    parser.add_argument("--scale", type=float, default=1.0, help="fleet size factor, e.g. 0.01 for shenzhen")
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds, run one at a time")
    parser.add_argument("--fleet", choices=("all", "trucks"), default="all",
                        help="trucks: the truck pack's fleet only — trucks, the sorting points they serve, stations "
                             "with weighbridges; no sweepers, no plant (a fifth of the messages)")
    parser.add_argument("--engine", choices=("paho", "fast"), default="fast",
                        help="the simulator's publisher (default fast: the lean QoS 1 one, same messages)")
    parser.add_argument("--rate", type=int, default=DEFAULT_RATE,
                        help=f"the simulator's messages/s (default {DEFAULT_RATE}: what the collector keeps up with here)")
    parser.add_argument("--replay", action="store_true",
                        help="also judge each stored day again in one batch pass and score that (a check)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every seed's score as JSON")
    parser.add_argument("--keep", metavar="FOLDER", help="keep each seed's ground truth and collector log there")
    args = parser.parse_args()
    # a plain kill stops the run cleanly too: the servers and the collector are stopped, the temp folder removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.scenario_file = args.scenario if args.fleet == "all" else trucks_fleet(args.scenario)
    scenario = load_scenario(args.scenario_file)
    if args.scale != 1.0:
        scenario = scenario.scaled(args.scale)
    log(f"alert ground truth: {args.scenario} (scale {args.scale:g}, fleet {args.fleet}), seeds {seeds}, day {DAY}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    results: list[SeedResult] = []
    for seed in seeds:
        result = run_seed(args, seed, scenario)
        results.append(result)
        print(f"\n=== {args.scenario} seed {seed} ===\n{result.score.table()}\n", flush=True)
        if result.replayed is not None:
            print(f"--- seed {seed} replayed in one batch pass ---\n{result.replayed.table()}\n", flush=True)
        if result.refused:
            log(f"  registry refusals: {result.refused}")
        t = result.timings
        log(f"  seed {seed}: {result.messages:,} messages; ingest {t['ingest']:.0f} s, final passes "
            f"{t['evaluate']:.0f} s, {result.passes} passes while streaming, {t['total']:.0f} s in all")
    print(f"\n{'seed':>4} {'messages':>9} {'readings':>9} {'rows':>9} {'expected':>8} {'matched':>7} {'recall':>7} "
          f"{'false':>5} {'excluded':>8} {'late':>4} {'seconds':>7}")
    for r in results:
        total = r.score.total
        print(f"{r.seed:>4} {r.messages:>9,} {r.readings:>9,} {r.rows:>9,} {total.expected:>8} {total.matched:>7} "
              f"{100 * total.recall:>6.1f}% {total.false:>5} {total.excluded:>8} {len(r.score.late):>4} "
              f"{r.timings['total']:>7.0f}")
    if args.json:
        args.json.write_text(json.dumps({"scenario": args.scenario, "scale": args.scale, "fleet": args.fleet,
                                         "day": DAY, "seeds": {
            str(r.seed): {**r.score.as_json(), "messages": r.messages, "readings": r.readings, "rows": r.rows,
                          "timings_s": r.timings,
                          "registry_refusals": r.refused} for r in results}}, indent=2) + "\n")
    return 0 if all(r.score.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
