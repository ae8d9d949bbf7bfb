"""Simulator load benchmark: how many messages/s one simulator process publishes at QoS 1.

Starts its own Mosquitto on a free port (data under a temp dir), runs a scenario as fast as possible
(``speed=0``) for a wall-clock budget, waits for every PUBACK, and prints the sustained rate of
acknowledged messages. Nothing subscribes: this measures the simulator and the broker's ingest, which
is what a collector benchmark needs from its load generator.

    .venv/bin/python bench/simulate/run.py                      # shenzhen, fast engine, 20 s
    .venv/bin/python bench/simulate/run.py --engine paho --seconds 10
    .venv/bin/python bench/simulate/run.py --scenario demo --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sanitel.servers import MosquittoServer, free_port
from sanitel.simulators.run import SimulationSummary, simulate
from sanitel.simulators.scenario import load_scenario

START = "2026-11-22T06:00:00+08:00"  # the morning peak: sweepers out, sorting slot, trucks arriving


def run_once(args: argparse.Namespace, broker_url: str) -> tuple[SimulationSummary, float | None]:
    """The run's summary, and (one process only) messages per CPU-second of the simulator process
    while publishing — what one process does with a core to itself, whatever else the machine runs."""
    scenario = load_scenario(args.scenario)
    if args.scale != 1.0:
        scenario = scenario.scaled(args.scale)
    budget: list[float] = []  # the clock starts with the first progress report: fleets are built by then
    cpu_at_first: list[tuple[float, int]] = []

    def stop_when_budget_spent(summary: SimulationSummary, sim_t: float) -> None:
        if not budget:
            budget.append(time.monotonic() + args.seconds)
            cpu_at_first.append((time.process_time(), summary.messages))
        elif time.monotonic() >= budget[0]:
            raise KeyboardInterrupt  # simulate() stops cleanly and still waits for the PUBACKs

    summary = simulate(scenario, broker_url=broker_url, city="shenzhen", seed=args.seed, duration_s=7 * 86_400.0,
                       speed=0.0, start=START, faults=[], engine=args.engine, progress=stop_when_budget_spent,
                       progress_every_s=0.5, workers=args.workers)
    per_cpu_s = None
    if args.workers == 1 and cpu_at_first:
        cpu0, messages0 = cpu_at_first[0]
        per_cpu_s = (summary.messages - messages0) / max(time.process_time() - cpu0, 1e-9)
    return summary, per_cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="shenzhen")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--engine", default="fast", choices=("fast", "paho"))
    parser.add_argument("--seconds", type=float, default=20.0, help="wall-clock publishing budget")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="simulator processes sharing the fleet")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="sanitel-bench-sim-"))
    data.chmod(0o755)
    broker = MosquittoServer(data / "mqtt", free_port())
    broker.start()
    try:
        summary, per_cpu_s = run_once(args, broker.url)
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)

    rate = summary.acked / summary.elapsed_s if summary.elapsed_s else 0.0
    print(f"command:   {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine:   {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print(f"scenario:  {summary.scenario} (scale {args.scale}), engine {args.engine}, {summary.devices:,} devices")
    print(f"published: {summary.messages:,} messages ({summary.readings:,} readings), "
          f"acknowledged {summary.acked:,}, errors {summary.errors}")
    print(f"elapsed:   {summary.elapsed_s:.1f}s (including waiting for the last PUBACK)")
    print(f"rate:      {rate:,.0f} acknowledged messages/s, {summary.readings / summary.elapsed_s:,.0f} readings/s")
    if per_cpu_s is not None:
        print(f"cpu:       {per_cpu_s:,.0f} messages per CPU-second of the simulator process")
    print(f"load:      {os.getloadavg()[0]:.2f} (1-minute load average at the end: other work on the machine)")
    return 0 if summary.acked == summary.messages else 1


if __name__ == "__main__":
    sys.exit(main())
