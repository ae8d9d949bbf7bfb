"""Silence matchers and windows (Alertmanager's semantics), without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sanitel.alerts.silences import Matcher, Silence, Silences, parse_matchers
from sanitel.errors import ConfigError


@pytest.mark.parametrize(("matcher", "labels", "matches"), [
    ({"label": "site_id", "value": "sp-1"}, {"site_id": "sp-1"}, True),
    ({"label": "site_id", "op": "!=", "value": "sp-1"}, {"site_id": "sp-1"}, False),
    ({"label": "rule_id", "op": "=~", "value": "cems_.*_daily"}, {"rule_id": "cems_nox_daily"}, True),
    ({"label": "rule_id", "op": "=~", "value": "cems_nox"}, {"rule_id": "cems_nox_daily"}, False),  # whole value
    ({"label": "severity", "op": "!~", "value": "critical|major"}, {"severity": "minor"}, True),
    ({"label": "plant", "value": ""}, {"site_id": "x"}, True),  # a missing label matches as empty
])
def test_matchers(matcher: dict[str, str], labels: dict[str, str], matches: bool) -> None:
    assert parse_matchers([matcher])[0].matches(labels) is matches


def test_bad_matchers_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="op '~' is not one of"):
        parse_matchers([{"label": "a", "op": "~", "value": "x"}])
    with pytest.raises(ConfigError, match="is not a regular expression"):
        parse_matchers([{"label": "a", "op": "=~", "value": "("}])
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_matchers([])


def test_silence_window_is_half_open() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    silence = Silence(1, (Matcher("a", "=", "x"),), start, start + timedelta(hours=1))
    silences = Silences([silence])
    assert silences.muting({"a": "x"}, start) is silence
    assert silences.muting({"a": "x"}, start + timedelta(hours=1)) is None
    assert silences.muting({"a": "y"}, start) is None
    later = start + timedelta(days=1)  # judged a day later: only an episode inside the window is muted
    assert silences.muting({"a": "x"}, later, (start, start + timedelta(minutes=30))) is silence
    assert silences.muting({"a": "x"}, later, (start, start + timedelta(hours=2))) is None
    assert silences.muting({"a": "x"}, later, (start, None)) is None
