"""Rules as data: validation errors that name the file, the rule, the key and the fix; the shipped packs;
per-site limits; the timeline's semantics (pure); the ``sanitel rules`` commands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.alerts.evaluator import bucket_floor, bucket_next
from sanitel.alerts.rules import (
    JUDGEMENTS_TABLE,
    EmissionLimitKey,
    Lookup,
    OfflineRule,
    RuleSmoothing,
    ThresholdRule,
    WindowRule,
    default_rule_files,
    limits_for,
    load_files,
    load_files_tolerant,
    render_summary,
    site_params_problems,
    smoothing_text,
    stated_smoothing,
    validate_rule_dict,
)
from sanitel.alerts.timeline import Cursor, Policy, Sample, Status, advance, judge
from sanitel.cli import main
from sanitel.emission_limits import LIMIT_KEYS, default_limits, mee_rules
from sanitel.errors import ConfigError
from sanitel.signal_conditions import Smoothing, condition

BASE = {"id": "x.low_soc", "kind": "threshold", "summary": "SOC {value}", "severity": "major",
        "source": "sweeper_telemetry", "field": "soc_pct", "op": "<", "threshold": 20}


def _error(rule: dict[str, Any], origin: str = "packs/fleet.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        validate_rule_dict(rule, origin=origin)
    return str(info.value)


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"kind": "treshold"}, "kind", "set kind to one of threshold, window, rate, event_count, offline"),
    ({"severity": "urgent"}, "severity", "use 'critical', 'major', 'minor' or 'warning'"),
    ({"field": "soc"}, "field", "did you mean 'soc_pct'"),
    ({"field": "work_mode"}, "field", "is text; compare it in 'where'"),
    ({"source": "sweepers"}, "source", "is not a reading table"),
    ({"for": "five minutes"}, "for", "write a duration like 90s, 5m, 1h"),
    ({"threshold": "low"}, "threshold", "give a number, or {param:"),
    ({"clear": 15}, "clear", "clear 15 must be at or above threshold 20"),
    ({"clearing": 25}, "clearing", "remove it (did you mean 'clear'?)"),
    ({"summary": "SOC {soc}"}, "summary", "unknown placeholder {soc}"),
    # each of these passed the placeholder-name check before and crashed the evaluator when an alert was raised
    ({"summary": "SOC {value.foo}"}, "summary", "attribute and index access is not allowed — fix: write {value}"),
    ({"summary": "SOC {device_id[40]}"}, "summary", "attribute and index access is not allowed"),
    ({"summary": "SOC {value:{value.real}}"}, "summary", "placeholder {value.real}"),
    ({"summary": "SOC {}"}, "summary", "positional placeholder {}"),
    ({"summary": "SOC {value:d}"}, "summary", "cannot be rendered for a rule of kind threshold"),
    ({"summary": "SOC {device_id:.1f}"}, "summary", "Unknown format code 'f'"),
    ({"summary": "SOC {value!z}"}, "summary", "cannot be rendered"),
    ({"summary": "SOC {value:>99999999}"}, "summary", "width or precision above 999"),
    ({"id": "rule_quarantined"}, "id", "is the alert engine's own rule — fix: choose another id"),
    ({"where": {"speed": 0}}, "where.speed", "did you mean 'speed_kmh'"),
    ({"id": "Low SOC!"}, "id", "use lower-case letters"),
])
def test_errors_name_file_rule_key_and_fix(change: dict[str, Any], key: str, words: str) -> None:
    message = _error({**BASE, **change})
    assert message.startswith("packs/fleet.yaml: rule ")
    assert f"key '{key}'" in message and words in message and "— fix: " in message


def test_summaries_render_against_a_sample_of_their_kind() -> None:
    offline = {"id": "x.off", "kind": "offline", "severity": "minor"}
    validate_rule_dict({**offline, "summary": "{device_id}: silent for {timeout_s:.0f} s"})
    message = _error({**offline, "summary": "{device_id}: {value:.1f}"})  # an offline alert has no value
    assert "key 'summary'" in message and "rule of kind offline" in message and "— fix: " in message
    window = {"id": "x.w", "kind": "window", "severity": "minor", "source": "station_telemetry", "field": "noise_dba",
              "window": "1h", "threshold": {"param": "noise_class", "values": {"2": 60}, "default": "2"}}
    validate_rule_dict({**window, "summary": "{site_id} class {noise_class}: {value:.1f} dB over {window}"})


def test_missing_key_says_to_add_it() -> None:
    rule = dict(BASE)
    del rule["threshold"]
    assert "key 'threshold': Field required — fix: add 'threshold: …'" in _error(rule)


def test_window_rule_checks() -> None:
    window = {"id": "x.w", "kind": "window", "summary": "s", "severity": "minor", "source": "station_telemetry",
              "field": "noise_dba", "window": "10m", "threshold": 60}
    assert "'15m' is not allowed" in _error({**window, "window": "15m"})
    assert "early: true is only sound" in _error({**window, "early": True})  # an average can go down again
    assert "needs where: {pollutant: …, standard: …}" in _error(
        {**window, "source": "cems_averages", "field": "avg_zs_mg_m3"})
    assert "key 'local_hours'" in _error({**window, "local_hours": "6-22"})
    lookup = {**window, "threshold": {"param": "noise_class", "values": {0: 50}, "default": 3}}
    assert "key 'threshold.default'" in _error(lookup)


def test_file_errors_are_reported_together_with_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text("rules:\n  - {id: a.one, kind: threshold, summary: s, severity: hot, source: bin_status,"
                   " field: fill_level_pct, threshold: 90}\n  - {id: a.two, kind: offline, summary: s}\n")
    with pytest.raises(ConfigError) as info:
        load_files([bad])
    text = str(info.value)
    assert f"{bad}: rule 'a.one': key 'severity'" in text and f"{bad}: rule 'a.two': key 'severity'" in text
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("rules: [\n")
    with pytest.raises(ConfigError, match=f"{not_yaml}: not valid YAML"):
        load_files([not_yaml])


def test_the_engine_loads_every_rule_that_validates_and_names_the_rest(tmp_path: Path) -> None:
    (tmp_path / "site.yaml").write_text(
        "rules:\n  - {id: a.good, kind: offline, summary: s, severity: minor}\n"
        "  - {id: a.bad, kind: offline, summary: '{value.foo}', severity: minor}\n  - {kind: offline}\n")
    (tmp_path / "broken.yaml").write_text("rules: [\n")
    ruleset = load_files_tolerant(tmp_path)
    assert "a.good" in ruleset.rules and "device_offline" in ruleset.rules  # the shipped packs as well
    assert set(ruleset.problems) == {"a.bad", "file:site.yaml#3", "file:broken.yaml"}
    assert "rule 'a.bad': key 'summary'" in ruleset.problems["a.bad"]
    assert "not valid YAML" in ruleset.problems["file:broken.yaml"]
    # a file that cannot be read keeps the rules it had on the last load
    (tmp_path / "broken.yaml").write_text("rules:\n  - {id: b.kept, kind: offline, summary: s, severity: minor}\n")
    before = load_files_tolerant(tmp_path)
    (tmp_path / "broken.yaml").write_text("rules: [\n")
    assert "b.kept" in load_files_tolerant(tmp_path, before).rules
    assert "b.kept" not in load_files_tolerant(tmp_path).rules


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("rules:\n  - {id: dup, kind: offline, summary: s, severity: minor}\n")
    with pytest.raises(ConfigError, match=r"b.yaml: rule 'dup': key 'id': already defined in .*a.yaml"):
        load_files(sorted(tmp_path.glob("*.yaml")))


def test_shipped_packs_validate_and_cover_the_issue() -> None:
    ruleset = load_files(default_rule_files())
    ids = set(ruleset.rules)
    expected = {"sweeper_low_soc", "sweeper_battery_high_temp", "sweeper_insulation_alarm", "station_h2s",
                "station_nh3", "station_noise_day", "station_noise_night", "bin_overflow", "bin_fire",
                "camera_mis_sorting", "device_offline", "cems_furnace_below_850", "cems_co_10min",
                "cems_nox_half_hourly", "cems_nox_half_hourly_b", "cems_nox_daily", "cems_nox_daily_invalid",
                "cems_nox_gb_1h", "cems_nox_gb_24h", "cems_furnace_850_daily", "cems_marked_hours_cap",
                "cems_mark_too_long", "cems_marked_dust", "cems_co_eu_24h",
                *(f"cems_{p}_over_range" for p in ("dust", "so2", "nox", "co", "hcl"))}
    assert expected <= ids
    kinds = {r.kind for r in ruleset.rules.values()}
    assert kinds == {"threshold", "window", "rate", "event_count", "offline", "builtin"}
    # values from standards.md
    rules = ruleset.rules
    thresholds = {rule_id: r.threshold for rule_id, r in rules.items() if not isinstance(r, OfflineRule)}
    assert thresholds["cems_dust_gb_24h"] == 20 and rules["cems_dust_gb_1h"].unverified
    assert thresholds["cems_so2_half_hourly"] == 200 and thresholds["cems_so2_daily"] == 50
    assert thresholds["cems_co_10min"] == 150 and thresholds["cems_hf_half_hourly_b"] == 2
    h2s = rules["station_h2s"]
    assert isinstance(h2s, ThresholdRule) and isinstance(h2s.threshold, Lookup)
    assert h2s.threshold.values == {"1": 0.03, "2": 0.06, "2-existing": 0.10, "3": 0.32, "3-existing": 0.60}
    night = rules["station_noise_night"]
    assert isinstance(night, WindowRule) and night.local_hours == "22:00-06:00"
    assert isinstance(night.threshold, Lookup) and night.threshold.values["4"] == 55


def test_every_cems_emission_rule_reads_its_limit_from_the_kernel() -> None:
    rules = load_files(default_rule_files()).rules
    defaults = default_limits()
    averages = [r for r in rules.values() if isinstance(r, WindowRule) and r.source == "cems_averages"
                and r.aggregate == "avg"]
    assert len(averages) == 31  # 5 GB pollutants × 2 + 6 EU × 3 + CO 10-minute … and nothing judged twice
    for rule in averages:
        assert rule.emission_limit is not None, rule.id
        assert rule.threshold == defaults[(rule.emission_limit, str(rule.where["pollutant"]))], rule.id
        assert rule.confidence_interval_pct == 0  # the interval comes from the limit set too
    assert set(get_args(EmissionLimitKey)) == set(LIMIT_KEYS)
    # EU CO: the half-hourly and 10-minute averages are early signals, the daily one counts toward 97 % of days;
    # the directive's test is the 24-hour either/or
    assert {rules[r].severity for r in ("cems_co_half_hourly", "cems_co_10min", "cems_co_daily")} == {"warning"}
    assert "97 %-of-days" in rules["cems_co_daily"].summary and rules["cems_co_eu_24h"].severity == "major"
    judged = {r.id: r for r in rules.values() if isinstance(r, WindowRule) and r.source == JUDGEMENTS_TABLE}
    mee = mee_rules()
    assert judged["cems_furnace_850_daily"].threshold == mee.furnace_max_below_per_day == 5
    assert judged["cems_marked_hours_cap"].threshold == mee.marked_hours_per_year == 60
    assert judged["cems_marked_dust"].threshold == mee.marked_dust_1h_max_mg_m3 == 150
    assert {r for r, rule in judged.items() if rule.early} == set(judged) - {"cems_co_eu_24h"}
    assert all(rule.standard and (rule.unverified or "2010/75/EU" in rule.standard) for rule in judged.values())
    over = rules["cems_dust_over_range"]
    assert isinstance(over, ThresholdRule) and over.flagged == "T" and over.severity == "major"


EMISSION = {"id": "x.nox", "kind": "window", "summary": "{value:.1f} > {threshold:g}", "severity": "critical",
            "source": "cems_averages", "field": "avg_zs_mg_m3", "where": {"pollutant": "nox", "standard": "gb"},
            "window": "1d", "op": ">", "emission_limit": "gb.24h"}


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"threshold": 150}, "threshold", "150 is not the default gb.24h limit of nox in emission_limits.yaml, 250 — "
                                      "fix: remove 'threshold'"),
    ({"window": "1h"}, "window", "gb.24h is judged on 1d averages — fix: window: 1d"),
    ({"where": {"pollutant": "nox", "standard": "eu"}}, "where.standard", "fix: where: {standard: gb}"),
    ({"where": {"pollutant": "toc", "standard": "gb"}}, "emission_limit", "no gb.24h limit for 'toc' — fix: use one"),
    ({"where": {"pollutant": ["nox"], "standard": "gb"}}, "where.pollutant", "judges one pollutant"),
    ({"confidence_interval_pct": 20}, "confidence_interval_pct", "fix: remove confidence_interval_pct"),
    ({"mee_limit": "marked_hours_per_year"}, "mee_limit", "not both"),
])
def test_emission_limit_rules_name_file_rule_key_and_fix(change: dict[str, Any], key: str, words: str) -> None:
    message = _error({**EMISSION, **change}, origin="alerts/rules/cems.yaml")
    assert message.startswith("alerts/rules/cems.yaml: rule 'x.nox': ")
    assert f"key '{key}'" in message and words in message and "— fix: " in message


def test_judgement_rules_checks() -> None:
    judgement = {"id": "x.j", "kind": "window", "summary": "s", "severity": "major", "source": JUDGEMENTS_TABLE,
                 "field": "eu_co_24h_failed", "window": "1d", "op": ">=", "threshold": 1}
    rule = validate_rule_dict(judgement)
    assert isinstance(rule, WindowRule) and rule.threshold == 1
    assert "key 'early'" in _error({**judgement, "early": True})  # decided at the end of the day: never early
    assert "key 'window'" in _error({**judgement, "window": "1h"})
    assert "did you mean 'furnace_5min_below_850'" in _error({**judgement, "field": "furnace_5min"})
    mee = {**judgement, "field": "marked_hours_ytd", "mee_limit": "marked_hours_per_year", "threshold": 50}
    assert "50 is not marked_hours_per_year of mee_order_10" in _error(mee)
    assert "key 'accept_flags'" in _error({**BASE, "source": "cems_readings", "field": "dust_mg_m3",
                                           "flagged": "T", "accept_flags": ["N"]})


RULES = load_files(default_rule_files()).rules


def test_emission_limits_come_from_the_plant_and_line() -> None:
    gb, eu = RULES["cems_nox_gb_24h"], RULES["cems_nox_daily"]
    default = limits_for(gb, {})
    assert default is not None and (default.threshold, default.confidence_interval) == (250, 0)
    sites: list[tuple[str, dict[str, Any] | None]] = [
        ("p1", {"emission_limits": {"nox": {"gb.24h": 200, "eu.daily": 150}}}),
        ("p1-l1", {"emission_limits": {"permit": "permit 7", "nox": {"gb.24h": 120}}})]
    line = limits_for(gb, {}, sites)
    assert line is not None and line.threshold == 120 and line.context == {"limit_source": "p1-l1", "permit": "permit 7"}
    plant = limits_for(eu, {}, sites)  # the line sets no EU limit: the plant's holds, its CI 20 % × 150 = 30
    assert plant is not None and plant.threshold == 150 and plant.confidence_interval == pytest.approx(30.0)
    with pytest.raises(ConfigError, match=r'fix: \{"emission_limits": \{"nox": \{"gb.24h": 120\}\}\}'):
        limits_for(gb, {"limits": {"cems_nox_gb_24h": 120}}, sites)
    with pytest.raises(ConfigError, match="must be a positive number"):
        limits_for(gb, {}, [("p1", {"emission_limits": {"nox": {"gb.24h": 0}}, "x": None})])
    assert limits_for(gb, {"disabled_rules": ["cems_*"]}, [("p1", {"emission_limits": "broken"})]) is None
    assert site_params_problems("p1", {"limits": {"cems_nox_gb_24h": 1, "station_h2s": 0.05}}, RULES.values()) == [
        "sites.params of p1.limits.cems_nox_gb_24h: rule cems_nox_gb_24h judges an emission limit (gb.24h of nox), "
        "which is set per plant or line in emission_limits — the grammar the compliance report reads too — fix: "
        '{"emission_limits": {"nox": {"gb.24h": 1}}} instead of limits.cems_nox_gb_24h']


_SCALAR = st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=True) | st.text(max_size=8)
_JSON = _SCALAR | st.lists(_SCALAR, max_size=3) | st.dictionaries(st.text(max_size=8), _SCALAR, max_size=3)
# keys of the grammar, so generated params get deep into it: {emission_limits: {nox: {gb.24h: {value: …}}}}
_NEAR = st.sampled_from(["emission_limits", "limits", "permit", "nox", "dust", "gb.24h", "daily", "value",
                         "cems_nox_gb_24h", "cems_nox_daily", "station_h2s", "threshold", "disabled_rules"])


def _nested(depth: int) -> st.SearchStrategy[Any]:
    return _JSON if depth == 0 else _JSON | st.dictionaries(_NEAR, _nested(depth - 1), max_size=3)


_PARAMS = st.dictionaries(_NEAR | st.text(max_size=6), _nested(3), max_size=3)


@settings(max_examples=150, deadline=None)
@given(_PARAMS, _PARAMS)
def test_site_params_never_raise_but_the_documented_error(plant: dict[str, Any], line: dict[str, Any]) -> None:
    """Whatever a site's params hold, the emission rules get limits or a ConfigError naming why; the
    per-pass check returns its problems as text and never raises."""
    for rule_id in ("cems_nox_gb_24h", "cems_nox_daily", "cems_furnace_850_daily", "station_h2s"):
        try:
            limits = limits_for(RULES[rule_id], {**plant, **line}, [("p1", plant), ("p1-l1", line)])
        except ConfigError as exc:
            assert str(exc)
        else:
            assert limits is None or isinstance(limits.threshold, float)
            assert limits is None or limits.threshold > 0 or rule_id == "station_h2s"  # limits are positive
    assert all(isinstance(p, str) and p for p in site_params_problems("p1", plant, RULES.values()))


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "emission_limit": st.sampled_from(["gb.1h", "gb.24h", "eu.daily", "eu.10min", "eu.half_hour_b", "x"]) | _JSON,
    "mee_limit": st.sampled_from(["marked_hours_per_year", "furnace_min_temp_c", "nope"]) | _JSON,
    "threshold": st.sampled_from([250, 250.0, 5, 60, "250", True]) | _JSON,
    "where": st.fixed_dictionaries({}, optional={"pollutant": st.sampled_from(["nox", "co", "toc"]) | _JSON,
                                                 "standard": st.sampled_from(["gb", "eu"]) | _JSON}) | _JSON,
    "source": st.sampled_from(["cems_averages", JUDGEMENTS_TABLE, "cems_readings"]),
    "field": st.sampled_from(["avg_zs_mg_m3", "marked_hours_ytd", "dust_mg_m3"]),
    "window": st.sampled_from(["1h", "1d", "30m"]), "early": st.booleans(),
    "flagged": st.sampled_from(["T", "N", "Q"]) | _JSON}))
def test_rule_validation_never_raises_but_the_documented_error(change: dict[str, Any]) -> None:
    for kind in ("window", "threshold"):
        try:
            validate_rule_dict({**EMISSION, "kind": kind, **change})
        except ConfigError as exc:
            assert " — fix: " in str(exc)


def test_limits_per_site_lookup_override_and_disable() -> None:
    h2s = load_files(default_rule_files()).rules["station_h2s"]
    default = limits_for(h2s, {})
    assert default is not None and default.threshold == 0.06
    grade1 = limits_for(h2s, {"odour_grade": 1})
    assert grade1 is not None and grade1.threshold == 0.03 and grade1.clear == 0.025
    assert grade1.context == {"odour_grade": 1}
    permit = limits_for(h2s, {"limits": {"station_h2s": 0.04}})
    assert permit is not None and permit.threshold == 0.04 and permit.clear == pytest.approx(0.04 * 0.05 / 0.06)
    explicit = limits_for(h2s, {"limits": {"station_h2s": {"threshold": 0.05, "clear": 0.045}}})
    assert explicit is not None and (explicit.threshold, explicit.clear) == (0.05, 0.045)
    assert limits_for(h2s, {"disabled_rules": ["station_*"]}) is None


def test_summary_rendering_tolerates_missing_values() -> None:
    rule = validate_rule_dict({**BASE, "summary": "{device_id}: {value:.1f} < {threshold}"})
    assert render_summary(rule, {"device_id": "sw-1", "value": 12.34, "threshold": 20}) == "sw-1: 12.3 < 20"
    assert render_summary(rule, {"device_id": "sw-1", "value": None, "threshold": 20}) == rule.summary


# --- noisy signals: conditions and smoothing (issue 18) ---------------------------------------------

BIN = {"id": "x.full", "kind": "threshold", "summary": "{device_id}: {value:.0f} % ({smoothing})",
       "severity": "minor", "source": "bin_status", "condition": "bin_full"}
_OWN_PACKS = ("sorting_point.yaml", "transfer_station.yaml", "sweeper.yaml", "camera.yaml", "offline.yaml")


def test_every_shipped_rule_states_its_smoothing() -> None:
    """Threshold, rate and offline rules state it (``smoothing:``, a condition's); a window rule's aggregate over
    its window is its smoothing unless it states another."""
    ruleset = load_files(default_rule_files())
    ours = {r for r, origin in ruleset.origins.items() if Path(origin).name != "cems.yaml"}  # cems: below
    assert len(ours) >= 18 and {Path(ruleset.origins[r]).name for r in ours} >= set(_OWN_PACKS)
    assert {r for r in ours if stated_smoothing(ruleset.rules[r]) is None} == set()
    texts = {r: smoothing_text(ruleset.rules[r]) for r in ours}
    assert texts["bin_overflow"] == texts["station_h2s"] == texts["station_nh3"] == "median of the last 5 readings"
    assert texts["station_noise_night"] == "Leq (energy mean) over 10m windows"
    assert texts["station_leachate_high"] == "held for 5m" and texts["sweeper_insulation_alarm"] == (
        "2 consecutive readings")
    assert str(texts["bin_fire"]).startswith("no smoothing: the bin controller's own fire alarm")
    assert texts["device_offline"] == "silent for longer than the timeout"


def test_every_shipped_cems_rule_states_its_smoothing() -> None:
    ruleset = load_files(default_rule_files())
    cems = [r for r, origin in ruleset.origins.items() if Path(origin).name == "cems.yaml"]
    assert [r for r in cems if stated_smoothing(ruleset.rules[r]) is None] == []


def test_a_rule_naming_a_condition_takes_its_definition() -> None:
    full = condition("bin_full")
    rule = RULES["bin_overflow"]
    assert isinstance(rule, ThresholdRule) and rule.condition == "bin_full"
    assert (rule.field, rule.op, rule.threshold, rule.clear) == (full.field, full.op, 90, 80)
    assert rule.smoothing is not None and rule.smoothing.rolling == full.smoothing == Smoothing("median", 5)
    assert (rule.for_, rule.for_readings) == (timedelta(0), 1)  # the median is the smoothing, not for_readings 3
    h2s, exceeded = RULES["station_h2s"], condition("station_h2s_exceeded")
    assert isinstance(h2s, ThresholdRule) and isinstance(h2s.threshold, Lookup) and isinstance(h2s.clear, Lookup)
    for grade in ("1", "2", "2-existing", "3", "3-existing"):
        site = {"odour_grade": grade}
        limits = limits_for(h2s, site)
        assert limits is not None and (limits.threshold, limits.clear) == exceeded.limits(site)
    assert h2s.for_ == timedelta(0)  # no longer `for: 5m`: the median of 5 one-minute readings
    # repeating the condition's values is allowed (an API client may send the rule back as it was shown)
    again = validate_rule_dict({**BIN, "field": "fill_level_pct", "op": ">=", "threshold": 90, "clear": 80.0,
                                "smoothing": {"median": 5}})
    assert again == validate_rule_dict(BIN)
    shown = rule.model_dump(by_alias=True, exclude_defaults=True)
    assert shown["smoothing"] == {"median": 5} and validate_rule_dict(shown) == rule


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"threshold": 85}, "threshold", "85 is not condition bin_full's 90.0 (signal_conditions.yaml) — fix: remove "
                                     "'threshold' (the rule takes it from the condition)"),
    ({"clear": 50}, "clear", "50 is not condition bin_full's 80.0"),
    ({"op": ">"}, "op", "'>' is not condition bin_full's '>='"),
    ({"field": "battery_pct"}, "field", "is not condition bin_full's 'fill_level_pct'"),
    ({"smoothing": {"median": 3}}, "smoothing", "{'median': 3} is not condition bin_full's {'median': 5}"),
    ({"smoothing": "for"}, "smoothing", "is not condition bin_full's"),
    ({"for_readings": 3}, "for_readings", "judged by the condition's own smoothing (median of the last 5 readings); "
                                          "'for_readings' would make it disagree with the ground truth"),
    ({"for": "5m"}, "for", "'for' would make it disagree"),
    ({"bit": 1}, "bit", "fix: remove 'bit'"),
    ({"condition": "bin_fool"}, "condition", "'bin_fool' is not a condition of signal_conditions.yaml — fix: use one "
                                             "of bin_full, station_h2s_exceeded"),
    ({"condition": ["bin_full"]}, "condition", "is not a condition"),
])
def test_condition_errors_name_file_rule_key_and_fix(change: dict[str, Any], key: str, words: str) -> None:
    message = _error({**BIN, **change}, origin="alerts/rules/sorting_point.yaml")
    assert message.startswith("alerts/rules/sorting_point.yaml: rule 'x.full': ")
    assert f"key '{key}'" in message and words in message and "— fix: " in message


@pytest.mark.parametrize(("change", "words"), [
    ({"smoothing": "median"}, "'median' is not a smoothing — fix: write {median: N} or {mean: N}"),
    ({"smoothing": {"median": 0}}, "is not a smoothing"),
    ({"smoothing": {"none": " "}}, "is not a smoothing — fix:"),
    ({"smoothing": "for"}, "'for' says the rule must hold a while, but it has no 'for' — fix: add 'for: 5m'"),
    ({"smoothing": "for_readings", "for_readings": 1}, "no 'for_readings' above 1"),
    ({"smoothing": "window"}, "'window' is a window rule's aggregate"),
    ({"smoothing": "timeout"}, "'timeout' is an offline rule's"),
    ({"smoothing": {"mean": 3}, "bit": 2}, "a rolling mean smooths the value of a threshold rule (not a flag, a bit"),
])
def test_smoothing_errors_name_the_key_and_the_fix(change: dict[str, Any], words: str) -> None:
    message = _error({**BASE, **change})
    assert "key 'smoothing'" in message and words in message and "— fix: " in message


def test_smoothing_of_each_kind() -> None:
    rate = {"id": "x.r", "kind": "rate", "summary": "s", "severity": "minor", "source": "sweeper_telemetry",
            "field": "battery_temp_max_c", "over": "5m", "threshold": 2}
    assert "a rolling median smooths the value of a threshold rule" in _error({**rate, "smoothing": {"median": 5}})
    assert smoothing_text(validate_rule_dict({**rate, "for": "2m", "smoothing": "for"})) == "held for 2m"
    own = validate_rule_dict({**BASE, "smoothing": {"mean": 3}})  # a rolling mean without a condition
    assert own.smoothing == RuleSmoothing(how="mean", readings=3) and smoothing_text(own) == (
        "mean of the last 3 readings")
    assert stated_smoothing(validate_rule_dict(BASE)) is None  # not stated (an API rule may leave it out)
    window = validate_rule_dict({"id": "x.w", "kind": "window", "summary": "s", "severity": "minor",
                                 "source": "station_telemetry", "field": "h2s_mg_m3", "window": "30m", "threshold": 1})
    assert smoothing_text(window) == "average over 30m windows"  # its aggregate, stated or not
    offline = validate_rule_dict({"id": "x.o", "kind": "offline", "summary": "s", "severity": "minor",
                                  "smoothing": {"none": "a heartbeat"}})
    assert offline.model_dump(by_alias=True, exclude_defaults=True)["smoothing"] == {"none": "a heartbeat"}


def test_site_override_of_a_condition_rule_moves_its_threshold_and_scales_its_clear() -> None:
    rule = RULES["bin_overflow"]
    default = limits_for(rule, {})
    assert default is not None and (default.threshold, default.clear) == (90, 80)
    stricter = limits_for(rule, {"limits": {"bin_overflow": 85}})  # clear 85 × 80 / 90 = 75.56
    assert stricter is not None and stricter.threshold == 85 and stricter.clear == pytest.approx(75.556, abs=1e-3)
    # "only the collection round ends it", as the rule was before: an explicit clear level of 50 %
    emptied = limits_for(rule, {"limits": {"bin_overflow": {"threshold": 90, "clear": 50}}})
    assert emptied is not None and (emptied.threshold, emptied.clear) == (90, 50)


def test_summary_says_the_value_is_smoothed() -> None:
    rule = RULES["bin_overflow"]
    context = {"device_id": "bin-1", "value": 91.0, "smoothing": smoothing_text(rule)}
    assert render_summary(rule, context) == "bin-1: bin 91 % full (median of the last 5 readings)"


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "condition": st.sampled_from(["bin_full", "station_h2s_exceeded", "nope"]) | _JSON,
    "smoothing": st.sampled_from([{"median": 5}, {"mean": 2}, "for", "for_readings", "window", "timeout",
                                  {"none": "why"}, {"none": ""}, "none"]) | _JSON,
    "threshold": st.sampled_from([90, 90.0, 85, {"param": "odour_grade", "default": "2", "values": {"2": 0.06}}])
    | _JSON,
    "clear": st.sampled_from([80, 50, None]) | _JSON, "op": st.sampled_from([">=", ">", "=="]) | _JSON,
    "field": st.sampled_from(["fill_level_pct", "h2s_mg_m3"]) | _JSON,
    "for": st.sampled_from(["0s", "5m", 0]) | _JSON, "for_readings": st.sampled_from([1, 3]) | _JSON,
    "source": st.sampled_from(["bin_status", "station_telemetry"])}))
def test_condition_and_smoothing_never_raise_but_the_documented_error(change: dict[str, Any]) -> None:
    for kind in ("threshold", "rate", "window", "offline"):
        try:
            validate_rule_dict({**BIN, "kind": kind, "over": "5m", "window": "1h", **change})
        except ConfigError as exc:
            assert " — fix: " in str(exc)


# --- the timeline (pure) ---------------------------------------------------------------------------

def _t(minutes: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


def _samples(values: list[float], op: str = ">", threshold: float = 10, clear: float | None = None) -> list[Sample]:
    return [Sample(_t(i), _t(i), v, judge(v, op, threshold, clear)) for i, v in enumerate(values)]


def test_judge_with_hysteresis() -> None:
    assert [judge(v, ">", 10, 8) for v in (11, 9, 8, 7)] == [Status.BREACH, Status.HOLD, Status.CLEAR, Status.CLEAR]
    assert judge(None, ">", 10, None) is Status.SKIP


def test_hysteresis_holds_through_the_dead_band() -> None:
    cursor = Cursor()
    ended = advance(cursor, _samples([5, 11, 9, 9, 11, 9, 7], clear=8), Policy(for_=timedelta(minutes=3)))
    (episode,) = ended
    assert (episode.start, episode.fire_at, episode.resolved_at, episode.peak) == (_t(1), _t(4), _t(6), 11)


def test_skip_neither_extends_nor_ends() -> None:
    cursor = Cursor()
    samples = [*_samples([11, 11]), Sample(_t(2), _t(2), 99, Status.SKIP), Sample(_t(5), _t(5), 99, Status.SKIP)]
    advance(cursor, samples, Policy(for_=timedelta(minutes=3)))
    open_episode = cursor.episode()
    assert open_episode is not None and open_episode.fire_at is None  # 1 minute of evidence, not 5


def test_cursor_round_trips_through_json() -> None:
    cursor = Cursor()
    advance(cursor, _samples([11, 11, 11]), Policy(for_=timedelta(minutes=1)))
    again = Cursor.from_json(cursor.to_json())
    assert again == cursor and again.episode() == cursor.episode()


def test_clock_aligned_buckets_in_local_time() -> None:
    # 15:59 UTC is 23:59 in Shanghai: the day began at 16:00 UTC the day before
    ts = datetime(2026, 1, 1, 15, 59, tzinfo=UTC)
    day = bucket_floor(ts, timedelta(days=1), "Asia/Shanghai")
    assert day == datetime(2025, 12, 31, 16, 0, tzinfo=UTC)
    assert bucket_next(day, timedelta(days=1), "Asia/Shanghai") == datetime(2026, 1, 1, 16, 0, tzinfo=UTC)
    assert bucket_floor(ts, timedelta(minutes=30), "Asia/Shanghai") == datetime(2026, 1, 1, 15, 30, tzinfo=UTC)
    # Kathmandu is UTC+5:45: local hours start at :15 UTC
    assert bucket_floor(ts, timedelta(hours=1), "Asia/Kathmandu") == datetime(2026, 1, 1, 15, 15, tzinfo=UTC)


# --- the command line --------------------------------------------------------------------------------

def test_rules_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate"]) == 0
    assert "ok: " in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {id: a, kind: window, summary: s, severity: minor}\n")
    assert main(["rules", "validate", str(bad)]) == 2
    assert f"{bad}: rule 'a': key 'source'" in capsys.readouterr().err


def test_rules_list_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list", "--kind", "rate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["ID", "KIND", "SEVERITY"] and out[1].startswith("sweeper_battery_temp_rising")
