"""incidents.yaml (alerts/incidents.py): the shipped file, errors that name the file, the key and the fix, and a property
test — whatever YAML it is given, the parser returns rules or raises IncidentRulesError, nothing else."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.alerts.incidents import (
    READINGS,
    IncidentRules,
    IncidentRulesError,
    Target,
    incident_file,
    load_incident_rules,
    parse_incident_rules,
    shipped_incident_file,
)
from sanitel.alerts.notify.outbox import Webhook
from sanitel.alerts.notify.webhook import group_body
from sanitel.alerts.rules import default_rule_files, load_files
from sanitel.errors import ConfigError

SHIPPED_TEXT = shipped_incident_file().read_text()
SHIPPED = yaml.safe_load(SHIPPED_TEXT)


def test_the_shipped_file_validates_with_the_issues_ranks_and_inhibitions() -> None:
    rules = load_incident_rules()
    assert rules.group_wait == timedelta(seconds=30) and rules.group_interval == timedelta(minutes=5)
    # a fire before the camera's smoke; a device gone quiet before what it would have measured; the furnace
    # before the stack's emissions
    assert rules.rank("bin_fire") < rules.rank("camera_smoke_fire") < rules.rank("bin_overflow")
    assert rules.rank("device_offline") < rules.rank("station_h2s")
    assert rules.rank("cems_furnace_below_850") < rules.rank("cems_nox_gb_1h") < rules.rank("some_new_rule")
    by_name = {r.name: r for r in rules.inhibit}
    assert set(by_name) == {"device_offline_holds_its_readings", "marked_shut_down_holds_emissions", "station_outage",
                            "device_offline_holds_truck_positions"}
    emissions = by_name["marked_shut_down_holds_emissions"].target
    assert emissions.matches("cems_nox_gb_1h", "cems_averages") and emissions.matches("cems_co_10min", None)
    assert not emissions.matches("cems_marked_hours_cap", None) and not emissions.matches("cems_mark_too_long", None)
    readings = by_name["device_offline_holds_its_readings"].target
    assert readings.matches("station_h2s", "station_telemetry") and not readings.matches("cems_nox_gb_1h", "cems_averages")


def test_the_rule_loader_reads_it_as_a_pack_without_rules() -> None:
    # every *.yaml of alerts/rules may be read as a rule pack by the rule loader: this one loads, adding nothing
    assert not any(origin.endswith("incidents.yaml") for origin in load_files(default_rule_files()).origins.values())


def test_a_file_in_rules_dir_replaces_the_shipped_one(tmp_path: Path) -> None:
    assert incident_file(tmp_path) == shipped_incident_file()
    (tmp_path / "incidents.yaml").write_text("rules: []\ngroup_wait: 0s\n")
    assert incident_file(tmp_path) == tmp_path / "incidents.yaml"
    # what it leaves out takes the defaults: a 5-minute group interval, sweepers their own place, no ranks, no
    # inhibitions
    assert load_incident_rules(tmp_path) == IncidentRules(group_wait=timedelta(0), origin=str(tmp_path / "incidents.yaml"))
    assert IncidentRules().own_place_kinds == ("sweeper",)


def _with(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(SHIPPED)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "key", "fix"), [
    ("group_wait", "soon", "group_wait", "write a duration like 30s, 5m"),
    ("group_interval", "2d", "group_interval", "use at most 1d"),
    ("root_cause_order", "bin fire!", "root_cause_order.0", "use letters, digits"),
    ("inhibit.0.source", {"alerts": ["device_offline"], "marks": ["shut"]}, "inhibit.0.source",
     "keep one source per rule"),
    ("inhibit.0.equal", [], "inhibit.0.equal", "write inhibit.0.equal: [<label name>, …]"),
    ("inhibit.1.source.marks", ["holiday"], "inhibit.1.source.marks.0", "use one of accident, bake_out"),
    ("inhibit.1.target", {"except": ["cems_x"]}, "inhibit.1.target", "add inhibit.1.target.rule_ids"),
    ("inhibit.0.target.rule_sources", ["bin_status", "emails"], "inhibit.0.target.rule_sources.1", "use one of"),
    ("inhibit.2.source.outage.more_than", 1.5, "inhibit.2.source.outage.more_than", "give a number such as 0.5"),
    ("inhibit.2.source.outage.min_offline", 0, "inhibit.2.source.outage.min_offline", "give e.g. 2"),
    ("inhibit.2.name", "station_outage", None, None),  # unchanged: still valid
    ("inhibit.2.name", "marked_shut_down_holds_emissions", "inhibit.2.name", "give each rule its own name"),
    ("inhibit.1.equal", ["device_id"], "inhibit.1.equal", "remove inhibit.1.equal"),
    ("rules", [{"id": "x"}], "rules", "keep 'rules: []' here"),
    ("grouping", 1, "grouping", "remove it"),
])
def test_errors_name_the_file_the_key_and_the_fix(path: str, value: Any, key: str | None, fix: str | None) -> None:
    data = _with(path, value)
    if key is None:
        parse_incident_rules(data, "site/incidents.yaml")
        return
    with pytest.raises(IncidentRulesError) as caught:
        parse_incident_rules(data, "site/incidents.yaml")
    message = str(caught.value)
    assert message.startswith(f"site/incidents.yaml: key '{key}': ") and " — fix: " in message
    assert fix is not None and fix in message.split(" — fix: ", 1)[1]


def test_unreadable_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "incidents.yaml").write_text("group_wait: [\n")
    with pytest.raises(IncidentRulesError, match=r"incidents.yaml: not valid YAML"):
        load_incident_rules(tmp_path)


def test_rule_sources_readings_means_every_reading_table() -> None:
    rules = parse_incident_rules({"inhibit": [{"name": "r", "source": {"alerts": ["a"]}, "equal": ["device_id"],
                                               "target": {"rule_sources": READINGS}}]})
    target = rules.inhibit[0].target
    assert {"bin_status", "station_telemetry", "cems_readings"} <= target.rule_sources
    assert "cems_averages" not in target.rule_sources
    assert Target(rule_ids=("cems_*",), except_ids=("cems_mark*",)).matches("cems_so2_daily", None)


# --- property: nothing but IncidentRulesError ------------------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=30), st.sampled_from(["30s", "5m", "1d", "2d", "readings", "device_offline",
                                                            "cems_*", "shut_down", "device_id", "-1s", "1e400"]))
_KEYS = st.sampled_from(["rules", "group_wait", "group_interval", "own_place_kinds", "root_cause_order", "inhibit",
                         "name", "source", "target", "equal", "alerts", "marks", "outage", "rules", "more_than",
                         "min_offline", "rule_ids", "except", "rule_sources", "x"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_KEYS | st.text(max_size=8), inner, max_size=5)),
                       max_leaves=25)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(f"{prefix}{k}")
            out += _paths(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(f"{prefix}{i}")
            out += _paths(v, f"{prefix}{i}.")
    return out


SHIPPED_PATHS = _paths(SHIPPED)


def _parses_or_says_why(data: Any) -> None:
    try:
        parsed = parse_incident_rules(data, "p/incidents.yaml")
    except IncidentRulesError as exc:
        assert str(exc).startswith("p/incidents.yaml: key '") and " — fix: " in str(exc)
        assert isinstance(exc, ConfigError)
    else:
        assert isinstance(parsed, IncidentRules)


@PROPERTY
@given(_VALUES)
def test_any_yaml_value_parses_or_raises_the_documented_error(data: Any) -> None:
    _parses_or_says_why(data)


@PROPERTY
@given(st.sampled_from(SHIPPED_PATHS), _VALUES)
def test_the_shipped_file_with_any_key_replaced_parses_or_raises_the_documented_error(path: str, value: Any) -> None:
    _parses_or_says_why(_with(path, value))


def test_a_webhook_post_lists_each_incidents_members() -> None:
    hook = Webhook("ops", "http://127.0.0.1/hook", (), ("rule_id", "site_id"), True, 3)
    fire = {"alert_id": 1, "rule_id": "bin_fire", "state": "firing", "summary": "fire", "labels": {"rule_id": "bin_fire"},
            "started_at": "t0", "resolved_at": None}
    smoke = {**fire, "alert_id": 2, "rule_id": "camera_smoke_fire", "state": "resolved", "resolved_at": "t1"}
    body = group_body(hook, [{**fire, "event": "firing", "severity": "critical", "incident_id": 5,
                              "incident": {"incident_id": 5, "title": "fire (+1 related)"}, "members": [fire, smoke]}],
                      "firing")
    assert [(a["alert_id"], a["status"], a["incident_id"]) for a in body["alerts"]] == [(1, "firing", 5),
                                                                                       (2, "resolved", 5)]
    assert body["incidents"] == [{"event": "firing", "incident_id": 5, "title": "fire (+1 related)"}]
