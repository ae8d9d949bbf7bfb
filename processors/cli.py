"""``sanitel maintain``: the scheduled processor (rollups, CEMS averages, retention)."""

from __future__ import annotations

import argparse
import json
import signal
import threading

import psycopg

from sanitel.db import require_current_schema
from sanitel.logs import setup_logging
from sanitel.settings import load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("maintain", help="scheduled processor: 5-minute rollups, CEMS averages, retention")
    p.add_argument("--once", action="store_true", help="one pass, print what it did, exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanitel.processors.maintenance import run_forever, run_pass

    settings = load_settings()
    setup_logging()
    require_current_schema(settings.database_url_for("processor"))
    if args.once:
        with psycopg.connect(settings.database_url_for("processor"), autocommit=True) as conn:
            result = run_pass(conn, settings)
        print(json.dumps({"ran": result.ran, "rollup_buckets": result.rollup_buckets,
                          "cems_watermark": result.cems_watermark.isoformat() if result.cems_watermark else None,
                          "dropped": result.dropped}))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(settings, stop)
    return 0
