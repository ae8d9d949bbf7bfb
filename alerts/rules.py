"""Alert rules are data: YAML packs shipped in ``alerts/rules/``, extra files in ``settings.rules_dir``,
and rules stored in the ``alert_rules`` table (managed through the API; a stored rule with the id of a
shipped one replaces it). Everything is validated on load; an error names the file, the rule, the key
and the fix.

Rule kinds (``kind:``):

- ``threshold``   a reading against a limit, with ``for`` (duration) / ``for_readings`` (consecutive
                  readings), a separate ``clear`` limit (hysteresis) and ``keep_firing_for``
- ``window``      an aggregate (avg, min, max, sum, count, leq, invalid) over clock-aligned windows
                  (10m, 30m, 1h, 1d in the site's local time) against a limit; also reads the
                  ``cems_averages`` rollup for emission limits and ``cems_daily_judgements`` (one row per
                  CEMS unit and local day: Order No. 10's furnace count, marked hours, the EU CO 24-hour rule)
- ``rate``        change of a reading per unit of time over a look-back (``over``)
- ``event_count`` events per window per device, site or sorting point
- ``offline``     no data for longer than the device's inactivity timeout (or the rule's); ``only_while:
                  on_shift`` watches a truck only while its last telemetry says it is on shift

Per-site parameters come from ``sites.params`` (merged down the site tree, the nearest site winning)
and ``devices.metadata``: a limit may be a ``{param, values, default}`` lookup (e.g. the station's
GB 14554 odour grade), ``limits: {<rule id>: <value> | {threshold, clear}}`` overrides a rule's limit
for a site or device, and ``disabled_rules: [<id or glob>]`` switches rules off there.

Incinerator emission limits have one grammar, shared with the compliance report (issue 13): a rule with
``emission_limit: <key>`` (gb.1h gb.24h eu.daily eu.half_hour_a eu.half_hour_b eu.10min) takes its
threshold — and, for the EU keys, the confidence interval — from ``sanitel.emission_limits.limit_set`` over
the subject's site chain (plant, then line: ``sites.params.emission_limits``); ``limits[<rule id>]`` is
refused for such a rule. A rule with ``mee_limit: <name>`` takes its threshold from ``mee_rules()`` (MEE
Order No. 10). Either may omit ``threshold``; a literal one must equal the kernel's figure.

Noisy signals (issue 18): a threshold rule may name a condition of ``sanitel.signal_conditions`` (``condition:
bin_full``) and takes its field, op, threshold, clear level and smoothing from there — the definition the simulators'
ground truth reads too; giving one of them as well must repeat the condition's value. ``smoothing:`` states what a
rule judges instead of one raw reading: a rolling ``{median: N}`` / ``{mean: N}`` over the device's last N counted
readings (threshold rules; the evaluator applies it), ``for`` / ``for_readings`` (held a while, k consecutive
readings), ``window`` (a window rule's aggregate: the default for window and event_count rules), ``timeout``
(offline rules) or ``{none: <why one reading is enough>}``. Every shipped rule states it.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args

import msgspec
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sanitel.durations import format_duration, parse_duration
from sanitel.emission_limits import (
    DEFAULTS_FILE,
    LIMIT_KEYS,
    PARAMS_KEY,
    default_limits,
    limit_set,
    mee_rules,
    parse_emission_limits,
)
from sanitel.errors import ConfigError
from sanitel.schemas.readings import BY_TABLE, value_fields
from sanitel.schemas.topics import DEVICE_KINDS, SEVERITIES
from sanitel.signal_conditions import DEFINITIONS_FILE as CONDITIONS_FILE
from sanitel.signal_conditions import Smoothing, condition, conditions

# --------------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------------

WINDOWS: dict[str, timedelta] = {window: parse_duration(window) for window in ("10m", "30m", "1h", "1d")}
# cems_averages.period for each window
AVERAGE_PERIODS = {"10m": "10min", "30m": "30min", "1h": "1h", "1d": "1d"}
AVERAGES_TABLE = "cems_averages"
AVERAGES_FIELDS = ("avg_zs_mg_m3", "avg_meas_mg_m3")
AVERAGES_WHERE = ("pollutant", "standard")
# processors' daily regulatory judgement per CEMS unit and local day (migration 0080): fields a window rule reads
JUDGEMENTS_TABLE = "cems_daily_judgements"
JUDGEMENT_FIELDS = ("furnace_5min_below_850", "marked_hours_ytd", "marks_over_limit", "marked_dust_1h_max",
                    "eu_co_24h_failed", "gb_exceedances")
# … of which these only grow while the day goes on (counts, a year-to-date sum, a maximum): an in-progress day
# that already breaches an upper limit on them may fire early. eu_co_24h_failed is decided when the day ends.
GROWING_JUDGEMENT_FIELDS = frozenset(JUDGEMENT_FIELDS) - {"eu_co_24h_failed"}
# sanitel.emission_limits.LIMIT_KEYS' cems_averages period → the window a rule with that emission_limit judges
LIMIT_KEY_WINDOWS = {"1h": "1h", "1d": "1d", "30min": "30m", "10min": "10m"}
EmissionLimitKey = Literal["gb.1h", "gb.24h", "eu.daily", "eu.half_hour_a", "eu.half_hour_b", "eu.10min"]
# the figures of sanitel.emission_limits.MeeRules a rule may take as its threshold (``mee_limit:``)
MeeLimitName = Literal["furnace_min_temp_c", "furnace_max_below_per_day", "marked_hours_per_year",
                       "marked_dust_1h_max_mg_m3", "fault_or_accident_max_hours"]
REPEAT_BY_SEVERITY = {"critical": timedelta(minutes=30), "major": timedelta(hours=1),
                      "minor": timedelta(hours=4), "warning": timedelta(hours=12)}
DEVICE_TABLES: dict[str, tuple[str, ...]] = {
    kind: tuple(t for t, rt in BY_TABLE.items() if rt.kind == kind) for kind in DEVICE_KINDS}


def _limit_value(value: object) -> object:
    # YAML true/false on a boolean reading: compared as 1/0
    return float(value) if isinstance(value, bool) else value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120)]
Severity = Literal["critical", "major", "minor", "warning"]
Op = Literal[">", ">=", "<", "<=", "==", "!="]
Flag = Literal["N", "F", "M", "S", "D", "C", "T", "B"]
Per = Literal["device", "site", "point"]
Aggregate = Literal["avg", "min", "max", "sum", "count", "leq", "invalid"]
WhereOp = Literal["=", "!=", ">", ">=", "<", "<="]
_LOCAL_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Lookup(_Strict):
    """A limit that depends on a site parameter: ``{param: odour_grade, values: {"1": 0.03, …}, default: "2"}``."""

    param: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    values: dict[str, float] = Field(min_length=1)
    default: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v)] | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, v: object) -> object:
        # YAML reads `1: 0.03` with an integer key; site params may hold 1 or "1" alike
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _default_is_a_key(self) -> Lookup:
        if self.default is not None and str(self.default) not in self.values:
            raise ValueError(f"[default] {self.default!r} is not one of the values' keys ({', '.join(self.values)})")
        return self

    def resolve(self, params: Mapping[str, Any]) -> float | None:
        key = params.get(self.param, self.default)
        if key is None:
            return None
        return self.values.get(str(key), self.values.get(str(self.default)) if self.default is not None else None)


Limit = Annotated[float | Lookup, BeforeValidator(_limit_value)]


class Scope(_Strict):
    """Which subjects a rule applies to: device kinds, sites (a site or any ancestor), devices."""

    kinds: list[Literal["sweeper", "transfer_station", "bin", "camera", "cems", "truck"]] = []
    sites: list[str] = []
    devices: list[str] = []


class WhereCondition(_Strict):
    op: WhereOp
    value: float | str | bool


def _where_value(value: object) -> object:
    # {confidence: {">=": 0.6}} → WhereCondition(op=">=", value=0.6); scalars and lists mean equality
    if isinstance(value, dict) and len(value) == 1:
        ((op, v),) = value.items()
        return {"op": op, "value": v}
    return value


WhereValue = Annotated[WhereCondition | list[str | float] | str | float | bool, BeforeValidator(_where_value)]


# --------------------------------------------------------------------------------------------
# Smoothing: what a rule judges instead of one raw reading (issue 18)
# --------------------------------------------------------------------------------------------

SmoothingHow = Literal["median", "mean", "for", "for_readings", "window", "timeout", "none"]
_SMOOTHING_WORDS = ("for", "for_readings", "window", "timeout")
_SMOOTHING_FIX = ("write {median: N} or {mean: N} (over the last N readings), for, for_readings, window, timeout, or "
                  "{none: <why one reading is enough>}")


class RuleSmoothing(_Strict):
    """A rule's ``smoothing:`` — written ``{median: 5}``, ``for``, ``{none: "the bin's own alarm"}`` …"""

    how: SmoothingHow
    readings: int | None = None  # median, mean
    reason: str | None = None  # none

    @property
    def rolling(self) -> Smoothing | None:
        """The statistic the evaluator applies, for median and mean."""
        if self.how in ("median", "mean") and self.readings is not None:
            return Smoothing("median" if self.how == "median" else "mean", self.readings)
        return None

    @model_serializer
    def _as_written(self) -> Any:
        # dumped (API, rule hash) in the notation of the rule files, which validates again as such
        if self.rolling is not None:
            return {self.how: self.readings}
        return {"none": self.reason} if self.how == "none" else self.how


def _smoothing_value(value: object) -> object:
    """``{median: 5}`` / ``for`` / ``{none: why}`` → RuleSmoothing; ValueError (naming the fix) otherwise."""
    if isinstance(value, RuleSmoothing):
        return value
    if isinstance(value, str) and value in _SMOOTHING_WORDS:
        return RuleSmoothing(how=cast(SmoothingHow, value))
    if isinstance(value, dict) and len(value) == 1:
        ((how, arg),) = value.items()
        if how == "none" and isinstance(arg, str) and arg.strip():
            return RuleSmoothing(how="none", reason=arg.strip())
        if how in ("median", "mean") and isinstance(arg, int) and not isinstance(arg, bool) and 1 <= arg <= 1000:
            return RuleSmoothing(how=how, readings=arg)
    raise ValueError(f"{value!r} is not a smoothing — fix: {_SMOOTHING_FIX}")


SmoothingSpec = Annotated[RuleSmoothing, BeforeValidator(_smoothing_value)]


# --------------------------------------------------------------------------------------------
# Rule models
# --------------------------------------------------------------------------------------------


class RuleBase(_Strict):
    id: RuleId
    summary: str = Field(min_length=1, max_length=500)
    description: str = ""
    severity: Severity
    labels: dict[str, str] = {}
    scope: Scope = Scope()
    enabled: bool = True
    repeat_interval: Duration | None = None  # reminders until acknowledged; None = by severity
    standard: str | None = None  # where the limit comes from (shown with the alert)
    unverified: bool = False  # the limit comes from one secondary source: check it before relying on it
    # what the rule judges instead of one raw reading; None: not stated (window rules: their aggregate). Checked
    # against the rule's kind and keys by validate_rule_dict (_check_smoothing)
    smoothing: SmoothingSpec | None = None

    @property
    def reminder_every(self) -> timedelta:
        return self.repeat_interval or REPEAT_BY_SEVERITY[self.severity]

    def kinds(self) -> tuple[str, ...]:
        return tuple(self.scope.kinds) or DEVICE_KINDS


class _Condition(_Strict):
    """A value against a limit: breach when ``value op threshold``; with ``clear``, an active condition
    ends only when the value is back on the safe side of ``clear`` (hysteresis)."""

    op: Op = ">"
    threshold: Limit
    clear: Limit | None = None
    for_: Duration = Field(timedelta(0), alias="for")
    keep_firing_for: Duration = timedelta(0)

    @model_validator(mode="after")
    def _clear_on_the_safe_side(self) -> _Condition:
        if self.clear is None:
            return self
        if self.op in ("==", "!="):
            raise ValueError("[clear] 'clear' (hysteresis) needs an ordering op (>, >=, <, <=), not " + self.op)
        if isinstance(self.threshold, float) and isinstance(self.clear, float):
            wrong = self.clear > self.threshold if self.op in (">", ">=") else self.clear < self.threshold
            if wrong:
                side = "at or below" if self.op in (">", ">=") else "at or above"
                raise ValueError(f"[clear] clear {self.clear:g} must be {side} threshold {self.threshold:g} for op "
                                 f"'{self.op}' (it is where the condition ends)")
        return self


class _Source(_Strict):
    """Readings from one typed hypertable, optionally filtered."""

    source: str
    where: dict[str, WhereValue] = {}
    local_hours: str | None = None  # "06:00-22:00" in the site's time zone; may wrap midnight
    accept_flags: list[Flag] = ["N"]  # HJ 212 flags that count; others are ignored (standards.md §2)

    @field_validator("local_hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None and not _LOCAL_HOURS.match(v):
            raise ValueError(f"{v!r} is not HH:MM-HH:MM (e.g. 06:00-22:00, or 22:00-06:00 across midnight)")
        return v

    @model_validator(mode="after")
    def _known_source(self) -> _Source:
        allowed = (*BY_TABLE, AVERAGES_TABLE, JUDGEMENTS_TABLE)
        if self.source not in allowed:
            raise ValueError(f"[source] source {self.source!r} is not a reading table; use one of {', '.join(allowed)}")
        columns = source_columns(self.source)
        for column in self.where:
            if column not in columns:
                hint = _did_you_mean(column, columns)
                raise ValueError(f"[where.{column}] {column!r} is not a column of {self.source}{hint}")
        return self


class ThresholdRule(RuleBase, _Condition, _Source):
    kind: Literal["threshold"]
    # a named condition of sanitel.signal_conditions: field, op, threshold, clear and smoothing come from it
    condition: str | None = None
    field: str
    bit: int | None = Field(None, ge=0, le=31)  # test one bit of an integer flag word (GB/T 32960 alarms)
    for_readings: int = Field(1, ge=1, le=1000)  # consecutive breaching readings needed (noisy sensors)
    # judge the reading's HJ 212 flag instead of its value: 1 when the field's reading carries this flag, 0 when
    # it carries another (every reading of the field counts, whatever its flag or the line's operating state) —
    # e.g. flagged: T, op: ">=", threshold: 1 for "the analyser is over its range"
    flagged: Flag | None = None

    @model_validator(mode="before")
    @classmethod
    def _kernel_threshold(cls, data: Any) -> Any:
        """``condition``: field, op, threshold, clear and smoothing are the kernel's definition."""
        if not isinstance(data, dict) or data.get("condition") is None:
            return data
        return _condition_rule(data)

    @model_validator(mode="after")
    def _known_field(self) -> ThresholdRule:
        _check_field(self.source, self.field)
        if self.flagged is not None:
            if self.bit is not None:
                raise ValueError("[flagged] 'flagged' judges the reading's flag, 'bit' its value — fix: keep one")
            if "accept_flags" in self.model_fields_set:
                raise ValueError("[accept_flags] a 'flagged' rule judges every reading of its field, whatever its "
                                 "flag — fix: remove 'accept_flags'")
        return self


class RateRule(RuleBase, _Condition, _Source):
    kind: Literal["rate"]
    field: str
    over: Duration  # the change is measured between a reading and the oldest one within `over` before it
    rate_per: Duration = timedelta(minutes=1)  # unit of the rate: threshold is per this much time

    @model_validator(mode="after")
    def _known_field(self) -> RateRule:
        _check_field(self.source, self.field)
        if self.over <= timedelta(0) or self.rate_per <= timedelta(0):
            raise ValueError("[over] 'over' and 'rate_per' must be longer than 0s")
        return self


class WindowRule(RuleBase, _Condition, _Source):
    kind: Literal["window"]
    field: str | None = None  # None only for aggregate: count
    aggregate: Aggregate = "avg"
    window: Literal["10m", "30m", "1h", "1d"]
    per: Per = "device"
    min_valid_fraction: float = Field(0.0, ge=0.0, le=1.0)  # share of counted readings a window needs
    early: bool = False  # fire before the window closes (only sound for count/max above, min below)
    # 2010/75/EU Annex VI: averages are validated by subtracting the 95 % confidence interval, a share of
    # the (daily) emission limit: value − pct/100 × (confidence_interval_of or the threshold)
    confidence_interval_pct: float = Field(0.0, ge=0.0, le=100.0)
    confidence_interval_of: float | None = None
    # the limit (and the EU confidence interval) from sanitel.emission_limits for the subject's plant and line
    emission_limit: EmissionLimitKey | None = None
    mee_limit: MeeLimitName | None = None  # the threshold is this figure of sanitel.emission_limits.mee_rules()

    @model_validator(mode="before")
    @classmethod
    def _kernel_threshold(cls, data: Any) -> Any:
        """``emission_limit`` / ``mee_limit``: the threshold is the kernel's figure — filled in when left out,
        and a literal one must be that figure (two numbers for one limit would drift apart)."""
        if not isinstance(data, dict):
            return data
        found = _kernel_figure(data)
        if found is None:
            return data
        figure, what, where = found
        given = data.get("threshold")
        if given is None:
            return {**data, "threshold": figure}
        if isinstance(given, bool) or not isinstance(given, int | float) or float(given) != figure:
            raise ValueError(f"[threshold] {given!r} is not {what}, {figure:g} — fix: remove 'threshold' (the rule "
                             f"reads it from {where}) or write {figure:g}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> WindowRule:
        if self.emission_limit is not None:
            _check_emission_limit_rule(self)
        if self.mee_limit is not None and self.source != JUDGEMENTS_TABLE:
            raise ValueError(f"[mee_limit] a mee_limit rule judges the daily regulatory judgement — fix: source: "
                             f"{JUDGEMENTS_TABLE}")
        if self.source == AVERAGES_TABLE:
            _check_averages_rule(self)
        elif self.source == JUDGEMENTS_TABLE:
            _check_judgements_rule(self)
            return self
        elif self.aggregate == "invalid":
            raise ValueError("[aggregate] 'invalid' reads the status of cems_averages; use source: cems_averages")
        elif self.aggregate == "count":
            if self.field is not None:
                _check_field(self.source, self.field)
        elif self.field is None:
            raise ValueError(f"[field] aggregate {self.aggregate!r} needs a 'field'")
        else:
            _check_field(self.source, self.field)
        if self.early and not _monotonic(self.aggregate, self.op):
            raise ValueError(f"[early] early: true is only sound when a partial window can only grow worse "
                             f"(count/sum/max with > or >=, min with < or <=), not {self.aggregate} {self.op}")
        return self

    @property
    def width(self) -> timedelta:
        return WINDOWS[self.window]


class EventCountRule(RuleBase, _Source):
    """Events per clock-aligned window, e.g. mis-sorting detections per sorting point per hour."""

    kind: Literal["event_count"]
    window: Literal["10m", "30m", "1h", "1d"]
    per: Per = "device"
    op: Literal[">", ">="] = ">="
    threshold: Limit
    for_: Duration = Field(timedelta(0), alias="for")
    keep_firing_for: Duration = timedelta(0)
    early: bool = True  # a count can only grow: fire as soon as the window has enough

    @property
    def width(self) -> timedelta:
        return WINDOWS[self.window]

    @property
    def clear(self) -> None:
        return None


# Offline rules' ``only_while``: when a device is expected to report at all, and the device kinds whose readings say
# so. ``on_shift``: a collection truck whose last stored telemetry states a shift state other than ``off_shift`` (the
# truck contract: TruckTelemetry.shift_state) — a parked truck's telematics may go quiet with the ignition off.
OnlyWhile = Literal["on_shift"]
ONLY_WHILE_KINDS: dict[str, tuple[str, ...]] = {"on_shift": ("truck",)}
OFF_SHIFT = "off_shift"


class OfflineRule(RuleBase):
    """No reading for longer than the device's ``inactivity_timeout_s`` (or ``timeout`` when given) — with
    ``only_while: on_shift``, only a silence that began while the truck's last telemetry said it was on shift."""

    kind: Literal["offline"]
    timeout: Duration | None = None
    only_while: OnlyWhile | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OfflineRule:
        """A positive timeout; ``only_while`` reads a state only some kinds report: a scope wider than those would
        leave the others judged on a field they never send."""
        if self.timeout is not None and self.timeout <= timedelta(0):
            raise ValueError("[timeout] timeout must be longer than 0s")
        if self.only_while is None:
            return self
        wanted = ONLY_WHILE_KINDS[self.only_while]
        others = [k for k in self.kinds() if k not in wanted]
        if others:
            shown = f"kinds {', '.join(others)}" if self.scope.kinds else "every device kind (no scope.kinds)"
            raise ValueError(f"[only_while] {self.only_while} reads the shift state only {', '.join(wanted)} devices "
                             f"report, but the rule's scope covers {shown} — fix: scope: {{kinds: "
                             f"[{', '.join(wanted)}]}} (and a rule without only_while for the others)")
        return self


# --------------------------------------------------------------------------------------------
# Programmed checks (kind: builtin): judgements over several tables that no reading rule can state
# --------------------------------------------------------------------------------------------

# The collection-truck checks of issue 15 (alerts/trucks.py evaluates them; the contract fixes the ids the simulators'
# ground truth uses). Each names what it reads, its subject and what "certain evidence" means for it there.
TruckCheck = Literal["point_not_cleared", "truck_overweight", "truck_off_route", "truck_idle", "load_not_weighed",
                     "weighbridge_mismatch", "overflow_not_picked_up"]
# the keys each check needs (besides the common ones); any other check-specific key is refused
_CHECK_KEYS: dict[str, frozenset[str]] = {
    "point_not_cleared": frozenset(),
    "truck_overweight": frozenset({"condition"}),
    "truck_off_route": frozenset({"distance_m", "for"}),
    "truck_idle": frozenset({"for"}),
    "load_not_weighed": frozenset({"within"}),
    "weighbridge_mismatch": frozenset({"tolerance_pct", "tolerance_kg"}),
    "overflow_not_picked_up": frozenset({"condition", "distance_m"}),
}
_CHECK_OPTIONAL = ("condition", "distance_m", "for", "within", "tolerance_pct", "tolerance_kg")
# the field a check's condition must judge (sanitel/signal_conditions.yaml)
_CHECK_CONDITION_FIELDS = {"truck_overweight": "load_pct_of_rated", "overflow_not_picked_up": "fill_level_pct"}
# which devices a check covers (its alerts' devices, for scopes and disabled_rules)
CHECK_KINDS: dict[str, tuple[str, ...]] = {
    "point_not_cleared": ("truck",), "truck_overweight": ("truck",), "truck_off_route": ("truck",),
    "truck_idle": ("truck",), "load_not_weighed": ("truck",), "weighbridge_mismatch": ("truck",),
    "overflow_not_picked_up": ("bin",)}
# placeholders a check's summary may use beyond the common ones
CHECK_FIELDS: dict[str, tuple[str, ...]] = {
    "point_not_cleared": ("category", "deadline", "status"),
    "truck_overweight": ("load_kg", "rated_payload_kg"),
    "truck_off_route": ("route_id", "distance_m"),
    "truck_idle": ("idle_min",),
    "load_not_weighed": ("pickups_kg", "first_pickup"),
    "weighbridge_mismatch": ("ticket_id", "net_kg", "pickups_kg", "difference_pct"),
    "overflow_not_picked_up": ("truck_id", "visited_at"),
}

CHECK_TEXT_FIELDS = frozenset({"category", "deadline", "status", "route_id", "ticket_id", "first_pickup", "truck_id",
                               "visited_at"})


class CheckRule(RuleBase):
    """``kind: builtin``: a judgement programmed in the engine (``check:`` names it; alerts/trucks.py), configured
    here — severity, labels, summary, scope, smoothing and the check's own limits:

    - ``point_not_cleared``: a sorting point's category not picked up by its ``clearance`` deadline
      (sanitel.clearance, subject ``point:<site>``), from the deadline until the first pickup;
    - ``truck_overweight``: ``condition`` (load as % of the rated payload, k of n readings);
    - ``truck_off_route``: a collecting truck farther than ``distance_m`` from its route's path for ``for``;
    - ``truck_idle``: speed 0 on shift away from depot and tip for ``for`` (or the truck's ``idle_limit_min``);
    - ``load_not_weighed``: pickups not followed by a weighbridge ticket of the truck ``within``;
    - ``weighbridge_mismatch``: a ticket's net off the pickups summed since the previous ticket by more than
      ``tolerance_pct`` and ``tolerance_kg``;
    - ``overflow_not_picked_up``: a bin full by ``condition`` while a truck came within ``distance_m`` of its point
      without a pickup there.

    ``threshold`` (the alert's threshold, and what ``limits: {<rule id>: N}`` moves per site) is the check's main
    limit: % of rated payload, metres, minutes, hours, % difference."""

    kind: Literal["builtin"]
    check: TruckCheck
    condition: str | None = None
    distance_m: float | None = Field(None, gt=0, le=100_000)
    for_: Duration = Field(timedelta(0), alias="for")
    within: Duration | None = None
    tolerance_pct: float | None = Field(None, ge=0, le=1000)
    tolerance_kg: float | None = Field(None, ge=0, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _kernel_threshold(cls, data: Any) -> Any:
        """A check judging a condition (the kernel's definition) takes its smoothing from it; one given as well
        must be the condition's."""
        if not isinstance(data, dict) or not isinstance(data.get("condition"), str):
            return data
        name = data["condition"]
        if name not in conditions():
            raise ValueError(f"[condition] {name!r} is not a condition of {CONDITIONS_FILE.name} — fix: use one of "
                             f"{', '.join(conditions())}")
        wanted = {condition(name).smoothing.how: condition(name).smoothing.readings}
        given = data.get("smoothing")
        if given is None:
            return {**data, "smoothing": wanted}
        if not _same_setting("smoothing", given, wanted):
            raise ValueError(f"[smoothing] {given!r} is not condition {name}'s {wanted!r} — fix: remove 'smoothing' "
                             "(the rule takes it from the condition)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CheckRule:
        """The keys of the check, and a condition on the field it judges."""
        needed = _CHECK_KEYS[self.check]
        named = self.model_fields_set | ({"for"} if "for_" in self.model_fields_set else set())
        given = {k for k in _CHECK_OPTIONAL if k in named}
        for key in sorted(needed - given):
            raise ValueError(f"[{key}] check {self.check} needs '{key}' — fix: add it (see alerts/rules/truck.yaml)")
        for key in sorted(given - needed):
            raise ValueError(f"[{key}] check {self.check} does not use '{key}' — fix: remove it")
        if self.for_ < timedelta(0) or (self.within is not None and self.within <= timedelta(0)):
            raise ValueError("[within] durations must be longer than 0s")
        wanted = _CHECK_CONDITION_FIELDS.get(self.check)
        if wanted is not None and condition(cast(str, self.condition)).field != wanted:
            raise ValueError(f"[condition] check {self.check} judges {wanted}; condition {self.condition} judges "
                             f"{condition(cast(str, self.condition)).field} — fix: name a condition on {wanted}")
        return self

    def kinds(self) -> tuple[str, ...]:
        return tuple(self.scope.kinds) or CHECK_KINDS[self.check]

    @property
    def threshold(self) -> float:
        """The check's main limit (see the class)."""
        if self.condition is not None:
            return condition(self.condition).limits()[0]
        if self.check == "truck_off_route":
            return float(cast(float, self.distance_m))
        if self.check == "truck_idle":
            return self.for_.total_seconds() / 60
        if self.check == "load_not_weighed":
            return cast(timedelta, self.within).total_seconds() / 3600
        if self.check == "weighbridge_mismatch":
            return float(cast(float, self.tolerance_pct))
        return 0.0  # point_not_cleared: the deadline itself (minutes late)

    @property
    def clear(self) -> float | None:
        return condition(self.condition).limits()[1] if self.condition is not None else None


Rule = Annotated[ThresholdRule | RateRule | WindowRule | EventCountRule | OfflineRule | CheckRule,
                 Field(discriminator="kind")]
RuleModel = ThresholdRule | RateRule | WindowRule | EventCountRule | OfflineRule | CheckRule
RULE_KINDS = ("threshold", "window", "rate", "event_count", "offline", "builtin")
_RULE = TypeAdapter(Rule)


def source_columns(source: str) -> tuple[str, ...]:
    if source == AVERAGES_TABLE:
        return (*AVERAGES_FIELDS, *AVERAGES_WHERE)
    if source == JUDGEMENTS_TABLE:
        return JUDGEMENT_FIELDS
    return value_fields(BY_TABLE[source])


@cache  # the reading schemas do not change while the process runs; inspecting them is slow
def _field_kind(source: str, name: str) -> str:
    """numeric, bool or text — from the reading schema."""
    for f in cast(msgspec.inspect.StructType, msgspec.inspect.type_info(BY_TABLE[source])).fields:  # a Struct
        if f.name == name:
            types = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
            for t in types:
                t = t.type if isinstance(t, msgspec.inspect.Metadata) else t
                if isinstance(t, msgspec.inspect.BoolType):
                    return "bool"
                if isinstance(t, msgspec.inspect.FloatType | msgspec.inspect.IntType):
                    return "numeric"
            return "text"
    return "text"


def _check_field(source: str, name: str) -> None:
    columns = source_columns(source)
    if name not in columns:
        raise ValueError(f"[field] {name!r} is not a reading of {source}{_did_you_mean(name, columns)}")
    if _field_kind(source, name) == "text":
        raise ValueError(f"[field] {name!r} of {source} is text; compare it in 'where', not as a value")


def _check_averages_rule(rule: WindowRule) -> None:
    if rule.aggregate not in ("avg", "invalid"):
        raise ValueError("[aggregate] a cems_averages rule takes aggregate 'avg' (the stored average) or 'invalid' "
                         "(the period was discarded)")
    if rule.aggregate == "avg" and rule.field not in AVERAGES_FIELDS:
        raise ValueError(f"[field] must be one of {', '.join(AVERAGES_FIELDS)} for source cems_averages")
    missing = [k for k in AVERAGES_WHERE if k not in rule.where]
    if missing:
        raise ValueError(f"[where] a cems_averages rule needs where: {{{', '.join(f'{k}: …' for k in missing)}}}")
    if rule.per != "device":
        raise ValueError("[per] cems_averages rows are per device (stack line): per must be 'device'")


def _kernel_figure(data: dict[str, Any]) -> tuple[float, str, str] | None:
    """(threshold, what it is, where it is set) of a rule dict with ``emission_limit`` or ``mee_limit``, or None
    without either."""
    key, name = data.get("emission_limit"), data.get("mee_limit")
    if key is not None and name is not None:
        raise ValueError("[mee_limit] a rule takes its limit from emission_limit or mee_limit, not both — fix: "
                         "keep one")
    if name is not None:
        if not isinstance(name, str) or name not in get_args(MeeLimitName):  # the field's own check says why
            return None
        return (float(getattr(mee_rules(), name)), f"{name} of mee_order_10 in {DEFAULTS_FILE.name}",
                f"{DEFAULTS_FILE.name} mee_order_10, the national figure")
    if not isinstance(key, str) or key not in LIMIT_KEYS:
        return None  # none, or one the field's own check refuses
    where = data.get("where")
    pollutant = where.get("pollutant") if isinstance(where, dict) else None
    if not isinstance(pollutant, str):
        raise ValueError("[where.pollutant] an emission_limit rule judges one pollutant — fix: where: "
                         "{pollutant: nox, standard: …}")
    defaults = default_limits()
    if (key, pollutant) not in defaults:
        known = sorted(k for k, p in defaults if p == pollutant)
        raise ValueError(f"[emission_limit] {DEFAULTS_FILE.name} has no {key} limit for {pollutant!r} — fix: use "
                         f"one of {', '.join(known) or '(none: not a judged pollutant)'}")
    return (defaults[(key, pollutant)], f"the default {key} limit of {pollutant} in {DEFAULTS_FILE.name}",
            f"{DEFAULTS_FILE.name}; a plant or line sets a stricter permit in sites.params.{PARAMS_KEY}")


def _check_emission_limit_rule(rule: WindowRule) -> None:
    key = cast(str, rule.emission_limit)
    standard, period, _ = LIMIT_KEYS[key]
    if rule.source != AVERAGES_TABLE or rule.aggregate != "avg":
        raise ValueError(f"[emission_limit] an emission_limit rule judges stored averages — fix: source: "
                         f"{AVERAGES_TABLE}, aggregate: avg")
    if rule.where.get("standard") != standard:
        raise ValueError(f"[where.standard] {key} is a limit of standard {standard!r} — fix: where: "
                         f"{{standard: {standard}}}")
    if rule.window != LIMIT_KEY_WINDOWS[period]:
        raise ValueError(f"[window] {key} is judged on {period} averages — fix: window: {LIMIT_KEY_WINDOWS[period]}")
    if rule.confidence_interval_pct or rule.confidence_interval_of is not None:
        raise ValueError("[confidence_interval_pct] an emission_limit rule takes the EU confidence interval from "
                         f"{DEFAULTS_FILE.name} (a share of the effective daily limit) — fix: remove "
                         "confidence_interval_pct and confidence_interval_of")


def _check_judgements_rule(rule: WindowRule) -> None:
    if rule.field not in JUDGEMENT_FIELDS:
        raise ValueError(f"[field] a {JUDGEMENTS_TABLE} rule reads one of {', '.join(JUDGEMENT_FIELDS)}"
                         f"{_did_you_mean(str(rule.field), JUDGEMENT_FIELDS) if rule.field else ''}")
    if "aggregate" in rule.model_fields_set and rule.aggregate != "max":
        raise ValueError(f"[aggregate] a {JUDGEMENTS_TABLE} rule reads the day's value — fix: remove 'aggregate'")
    if rule.window != "1d" or rule.per != "device":
        raise ValueError(f"[window] {JUDGEMENTS_TABLE} has one row per CEMS unit and local day — fix: window: 1d, "
                         "per: device")
    if rule.where or rule.local_hours or rule.confidence_interval_pct or rule.min_valid_fraction:
        raise ValueError(f"[where] a {JUDGEMENTS_TABLE} rule judges the day's value as it is — fix: remove where, "
                         "local_hours, confidence_interval_pct and min_valid_fraction")
    if rule.early and not (rule.field in GROWING_JUDGEMENT_FIELDS and rule.op in (">", ">=")):
        raise ValueError(f"[early] early: true is only sound for a value that can only grow during the day "
                         f"({', '.join(sorted(GROWING_JUDGEMENT_FIELDS))}) against an upper limit (> or >=) — "
                         "fix: remove 'early'")


def _check_smoothing(rule: RuleModel) -> None:
    """The stated smoothing is one this kind of rule has, and the rule's own keys back it."""
    if rule.smoothing is None:
        return
    kind, how = rule.kind, rule.smoothing.how
    if how in ("median", "mean") and isinstance(rule, CheckRule):
        if rule.condition is None:
            raise ValueError(f"a rolling {how} is a condition's smoothing — fix: name a condition, or state for or "
                             "{none: …}")
    elif how in ("median", "mean") and (kind != "threshold" or getattr(rule, "bit", None) is not None
                                        or getattr(rule, "flagged", None) is not None):
        raise ValueError(f"a rolling {how} smooths the value of a threshold rule (not a flag, a bit, a "
                         "rate or a window) — fix: use for, for_readings, window or {none: …}")
    if how == "for" and getattr(rule, "for_", timedelta(0)) <= timedelta(0):
        raise ValueError("'for' says the rule must hold a while, but it has no 'for' — fix: add 'for: 5m' "
                         "(or state another smoothing)")
    if how == "for_readings" and (kind != "threshold" or getattr(rule, "for_readings", 1) < 2):
        raise ValueError("'for_readings' says the rule needs k consecutive readings, but it has no "
                         "'for_readings' above 1 — fix: add 'for_readings: 2' (or state another smoothing)")
    if how == "window" and kind not in ("window", "event_count"):
        raise ValueError("'window' is a window rule's aggregate — fix: state this rule's own smoothing")
    if how == "timeout" and kind != "offline":
        raise ValueError("'timeout' is an offline rule's — fix: state this rule's own smoothing")


_CONDITION_SETS = ("field", "op", "threshold", "clear", "smoothing")


def _condition_rule(data: dict[str, Any]) -> dict[str, Any]:
    """A rule naming ``condition:`` with the condition's field, op, threshold, clear and smoothing filled in. One
    given as well must be the condition's (two values for one definition would drift apart)."""
    name = data["condition"]
    known = conditions()
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"[condition] {name!r} is not a condition of {CONDITIONS_FILE.name} — fix: use one of "
                         f"{', '.join(known)}")
    found = condition(name)
    for key, default in (("for", timedelta(0)), ("for_readings", 1), ("bit", None), ("flagged", None)):
        given = data.get(key)
        if given is not None and given != default and not (key == "for" and given in (0, "0s")):
            raise ValueError(f"[{key}] a rule naming condition {name} is judged by the condition's own smoothing "
                             f"({found.smoothing.describe()}); '{key}' would make it disagree with the ground truth "
                             f"— fix: remove '{key}' (or change the condition in {CONDITIONS_FILE.name})")
    wanted: dict[str, Any] = {
        "field": found.field, "op": found.op, "threshold": _limit_as_written(found.threshold),
        "clear": None if found.clear is None else _limit_as_written(found.clear),
        "smoothing": {found.smoothing.how: found.smoothing.readings}}
    out = dict(data)
    for key in _CONDITION_SETS:
        if data.get(key) is None:
            out[key] = wanted[key]
        elif not _same_setting(key, data[key], wanted[key]):
            shown = "no clear level" if wanted[key] is None else repr(wanted[key])
            raise ValueError(f"[{key}] {data[key]!r} is not condition {name}'s {shown} ({CONDITIONS_FILE.name}) — "
                             f"fix: remove '{key}' (the rule takes it from the condition) or write the condition's")
    return out


def _limit_as_written(limit: float | Mapping[str, Any]) -> float | dict[str, Any]:
    return dict(limit) if isinstance(limit, Mapping) else float(limit)


def _same_setting(key: str, given: Any, wanted: Any) -> bool:
    if key in ("threshold", "clear"):
        normal = _normal_limit(given)
        return normal is not None and normal == _normal_limit(wanted)
    if key == "smoothing":
        try:
            return _smoothing_value(given) == _smoothing_value(wanted)
        except ValueError:
            return False
    return bool(given == wanted)


def _normal_limit(limit: Any) -> object:
    """A limit as a comparable value (None when it is not one): a number, or (param, default, values)."""
    if isinstance(limit, int | float) and not isinstance(limit, bool):
        return float(limit)
    if isinstance(limit, Mapping) and isinstance(limit.get("values"), Mapping):
        values = limit["values"]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
            return (limit.get("param"), str(limit.get("default")),
                    tuple(sorted((str(k), float(v)) for k, v in values.items())))
    return None


def stated_smoothing(rule: RuleModel) -> RuleSmoothing | None:
    """What the rule judges instead of one raw reading: its ``smoothing:`` (a condition's, for a rule naming one);
    a window rule's aggregate when it states none. None: not stated (the shipped packs state it for every rule)."""
    if rule.smoothing is not None:
        return rule.smoothing
    return RuleSmoothing(how="window") if isinstance(rule, WindowRule | EventCountRule) else None


_AGGREGATE_WORDS = {"avg": "average", "leq": "Leq (energy mean)", "invalid": "validity", "count": "count"}


def smoothing_text(rule: RuleModel) -> str | None:
    """The stated smoothing in words, for summaries (``{smoothing}``): "median of the last 5 readings" …"""
    smoothing = stated_smoothing(rule)
    if smoothing is None:
        return None
    if smoothing.rolling is not None:
        return smoothing.rolling.describe()
    if smoothing.how == "window" and isinstance(rule, WindowRule | EventCountRule):
        aggregate = "count" if isinstance(rule, EventCountRule) else rule.aggregate
        return f"{_AGGREGATE_WORDS.get(aggregate, aggregate)} over {rule.window} windows"
    if smoothing.how == "for":
        return f"held for {format_duration(getattr(rule, 'for_', timedelta(0)))}"
    if smoothing.how == "for_readings":
        return f"{getattr(rule, 'for_readings', 1)} consecutive readings"
    if smoothing.how == "timeout":
        return "silent for longer than the timeout"
    return f"no smoothing: {smoothing.reason}"


def _monotonic(aggregate: str, op: str) -> bool:
    return (aggregate in ("count", "sum", "max") and op in (">", ">=")) or (aggregate == "min" and op in ("<", "<="))


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(choices)}"


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------

SITE_LABELS = ("district", "estate", "urban_village", "sorting_point", "transfer_station", "depot", "plant", "line")
SUMMARY_FIELDS = frozenset({"value", "peak", "threshold", "clear", "device_id", "site_id", "subject", "window",
                            "rule_id", "severity", "for", "standard", "kind", "device", "site", "point",
                            "timeout_s", "smoothing", *SITE_LABELS})
_MAX_FORMAT_NUMBER = re.compile(r"\d{4,}")  # a width or precision of 1000 or more


class _Defaulting(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _summary_fields(rule: RuleModel) -> frozenset[str]:
    params = {lim.param for lim in (getattr(rule, "threshold", None), getattr(rule, "clear", None))
              if isinstance(lim, Lookup)}
    checked = CHECK_FIELDS[rule.check] if isinstance(rule, CheckRule) else ()
    return SUMMARY_FIELDS | params | set(rule.labels) | set(checked)


def render_summary(rule: RuleModel | BuiltinRule, context: Mapping[str, Any]) -> str:
    """The rule's summary with its placeholders filled; a value that is missing or cannot be formatted (e.g.
    ``{value:.1f}`` of a window without data) leaves the summary as written. Summaries are checked on load
    (``_check_summary``), so anything else raised here is a fault of the rule, which the evaluator
    quarantines."""
    values = _Defaulting({k: v for k, v in context.items() if v is not None})
    try:
        return string.Formatter().vformat(rule.summary, (), values)
    except (ValueError, TypeError, KeyError):
        return rule.summary


def _placeholders(template: str) -> list[tuple[str, str]]:
    """Every ``{field!conversion:spec}`` of a template, nested specs included: (field, spec)."""
    found: list[tuple[str, str]] = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        found.append((name, spec or ""))
        if spec and "{" in spec:
            found.extend(_placeholders(spec))
    return found


def _sample_context(rule: RuleModel) -> dict[str, Any]:
    """What the evaluator passes to a summary of this kind of rule (``evaluator._candidate``), with plausible
    values: an offline alert has a timeout but no value, peak or clear level."""
    context: dict[str, Any] = {name: f"sample-{name}" for name in
                               ("device_id", "site_id", "subject", "kind", "device", "site", "point", *SITE_LABELS)}
    context.update(rule.labels)
    context.update({"rule_id": rule.id, "severity": rule.severity, "for": "5m", "standard": rule.standard or "GB 0-0",
                    "smoothing": smoothing_text(rule) or "median of the last 5 readings"})
    if isinstance(rule, OfflineRule):
        context.update({"threshold": 900, "timeout_s": 900})
        return context
    context.update({"value": 12.5, "peak": 13.5, "threshold": 10.0, "clear": 9.0})
    if isinstance(rule, CheckRule):
        context.update({name: f"sample-{name}" if name in CHECK_TEXT_FIELDS else 12.5
                        for name in CHECK_FIELDS[rule.check]})
        return context
    if isinstance(rule, WindowRule | EventCountRule):
        context["window"] = rule.window
    for limit in (rule.threshold, rule.clear):
        if isinstance(limit, Lookup):
            context[limit.param] = limit.default or next(iter(limit.values))
    return context


def _check_summary(rule: RuleModel) -> None:
    """Placeholders are known fields, without attribute or index access, and the summary renders against a
    sample of what a rule of its kind gets — so no summary can fail when an alert is raised."""
    allowed = _summary_fields(rule)
    try:
        fields = _placeholders(rule.summary)
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}) — fix: write placeholders like {{value:.1f}}, and "
                         "'{{' / '}}' for literal braces") from None
    for name, spec in fields:
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise ValueError(f"positional placeholder {{{name}}} — fix: name a field, one of "
                             f"{', '.join(sorted(allowed))}")
        if base not in allowed:
            raise ValueError(f"unknown placeholder {{{base}}} — fix: use one of {', '.join(sorted(allowed))}")
        if base != name:
            raise ValueError(f"placeholder {{{name}}}: attribute and index access is not allowed — fix: write "
                             f"{{{base}}} (with a format like {{{base}:.1f}} for numbers)")
        if _MAX_FORMAT_NUMBER.search(spec):
            raise ValueError(f"placeholder {{{name}:{spec}}}: width or precision above 999 — fix: a smaller one")
    try:
        string.Formatter().vformat(rule.summary, (), _Defaulting(_sample_context(rule)))
    except Exception as exc:  # whatever rendering raises is a problem of this summary
        raise ValueError(f"cannot be rendered for a rule of kind {rule.kind} ({type(exc).__name__}: {exc}) — fix: use "
                         "placeholders this kind of rule has (an offline rule has no value, peak or clear), "
                         "with a format that suits them (numbers: {value:.1f}; text: {device_id})") from None


# --------------------------------------------------------------------------------------------
# Built-in rules: the engine's own alerts (not loadable from files or the API)
# --------------------------------------------------------------------------------------------


class BuiltinRule(RuleBase):
    kind: Literal["builtin"] = "builtin"


# A rule that does not validate (a file, an API row) or fails while evaluated is quarantined: kept out of
# evaluation, the other rules go on, and this alert fires for it (subject rule:<id>) until it is fixed.
QUARANTINE_RULE = BuiltinRule(
    id="rule_quarantined", severity="warning", labels={"team": "operations"},
    summary="rule {rule} is quarantined: {problem}",
    description="An alert rule does not validate or failed while evaluated; the other rules are evaluated as usual.")
# A background stage has stopped reporting passes (``sanitel/heartbeats.py``; subject stage:<stage>), raised for the
# collector and the scheduled processor; it resolves when the stage reports again. Critical: with the collector
# stopped nothing is ingested (every device soon looks offline: this alert names the cause), and with the processor
# stopped no CEMS average is computed, so no emission limit (GB 18485-2014, 2010/75/EU) is checked at all — the
# monitoring itself is blind. The evaluator cannot raise it about itself: /health and Prometheus do.
STAGE_OVERDUE_RULE = BuiltinRule(
    id="stage_overdue", severity="critical", labels={"team": "operations"},
    summary="{detail}",
    description="A background stage (collector, scheduled processor) is overdue or has never reported a pass.")
# A CEMS unit's readings are newer than its computed averages (the emission rules' input): its periods are not
# judged meanwhile — rather than "missing" or "invalid" verdicts on averages not computed yet — and this alert
# says so per device (subject device:<id>, like the emission rules). It resolves once the averages catch up.
AVERAGES_BEHIND_RULE = BuiltinRule(
    id="cems_averages_behind", severity="warning", labels={"team": "operations"},
    summary="emission averages of {device_id} are behind its readings: {readings} readings from {first_ts} to "
            "{last_ts} not averaged yet, so its emission rules wait (is the scheduled processor running?)",
    description="CEMS readings were stored that the scheduled processor has not averaged yet; the emission "
                "rules of the device are not judged until it has.")
BUILTIN_RULES: dict[str, BuiltinRule] = {r.id: r for r in (QUARANTINE_RULE, STAGE_OVERDUE_RULE,
                                                           AVERAGES_BEHIND_RULE)}


# --------------------------------------------------------------------------------------------
# Per-site limits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """A rule's limits for one subject, after per-site parameters and overrides."""

    threshold: float
    clear: float | None
    context: dict[str, Any] = field(default_factory=dict)  # the parameters used, for summaries
    # mg/m³ subtracted from an average before it is compared (2010/75/EU Annex VI Part 6 §1.3), for an
    # emission_limit rule: a share of the pollutant's effective daily limit; None: the rule's own settings
    confidence_interval: float | None = None


SiteParams = Sequence[tuple[str, Mapping[str, Any] | None]]  # (site id, its own params), root of the tree first


def rule_disabled_for(rule_id: str, params: Mapping[str, Any]) -> bool:
    patterns = params.get("disabled_rules") or ()
    if not isinstance(patterns, list | tuple):
        raise ConfigError(f"disabled_rules: {patterns!r} is not a list — fix: a list of rule ids or globs, e.g. "
                          '["cems_*_half_hourly_b"]')
    return any(fnmatch.fnmatchcase(rule_id, str(p)) for p in patterns)


def _overrides(params: Mapping[str, Any]) -> Mapping[str, Any]:
    overrides = params.get("limits") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"limits: {overrides!r} is not an object — fix: {{<rule id>: <value> | "
                          "{threshold, clear}}")
    return overrides


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: {value!r} is not a number — fix: write the limit as a number")
    return float(value)


def limits_for(rule: RuleModel, params: Mapping[str, Any], sites: SiteParams = ()) -> Limits | None:
    """The rule's threshold and clear limit for a subject with these (merged) parameters, or None when
    the rule does not apply there (disabled, or a lookup parameter the site does not have).

    An ``emission_limit`` rule reads ``sanitel.emission_limits.limit_set(sites)`` — ``sites`` is the subject's
    site chain with each site's own params, plant before line, as the compliance report passes them — and
    raises ConfigError when a site's ``emission_limits`` does not parse or ``limits`` still names the rule."""
    if isinstance(rule, OfflineRule) or rule_disabled_for(rule.id, params):
        return None
    if isinstance(rule, CheckRule):
        return _check_limits(rule, params)
    if isinstance(rule, WindowRule) and rule.emission_limit is not None:
        return _emission_limits(rule, params, sites)
    context = {lim.param: params.get(lim.param, lim.default)
               for lim in (rule.threshold, rule.clear) if isinstance(lim, Lookup)}
    threshold = _resolve(rule.threshold, params)
    clear = _resolve(rule.clear, params) if rule.clear is not None else None
    if threshold is None:
        return None
    override = _overrides(params).get(rule.id)
    where = f"limits.{rule.id}"
    if isinstance(override, Mapping):
        new_threshold = _number(override.get("threshold", threshold), f"{where}.threshold")
        clear = (_number(override["clear"], f"{where}.clear") if override.get("clear") is not None
                 else _scaled_clear(threshold, clear, new_threshold))
        threshold = new_threshold
    elif override is not None:
        new_threshold = _number(override, where)
        clear = _scaled_clear(threshold, clear, new_threshold)
        threshold = new_threshold
    return Limits(threshold, _clear_on_safe_side(rule.op, threshold, clear), context)


def _check_limits(rule: CheckRule, params: Mapping[str, Any]) -> Limits:
    """A check's main limit, moved by ``limits: {<rule id>: N}`` (the clear level scaled, as for any rule)."""
    threshold, clear = rule.threshold, rule.clear
    override = _overrides(params).get(rule.id)
    if override is not None:
        where = f"limits.{rule.id}"
        raw = override.get("threshold", threshold) if isinstance(override, Mapping) else override
        new_threshold = _number(raw, where)
        clear = _scaled_clear(threshold, clear, new_threshold)
        threshold = new_threshold
    return Limits(threshold, _clear_on_safe_side(">", threshold, clear))


def _emission_limits(rule: WindowRule, params: Mapping[str, Any], sites: SiteParams) -> Limits:
    key, pollutant = cast(str, rule.emission_limit), str(rule.where["pollutant"])
    legacy = _overrides(params)
    if rule.id in legacy:
        raise ConfigError(legacy_limit_message("sites.params", rule, legacy[rule.id]))
    limits = limit_set(sites)
    limit = limits.get(key, pollutant)
    if limit is None:  # the rule validated against the same defaults: cannot happen unless the file changed
        raise ConfigError(f"{DEFAULTS_FILE.name} has no {key} limit for {pollutant} (rule {rule.id})")
    interval = limits.confidence_interval(pollutant) if LIMIT_KEYS[key][0] == "eu" else 0.0
    context = {"limit_source": limit.source, "permit": limit.permit}
    clear = _scaled_clear(cast(float, rule.threshold), rule.clear if isinstance(rule.clear, float) else None,
                          limit.value)
    return Limits(limit.value, _clear_on_safe_side(rule.op, limit.value, clear), context, interval)


def legacy_limit_message(where: str, rule: WindowRule, value: Any) -> str:
    """Why ``limits[<rule id>]`` is refused for an emission_limit rule, with the override to write instead."""
    key, pollutant = cast(str, rule.emission_limit), rule.where.get("pollutant")
    number = value.get("threshold") if isinstance(value, Mapping) else value
    shown = f"{number:g}" if isinstance(number, int | float) and not isinstance(number, bool) else "<mg/m³>"
    return (f"{where}.limits.{rule.id}: rule {rule.id} judges an emission limit ({key} of {pollutant}), which is "
            f"set per plant or line in {PARAMS_KEY} — the grammar the compliance report reads too — fix: "
            f'{{"{PARAMS_KEY}": {{"{pollutant}": {{"{key}": {shown}}}}}}} instead of limits.{rule.id}')


def site_params_problems(site_id: str, params: Mapping[str, Any] | None, rules: Iterable[RuleModel],
                         where: str | None = None) -> list[str]:
    """What in a site's (or device's) own params the emission-limit rules cannot use: an ``emission_limits``
    that does not parse, or ``limits`` naming an emission_limit rule. Empty when all is well."""
    own = params or {}
    problems: list[str] = []
    try:
        parse_emission_limits(own, site_id)
    except ConfigError as exc:
        problems.append(str(exc))
    legacy = own.get("limits")
    for rule in legacy_limit_rules(legacy, rules):
        problems.append(legacy_limit_message(where or f"sites.params of {site_id}", rule,
                                             cast(Mapping[str, Any], legacy)[rule.id]))
    return problems


def legacy_limit_rules(limits: Any, rules: Iterable[RuleModel]) -> list[WindowRule]:
    """The emission_limit rules a ``limits`` parameter still names (refused: use ``emission_limits``)."""
    if not isinstance(limits, Mapping):
        return []
    return [r for r in rules if isinstance(r, WindowRule) and r.emission_limit is not None and r.id in limits]


def _resolve(limit: float | Lookup, params: Mapping[str, Any]) -> float | None:
    return limit.resolve(params) if isinstance(limit, Lookup) else limit


def _scaled_clear(old_threshold: float, old_clear: float | None, new_threshold: float) -> float | None:
    # an overridden limit keeps the rule's hysteresis as a proportion (permit limits differ by site)
    if old_clear is None:
        return None
    if old_threshold == 0:
        return new_threshold
    return new_threshold * old_clear / old_threshold


def _clear_on_safe_side(op: str, threshold: float, clear: float | None) -> float | None:
    if clear is None:
        return None
    return min(clear, threshold) if op in (">", ">=") else max(clear, threshold)


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

DEFAULT_RULES_PACKAGE = "sanitel.alerts"


INCIDENT_RULES_FILE = "incidents.yaml"


def default_rule_files() -> list[Path]:
    folder = resources.files(DEFAULT_RULES_PACKAGE) / "rules"
    # incidents.yaml holds the grouping and inhibition rules (alerts/incidents.py), not alert rules
    return sorted(Path(str(p)) for p in folder.iterdir()
                  if p.name.endswith((".yaml", ".yml")) and p.name != INCIDENT_RULES_FILE)


def validate_rule_dict(data: Any, *, origin: str = "rule") -> RuleModel:
    """One rule mapping (from YAML or the API) → a validated rule, or ConfigError naming the key and the fix."""
    rule_id = data.get("id", "?") if isinstance(data, dict) else "?"
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a rule must be a mapping of key: value, not {type(data).__name__}")
    if isinstance(rule_id, str) and rule_id in BUILTIN_RULES:
        raise ConfigError(f"{origin}: rule {rule_id!r}: key 'id': {rule_id!r} is the alert engine's own rule — fix: "
                          "choose another id")
    try:
        rule = _RULE.validate_python(data)
    except ValidationError as exc:
        lines = [_describe(origin, rule_id, loc, err, data) for loc, err in _one_per_key(exc.errors())]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None
    for key, check in (("summary", _check_summary), ("smoothing", _check_smoothing)):
        try:
            check(rule)
        except ValueError as exc:
            raise ConfigError(f"{origin}: rule {rule_id!r}: key '{key}': {exc}") from None
    return rule


def _is_branch(part: str) -> bool:
    # pydantic names the member of a union it tried: float, str, list[...], Lookup, function-after[...]
    return part in ("float", "str", "bool", "int") or "[" in part or part[:1].isupper()


def _one_per_key(errors: list[Any]) -> list[tuple[list[str], Any]]:
    """Errors of a union (``threshold: 3`` or ``{param: …}``) come once per member tried: keep the member
    the input was meant for (the one that got deeper), else the first."""
    groups: dict[tuple[str, ...], list[tuple[list[str], Any]]] = {}
    for err in errors:
        raw = [str(p) for p in err["loc"]]
        if raw and raw[0] in RULE_KINDS:
            raw = raw[1:]  # the discriminator's tag
        branch_at = next((i for i, p in enumerate(raw) if _is_branch(p)), len(raw))
        clean = [p for p in raw if not _is_branch(p)]
        groups.setdefault(tuple(clean[:branch_at]), []).append((clean, err))
    kept: list[tuple[list[str], Any]] = []
    for base, members in groups.items():
        deeper = [m for m in members if len(m[0]) > len(base)]
        checks = [m for m in members if m[1]["type"] == "value_error"]  # a member's own check failed
        kept.extend(deeper or checks or members[:1])
    return kept


def _describe(origin: str, rule_id: str, loc: list[str], err: Any, data: Mapping[str, Any]) -> str:
    message = err["msg"].removeprefix("Value error, ")
    if message.startswith("[") and "] " in message:  # a model check naming its key: "[clear] …"
        key, message = message[1:].split("] ", 1)
        loc = [*loc, *key.split(".")]
    key = ".".join(loc) or "(rule)"
    kind = err["type"]
    if " — fix: " in message:  # a check that knows its own fix
        message, fix = message.split(" — fix: ", 1)
    elif kind == "extra_forbidden":
        known = _known_keys(data.get("kind"))
        fix = f"remove it{_did_you_mean(loc[-1], known) if known else ''}"
        message = "unknown key"
    elif kind == "missing":
        fix = f"add '{loc[-1] if loc else key}: …'"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        key = "kind"
        message = f"kind {data.get('kind')!r} is not a rule kind" if data.get("kind") else "no 'kind'"
        fix = f"set kind to one of {', '.join(RULE_KINDS)}"
    elif kind == "literal_error":
        message = f"{err.get('input')!r} is not allowed"
        fix = f"use {err.get('ctx', {}).get('expected', 'an allowed value')}"
    else:
        fix = _FIX_BY_KEY.get(loc[-1] if loc else "", "correct the value")
    return f"{origin}: rule {rule_id!r}: key '{key}': {message} — fix: {fix}"


_FIX_BY_KEY = {
    "threshold": "give a number, or {param: <site parameter>, values: {<key>: <number>}, default: <key>}",
    "clear": "give a number on the safe side of the threshold (or remove 'clear' for no hysteresis)",
    "for": "write a duration like 90s, 5m, 1h",
    "keep_firing_for": "write a duration like 90s, 5m, 1h",
    "repeat_interval": "write a duration like 30m, 4h",
    "timeout": "write a duration like 15m",
    "over": "write a duration like 10m",
    "severity": f"use one of {', '.join(SEVERITIES)}",
    "id": "use lower-case letters, digits, '.', '_' or '-' (e.g. transfer_station.h2s)",
}


def _known_keys(kind: object) -> list[str]:
    models: dict[str, type[RuleBase]] = {"threshold": ThresholdRule, "rate": RateRule, "window": WindowRule,
                                         "event_count": EventCountRule, "offline": OfflineRule, "builtin": CheckRule}
    model = models.get(str(kind))
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


@dataclass
class RuleSet:
    """The rules in force: id → rule, and where each came from (file path or ``database``); and the rules
    left out because they do not validate (``problems``: rule id, or ``file:<name>`` for a file that could
    not be read at all → why), which the evaluator quarantines."""

    rules: dict[str, RuleModel] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def enabled(self) -> list[RuleModel]:
        return [r for r in self.rules.values() if r.enabled]

    def add(self, rule: RuleModel, origin: str, *, replace: bool = False) -> None:
        if rule.id in self.rules and not replace:
            raise ConfigError(f"{origin}: rule {rule.id!r}: key 'id': already defined in {self.origins[rule.id]} "
                              "— fix: give one of them another id")
        self.rules[rule.id] = rule
        self.origins[rule.id] = origin


# libyaml's safe loader when installed: the pure-Python one takes ~0.2 s per pack, on every load and reload
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_rule_items(path: Path) -> list[Any]:
    try:
        loaded = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    items = loaded.get("rules") if isinstance(loaded, dict) else loaded
    if not isinstance(items, list):
        raise ConfigError(f"{path}: expected 'rules: [ … ]' (a list of rules) at the top level")
    return items


def _item_key(item: Any, path: Path, index: int) -> str:
    """The quarantine key of a rule that does not validate: its id, or where it is when it has none."""
    rule_id = item.get("id") if isinstance(item, dict) else None
    return rule_id if isinstance(rule_id, str) and rule_id else f"file:{path.name}#{index + 1}"


def load_rule_file(path: Path) -> list[RuleModel]:
    """Rules of one YAML file: ``{pack: …, rules: [ … ]}`` or a bare list of rules."""
    items = _read_rule_items(path)
    problems: list[str] = []
    rules: list[RuleModel] = []
    for item in items:
        try:
            rules.append(validate_rule_dict(item, origin=str(path)))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return rules


def rule_files(rules_dir: Path | None) -> list[Path]:
    files = default_rule_files()
    if rules_dir is not None:
        if not rules_dir.is_dir():
            raise ConfigError(f"{rules_dir}: rules_dir is not a folder — fix: set SANITEL_RULES_DIR to a folder of "
                              "*.yaml rule files, or unset it")
        files += sorted(p for p in [*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")] if p.name != INCIDENT_RULES_FILE)
    return files


def load_files(paths: Iterable[Path]) -> RuleSet:
    """Rules of these files; all problems of all files are reported together (``sanitel rules validate``)."""
    ruleset = RuleSet()
    problems: list[str] = []
    for path in paths:
        try:
            for rule in load_rule_file(path):
                ruleset.add(rule, str(path))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("invalid alert rules:\n" + "\n".join(problems))
    return ruleset


def load_files_tolerant(rules_dir: Path | None, previous: RuleSet | None = None) -> RuleSet:
    """The engine's loader: every rule that validates is in force; each one that does not is left out and
    named in ``problems`` (the evaluator quarantines it and raises an alert about it) — one bad rule never
    stops the others. A file that cannot be read at all keeps the rules ``previous`` had from it."""
    ruleset = RuleSet()
    try:
        paths = rule_files(rules_dir)
    except ConfigError as exc:
        ruleset.problems["file:rules_dir"] = str(exc)
        paths = default_rule_files()
    for path in paths:
        try:
            items = _read_rule_items(path)
        except ConfigError as exc:
            ruleset.problems[f"file:{path.name}"] = str(exc)
            kept = [previous.rules[rid] for rid, origin in previous.origins.items()
                    if origin == str(path)] if previous else []
            for rule in kept:  # as it was: better than nothing
                if rule.id not in ruleset.rules:
                    ruleset.add(rule, str(path))
            continue
        for index, item in enumerate(items):
            try:
                ruleset.add(validate_rule_dict(item, origin=str(path)), str(path))
            except ConfigError as exc:
                ruleset.problems[_item_key(item, path, index)] = str(exc)
    return ruleset


def load_database_rules(conn: Any, ruleset: RuleSet) -> list[str]:
    """Add the ``alert_rules`` rows (replacing shipped rules of the same id); returns the problems of rows
    that do not validate — those rows are skipped (a shipped rule of the same id stays in force) and, when
    enabled, named in ``ruleset.problems``, so one bad API edit never stops the engine."""
    problems: list[str] = []
    for rule_id, definition, enabled in conn.execute(
            "SELECT rule_id, definition, enabled FROM alert_rules ORDER BY rule_id").fetchall():
        try:
            rule = validate_rule_dict({**definition, "id": rule_id}, origin=f"alert_rules row {rule_id!r}")
        except ConfigError as exc:
            problems.append(str(exc))
            if enabled:
                kept = f"the rule of {ruleset.origins[rule_id]} stays in force; " if rule_id in ruleset.rules else ""
                ruleset.problems[rule_id] = f"{kept}{exc}"
            continue
        ruleset.problems.pop(rule_id, None)  # a stored rule that validates replaces a broken file rule of its id
        ruleset.add(rule.model_copy(update={"enabled": rule.enabled and enabled}), "database", replace=True)
    return problems


def load_rules(rules_dir: Path | None = None, conn: Any = None) -> tuple[RuleSet, list[str]]:
    """Shipped packs + ``rules_dir`` + database rules. Files must all validate (ConfigError otherwise);
    bad database rows are returned as problems and skipped."""
    ruleset = load_files(rule_files(rules_dir))
    problems = load_database_rules(conn, ruleset) if conn is not None else []
    return ruleset, problems
