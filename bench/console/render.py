"""Console benchmark (issue 14, Must show 7): the alerts board with a city's worth of data, in headless Chromium.

Starts a private PostgreSQL+TimescaleDB in a temp folder, seeds it with ``bench/console/seed_city.py`` (1,500
sweepers with a last position each, 300 firing alerts), serves the API with the console (uvicorn, in this process)
and measures in Debian's Chromium (``/usr/bin/chromium``) at 1280×800:

- first render: from navigation start to the board drawn with every open alert (the page's own mark,
  ``#view[data-first-render-ms]``: loading the modules, ``/me``, ``/sites``, every page of ``/alerts``, the draw),
  with the key already in the tab's sessionStorage (a signed-in supervisor opening the console);  target < 1 s
- live update: from the commit of a new firing alert — the alert engine's own statements, an ``alerts`` row and
  ``alerts.history.record`` (history row + NOTIFY) — to its card on the board, through the SSE stream, without
  reload; measured by this process (commit → Playwright sees the element, so it includes the polling of
  ``wait_for_selector``, a few ms);  target < 200 ms
- the fleet page with 1,500 sweepers: navigation to the plot and table drawn (informative; no target).

It prints figures (median and worst of ``--runs``); it is not a timed test. Put them in docs/benchmarks.md.

    .venv/bin/python bench/console/render.py [--runs 10] [--updates 20] [--sweepers 1500] [--alerts 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from sanitel.alerts import history
from sanitel.alerts.lifecycle import ALERT_COLUMNS
from sanitel.api.app import create_app
from sanitel.api.auth import new_key
from sanitel.api.threaded import serve_in_thread
from sanitel.db import apply_migrations
from sanitel.servers import PostgresServer, free_port
from sanitel.settings import load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench.* from the repository, as bench/ingest does
from bench.console.seed_city import seed_city

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
FIRST_RENDER_TARGET_MS = 1000
LIVE_UPDATE_TARGET_MS = 200


@contextmanager
def private_database(work: Path) -> Iterator[str]:
    server = PostgresServer(work / "pg", free_port(), fsync=False)
    server.start()
    try:
        apply_migrations(server.url)
        yield server.url
    finally:
        server.stop(mode="immediate")


def serving(database_url: str, data_dir: Path) -> AbstractContextManager[str]:
    settings = load_settings(database_url=database_url, data_dir=data_dir, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    return serve_in_thread(create_app(settings))


def supervisor_key(database_url: str) -> str:
    key = new_key()
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, 'bench', 'supervisor', %s)",
                     (key.key_id, key.secret_hash))
    return key.token


def fire_new_alert(database_url: str, n: int) -> int:
    """A new firing alert as the engine opens one: a copy of a seeded alert under a new fingerprint, and its
    transition recorded and announced (history row + NOTIFY with the whole alert, as ``alerts.lifecycle`` sends it)
    in the same transaction."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        row = conn.execute(
            f"""INSERT INTO alerts (rule_id, fingerprint, subject, device_id, site_id, kind, severity, state, labels,
                                   annotations, summary, value, threshold, peak_value, started_at, fired_at)
               SELECT rule_id, fingerprint || ':bench-' || %s::text, subject, device_id, site_id, kind, severity,
                      'firing', labels, annotations, summary, value, threshold, peak_value, now(), now()
               FROM alerts WHERE state = 'firing' ORDER BY alert_id LIMIT 1
               RETURNING {', '.join(ALERT_COLUMNS)}""",
            (n,)).fetchone()
        assert row is not None, "the seed has no firing alert"
        conn.execute(*history.record(row, None, "firing"))
    return int(row["alert_id"])


def measure(url: str, token: str, database_url: str, runs: int, updates: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, list[float]] = {"cold_first_render_ms": [], "first_render_ms": [], "board_draw_ms": [],
                                       "live_update_ms": [], "fleet_ms": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        # the first load meets a cold API (its first scrypt verification of the key, cold database caches): told
        # apart from the loads after it, which are what a supervisor opening the console meets
        for run in range(runs + 1):
            context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            # signed in: the key is in the tab's sessionStorage before the page loads (as after a reload)
            context.add_init_script(f"sessionStorage.setItem('sanitel.apiKey', {token!r})")
            page = context.new_page()
            page.goto(f"{url}/#/alerts")
            view = page.wait_for_selector("#view[data-page=alerts][data-first-render-ms]", timeout=30_000)
            assert view is not None
            first_render = float(view.get_attribute("data-first-render-ms") or "nan")
            figures["cold_first_render_ms" if run == 0 else "first_render_ms"].append(first_render)
            figures["board_draw_ms"].append(float(view.get_attribute("data-draw-ms") or "nan"))
            timings = page.evaluate("""() => performance.getEntriesByType("resource")
                .filter((e) => /\\/(me|sites|alerts)(\\?|$)/.test(new URL(e.name).pathname + "?"))
                .map((e) => [new URL(e.name).pathname, Math.round(e.startTime), Math.round(e.duration)])""")
            for path, _start, duration in timings:
                figures.setdefault(f"GET {path} ms", []).append(float(duration))
            context.close()
        context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        context.add_init_script(f"sessionStorage.setItem('sanitel.apiKey', {token!r})")
        page = context.new_page()
        page.goto(f"{url}/#/alerts")
        page.wait_for_selector(".stream[data-stream=live]", timeout=30_000)
        page.wait_for_selector("#view[data-ready]")
        for n in range(updates):
            started = time.perf_counter()
            alert_id = fire_new_alert(database_url, n)
            page.wait_for_selector(f"[data-alert-id='{alert_id}']", timeout=10_000)
            figures["live_update_ms"].append((time.perf_counter() - started) * 1000)
        for _ in range(runs):
            page.goto(f"{url}/#/alerts")
            page.wait_for_selector("#view[data-page=alerts][data-ready]")
            started = time.perf_counter()
            page.click("nav.pages a[data-page=fleet]")
            page.wait_for_selector("#view[data-page=fleet][data-ready]", timeout=30_000)
            figures["fleet_ms"].append((time.perf_counter() - started) * 1000)
        context.close()
        browser.close()
    return figures


def report(figures: dict[str, list[float]], args: argparse.Namespace) -> None:
    print(f"console benchmark: {args.sweepers} sweepers, {args.alerts} firing alerts; {platform.processor() or ''}"
          f" {os.cpu_count()} cores, Chromium headless 1280x800")
    targets: dict[str, Any] = {"first_render_ms": FIRST_RENDER_TARGET_MS, "live_update_ms": LIVE_UPDATE_TARGET_MS}
    for name, values in figures.items():
        target = targets.get(name)
        verdict = "" if target is None else f"  target < {target} ms: {'met' if max(values) < target else 'NOT met'}"
        print(f"  {name:16s} median {statistics.median(values):7.1f} ms  worst {max(values):7.1f} ms"
              f"  (n={len(values)}){verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="page loads measured (default 10)")
    parser.add_argument("--updates", type=int, default=20, help="live updates measured (default 20)")
    parser.add_argument("--sweepers", type=int, default=1500)
    parser.add_argument("--alerts", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sanitel-console-bench-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # PostgreSQL runs as postgres when this runs as root: it must reach its folder
        with private_database(work) as database_url:
            seed_city(database_url, now=datetime.now(UTC), sweepers=args.sweepers, firing_alerts=args.alerts)
            token = supervisor_key(database_url)
            with serving(database_url, work / "data") as url:
                report(measure(url, token, database_url, args.runs, args.updates), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
