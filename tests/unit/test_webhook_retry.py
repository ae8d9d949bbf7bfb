"""The webhook sink's retry policy — which answers are retried, the backoff schedule, when it gives up — driven with a
fake receiver behind ``post_json``'s ``urlopen`` and a virtual clock (as Alertmanager's notifier tests do): no HTTP
server, no database, no sleeping. In service the same decisions are stored as each delivery's ``next_attempt_at``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from email.message import Message

import pytest

from sanitel.alerts.notify.webhook import DeliveryError, RetryPolicy, error_for_status, post_json

URL = "http://receiver.test/hook"
BODY = {"version": "4", "status": "firing", "alerts": [{"fingerprint": "abc"}]}


class Response:
    def read(self) -> bytes:
        return b"ok"


class Receiver:
    """A fake HTTP receiver: ``answer(now)`` gives the status code (or raises) for a POST at virtual time ``now``."""

    def __init__(self, answer: Callable[[float], int]) -> None:
        self.answer = answer
        self.now = 0.0
        self.requests: list[tuple[float, urllib.request.Request, float]] = []

    @contextmanager
    def urlopen(self, request: urllib.request.Request, /, *, timeout: float) -> Iterator[Response]:
        self.requests.append((self.now, request, timeout))
        status = self.answer(self.now)
        if status >= 300:
            raise urllib.error.HTTPError(request.full_url, status, f"status {status}", Message(), None)
        yield Response()


def post(receiver: Receiver, policy: RetryPolicy | None = None) -> None:
    post_json(URL, BODY, (policy or RetryPolicy()).timeout_s, urlopen=receiver.urlopen)


def deliver(receiver: Receiver, policy: RetryPolicy, max_attempts: int) -> tuple[str, list[float]]:
    """One notification through the policy as the dispatcher applies it, on a virtual clock: ("delivered" or "failed",
    the times of the attempts)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            post(receiver, policy)
        except DeliveryError as error:
            step = policy.after_failure(attempt, max_attempts, error)
            if step.give_up:
                return "failed", [t for t, _, _ in receiver.requests]
            receiver.now += step.delay.total_seconds()
        else:
            return "delivered", [t for t, _, _ in receiver.requests]


NO_JITTER = RetryPolicy(base_backoff_s=2.0, max_backoff_s=600.0, jitter=0.0)


# --- which answers are retried -------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "permanent"), [
    (500, False), (502, False), (503, False), (504, False),  # the receiver is having a bad moment
    (408, False), (429, False),  # timed out / slow down: the 4xx that mean "later"
    (400, True), (401, True), (403, True), (404, True), (410, True), (422, True),  # retrying will not fix these
    (301, False),  # a redirect urllib did not follow is not the receiver refusing the body
])
def test_which_status_codes_are_retried(status: int, permanent: bool) -> None:
    with pytest.raises(DeliveryError) as caught:
        post(Receiver(lambda now: status))
    assert caught.value.permanent is permanent
    assert str(caught.value).startswith(f"HTTP {status}")
    assert error_for_status(status, "x").permanent is permanent


@pytest.mark.parametrize("error", [
    urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), TimeoutError("timed out"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_network_failures_are_retried(error: Exception) -> None:
    def unreachable(now: float) -> int:
        raise error

    with pytest.raises(DeliveryError) as caught:
        post(Receiver(unreachable))
    assert not caught.value.permanent


def test_a_2xx_is_delivered_as_one_json_post_with_the_policy_timeout() -> None:
    receiver = Receiver(lambda now: 200)
    post(receiver, RetryPolicy(timeout_s=3.5))
    ((_, request, timeout),) = receiver.requests
    assert (request.get_method(), request.full_url, timeout) == ("POST", URL, 3.5)
    assert request.get_header("Content-type") == "application/json"
    assert isinstance(request.data, bytes) and json.loads(request.data) == BODY


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
