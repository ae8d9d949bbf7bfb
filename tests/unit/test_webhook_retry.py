"""The webhook sink's retry policy — which answers are retried, the backoff schedule, when it gives up — and the
signature of every POST, driven with a fake receiver in place of the HTTP transport and a virtual clock (as
Alertmanager's notifier tests do): no HTTP server, no database, no sleeping. In service the same decisions are
stored as each delivery's ``next_attempt_at``; tests/integration/security/test_alerts_security.py sends the
real POSTs."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import timedelta

import pytest

from sanitel.alerts.notify.outbox import Webhook
from sanitel.alerts.notify.webhook import (
    DeliveryError,
    HttpAnswer,
    HttpLimits,
    RetryPolicy,
    error_for_status,
    post_notification,
)

URL = "http://receiver.test/hook"
BODY = {"version": "4", "status": "firing", "alerts": [{"fingerprint": "abc"}]}
SECRET = "whsec_unit-test-secret-0123456789abcdef"
WEBHOOK = Webhook("ops", URL, (), ("rule_id",), True, 10, secret=SECRET)
LIMITS = HttpLimits(connect_timeout_s=1.5, read_timeout_s=3.5, max_response_bytes=4096)
T = 1_767_225_600  # the virtual clock's start (unix seconds)


class Receiver:
    """A fake receiver behind the transport: ``answer(now)`` gives the status code (or raises) for a POST at virtual
    time ``now``."""

    def __init__(self, answer: Callable[[float], int], location: str | None = None) -> None:
        self.answer = answer
        self.location = location
        self.now = 0.0
        self.requests: list[tuple[float, str, bytes, dict[str, str], HttpLimits]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], limits: HttpLimits, /) -> HttpAnswer:
        self.requests.append((self.now, url, body, dict(headers), limits))
        status = self.answer(self.now)
        return HttpAnswer(status, f"status {status}", self.location, b"")

    def clock(self) -> float:
        return T + self.now


def post(receiver: Receiver) -> None:
    post_notification(WEBHOOK, BODY, LIMITS, transport=receiver, clock=receiver.clock)


def deliver(receiver: Receiver, policy: RetryPolicy, max_attempts: int) -> tuple[str, list[float]]:
    """One notification through the policy as the dispatcher applies it, on a virtual clock: ("delivered" or "failed",
    the times of the attempts)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            post(receiver)
        except DeliveryError as error:
            step = policy.after_failure(attempt, max_attempts, error)
            if step.give_up:
                return "failed", [r[0] for r in receiver.requests]
            receiver.now += step.delay.total_seconds()
        else:
            return "delivered", [r[0] for r in receiver.requests]


NO_JITTER = RetryPolicy(base_backoff_s=2.0, max_backoff_s=600.0, jitter=0.0)


# --- which answers are retried -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "permanent"), [
    (500, False), (502, False), (503, False), (504, False),  # the receiver is having a bad moment
    (408, False), (429, False),  # timed out / slow down: the 4xx that mean "later"
    (400, True), (401, True), (403, True), (404, True), (410, True), (422, True),  # retrying will not fix these
    (301, False), (302, False), (307, False),  # a redirect, not followed: a failed attempt, not a refusal
])
def test_which_status_codes_are_retried(status: int, permanent: bool) -> None:
    with pytest.raises(DeliveryError) as caught:
        post(Receiver(lambda now: status))
    assert caught.value.permanent is permanent
    assert str(caught.value).startswith(f"HTTP {status}")
    if status < 400:
        assert error_for_status(status, "x").permanent is False
    else:
        assert error_for_status(status, "x").permanent is permanent


def test_a_redirect_is_not_followed_and_the_reason_says_where_it_pointed() -> None:
    receiver = Receiver(lambda now: 302, location="http://elsewhere.test/new")
    with pytest.raises(DeliveryError) as caught:
        post(receiver)
    assert "redirect to http://elsewhere.test/new not followed" in str(caught.value)
    assert [r[1] for r in receiver.requests] == [URL]  # one POST, to the webhook's own URL


def test_a_2xx_is_delivered_as_one_json_post_with_the_limits() -> None:
    receiver = Receiver(lambda now: 200)
    post(receiver)
    ((_, url, body, headers, limits),) = receiver.requests
    assert (url, limits) == (URL, LIMITS)
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == BODY


def test_every_post_is_signed_with_the_webhook_secret_over_timestamp_and_body() -> None:
    receiver = Receiver(lambda now: 200)
    receiver.now = 42
    post(receiver)
    (_, _, body, headers, _), = receiver.requests
    assert headers["X-Sanitel-Timestamp"] == str(T + 42)
    # what a receiver computes, written out independently of the sender's code
    expected = hmac.new(SECRET.encode(), f"{T + 42}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Sanitel-Signature"] == f"sha256={expected}"
    other = hmac.new(b"another secret", f"{T + 42}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Sanitel-Signature"] != f"sha256={other}"


def test_the_secret_never_shows_in_a_webhooks_repr() -> None:
    assert SECRET not in repr(WEBHOOK)


# --- the backoff schedule ------------------------------------------------------------------------------------


def test_the_delay_doubles_from_the_base_and_stops_at_the_cap() -> None:
    delays = [NO_JITTER.delay(attempt).total_seconds() for attempt in range(1, 12)]
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


@pytest.mark.parametrize(("draw", "seconds"), [(0.0, 8.0), (0.5, 7.2), (0.999, 6.4016)])
def test_jitter_only_shortens_a_delay_by_up_to_its_share(draw: float, seconds: float) -> None:
    policy = RetryPolicy(base_backoff_s=2.0, jitter=0.2, rand=lambda: draw)
    assert policy.delay(3).total_seconds() == pytest.approx(seconds)


def test_a_receiver_that_comes_back_gets_the_notification_on_the_backoff_schedule() -> None:
    receiver = Receiver(lambda now: 503 if now < 20 else 200)  # down for the first 20 s
    assert deliver(receiver, NO_JITTER, max_attempts=10) == ("delivered", [0, 2, 6, 14, 30])


# --- giving up ---------------------------------------------------------------------------------------------------


def test_a_receiver_that_stays_down_is_given_up_after_max_attempts() -> None:
    receiver = Receiver(lambda now: 500)
    assert deliver(receiver, NO_JITTER, max_attempts=4) == ("failed", [0, 2, 6, 14])


def test_a_permanent_refusal_is_given_up_at_once() -> None:
    receiver = Receiver(lambda now: 404)
    assert deliver(receiver, NO_JITTER, max_attempts=10) == ("failed", [0])


def test_after_failure_retries_until_the_last_allowed_attempt() -> None:
    transient = DeliveryError("HTTP 503", permanent=False)
    steps = [NO_JITTER.after_failure(attempt, 3, transient) for attempt in (1, 2, 3)]
    assert [(s.give_up, s.delay) for s in steps] == [
        (False, timedelta(seconds=2)), (False, timedelta(seconds=4)), (True, timedelta(seconds=8))]


def test_the_policy_compares_and_prints_without_its_random_source() -> None:
    def fixed() -> float:
        return 0.5

    assert RetryPolicy(rand=fixed) == RetryPolicy()
    assert "rand" not in repr(RetryPolicy())
