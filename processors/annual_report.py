"""The annual emission report per plant and line (issue 13): the yearly rules of 2010/75/EU Annex VI Part 8, the GB
18485-2014 daily exceedances and MEE Order No. 10's yearly figures, from the stored ``cems_averages`` and
``cems_daily_judgements`` (docs/compliance.md names each rule, its clause and its test).

Per line (CEMS unit) and pollutant:

- EU daily values discarded for malfunction or maintenance of the measuring system: EU daily averages invalid with
  more than five such half-hours (``cems_judgement.day_discarded_for_cms``) — at most ten a year (Annex VI Part 8);
- EU half-hourly B: at least 97 % of the year's valid half-hourly averages (validated: minus the confidence
  interval) within column B, per pollutant with a B limit (Annex VI Part 8 (b));
- EU CO daily: at least 97 % of the year's valid daily averages within the daily limit (Annex VI Part 8 (c));
- EU daily and half-hourly A exceedances (CO's half-hourly limit is part of its 24-hour either/or instead, counted
  from the daily judgements: days the rule failed);
- GB 18485-2014: days whose valid 24-hour average is above the line's limit;
- Order No. 10 (unverified figures): days with more than five furnace 5-minute averages below 850 °C, the year's
  marked hours against the 60 h cap, marks longer than allowed, days with a dust hourly average above 150 mg/m³
  during marks.

Only days that have ended count: averages of the current local day and days whose judgement is not final are left
out, and the days judged but not final are counted as ``pending_days``. A verdict is the year's *so far* until the
year has ended (``year_complete``). Everything is computed with SQL aggregates (a line has 17,520 half-hours per
pollutant a year): rows are never pulled into Python one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from sanitel.emission_limits import POLLUTANTS, LimitSet, mee_rules
from sanitel.processors.cems_averages import DEFAULT_TZ, local_day, local_day_bounds
from sanitel.processors.cems_judgement import EU_MAX_CMS_DISCARDED_HALF_HOURS
from sanitel.processors.compliance import REFERENCE, line_limits, plant_site

EU_MAX_DISCARDED_DAYS_PER_YEAR = 10  # 2010/75/EU Annex VI Part 8
EU_CO_DAILY_REQUIRED_SHARE = 0.97  # Annex VI Part 8 (c): 97 % of the daily averages over the year
EU = "2010/75/EU Annex VI Part 8"


@dataclass(frozen=True, slots=True)
class ShareRule:
    """A share-of-averages rule over a year: ``within`` of ``total`` averages within the limit."""

    within: int
    total: int
    required: float

    @property
    def share(self) -> float | None:
        return self.within / self.total if self.total else None

    @property
    def compliant(self) -> bool | None:
        """None when there is no average to judge."""
        return None if self.share is None else self.share >= self.required


def at_most(count: float, allowed: float) -> bool:
    return count <= allowed


# --- SQL -----------------------------------------------------------------------------------------------------

# Per pollutant: the line's limits and confidence interval, as arrays unnested into a table (one statement).
_LIMITS_CTE = """lim AS (SELECT * FROM unnest(%(pollutants)s::text[], %(ci)s::float8[], %(a)s::float8[],
                            %(b)s::float8[], %(daily)s::float8[], %(gb24)s::float8[])
                     AS l (pollutant, ci, a, b, daily, gb24)),
    pending AS (SELECT day_start, day_end FROM cems_daily_judgements
                WHERE device_id = %(device)s AND NOT final AND day_start >= %(start)s AND day_start < %(end)s)"""
_COUNTED = """a.device_id = %(device)s AND a.period_start >= %(start)s AND a.period_start < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM pending p WHERE a.period_start >= p.day_start AND a.period_start < p.day_end)"""

_HALF_HOURS_SQL = f"""WITH {_LIMITS_CTE}
SELECT a.pollutant, count(*),
       count(*) FILTER (WHERE greatest(a.avg_zs_mg_m3 - l.ci, 0) <= l.b),
       count(*) FILTER (WHERE greatest(a.avg_zs_mg_m3 - l.ci, 0) > l.a)
FROM cems_averages a JOIN lim l USING (pollutant)
WHERE a.period = '30min' AND a.standard = 'eu' AND a.valid AND {_COUNTED}
GROUP BY a.pollutant"""

# the EU daily value is the mean of the day's validated valid half-hours (compliance.eu_daily_validated); the
# half-hours are grouped by their local day and joined to the daily rows on it (a hash join, not a probe per day)
_EU_DAYS_SQL = f"""WITH {_LIMITS_CTE},
    half_days AS (
        SELECT h.pollutant, (h.period_start AT TIME ZONE %(tz)s)::date AS day,
               avg(greatest(h.avg_zs_mg_m3 - l.ci, 0)) AS validated
        FROM cems_averages h JOIN lim l USING (pollutant)
        WHERE h.device_id = %(device)s AND h.period = '30min' AND h.standard = 'eu' AND h.valid
          AND h.period_start >= %(start)s AND h.period_start < %(cutoff)s
        GROUP BY 1, 2),
    days AS (
        SELECT a.pollutant, a.valid, a.status, a.discarded, l.daily, hd.validated
        FROM cems_averages a JOIN lim l USING (pollutant)
        LEFT JOIN half_days hd ON hd.pollutant = a.pollutant AND hd.day = (a.period_start AT TIME ZONE %(tz)s)::date
        WHERE a.period = '1d' AND a.standard = 'eu' AND {_COUNTED})
SELECT pollutant, count(*) FILTER (WHERE valid),
       count(*) FILTER (WHERE valid AND validated <= daily),
       count(*) FILTER (WHERE valid AND validated > daily),
       count(*) FILTER (WHERE status = 'invalid' AND jsonb_typeof(discarded -> 'cms_discarded') = 'number'
                          AND (discarded ->> 'cms_discarded')::numeric > %(max_cms)s),
       count(*) FILTER (WHERE status = 'invalid')
FROM days GROUP BY pollutant"""

_GB_DAYS_SQL = f"""WITH {_LIMITS_CTE}
SELECT a.pollutant, count(*) FILTER (WHERE a.valid), count(*) FILTER (WHERE a.valid AND a.avg_zs_mg_m3 > l.gb24)
FROM cems_averages a JOIN lim l USING (pollutant)
WHERE a.period = '1d' AND a.standard = 'gb' AND {_COUNTED}
GROUP BY a.pollutant"""

_JUDGEMENTS_SQL = """SELECT
    count(*) FILTER (WHERE final), count(*) FILTER (WHERE NOT final),
    count(*) FILTER (WHERE final AND furnace_5min_below_850 > %(max_below)s),
    coalesce(sum(marked_hours) FILTER (WHERE final), 0), coalesce(sum(marked_hours), 0),
    coalesce(sum(marks_over_limit) FILTER (WHERE final), 0),
    count(*) FILTER (WHERE final AND marked_dust_1h_max > %(dust)s),
    count(*) FILTER (WHERE final AND eu_co_24h_failed = 1), count(*) FILTER (WHERE final AND eu_co_24h_failed IS NOT NULL),
    count(*) FILTER (WHERE final AND gb_exceedances > 0),
    count(*) FILTER (WHERE final AND status = 'compliant'), count(*) FILTER (WHERE final AND status = 'violation'),
    count(*) FILTER (WHERE final AND status = 'not_determinable')
FROM cems_daily_judgements WHERE device_id = %(device)s AND day >= %(y0)s AND day < %(y1)s"""


def _limit_arrays(limits: LimitSet) -> dict[str, list[Any]]:
    def value(key: str, pollutant: str) -> float | None:
        limit = limits.get(key, pollutant)
        return limit.value if limit else None

    return {"pollutants": list(POLLUTANTS), "ci": [limits.confidence_interval(p) for p in POLLUTANTS],
            "a": [value("eu.half_hour_a", p) for p in POLLUTANTS], "b": [value("eu.half_hour_b", p) for p in POLLUTANTS],
            "daily": [value("eu.daily", p) for p in POLLUTANTS], "gb24": [value("gb.24h", p) for p in POLLUTANTS]}


def _lines(conn: psycopg.Connection, plant_id: str, start: datetime, end: datetime, line: str | None
           ) -> list[tuple[str, str]]:
    """(line id, device id) of the plant's CEMS units with daily averages or judgements in [start, end)."""
    rows = conn.execute(
        """SELECT device_id, max(line_id) FROM (
               SELECT device_id, line_id FROM cems_averages WHERE plant_id = %(p)s AND period = '1d'
                   AND period_start >= %(s)s AND period_start < %(e)s
               UNION ALL
               SELECT device_id, line_id FROM cems_daily_judgements WHERE plant_id = %(p)s
                   AND day_start >= %(s)s AND day_start < %(e)s) x
           WHERE %(l)s::text IS NULL OR line_id = %(l)s OR device_id = %(l)s
           GROUP BY device_id ORDER BY device_id""", {"p": plant_id, "s": start, "e": end, "l": line}).fetchall()
    return sorted((line_id or device_id, device_id) for device_id, line_id in rows)


# --- rules -----------------------------------------------------------------------------------------------------

def _rule(standard: str, rule: str, source: str, value: Any, limit: Any, compliant: bool | None, *,
          pollutant: str = "", unit: str = "", n: int | None = None, share: float | None = None,
          required: float | None = None, note: str = "") -> dict[str, Any]:
    return {"standard": standard, "pollutant": pollutant, "rule": rule, "source": source, "value": value,
            "limit": limit, "unit": unit, "n": n, "share": None if share is None else round(share, 6),
            "required_share": required, "compliant": compliant, "note": note}


def _eu_rules(half: Mapping[str, tuple[int, int, int]], days: Mapping[str, tuple[int, int, int, int, int]],
              limits: LimitSet) -> list[dict[str, Any]]:
    out = []
    for p in POLLUTANTS:
        if p not in half and p not in days:
            continue
        valid_days, within_days, over_days, cms_days, invalid_days = days.get(p, (0, 0, 0, 0, 0))
        out.append(_rule("eu", "eu.discarded_days", EU, cms_days, EU_MAX_DISCARDED_DAYS_PER_YEAR,
                         at_most(cms_days, EU_MAX_DISCARDED_DAYS_PER_YEAR), pollutant=p, unit="days",
                         note=f"daily values discarded for measuring-system malfunction or maintenance (> "
                              f"{EU_MAX_CMS_DISCARDED_HALF_HOURS} such half-hours); {invalid_days} invalid days in all"))
        daily = limits.get("eu.daily", p)
        if daily and p == "co":
            rule = ShareRule(within_days, valid_days, EU_CO_DAILY_REQUIRED_SHARE)
            out.append(_rule("eu", "eu.co_daily_97", f"{EU} (c)", within_days, daily.value, rule.compliant,
                             pollutant=p, unit="days within", n=valid_days, share=rule.share, required=rule.required,
                             note="at least 97 % of the valid daily averages within the daily limit"))
        elif daily:
            out.append(_rule("eu", "eu.daily", f"{EU} (a)", over_days, daily.value,
                             None if not valid_days else over_days == 0, pollutant=p, unit="days above", n=valid_days,
                             note="valid daily averages above the daily limit"))
        n_half, within_b, over_a = half.get(p, (0, 0, 0))
        a, b = limits.get("eu.half_hour_a", p), limits.get("eu.half_hour_b", p)
        if a and p != "co":
            out.append(_rule("eu", "eu.half_hour_a", f"{EU} (b)", over_a, a.value, None if not n_half else over_a == 0,
                             pollutant=p, unit="half-hours above", n=n_half,
                             note="valid half-hourly averages above column A"))
        if b:
            rule = ShareRule(within_b, n_half, limits.required_share.get("eu.half_hour_b", 0.97))
            out.append(_rule("eu", "eu.half_hour_b_97", f"{EU} (b)", within_b, b.value, rule.compliant, pollutant=p,
                             unit="half-hours within", n=n_half, share=rule.share, required=rule.required,
                             note="at least 97 % of the year's valid half-hourly averages within column B"))
    return out


def _gb_rules(gb: Mapping[str, tuple[int, int]], limits: LimitSet) -> list[dict[str, Any]]:
    out = []
    for p, (valid_days, over_days) in sorted(gb.items()):
        limit = limits.get("gb.24h", p)
        if limit:
            out.append(_rule("gb", "gb.24h_days", "GB 18485-2014 table 4", over_days, limit.value,
                             None if not valid_days else over_days == 0, pollutant=p, unit="days above",
                             n=valid_days, note="valid 24-hour averages (normal operation) above the limit"))
    return out


def _order_10_rules(j: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    (judged, pending, furnace_days, marked_h, marked_h_all, over, dust_days, co_failed, co_judged, gb_days,
     compliant, violation, undetermined) = j
    r = mee_rules()
    order = "MEE Order No. 10 (2019; unverified figure)"
    rules = [
        _rule("cn", "cn.furnace_violation_days", order, furnace_days, 0, furnace_days == 0 if judged else None,
              unit="days", n=judged, note=f"days with more than {r.furnace_max_below_per_day} five-minute furnace "
                                          f"averages below {r.furnace_min_temp_c:g} °C"),
        _rule("cn", "cn.marked_hours", order, round(float(marked_h), 4), r.marked_hours_per_year,
              at_most(float(marked_h_all), r.marked_hours_per_year), unit="h",
              note=f"start-up/shut-down/fault/accident marks; {float(marked_h_all):g} h with the days not ended"),
        _rule("cn", "cn.marks_over_limit", "GB 18485-2014 (unverified figure)", int(over), 0, int(over) == 0,
              unit="marks", note=f"fault/accident marks longer than {r.fault_or_accident_max_hours:g} h"),
        _rule("cn", "cn.marked_dust_days", order, dust_days, 0, dust_days == 0 if judged else None, unit="days",
              note=f"days with a dust hourly average above {r.marked_dust_1h_max_mg_m3:g} mg/m³ during marks"),
        _rule("gb", "gb.days_with_exceedances", "GB 18485-2014 table 4", gb_days, 0, gb_days == 0 if judged else None,
              unit="days", n=judged, note="days with any 24-hour average above its limit (all pollutants)"),
        _rule("eu", "eu.co_24h_failed_days", f"{EU} (c)", co_failed, 0, None if not co_judged else co_failed == 0,
              pollutant="co", unit="days", n=co_judged,
              note="days neither ≥ 95 % of 10-minute averages ≤ 150 nor all half-hours ≤ 100"),
    ]
    days = {"judged": judged, "pending_days": pending, "compliant": compliant, "violation": violation,
            "not_determinable": undetermined}
    return rules, days


def _overall(rules: Sequence[Mapping[str, Any]]) -> bool | None:
    if any(r["compliant"] is False for r in rules):
        return False
    return True if rules and all(r["compliant"] is True for r in rules) else None


def line_year(conn: psycopg.Connection, device_id: str, limits: LimitSet, tz: str, year: int, cutoff: datetime
              ) -> dict[str, Any]:
    """Every yearly rule of one line over the local year's days that ended before ``cutoff``: four aggregate
    statements."""
    start, _ = local_day_bounds(date(year, 1, 1), tz)
    end, _ = local_day_bounds(date(year + 1, 1, 1), tz)
    args = {**_limit_arrays(limits), "device": device_id, "start": start, "end": end, "cutoff": cutoff,
            "max_cms": EU_MAX_CMS_DISCARDED_HALF_HOURS, "tz": tz}
    half = {p: (n, b, a) for p, n, b, a in conn.execute(_HALF_HOURS_SQL, args).fetchall()}
    days = {p: (v, w, o, c, i) for p, v, w, o, c, i in conn.execute(_EU_DAYS_SQL, args).fetchall()}
    gb = {p: (v, o) for p, v, o in conn.execute(_GB_DAYS_SQL, args).fetchall()}
    r = mee_rules()
    j = conn.execute(_JUDGEMENTS_SQL, {"device": device_id, "y0": date(year, 1, 1), "y1": date(year + 1, 1, 1),
                                       "max_below": r.furnace_max_below_per_day,
                                       "dust": r.marked_dust_1h_max_mg_m3}).fetchone()
    order_10, day_counts = _order_10_rules(j if j is not None else (0,) * 13)
    rules = _eu_rules(half, days, limits) + _gb_rules(gb, limits) + order_10
    return {"days": day_counts, "pending_days": day_counts["pending_days"],
            "compliant": {s: _overall([x for x in rules if x["standard"] == s]) for s in ("eu", "gb", "cn")},
            "rules": rules}


def build_annual(conn: psycopg.Connection, plant_id: str, year: int, line: str | None = None, *,
                 now: datetime | None = None) -> dict[str, Any]:
    """The annual report of a plant (or one line) for a local calendar year, JSON-able."""
    now = now or datetime.now(UTC)
    site = plant_site(conn, plant_id)
    tz = site[0] if site else DEFAULT_TZ
    start, _ = local_day_bounds(date(year, 1, 1), tz)
    end, _ = local_day_bounds(date(year + 1, 1, 1), tz)
    today_start, _ = local_day_bounds(local_day(now, tz), tz)
    cutoff = max(start, min(end, today_start))  # averages of days that have ended
    lines = []
    for line_id, device_id in _lines(conn, plant_id, start, end, line):
        limits = line_limits(conn, plant_id, line_id, device_id)
        lines.append({"line_id": line_id, "device_id": device_id,
                      **line_year(conn, device_id, limits, tz, year, cutoff)})
    return {
        "plant_id": plant_id, "year": year, "timezone": tz, "line": line, "reference": REFERENCE,
        "generated_at": now.isoformat(), "registered": site is not None, "year_complete": now >= end,
        "through": None if cutoff <= start else (local_day(cutoff, tz) - timedelta(days=1)).isoformat(),
        "pending_days": sum(ln["pending_days"] for ln in lines),
        "compliant": {s: _overall([x for ln in lines for x in ln["rules"] if x["standard"] == s])
                      for s in ("eu", "gb", "cn")},
        "lines": lines,
    }


ANNUAL_CSV_COLUMNS = ("plant_id", "year", "line_id", "device_id", "standard", "pollutant", "rule", "source", "value",
                      "limit", "unit", "n", "share", "required_share", "compliant", "note")


def annual_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"plant_id": report["plant_id"], "year": report["year"], "line_id": ln["line_id"],
             "device_id": ln["device_id"], **rule} for ln in report["lines"] for rule in ln["rules"]]


def annual_csv(report: Mapping[str, Any]) -> str:
    import pandas as pd

    csv: str = pd.DataFrame(annual_rows(report), columns=list(ANNUAL_CSV_COLUMNS)).to_csv(index=False)
    return csv
