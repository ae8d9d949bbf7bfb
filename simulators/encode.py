"""Readings → bytes on the wire: JSON (msgspec) for device and gateway topics, HJ 212-2017 frames for
CEMS units configured with ``protocol: hj212``.

Models keep ``ts`` as float epoch seconds; here it becomes RFC 3339 UTC with milliseconds
(``2026-11-22T07:00:00.123Z``) or epoch milliseconds, per device kind as the scenario says.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import Emission
from sanitel.simulators.models.cems import hj212_frame


class TimestampFormatter:
    """RFC 3339 strings, with the second-resolution prefix cached: formatting a date is the costliest
    part of encoding a small reading, and consecutive readings share the same second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def rfc3339(self, t: float) -> str:
        millis = round(t * 1000.0)
        second, ms = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{ms:03d}Z"


def epoch_ms(t: float) -> int:
    return round(t * 1000.0)


class Encoder:
    def __init__(self, ts_formats: dict[str, str], local: LocalTime,
                 hj212_units: dict[str, tuple[str, str]] | None = None) -> None:
        """``hj212_units``: CEMS device id → (MN, password) of units that speak HJ 212."""
        self.hj212_units = hj212_units or {}
        self.epoch_kinds = frozenset(k for k, f in ts_formats.items() if f == "epoch_ms")
        self.local = local
        self.stamps = TimestampFormatter()
        self._json = msgspec.json.Encoder()

    def stamp(self, kind: str, t: float) -> str | int:
        return epoch_ms(t) if kind in self.epoch_kinds else self.stamps.rfc3339(t)

    def encode(self, emission: Emission, body: dict[str, Any]) -> bytes:
        if emission.fmt == "hj212":
            mn, password = self.hj212_units[emission.device_id]
            return hj212_frame(body, mn=mn, password=password, local=self.local)
        if emission.fmt == "batch":
            for item in body["readings"]:
                item["ts"] = self.stamp(item["kind"], item["ts"])
        elif emission.kind in self.epoch_kinds:
            body["ts"] = epoch_ms(body["ts"])
        else:
            body["ts"] = self.stamps.rfc3339(body["ts"])
        return self._json.encode(body)
