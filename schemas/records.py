"""What one message becomes: typed rows for the reading tables, or rejections with a reason.

ingest decodes messages into these; processors write the rows and dead-letter the rejections. They live in the
wire contract, below both stages, so the writer needs nothing from ingest. The reason codes are listed in
``docs/ingest.md``.

They are msgspec Structs, not dataclasses: one of each is made per message a collector takes, and a Struct is made in
C (issue 16: a ``Row`` 0.13 µs instead of a slotted dataclass's 0.46). ``Row`` and ``Rejection`` hold no reference
back to anything that holds them, so the cyclic garbage collector need not track them (``gc=False``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Rejection(msgspec.Struct, gc=False):
    reason_code: str
    reason: str
    index: int | None = None  # position of the reading in an array or gateway batch
    kind: str | None = None
    device_id: str | None = None


class Row(msgspec.Struct, gc=False):
    table: str
    kind: str
    device_id: str
    ts: datetime
    values: tuple[Any, ...]  # in schemas.readings.table_columns order
    index: int | None = None
    via_hj212: bool = False  # decoded from an HJ 212 frame: its PW is checked against the registry
    hj212_pw: str | None = None
    gateway_id: str | None = None  # from a gateway batch: the gateway that sent it (it may speak only for its devices)


class Decoded(msgspec.Struct):
    """Rows and rejections; both empty only for a message the collector skips by design (``ignored`` says why:
    a topic sanitel itself publishes, ``sanitation/{city}/alerts/…``), which is acknowledged and not stored."""

    rows: list[Row] = []  # (msgspec gives every instance its own empty list)
    rejections: list[Rejection] = []
    ignored: str | None = None
