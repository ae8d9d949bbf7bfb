"""Emission averages per stack line: 10-minute (CO), half-hourly, hourly and daily, of concentrations
normalised to 11 % O2 dry, stored in the ``cems_averages`` hypertable (migrations 0020, 0080).

Sources: 2010/75/EU Annex VI Part 8 (validity, discards), HJ 212-2017 (data flags), HJ 75-2017 (hourly and
daily validity; unverified, quoted from memory, not in standards.md), the MEE rules for marking automatic-
monitoring data of municipal-waste incineration power plants (announcement 2019 No. 50; the marks themselves
are processors/cems_marks.py). Choices of this project are marked "(project choice)".

What one reading counts for, per pollutant (the first rule that applies decides):
1. Marks (announcement 2019 No. 50; ``cems_marks.effective_marks``: the plant's stored marks and the data
   unit's): a reading under a furnace mark (bake_out, start_up, shut_down, shut, fault, accident) is discarded
   as ``marked_<mark>`` — the line is not in normal operation; under a monitoring-system mark as ``<mark>``
   (``cms_maintenance``, ``cms_calibration``, ``cms_fault``, ``cms_outage``). A furnace mark wins.
2. The pollutant's HJ 212-2017 flag: N counts (and S where the operator allows manual values:
   ``AveragingRules.counted_flags``); a missing flag (JSON readings) counts as N. T (above the analyser's
   range) counts as a lower bound, see 5. Any other flag discards as ``flag_<X>``: F (停运, the source is
   stopped) as not operating; M, C, D, B (maintenance, calibration, fault, analyser–DAU communication fault),
   S where not allowed and unknown flags as the measuring system's.
3. Moisture: a wet-basis reading (``gas_is_dry`` false) whose ``h2o_flag`` does not count is discarded as
   ``h2o_flag_<X>`` before any wet→dry correction — also when the analyser sent its own normalised value, which
   it dried with the same moisture reading (project choice).
4. O2: the analyser's normalised value (``*_zs_mg_m3``) is used when sent, but not while the O2 analyser is
   flagged not valid (``o2_flag_<X>``: normalised with calibration gas, not flue gas) nor above the O2 guard
   (``o2_guard``). A normalised value with no O2 at all (neither value nor flag) counts: the analyser normalised
   it with the O2 it had and we have nothing better (project choice). Otherwise the value is computed from the
   measured value and O2 (dried with H2O first when ``gas_is_dry`` is false): ``no_o2``, ``o2_flag_<X>``, and
   from processors/cems_normalise.py ``o2_guard``, ``bad_o2``, ``no_h2o``, ``bad_h2o``.
5. Flag T: the true value is at least the top of the analyser's range, so the value used is max(measured,
   range), normalised like any value (an analyser-normalised value is scaled by the same used/measured ratio;
   a T reading with a normalised value only keeps it). A gross excursion is then an exceedance, not an
   "invalid" period (project choice; issue 13). Ranges per pollutant, in measured mg/m³: the device's
   ``devices.metadata.analyser_range_mg_m3`` ({"so2": 500, …}) over ``AveragingRules.analyser_range_mg_m3``
   (project defaults of common CEMS ranges, not regulatory figures). These readings are valid: a period counts
   them as ``"over_range": n`` in its ``discarded`` jsonb, not in ``n_discarded``.

Base data: every real-time row (CN 2011), and each minute row (CN 2051) whose minute [ts, ts + minute
interval) holds no real-time row — a DAU sends both for the same time and counting both would double count,
while minute data re-sent after an outage fill the hole the real-time data left. A row covers its own kind's
nominal interval (the median gap between rows of that kind in the window), so a silent DAU is an uncovered
period, not a short valid one; sub-day averages are means weighted by that coverage. Hour and day rows a
DAU sends are stored but not averaged again: we compute our own.

Sub-day period status (editable defaults in ``AveragingRules``; the first that applies):
- ``valid``: valid readings cover enough of the period: 10-min and half-hour 2/3 (the EU directive sets no
  figure; 2/3 is a project choice, the share HJ 75 uses for the hour), hour 45 minutes (HJ 75-2017, unverified);
- ``in_progress``: the period has not ended (no verdict yet);
- ``marked``: its readings are mostly under a furnace mark, or it lies mostly inside one (share
  ``not_operating_share``): outside normal operation, never judged;
- ``missing``: no reading at all;
- ``not_operating``: its readings are mostly ``o2_guard`` (start-up, shut-down, idle) or flag F;
- ``invalid``.

Discarded "due to malfunction or maintenance of the continuous measurement system" (Annex VI Part 8): an
``invalid`` or ``missing`` period that would have been valid had the measuring system worked — the time the
line spent under furnace marks, flagged F or above the O2 guard alone would not have made it invalid. The
rest of the time that is not valid is the measuring system's: flags M, C, D, B (S where not allowed, unknown
flags), monitoring-system marks, an O2 or moisture analyser not valid, no value or a non-finite one
(``no_value``, ``bad_value``), and time with no data at all while the line is not marked: the data unit
failed (project choice: without data nothing shows the line was not operating; the plant marks the line's
state to show it). ``marked``, ``not_operating`` and periods not yet started are never discarded ones.

Daily averages:
- EU (Annex VI Part 8): the mean of the valid half-hourly averages. ``discarded`` jsonb = {"periods": {status:
  n} of the half-hours not valid, "readings": {reason: n}, "cms_discarded": n}; ``n_discarded`` = cms_discarded.
  Valid iff there are valid half-hours and cms_discarded ≤ 5 ("no more than five half-hourly average values in
  any day shall be discarded due to malfunction or maintenance of the continuous measurement system"). A day
  not over is ``in_progress`` (no verdict on a period that has not ended, issue 18), except that it is
  ``invalid`` as soon as more than 5 of its half-hours are discarded for certain: ``invalid`` half-hours whose
  readings that arrived leave too little time for validity whatever else arrives (a back-fill of their silent
  time could not save them; a ``missing`` one may still be back-filled). Half-hours not yet started are not
  generated, so they are never missing.
- GB 24-hour (GB 18485-2014 with HJ 75-2017): the mean of the valid hourly averages; valid when at least 20
  hourly averages are valid (unverified, HJ 75-2017 as above); ``n_discarded`` = invalid + missing hours.
- A past day with no valid sub-period and none discarded for the measuring system is ``marked`` or
  ``not_operating`` (whichever more of its sub-periods are).

Periods are clock-aligned in the plant's local time (``sites.timezone``, Asia/Shanghai by default):
days run from local midnight. Any change to a day recomputes the whole day: its daily average
depends on all its half-hours. The scheduled pass (``recompute_since``) recomputes the days touched by
readings stored, and by marks created (a correction also re-opens the span of the mark it supersedes),
since its watermark.
"""

from __future__ import annotations

import logging
import math
import statistics
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from sanitel.db import one_row
from sanitel.processors.cems_marks import Mark, effective_marks, mark_at
from sanitel.processors.cems_normalise import O2_GUARD_PCT, O2_REF_PCT, NormalisationError, to_reference
from sanitel.processors.watermarks import read_watermark, store_watermark

log = logging.getLogger("sanitel.cems_averages")

POLLUTANTS: tuple[str, ...] = ("dust", "so2", "nox", "co", "hcl", "hf", "toc", "nh3", "hg")
DEFAULT_TZ = "Asia/Shanghai"
WATERMARK_NAME = "cems_averages"
# recompute_since re-reads rows stored this long before its watermark (see there); a row stored earlier
# than watermark − overlap has been averaged (compliance.py relies on this to tell "behind" from "done")
WATERMARK_OVERLAP = timedelta(minutes=15)
_LOCK_NAMESPACE = 0x0CE5  # advisory-lock key space of this processor

OVER_RANGE_FLAG = "T"  # HJ 212-2017: above the analyser's measuring range
# discard reasons that say the line was not in normal operation, not that the measuring system failed
# (marked_<furnace mark> is the third); every other reason is the measuring system's (module docstring)
NOT_OPERATING_REASONS = frozenset({"flag_F", "o2_guard"})
MARKED_PREFIX = "marked_"
# project defaults, mg/m³ as measured: common CEMS analyser ranges at incinerator stacks, not regulatory
# figures; a device's own ranges go in devices.metadata.analyser_range_mg_m3
DEFAULT_ANALYSER_RANGE_MG_M3: Mapping[str, float] = {
    "dust": 200.0, "so2": 1000.0, "nox": 1000.0, "co": 1000.0, "hcl": 200.0, "hf": 20.0, "toc": 100.0,
    "nh3": 50.0, "hg": 0.1}


@dataclass(frozen=True, slots=True)
class PeriodSpec:
    name: str  # as stored in cems_averages.period
    length: timedelta
    standard: str
    pollutants: tuple[str, ...] = POLLUTANTS


TEN_MINUTES = PeriodSpec("10min", timedelta(minutes=10), "eu", ("co",))
HALF_HOUR = PeriodSpec("30min", timedelta(minutes=30), "eu")
HOUR = PeriodSpec("1h", timedelta(hours=1), "gb")
SUB_DAY_PERIODS: tuple[PeriodSpec, ...] = (TEN_MINUTES, HALF_HOUR, HOUR)


@dataclass(frozen=True)
class AveragingRules:
    """The validity rules; every value is an editable default (see the module docstring)."""

    counted_flags: frozenset[str] = frozenset({"N"})  # add "S" where the operator allows manual values
    min_coverage: Mapping[str, float] = field(
        default_factory=lambda: {"10min": 2 / 3, "30min": 2 / 3, "1h": 45 / 60})
    eu_max_discarded_half_hours: int = 5  # 2010/75/EU Annex VI Part 8
    gb_min_valid_hours: int = 20  # HJ 75-2017 (unverified)
    # a period with ≥ this share of not-operating readings (o2_guard, flag F) is "not operating", of
    # furnace-marked readings (or time) "marked"
    not_operating_share: float = 0.5
    o2_ref: float = O2_REF_PCT
    o2_max: float = O2_GUARD_PCT
    default_interval_s: float = 60.0  # nominal reading interval when a window has < 2 readings of a kind
    analyser_range_mg_m3: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ANALYSER_RANGE_MG_M3))


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading's verdict for one pollutant: a valid normalised value, or a discard reason."""

    ts: datetime
    zs: float | None
    meas: float | None
    reason: str | None  # None = counts
    over_range: bool = False  # flag T, counted at least at the analyser's range (module docstring, 5)
    covers_s: float = 60.0  # the time the reading stands for: its kind's nominal interval


@dataclass(slots=True)
class Average:
    """One row of cems_averages (the last two fields are not stored: the daily average reads them)."""

    pollutant: str
    period: str
    standard: str
    start: datetime
    end: datetime
    avg_zs: float | None
    avg_meas: float | None
    n_valid: int
    n_discarded: int
    discarded: dict[str, Any]
    covered_s: float | None
    status: str
    cms_discarded: bool = False  # discarded for malfunction or maintenance of the measuring system
    cms_certain: bool = False  # … from data that arrived, whatever arrives later (in-progress days)

    @property
    def valid(self) -> bool:
        return self.status == "valid"


# --- one reading → one sample per pollutant ------------------------------------------------------

def evaluate(row: Mapping[str, Any], pollutant: str, rules: AveragingRules, mark: Mark | None = None, *,
             covers_s: float | None = None) -> Sample | None:
    """The sample of ``pollutant`` in a reading (under ``mark``, if any), or None when the reading does not
    carry the pollutant at all."""
    meas, zs, flag = row.get(f"{pollutant}_mg_m3"), row.get(f"{pollutant}_zs_mg_m3"), row.get(f"{pollutant}_flag")
    if meas is None and zs is None and flag is None:
        return None
    ts, covers = row["ts"], rules.default_interval_s if covers_s is None else covers_s
    # (the common case, an unmarked reading flagged N, skips the calls: this runs for every reading and pollutant)
    reason = None if mark is None else _mark_reason(mark)
    if reason is None and flag is not None and flag not in rules.counted_flags:
        reason = _flag_reason(pollutant, flag, rules)
    if reason is None and meas is None and zs is None:
        reason = "no_value"
    if reason is None and ((meas is not None and not math.isfinite(meas)) or (zs is not None and not math.isfinite(zs))):
        reason = "bad_value"  # NaN or infinity (a PostgreSQL real can hold them) is not a measurement
    if reason is not None:
        return Sample(ts, None, meas, reason, covers_s=covers)
    over = flag == OVER_RANGE_FLAG
    if over:
        meas, zs = at_least_range(meas, zs, rules.analyser_range_mg_m3[pollutant])
    reason = _basis_reason(row, zs, rules)
    if reason is not None:
        return Sample(ts, None, meas, reason, covers_s=covers)
    if zs is None:
        assert meas is not None  # else "no_value" above (at_least_range keeps a measured value)
        try:
            zs = to_reference(meas, row["o2_pct"], gas_is_dry=row.get("gas_is_dry", True),
                              h2o_pct=row.get("h2o_pct"), o2_ref=rules.o2_ref, o2_max=rules.o2_max)
        except NormalisationError as exc:
            return Sample(ts, None, meas, exc.reason, covers_s=covers)
    return Sample(ts, zs, meas, None, over, covers)


def _mark_reason(mark: Mark) -> str:
    return f"{MARKED_PREFIX}{mark.mark}" if mark.furnace else mark.mark


def _flag_reason(pollutant: str, flag: str, rules: AveragingRules) -> str | None:
    """The discard reason of a flag that does not count, or None for a T value with a known range."""
    if flag == OVER_RANGE_FLAG and pollutant in rules.analyser_range_mg_m3:
        return None  # a lower bound (module docstring, 5); with no known range the value says nothing
    return f"flag_{flag}"


def at_least_range(meas: float | None, zs: float | None, range_mg_m3: float) -> tuple[float | None, float | None]:
    """(measured, normalised) of a flag-T reading: the measured value raised to the analyser's range at least,
    the analyser's normalised value scaled by the same ratio (None: normalise the measured value from O2). A
    normalised value alone is kept: it is the analyser's own (≥ the range's, if the analyser clipped)."""
    if meas is None:
        return None, zs
    used = max(meas, range_mg_m3)
    if zs is not None and meas > 0:
        return used, zs * used / meas
    return used, None


def _basis_reason(row: Mapping[str, Any], zs: float | None, rules: AveragingRules) -> str | None:
    """Why the moisture or O2 the value rests on makes it unusable (module docstring, 3–4), or None."""
    h2o_flag = row.get("h2o_flag")
    if not row.get("gas_is_dry", True) and h2o_flag is not None and h2o_flag not in rules.counted_flags:
        return f"h2o_flag_{h2o_flag}"
    o2, o2_flag = row.get("o2_pct"), row.get("o2_flag")
    o2_flag_bad = o2_flag is not None and o2_flag not in rules.counted_flags
    if zs is not None:
        if o2_flag_bad:
            return f"o2_flag_{o2_flag}"  # the analyser normalised with calibration gas, not flue gas
        # the analyser's own normalisation exploded near ambient O2 just the same
        return "o2_guard" if o2 is not None and o2 > rules.o2_max else None
    if o2 is None:
        return "no_o2"
    if o2_flag_bad:
        return f"o2_flag_{o2_flag}"  # an O2 analyser in calibration reads calibration gas, not flue gas
    return None  # the O2 guard itself is applied by to_reference, on dry O2


def cms_reason(reason: str) -> bool:
    """True when a discard reason is the measuring system's (module docstring), not the line's state."""
    return reason not in NOT_OPERATING_REASONS and not reason.startswith(MARKED_PREFIX)


# --- clock-aligned periods in local time ---------------------------------------------------------

def local_day_bounds(day: date, tz: str) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) of ``day`` as UTC datetimes."""
    zone = ZoneInfo(tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_day(ts: datetime, tz: str) -> date:
    return ts.astimezone(ZoneInfo(tz)).date()


def period_starts(day_start: datetime, day_end: datetime, length: timedelta) -> list[datetime]:
    """Starts of the sub-periods of one local day (UTC). Offsets of whole quarter hours keep local
    10/30/60-minute boundaries on UTC boundaries of the same length, so stepping in UTC is exact."""
    starts, t = [], day_start
    while t < day_end:
        starts.append(t)
        t += length
    return starts


def bucket_start(ts: datetime, day_start: datetime, length: timedelta) -> datetime:
    return day_start + ((ts - day_start) // length) * length


def nominal_interval_s(timestamps: Sequence[datetime], default: float) -> float:
    """The base data's reading interval: the median positive gap (robust to outages)."""
    gaps = [(b - a).total_seconds() for a, b in pairwise(timestamps) if b > a]
    return statistics.median(gaps) if gaps else default


Span = tuple[datetime, datetime | None]  # [start, end); None: open


def furnace_spans(marks: Iterable[Mark]) -> list[Span]:
    """The furnace marks' time as disjoint sorted spans (stored and DAU marks may overlap)."""
    merged: list[Span] = []
    for start, end in sorted(((m.start, m.end) for m in marks if m.furnace),
                             key=lambda s: (s[0], s[1] is None, s[1] or s[0])):
        if merged and (merged[-1][1] is None or start <= merged[-1][1]):
            last_start, last_end = merged[-1]
            merged[-1] = (last_start, None if last_end is None or end is None else max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def spans_seconds(spans: Sequence[Span], start: datetime, end: datetime) -> float:
    """Seconds of [start, end) inside the spans."""
    total = 0.0
    for s, e in spans:
        lo, hi = max(s, start), end if e is None else min(e, end)
        if hi > lo:
            total += (hi - lo).total_seconds()
    return total


# --- averaging -----------------------------------------------------------------------------------

def _covered_s(samples: Iterable[Sample]) -> float:
    """Time the samples stand for, each time stamp once."""
    return sum({s.ts: s.covers_s for s in samples}.values())


def _mean(values: Sequence[float], weights: Sequence[float] | None = None) -> float | None:
    """Plain float sums, not statistics.fmean: its fsum raises on overflow, and an average must not."""
    if not values:
        return None
    weights = weights if weights is not None and sum(weights) > 0 else [1.0] * len(values)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def average_period(pollutant: str, spec: PeriodSpec, start: datetime, samples: Sequence[Sample],
                   rules: AveragingRules, now: datetime, marked_s: float = 0.0) -> Average:
    """One sub-day average of normalised values, with counts, the validity verdict and whether it was
    discarded for the measuring system; ``marked_s``: seconds of the period under furnace marks."""
    end = start + spec.length
    valid = [s for s in samples if s.reason is None]
    discards = [s for s in samples if s.reason is not None]
    reasons = Counter(s.reason for s in discards if s.reason is not None)
    length_s = spec.length.total_seconds()
    needed_s = rules.min_coverage[spec.name] * length_s
    covered = min(length_s, _covered_s(valid))
    status = _period_status(samples, reasons, covered, needed_s, end > now, marked_s / length_s, rules)
    # would the period have been valid had the measuring system worked? (module docstring)
    not_operating_s = min(length_s, marked_s + _covered_s(s for s in discards if s.reason in NOT_OPERATING_REASONS))
    cms = status in ("invalid", "missing") and length_s - not_operating_s >= needed_s
    # … and can no reading still to arrive (a back-fill of its silent time) make it valid?
    cms_s = _covered_s(s for s in discards if s.reason is not None and cms_reason(s.reason))
    certain = cms and status == "invalid" and length_s - not_operating_s - cms_s < needed_s
    counted = dict(reasons)
    if over := sum(s.over_range for s in valid):
        counted["over_range"] = over  # valid lower bounds, not discards: not in n_discarded
    weights = [s.covers_s for s in valid]
    meas = [(s.meas, s.covers_s) for s in valid if s.meas is not None]
    return Average(pollutant, spec.name, spec.standard, start, end,
                   _mean([s.zs for s in valid if s.zs is not None], weights),  # valid: zs not None
                   _mean([m for m, _ in meas], [w for _, w in meas]),
                   len(valid), len(discards), counted, covered, status, cms, certain)


def _period_status(samples: Sequence[Sample], reasons: Mapping[str, int], covered: float, needed_s: float,
                   open_: bool, marked_share: float, rules: AveragingRules) -> str:
    share = rules.not_operating_share
    if covered >= needed_s:
        return "valid"
    if open_:
        return "in_progress"
    marked = sum(n for r, n in reasons.items() if r.startswith(MARKED_PREFIX))
    if marked_share >= share or (samples and marked >= share * len(samples)):
        return "marked"
    if not samples:
        return "missing"
    if sum(reasons.get(r, 0) for r in NOT_OPERATING_REASONS) >= share * len(samples):
        return "not_operating"
    return "invalid"


def average_day(pollutant: str, standard: str, day_start: datetime, day_end: datetime,
                parts: Sequence[Average], rules: AveragingRules, now: datetime) -> Average:
    """Daily average from valid half-hours (EU) or valid hours (GB), with its validity verdict."""
    valid = [p for p in parts if p.valid]
    statuses = Counter(p.status for p in parts if not p.valid)
    readings: Counter[str] = Counter()
    for p in parts:
        readings.update(p.discarded)
    discarded: dict[str, Any] = {"periods": dict(statuses), "readings": dict(readings)}
    cms = sum(p.cms_discarded for p in parts)
    if standard == "eu":
        n_discarded = discarded["cms_discarded"] = cms
        certain = sum(p.cms_certain for p in parts)
        if day_end > now:  # no verdict before the day ends, unless the data that arrived already decide it
            status = "invalid" if certain > rules.eu_max_discarded_half_hours else "in_progress"
        else:
            status = "valid" if valid and cms <= rules.eu_max_discarded_half_hours else "invalid"
    else:
        n_discarded = statuses["invalid"] + statuses["missing"]
        status = ("in_progress" if day_end > now
                  else "valid" if len(valid) >= rules.gb_min_valid_hours else "invalid")
    if status == "invalid" and not valid and not cms and (statuses["marked"] or statuses["not_operating"]):
        status = "marked" if statuses["marked"] >= statuses["not_operating"] else "not_operating"
    zs = [p.avg_zs for p in valid if p.avg_zs is not None]
    meas = [p.avg_meas for p in valid if p.avg_meas is not None]
    return Average(pollutant, "1d", standard, day_start, day_end,
                   _mean(zs), _mean(meas),
                   len(valid), n_discarded, discarded, None, status)


def _row_covers(row: Mapping[str, Any], interval_s: float | Mapping[str, float], rules: AveragingRules) -> float:
    if isinstance(interval_s, Mapping):
        return interval_s.get(row.get("data_kind", "rtd"), rules.default_interval_s)
    return interval_s


def compute_day(rows: Sequence[Mapping[str, Any]], day_start: datetime, day_end: datetime,
                interval_s: float | Mapping[str, float], rules: AveragingRules, now: datetime,
                marks: Sequence[Mark] = ()) -> list[Average]:
    """Every average of one local day from that day's base readings (pure; sorted by ts). ``interval_s``: the
    time one reading stands for, or per data kind; ``marks``: the line's marks (``cems_marks.effective_marks``)."""
    covers = [_row_covers(r, interval_s, rules) for r in rows]
    row_marks = [mark_at(marks, r["ts"]) for r in rows] if marks else [None] * len(rows)
    spans = furnace_spans(marks)
    bucket_cache: dict[str, dict[datetime, datetime]] = {spec.name: {} for spec in SUB_DAY_PERIODS}
    out: list[Average] = []
    for pollutant in POLLUTANTS:
        samples = [s for r, m, c in zip(rows, row_marks, covers, strict=True)
                   if (s := evaluate(r, pollutant, rules, m, covers_s=c)) is not None]
        if not samples:
            continue
        by_period: dict[str, list[Average]] = {}
        for spec in SUB_DAY_PERIODS:
            if pollutant not in spec.pollutants:
                continue
            bucket_of = bucket_cache[spec.name]
            buckets: dict[datetime, list[Sample]] = defaultdict(list)
            for s in samples:
                if (b := bucket_of.get(s.ts)) is None:
                    b = bucket_of[s.ts] = bucket_start(s.ts, day_start, spec.length)
                buckets[b].append(s)
            by_period[spec.name] = [
                average_period(pollutant, spec, start, buckets.get(start, ()), rules, now,
                               spans_seconds(spans, start, start + spec.length))
                for start in period_starts(day_start, day_end, spec.length) if start < now]
            out.extend(by_period[spec.name])
        out.append(average_day(pollutant, "eu", day_start, day_end, by_period["30min"], rules, now))
        out.append(average_day(pollutant, "gb", day_start, day_end, by_period["1h"], rules, now))
    return out


Row = TypeVar("Row", bound=Mapping[str, Any])


def kind_intervals(rows: Iterable[Mapping[str, Any]], default: float) -> dict[str, float]:
    """The nominal interval of each data kind's rows (rtd, minute) in a window."""
    by_kind: dict[str, list[datetime]] = defaultdict(list)
    for r in rows:
        by_kind[r["data_kind"]].append(r["ts"])
    return {kind: nominal_interval_s(sorted(ts), default) for kind, ts in by_kind.items()}


def base_rows(rows: Iterable[Row], minute_interval_s: float = 60.0) -> list[Row]:
    """Every real-time row, and each minute row whose minute [ts, ts + ``minute_interval_s``) holds no
    real-time row: never both for one time (see the module docstring); sorted by ts."""
    rows = list(rows)
    rtd = sorted((r for r in rows if r["data_kind"] == "rtd"), key=lambda r: r["ts"])
    rtd_ts = [r["ts"] for r in rtd]
    step = timedelta(seconds=minute_interval_s)
    fill = [r for r in rows if r["data_kind"] == "minute" and not _any_in(rtd_ts, r["ts"], r["ts"] + step)]
    return sorted(rtd + fill, key=lambda r: r["ts"])


def _any_in(sorted_ts: Sequence[datetime], lo: datetime, hi: datetime) -> bool:
    i = bisect_left(sorted_ts, lo)
    return i < len(sorted_ts) and sorted_ts[i] < hi


def _base(rows: Sequence[Row], rules: AveragingRules) -> tuple[list[Row], dict[str, float]]:
    intervals = kind_intervals(rows, rules.default_interval_s)
    return base_rows(rows, intervals.get("minute", rules.default_interval_s)), intervals


def compute_averages(rows: Sequence[Mapping[str, Any]], days: Iterable[date], tz: str,
                     rules: AveragingRules | None = None, now: datetime | None = None,
                     marks: Sequence[Mark] = ()) -> list[Average]:
    """All averages of the given local days from a device's readings (rtd and/or minute rows, any order) and
    the line's marks over them."""
    rules = rules or AveragingRules()
    now = now or datetime.now(UTC)
    base, intervals = _base(rows, rules)
    by_day: dict[date, list[Mapping[str, Any]]] = defaultdict(list)
    for r in base:
        by_day[local_day(r["ts"], tz)].append(r)
    out: list[Average] = []
    for day in days:
        day_start, day_end = local_day_bounds(day, tz)
        if day_start < now:
            out.extend(compute_day(by_day.get(day, []), day_start, day_end, intervals, rules, now, marks))
    return out


# --- database -----------------------------------------------------------------------------------

_READ_COLUMNS = ("ts", "data_kind", "gas_is_dry", "o2_pct", "o2_flag", "h2o_pct", "h2o_flag", "furnace_temp_c",
                 "extra", *(f"{p}_{s}" for p in POLLUTANTS for s in ("mg_m3", "zs_mg_m3", "flag")))
_AVG_COLUMNS = ("device_id", "pollutant", "period", "standard", "period_start", "period_end", "plant_id",
                "line_id", "avg_zs_mg_m3", "avg_meas_mg_m3", "n_valid", "n_discarded", "discarded",
                "covered_s", "status", "valid")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a CEMS device sits: its plant, its line, and the plant's time zone."""

    plant_id: str | None
    line_id: str | None
    tz: str = DEFAULT_TZ


def device_placement(conn: psycopg.Connection, device_id: str) -> Placement:
    """From the registry (device → line site → plant site), else from the readings' own plant/line ids."""
    row = conn.execute(
        "SELECT s.kind, s.site_id, s.parent_id, COALESCE(p.timezone, s.timezone) FROM devices d"
        " JOIN sites s ON s.site_id = d.site_id LEFT JOIN sites p ON p.site_id = s.parent_id"
        " WHERE d.device_id = %s", (device_id,)).fetchone()
    if row and row[0] == "line":
        return Placement(row[2], row[1], row[3] or DEFAULT_TZ)
    if row and row[0] == "plant":
        return Placement(row[1], None, row[3] or DEFAULT_TZ)
    found = conn.execute(
        "SELECT r.plant_id, r.line_id, s.timezone FROM cems_readings r LEFT JOIN sites s ON s.site_id = r.plant_id"
        " WHERE r.device_id = %s AND r.plant_id IS NOT NULL ORDER BY r.ts DESC LIMIT 1", (device_id,)).fetchone()
    if found:
        return Placement(found[0], found[1], found[2] or DEFAULT_TZ)
    return Placement(None, None, DEFAULT_TZ)


def parse_analyser_ranges(value: Any, device_id: str = "") -> dict[str, float]:
    """A device's ``metadata.analyser_range_mg_m3`` ({"so2": 500, …}): the entries that are a known pollutant
    with a positive finite number; others are logged and ignored (a registry typo must not stop averaging)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        log.warning("device %s: metadata.analyser_range_mg_m3 is not an object; default ranges used", device_id)
        return {}
    out: dict[str, float] = {}
    for pollutant, upper in value.items():
        if (pollutant in POLLUTANTS and isinstance(upper, int | float) and not isinstance(upper, bool)
                and math.isfinite(upper) and upper > 0):
            out[pollutant] = float(upper)
        else:
            log.warning("device %s: analyser range %r: %r ignored (want a pollutant of %s and a number > 0)",
                        device_id, pollutant, upper, ", ".join(POLLUTANTS))
    return out


def device_rules(conn: psycopg.Connection, device_id: str, rules: AveragingRules | None = None) -> AveragingRules:
    """``rules`` with the device's own analyser ranges (``devices.metadata.analyser_range_mg_m3``) over them."""
    rules = rules or AveragingRules()
    row = conn.execute("SELECT metadata -> 'analyser_range_mg_m3' FROM devices WHERE device_id = %s",
                       (device_id,)).fetchone()
    ranges = parse_analyser_ranges(row[0] if row else None, device_id)
    return replace(rules, analyser_range_mg_m3={**rules.analyser_range_mg_m3, **ranges}) if ranges else rules


def fetch_readings(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    cur = conn.execute(
        f"SELECT {', '.join(_READ_COLUMNS)} FROM cems_readings WHERE device_id = %s AND ts >= %s AND ts < %s"
        " AND data_kind IN ('rtd', 'minute') ORDER BY ts", (device_id, start, end))
    return [dict(zip(_READ_COLUMNS, r, strict=True)) for r in cur.fetchall()]


def line_marks(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime,
               rows: Sequence[dict[str, Any]], rules: AveragingRules) -> list[Mark]:
    """The line's marks over [start, end): stored ones and those the DAU sent with the readings averaged (the
    base rows: a minute row the real-time rows replace must not break a run of marked readings)."""
    return effective_marks(conn, device_id, start, end, readings=_base(rows, rules)[0])


def days_between(start: datetime, end: datetime, tz: str) -> list[date]:
    """Local days touched by [start, end)."""
    first, last = local_day(start, tz), local_day(end - timedelta(microseconds=1), tz)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def recompute(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime, *,
              rules: AveragingRules | None = None, now: datetime | None = None) -> int:
    """Recompute every average of the local days touched by [start, end) for one device; returns the
    number of rows written. Idempotent: the days' rows are replaced in one transaction, under an
    advisory lock so two processors never interleave on one device."""
    if end <= start:
        return 0
    now = now or datetime.now(UTC)
    placement = device_placement(conn, device_id)
    rules = device_rules(conn, device_id, rules)
    days = days_between(start, end, placement.tz)
    window_start, _ = local_day_bounds(days[0], placement.tz)
    _, window_end = local_day_bounds(days[-1], placement.tz)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, device_id))
        rows = fetch_readings(conn, device_id, window_start, window_end)  # with furnace_temp_c and extra
        marks = line_marks(conn, device_id, window_start, window_end, rows, rules)
        averages = compute_averages(rows, days, placement.tz, rules, now, marks=marks)
        conn.execute("DELETE FROM cems_averages WHERE device_id = %s AND period_start >= %s AND period_start < %s",
                     (device_id, window_start, window_end))
        _write(conn, device_id, placement, averages)
        # the daily regulatory judgement reads the same readings, marks and averages, in the same transaction
        from sanitel.processors.cems_judgement import judge_and_store  # it imports this module

        judge_and_store(conn, device_id, placement, days, rows, averages, marks, now)
    return len(averages)


def _write(conn: psycopg.Connection, device_id: str, placement: Placement, averages: Sequence[Average]) -> None:
    with conn.cursor().copy(f"COPY cems_averages ({', '.join(_AVG_COLUMNS)}) FROM STDIN") as copy:
        for a in averages:
            copy.write_row((device_id, a.pollutant, a.period, a.standard, a.start, a.end, placement.plant_id,
                            placement.line_id, a.avg_zs, a.avg_meas, a.n_valid, a.n_discarded, Jsonb(a.discarded),
                            a.covered_s, a.status, a.valid))


def changed_ranges(conn: psycopg.Connection, since: datetime, *, now: datetime | None = None
                   ) -> tuple[dict[str, list[tuple[datetime, datetime]]], datetime | None]:
    """Per device, the time spans whose averages may have changed since ``since``, and the newest ``stored_at``
    / ``created_at`` seen.

    Readings: the hour buckets (device time) that received rows stored after ``since``. Stored, not received:
    rows replayed from the collector's spool after a database outage keep their old receive time but are
    stored when they land (issue 17), and the BRIN index on ``stored_at`` (migration 0011) finds them. Hour
    buckets map onto local days for any whole-hour offset.
    Marks: each cems_marks row created after ``since`` changes [starts_at, ends_at or now), and a correction
    or withdrawal also the span of the mark it supersedes (the old mark no longer applies there). Marks are
    few: the table is read without an index on created_at."""
    now = now or datetime.now(UTC)
    touched: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    newest: datetime | None = None
    for device_id, hour, stored in conn.execute(
            "SELECT device_id, time_bucket('1 hour', ts) AS hour, max(stored_at) FROM cems_readings"
            " WHERE stored_at > %s AND data_kind IN ('rtd', 'minute') GROUP BY 1, 2", (since,)).fetchall():
        touched[device_id].append((hour, hour + timedelta(hours=1)))
        newest = stored if newest is None or stored > newest else newest
    for device_id, starts, ends, old_starts, old_ends, created in conn.execute(
            "SELECT m.device_id, m.starts_at, m.ends_at, s.starts_at, s.ends_at, m.created_at FROM cems_marks m"
            " LEFT JOIN cems_marks s ON s.mark_id = m.supersedes WHERE m.created_at > %s", (since,)).fetchall():
        for start, end in ((starts, ends), (old_starts, old_ends)):
            if start is not None and start < (end := min(end or now, now)):  # the future has no averages yet
                touched[device_id].append((start, end))
        newest = created if newest is None or created > newest else newest
    return touched, newest


def _day_runs(days: Iterable[date]) -> Iterator[tuple[date, date]]:
    """Consecutive days merged into [first, last] runs."""
    run: list[date] = []
    for d in sorted(set(days)):
        if run and d - run[-1] > timedelta(days=1):
            yield run[0], run[-1]
            run = []
        run.append(d)
    if run:
        yield run[0], run[-1]


def recompute_since(conn: psycopg.Connection, watermark: datetime, *, overlap: timedelta = WATERMARK_OVERLAP,
                    rules: AveragingRules | None = None, now: datetime | None = None) -> datetime:
    """Recompute the days that received rows stored, or marks created, after ``watermark − overlap``
    (``stored_at`` / ``created_at``, the writing transaction's start), and return the new watermark: the newest
    of those seen. The overlap catches rows whose transaction committed after a later-started one was already
    visible (collector batches commit out of order); recomputing is idempotent, so re-reading the overlap costs
    time, not correctness. Spool replays are found when they land (their ``stored_at`` is new)."""
    touched, newest = changed_ranges(conn, watermark - overlap, now=now)
    for device_id, spans in touched.items():
        tz = device_placement(conn, device_id).tz
        for first, last in _day_runs(d for start, end in spans for d in days_between(start, end, tz)):
            start, _ = local_day_bounds(first, tz)
            _, end = local_day_bounds(last, tz)
            recompute(conn, device_id, start, end, rules=rules, now=now)
    return max(watermark, newest) if newest else watermark


def run_scheduled(conn: psycopg.Connection, *, name: str = WATERMARK_NAME, rules: AveragingRules | None = None,
                  now: datetime | None = None) -> datetime | None:
    """One pass of the scheduled processor: read the stored watermark, recompute what changed, store
    the new one. Returns None when another process holds the processor's lock (only one runs)."""
    if not one_row(conn.execute("SELECT pg_try_advisory_lock(%s, 0)", (_LOCK_NAMESPACE,)))[0]:
        return None
    try:
        new = recompute_since(conn, read_watermark(conn, name), rules=rules, now=now)
        store_watermark(conn, name, new)
        if not conn.autocommit:
            conn.commit()
        return new
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, 0)", (_LOCK_NAMESPACE,))


# --- what the stored averages do not reflect yet (issue 17) ---------------------------------------

@dataclass(frozen=True, slots=True)
class Behind:
    """Base readings (rtd, minute) of one device and local day that its stored averages do not reflect:
    stored after the day's averages were computed, or the day has none, and not yet seen by a pass."""

    day_start: datetime
    readings: int
    first_ts: datetime  # device times of those readings
    last_ts: datetime
    averaged_at: datetime | None  # when the day's averages were computed; None: never

    def reason(self) -> str:
        what = (f"averaged at {self.averaged_at.isoformat()}" if self.averaged_at is not None
                else "not averaged yet")
        return (f"{self.readings} readings from {self.first_ts.isoformat()} to {self.last_ts.isoformat()} "
                f"were stored after the day was {what}: the scheduled processor has not averaged them yet")


def settled_before(conn: psycopg.Connection) -> datetime:
    """Rows stored before this have been seen by a pass (recompute_since re-reads ``WATERMARK_OVERLAP``
    before its watermark), so their days' averages reflect them — or they carry nothing to average."""
    return read_watermark(conn, WATERMARK_NAME) - WATERMARK_OVERLAP


def behind(conn: psycopg.Connection, device_id: str, days: Sequence[tuple[datetime, datetime]],
           pollutants: Sequence[str] = POLLUTANTS) -> list[Behind]:
    """The local days (given as sorted [start, end) in UTC) with readings the stored averages do not reflect.

    A reading is behind when it was stored after its day's averages were computed (or the day has none)
    and after ``settled_before``. The second bound keeps the read to rows written since the last pass
    (migration 0062's ``(device_id, stored_at)`` index), and tells a day with nothing to average (a unit
    that reports no pollutant) from one not processed yet. A day's averages are all written in one
    transaction (``recompute``), so any one of its rows carries the day's ``computed_at``: one primary-key
    probe per day with late readings.
    A transaction that began before the averages were computed and committed after is not caught here;
    the next pass's overlap recomputes its day."""
    if not days:
        return []
    rows = conn.execute(
        """WITH late AS MATERIALIZED (
               SELECT ts, stored_at FROM cems_readings
               WHERE device_id = %(device)s AND stored_at > %(settled)s AND ts >= %(lo)s AND ts < %(hi)s
                 AND data_kind IN ('rtd', 'minute')),
           touched AS (  -- the days with any such reading, each with its averages' computed_at
               SELECT d.s, d.e, (SELECT a.computed_at FROM cems_averages a
                                 WHERE a.device_id = %(device)s AND a.pollutant = ANY(%(pollutants)s)
                                   AND a.period = ANY(ARRAY['10min', '30min', '1h', '1d'])
                                   AND a.standard = ANY(ARRAY['eu', 'gb'])
                                   AND a.period_start >= d.s AND a.period_start < d.e
                                 LIMIT 1) AS computed_at
               FROM unnest(%(starts)s::timestamptz[], %(ends)s::timestamptz[]) AS d (s, e)
               WHERE EXISTS (SELECT 1 FROM late l WHERE l.ts >= d.s AND l.ts < d.e))
           SELECT t.s, count(*), min(l.ts), max(l.ts), t.computed_at
           FROM touched t JOIN late l ON l.ts >= t.s AND l.ts < t.e
           WHERE l.stored_at > coalesce(t.computed_at, '-infinity')
           GROUP BY t.s, t.computed_at ORDER BY t.s""",
        {"device": device_id, "settled": settled_before(conn), "lo": days[0][0], "hi": days[-1][1],
         "pollutants": list(pollutants), "starts": [s for s, _ in days], "ends": [e for _, e in days]}).fetchall()
    return [Behind(s, n, first, last, computed) for s, n, first, last, computed in rows]


def provisional_averages(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime,
                         pollutant: str, *, rules: AveragingRules | None = None, now: datetime | None = None
                         ) -> tuple[list[tuple[datetime, datetime]], list[Average]]:
    """The local days touched by [start, end) whose readings the stored averages do not reflect (``behind``),
    as [start, end) in UTC, and their averages computed from the readings exactly as ``recompute`` would,
    but not stored: what the API serves, marked provisional, until the scheduled processor catches up.
    Only those days' readings are read."""
    if end <= start:
        return [], []
    tz = device_placement(conn, device_id).tz
    days = [local_day_bounds(d, tz) for d in days_between(start, end, tz)]
    late = {b.day_start for b in behind(conn, device_id, days, (pollutant,))}
    late_days = [(s, e) for s, e in days if s in late]
    out: list[Average] = []
    if late_days:
        rules = device_rules(conn, device_id, rules)
    for first, last in _day_runs(local_day(s, tz) for s, _ in late_days):
        window_start, _ = local_day_bounds(first, tz)
        _, window_end = local_day_bounds(last, tz)
        rows = fetch_readings(conn, device_id, window_start, window_end)
        marks = line_marks(conn, device_id, window_start, window_end, rows, rules or AveragingRules())
        run = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        out += compute_averages(rows, run, tz, rules, now, marks=marks)
    return late_days, out
