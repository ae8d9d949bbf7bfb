"""Scenarios are data: the shipped ones load, and a bad file is rejected naming the file, the key and
the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitel.errors import ConfigError
from sanitel.simulators.run import Simulation, inventory
from sanitel.simulators.scenario import available_scenarios, load_scenario


def test_shipped_scenarios_have_the_documented_sizes() -> None:
    assert set(available_scenarios()) >= {"demo", "district", "shenzhen"}
    demo, district, shenzhen = (load_scenario(n).device_counts() for n in ("demo", "district", "shenzhen"))
    assert 10 <= sum(demo.values()) < 100
    assert 100 <= district["sweeper"] + district["transfer_station"] + district["bin"] // 4 < 1000
    assert shenzhen["sweeper"] == 1500 and shenzhen["transfer_station"] == 900
    assert shenzhen["bin"] == 22_000 * 4 and shenzhen["camera"] == 22_000
    assert len(load_scenario("shenzhen").plants) == 5


def test_scaled_keeps_every_fleet_and_the_plants() -> None:
    tiny = load_scenario("shenzhen").scaled(0.001)
    counts = tiny.device_counts()
    assert counts["sweeper"] == 2 and counts["transfer_station"] == 1 and counts["bin"] == 22 * 4
    assert counts["cems"] == load_scenario("shenzhen").device_counts()["cems"]
    with pytest.raises(ConfigError, match="must be above 0"):
        load_scenario("demo").scaled(0)


def test_inventory_lists_readable_stable_ids() -> None:
    devices = inventory("demo")
    ids = {d["device_id"] for d in devices}
    assert {"sw-0001", "ts-0001", "bin-00001-k", "bin-00001-h", "cam-00001", "cems-p1-l1", "cems-p2-l1"} <= ids
    cems = next(d for d in devices if d["device_id"] == "cems-p2-l1")
    assert cems["metadata"] == {"plant_id": "p2", "line_id": "p2-l1", "protocol": "hj212", "mn": "cems-p2-l1"}
    assert next(d for d in devices if d["device_id"] == "bin-00001-k")["metadata"]["point_id"] == "sp-00001"
    assert {d["gateway_id"] for d in devices} == {None}  # the demo's points have no gateway


def test_inventory_puts_a_points_bins_behind_its_gateway() -> None:
    """Registering the inventory must put each bin behind the gateway whose batches carry its readings (the
    collector takes a batch reading only from a device registered behind that gateway); cameras and every
    other device publish on their own topics."""
    devices = inventory("district")
    behind = {d["device_id"]: d["gateway_id"] for d in devices if d["gateway_id"]}
    assert behind and all(d["kind"] == "bin" for d in devices if d["device_id"] in behind)
    assert behind["bin-00001-k"] == behind["bin-00001-h"] == "gw-00001"
    assert next(d for d in devices if d["device_id"] == "cam-00001")["gateway_id"] is None
    # the same gateways the simulator's gateway senders log in as
    sim = Simulation(load_scenario("district"), seed=0, start=0.0, duration_s=0.0, faults=[])
    assert set(behind.values()) == {s.sender_id for s in sim.senders() if s.section == "gateways"}
    assert set(behind) == sim.fleet.gateway_devices


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


VALID = """
name: mine
districts: [{id: futian, lat: 22.54, lon: 114.05}]
sweepers: {count: 2, shifts: ["05:00-11:00"]}
"""


def test_a_valid_file_loads_with_times_of_day_as_times(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID + "sorting_points: {count: 1, collection_times: [10:00, 22:30]}\n"))
    assert scenario.name == "mine"
    assert scenario.sweepers.shifts == [(5 * 3600.0, 11 * 3600.0)]
    # unquoted 10:00 is a time of day, not YAML 1.1's base-60 integer 600
    assert scenario.sorting_points.collection_times == [10 * 3600.0, 22.5 * 3600.0]


@pytest.mark.parametrize(("text", "expected"), [
    (VALID.replace("count: 2", "cout: 2"), r"bad\.yaml: sweepers\.cout: unknown key; did you mean 'count'\?"),
    (VALID + "stations: {interval: 10 sec}\n",
     r"bad\.yaml: stations\.interval: '10 sec' is not a duration; use e\.g\. 30s, 15m, 2h or 1d"),
    (VALID.replace('["05:00-11:00"]', '["5 to 11"]'),
     r"sweepers\.shifts\.0: '5 to 11' is not a time window; use HH:MM-HH:MM"),
    (VALID + "sorting_points: {count: -3}\n", r"sorting_points\.count: Input should be greater than or equal to 0"),
    (VALID + "sorting_points: {categories: [kitchen, glass]}\n",
     r"sorting_points\.categories\.1: Input should be 'kitchen', 'recyclable', 'hazardous' or 'other'"),
    (VALID.replace("sweepers: {count: 2", "sweepers: {districts: [nanshan], count: 2"),
     r"sweepers\.districts names 'nanshan', which is not under 'districts' \(known: futian\)"),
    (VALID + "timezone: Asia/Shenzhen\n", r"timezone: 'Asia/Shenzhen' is not a known time zone; use an IANA name"),
    (VALID + "plants: [{id: p1, lines: 2, outages: [{line: 3, at: '10:00', duration: 6h}]}]\n",
     r"plants\.0: outages\[0\]\.line is 3 but plant p1 has 2 line\(s\); use 1\.\.2"),
    (VALID + "plants: [{id: p1, maintenance: [{line: 1, duration: 1h}]}]\n",
     r"plants\.0\.maintenance\.0: give exactly one of 'after'"),
    (VALID + "faults: [{kind: silense}]\n", r"faults\.0\.kind: Input should be 'spike', 'stuck_sensor', 'silence'"),
    (VALID + "start: 2026-11-22T00:00:00\n", r"start: .* has no UTC offset; add one"),
    ("name: x\nsweepers: {count: 1}\n", r"sweepers need at least one entry under 'districts'"),
])
def test_bad_files_name_the_file_the_key_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_scenario(write(tmp_path, text))
    assert str(caught.value).startswith(str(tmp_path / "bad.yaml"))


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: not valid YAML \(expected .,. or .\]., but got .:.\)"):
        load_scenario(write(tmp_path, "name: x\nsweepers:\n  count: [1\n  interval: 10s\n"))
    with pytest.raises(ConfigError, match="a scenario is a mapping of keys"):
        load_scenario(write(tmp_path, "- just\n- a list\n"))


def test_unknown_names_and_missing_files_list_what_exists(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown scenario 'shenzen'; did you mean 'shenzhen'\?.*demo, district"):
        load_scenario("shenzen")
    with pytest.raises(ConfigError, match="scenario file does not exist"):
        load_scenario(tmp_path / "nowhere.yaml")
