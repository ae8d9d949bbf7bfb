"""Which metrics each device kind has, derived from the wire contract (``schemas.readings``).

A metric is a numeric (or boolean) field of a reading type; its table is the type's hypertable. Column
names used in SQL come only from this catalogue, never from the request, so they are safe to quote in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import cast

import msgspec.inspect as mi

from sanitel.schemas.readings import READING_TYPES, Reading, value_fields

_UNIT = re.compile(r"\[([^\]]+)\]\s*$")
_NUMERIC = (mi.FloatType, mi.IntType)


@dataclass(frozen=True)
class Metric:
    kind: str
    table: str
    name: str
    unit: str | None
    description: str | None
    is_bool: bool  # aggregated as the fraction of readings where it was true


def _base_type(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        t = next((m for m in t.types if not isinstance(m, mi.NoneType)), t)
    return t


def _metrics_of(reading_type: type[Reading]) -> list[Metric]:
    wanted = set(value_fields(reading_type))
    found = []
    for field in cast(mi.StructType, mi.type_info(reading_type)).fields:  # a Reading is a Struct
        if field.name not in wanted:
            continue
        t = _base_type(field.type)
        text = t.extra_json_schema.get("description") if isinstance(t, mi.Metadata) and t.extra_json_schema else None
        inner = t.type if isinstance(t, mi.Metadata) else t
        if not isinstance(inner, (*_NUMERIC, mi.BoolType)):
            continue
        unit_match = _UNIT.search(text or "")
        description = _UNIT.sub("", text).strip() if text else None
        found.append(Metric(reading_type.kind, reading_type.table, field.name,
                            unit_match.group(1) if unit_match else None, description or None,
                            isinstance(inner, mi.BoolType)))
    return found


@cache
def all_metrics() -> tuple[Metric, ...]:
    """Every metric, once per kind and name: where two reading types of a kind share a field (a truck's lat in its
    telemetry and in its events), the first type's — the telemetry's — is the metric, so a name means one table."""
    seen: dict[tuple[str, str], Metric] = {}
    for t in READING_TYPES:
        for m in _metrics_of(t):
            seen.setdefault((m.kind, m.name), m)
    return tuple(seen.values())


@cache
def tables_of_kind(kind: str) -> tuple[str, ...]:
    return tuple(t.table for t in READING_TYPES if t.kind == kind)


def metric_for(kind: str, name: str) -> Metric | None:
    return next((m for m in all_metrics() if m.kind == kind and m.name == name), None)
