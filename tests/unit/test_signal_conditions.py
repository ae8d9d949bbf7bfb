"""Named conditions on noisy signals (sanitel/signal_conditions.py, issue 18): the one definition of "full" and
"exceeded" that the alert rules and the simulators' ground truth read. Episodes by hand, hysteresis, lookups, the
parser's errors, and properties: episodes never raise, are ordered and disjoint, and agree with the alert
evaluator's own state machine (alerts/timeline.py) on the same smoothed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.alerts.timeline import Cursor, Policy, Sample, Status, advance, judge
from sanitel.errors import ConfigError
from sanitel.signal_conditions import (
    DEFINITIONS_FILE,
    Condition,
    Smoothing,
    condition,
    conditions,
    parse_condition,
)

BIN_FULL = condition("bin_full")
H2S = condition("station_h2s_exceeded")


def _condition(**change: Any) -> Condition:
    raw = {"field": "x", "op": ">=", "threshold": 90, "clear": 80, "smoothing": {"median": 5}, **change}
    return parse_condition("test", {k: v for k, v in raw.items() if v is not None}, "test.yaml")


# --- the shipped definitions -----------------------------------------------------------------------

def test_shipped_definitions() -> None:
    assert set(conditions()) >= {"bin_full", "station_h2s_exceeded", "station_nh3_exceeded"}
    assert (BIN_FULL.field, BIN_FULL.op, BIN_FULL.limits(), BIN_FULL.smoothing) == (
        "fill_level_pct", ">=", (90.0, 80.0), Smoothing("median", 5))
    assert BIN_FULL.smoothing.describe() == "median of the last 5 readings"
    nh3 = condition("station_nh3_exceeded")
    assert (nh3.field, nh3.op, nh3.limits({"odour_grade": "3"})) == ("nh3_mg_m3", ">", (4.0, 3.2))
    with pytest.raises(ConfigError, match="unknown condition 'bin_fool' — fix: use one of bin_full"):
        condition("bin_fool")


# --- smoothing -------------------------------------------------------------------------------------

def test_rolling_judges_only_full_windows_apply_gives_every_reading() -> None:
    median3 = Smoothing("median", 3)
    # windows: [1] [1,5] [1,5,3]→3 [5,3,9]→5 [3,9,2]→3
    assert median3.apply([1, 5, 3, 9, 2]) == [1, 3, 3, 5, 3]
    assert median3.rolling([1, 5, 3, 9, 2]) == [None, None, 3, 5, 3]
    # mean of 2: (1+5)/2 = 3, (5+3)/2 = 4, (3+9)/2 = 6
    assert Smoothing("mean", 2).rolling([1, 5, 3, 9]) == [None, 3.0, 4.0, 6.0]


# --- episodes by hand ------------------------------------------------------------------------------

def test_a_bin_hovering_at_the_limit_is_one_episode() -> None:
    # the series of the issue, at 5-minute readings: never 3 readings ≥ 90 % in a row (the old rule never fired)
    values = [88, 92, 89, 91, 93, 90, 88, 91]
    # medians of 5 from the 5th reading: [88,92,89,91,93]→91 (≥ 90: full) · [92,89,91,93,90]→91 ·
    # [89,91,93,90,88]→90 · [91,93,90,88,91]→91 — full from index 4 to the end
    assert BIN_FULL.episodes(values) == [(4, 7)]
    # emptied by the collection round: [93,90,88,91,5]→90 · [90,88,91,5,4]→88 (80-90: still full) ·
    # [88,91,5,4,3]→5 (< 80) ends it: full from 4 to 9
    assert BIN_FULL.episodes([*values, 5, 4, 3, 3]) == [(4, 9)]


def test_one_wild_echo_is_not_full() -> None:
    # a single 95 % among 60s: medians [60,61,95,62,60]→61 …; and as a bin's very first reading: no verdict before
    # 5 readings, then [95,60,61,60,62]→61
    assert BIN_FULL.episodes([60, 61, 95, 62, 60, 61, 60]) == []
    assert BIN_FULL.episodes([95, 60, 61, 60, 62, 60]) == []


def test_hysteresis_holds_between_the_clear_level_and_the_threshold() -> None:
    values = [85, 85, 85, 85, 85, 95, 95, 95, 85, 85, 85, 85, 70, 70, 70]
    # medians: i4 85 · i5 [85,85,85,85,95]→85 · i6 85 · i7 [85,85,95,95,95]→95 (full) · i8 95 · i9 95 ·
    # i10 [95,95,85,85,85]→85 (≥ 80: still full) · i11..i13 85 · i14 [85,85,70,70,70]→70 (< 80: over)
    assert BIN_FULL.episodes(values) == [(7, 13)]
    # without a clear level it ends as soon as the median is below the threshold again, at i10
    assert _condition(clear=None).episodes(values) == [(7, 9)]


def test_the_clear_level_itself_ends_an_episode_as_the_evaluator_judges_it() -> None:
    # op ">" with clear 8: 8 is not > 8, so it ends there (alerts/timeline.judge: CLEAR when not value op clear)
    gt = _condition(op=">", threshold=10, clear=8, smoothing={"median": 1})
    assert gt.episodes([11, 9, 8, 11]) == [(0, 1), (3, 3)]
    assert [judge(v, ">", 10, 8) for v in (11, 9, 8)] == [Status.BREACH, Status.HOLD, Status.CLEAR]
    # op ">=" with clear 80: 80 still satisfies >= 80, 79.9 does not
    assert _condition(smoothing={"median": 1}).episodes([90, 80, 79.9]) == [(0, 1)]


def test_limits_by_site_parameter() -> None:
    assert H2S.limits() == (0.06, 0.05)  # grade 2 when the site says nothing
    assert H2S.limits({"odour_grade": 1}) == (0.03, 0.025)  # an integer grade reads as "1"
    assert H2S.limits({"odour_grade": "3-existing"}) == (0.60, 0.48)
    assert H2S.limits({"odour_grade": "9"}) == (0.06, 0.05)  # not a grade of the table: the default's
    steady = [0.045] * 6
    # median 0.045: above grade 1's 0.03 from the first full window (index 4), below grade 2's 0.06
    assert H2S.episodes(steady, {"odour_grade": 1}) == [(4, 5)]
    assert H2S.episodes(steady) == []


# --- the parser ------------------------------------------------------------------------------------

_BODY = {"field": "x", "op": ">=", "threshold": 90, "smoothing": {"median": 5}}


@pytest.mark.parametrize(("body", "words"), [
    ("not a mapping", "test.yaml: test: not a mapping — fix:"),
    ({"field": "x", "op": ">"}, "test.yaml: test: missing smoothing, threshold — fix: add them"),
    ({**_BODY, "op": "=>"}, "test.op: '=>' — fix: use one of >, >=, <, <="),
    ({**_BODY, "field": ""}, "test.field: '' — fix: name the reading field"),
    ({**_BODY, "smoothing": {"median": 0}}, "test.smoothing: {'median': 0} — fix: write {median: N} or {mean: N}"),
    ({**_BODY, "smoothing": {"mode": 5}}, "— fix: write {median: N}"),
    ({**_BODY, "smoothing": "median"}, "is not a rolling statistic — fix:"),
    ({**_BODY, "threshold": "high"}, "test.threshold: 'high' — fix: a finite number or a {param, default, values}"),
    ({**_BODY, "threshold": float("nan")}, "— fix: a finite number"),
    ({**_BODY, "threshold": {"param": "g", "default": "3", "values": {"1": 1}}},
     "default '3' is not one of the values' keys"),
    ({**_BODY, "threshold": {"param": "g", "default": "1", "values": {"1": True}}}, "— fix: a lookup is"),
    ({**_BODY, "clear": 95}, "test.clear: 95 is on the wrong side of the threshold 90 for op '>=' — fix:"),
    ({**_BODY, "threshold": {"param": "g", "default": "1", "values": {"1": 1.0, "2": 2.0}},
      "clear": {"param": "g", "default": "1", "values": {"1": 0.5, "2": 2.5}}}, "2.5 is on the wrong side"),
    ({**_BODY, "colour": "red"}, "unknown key(s) colour — fix: remove them"),
])
def test_parser_errors_name_the_file_the_key_and_the_fix(body: Any, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_condition("test", body, "test.yaml")
    assert words in str(info.value) and str(info.value).startswith("test.yaml: test")


def test_lookup_keys_are_text() -> None:
    # YAML reads {1: 0.03} with an integer key; a site's odour_grade may be 1 or "1"
    c = _condition(op=">", threshold={"param": "g", "default": 2, "values": {1: 0.03, 2: 0.06}}, clear=None)
    assert c.limits({"g": 1}) == (0.03, None) and c.limits({"g": "2"}) == (0.06, None)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "field": st.sampled_from(["fill_level_pct", ""]) | _JSON,
    "op": st.sampled_from([">", ">=", "<", "<=", "=="]) | _JSON,
    "threshold": st.sampled_from([90, 0.06, {"param": "g", "default": "1", "values": {"1": 1}}]) | _JSON,
    "clear": st.sampled_from([80, 95, {"param": "g", "default": "1", "values": {"1": 0.5}}]) | _JSON,
    "smoothing": st.sampled_from([{"median": 5}, {"mean": 3}, {"median": 0}]) | _JSON,
    "description": _JSON, "unverified": _JSON}) | _JSON)
def test_parser_never_raises_but_the_documented_error(raw: Any) -> None:
    try:
        parsed = parse_condition("test", raw, "test.yaml")
    except ConfigError as exc:
        assert " — fix: " in str(exc)
    else:
        parsed.episodes([1.0, 100.0, 50.0, 95.0, 96.0, 97.0], {"g": "1"})


# --- properties ------------------------------------------------------------------------------------

_VALUES = st.lists(st.floats(allow_nan=False, min_value=-1e9, max_value=1e9) | st.sampled_from([79, 80, 89, 90, 91]),
                   max_size=60)
_SMOOTHING = st.builds(Smoothing, st.sampled_from(["median", "mean"]), st.integers(1, 7))
_CONDITIONS = st.builds(
    lambda op, threshold, gap, smoothing, hysteresis: Condition(
        "p", "", "x", op, threshold, (threshold - gap if op in (">", ">=") else threshold + gap) if hysteresis
        else None, smoothing),
    st.sampled_from([">", ">=", "<", "<="]), st.sampled_from([0.0, 80.0, 90.0]), st.sampled_from([0.0, 5.0, 10.0]),
    _SMOOTHING, st.booleans())


@settings(max_examples=400, deadline=None)
@given(_CONDITIONS, _VALUES, st.dictionaries(st.text(max_size=5), _JSON, max_size=3))
def test_episodes_never_raise_and_are_ordered_and_disjoint(cond: Condition, values: list[float],
                                                           params: dict[str, Any]) -> None:
    found = cond.episodes(values, params)
    threshold, _ = cond.limits(params)
    smoothed = cond.smoothing.rolling(values)
    last_end = -1
    for first, last in found:
        assert last_end < first <= last < len(values)  # in order, not overlapping, inside the series
        value = smoothed[first]
        assert value is not None and cond.breaches(value, threshold)  # each starts at a breaching median
        last_end = last


def _t(i: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)


@settings(max_examples=400, deadline=None)
@given(_CONDITIONS, _VALUES)
def test_episodes_are_what_the_alert_evaluator_finds(cond: Condition, values: list[float]) -> None:
    """The ground truth (Condition.episodes) and the alerts (alerts/timeline.py on the same smoothed values, no
    verdict before a full window) agree reading for reading: a changed definition changes both."""
    threshold, clear = cond.limits()
    samples = [Sample(_t(i), _t(i), v, Status.SKIP if v is None else judge(v, cond.op, threshold, clear))
               for i, v in enumerate(cond.smoothing.rolling(values))]
    cursor = Cursor()
    episodes = advance(cursor, samples, Policy())
    still_open = cursor.episode()
    index = {_t(i): i for i in range(len(values))}
    spans = [(index[e.start], index[e.resolved_at] - 1) for e in episodes if e.resolved_at is not None]
    if still_open is not None:
        spans.append((index[still_open.start], len(values) - 1))
    assert spans == cond.episodes(values)


def test_definitions_file_is_the_one_next_to_the_module() -> None:
    assert DEFINITIONS_FILE.name == "signal_conditions.yaml" and DEFINITIONS_FILE.is_file()
