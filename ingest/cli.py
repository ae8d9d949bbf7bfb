"""``sanitel collector`` (broker → TimescaleDB) and ``sanitel hj212-listener`` (HJ 212 over TCP → broker):
each runs until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading

from sanitel.db import require_current_schema
from sanitel.errors import SanitelError
from sanitel.logs import setup_logging
from sanitel.settings import load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("collector", help="take readings from the broker into TimescaleDB")
    p.add_argument("--client-id", help="fixed MQTT client id (default: settings.collector_client_id)")
    p.add_argument("--share-group", help="MQTT 5 shared-subscription group, to run several collectors")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = none)")
    p.set_defaults(func=run)

    tcp = sub.add_parser("hj212-listener", help="TCP listener for HJ 212-2017 data acquisition units "
                         "(limits: settings hj212_*)")
    tcp.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept DAUs)")
    tcp.add_argument("--port", type=int, default=9212)
    tcp.set_defaults(func=run_hj212_listener)


def run(args: argparse.Namespace) -> int:
    from sanitel.ingest.collector import Collector

    overrides = {k: v for k, v in {"collector_client_id": args.client_id, "collector_share_group": args.share_group,
                                    "collector_metrics_port": args.metrics_port}.items() if v is not None}
    settings = load_settings(**overrides)
    setup_logging()
    require_current_schema(settings.database_url_for("ingest"))
    collector = Collector(settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    collector.start()
    done.wait()
    collector.stop()
    return 0


def run_hj212_listener(args: argparse.Namespace) -> int:
    from sanitel.ingest.hj212_tcp import run_listener

    settings = load_settings()
    setup_logging()
    # the listener reads the device registry (HJ 212 passwords) with the ingest role, as the collector does
    require_current_schema(settings.database_url_for("ingest"))

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None  # main() runs as asyncio.run's task
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):  # SIGTERM/SIGINT: a clean stop
            await run_listener(settings, args.host, args.port)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise SanitelError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
