"""Webhook sink: deliveries queued in ``alert_webhook_deliveries`` (written with the transition), sent by
one worker thread per webhook — a dead or slow receiver delays only itself, never the evaluator, MQTT,
ingestion or the other webhooks.

Each POST carries the notifications that were due together and share a group key (the webhook's
``group_by`` labels, default rule and site) in an Alertmanager-style body::

    {"version": "4", "receiver": "<webhook id>", "status": "firing" | "resolved", "groupKey": "…",
     "groupLabels": {…}, "commonLabels": {…}, "alerts": [{"status", "labels", "annotations",
     "startsAt", "endsAt", "fingerprint", "event", "alert_id", …}]}

Retries: a failed POST (connection error, timeout, 5xx, 408, 429) is retried after
``base_backoff_s × 2^(attempt−1)`` (capped at ``max_backoff_s``, with jitter) up to the webhook's
``max_attempts``; other 4xx answers are permanent failures (retrying will not fix the receiver).
State lives in the database, so a restart picks up where it stopped: the schedule is a row's
``next_attempt_at`` (the database's clock), not a sleeping thread. The policy (``RetryPolicy.after_failure``,
``error_for_status``) is pure, and the POST (``post_json``'s ``urlopen``, or ``post`` as a whole) and the jitter's
random source are parameters, so unit tests drive retries with a fake receiver and no clock.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import psycopg

from sanitel.alerts.notify.outbox import Webhook, load_webhooks

log = logging.getLogger("sanitel.alerts.webhook")

_RETRYABLE_STATUS = frozenset({408, 429})


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class NextStep:
    """After a failed attempt: give up (the delivery is marked failed), or try again after ``delay``."""

    give_up: bool
    delay: timedelta


@dataclass(frozen=True)
class RetryPolicy:
    base_backoff_s: float = 2.0
    max_backoff_s: float = 600.0
    jitter: float = 0.2  # the delay is shortened by up to this share, so receivers are not hit in lockstep
    timeout_s: float = 10.0
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)  # uniform in [0, 1)

    def delay(self, attempt: int) -> timedelta:
        seconds = min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, attempt - 1))
        return timedelta(seconds=seconds * (1 - self.jitter * self.rand()))

    def after_failure(self, attempt: int, max_attempts: int, error: DeliveryError) -> NextStep:
        """``attempt`` (1 for the first) failed with ``error``: a permanent error or the last allowed attempt
        gives up."""
        return NextStep(error.permanent or attempt >= max_attempts, self.delay(attempt))


def error_for_status(code: int, reason: str) -> DeliveryError:
    """A non-2xx answer: 5xx, 408 and 429 are worth retrying; any other 4xx means the receiver refuses this body
    and will go on refusing it."""
    permanent = 400 <= code < 500 and code not in _RETRYABLE_STATUS
    return DeliveryError(f"HTTP {code} {reason}", permanent=permanent)


class UrlOpen(Protocol):
    """``urllib.request.urlopen``'s shape, as post_json calls it."""

    def __call__(self, url: urllib.request.Request, /, *, timeout: float) -> AbstractContextManager[Any]: ...


def post_json(url: str, body: dict[str, Any], timeout_s: float, *,
              urlopen: UrlOpen = urllib.request.urlopen) -> None:
    """POST; raises DeliveryError (permanent for a 4xx other than 408/429)."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "sanitel-alerts"})
    try:
        with urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise error_for_status(exc.code, exc.reason) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", permanent=False) from None


def group_body(webhook: Webhook, payloads: Sequence[dict[str, Any]], status: str) -> dict[str, Any]:
    labels = [p.get("labels") or {} for p in payloads]
    common = {k: v for k, v in labels[0].items() if all(lab.get(k) == v for lab in labels[1:])}
    group_labels = {k: labels[0].get(k, "") for k in webhook.group_by}
    return {
        "version": "4", "receiver": webhook.webhook_id, "status": status,
        "groupKey": "{" + ",".join(f"{k}={v}" for k, v in group_labels.items()) + "}",
        "groupLabels": group_labels, "commonLabels": common,
        "alerts": [{**p, "status": "resolved" if p["event"] == "resolved" else "firing",
                    "annotations": {"summary": p.get("summary", "")}, "startsAt": p.get("started_at"),
                    "endsAt": p.get("resolved_at")} for p in payloads],
    }


def _group(webhook: Webhook, rows: Sequence[tuple[int, dict[str, Any]]]) -> dict[tuple[Any, ...], list[int]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for notification_id, payload in rows:
        status = "resolved" if payload["event"] == "resolved" else "firing"
        key = (status, *((payload.get("labels") or {}).get(k, "") for k in webhook.group_by))
        groups.setdefault(key, []).append(notification_id)
    return groups


def deliver_due(conn: psycopg.Connection, webhook: Webhook, policy: RetryPolicy,
                post: Callable[[str, dict[str, Any], float], None] = post_json) -> tuple[int, int]:
    """Send this webhook's due deliveries (one POST per group); returns (delivered, failed attempts)."""
    delivered = failed = 0
    with conn.transaction():
        rows = conn.execute(
            """SELECT d.notification_id, n.payload, d.attempts FROM alert_webhook_deliveries d
               JOIN alert_notifications n ON n.notification_id = d.notification_id
               WHERE d.webhook_id = %s AND d.status = 'pending' AND d.next_attempt_at <= now()
               ORDER BY d.notification_id LIMIT 100 FOR UPDATE OF d SKIP LOCKED""", (webhook.webhook_id,)).fetchall()
        payloads = {r[0]: r[1] for r in rows}
        attempts = {r[0]: r[2] for r in rows}
        for (status, *_), ids in _group(webhook, [(r[0], r[1]) for r in rows]).items():
            try:
                post(webhook.url, group_body(webhook, [payloads[i] for i in ids], status), policy.timeout_s)
            except DeliveryError as exc:
                failed += 1
                _record_failure(conn, webhook, ids, attempts, exc, policy)
                continue
            conn.execute("UPDATE alert_webhook_deliveries SET status = 'delivered', delivered_at = now(),"
                         " attempts = attempts + 1, last_error = NULL WHERE webhook_id = %s AND notification_id = ANY(%s)",
                         (webhook.webhook_id, ids))
            delivered += len(ids)
    return delivered, failed


def _record_failure(conn: psycopg.Connection, webhook: Webhook, ids: list[int], attempts: dict[int, int],
                    exc: DeliveryError, policy: RetryPolicy) -> None:
    for notification_id in ids:
        attempt = attempts[notification_id] + 1
        step = policy.after_failure(attempt, webhook.max_attempts, exc)
        conn.execute(
            "UPDATE alert_webhook_deliveries SET attempts = %s, last_error = %s, status = %s,"
            " next_attempt_at = clock_timestamp() + %s WHERE webhook_id = %s AND notification_id = %s",
            (attempt, str(exc)[:500], "failed" if step.give_up else "pending", step.delay,
             webhook.webhook_id, notification_id))
        if step.give_up:
            log.error("webhook %s: giving up on notification %s after %s attempt(s): %s", webhook.webhook_id,
                      notification_id, attempt, exc)


def next_due_in(conn: psycopg.Connection, webhook_id: str) -> float | None:
    row = conn.execute("SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM alert_webhook_deliveries"
                       " WHERE webhook_id = %s AND status = 'pending'", (webhook_id,)).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


class WebhookDispatcher:
    """One worker thread per enabled webhook (the list is re-read every ``refresh_s``). ``wake()``
    after a pass sends new notifications at once; otherwise workers poll every ``poll_s``."""

    def __init__(self, database_url: str, *, policy: RetryPolicy | None = None, poll_s: float = 1.0,
                 refresh_s: float = 30.0, on_result: Callable[[str, int, int], None] | None = None,
                 post: Callable[[str, dict[str, Any], float], None] = post_json) -> None:
        self.database_url = database_url
        self.policy = policy or RetryPolicy()
        self.post = post
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.on_result = on_result
        self._stop = threading.Event()
        self._wake: dict[str, threading.Event] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._manager: threading.Thread | None = None

    def start(self) -> None:
        self._manager = threading.Thread(target=self._manage, name="webhooks", daemon=True)
        self._manager.start()

    def wake(self) -> None:
        for event in list(self._wake.values()):
            event.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        for thread in [self._manager, *self._workers.values()]:
            if thread is not None:
                thread.join(timeout)

    def _manage(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, connect_timeout=5) as conn:
                    webhooks = load_webhooks(conn)
            except psycopg.Error as exc:
                log.warning("webhooks: cannot read the webhook list: %s", exc)
                webhooks = []
            for webhook in webhooks:
                if webhook.webhook_id not in self._workers or not self._workers[webhook.webhook_id].is_alive():
                    self._wake[webhook.webhook_id] = threading.Event()
                    thread = threading.Thread(target=self._work, args=(webhook,), daemon=True,
                                              name=f"webhook-{webhook.webhook_id}")
                    self._workers[webhook.webhook_id] = thread
                    thread.start()
            self._stop.wait(self.refresh_s)

    def _work(self, webhook: Webhook) -> None:
        wake = self._wake[webhook.webhook_id]
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            wait = self.poll_s
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.database_url, connect_timeout=5)
                current = {w.webhook_id: w for w in load_webhooks(conn)}.get(webhook.webhook_id)
                if current is None:
                    break  # disabled or deleted: the manager starts a worker again if it comes back
                webhook = current  # the URL or matchers may have been edited
                delivered, failed = deliver_due(conn, webhook, self.policy, self.post)
                if self.on_result is not None and (delivered or failed):
                    self.on_result(webhook.webhook_id, delivered, failed)
                due = next_due_in(conn, webhook.webhook_id)
                conn.commit()
                if due is not None:
                    wait = min(wait, due)
            except psycopg.Error as exc:
                log.warning("webhook %s: database error, retrying: %s", webhook.webhook_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
            wake.wait(wait)
            wake.clear()
        if conn is not None:
            conn.close()
        self._workers.pop(webhook.webhook_id, None)
