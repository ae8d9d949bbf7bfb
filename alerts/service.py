"""The evaluator service: every ``evaluator_interval_s`` one pass (under a PostgreSQL advisory lock, so
any number of evaluators can run and only one evaluates at a time), right after it the incident step
(``incidents.py``: grouping, inhibition, one notification per incident; its rules from ``incidents.yaml``,
reloaded with the rule files), then the notifications go to MQTT and the webhook workers are woken.
Rules are reloaded when their files or the ``alert_rules``
table change. A rule that does not validate — at start-up or on a reload — is left out and quarantined
with an alert about it (``evaluator.py``), and so is a rule that fails while evaluated: the service
never stops for a bad rule (``sanitel run`` ends the whole stack when one of its children exits). A file
that cannot be read at all keeps the rules it had.

After each pass it ran, the service records its heartbeat (``stage_heartbeats``, stage ``evaluator``, instance
host:pid, on its own clock), and each pass raises ``stage_overdue`` for a collector or scheduled processor that
stopped reporting (``stage_overdue_factor`` × their intervals). Whether the evaluator itself runs, /health and the
API's ``sanitel_stage_lag_seconds{stage="evaluator"}`` say: no process can alert about its own silence.

Metrics (Prometheus, on ``evaluator_metrics_port``): ``sanitel_alerts{state,severity}`` open alerts,
``sanitel_alert_passes_total{result}``, ``sanitel_alert_pass_seconds``,
``sanitel_alert_transitions_total{event}``, ``sanitel_alert_notifications_total{sink,outcome}``,
``sanitel_alert_rules`` rules in force, ``sanitel_alert_rules_quarantined`` rules left out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig, PassReport, Quarantine
from sanitel.alerts.incidents import IncidentRules, load_incident_rules, maintain
from sanitel.alerts.notify.mqtt import MqttSink, deliver_pending
from sanitel.alerts.notify.outbox import upsert_webhook
from sanitel.alerts.notify.webhook import HttpLimits, RetryPolicy, WebhookDispatcher
from sanitel.alerts.rules import RuleSet, load_database_rules, load_files_tolerant, rule_files
from sanitel.alerts.subjects import RegistryCache
from sanitel.errors import ConfigError, SanitelError
from sanitel.heartbeats import process_instance, record_pass
from sanitel.schemas.topics import SEVERITIES
from sanitel.settings import Settings

log = logging.getLogger("sanitel.alerts")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.alerts = Gauge("sanitel_alerts", "open alerts", ["state", "severity"], registry=self.registry)
        self.passes = Counter("sanitel_alert_passes", "evaluation passes", ["result"], registry=self.registry)
        self.pass_seconds = Histogram("sanitel_alert_pass_seconds", "evaluation pass duration",
                                      registry=self.registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.transitions = Counter("sanitel_alert_transitions", "alert transitions", ["event"], registry=self.registry)
        self.notifications = Counter("sanitel_alert_notifications", "notification deliveries",
                                     ["sink", "outcome"], registry=self.registry)
        self.rules = Gauge("sanitel_alert_rules", "alert rules in force", registry=self.registry)
        self.quarantined = Gauge("sanitel_alert_rules_quarantined", "alert rules left out: invalid or failing",
                                 registry=self.registry)

    def observe_alerts(self, conn: psycopg.Connection) -> None:
        counts = {(s, v): n for s, v, n in conn.execute(
            "SELECT state, severity, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY 1, 2").fetchall()}
        for state in ("pending", "firing"):
            for severity in SEVERITIES:
                self.alerts.labels(state, severity).set(counts.get((state, severity), 0))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def config_from_settings(settings: Settings) -> EvaluatorConfig:
    """The service's evaluation settings: stages watched, and unaveraged CEMS readings reported once they have
    waited as long as a stopped processor takes to be called overdue."""
    return EvaluatorConfig(
        stage_overdue_factor=settings.stage_overdue_factor,
        averages_behind_after=timedelta(seconds=settings.maintain_interval_s * settings.stage_overdue_factor))


class EvaluatorService:
    def __init__(self, settings: Settings, *, webhooks: Sequence[str] = (), metrics_port: int | None = None,
                 config: EvaluatorConfig | None = None, retry: RetryPolicy | None = None,
                 reload_every_s: float = 30.0, webhook_poll_s: float = 1.0,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.settings = settings
        self.url = settings.database_url_for("evaluator")
        self.interval_s = settings.evaluator_interval_s
        self.config = config or config_from_settings(settings)
        self.clock = clock  # the wall clock of passes and heartbeats (tests set it)
        self.instance = process_instance()
        self.started_at = clock()
        self.metrics = Metrics()
        self.reload_every_s = reload_every_s
        self._conn: psycopg.Connection | None = None
        self._rules_version: str | None = None
        self._rules_checked = 0.0
        self.quarantine = Quarantine()  # rules that failed while evaluated, across passes
        # the registry across passes, shared by the pass and the incident step (see RegistryCache)
        self.registry_cache = RegistryCache(settings.registry_refresh_s)
        self._evaluator: Evaluator | None = None  # kept while the connection and the rule set are the same
        self.ruleset = self._load_rules_from_files(None)
        self.incident_rules = self._load_incident_rules(None)
        self.created_webhooks = register_webhooks(self.url, webhooks)
        self.metrics_port = settings.evaluator_metrics_port if metrics_port is None else metrics_port
        self.mqtt = MqttSink(settings.mqtt_url_for("evaluator"), settings.city,
                             client_id=f"sanitel-evaluator-{socket.gethostname()}-{os.getpid()}")
        self.webhooks = WebhookDispatcher(self.url, policy=retry, limits=HttpLimits.from_settings(settings),
                                          poll_s=webhook_poll_s, on_result=self._count_webhook)

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; then a clean exit (no pass is cut half way)."""
        if self.metrics_port:
            start_http_server(self.metrics_port, addr="127.0.0.1", registry=self.metrics.registry)
        self.webhooks.start()
        log.info("alert evaluator running: %d rules, every %.1fs", len(self.ruleset.enabled()), self.interval_s)
        try:
            while not stop.is_set():
                started = time.monotonic()
                self.run_once()
                stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            self.close()

    def run_once(self) -> PassReport | None:
        """One pass and its MQTT deliveries; None when the database could not be reached."""
        try:
            conn = self._connection()
            self._maybe_reload(conn)
            with self.metrics.pass_seconds.time():
                report = self._evaluator_on(conn).run_pass(self.clock())
            if report.ran and report.now is not None:  # committed: a pass skipped for the lock reports nothing
                self._incidents(conn, report.now)
                record_pass(conn, "evaluator", self.instance, interval_s=self.interval_s, at=report.now,
                            started_at=self.started_at)
                conn.commit()
            self.metrics.quarantined.set(len(set(self.ruleset.problems) | set(self.quarantine.failures)))
            self.metrics.passes.labels("ran" if report.ran else "skipped").inc()
            for _, event in report.transitions:
                self.metrics.transitions.labels(event).inc()
            if report.ran:
                published, failed = deliver_pending(conn, self.mqtt)
                self.metrics.notifications.labels("mqtt", "sent").inc(published)
                self.metrics.notifications.labels("mqtt", "failed").inc(failed)
                self.webhooks.wake()
            self.metrics.observe_alerts(conn)
            conn.commit()
            return report
        except psycopg.OperationalError as exc:
            self.metrics.passes.labels("error").inc()
            log.warning("alert evaluation skipped: database unreachable (%s)", str(exc).strip().splitlines()[-1])
            self._drop_connection()
            return None
        except Exception:
            # the pass rolled back as a whole; the next one tries again rather than the service dying
            # (a rule's own failures never get here: the evaluator quarantines the rule)
            self.metrics.passes.labels("error").inc()
            log.exception("alert evaluation pass failed")
            self._drop_connection()
            return None

    def close(self) -> None:
        self.webhooks.stop()
        self.mqtt.close()
        self._drop_connection()

    # --- internals ---------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, connect_timeout=5, application_name="sanitel evaluator")
        return self._conn

    def _evaluator_on(self, conn: psycopg.Connection) -> Evaluator:
        """The evaluator of the passes so far — its state across passes (the data clock, problems logged) kept —
        or a new one after a reconnect or a rule reload."""
        evaluator = self._evaluator
        if evaluator is None or evaluator.conn is not conn or evaluator.ruleset is not self.ruleset:
            evaluator = Evaluator(conn, self.ruleset, self.config, self.quarantine, self.registry_cache)
            self._evaluator = evaluator
        return evaluator

    def _drop_connection(self) -> None:
        self._evaluator = None
        self.registry_cache.drop()  # its LISTEN went with the connection
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _load_rules_from_files(self, previous: RuleSet | None) -> RuleSet:
        ruleset = load_files_tolerant(self.settings.rules_dir, previous)
        for key, problem in ruleset.problems.items():
            log.error("alert rule %s left out (quarantined): %s", key, problem)
        return ruleset

    def _incidents(self, conn: psycopg.Connection, now: datetime) -> None:
        """The incident step right after the pass, in its own transaction: a failure there (logged) leaves the
        pass committed and the next pass's step does the work (it is idempotent)."""
        try:
            done = maintain(conn, now, self.incident_rules, self.ruleset, self.registry_cache)
            log.debug("incidents: %d opened, %d resolved, %d notifications, %d inhibitions changed", done.opened,
                      done.resolved, done.notifications, done.inhibition_changes)
        except psycopg.OperationalError:
            raise  # the connection is gone: handled as for the pass
        except Exception:
            log.exception("incident step failed; alerts are kept, their notifications wait for the next pass")
            conn.rollback()
            self.registry_cache.drop()  # a notification read in the rolled-back step may have been used up

    def _load_incident_rules(self, previous: IncidentRules | None) -> IncidentRules:
        """incidents.yaml (rules_dir's, else the shipped one); one that does not validate keeps the previous rules
        (at start-up: the shipped file's)."""
        try:
            return load_incident_rules(self.settings.rules_dir)
        except ConfigError as exc:
            log.error("incident rules left as they were: %s", exc)
        if previous is not None:
            return previous
        try:
            return load_incident_rules(None)
        except ConfigError:  # the shipped file too (a broken install): group with the defaults, inhibit nothing
            return IncidentRules()

    def _maybe_reload(self, conn: psycopg.Connection) -> None:
        if self._rules_version is not None and time.monotonic() - self._rules_checked < self.reload_every_s:
            return
        self._rules_checked = time.monotonic()
        version = self._version(conn)
        if version == self._rules_version:
            return
        ruleset = self._load_rules_from_files(self.ruleset)
        for problem in load_database_rules(conn, ruleset):
            log.error("skipping a stored rule: %s", problem)
        conn.commit()
        self.ruleset, self._rules_version = ruleset, version
        self.incident_rules = self._load_incident_rules(self.incident_rules)
        self.metrics.rules.set(len(ruleset.enabled()))

    def _version(self, conn: psycopg.Connection) -> str:
        try:
            files: list[tuple[str, object]] = [(str(p), p.stat().st_mtime_ns) for p in rule_files(self.settings.rules_dir)]
        except (ConfigError, OSError) as exc:  # rules_dir or a file gone: load_files_tolerant says which
            files = [("?", repr(exc))]
        stored = conn.execute("SELECT count(*), max(updated_at) FROM alert_rules").fetchone()
        conn.commit()
        return hashlib.sha1(repr((files, stored)).encode()).hexdigest()

    def _count_webhook(self, webhook_id: str, delivered: int, failed: int) -> None:
        self.metrics.notifications.labels("webhook", "sent").inc(delivered)
        self.metrics.notifications.labels("webhook", "failed").inc(failed)


def cli_webhook_id(url: str) -> str:
    """The id ``sanitel evaluator --webhook URL`` gives the webhook of a URL (the same URL, the same webhook)."""
    return "cli-" + hashlib.sha1(url.encode()).hexdigest()[:8]


def register_webhooks(database_url: str, urls: Sequence[str]) -> dict[str, str]:
    """Create (or re-enable) the webhooks of ``sanitel evaluator --webhook URL``; returns id → secret of those
    created now (to be shown once)."""
    if not urls:
        return {}
    created: dict[str, str] = {}
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            for url in urls:
                secret = upsert_webhook(conn, cli_webhook_id(url), url)
                if secret is not None:
                    created[cli_webhook_id(url)] = secret
    except psycopg.OperationalError as exc:
        raise SanitelError(f"cannot register webhooks: the database is unreachable ({exc})") from None
    return created
