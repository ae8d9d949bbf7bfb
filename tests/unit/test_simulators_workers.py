"""simulate_in_workers' reading of its workers' summaries (simulators/workers.py)."""

from __future__ import annotations

import queue
from typing import Any

from sanitel.simulators.workers import _collect_after_exit


def test_workers_that_ended_together_are_all_heard_of() -> None:
    """Both summaries were queued when the parent found both workers gone: both are read (CI's one-core run once
    failed a clean two-worker run with "a worker process died without a summary": only one was read)."""
    results: queue.Queue[tuple[int, Any, str | None]] = queue.Queue()
    results.put((0, "summary 0", None))
    results.put((1, "summary 1", None))
    done: dict[int, Any] = {}
    errors: list[str] = []
    _collect_after_exit(results, done, errors, workers=2)
    assert done == {0: "summary 0", 1: "summary 1"}
    assert errors == []


def test_a_worker_that_left_nothing_is_reported_as_died() -> None:
    results: queue.Queue[tuple[int, Any, str | None]] = queue.Queue()
    results.put((1, None, "broker refused the connection"))
    done: dict[int, Any] = {0: "summary 0"}
    errors: list[str] = []
    _collect_after_exit(results, done, errors, workers=3)
    assert errors == ["broker refused the connection", "a worker process died without a summary"]
