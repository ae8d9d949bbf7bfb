"""Fixtures for every test folder.

The ``clock`` marker names tests that assert day boundaries, lags or device time relative to now. With
``SANITEL_TEST_FAKE_NOW`` set to an RFC 3339 instant (``.ci/run`` tries a few awkward ones: a minute before
midnight in Shanghai, a minute before midnight UTC), such a test runs with this process's clock moved there
(time-machine, ticking). PostgreSQL's ``now()`` and child processes keep the real clock, so a marked test
that involves them passes explicit instants rather than relying on their ``now()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime

import pytest
import time_machine

FAKE_NOW_ENV = "SANITEL_TEST_FAKE_NOW"


def fake_now() -> datetime | None:
    """The instant of ``SANITEL_TEST_FAKE_NOW``, or None when it is not set."""
    text = os.environ.get(FAKE_NOW_ENV, "").strip()
    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case t and z
    except ValueError:
        raise pytest.UsageError(f"{FAKE_NOW_ENV}={text!r} is not an RFC 3339 instant") from None
    if instant.tzinfo is None:
        raise pytest.UsageError(f"{FAKE_NOW_ENV}={text!r} has no offset: write it as 2026-11-28T15:59:59Z")
    return instant


def pytest_configure(config: pytest.Config) -> None:
    fake_now()  # a malformed instant stops the run before any test, with the reason


def pytest_report_header(config: pytest.Config) -> str | None:
    instant = fake_now()
    return None if instant is None else f"{FAKE_NOW_ENV}: tests marked 'clock' run at {instant.isoformat()}"


@pytest.fixture(autouse=True)
def _clock_marked_tests_run_at_the_fake_now(request: pytest.FixtureRequest) -> Iterator[None]:
    instant = fake_now()
    if instant is None or request.node.get_closest_marker("clock") is None:
        yield
        return
    with time_machine.travel(instant, tick=True):
        yield
