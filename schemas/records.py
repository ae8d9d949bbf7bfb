"""What one message becomes: typed rows for the reading tables, or rejections with a reason.

ingest decodes messages into these; processors write the rows and dead-letter the rejections. They live in the
wire contract, below both stages, so the writer needs nothing from ingest. The reason codes are listed in
``docs/ingest.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Rejection:
    reason_code: str
    reason: str
    index: int | None = None  # position of the reading in an array or gateway batch
    kind: str | None = None
    device_id: str | None = None


@dataclass(slots=True)
class Row:
    table: str
    kind: str
    device_id: str
    ts: datetime
    values: tuple[Any, ...]  # in schemas.readings.table_columns order
    index: int | None = None
    via_hj212: bool = False  # decoded from an HJ 212 frame: its PW is checked against the registry
    hj212_pw: str | None = None
    gateway_id: str | None = None  # from a gateway batch: the gateway that sent it (it may speak only for its devices)


@dataclass(slots=True)
class Decoded:
    """Rows and rejections; both empty only for a message the collector skips by design (``ignored`` says why:
    a topic sanitel itself publishes, ``sanitation/{city}/alerts/…``), which is acknowledged and not stored."""

    rows: list[Row] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    ignored: str | None = None
