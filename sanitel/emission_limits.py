"""Incinerator emission limits: the defaults (``emission_limits.yaml``) and the one grammar a plant or line
overrides them with (issue 13). The alert rules (alerts/rules/cems.yaml, ``emission_limit:``) and the
compliance report (processors/compliance.py) both read limits through ``limit_set``, so a stricter permit
applies to both or to neither.

Override grammar, in ``sites.params`` of a plant or of one of its lines (the line's value wins)::

    {"emission_limits": {
        "permit": "深圳市排污许可证 9144030000000000XX001P (2024)",   # the permit's reference (optional)
        "nox":  {"gb.24h": 120, "eu.daily": 120},
        "dust": {"daily": 8, "gb.1h": {"value": 20, "permit": "EIA approval 深环批〔2019〕100 号"}}}}

- pollutant keys: ``dust so2 nox co hcl hf toc nh3 hg`` (a ``_mg_m3`` suffix is accepted);
- limit keys: ``gb.1h gb.24h eu.daily eu.half_hour_a eu.half_hour_b eu.10min``, or an alias that applies to
  the matching average of both standards: ``daily``/``24h`` (gb.24h and eu.daily), ``hourly``/``1h``
  (gb.1h), ``half_hourly``/``30min``/``half_hour_a``, ``half_hour_b``, ``10min``;
- a value is a positive number in mg/m³ at 11 % O2 dry, or ``{"value": …, "permit": "…"}`` to cite a
  different document for that one limit.

The EU confidence interval (Annex VI Part 6 §1.3) is a share of the pollutant's *effective* daily limit, so a
stricter permit also narrows the interval subtracted from its averages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from sanitel.errors import ConfigError

DEFAULTS_FILE = Path(__file__).with_name("emission_limits.yaml")
PARAMS_KEY = "emission_limits"
POLLUTANTS: tuple[str, ...] = ("dust", "so2", "nox", "co", "hcl", "hf", "toc", "nh3", "hg")
# canonical limit key → (standard, cems_averages.period, how the check judges)
LIMIT_KEYS: dict[str, tuple[str, str, str]] = {
    "gb.1h": ("gb", "1h", "max"),
    "gb.24h": ("gb", "1d", "max"),
    "eu.daily": ("eu", "1d", "max"),
    "eu.half_hour_a": ("eu", "30min", "max"),
    "eu.half_hour_b": ("eu", "30min", "share"),
    "eu.10min": ("eu", "10min", "share"),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "daily": ("gb.24h", "eu.daily"), "24h": ("gb.24h", "eu.daily"), "hourly": ("gb.1h",), "1h": ("gb.1h",),
    "half_hourly": ("eu.half_hour_a",), "30min": ("eu.half_hour_a",), "half_hour_a": ("eu.half_hour_a",),
    "half_hour_b": ("eu.half_hour_b",), "10min": ("eu.10min",),
}


@dataclass(frozen=True, slots=True)
class Limit:
    key: str  # canonical, e.g. "eu.daily"
    pollutant: str
    value: float
    source: str  # "default" or the site id whose params set it
    permit: str | None = None  # the document a site's override cites


@dataclass(frozen=True, slots=True)
class LimitSet:
    limits: tuple[Limit, ...]
    ci_pct: Mapping[str, float]
    required_share: Mapping[str, float]

    def get(self, key: str, pollutant: str) -> Limit | None:
        return next((x for x in self.limits if x.key == key and x.pollutant == pollutant), None)

    def confidence_interval(self, pollutant: str) -> float:
        """EU CI in mg/m³: a percentage of the pollutant's effective daily limit."""
        daily = self.get("eu.daily", pollutant)
        return daily.value * self.ci_pct.get(pollutant, 0.0) / 100.0 if daily else 0.0


@cache
def _defaults_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULTS_FILE.read_text())
    return data


def default_limits() -> dict[tuple[str, str], float]:
    """(canonical key, pollutant) → limit, from emission_limits.yaml."""
    data = _defaults_file()
    out: dict[tuple[str, str], float] = {}
    for standard, section in (("gb", "gb_18485_2014"), ("eu", "eu_2010_75")):
        for pollutant, values in data[section].items():
            for name, value in values.items():
                out[(f"{standard}.{name}", pollutant)] = float(value)
    return out


def _keys(name: str, where: str) -> tuple[str, ...]:
    if name in LIMIT_KEYS:
        return (name,)
    if name in ALIASES:
        return ALIASES[name]
    raise ConfigError(f"{where}: unknown limit {name!r}; use one of {', '.join(LIMIT_KEYS)} "
                      f"or an alias ({', '.join(ALIASES)})")


def _value(raw: Any, where: str, permit: str | None) -> tuple[float, str | None]:
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"value", "permit"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              "a limit is a number or {value, permit}")
        permit = raw.get("permit", permit)
        raw = raw.get("value")
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw <= 0:
        raise ConfigError(f"{where}: limit {raw!r} must be a positive number (mg/m³ at 11 % O2 dry)")
    if permit is not None and not isinstance(permit, str):
        raise ConfigError(f"{where}: permit must be text (the permit's reference)")
    return float(raw), permit


def parse_emission_limits(params: Mapping[str, Any] | None, site_id: str) -> dict[tuple[str, str], Limit]:
    """``sites.params.emission_limits`` of one site → (canonical key, pollutant) → Limit. Raises
    ``ConfigError`` naming the site, the key and the fix."""
    raw = (params or {}).get(PARAMS_KEY)
    if raw is None:
        return {}
    where = f"sites.params.{PARAMS_KEY} of {site_id}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be an object {{pollutant: {{limit key: mg/m³}}, permit: …}}")
    permit = raw.get("permit")
    if permit is not None and not isinstance(permit, str):
        raise ConfigError(f"{where}.permit: must be text (the permit's reference)")
    out: dict[tuple[str, str], Limit] = {}
    for pollutant_key, values in raw.items():
        if pollutant_key == "permit":
            continue
        pollutant = str(pollutant_key).removesuffix("_mg_m3")
        if pollutant not in POLLUTANTS:
            raise ConfigError(f"{where}.{pollutant_key}: unknown pollutant; use one of {', '.join(POLLUTANTS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}.{pollutant_key}: must be an object {{limit key: mg/m³}}, "
                              f"e.g. {{\"gb.24h\": 120}}")
        for name, value in values.items():
            at = f"{where}.{pollutant_key}.{name}"
            number, cited = _value(value, at, permit)
            for key in _keys(str(name), at):
                out[(key, pollutant)] = Limit(key, pollutant, number, site_id, cited)
    return out


def limit_set(site_params: Sequence[tuple[str, Mapping[str, Any] | None]] = ()) -> LimitSet:
    """Defaults overlaid by each site's overrides in order (plant, then line: the most specific wins)."""
    values = {k: Limit(k[0], k[1], v, "default") for k, v in default_limits().items()}
    for site_id, params in site_params:
        values.update(parse_emission_limits(params, site_id))
    data = _defaults_file()
    required = {f"eu.{k}": float(v) for k, v in data["eu_required_share"].items()}
    return LimitSet(tuple(values[k] for k in sorted(values)),
                    {k: float(v) for k, v in data["eu_confidence_interval_pct"].items()}, required)


@dataclass(frozen=True, slots=True)
class MeeRules:
    """MEE Order No. 10 (2019) and GB 18485-2014 operating limits (``mee_order_10`` in emission_limits.yaml)."""

    furnace_min_temp_c: float
    furnace_average_minutes: int
    furnace_max_below_per_day: int
    marked_hours_per_year: float
    marked_dust_1h_max_mg_m3: float
    fault_or_accident_max_hours: float


# furnace-state marks that Order No. 10 exempts within ``marked_hours_per_year`` (启炉 停炉 故障 事故)
EXEMPTED_MARKS: tuple[str, ...] = ("start_up", "shut_down", "fault", "accident")


def mee_rules() -> MeeRules:
    raw = _defaults_file()["mee_order_10"]
    return MeeRules(float(raw["furnace_min_temp_c"]), int(raw["furnace_average_minutes"]),
                    int(raw["furnace_max_below_per_day"]), float(raw["marked_hours_per_year"]),
                    float(raw["marked_dust_1h_max_mg_m3"]), float(raw["fault_or_accident_max_hours"]))
