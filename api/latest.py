"""Shaping reading rows into the API's ``Reading``: common columns apart, the rest under ``values``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from psycopg import AsyncConnection

from sanitel.api.catalog import tables_of_kind
from sanitel.api.models import DeviceLatest, Reading
from sanitel.api.queries import readings as queries


def to_reading(row: dict[str, Any], kind: str, table: str) -> Reading:
    values = {k: v for k, v in row.items() if k not in queries.COMMON_COLUMNS}
    return Reading(device_id=row["device_id"], kind=kind, type=table, ts=row["ts"], seq=row["seq"],
                   received_at=row["received_at"], values=values, extra=row.get("extra"))


async def latest_for_device(conn: AsyncConnection, device_id: str, kind: str) -> list[Reading]:
    readings = []
    for table in tables_of_kind(kind):
        row = await queries.latest_of_device(conn, table, device_id)
        if row is not None:
            readings.append(to_reading(row, kind, table))
    return readings


async def latest_for_devices(conn: AsyncConnection, devices: list[dict[str, Any]]) -> list[DeviceLatest]:
    """The newest reading of each type for a page of devices: one query per reading table, not per device."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for device in devices:
        by_kind[device["kind"]].append(device["device_id"])
    found: dict[str, list[Reading]] = defaultdict(list)
    for kind, ids in by_kind.items():
        for table in tables_of_kind(kind):
            for row in await queries.latest_of_devices(conn, table, ids):
                found[row["device_id"]].append(to_reading(row, kind, table))
    return [DeviceLatest(device_id=d["device_id"], kind=d["kind"], site_id=d["site_id"],
                         readings=found.get(d["device_id"], [])) for d in devices]
