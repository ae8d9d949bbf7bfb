"""Emission averages per stack line: 10-minute (CO), half-hourly, hourly and daily, of concentrations
normalised to 11 % O2 dry, stored in the ``cems_averages`` hypertable (migration 0020).

What counts (standards.md §1–2):
- A reading counts only if its pollutant flag is N (and S where the operator allows manual entries:
  ``AveragingRules.counted_flags``); a missing flag (JSON readings) counts as N. Any other flag
  discards it with reason ``flag_<X>`` (T — over the analyser's range — is discarded too, and is
  reported separately because the true value is unknown and probably high).
- The value is the analyser's normalised value (``*_zs_mg_m3``) when sent, else it is computed from the
  measured value and O2 (dried with H2O first when ``gas_is_dry`` is false). When O2 is needed or
  known, it must itself be flagged valid, and above the O2 guard (processors/cems_normalise.py) the
  reading is discarded as ``o2_guard`` instead of becoming a false exceedance.
- Base data: real-time rows (CN 2011) when the window has any, else minute rows (CN 2051): a DAU
  sends both for the same time and counting both would double count. Hour and day rows a DAU sends
  are stored but not averaged again: we compute our own.

Validity (editable defaults in ``AveragingRules``):
- Sub-day periods are valid when valid readings cover enough of the period. The time a reading
  covers is the base data's nominal interval (the median gap between readings in the window), so a
  silent DAU is an uncovered period, not a short valid one. Coverage needed: 10-min and half-hour
  2/3 of the period — the EU directive sets no figure; 2/3 (20 of 30 minutes) is this project's
  choice, the same share HJ 75 uses for the hour — and 1-hour 45 minutes, from HJ 75-2017's rule
  that a valid hourly mean needs ≥ 45 minutes of valid data (unverified: quoted from memory of
  HJ 75-2017, not in standards.md).
- EU daily (2010/75/EU Annex VI Part 8): the mean of the valid half-hourly averages; valid only if no
  more than 5 half-hours that day were discarded (invalid or missing; half-hours when the line was
  not operating are outside the effective operating time and do not count).
- GB 24-hour (GB 18485-2014 with HJ 75-2017): the mean of the valid hourly averages; valid when at
  least 20 hourly averages are valid (unverified, HJ 75-2017 as above).
- A period whose readings are mostly ``o2_guard`` is ``not_operating`` (start-up, shut-down, idle);
  a period with no reading at all is ``missing``; a period not yet over is ``in_progress``.

Periods are clock-aligned in the plant's local time (``sites.timezone``, Asia/Shanghai by default):
days run from local midnight. Any change to a day recomputes the whole day: its daily average
depends on all its half-hours.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any, cast
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from sanitel.db import one_row
from sanitel.processors.cems_normalise import O2_GUARD_PCT, O2_REF_PCT, NormalisationError, to_reference
from sanitel.processors.watermarks import read_watermark, store_watermark

POLLUTANTS: tuple[str, ...] = ("dust", "so2", "nox", "co", "hcl", "hf", "toc", "nh3", "hg")
DEFAULT_TZ = "Asia/Shanghai"
WATERMARK_NAME = "cems_averages"
# recompute_since re-reads rows stored this long before its watermark (see there); a row stored earlier
# than watermark − overlap has been averaged (compliance.py relies on this to tell "behind" from "done")
WATERMARK_OVERLAP = timedelta(minutes=15)
_LOCK_NAMESPACE = 0x0CE5  # advisory-lock key space of this processor


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
    not_operating_share: float = 0.5  # a period with ≥ this share of o2_guard readings is "not operating"
    o2_ref: float = O2_REF_PCT
    o2_max: float = O2_GUARD_PCT
    default_interval_s: float = 60.0  # nominal reading interval when a window has < 2 readings


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading's verdict for one pollutant: a valid normalised value, or a discard reason."""

    ts: datetime
    zs: float | None
    meas: float | None
    reason: str | None  # None = counts


@dataclass(slots=True)
class Average:
    """One row of cems_averages."""

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

    @property
    def valid(self) -> bool:
        return self.status == "valid"


# --- one reading → one sample per pollutant ------------------------------------------------------

def evaluate(row: Mapping[str, Any], pollutant: str, rules: AveragingRules) -> Sample | None:
    """The sample of ``pollutant`` in a reading, or None when the reading does not carry it at all."""
    meas, zs, flag = row.get(f"{pollutant}_mg_m3"), row.get(f"{pollutant}_zs_mg_m3"), row.get(f"{pollutant}_flag")
    if meas is None and zs is None and flag is None:
        return None
    ts = row["ts"]
    reason = _discard_reason(row, meas, zs, flag, rules)
    if reason is not None:
        return Sample(ts, None, meas, reason)
    if zs is None:
        assert meas is not None  # else _discard_reason said "no_value"
        try:
            zs = to_reference(meas, row["o2_pct"], gas_is_dry=row.get("gas_is_dry", True),
                              h2o_pct=row.get("h2o_pct"), o2_ref=rules.o2_ref, o2_max=rules.o2_max)
        except NormalisationError as exc:
            return Sample(ts, None, meas, exc.reason)
    return Sample(ts, zs, meas, None)


def _discard_reason(row: Mapping[str, Any], meas: float | None, zs: float | None, flag: str | None,
                    rules: AveragingRules) -> str | None:
    if flag is not None and flag not in rules.counted_flags:
        return f"flag_{flag}"
    if meas is None and zs is None:
        return "no_value"
    o2, o2_flag = row.get("o2_pct"), row.get("o2_flag")
    o2_trusted = o2 is not None and (o2_flag is None or o2_flag in rules.counted_flags)
    if zs is not None:
        # the analyser's own normalisation exploded near ambient O2 just the same
        return "o2_guard" if o2_trusted and o2 is not None and o2 > rules.o2_max else None
    if o2 is None:
        return "no_o2"
    if not o2_trusted:
        return f"o2_flag_{o2_flag}"  # an O2 analyser in calibration reads calibration gas, not flue gas
    return None  # the O2 guard itself is applied by to_reference, on dry O2


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


# --- averaging -----------------------------------------------------------------------------------

def average_period(pollutant: str, spec: PeriodSpec, start: datetime, samples: Sequence[Sample],
                   interval_s: float, rules: AveragingRules, now: datetime) -> Average:
    """One sub-day average of normalised values, with counts and the validity verdict."""
    end = start + spec.length
    valid = [s for s in samples if s.reason is None]
    discarded = Counter(s.reason for s in samples if s.reason is not None)
    length_s = spec.length.total_seconds()
    covered = min(length_s, len({s.ts for s in valid}) * interval_s)
    meas = [s.meas for s in valid if s.meas is not None]
    if covered >= rules.min_coverage[spec.name] * length_s:
        status = "valid"
    elif end > now:
        status = "in_progress"
    elif not samples:
        status = "missing"
    elif discarded.get("o2_guard", 0) >= rules.not_operating_share * len(samples):
        status = "not_operating"
    else:
        status = "invalid"
    return Average(pollutant, spec.name, spec.standard, start, end,
                   statistics.fmean(cast(float, s.zs) for s in valid) if valid else None,  # counted: zs not None
                   statistics.fmean(meas) if meas else None,
                   len(valid), sum(discarded.values()), dict(discarded), covered, status)


def average_day(pollutant: str, standard: str, day_start: datetime, day_end: datetime,
                parts: Sequence[Average], rules: AveragingRules, now: datetime) -> Average:
    """Daily average from valid half-hours (EU) or valid hours (GB), with its validity verdict."""
    valid = [p for p in parts if p.valid]
    statuses = Counter(p.status for p in parts if not p.valid)
    readings: Counter[str] = Counter()
    for p in parts:
        readings.update(p.discarded)
    n_discarded = statuses["invalid"] + statuses["missing"]
    if day_end > now:
        status = "in_progress"
    elif standard == "eu":
        status = "valid" if valid and n_discarded <= rules.eu_max_discarded_half_hours else "invalid"
    else:
        status = "valid" if len(valid) >= rules.gb_min_valid_hours else "invalid"
    if status == "invalid" and not valid and statuses["not_operating"] and not n_discarded:
        status = "not_operating"
    meas = [p.avg_meas for p in valid if p.avg_meas is not None]
    return Average(pollutant, "1d", standard, day_start, day_end,
                   statistics.fmean(cast(float, p.avg_zs) for p in valid) if valid else None,  # valid: avg_zs not None
                   statistics.fmean(meas) if meas else None,
                   len(valid), n_discarded, {"periods": dict(statuses), "readings": dict(readings)},
                   None, status)


def compute_day(rows: Sequence[Mapping[str, Any]], day_start: datetime, day_end: datetime,
                interval_s: float, rules: AveragingRules, now: datetime) -> list[Average]:
    """Every average of one local day from that day's base readings (pure; sorted by ts)."""
    out: list[Average] = []
    for pollutant in POLLUTANTS:
        samples = [s for r in rows if (s := evaluate(r, pollutant, rules)) is not None]
        if not samples:
            continue
        by_period: dict[str, list[Average]] = {}
        for spec in SUB_DAY_PERIODS:
            if pollutant not in spec.pollutants:
                continue
            buckets: dict[datetime, list[Sample]] = defaultdict(list)
            for s in samples:
                buckets[bucket_start(s.ts, day_start, spec.length)].append(s)
            by_period[spec.name] = [
                average_period(pollutant, spec, start, buckets.get(start, ()), interval_s, rules, now)
                for start in period_starts(day_start, day_end, spec.length) if start < now]
            out.extend(by_period[spec.name])
        out.append(average_day(pollutant, "eu", day_start, day_end, by_period["30min"], rules, now))
        out.append(average_day(pollutant, "gb", day_start, day_end, by_period["1h"], rules, now))
    return out


def base_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Real-time rows when there are any, else minute rows (never both: see the module docstring)."""
    rtd = [r for r in rows if r["data_kind"] == "rtd"]
    return rtd or [r for r in rows if r["data_kind"] == "minute"]


def compute_averages(rows: Sequence[Mapping[str, Any]], days: Iterable[date], tz: str,
                     rules: AveragingRules | None = None, now: datetime | None = None) -> list[Average]:
    """All averages of the given local days from a device's readings (rtd and/or minute rows, any order)."""
    rules = rules or AveragingRules()
    now = now or datetime.now(UTC)
    base = sorted(base_rows(rows), key=lambda r: r["ts"])
    interval_s = nominal_interval_s([r["ts"] for r in base], rules.default_interval_s)
    by_day: dict[date, list[Mapping[str, Any]]] = defaultdict(list)
    for r in base:
        by_day[local_day(r["ts"], tz)].append(r)
    out: list[Average] = []
    for day in days:
        day_start, day_end = local_day_bounds(day, tz)
        if day_start < now:
            out.extend(compute_day(by_day.get(day, []), day_start, day_end, interval_s, rules, now))
    return out


# --- database -----------------------------------------------------------------------------------

_READ_COLUMNS = ("ts", "data_kind", "gas_is_dry", "o2_pct", "o2_flag", "h2o_pct",
                 *(f"{p}_{s}" for p in POLLUTANTS for s in ("mg_m3", "zs_mg_m3", "flag")))
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


def fetch_readings(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    cur = conn.execute(
        f"SELECT {', '.join(_READ_COLUMNS)} FROM cems_readings WHERE device_id = %s AND ts >= %s AND ts < %s"
        " AND data_kind IN ('rtd', 'minute') ORDER BY ts", (device_id, start, end))
    return [dict(zip(_READ_COLUMNS, r, strict=True)) for r in cur.fetchall()]


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
    placement = device_placement(conn, device_id)
    days = days_between(start, end, placement.tz)
    window_start, _ = local_day_bounds(days[0], placement.tz)
    _, window_end = local_day_bounds(days[-1], placement.tz)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_NAMESPACE, device_id))
        rows = fetch_readings(conn, device_id, window_start, window_end)
        averages = compute_averages(rows, days, placement.tz, rules, now)
        conn.execute("DELETE FROM cems_averages WHERE device_id = %s AND period_start >= %s AND period_start < %s",
                     (device_id, window_start, window_end))
        _write(conn, device_id, placement, averages)
    return len(averages)


def _write(conn: psycopg.Connection, device_id: str, placement: Placement, averages: Sequence[Average]) -> None:
    with conn.cursor().copy(f"COPY cems_averages ({', '.join(_AVG_COLUMNS)}) FROM STDIN") as copy:
        for a in averages:
            copy.write_row((device_id, a.pollutant, a.period, a.standard, a.start, a.end, placement.plant_id,
                            placement.line_id, a.avg_zs, a.avg_meas, a.n_valid, a.n_discarded, Jsonb(a.discarded),
                            a.covered_s, a.status, a.valid))


def changed_ranges(conn: psycopg.Connection, since: datetime) -> tuple[dict[str, list[datetime]], datetime | None]:
    """Per device, the hour buckets (device time) that received rows stored after ``since``, and the newest
    ``stored_at`` seen. Stored, not received: rows replayed from the collector's spool after a database
    outage keep their old receive time but are stored when they land (issue 17), and the BRIN index on
    ``stored_at`` (migration 0011) finds them. Hour buckets map onto local days for any whole-hour offset."""
    cur = conn.execute(
        "SELECT device_id, time_bucket('1 hour', ts) AS hour, max(stored_at) FROM cems_readings"
        " WHERE stored_at > %s AND data_kind IN ('rtd', 'minute') GROUP BY 1, 2", (since,))
    touched: dict[str, list[datetime]] = defaultdict(list)
    newest: datetime | None = None
    for device_id, hour, stored in cur.fetchall():
        touched[device_id].append(hour)
        newest = stored if newest is None or stored > newest else newest
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
    """Recompute the days that received rows stored after ``watermark − overlap`` (``stored_at``, the
    writing transaction's start), and return the new watermark: the newest ``stored_at`` seen. The overlap
    catches rows whose transaction committed after a later-started one was already visible (collector
    batches commit out of order); recomputing is idempotent, so re-reading the overlap costs time, not
    correctness. Spool replays are found when they land (their ``stored_at`` is new)."""
    touched, newest = changed_ranges(conn, watermark - overlap)
    for device_id, hours in touched.items():
        tz = device_placement(conn, device_id).tz
        days = {local_day(h, tz) for h in hours} | {local_day(h + timedelta(minutes=59), tz) for h in hours}
        for first, last in _day_runs(days):
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
    for first, last in _day_runs(local_day(s, tz) for s, _ in late_days):
        window_start, _ = local_day_bounds(first, tz)
        _, window_end = local_day_bounds(last, tz)
        rows = fetch_readings(conn, device_id, window_start, window_end)
        run = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        out += compute_averages(rows, run, tz, rules, now)
    return late_days, out
