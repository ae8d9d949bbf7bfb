"""``sanitel evaluator`` (run the alert engine until SIGTERM/SIGINT) and ``sanitel rules validate|list``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sanitel.errors import ConfigError

if TYPE_CHECKING:
    from sanitel.alerts.rules import RuleModel


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluator", help="evaluate alert rules and send notifications")
    p.add_argument("--once", action="store_true", help="one pass, deliver its MQTT notifications, exit")
    p.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="also POST notifications to this URL (repeatable; stored in alert_webhooks)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = none; default: settings)")
    p.add_argument("--interval", type=float, help="seconds between passes (default: settings.evaluator_interval_s)")
    p.set_defaults(func=run_evaluator)

    rules = sub.add_parser("rules", help="validate or list alert rules")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    v = rules_sub.add_parser("validate", help="validate rule files (default: the shipped packs and rules_dir)")
    v.add_argument("files", nargs="*", type=Path, metavar="FILE")
    v.set_defaults(func=validate_rules)
    ls = rules_sub.add_parser("list", help="list the rules in force")
    ls.add_argument("--database", action="store_true", help="include rules stored in the database")
    ls.add_argument("--kind", help="only rules of this kind (threshold, window, rate, event_count, offline)")
    ls.set_defaults(func=list_rules)


def run_evaluator(args: argparse.Namespace) -> int:
    from sanitel.alerts.service import EvaluatorService
    from sanitel.db import require_current_schema
    from sanitel.logs import setup_logging
    from sanitel.settings import load_settings

    overrides = {"evaluator_interval_s": args.interval} if args.interval is not None else {}
    settings = load_settings(**overrides)
    setup_logging()
    require_current_schema(settings.database_url_for("evaluator"))
    service = EvaluatorService(settings, webhooks=args.webhook, metrics_port=args.metrics_port)
    if args.once:
        service.mqtt.wait_connected(5.0)
        report = service.run_once()
        service.close()
        return 0 if report is not None else 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    service.run(stop)
    return 0


def validate_rules(args: argparse.Namespace) -> int:
    from sanitel.alerts.rules import load_files, rule_files
    from sanitel.settings import load_settings

    files = args.files or rule_files(load_settings().rules_dir)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such rule file")
    ruleset = load_files(files)
    print(f"ok: {len(ruleset.rules)} rules in {len(files)} file(s)")
    return 0


def list_rules(args: argparse.Namespace) -> int:
    from sanitel.alerts.rules import load_rules
    from sanitel.settings import load_settings

    settings = load_settings()
    if args.database:
        from sanitel.db import connect

        with connect(settings.database_url_for("evaluator")) as conn:
            ruleset, problems = load_rules(settings.rules_dir, conn)
    else:
        ruleset, problems = load_rules(settings.rules_dir)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    rows = [(r.id, r.kind, r.severity, _what(r), "yes" if r.enabled else "no", _short(ruleset.origins[r.id]))
            for r in sorted(ruleset.rules.values(), key=lambda r: r.id) if args.kind in (None, r.kind)]
    header = ("ID", "KIND", "SEVERITY", "CONDITION", "ENABLED", "FROM")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _what(rule: RuleModel) -> str:
    from sanitel.alerts.rules import EventCountRule, Lookup, OfflineRule, RateRule, WindowRule
    from sanitel.durations import format_duration

    if isinstance(rule, OfflineRule):
        return f"no data for {format_duration(rule.timeout) if rule.timeout else 'the device timeout'}"
    threshold = getattr(rule, "threshold", None)
    limit = f"by {threshold.param}" if isinstance(threshold, Lookup) else f"{threshold:g}"
    if isinstance(rule, EventCountRule):
        return f"count/{rule.window} per {rule.per} {rule.op} {limit}"
    if isinstance(rule, WindowRule):
        what = rule.where.get("pollutant", rule.field or "rows")
        return f"{rule.aggregate}({what})/{rule.window} {rule.op} {limit}"
    if isinstance(rule, RateRule):
        return f"d{rule.field}/{format_duration(rule.rate_per)} {rule.op} {limit}"
    bit = f" bit {rule.bit}" if getattr(rule, "bit", None) is not None else ""
    return f"{getattr(rule, 'field', '?')}{bit} {getattr(rule, 'op', '?')} {limit}"


def _short(origin: str) -> str:
    return Path(origin).name if "/" in origin else origin
