"""Derived values applied to rows on their way into TimescaleDB."""

from __future__ import annotations

from typing import Any

from sanitel.schemas.readings import BinStatus, table_columns

_FILL = table_columns(BinStatus).index("fill_level_pct")
_EXTRA = table_columns(BinStatus).index("extra")


def clamp_bin_fill_level(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Ultrasonic fill sensors read a little below 0 % or above 100 %: store the clamped value and keep the
    raw reading in ``extra.raw_fill_level_pct`` so nothing is lost."""
    raw = values[_FILL]
    if raw is None or 0.0 <= raw <= 100.0:
        return values
    extra = dict(values[_EXTRA] or {})
    extra["raw_fill_level_pct"] = raw
    row = list(values)
    row[_FILL] = min(100.0, max(0.0, raw))
    row[_EXTRA] = extra
    return tuple(row)


DERIVATIONS = {BinStatus.table: clamp_bin_fill_level}
