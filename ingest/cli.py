"""``sanitel collector``: run one collector until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading

from sanitel.db import apply_migrations
from sanitel.logs import setup_logging
from sanitel.settings import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collector", help="take readings from the broker into TimescaleDB")
    p.add_argument("--client-id", help="fixed MQTT client id (default: settings.collector_client_id)")
    p.add_argument("--share-group", help="MQTT 5 shared-subscription group, to run several collectors")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanitel.ingest.collector import Collector

    overrides = {k: v for k, v in {"collector_client_id": args.client_id, "collector_share_group": args.share_group,
                                    "collector_metrics_port": args.metrics_port}.items() if v is not None}
    settings = load_settings(**overrides)
    setup_logging()
    apply_migrations(settings.effective_database_url)
    collector = Collector(settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    collector.start()
    done.wait()
    collector.stop()
    return 0
