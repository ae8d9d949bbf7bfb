"""``sanitel simulate``: run a scenario against a broker, with a live progress line and a summary.

    sanitel simulate --scenario demo                           # real time, until Ctrl-C
    sanitel simulate --scenario demo --speed 1440 --duration 24h  # a day in a minute
    sanitel simulate --scenario shenzhen --scale 0.01 --faults spike,silence --seed 7
    sanitel simulate --scenario shenzhen --speed max --engine fast --duration 2h   # load
    sanitel simulate --scenario demo --credentials data/simulator/credentials.json  # each device as itself
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sanitel.errors import SanitelError
from sanitel.settings import load_settings
from sanitel.simulators.clock import duration_s, parse_instant, rfc3339
from sanitel.simulators.faults import FAULT_KINDS
from sanitel.simulators.publisher import ENGINES
from sanitel.simulators.scenario import Scenario, available_scenarios, load_scenario
from sanitel.urls import redact_url

if TYPE_CHECKING:
    from sanitel.simulators.run import SimulationSummary

DEFAULT_SEED = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate", help="simulated devices publishing to a broker (tests, demos, load)",
        description="Run a scenario of simulated sweepers, transfer stations, sorting points, cameras and "
                    "CEMS units against an MQTT broker, publishing exactly the documented wire contract.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default="demo",
                        help=f"a shipped scenario ({', '.join(available_scenarios())}) or a YAML file (default demo)")
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios and exit")
    parser.add_argument("--broker", metavar="URL",
                        help="mqtt://user:pass@host:1883 or mqtts://…:8883 (default: SANITEL_MQTT_URL or the local stack)")
    parser.add_argument("--city", help="{city} segment of the topics (default: settings.city)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"same seed, same messages (default {DEFAULT_SEED})")
    parser.add_argument("--start", type=_instant, metavar="RFC3339",
                        help="simulated start time (default: now in real time; otherwise the run ends about now)")
    parser.add_argument("--duration", type=_duration_or_forever, metavar="DURATION",
                        help="simulated time to run, e.g. 30m, 24h, or 'forever' "
                             "(default: until Ctrl-C in real time, else the scenario's duration)")
    parser.add_argument("--speed", type=_speed, default=1.0, metavar="FACTOR",
                        help="time compression: 1 = real time (default), 1440 = a day per minute, 'max' = as fast "
                             "as possible")
    parser.add_argument("--rate", type=_positive_float, metavar="MSG/S", help="cap on messages per second")
    parser.add_argument("--faults", metavar="LIST",
                        help=f"comma-separated fault kinds to inject ({', '.join(FAULT_KINDS)}, or 'all'); "
                             "'none' for no faults (default: the scenario's own)")
    parser.add_argument("--ground-truth", type=Path, metavar="PATH",
                        help="where to write the ground truth (default: <data_dir>/simulator/ground-truth-"
                             "<scenario>-<seed>.jsonl)")
    parser.add_argument("--scale", type=_positive_float, default=1.0, metavar="FRACTION",
                        help="multiply fleet sizes, e.g. 0.01 for a hundredth of Shenzhen")
    parser.add_argument("--engine", choices=ENGINES, default="paho",
                        help="paho (default, full client) or fast (lean QoS 1 publisher for load runs)")
    parser.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                        help="split the fleet over N processes, each with its own connection (load runs on "
                             "machines with more cores; see simulators/README.md)")
    parser.add_argument("--credentials", type=Path, metavar="FILE",
                        help="JSON {\"devices\": {id: password}, \"gateways\": {id: password}} (mode 600): each "
                             "device and gateway publishes over its own connection as itself; the --broker URL "
                             "then gives only host, port and TLS (default: one connection for all, as --broker's "
                             "user)")
    parser.add_argument("--client-id", help="MQTT client id (default: sanitel-sim-<pid>-<random>; with --workers, "
                                            "suffixed -1, -2, …)")
    parser.add_argument("--once", action="store_true",
                        help="run just long enough for every device on a cadence to report once")
    parser.add_argument("--max-messages", type=_positive_int, metavar="N", help="stop after N messages")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.set_defaults(func=run_simulate)


# --- argument types: each error says what is accepted -----------------------------------------


def _duration_or_forever(text: str) -> float:
    if text.strip().lower() in ("forever", "inf", "none"):
        return math.inf
    try:
        value = duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero (or 'forever')")
    return value


def _speed(text: str) -> float:
    lowered = text.strip().lower()
    if lowered in ("max", "fastest"):
        return 0.0
    if lowered in ("realtime", "real-time", "1x"):
        return 1.0
    try:
        value = float(lowered.removesuffix("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a speed; use a factor such as 1, 60, 1440, or 'max'") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the factor must be above 0; use 'max' for as fast as possible")
    return value


def _instant(text: str) -> float:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# --- the command ---------------------------------------------------------------------------------


def run_simulate(args: argparse.Namespace) -> int:
    from sanitel.simulators.credentials import load_credentials  # here: every other sanitel command skips these
    from sanitel.simulators.run import default_start, simulate

    if args.list:
        _list_scenarios(sys.stdout)
        return 0
    settings = load_settings()
    scenario = load_scenario(args.scenario)
    if args.scale != 1.0:
        scenario = scenario.scaled(args.scale)
    duration = _effective_duration(args, scenario)
    start = args.start if args.start is not None else default_start(scenario, duration, args.speed)
    faults = None if args.faults is None else [] if args.faults.strip().lower() == "none" else args.faults
    truth = args.ground_truth or settings.data_dir / "simulator" / f"ground-truth-{scenario.name}-{args.seed}.jsonl"
    credentials = load_credentials(args.credentials) if args.credentials is not None else None
    # as each device (their own passwords), or as the simulator's service account that may publish as any device
    as_devices = settings.effective_mqtt_url if settings.mqtt_url else settings.local_broker_url()
    broker = args.broker or (as_devices if credentials is not None else settings.mqtt_url_for("simulator"))
    progress = None if args.quiet else ProgressLine(sys.stderr, args.speed)
    as_whom = f" as each device ({args.credentials})" if credentials is not None else ""
    print(f"simulating {scenario.name} ({sum(scenario.device_counts().values()):,} devices) → {redact_url(broker)}"
          f"{as_whom}, "
          f"seed {args.seed}, from {rfc3339(start)}, "
          f"{'real time' if args.speed == 1 else 'as fast as possible' if args.speed == 0 else f'×{args.speed:g}'}, "
          f"{'until Ctrl-C' if duration is None else f'{duration / 3600:g} h simulated'}", file=sys.stderr)
    summary = simulate(
        scenario, broker_url=broker, city=args.city or settings.city, seed=args.seed, duration_s=duration,
        speed=args.speed, rate=args.rate, faults=faults, ground_truth_path=truth, start=start,
        engine=args.engine, client_id=args.client_id, max_messages=args.max_messages,
        progress=progress.update if progress else None, workers=args.workers, credentials=credentials,
    )
    if progress:
        progress.finish()
    for line in summary.lines():
        print(line)
    if summary.acked < summary.messages:
        refused = f" (the broker refused {len(summary.refused)} sender(s), see above)" if summary.refused else ""
        raise SanitelError(f"{summary.messages - summary.acked:,} messages were not acknowledged by the broker"
                           f"{refused}")
    return 0


def _effective_duration(args: argparse.Namespace, scenario: Scenario) -> float | None:
    if args.once:
        return _once_duration(scenario, args)
    if args.duration is not None:
        return None if math.isinf(args.duration) else args.duration
    return None if args.speed == 1.0 else scenario.duration


def _once_duration(scenario: Scenario, args: argparse.Namespace) -> float:
    """Long enough for every device on a cadence to report once (the longest interval)."""
    intervals = [scenario.sweepers.parked_interval if scenario.sweepers.count else 0.0,
                 scenario.stations.interval if scenario.stations.count else 0.0,
                 scenario.sorting_points.status_interval if scenario.sorting_points.count else 0.0,
                 *(p.interval for p in scenario.plants)]
    if scenario.sorting_points.count and scenario.sorting_points.gateway_interval:
        intervals.append(scenario.sorting_points.status_interval + scenario.sorting_points.gateway_interval)
    return max(intervals, default=60.0)


def _list_scenarios(out: TextIO) -> None:
    for name in available_scenarios():
        scenario = load_scenario(name)
        counts = ", ".join(f"{k} {n:,}" for k, n in scenario.device_counts().items() if n)
        print(f"{name:10} {scenario.description}\n{'':10} {counts}; {len(scenario.faults)} faults", file=out)


class ProgressLine:
    """``sim 2026-11-22T07:13:20Z | 123,456 msgs | 30,120 msg/s | …`` — rewritten in place on a terminal,
    a line every 10 s otherwise (logs)."""

    def __init__(self, out: TextIO, speed: float) -> None:
        self.out = out
        self.tty = out.isatty()
        self.speed = speed
        self.last_wall = 0.0
        self.last_messages = 0
        self.last_print = 0.0
        self.width = 0

    def update(self, summary: SimulationSummary, sim_t: float) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last_print < 10.0:
            return
        if self.last_print:  # the rate since the previous line; the first line shows the run's average
            rate = (summary.messages - self.last_messages) / max(now - self.last_wall, 1e-6)
        else:
            rate = summary.rate
        self.last_wall, self.last_messages, self.last_print = now, summary.messages, now
        shown_t = sim_t if math.isfinite(sim_t) else summary.end
        when = rfc3339(shown_t)[:19] + "Z" if math.isfinite(shown_t) else "-"
        elapsed = time.strftime("%H:%M:%S", time.gmtime(summary.elapsed_s))
        line = (f"sim {when} | {summary.messages:,} msgs | {rate:,.0f} msg/s | {summary.devices:,} devices | "
                f"acked {summary.acked:,} | errors {summary.errors} | {elapsed}")
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.out.write("\n")
            self.out.flush()
