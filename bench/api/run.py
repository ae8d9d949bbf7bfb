"""API latency benchmark: prints figures (it is not a timed test).

Starts a private PostgreSQL+TimescaleDB in a temp folder, loads ≥ 10 M sweeper readings (1,500 sweepers —
the reference city's fleet — × 7,000 readings 30 s apart, about 58 h each) plus a realistic alert table,
runs ``sanitel api`` in a subprocess and measures over HTTP, one request at a time on a keep-alive
connection:

- latest reading of one device       GET /devices/{id}/latest                                  (target p50 < 10 ms)
- 24 h of one device, 5-min buckets  GET /devices/{id}/history?metric=soc_pct&bucket=5m&…     (target p50 < 50 ms)
- firing alerts                      GET /alerts?state=firing                                  (target p50 < 20 ms)

then builds the 5-minute rollups (one pass of processors/maintenance.py) and measures the 24 h query again,
now served from ``sweeper_telemetry_5m``; then once more with the spans of device time written since the pass that
the request probes for late rows (``SPANS_SQL``).

    .venv/bin/python bench/api/run.py [--devices 1500] [--readings 7000] [--requests 1000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg

from sanitel.api.auth import new_key
from sanitel.db import apply_migrations, one_row
from sanitel.servers import PostgresServer, free_port

INTERVAL_S = 30
DEVICES_PER_BATCH = 50
END = datetime(2024, 5, 3, tzinfo=UTC)  # the newest reading; fixed so runs are comparable

SITES_SQL = """
INSERT INTO sites (site_id, kind, name, parent_id)
SELECT 'district-' || d, 'district', 'District ' || d, NULL FROM generate_series(1, 10) d;
INSERT INTO sites (site_id, kind, name, parent_id)
SELECT 'depot-' || d, 'depot', 'Depot ' || d, 'district-' || d FROM generate_series(1, 10) d;
INSERT INTO devices (device_id, kind, site_id, name)
SELECT format('SW-%%s', lpad(i::text, 5, '0')), 'sweeper', 'depot-' || (i %% 10 + 1), 'Sweeper ' || i
FROM generate_series(1, %(devices)s) i;
"""

# One statement per batch of devices; values vary smoothly so the rows look like telemetry.
READINGS_SQL = """
INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, lat, lon, speed_kmh, heading_deg, odometer_km,
    soc_pct, pack_voltage_v, pack_current_a, battery_temp_max_c, battery_temp_min_c, motor_temp_c, work_mode,
    brush_on, water_tank_pct, hopper_fill_pct, swept_distance_km, work_hours_h, alarm_level)
SELECT format('SW-%%s', lpad(d::text, 5, '0')),
       %(end)s - make_interval(secs => (%(n)s - 1 - i) * %(step)s),
       i, %(end)s - make_interval(secs => (%(n)s - 1 - i) * %(step)s) + interval '1 second',
       22.5 + (d %% 100) / 1000.0 + sin(i / 50.0) / 500, 114.0 + (d / 100) / 1000.0 + cos(i / 50.0) / 500,
       (8 + 4 * sin(i / 7.0))::real, ((i * 7) %% 360)::real, 10000 + d + i * 0.05,
       (90 - (i %% 2880) / 40.0)::real, 540::real, -40::real, 31::real, 28::real, 55::real,
       CASE WHEN i %% 2880 < 1900 THEN 'sweep' ELSE 'transport' END, i %% 2880 < 1900,
       (80 - (i %% 300) / 5.0)::real, ((i %% 600) / 6.0)::real, d * 10 + i * 0.04, d + i / 120.0, 0
FROM generate_series(%(first)s, %(last)s) d, generate_series(0, %(n)s - 1) i
"""

ALERTS_SQL = """
INSERT INTO device_last_seen (device_id, last_ts, last_seq, last_received)
SELECT device_id, %(end)s, %(n)s - 1, %(end)s FROM devices;
-- a year of history: resolved alerts, then the open ones a supervisor looks at
INSERT INTO alerts (rule_id, fingerprint, device_id, site_id, kind, severity, state, summary, value, threshold,
                    started_at, fired_at, resolved_at)
SELECT 'sweeper.low_soc', 'sweeper.low_soc:SW-' || i, format('SW-%%s', lpad((i %% %(devices)s + 1)::text, 5, '0')),
       'depot-' || (i %% 10 + 1), 'sweeper', (ARRAY['critical', 'major', 'minor', 'warning'])[i %% 4 + 1],
       'resolved', 'SOC low', 9, 10, %(end)s - make_interval(mins => i), %(end)s - make_interval(mins => i),
       %(end)s - make_interval(mins => i) + interval '20 minutes'
FROM generate_series(1, %(resolved)s) i;
INSERT INTO alerts (rule_id, fingerprint, device_id, site_id, kind, severity, state, summary, value, threshold,
                    started_at, fired_at)
SELECT 'sweeper.battery_temp', 'sweeper.battery_temp:' || d.device_id, d.device_id, d.site_id, 'sweeper',
       (ARRAY['critical', 'major', 'minor', 'warning'])[n %% 4 + 1], CASE WHEN n %% 5 = 0 THEN 'pending' ELSE 'firing' END,
       'battery hot', 61, 55, %(end)s - make_interval(mins => n::int), %(end)s - make_interval(mins => n::int)
FROM (SELECT device_id, site_id, row_number() OVER (ORDER BY device_id) AS n FROM devices) d
WHERE n <= %(open)s;
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def start_database(folder: Path) -> PostgresServer:
    server = PostgresServer(folder / "pg", free_port(), fsync=False)
    server.init()
    with open(server.data_dir / "postgresql.conf", "a") as fh:
        # loading 10 M rows: bigger WAL between checkpoints, less checkpoint churn
        fh.write("max_wal_size = 8GB\ncheckpoint_timeout = 30min\nmaintenance_work_mem = 512MB\n")
    server.start()
    apply_migrations(server.url)
    return server


def load(url: str, devices: int, readings: int, resolved_alerts: int, open_alerts: int) -> int:
    params = {"devices": devices, "n": readings, "step": INTERVAL_S, "end": END, "resolved": resolved_alerts,
              "open": open_alerts}
    with psycopg.connect(url, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(SITES_SQL, params)
        started = time.monotonic()
        for first in range(1, devices + 1, DEVICES_PER_BATCH):
            last = min(devices, first + DEVICES_PER_BATCH - 1)
            conn.execute(READINGS_SQL, params | {"first": first, "last": last})
            done = last * readings
            rate = done / (time.monotonic() - started)
            log(f"  {done / 1e6:5.2f} M readings loaded ({rate / 1e3:.0f} k rows/s)")
        conn.execute(ALERTS_SQL, params)
        conn.execute("VACUUM ANALYZE")
        return int(one_row(conn.execute("SELECT count(*) FROM sweeper_telemetry"))[0])


def build_rollups(url: str) -> None:
    """One pass of the project's scheduled processor, as if a few minutes from now (rows just loaded
    are otherwise still inside its commit slack)."""
    from sanitel.processors.maintenance import run_pass
    from sanitel.settings import load_settings

    with psycopg.connect(url, autocommit=True) as conn:
        run_pass(conn, load_settings(database_url=url), now=datetime.now(UTC) + timedelta(minutes=3),
                 retention=False)


# What a rollup request probes for late rows (migration 0087) one interval after a pass: the spans of the live
# writes since its watermark (a transaction every 25 ms for 60 s: two collector lanes at the 50 ms flush timer, each a
# 50 ms slice of device time at the watermark, outside the request) and one back-fill that another device wrote to two
# hours of the requested day (a probe of each requested device's 240 rows there, none of them late).
SPANS_SQL = (
    """INSERT INTO stored_spans (table_name, stored_at, spans)
       SELECT 'sweeper_telemetry', w.watermark + i * interval '25 ms',
              tstzmultirange(tstzrange(w.watermark + i * interval '25 ms' - interval '50 ms',
                                       w.watermark + i * interval '25 ms', '[]'))
       FROM maintenance_watermarks w, generate_series(1, 2400) i WHERE w.name = 'rollup:sweeper_telemetry'""",
    """INSERT INTO stored_spans (table_name, stored_at, spans)
       SELECT 'sweeper_telemetry', w.watermark + interval '1 second',
              tstzmultirange(tstzrange(%(end)s::timestamptz - interval '10 hours',
                                       %(end)s::timestamptz - interval '8 hours', '[]'))
       FROM maintenance_watermarks w WHERE w.name = 'rollup:sweeper_telemetry'""",
)


def add_spans_since_watermark(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in SPANS_SQL:
            conn.execute(statement, {"end": END})
        conn.execute("ANALYZE stored_spans")


def mint_key(url: str) -> str:
    key = new_key()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, 'bench', 'viewer', %s)",
                     (key.key_id, key.secret_hash))
    return key.token


def start_api(url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"SANITEL_DATABASE_URL": url, "SANITEL_DATA_DIR": str(folder),
                        "SANITEL_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "api", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code in (200, 503):
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start")


def measure(http: httpx.Client, make_path: Callable[[], str], requests: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        http.get(make_path()).raise_for_status()
    timings = []
    for _ in range(requests):
        path = make_path()
        started = time.perf_counter()
        response = http.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--readings", type=int, default=7000, help="per device, 30 s apart")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per query")
    parser.add_argument("--resolved-alerts", type=int, default=200_000)
    parser.add_argument("--open-alerts", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the database folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="sanitel-bench-api-", dir="/var/tmp"))
    folder.chmod(0o755)  # the postgres user must traverse it
    server = start_database(folder)
    proc = None
    try:
        log(f"loading {args.devices * args.readings / 1e6:.1f} M sweeper readings into {server.url}")
        started = time.monotonic()
        rows = load(server.url, args.devices, args.readings, args.resolved_alerts, args.open_alerts)
        load_s = time.monotonic() - started
        log(f"loaded {rows:,} rows in {load_s:.0f} s")
        token = mint_key(server.url)
        proc, base = start_api(server.url, folder)
        ids = [f"SW-{i:05d}" for i in range(1, args.devices + 1)]
        day = (END - timedelta(hours=24)).isoformat().replace("+00:00", "Z")
        to = (END + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        queries: dict[str, tuple[Callable[[], str], float]] = {
            "latest reading (1 device)": (lambda: f"/devices/{random.choice(ids)}/latest", 10),
            "24 h, 5-min buckets (1 device)": (
                lambda: f"/devices/{random.choice(ids)}/history?metric=soc_pct&bucket=5m&from={day}&to={to}", 50),
            "firing alerts (first page of 50)": (lambda: "/alerts?state=firing", 20),
        }
        history = queries["24 h, 5-min buckets (1 device)"]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            results = {name: measure(http, make, args.requests) for name, (make, _) in queries.items()}
            log("building the 5-minute rollups (one pass of the scheduled processor)")
            started = time.monotonic()
            build_rollups(server.url)
            log(f"rollups built in {time.monotonic() - started:.0f} s")
            source = http.get(history[0]()).json()["source"]
            assert source == "sweeper_telemetry_5m", source
            name = "24 h, 5-min buckets, from rollup"
            results[name] = measure(http, history[0], args.requests)
            queries[name] = history
            add_spans_since_watermark(server.url)
            name = "24 h from rollup, spans to probe"
            results[name] = measure(http, history[0], args.requests)
            queries[name] = history
        report(args, rows, load_s, results, {name: target for name, (_, target) in queries.items()})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        server.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def report(args: argparse.Namespace, rows: int, load_s: float, results: dict[str, list[float]],
           targets: dict[str, float]) -> None:
    print()
    print(f"machine: {platform.machine()}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}")
    print(f"data: {rows:,} sweeper readings ({args.devices} devices x {args.readings}, {INTERVAL_S} s apart), "
          f"{args.resolved_alerts:,} resolved + {args.open_alerts} open alerts; loaded in {load_s:.0f} s")
    print(f"method: {args.requests} sequential requests per query over HTTP (keep-alive), after 50 warm-up; "
          f"load average at the end {os.getloadavg()[0]:.2f} (other work on the machine skews the figures)\n")
    print(f"| {'query':<34} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} | {'mean ms':>7} | target p50 |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|------------|")
    for name, timings in results.items():
        p50 = percentile(timings, 50)
        verdict = "met" if p50 < targets[name] else "MISSED"
        print(f"| {name:<34} | {p50:7.2f} | {percentile(timings, 90):7.2f} | {percentile(timings, 99):7.2f} | "
              f"{statistics.fmean(timings):7.2f} | < {targets[name]:.0f} ms {verdict} |")


if __name__ == "__main__":
    main()
