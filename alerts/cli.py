"""``sanitel evaluator`` (run the alert engine until SIGTERM/SIGINT), ``sanitel rules validate|list`` and
``sanitel webhooks list|add|remove|rotate``. A webhook's signing secret is printed once, when it is made."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanitel.errors import ConfigError

if TYPE_CHECKING:
    from sanitel.alerts.rules import RuleModel


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluator", help="evaluate alert rules and send notifications")
    p.add_argument("--once", action="store_true", help="one pass, deliver its MQTT notifications, exit")
    p.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="also POST notifications to this URL (repeatable; stored in alert_webhooks as cli-<hash>, "
                        "its signing secret printed once; remove it with 'sanitel webhooks remove')")
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
    ls.add_argument("--kind", help="only rules of this kind (threshold, window, rate, event_count, offline, builtin)")
    ls.set_defaults(func=list_rules)

    hooks = sub.add_parser("webhooks", help="list, add, remove webhooks (signed alert notifications over HTTP)")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="SUBCOMMAND")
    hl = hooks_sub.add_parser("list", help="the webhooks, with their pending and failed deliveries")
    hl.set_defaults(func=webhooks_list)
    ha = hooks_sub.add_parser("add", help="add a webhook and print its signing secret (once)")
    ha.add_argument("url", help="http:// or https:// URL of the receiver (redirects are not followed)")
    ha.add_argument("--id", dest="webhook_id", help="webhook id (default: derived from the URL)")
    ha.add_argument("--match", action="append", default=[], metavar="LABEL=VALUE",
                    help="only alerts whose labels match: label=value, label!=value, label=~regex, label!~regex "
                         "(RE2, whole value); repeatable, all must match")
    ha.add_argument("--group-by", action="append", metavar="LABEL",
                    help="labels that group notifications into one POST (repeatable; default rule_id, site_id)")
    ha.add_argument("--no-resolved", action="store_true", help="do not send resolved notifications")
    ha.add_argument("--max-attempts", type=int, default=10, help="attempts per notification (default 10)")
    ha.set_defaults(func=webhooks_add)
    hr = hooks_sub.add_parser("remove", help="remove a webhook and its queued deliveries")
    hr.add_argument("webhook_id", metavar="ID")
    hr.set_defaults(func=webhooks_remove)
    ht = hooks_sub.add_parser("rotate", help="give a webhook a new signing secret and print it (once)")
    ht.add_argument("webhook_id", metavar="ID")
    ht.set_defaults(func=webhooks_rotate)


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
    for webhook_id, secret in service.created_webhooks.items():
        _show_secret(webhook_id, secret, file=sys.stderr)
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
    from sanitel.alerts.rules import CheckRule, EventCountRule, Lookup, OfflineRule, RateRule, WindowRule
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
    if isinstance(rule, CheckRule):
        return f"{rule.check} {limit}"
    bit = f" bit {rule.bit}" if rule.bit is not None else ""
    return f"{getattr(rule, 'field', '?')}{bit} {getattr(rule, 'op', '?')} {limit}"


def _short(origin: str) -> str:
    return Path(origin).name if "/" in origin else origin


# --- webhooks ------------------------------------------------------------------------------------------------

_MATCH = re.compile(r"^([^=!~]+)(=~|!~|!=|=)(.*)$", re.S)


def parse_match(expressions: list[str]) -> list[dict[str, str]]:
    """``--match`` expressions → matchers; ConfigError names the option."""
    out = []
    for i, text in enumerate(expressions):
        found = _MATCH.match(text)
        if found is None:
            raise ConfigError(f"--match {text!r} (matchers.{i}): write label=value, label!=value, label=~regex or "
                              "label!~regex")
        out.append({"label": found.group(1).strip(), "op": found.group(2), "value": found.group(3)})
    return out


def _show_secret(webhook_id: str, secret: str, *, file: Any = None) -> None:
    print(f"webhook {webhook_id}: signing secret {secret}", file=file)
    print("# shown once: give it to the receiver, which checks X-Sanitel-Signature with it "
          "(alerts/README.md, 'Webhook signatures')", file=file)


def _webhooks_url() -> str:
    from sanitel.settings import load_settings

    return load_settings().database_url_for("api")  # webhooks are managed as through the API


def webhooks_list(args: argparse.Namespace) -> int:
    from sanitel.alerts.notify.outbox import list_webhooks
    from sanitel.db import connect
    from sanitel.urls import redact_url

    with connect(_webhooks_url()) as conn:
        rows = list_webhooks(conn)
    header = ("ID", "URL", "MATCHERS", "ENABLED", "PENDING", "FAILED")
    table = [(r["webhook_id"], redact_url(r["url"]),
              ", ".join(f"{m['label']}{m.get('op', '=')}{m['value']}" for m in r["matchers"]) or "(all)",
              "yes" if r["enabled"] else "no", str(r["pending"]), str(r["failed"])) for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def webhooks_add(args: argparse.Namespace) -> int:
    from sanitel.alerts.notify.outbox import DEFAULT_GROUP_BY, WebhookError, create_webhook
    from sanitel.alerts.service import cli_webhook_id
    from sanitel.db import connect

    webhook_id = args.webhook_id or cli_webhook_id(args.url)
    matchers = parse_match(args.match)
    with connect(_webhooks_url()) as conn:
        try:
            secret = create_webhook(conn, webhook_id, args.url, matchers=matchers,
                                    group_by=args.group_by or DEFAULT_GROUP_BY, send_resolved=not args.no_resolved,
                                    max_attempts=args.max_attempts)
        except WebhookError as exc:
            raise ConfigError(f"{_option(exc.field)}: {exc}") from None
        conn.commit()
    if secret is None:
        raise ConfigError(f"webhook {webhook_id!r} already exists — fix: 'sanitel webhooks remove {webhook_id}' "
                          "first, or choose another --id")
    _show_secret(webhook_id, secret)
    return 0


def _option(field: str) -> str:
    """The command-line option a WebhookError's field came from."""
    head, _, rest = field.partition(".")
    option = {"webhook_id": "--id", "url": "URL", "matchers": "--match", "group_by": "--group-by",
              "max_attempts": "--max-attempts"}.get(head, head)
    return f"{option} ({field})" if rest else option


def webhooks_remove(args: argparse.Namespace) -> int:
    from sanitel.alerts.notify.outbox import delete_webhook
    from sanitel.db import connect

    with connect(_webhooks_url()) as conn:
        removed = delete_webhook(conn, args.webhook_id)
        conn.commit()
    if not removed:
        raise ConfigError(f"no webhook {args.webhook_id!r} — 'sanitel webhooks list' shows them")
    print(f"webhook {args.webhook_id} removed, with its queued deliveries")
    return 0


def webhooks_rotate(args: argparse.Namespace) -> int:
    from sanitel.alerts.notify.outbox import rotate_secret
    from sanitel.db import connect

    with connect(_webhooks_url()) as conn:
        secret = rotate_secret(conn, args.webhook_id)
        conn.commit()
    if secret is None:
        raise ConfigError(f"no webhook {args.webhook_id!r} — 'sanitel webhooks list' shows them")
    _show_secret(args.webhook_id, secret)
    return 0
