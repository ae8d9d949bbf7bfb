"""Which history requests a rollup can answer, and which buckets it cannot answer yet.

Two kinds of rollup exist, both maintained by the scheduled processor (processors/maintenance.py):

- ``<table>_5m`` (sweeper and station telemetry): per device and 5-minute bucket, ``n`` readings and
  ``<column>_<avg|min|max>`` for the columns dashboards chart. Any bucket that is a multiple of 5 minutes
  is re-aggregated from them (min of mins, max of maxes, the average weighted by ``n``). They also outlive
  the raw readings (retention keeps rollups far longer).
- ``cems_averages``: validated averages of each pollutant per stack line over the standards' periods —
  10 min (CO, EU), 30 min (EU), 1 h (GB) and the day (EU and GB), clock-aligned in the plant's local
  time. They are what compliance is judged on: only valid readings (flag N, O2 guard) count, so they
  differ from a plain average of every reading.

Freshness — a rollup never hides data that arrived late (issue 17). Device time says nothing about when a
row was written: a gateway back-filling a day after losing its uplink, or the collector replaying its
spool after a database outage, writes yesterday's buckets now. What does tell is ``stored_at``, the start
of the transaction that wrote a row (migration 0011), and the processor's watermark, in the same time:
every row stored up to it is in its rollup bucket (processors/rollups.py ``settled_upto``). So:

- a bucket is *stale* when one of its rows was stored after the watermark. The API finds the stale buckets
  of one device through the spans of device time written since the last pass (``stored_spans``, one row per
  batch transaction, recorded by the writer: migration 0087) — each probed for that device's rows stored
  after the watermark, whatever span of device time a request covers — and computes exactly those buckets
  from the raw readings in the same response, marked ``provisional``; the rest comes from the rollup. No
  per-bucket bookkeeping is written anywhere: the watermark is the one "computed at" of every bucket, and a
  back-fill is found before any pass runs. (Until issue 16 a ``(device_id, stored_at)`` index answered this,
  at the cost of an index entry per reading: migration 0062.)
- the live edge — buckets from one rollup bucket before the watermark, aligned to the request — is read
  raw as a whole (every bucket there is being written anyway), provisional too.
- with no watermark (the processor never ran) the whole series is read raw and provisional; with the
  processor stopped it stays so, and says so, rather than serving a rollup that lacks the new rows.
- CEMS averages: a local day is stale when readings were stored after its averages were computed (or it
  has none) and after the processor last looked (``cems_averages.behind``); its averages are computed
  from the readings with the processor's own code, not stored, and served provisional.

The next pass rolls stale buckets up (it recomputes every device-time bucket that received rows since its
watermark), so a late bucket is provisional for at most one maintenance interval while the processor runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sanitel.api.catalog import Metric

# --- 5-minute telemetry rollups ------------------------------------------------------------------

FIVE_MINUTES = timedelta(minutes=5)
MINUTE_ROLLUPS = {"sweeper_telemetry": "sweeper_telemetry_5m", "station_telemetry": "station_telemetry_5m"}


@dataclass(frozen=True)
class MinuteRollup:
    table: str  # e.g. sweeper_telemetry_5m
    column: str  # e.g. soc_pct_avg
    aggregate: str  # avg, min or max
    watermark_name: str  # in maintenance_watermarks


def minute_rollup_for(metric: Metric, bucket: timedelta, aggregate: str, columns: frozenset[str]
                      ) -> MinuteRollup | None:
    """The 5-minute rollup column that can be re-aggregated into ``bucket`` with ``aggregate``."""
    table = MINUTE_ROLLUPS.get(metric.table)
    if table is None or aggregate not in ("avg", "min", "max") or bucket % FIVE_MINUTES:
        return None
    column = f"{metric.name}_{aggregate}"
    if column not in columns:
        return None
    return MinuteRollup(table, column, aggregate, f"rollup:{metric.table}")


# --- CEMS averages -------------------------------------------------------------------------------

# bucket → (cems_averages.period, the standard whose averaging that period follows by default)
_PERIODS = {timedelta(minutes=10): ("10min", "eu"), timedelta(minutes=30): ("30min", "eu"),
            timedelta(hours=1): ("1h", "gb"), timedelta(days=1): ("1d", "gb")}
_POLLUTANT_METRIC = re.compile(r"^(dust|so2|nox|co|hcl|hf|toc|nh3|hg)_(zs_)?mg_m3$")


@dataclass(frozen=True)
class RollupSource:
    table: str
    pollutant: str
    period: str
    standard: str
    value_column: str  # avg_zs_mg_m3 (normalised) or avg_meas_mg_m3 (as measured)

    @property
    def label(self) -> str:
        return f"{self.table} ({self.period}, {self.standard})"


def rollup_for(metric: Metric, bucket: timedelta, aggregate: str, data_kind: str, standard: str | None
               ) -> RollupSource | None:
    """The CEMS averages that hold exactly this series, or None."""
    match = _POLLUTANT_METRIC.match(metric.name)
    if metric.table != "cems_readings" or match is None or aggregate != "avg" or data_kind != "rtd":
        return None
    if bucket not in _PERIODS:
        return None
    period, default_standard = _PERIODS[bucket]
    pollutant = match.group(1)
    if period == "10min" and pollutant != "co":  # the EU's 10-minute average is for CO only
        return None
    chosen = default_standard if period != "1d" else (standard or default_standard)
    if period != "1d" and standard not in (None, default_standard):
        return None
    column = "avg_zs_mg_m3" if match.group(2) else "avg_meas_mg_m3"
    return RollupSource("cems_averages", pollutant, period, chosen, column)


# --- which source serves which range ---------------------------------------------------------------

Range = tuple[datetime, datetime]
# a request whose stale buckets are scattered is read raw in at most this many ranges (gaps between them
# are read too and dropped): one statement of bounded size, however the late rows fell
MAX_RAW_RANGES = 32


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    source: Literal["rollup", "raw"]
    table: str


def bucket_end(start: datetime, width: timedelta, timezone: str) -> datetime:
    """End of the bucket that starts at ``start``. Buckets are aligned on the wall clock of ``timezone``
    (time_bucket with a zone), so a day bucket across a DST change is 23 or 25 hours."""
    local = start.astimezone(ZoneInfo(timezone))
    return (local + width).astimezone(UTC)


def bucket_ranges(starts: Iterable[datetime], width: timedelta, timezone: str, lo: datetime, hi: datetime
                  ) -> list[Range]:
    """The buckets starting at ``starts`` as sorted [start, end) ranges clipped to [lo, hi), adjacent ones
    merged."""
    out: list[Range] = []
    for start in sorted(set(starts)):
        a, b = max(start, lo), min(bucket_end(start, width, timezone), hi)
        if a >= b:
            continue
        if out and out[-1][1] >= a:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def bounded(ranges: Sequence[Range], limit: int = MAX_RAW_RANGES) -> list[Range]:
    """At most ``limit`` ranges covering ``ranges`` (sorted, disjoint): the smallest gaps are closed first."""
    merged = list(ranges)
    while len(merged) > limit:
        i = min(range(len(merged) - 1), key=lambda k: merged[k + 1][0] - merged[k][1])
        merged[i:i + 2] = [(merged[i][0], merged[i + 1][1])]
    return merged


def segments(start: datetime, end: datetime, raw: Sequence[Range], rollup_table: str | None, raw_table: str
             ) -> list[Segment]:
    """[start, end) as consecutive segments: the ``raw`` ranges (sorted, disjoint) from ``raw_table``, the
    rest from ``rollup_table`` (all raw when there is none)."""
    out: list[Segment] = []

    def add(a: datetime, b: datetime, source: Literal["rollup", "raw"], table: str) -> None:
        if a >= b:
            return
        if out and out[-1].source == source and out[-1].table == table and out[-1].end == a:
            out[-1] = Segment(out[-1].start, b, source, table)
        else:
            out.append(Segment(a, b, source, table))

    at = start
    for a, b in raw:
        a, b = max(a, start), min(b, end)
        if rollup_table is not None:
            add(at, a, "rollup", rollup_table)
        else:
            add(at, a, "raw", raw_table)
        add(a, b, "raw", raw_table)
        at = max(at, b)
    add(at, end, "rollup" if rollup_table is not None else "raw", rollup_table or raw_table)
    return out


def source_label(parts: Sequence[Segment]) -> str:
    """The tables in order of first use, joined by ' + ' (rollup first): the response's ``source``."""
    tables = sorted({p.table: p.source for p in parts}.items(), key=lambda kv: kv[1] != "rollup")
    return " + ".join(t for t, _ in tables)
