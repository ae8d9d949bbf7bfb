"""The contract documents in docs/contract are generated from schemas/ and must not go stale."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from sanitel.schemas.contract import OUT_DIR, asyncapi, rendered
from sanitel.schemas.readings import SweeperTelemetry


def test_checked_in_contract_is_current() -> None:
    files = rendered()
    assert files, "the contract renders no file"
    for name, text in files.items():
        path = OUT_DIR / name
        assert path.exists(), f"{path} is missing: run 'python -m sanitel.schemas.contract'"
        assert path.read_text() == text, f"{path} is stale: run 'python -m sanitel.schemas.contract' and commit"


def test_json_schema_states_physical_ranges_and_units() -> None:
    doc = json.loads((OUT_DIR / "sweeper_telemetry.schema.json").read_text())
    sweeper = doc["$defs"]["SweeperTelemetry"]
    soc = sweeper["properties"]["soc_pct"]["anyOf"][0]
    assert soc["minimum"] == 0 and soc["maximum"] == 100 and "%" in soc["description"]
    assert sweeper["required"] == ["ts"]


def test_asyncapi_names_every_channel() -> None:
    addresses = {c["address"] for c in asyncapi()["channels"].values()}
    assert "sanitation/{city}/sweeper/{device_id}/telemetry" in addresses
    assert "sanitation/{city}/gateway/{gateway_id}/batch" in addresses
    assert "sanitation/{city}/cems/{mn}/hj212" in addresses


@pytest.mark.parametrize("bad", [{"ts": 1, "soc_pct": 101}, {"soc_pct": 5}])
def test_schema_and_validator_agree_on_rejections(bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, SweeperTelemetry)
