"""Webhook sink: deliveries queued in ``alert_webhook_deliveries`` (written with the transition), sent by
one worker thread per webhook — a dead or slow receiver delays only itself, never the evaluator, MQTT,
ingestion or the other webhooks.

Each POST carries the notifications that were due together and share a group key (the webhook's
``group_by`` labels, default rule and site) in an Alertmanager-style body::

    {"version": "4", "receiver": "<webhook id>", "status": "firing" | "resolved", "groupKey": "…",
     "groupLabels": {…}, "commonLabels": {…}, "alerts": [{"status", "labels", "annotations",
     "startsAt", "endsAt", "fingerprint", "event", "alert_id", "incident_id", …}],
     "incidents": [{"event", "incident_id", "place", "kind", "title", "severity", "state", "root_alert_id", …}]}

Notifications are per incident (``outbox.py``): ``alerts`` lists the members of each incident notification of the
group (root first), ``incidents`` the incidents themselves. ``status`` is the notification's: ``resolved`` for a
resolved incident, ``firing`` for the others (``firing``, ``updated``, ``reminder``); each alert's own ``status``
says whether that member still fires.

**No transaction is open while a receiver is talked to.** A round is three steps: claim the due
deliveries in one short transaction (their ``next_attempt_at`` is pushed past the longest the POSTs can
take, a lease: a process that dies mid-POST leaves them to be sent again once it ends — at least once),
POST with no transaction open, record each outcome in another short transaction. A transaction held
open across a slow POST would hold back ``queries.safe_upto`` — the evaluator reads only rows stored
before the oldest open transaction began — and so delay every alert for as long as the receiver
dawdles.

**Every POST is bounded and signed** (see alerts/README.md, "Webhook signatures"): connect within
``webhook_connect_timeout_s``; the whole answer within ``webhook_read_timeout_s`` (a watchdog closes the
socket then, so a receiver dripping one byte at a time cannot hold it longer); at most
``webhook_max_response_bytes`` of the answer read; redirects are not followed (a 3xx is a failed
attempt, its Location in the reason); headers ``X-Sanitel-Timestamp: <unix seconds>`` and
``X-Sanitel-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` with the webhook's own
secret (Stripe's and Slack's scheme: the timestamp inside the MAC lets a receiver refuse replays).

Retries: a failed POST (connection error, timeout, redirect, 5xx, 408, 429) is retried after
``base_backoff_s × 2^(attempt−1)`` (capped at ``max_backoff_s``, with jitter) up to the webhook's
``max_attempts``; other 4xx answers are permanent failures (retrying will not fix the receiver).
State lives in the database, so a restart picks up where it stopped: the schedule is a row's
``next_attempt_at`` (the database's clock), not a sleeping thread. The policy (``RetryPolicy.after_failure``,
``error_for_answer``) is pure, and the HTTP exchange (``transport``) and the clock are parameters, so unit tests
drive retries and signatures with a fake receiver and no clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg

from sanitel.alerts.notify.outbox import Webhook, load_webhook, load_webhooks
from sanitel.settings import Settings
from sanitel.urls import redact_url

log = logging.getLogger("sanitel.alerts.webhook")

_RETRYABLE_STATUS = frozenset({408, 429})
TIMESTAMP_HEADER = "X-Sanitel-Timestamp"
SIGNATURE_HEADER = "X-Sanitel-Signature"
_LEASE_MARGIN = timedelta(seconds=60)  # on top of the longest the POSTs of a round can take


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
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)  # uniform in [0, 1)

    def delay(self, attempt: int) -> timedelta:
        seconds = min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, attempt - 1))
        return timedelta(seconds=seconds * (1 - self.jitter * self.rand()))

    def after_failure(self, attempt: int, max_attempts: int, error: DeliveryError) -> NextStep:
        """``attempt`` (1 for the first) failed with ``error``: a permanent error or the last allowed attempt
        gives up."""
        return NextStep(error.permanent or attempt >= max_attempts, self.delay(attempt))


@dataclass(frozen=True)
class HttpLimits:
    """How long and how much one POST may take (settings ``webhook_*``)."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_response_bytes: int = 64 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(settings.webhook_connect_timeout_s, settings.webhook_read_timeout_s,
                   settings.webhook_max_response_bytes)

    @property
    def longest_post(self) -> timedelta:
        return timedelta(seconds=self.connect_timeout_s + self.read_timeout_s)


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    reason: str
    location: str | None  # a redirect's target (not followed)
    body: bytes  # at most HttpLimits.max_response_bytes of it


class Transport(Protocol):
    """``http_post``'s shape: one POST, its answer, or DeliveryError when there was none."""

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], limits: HttpLimits, /) -> HttpAnswer: ...


# --- signing -------------------------------------------------------------------------------------------------

def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` — the X-Sanitel-Signature value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def signed_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


# --- one POST ------------------------------------------------------------------------------------------------

def http_post(url: str, body: bytes, headers: Mapping[str, str], limits: HttpLimits, /) -> HttpAnswer:
    """POST ``body`` to ``url`` without following redirects; connect within ``connect_timeout_s``, the whole
    answer within ``read_timeout_s`` after that, at most ``max_response_bytes`` of its body read. DeliveryError
    (retryable) when there is no answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(host, parts.port, timeout=limits.connect_timeout_s)
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=limits.connect_timeout_s)
    watchdog: threading.Timer | None = None
    expired = threading.Event()
    connected = False
    try:
        connection.connect()  # TCP (and TLS) within the connect timeout
        connected = True
        sock = connection.sock
        assert sock is not None
        sock.settimeout(limits.read_timeout_s)  # each read and write …
        # … and the whole exchange: a receiver sending one byte just within each timeout is cut off here
        watchdog = threading.Timer(limits.read_timeout_s, _cut, (sock, expired))
        watchdog.daemon = True
        watchdog.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body=body, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        data = response.read(limits.max_response_bytes)  # the rest is never read: the connection is closed
        if expired.is_set():  # cut off by the watchdog: whatever was parsed is not the receiver's whole answer
            raise TimeoutError
        return HttpAnswer(response.status, response.reason, response.getheader("Location"), data)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise DeliveryError(f"timed out: no complete answer within {limits.read_timeout_s:g}s (read timeout)"
                                if connected else
                                f"timed out: no connection within {limits.connect_timeout_s:g}s (connect timeout)",
                                permanent=False) from None
        raise DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        connection.close()


def _cut(sock: socket.socket, expired: threading.Event) -> None:
    expired.set()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv/send returns at once


def error_for_status(code: int, reason: str) -> DeliveryError:
    """A non-2xx answer: 5xx, 408 and 429 are worth retrying; any other 4xx means the receiver refuses this body
    and will go on refusing it. A redirect is not followed (error_for_answer says where it pointed)."""
    permanent = 400 <= code < 500 and code not in _RETRYABLE_STATUS
    return DeliveryError(f"HTTP {code} {reason}", permanent=permanent)


def error_for_answer(answer: HttpAnswer) -> DeliveryError:
    if 300 <= answer.status < 400:
        where = redact_url(answer.location) if answer.location else "nowhere"
        return DeliveryError(f"HTTP {answer.status} {answer.reason}: redirect to {where[:200]} not followed — fix: "
                             "give the webhook the receiver's final URL", permanent=False)
    error = error_for_status(answer.status, answer.reason)
    said = answer.body[:200].decode(errors="replace").strip()
    if said:
        said = "".join(c if c.isprintable() else " " for c in said)
        return DeliveryError(f"{error}: {said}", permanent=error.permanent)
    return error


def post_notification(webhook: Webhook, body: dict[str, Any], limits: HttpLimits, *,
                      transport: Transport = http_post, clock: Callable[[], float] = time.time) -> None:
    """POST one grouped body, signed with the webhook's secret; DeliveryError unless the answer is 2xx."""
    data = json.dumps(body, default=str, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "sanitel-alerts",
               **signed_headers(webhook.secret, data, int(clock()))}
    answer = transport(webhook.url, data, headers, limits)
    if not 200 <= answer.status < 300:
        raise error_for_answer(answer)


# --- grouping ------------------------------------------------------------------------------------------------

def group_body(webhook: Webhook, payloads: Sequence[dict[str, Any]], status: str) -> dict[str, Any]:
    """One POST: the member alerts of the grouped incident notifications (a payload without ``members`` is one
    alert), and a summary of each incident."""
    labels = [p.get("labels") or {} for p in payloads]
    common = {k: v for k, v in labels[0].items() if all(lab.get(k) == v for lab in labels[1:])}
    group_labels = {k: labels[0].get(k, "") for k in webhook.group_by}
    return {
        "version": "4", "receiver": webhook.webhook_id, "status": status,
        "groupKey": "{" + ",".join(f"{k}={v}" for k, v in group_labels.items()) + "}",
        "groupLabels": group_labels, "commonLabels": common,
        "alerts": [_alert_entry(p, member) for p in payloads for member in (p.get("members") or [p])],
        "incidents": [{"event": p["event"], **p["incident"]} for p in payloads if p.get("incident")],
    }


def _alert_entry(payload: dict[str, Any], member: dict[str, Any]) -> dict[str, Any]:
    resolved = payload["event"] == "resolved" or member.get("state") == "resolved"
    return {**member, "event": payload["event"], "incident_id": payload.get("incident_id"),
            "status": "resolved" if resolved else "firing", "annotations": {"summary": member.get("summary", "")},
            "startsAt": member.get("started_at"), "endsAt": member.get("resolved_at")}


def _group(webhook: Webhook, rows: Sequence[tuple[int, dict[str, Any]]]) -> dict[tuple[Any, ...], list[int]]:
    groups: dict[tuple[Any, ...], list[int]] = {}
    for notification_id, payload in rows:
        status = "resolved" if payload["event"] == "resolved" else "firing"
        key = (status, *((payload.get("labels") or {}).get(k, "") for k in webhook.group_by))
        groups.setdefault(key, []).append(notification_id)
    return groups


# --- a round: claim, POST, record ----------------------------------------------------------------------------

@dataclass
class Claim:
    """Deliveries of one webhook taken for one round: the webhook as stored at claim time, the payloads, the
    attempts each had (the record step changes a row only if nobody else has since), the groups to POST."""

    webhook: Webhook
    payloads: dict[int, dict[str, Any]]
    attempts: dict[int, int]
    groups: dict[tuple[Any, ...], list[int]]


def claim_due(conn: psycopg.Connection, webhook_id: str, limits: HttpLimits, limit: int = 100) -> Claim | None:
    """One short transaction: the due deliveries, leased for as long as their POSTs can take. None when the
    webhook is gone (deleted or disabled)."""
    with conn.transaction():
        webhook = load_webhook(conn, webhook_id)
        if webhook is None:
            return None
        rows = conn.execute(
            """SELECT d.notification_id, n.payload, d.attempts FROM alert_webhook_deliveries d
               JOIN alert_notifications n ON n.notification_id = d.notification_id
               WHERE d.webhook_id = %s AND d.status = 'pending' AND d.next_attempt_at <= now()
               ORDER BY d.notification_id LIMIT %s FOR UPDATE OF d SKIP LOCKED""", (webhook_id, limit)).fetchall()
        claim = Claim(webhook, {r[0]: r[1] for r in rows}, {r[0]: r[2] for r in rows},
                      _group(webhook, [(r[0], r[1]) for r in rows]))
        if rows:
            lease = limits.longest_post * len(claim.groups) + _LEASE_MARGIN
            conn.execute("UPDATE alert_webhook_deliveries SET next_attempt_at = clock_timestamp() + %s"
                         " WHERE webhook_id = %s AND notification_id = ANY(%s)", (lease, webhook_id, list(claim.payloads)))
    return claim


def deliver_due(conn: psycopg.Connection, webhook_id: str, policy: RetryPolicy, limits: HttpLimits, *,
                transport: Transport = http_post, clock: Callable[[], float] = time.time) -> tuple[int, int] | None:
    """Send this webhook's due deliveries (one POST per group); returns (delivered, failed attempts), or None
    when the webhook is gone. ``conn`` is in autocommit: no transaction is open during a POST."""
    claim = claim_due(conn, webhook_id, limits)
    if claim is None:
        return None
    delivered = failed = 0
    for (status, *_), ids in claim.groups.items():
        try:
            post_notification(claim.webhook, group_body(claim.webhook, [claim.payloads[i] for i in ids], status),
                              limits, transport=transport, clock=clock)
        except DeliveryError as exc:
            failed += 1
            _record_failure(conn, claim, ids, exc, policy)
            continue
        with conn.transaction():
            conn.execute(
                """UPDATE alert_webhook_deliveries d SET status = 'delivered', delivered_at = now(),
                          attempts = d.attempts + 1, last_error = NULL
                     FROM unnest(%s::bigint[], %s::int[]) AS c(notification_id, attempts)
                    WHERE d.webhook_id = %s AND d.notification_id = c.notification_id AND d.attempts = c.attempts
                      AND d.status = 'pending'""",
                (ids, [claim.attempts[i] for i in ids], webhook_id))
        delivered += len(ids)
    return delivered, failed


def _record_failure(conn: psycopg.Connection, claim: Claim, ids: list[int], exc: DeliveryError,
                    policy: RetryPolicy) -> None:
    webhook = claim.webhook
    # one retry time for the whole group (the transaction's now() plus one drawn delay), so that its
    # notifications stay due together and go out in one POST again
    delay = policy.delay(max(claim.attempts[i] for i in ids) + 1)
    with conn.transaction():
        for notification_id in ids:
            attempt = claim.attempts[notification_id] + 1
            step = policy.after_failure(attempt, webhook.max_attempts, exc)
            conn.execute(
                "UPDATE alert_webhook_deliveries SET attempts = %s, last_error = %s, status = %s,"
                " next_attempt_at = now() + %s"
                " WHERE webhook_id = %s AND notification_id = %s AND attempts = %s AND status = 'pending'",
                (attempt, str(exc)[:500], "failed" if step.give_up else "pending", delay,
                 webhook.webhook_id, notification_id, attempt - 1))
            if step.give_up:
                log.error("webhook %s: giving up on notification %s after %s attempt(s): %s", webhook.webhook_id,
                          notification_id, attempt, exc)


def next_due_in(conn: psycopg.Connection, webhook_id: str) -> float | None:
    row = conn.execute("SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM alert_webhook_deliveries"
                       " WHERE webhook_id = %s AND status = 'pending'", (webhook_id,)).fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


class WebhookDispatcher:
    """One worker thread per enabled webhook (the list is re-read every ``refresh_s``). ``wake()``
    after a pass sends new notifications at once; otherwise workers poll every ``poll_s``. A worker ends
    when its webhook is deleted or disabled."""

    def __init__(self, database_url: str, *, policy: RetryPolicy | None = None, limits: HttpLimits | None = None,
                 poll_s: float = 1.0, refresh_s: float = 30.0, on_result: Callable[[str, int, int], None] | None = None,
                 transport: Transport = http_post) -> None:
        self.database_url = database_url
        self.policy = policy or RetryPolicy()
        self.limits = limits or HttpLimits()
        self.transport = transport
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

    def running(self) -> set[str]:
        """Ids of the webhooks a worker is serving now."""
        return {wid for wid, thread in list(self._workers.items()) if thread.is_alive()}

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake()
        for thread in [self._manager, *list(self._workers.values())]:
            if thread is not None:
                thread.join(timeout)

    def _manage(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.database_url, connect_timeout=5, autocommit=True) as conn:
                    webhooks = load_webhooks(conn)
            except psycopg.Error as exc:
                log.warning("webhooks: cannot read the webhook list: %s", exc)
                webhooks = []
            for webhook in webhooks:
                if webhook.webhook_id not in self._workers or not self._workers[webhook.webhook_id].is_alive():
                    self._wake[webhook.webhook_id] = threading.Event()
                    thread = threading.Thread(target=self._work, args=(webhook.webhook_id,), daemon=True,
                                              name=f"webhook-{webhook.webhook_id}")
                    self._workers[webhook.webhook_id] = thread
                    thread.start()
            self._stop.wait(self.refresh_s)

    def _work(self, webhook_id: str) -> None:
        wake = self._wake[webhook_id]
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            wait = self.poll_s
            try:
                if conn is None or conn.closed:
                    # autocommit: each step opens its own short transaction, none spans a POST
                    conn = psycopg.connect(self.database_url, connect_timeout=5, autocommit=True,
                                           application_name="sanitel webhooks")
                result = deliver_due(conn, webhook_id, self.policy, self.limits, transport=self.transport)
                if result is None:
                    break  # deleted or disabled: the manager starts a worker again if it comes back
                delivered, failed = result
                if self.on_result is not None and (delivered or failed):
                    self.on_result(webhook_id, delivered, failed)
                due = next_due_in(conn, webhook_id)
                if due is not None:
                    wait = min(wait, due)
            except psycopg.Error as exc:
                log.warning("webhook %s: database error, retrying: %s", webhook_id, exc)
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:  # a bug must not end deliveries for good: log it and try again next round
                log.exception("webhook %s: delivery round failed", webhook_id)
            wake.wait(wait)
            wake.clear()
        if conn is not None:
            conn.close()
        if self._workers.get(webhook_id) is threading.current_thread():
            del self._workers[webhook_id]
