"""The alert tests' helpers (tests/support/alerts_db.py) keep their promises: fixed instants, device time
on the hour and inside the evaluator's lateness horizon at the pass's clock."""

from __future__ import annotations

from datetime import timedelta

from sanitel.alerts.evaluator import EvaluatorConfig
from tests.support.alerts_db import NOW, T0, series


def test_at_is_on_the_hour_inside_the_horizon() -> None:
    assert T0.minute == T0.second == T0.microsecond == 0
    assert timedelta(hours=20) < NOW - T0 < EvaluatorConfig().lateness_horizon


def test_series_steps_device_time() -> None:
    rows = series(T0, 30, [1, 2], "soc_pct")
    assert [r["ts"] - T0 for r in rows] == [timedelta(0), timedelta(seconds=30)]
