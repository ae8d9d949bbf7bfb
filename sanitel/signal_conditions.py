"""Named conditions on noisy signals (issue 18): what "full", "exceeded" mean, defined once.

The alert rules name a condition (``condition: bin_full`` in alerts/rules/*.yaml) and take its field, threshold,
clear level and smoothing from here; the simulators' ground truth derives its episodes ("this bin was full from … to
…") with ``Condition.episodes`` on the values it sent. A rule changed here changes its ground truth with it.

The definitions are data (``signal_conditions.yaml``, validated at load: errors name the file, the key and the fix).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from sanitel.errors import ConfigError

DEFINITIONS_FILE = Path(__file__).with_name("signal_conditions.yaml")
Op = Literal[">", ">=", "<", "<="]
_OPS: tuple[str, ...] = (">", ">=", "<", "<=")


@dataclass(frozen=True, slots=True)
class Smoothing:
    """A rolling statistic over the last ``readings`` readings (the current one included).

    A condition is judged only on a full window (``rolling``): the median of one reading is that reading, so a
    device's first wild echo would be "full" — no verdict until it has sent ``readings`` readings. ``apply``
    gives the statistic of those there are at every reading (for plots and reports)."""

    how: Literal["median", "mean"]
    readings: int

    def value(self, window: Sequence[float]) -> float:
        return statistics.median(window) if self.how == "median" else statistics.fmean(window)

    def apply(self, values: Iterable[float]) -> list[float]:
        out: list[float] = []
        window: deque[float] = deque(maxlen=self.readings)
        for v in values:
            window.append(v)
            out.append(self.value(window))
        return out

    def rolling(self, values: Iterable[float]) -> list[float | None]:
        """The smoothed value judged at each reading: None until the window is full (no verdict yet). The alert
        evaluator passes a device's look-back readings first, so a window spans its passes."""
        return [v if i >= self.readings - 1 else None for i, v in enumerate(self.apply(values))]

    def describe(self) -> str:
        return f"{self.how} of the last {self.readings} readings"


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    description: str
    field: str
    op: Op
    threshold: float | Mapping[str, Any]  # a number or {param, default, values}
    clear: float | Mapping[str, Any] | None
    smoothing: Smoothing

    def limits(self, params: Mapping[str, Any] | None = None) -> tuple[float, float | None]:
        """(threshold, clear) for a site with these parameters."""
        return _resolve(self.threshold, params or {}), (
            None if self.clear is None else _resolve(self.clear, params or {}))

    def breaches(self, value: float, limit: float) -> bool:
        return {">": value > limit, ">=": value >= limit, "<": value < limit, "<=": value <= limit}[self.op]

    def episodes(self, values: Sequence[float], params: Mapping[str, Any] | None = None) -> list[tuple[int, int]]:
        """Index ranges [first, last] of the readings during which the condition held: from the reading whose
        smoothed value (``Smoothing.rolling``: none before a full window) breaches the threshold to the last
        before the smoothed value is on the safe side of the clear level (the threshold itself when there is
        none). An episode still open at the end ends there.

        The alert evaluator judges alike (alerts/timeline.py ``judge``): a breach starts, a value that does not
        satisfy ``op`` against the clear level ends, anything in between holds."""
        threshold, clear = self.limits(params)
        ends_below = threshold if clear is None else clear
        out: list[tuple[int, int]] = []
        start: int | None = None
        for i, v in enumerate(self.smoothing.rolling(values)):
            if v is None:
                continue
            if start is None and self.breaches(v, threshold):
                start = i
            elif start is not None and not self.breaches(v, ends_below):
                out.append((start, i - 1))
                start = None
        if start is not None:
            out.append((start, len(values) - 1))
        return out


def _resolve(limit: float | Mapping[str, Any], params: Mapping[str, Any]) -> float:
    if not isinstance(limit, Mapping):
        return float(limit)
    key = str(params.get(str(limit["param"]), limit["default"]))
    values = limit["values"]
    return float(values[key] if key in values else values[str(limit["default"])])


def parse_smoothing(raw: Any, where: str) -> Smoothing:
    """``{median: N}`` or ``{mean: N}`` → Smoothing, or ConfigError saying where and the fix (the alert rules'
    ``smoothing:`` key reads the same grammar)."""
    fix = "— fix: write {median: N} or {mean: N} with N readings, 1 ≤ N ≤ 1000"
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ConfigError(f"{where}.smoothing: {raw!r} is not a rolling statistic {fix}")
    ((how, n),) = raw.items()
    if how not in ("median", "mean") or not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
        raise ConfigError(f"{where}.smoothing: {raw!r} {fix}")
    return Smoothing(how, n)


def _number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)


def _limit(raw: Any, where: str) -> float | Mapping[str, Any]:
    if isinstance(raw, Mapping):
        if set(raw) != {"param", "default", "values"} or not isinstance(raw["values"], Mapping) or not raw["values"] \
                or not all(_number(v) for v in raw["values"].values()):
            raise ConfigError(f"{where}: {raw!r} — fix: a lookup is {{param, default, values: {{key: number}}}}")
        if not isinstance(raw["param"], str) or not raw["param"]:
            raise ConfigError(f"{where}.param: {raw['param']!r} — fix: name the site parameter, e.g. odour_grade")
        # keys as text: YAML reads `1: 0.03` with an integer key, site params hold 1 or "1" alike
        values = {str(k): float(v) for k, v in raw["values"].items()}
        if str(raw["default"]) not in values:
            raise ConfigError(f"{where}: default {raw['default']!r} is not one of the values' keys — fix: add it")
        return {"param": raw["param"], "default": str(raw["default"]), "values": values}
    if not _number(raw):
        raise ConfigError(f"{where}: {raw!r} — fix: a finite number or a {{param, default, values}} lookup")
    return float(raw)


def _check_clear(op: str, threshold: float | Mapping[str, Any], clear: float | Mapping[str, Any], where: str) -> None:
    """The clear level is on the safe side of the threshold (for every key of a lookup on the same parameter)."""
    pairs: list[tuple[float, float]] = []
    if isinstance(threshold, Mapping) and isinstance(clear, Mapping):
        if threshold["param"] == clear["param"]:
            pairs = [(threshold["values"][k], clear["values"][k]) for k in threshold["values"] if k in clear["values"]]
    elif not isinstance(threshold, Mapping) and not isinstance(clear, Mapping):
        pairs = [(threshold, clear)]
    upper = op in (">", ">=")
    for t, c in pairs:
        if (c > t) if upper else (c < t):
            raise ConfigError(f"{where}.clear: {c:g} is on the wrong side of the threshold {t:g} for op {op!r} — "
                              f"fix: a clear level {'at or below' if upper else 'at or above'} the threshold")


def parse_condition(name: str, raw: Any, source: str = str(DEFINITIONS_FILE)) -> Condition:
    """One definition → a Condition, or ConfigError naming the file, the condition, the key and the fix."""
    where = f"{source}: {name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: not a mapping — fix: give field, op, threshold, smoothing (and clear)")
    missing = {"field", "op", "threshold", "smoothing"} - set(raw)
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(sorted(missing))} — fix: add them")
    unknown = set(raw) - {"field", "op", "threshold", "clear", "smoothing", "description", "unverified"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} — fix: remove them")
    if not isinstance(raw["op"], str) or raw["op"] not in _OPS:
        raise ConfigError(f"{where}.op: {raw['op']!r} — fix: use one of {', '.join(_OPS)}")
    if not isinstance(raw["field"], str) or not raw["field"]:
        raise ConfigError(f"{where}.field: {raw['field']!r} — fix: name the reading field the condition judges")
    threshold = _limit(raw["threshold"], f"{where}.threshold")
    clear = None if raw.get("clear") is None else _limit(raw["clear"], f"{where}.clear")
    if clear is not None:
        _check_clear(raw["op"], threshold, clear, where)
    return Condition(name, str(raw.get("description", "")).strip(), raw["field"], cast(Op, raw["op"]), threshold, clear,
                     parse_smoothing(raw["smoothing"], where))


@cache
def conditions() -> dict[str, Condition]:
    data = yaml.safe_load(DEFINITIONS_FILE.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{DEFINITIONS_FILE}: not a mapping — fix: map condition names to definitions")
    return {str(name): parse_condition(str(name), raw) for name, raw in data.items()}


def condition(name: str) -> Condition:
    found = conditions().get(name)
    if found is None:
        raise ConfigError(f"unknown condition {name!r} — fix: use one of {', '.join(conditions())} (defined in "
                          f"{DEFINITIONS_FILE})")
    return found
