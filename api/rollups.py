"""Which history requests a rollup table can answer instead of scanning raw readings.

Two kinds of rollup exist, both maintained by the scheduled processor (processors/maintenance.py):

- ``<table>_5m`` (sweeper and station telemetry): per device and 5-minute bucket, ``n`` readings and
  ``<column>_<avg|min|max>`` for the columns dashboards chart. Any bucket that is a multiple of 5 minutes
  is re-aggregated from them (min of mins, max of maxes, the average weighted by ``n``). They are complete
  up to the processor's watermark; buckets after it are computed from the raw readings. They also outlive
  the raw readings (retention keeps rollups far longer).
- ``cems_averages``: validated averages of each pollutant per stack line over the standards' periods —
  10 min (CO, EU), 30 min (EU), 1 h (GB) and the day (EU and GB), clock-aligned in the plant's local
  time. They are what compliance is judged on: only valid readings (flag N, O2 guard) count, so they
  differ from a plain average of every reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

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
