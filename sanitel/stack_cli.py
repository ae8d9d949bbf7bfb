"""``sanitel stack up|down|status``, ``sanitel migrate`` and ``sanitel run`` (the whole system)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from sanitel.db import apply_migrations, connect, timescaledb_info
from sanitel.errors import SanitelError
from sanitel.settings import Settings, load_settings
from sanitel.stack import LocalStack
from sanitel.urls import redact_url


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stack = sub.add_parser("stack", help="the local PostgreSQL+TimescaleDB and Mosquitto")
    stack_sub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    stack_sub.add_parser("up", help="start them (and apply migrations); waits until healthy").set_defaults(func=up)
    stack_sub.add_parser("down", help="stop them cleanly").set_defaults(func=down)
    stack_sub.add_parser("status", help="what runs where, TimescaleDB version and license").set_defaults(func=status)
    sub.add_parser("migrate", help="apply database migrations (safe to run twice)").set_defaults(func=migrate)
    run_p = sub.add_parser("run", help="the whole system: stack, collector, alert evaluator, API, simulated fleet")
    run_p.add_argument("--scenario", default="demo", help="simulated fleet scenario (default: demo)")
    run_p.add_argument("--no-simulator", action="store_true", help="do not start a simulated fleet")
    run_p.set_defaults(func=run_all)


def up(args: argparse.Namespace) -> int:
    settings = load_settings()
    LocalStack(settings).up()
    applied = apply_migrations(settings.effective_database_url)
    print(f"database  {redact_url(settings.effective_database_url)}"
          + (" (local)" if settings.uses_local_database else ""))
    print(f"broker    {redact_url(settings.effective_mqtt_url)}" + (" (local)" if settings.uses_local_broker else ""))
    print(f"migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    return 0


def down(args: argparse.Namespace) -> int:
    LocalStack(load_settings()).down()
    print("stack stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    settings = load_settings()
    stack = LocalStack(settings)
    healthy = True
    for name, server, url in (("postgres", stack.postgres, settings.effective_database_url),
                              ("mosquitto", stack.mosquitto, settings.effective_mqtt_url)):
        if server is None:
            print(f"{name:<10} external  {redact_url(url)}")
        else:
            running = server.running()
            healthy &= running
            print(f"{name:<10} {'running' if running else 'stopped':<9} {redact_url(url)}")
    try:
        with connect(settings.effective_database_url) as conn:
            info = timescaledb_info(conn)
        print(f"timescaledb {info['version']} (license: {info['license']})")
    except SanitelError as exc:
        print(f"timescaledb unknown: {exc}")
        healthy = False
    return 0 if healthy else 1


def migrate(args: argparse.Namespace) -> int:
    applied = apply_migrations(load_settings().effective_database_url)
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


def _service_commands(settings: Settings, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    exe = [sys.executable, "-m", "sanitel.cli"]
    wanted = [("collector", [*exe, "collector"]), ("maintenance", [*exe, "maintain"]),
              ("evaluator", [*exe, "evaluator"]), ("api", [*exe, "api"])]
    if not args.no_simulator:
        wanted.append(("simulator", [*exe, "simulate", "--scenario", args.scenario, "--speed", "1"]))
    return wanted


def run_all(args: argparse.Namespace) -> int:
    """Everything in one terminal; Ctrl-C stops it all (children first, then the stack)."""
    settings = load_settings()
    stack = LocalStack(settings)
    stack.up()
    apply_migrations(settings.effective_database_url)
    print(f"[run] database {redact_url(settings.effective_database_url)}"
          f"  broker {redact_url(settings.effective_mqtt_url)}")
    print(f"[run] API http://{settings.api_host}:{settings.api_port}/docs — Ctrl-C stops everything")
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for name, cmd in _service_commands(settings, args):
            children.append((name, subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)))
            print(f"[run] started {name} (pid {children[-1][1].pid})")
        while not stop:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"[run] {name} exited with {proc.returncode}; stopping everything", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in children:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"[run] {name} did not stop in 30 s; killing it", file=sys.stderr)
                proc.kill()
        stack.down()
        print("[run] stopped")
    return 0
