"""``sanitel collector`` (broker → TimescaleDB) and ``sanitel hj212-listener`` (HJ 212 over TCP → broker):
each runs until SIGTERM/SIGINT. ``sanitel collector --workers N`` (default: one per core) runs N collector
processes on one shared subscription under a supervisor (``ingest/workers.py``); ``--workers 1`` is one collector
in this process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import threading

from sanitel.db import require_current_schema
from sanitel.errors import SanitelError
from sanitel.logs import setup_logging
from sanitel.settings import Settings, load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("collector", help="take readings from the broker into TimescaleDB")
    p.add_argument("--client-id", help="fixed MQTT client id (default: settings.collector_client_id)")
    p.add_argument("--share-group", help="MQTT 5 shared-subscription group, to run several collectors")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = none); workers 2…N of --workers N serve on the "
                   "next ports up, skipping the other services' ports (the evaluator's 9109)")
    p.add_argument("--workers", type=_positive, default=None,
                   help="collector processes on one MQTT 5 shared subscription (default: the number of cores, "
                   f"{os.cpu_count() or 1} here; 1 = a single collector in this process, no shared subscription "
                   "unless --share-group is given)")
    p.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)  # a worker stops when this process is gone
    p.set_defaults(func=run)

    tcp = sub.add_parser("hj212-listener", help="TCP listener for HJ 212-2017 data acquisition units "
                         "(limits: settings hj212_*)")
    tcp.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to accept DAUs)")
    tcp.add_argument("--port", type=int, default=9212)
    tcp.set_defaults(func=run_hj212_listener)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"collector_client_id": args.client_id, "collector_share_group": args.share_group,
                                    "collector_metrics_port": args.metrics_port}.items() if v is not None}
    settings = load_settings(**overrides)
    setup_logging()
    if args.supervisor_pid is None:
        # checked once, by the supervisor: a worker it restarts while the database is down must start and spool,
        # not die young until the supervisor gives up
        require_current_schema(settings.database_url_for("ingest"))
    workers = args.workers
    if workers is None:
        from sanitel.ingest.workers import default_workers
        workers = default_workers()
    if workers == 1:
        return _run_one(settings, args.supervisor_pid)
    return _run_supervisor(settings, workers)


def _run_one(settings: Settings, supervisor_pid: int | None) -> int:
    from sanitel.ingest.collector import Collector
    from sanitel.ingest.cyclic_gc import collect_cycles_less_often

    collector = Collector(settings)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    collector.start()
    collect_cycles_less_often(settings)
    # a worker whose supervisor died (SIGKILL) stops too: the next supervisor's worker needs its client id
    while not done.wait(1.0):
        if supervisor_pid is not None and os.getppid() != supervisor_pid:
            break
    collector.stop()
    return 0


def _run_supervisor(settings: Settings, workers: int) -> int:
    from sanitel.ingest.workers import Supervisor, worker_specs

    supervisor = Supervisor(worker_specs(settings, workers))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    return supervisor.run()


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
