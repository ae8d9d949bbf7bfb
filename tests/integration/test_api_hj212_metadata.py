"""POST /devices refuses HJ 212 settings in ``metadata`` that the listener could not use (issue 13 item 5): a
``gas_is_dry`` that is not a boolean, a ``timezone`` that is not an IANA name — 422 naming the key and the fix,
before anything is stored. Usable ones are stored as given and read by the registry (the listener's lookup)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.processors.registry import DeviceRegistry
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key
from tests.support.mqtt_tools import count


@pytest.fixture
def client(fresh_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as c:
        yield c


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"gas_is_dry": "false"}, "gas_is_dry", "JSON boolean"),  # a string, however it reads
    ({"gas_is_dry": 0}, "gas_is_dry", "JSON boolean"),
    ({"gas_is_dry": None}, "gas_is_dry", "false when it measures wet gas"),
    ({"timezone": "Asia/Tokio"}, "timezone", "IANA time-zone name such as 'Asia/Shanghai'"),
    ({"timezone": "UTC+8"}, "timezone", "leave it out to use the time zone of the device's plant"),
    ({"timezone": "localtime"}, "timezone", "IANA"),  # zoneinfo loads it: the API host's own zone
    ({"timezone": ["Asia/Tokyo"]}, "timezone", "a JSON array"),
]


def test_unusable_hj212_settings_are_refused_naming_the_key_and_the_fix(client: TestClient, fresh_db: str) -> None:
    admin = auth(mint_key(fresh_db, "admin"))
    for metadata, key, says in REFUSED:
        body = {"device_id": "DAU-1", "kind": "cems", "metadata": metadata, "hj212_password": "pw123456"}
        error = assert_error(client.post("/devices", json=body, headers=admin), 422, "validation_error",
                             f"body.metadata.{key}")
        assert says in error["message"] and f"metadata.{key}" in error["message"], metadata
    assert count(fresh_db, "SELECT count(*) FROM devices") == 0


def test_usable_hj212_settings_are_stored_and_reach_the_registry(client: TestClient, fresh_db: str) -> None:
    admin = auth(mint_key(fresh_db, "admin"))
    body = {"device_id": "DAU-2", "kind": "cems", "hj212_password": "pw123456",
            "metadata": {"gas_is_dry": False, "timezone": "Asia/Tokyo", "vendor": "SDL"}}
    response = client.post("/devices", json=body, headers=admin)
    assert response.status_code == 201, response.text
    settings = DeviceRegistry(fresh_db).lookup(["DAU-2"])["DAU-2"].hj212
    assert (settings.timezone, settings.gas_is_dry, settings.problems) == ("Asia/Tokyo", False, ())
