"""Screenshots of every page of the supervisor console, in Chinese and English, at 1280×800 and on a 390-px-wide
phone, into docs/console/ (issue 14, Must show 6 and 8).

The city is the demo scenario, living: a private PostgreSQL and Mosquitto (free ports, a scratch folder — never the
machine's 5432/1883), the scenario's sites and devices registered as ``sanitel run`` registers them, the last
``--hours`` of its simulated day (faults included, so the board has alerts) published through the broker and
stored by the collector, one pass of the scheduled processor (rollups, CEMS averages and judgements) and of the
alert evaluator with the shipped rules, then the API with the console and headless Chromium (/usr/bin/chromium).

    .venv/bin/python scripts/console_screenshots.py [--out docs/console] [--hours 24] [--seed 21] \
        [--pages clearance index]

Takes a few minutes (mostly the simulated day going through the broker). Runs on the wall clock on purpose: the
pages show "today" and "the last 24 h".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg

from sanitel.alerts.evaluator import Evaluator
from sanitel.alerts.incidents import load_incident_rules, maintain
from sanitel.alerts.rules import load_rules
from sanitel.alerts.service import config_from_settings
from sanitel.api.app import create_app
from sanitel.api.auth import new_key
from sanitel.api.threaded import serve_in_thread
from sanitel.db import apply_migrations
from sanitel.ingest.collector import Collector
from sanitel.processors import maintenance
from sanitel.servers import MosquittoServer, PostgresServer, free_port
from sanitel.settings import Settings, load_settings
from sanitel.simulators.publisher import open_publisher
from sanitel.simulators.run import generate
from sanitel.stack_cli import register_fleet

CHROMIUM = "/usr/bin/chromium"
PAGES = ("alerts", "fleet", "stations", "sorting", "incineration", "clearance", "index")
FILE_NAMES = {"index": "sanitation-index"}  # a page whose screenshot is named otherwise than its address
LANGS = ("zh-CN", "en")
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
STORED_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_status", "bin_deposits", "camera_detections",
                 "cems_readings", "truck_telemetry", "truck_events", "dead_letters")
MAX_SCREENS = 3  # a screenshot shows at most this many screen heights of a page
SETTLED_S = 3.0  # the collector has stored everything once the row counts hold still this long


@dataclass
class City:
    settings: Settings
    token: str  # a supervisor's API key
    timezone: str  # the city's (its first district's) zone


def report_views(timezone: str, now: datetime) -> dict[str, str]:
    """The report pages' views that the simulated hours fill: the city's local today (the clearance page opens on
    yesterday, which the last 24 h cover only in part) and its ISO week (the index page opens on the last whole
    week, before the simulated data)."""
    today = now.astimezone(ZoneInfo(timezone)).date()
    year, week, _ = today.isocalendar()
    return {"clearance": f"#/clearance?day={today}", "index": f"#/index?week={year}-W{week:02d}"}


def _log(message: str) -> None:
    print(f"[screenshots] {message}", file=sys.stderr, flush=True)


@contextmanager
def living_city(work: Path, *, hours: float, seed: int) -> Iterator[City]:
    with ExitStack() as stack:
        pg = PostgresServer(work / "pg", free_port(), fsync=False)
        pg.start()
        stack.callback(pg.stop, mode="immediate")
        apply_migrations(pg.url)
        broker = MosquittoServer(work / "mqtt", free_port())
        broker.start()
        stack.callback(broker.kill)
        settings = load_settings(database_url=pg.url, mqtt_url=broker.url, data_dir=work / "data",
                                 collector_metrics_port=0, collector_flush_ms=50, api_metrics_port=0)
        asyncio.run(_register(settings, seed))
        collector = Collector(settings)
        collector.start()
        stack.callback(collector.stop)
        if not collector.wait_connected(30):
            raise SystemExit("the collector did not connect to the private broker")
        now = datetime.now(UTC)
        _publish(broker.url, now - timedelta(hours=hours), hours, seed)
        _wait_stored(pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            _log("scheduled processor: rollups, CEMS averages, judgements")
            maintenance.run_pass(conn, settings, now=datetime.now(UTC))
            _log("alert evaluator: one pass with the shipped rules")
            rules, _ = load_rules(settings.rules_dir, conn)
            evaluated = datetime.now(UTC)
            Evaluator(conn, rules, config_from_settings(settings)).run_pass(evaluated)
            maintain(conn, evaluated, load_incident_rules(settings.rules_dir), rules)
            key = new_key()
            conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, %s, 'supervisor', %s)",
                         (key.key_id, "supervisor-demo", key.secret_hash))
            zone = conn.execute("SELECT timezone FROM sites WHERE kind = 'district' ORDER BY name LIMIT 1").fetchone()
        yield City(settings, key.token, zone[0] if zone else "UTC")


async def _register(settings: Settings, seed: int) -> None:
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await register_fleet(conn, "demo", city=settings.city, seed=seed)


def _publish(broker_url: str, start: datetime, hours: float, seed: int) -> None:
    _log(f"publishing the demo scenario's last {hours:g} h (faults included) through the broker")
    with open_publisher(broker_url, engine="paho", client_id="console-screenshots") as publisher:
        for topic, payload, _ in generate("demo", seed=seed, start=start, duration_s=hours * 3600, faults="all"):
            publisher.publish(topic, payload)
        publisher.flush(120)
        _log(f"published {publisher.stats.sent} messages")


def _wait_stored(url: str) -> None:
    counts: tuple[int, ...] = ()
    steady_since = time.monotonic()
    while time.monotonic() - steady_since < SETTLED_S:
        time.sleep(0.5)
        with psycopg.connect(url) as conn:
            now = tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                        for table in STORED_TABLES)
        if now != counts:
            counts, steady_since = now, time.monotonic()
    _log("stored: " + ", ".join(f"{t} {n}" for t, n in zip(STORED_TABLES, counts, strict=True)))


def shoot(url: str, token: str, out: Path, pages: Sequence[str] = PAGES,
          views: Mapping[str, str] | None = None) -> list[Path]:
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        for device, viewport in VIEWPORTS.items():
            for lang in LANGS:
                context = browser.new_context(viewport=viewport, locale=lang, device_scale_factor=1)  # type: ignore[arg-type]
                context.set_default_timeout(30_000)
                page = context.new_page()
                page.goto(url)
                page.select_option("#lang", lang)
                page.fill("#apikey", token)
                page.click("#signin button[type=submit]")
                page.wait_for_selector("nav.pages a[aria-current=page]")
                for name in pages:
                    view = (views or {}).get(name)
                    if view is None:
                        page.click(f"nav.pages a[data-page={name}]")
                    else:  # a view with its choices in the address
                        page.evaluate("view => { location.hash = view; }", view)
                    page.wait_for_selector(f"#view[data-page={name}][data-ready]")
                    if name == "alerts":
                        page.wait_for_selector(".stream[data-stream=live]")
                    # charts draw on the next animation frames
                    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                    path = out / f"{FILE_NAMES.get(name, name)}-{lang}-{device}.png"
                    # the whole page, up to a few screens: a long alert list or device table says no more below
                    height = min(int(page.evaluate("() => document.documentElement.scrollHeight")),
                                 MAX_SCREENS * viewport["height"])
                    page.screenshot(path=str(path), full_page=True,
                                    clip={"x": 0, "y": 0, "width": viewport["width"], "height": height})
                    written.append(path)
                    _log(f"wrote {path}")
                context.close()
        browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "console")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours up to now (default 24)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--pages", nargs="+", choices=PAGES, default=list(PAGES),
                        help="only these pages' screenshots (default: every page)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sanitel-screens-") as scratch:
        work = Path(scratch)
        work.chmod(0o755)  # run as root, PostgreSQL runs as postgres: it must reach its folder below this one
        with (living_city(work, hours=args.hours, seed=args.seed) as city,
              serve_in_thread(create_app(city.settings)) as url):
            shoot(url, city.token, args.out, args.pages, report_views(city.timezone, datetime.now(UTC)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
