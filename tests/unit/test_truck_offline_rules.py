"""truck_offline as data: the offline rule option ``only_while: on_shift`` (alerts/rules.py), the shipped rule
(alerts/rules/offline.yaml) and its inhibitions (alerts/rules/incidents.yaml). Errors name the file, the rule, the
key and the fix, like every rule option's."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from sanitel.alerts.incidents import load_incident_rules
from sanitel.alerts.rules import OFF_SHIFT, OfflineRule, default_rule_files, load_files, load_rule_file
from sanitel.errors import ConfigError
from sanitel.schemas.readings import ShiftState, TruckTelemetry

SHIPPED = load_files(default_rule_files())


def _rule(**changes: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": "my_truck_offline", "kind": "offline", "summary": "{device_id} silent",
                            "severity": "minor", "scope": {"kinds": ["truck"]}, "only_while": "on_shift",
                            "smoothing": "timeout"}
    rule.update(changes)
    return {k: v for k, v in rule.items() if v is not None}


def _load(tmp_path: Path, rule: dict[str, Any]) -> OfflineRule:
    path = tmp_path / "my_offline.yaml"
    path.write_text(yaml.safe_dump({"pack": "mine", "rules": [rule]}))
    (loaded,) = load_rule_file(path)
    assert isinstance(loaded, OfflineRule)
    return loaded


def test_the_shipped_rule_watches_trucks_only_while_on_shift() -> None:
    rule = SHIPPED.rules["truck_offline"]
    assert isinstance(rule, OfflineRule)
    assert rule.only_while == "on_shift" and rule.kinds() == ("truck",) and rule.smoothing is not None
    assert SHIPPED.origins["truck_offline"].endswith("offline.yaml")
    # the other offline rules keep watching everything that sends, without a shift
    for other in ("device_offline", "cems_offline"):
        found = SHIPPED.rules[other]
        assert isinstance(found, OfflineRule) and found.only_while is None and "truck" not in found.kinds()


def test_off_shift_is_the_contracts_shift_state() -> None:
    # the evaluator reads TruckTelemetry.shift_state; a renamed state would silently watch parked trucks again
    assert OFF_SHIFT in get_args(ShiftState)
    assert "shift_state" in TruckTelemetry.__struct_fields__


def test_a_valid_rule_loads_from_a_file(tmp_path: Path) -> None:
    assert _load(tmp_path, _rule()).only_while == "on_shift"
    assert _load(tmp_path, _rule(only_while=None, scope={"kinds": ["truck", "bin"]})).only_while is None


@pytest.mark.parametrize(("changes", "says", "fix"), [
    ({"scope": None}, "every device kind (no scope.kinds)", "fix: scope: {kinds: [truck]}"),
    ({"scope": {"kinds": ["truck", "bin"]}}, "covers kinds bin", "fix: scope: {kinds: [truck]}"),
    ({"scope": {"kinds": ["sweeper"]}}, "covers kinds sweeper", "fix: scope: {kinds: [truck]}"),
    ({"only_while": "on_duty"}, "'on_duty' is not allowed", "fix: use 'on_shift'"),
    ({"only_while": ["on_shift"]}, "only_while", "fix: use 'on_shift'"),
])
def test_errors_name_the_file_the_rule_the_key_and_the_fix(tmp_path: Path, changes: dict[str, Any], says: str,
                                                           fix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, _rule(**changes))
    message = str(caught.value)
    assert "my_offline.yaml: rule 'my_truck_offline': key 'only_while'" in message
    assert says in message and fix in message


def test_a_truck_offline_holds_the_trucks_position_checks_and_readings() -> None:
    rules = load_incident_rules()
    holding = {i.name: i for i in rules.inhibit if "truck_offline" in i.alerts}
    assert holding["device_offline_holds_truck_positions"].target.matches("truck_idle", None)
    assert holding["device_offline_holds_truck_positions"].target.matches("truck_off_route", None)
    assert holding["device_offline_holds_its_readings"].target.matches("some_truck_rule", "truck_telemetry")
    assert all(i.equal == ("device_id",) for i in holding.values())  # the truck's own alerts only
    # the silence is the root of the truck's incident, before the stale position it leaves behind
    assert rules.rank("truck_offline") < rules.rank("truck_off_route") < rules.rank("truck_idle")
