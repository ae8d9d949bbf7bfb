"""Silence matchers and windows (Alertmanager's semantics), without a database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from sanitel.alerts.silences import Matcher, MatcherError, Silence, Silences, parse_matchers
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


# --- the regex engine: RE2, linear time ---------------------------------------------------------------------
# `(.*.*)*x` against a value without an x makes a backtracking engine (Python's re) try exponentially many ways
# to split the value: with re, 16 characters already take seconds and a 64-character device id would take
# longer than the age of the universe. RE2 answers in time linear in the value.

CATASTROPHIC = "(.*.*)*x"


def test_regex_matchers_are_compiled_by_re2() -> None:
    (matcher,) = parse_matchers([{"label": "device_id", "op": "=~", "value": "bin-.*"}])
    assert type(matcher.program).__module__.partition(".")[0] == "re2"
    assert matcher.matches({"device_id": "bin-7"}) and not matcher.matches({"device_id": "xbin-7"})  # whole value


def test_patterns_only_a_backtracking_engine_accepts_are_refused_naming_the_matcher() -> None:
    # a backreference and a look-ahead: Python's re compiles both, RE2 (linear time) cannot have them
    for pattern in (r"(a)\1", "a(?=b)"):
        with pytest.raises(MatcherError) as caught:
            parse_matchers([{"label": "a", "value": "x"}, {"label": "site_id", "op": "!~", "value": pattern}])
        assert (caught.value.index, caught.value.key) == (1, "value")
        assert "matcher 1:" in str(caught.value) and "RE2" in str(caught.value) and "fix:" in str(caught.value)


@pytest.mark.parametrize("op", ["=~", "!~"])
def test_a_catastrophic_pattern_against_a_long_value_completes(op: str) -> None:
    silences = Silences([Silence(1, tuple(parse_matchers([{"label": "device_id", "op": op, "value": CATASTROPHIC}])),
                                 datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))])
    labels = {"device_id": "a" * 100_000}
    outcome: list[Silence | None] = []
    worker = threading.Thread(target=lambda: outcome.append(silences.muting(labels, datetime(2026, 1, 1, 1, tzinfo=UTC))),
                              daemon=True)
    worker.start()
    worker.join(120)  # generous: RE2 needs well under a second; Python's re would never finish
    assert not worker.is_alive() and len(outcome) == 1
    assert (outcome[0] is not None) is (op == "!~")  # no x at the end: =~ does not match, !~ does
