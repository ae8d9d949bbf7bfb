"""Emission compliance report per plant, line and local day, against GB 18485-2014 and EU 2010/75/EU.

Reads the averages ``processors/cems_averages.py`` maintains (normalised to 11 % O2 dry) and, for
each limit (defaults in ``sanitel/emission_limits.yaml``, overridable per plant/line in
``sites.params.emission_limits``: sanitel/emission_limits.py, the grammar the alert rules read too):
the limit, the worst value and its time, the exceedances with their times, and the invalid periods.

EU values are *validated* before comparison (Annex VI Part 8): the 95 % confidence interval —
a percentage of the pollutant's daily limit (``eu_confidence_interval_pct``; the daily limit is the
basis this project chose, as the German 17. BImSchV applies it) — is subtracted from each
half-hourly and 10-minute average (never below 0), and the daily value is the mean of the validated
half-hours. GB 18485 has no such subtraction: its 1-hour and 24-hour averages are compared as they are.

Verdicts: an average exceeds when it is *above* its limit. A check with no valid average, or a daily
check whose daily average is invalid, has verdict ``None`` (not determinable), never ``True``.
Annual criteria get verdict ``None`` for a day (``annual_rule``: true) and are judged by
processors/annual_report.py: EU half-hourly B (97 % of the year's half-hours) and the CO daily limit (97 % of the
year's daily averages, Annex VI Part 8 (c)) — the day's share or value is reported.
CO's 10-minute and half-hourly limits are ONE check, ``eu.co_24h`` (Annex VI Part 8 (c)): ≥ 95 % of the
10-minute averages within 150 OR all half-hourly averages within 100, over the natural day
(processors/cems_judgement.py, the same function the daily judgement uses).

Beside the GB and EU verdicts each line carries ``regulatory``: the stored daily judgement
(processors/cems_judgement.py) stated as the Chinese rules state it — daily-average exceedances under normal
operation, the count of 5-minute furnace-temperature averages below 850 °C, the marked periods and the marked hours
against the yearly cap, dust during marks, data completeness. Periods the line spent under a furnace mark are
``marked`` in ``invalid_periods``: outside normal operation, not invalid data.

No verdict on averages that are behind (issue 17): when a line has readings for the day that its stored
averages do not reflect yet — stored after the averages were computed, or never averaged, and not yet seen
by the scheduled processor (``cems_averages.behind``) — its checks get verdict ``None`` and status
``pending`` with the reason, and its invalid periods within the late readings' span are ``pending`` rather
than ``missing``/``invalid``: a period cannot be judged on averages that lack its readings. Each check, line
and the report carry a ``status``: compliant | exceeded | not_determinable | pending.

Output: ``build_report`` (a JSON-able dict), ``report_csv`` (pandas), ``report_png`` (matplotlib).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from sanitel.emission_limits import LIMIT_KEYS, Limit, LimitSet, mee_rules
from sanitel.emission_limits import limit_set as limit_set  # re-exported: tests build a line's limits with it
from sanitel.processors import cems_judgement
from sanitel.processors.cems_averages import DEFAULT_TZ, Behind, behind, device_placement, local_day_bounds
from sanitel.processors.cems_judgement import (
    co_24h_limits,
    co_24h_rule,
    day_discarded_for_cms,
    eu_cms_discarded,
    validated,
)

REFERENCE = "dry flue gas, 273.15 K, 101.325 kPa, 11 % O2"
_STANDARD_NAMES = {"gb": "GB 18485-2014", "eu": "EU 2010/75/EU"}
_CHECK_PERIODS = ("10min", "30min", "1h", "1d")


# --- reading the averages ------------------------------------------------------------------------

_AVG_COLUMNS = ("device_id", "line_id", "pollutant", "period", "standard", "period_start", "period_end",
                "avg_zs_mg_m3", "avg_meas_mg_m3", "n_valid", "n_discarded", "discarded", "status", "valid")


def plant_site(conn: psycopg.Connection, plant_id: str) -> tuple[str, dict[str, Any]] | None:
    """(time zone, params) of a plant registered in ``sites``, or None."""
    row = conn.execute("SELECT timezone, params FROM sites WHERE site_id = %s", (plant_id,)).fetchone()
    return (row[0], row[1] or {}) if row else None


def plant_timezone(conn: psycopg.Connection, plant_id: str) -> str:
    site = plant_site(conn, plant_id)
    return site[0] if site else DEFAULT_TZ


def plant_devices(conn: psycopg.Connection, plant_id: str, line: str | None = None) -> list[str]:
    """CEMS devices of a plant (or of one line): registered under its line sites or the plant itself,
    or carrying the plant's id in their readings."""
    rows = conn.execute(
        "SELECT d.device_id FROM devices d JOIN sites s ON s.site_id = d.site_id WHERE d.kind = 'cems'"
        " AND (s.site_id = %(p)s OR (s.kind = 'line' AND s.parent_id = %(p)s))"
        " AND (%(l)s::text IS NULL OR s.site_id = %(l)s OR d.device_id = %(l)s)"
        " UNION SELECT DISTINCT device_id FROM cems_readings WHERE plant_id = %(p)s"
        " AND (%(l)s::text IS NULL OR line_id = %(l)s OR device_id = %(l)s)",
        {"p": plant_id, "l": line}).fetchall()
    return sorted(r[0] for r in rows)


def line_limits(conn: psycopg.Connection, plant_id: str, line_id: str, device_id: str) -> LimitSet:
    """A line's effective limits: the plant's overrides, then the line site's (a device without a line site: the
    plant's) — the same as its daily judgement and the alert rules use (sanitel/emission_limits.py)."""
    return cems_judgement.placement_limits(conn, plant_id, None if line_id == device_id else line_id)


def fetch_averages(conn: psycopg.Connection, plant_id: str, start: datetime, end: datetime,
                   line: str | None = None, periods: Sequence[str] = _CHECK_PERIODS) -> list[dict[str, Any]]:
    """A plant's stored averages starting in [start, end), optionally for one line (line id or device id)."""
    sql = (f"SELECT {', '.join(_AVG_COLUMNS)} FROM cems_averages WHERE plant_id = %s AND period_start >= %s"
           " AND period_start < %s AND period = ANY(%s)")
    args: list[Any] = [plant_id, start, end, list(periods)]
    if line is not None:
        sql += " AND (line_id = %s OR device_id = %s)"
        args += [line, line]
    cur = conn.execute(sql + " ORDER BY device_id, pollutant, period, standard, period_start", args)
    return [dict(zip(_AVG_COLUMNS, r, strict=True)) for r in cur.fetchall()]


# --- checks ----------------------------------------------------------------------------------------

def _iso(ts: datetime, tz: str) -> str:
    return ts.astimezone(ZoneInfo(tz)).isoformat()


def _value(row: Mapping[str, Any], standard: str, ci: float, eu_daily: float | None) -> float | None:
    if row["avg_zs_mg_m3"] is None:
        return None
    if standard == "eu" and row["period"] == "1d":
        return eu_daily
    return validated(row["avg_zs_mg_m3"], ci) if standard == "eu" else row["avg_zs_mg_m3"]


def eu_daily_validated(half_hours: Sequence[Mapping[str, Any]], ci: float) -> float | None:
    """EU daily value: mean of the validated valid half-hourly averages."""
    values = [validated(r["avg_zs_mg_m3"], ci) for r in half_hours if r["valid"] and r["avg_zs_mg_m3"] is not None]
    return sum(values) / len(values) if values else None


def run_check(limit: Limit, rows: Sequence[Mapping[str, Any]], limits: LimitSet, tz: str,
              eu_daily: float | None) -> dict[str, Any]:
    """One limit against the averages of its period: worst value, exceedances, share, verdict."""
    standard, period, how = LIMIT_KEYS[limit.key]
    ci = limits.confidence_interval(limit.pollutant) if standard == "eu" else 0.0
    scored = [(r, _value(r, standard, ci, eu_daily)) for r in rows if r["valid"]]
    judged = [(r, v) for r, v in scored if v is not None]
    exceed = [(r, v) for r, v in judged if v > limit.value]
    worst = max(judged, key=lambda rv: rv[1], default=None)
    share = 1 - len(exceed) / len(judged) if judged else None
    required = limits.required_share.get(limit.key) if how == "share" else None
    if not judged:
        verdict: bool | None = None
    elif how == "max":
        verdict = not exceed
    elif limit.key == "eu.half_hour_b":
        verdict = None  # annual criterion
    else:
        verdict = share is not None and required is not None and share >= required
    return {
        "standard": standard, "standard_name": _STANDARD_NAMES[standard], "pollutant": limit.pollutant,
        "limit_key": limit.key, "average": period, "limit_mg_m3": limit.value, "limit_source": limit.source,
        "confidence_interval_mg_m3": ci if standard == "eu" else None,
        "n_averages": len(rows), "n_valid": len(judged),
        "worst": None if worst is None else {
            "value_mg_m3": round(worst[1], 4), "at": _iso(worst[0]["period_start"], tz),
            "measured_mg_m3": worst[0]["avg_meas_mg_m3"]},
        "exceedances": [{"start": _iso(r["period_start"], tz), "end": _iso(r["period_end"], tz),
                         "value_mg_m3": round(v, 4)} for r, v in exceed],
        "share_within_limit": None if share is None else round(share, 4),
        "required_share": required,
        "compliant": verdict,
        "permit": limit.permit,
        "annual_rule": limit.key == "eu.half_hour_b",
    }


def _daily_summary(row: Mapping[str, Any], eu_daily: float | None, tz: str) -> dict[str, Any]:
    return {
        "standard": row["standard"], "pollutant": row["pollutant"], "status": row["status"], "valid": row["valid"],
        "normalised_mg_m3": row["avg_zs_mg_m3"], "measured_mg_m3": row["avg_meas_mg_m3"],
        "validated_mg_m3": eu_daily if row["standard"] == "eu" else row["avg_zs_mg_m3"],
        "valid_sub_periods": row["n_valid"], "discarded_sub_periods": row["n_discarded"],
        "discarded": row["discarded"], "start": _iso(row["period_start"], tz),
        **({"cms_discarded_half_hours": eu_cms_discarded(row["discarded"]),
            "discarded_for_cms": day_discarded_for_cms(row["status"], row["discarded"])}
           if row["standard"] == "eu" else {}),
    }


def _invalid_periods(rows: Sequence[Mapping[str, Any]], tz: str) -> list[dict[str, Any]]:
    return [{"pollutant": r["pollutant"], "average": r["period"], "standard": r["standard"],
             "start": _iso(r["period_start"], tz), "end": _iso(r["period_end"], tz), "status": r["status"],
             "discarded": r["discarded"]}
            for r in rows if not r["valid"]]


def _check_status(verdict: bool | None) -> str:
    return {True: "compliant", False: "exceeded", None: "not_determinable"}[verdict]


def _pending(check: dict[str, Any], late: Behind) -> None:
    """Withhold a check's verdict: its averages lack readings (see the module docstring)."""
    check["compliant"] = None
    check["status"] = "pending"
    check["note"] = f"averages behind the readings: {late.reason()}"


# CO's 10-minute and half-hourly A limits are judged together, as the one either/or rule ``eu.co_24h``
_CO_24H_KEYS = ("eu.10min", "eu.half_hour_a")


def line_report(line_id: str, device_id: str, rows: Sequence[Mapping[str, Any]], limits: LimitSet,
                tz: str, late: Behind | None = None, judgement: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every check of one line's day, and its stored regulatory judgement; with ``late``, no verdicts (pending)."""
    by: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["pollutant"], r["period"], r["standard"]), []).append(r)
    checks, dailies = [], []
    for limit in limits.limits:
        standard, period, _ = LIMIT_KEYS[limit.key]
        period_rows = by.get((limit.pollutant, period, standard), [])
        if not period_rows or (limit.pollutant == "co" and limit.key in _CO_24H_KEYS):
            continue
        ci = limits.confidence_interval(limit.pollutant)
        eu_daily = eu_daily_validated(by.get((limit.pollutant, "30min", "eu"), []), ci)
        check = run_check(limit, period_rows, limits, tz, eu_daily)
        if period == "1d" and not period_rows[0]["valid"]:
            check["compliant"] = None
            day_row = period_rows[0]
            check["note"] = f"daily average {day_row['status']}: {day_row['n_discarded']} sub-periods discarded"
        if limit.key == "eu.daily" and limit.pollutant == "co":
            _co_daily_is_annual(check, eu_daily if period_rows[0]["valid"] else None, limit)
        check["status"] = _check_status(check["compliant"])
        checks.append(check)
    co = co_24h_check(by, limits, tz)
    if co is not None:
        checks.append(co)
    for check in checks:
        if late is not None:
            _pending(check, late)
    order = [*LIMIT_KEYS, "eu.co_24h"]
    checks.sort(key=lambda c: (c["standard"] != "gb", c["pollutant"], order.index(c["limit_key"])))
    for (pollutant, period, _standard), period_rows in sorted(by.items()):
        if period == "1d":
            ci = limits.confidence_interval(pollutant)
            eu_daily = eu_daily_validated(by.get((pollutant, "30min", "eu"), []), ci)
            dailies.append(_daily_summary(period_rows[0], eu_daily if period_rows[0]["valid"] else None, tz))
    invalid = _invalid_periods([r for r in rows if r["period"] != "10min"], tz)
    if late is not None:  # a period the late readings fall in is not missing or invalid: it is not known yet
        span = (late.first_ts, late.last_ts)
        for entry, r in zip(invalid, [r for r in rows if r["period"] != "10min" and not r["valid"]], strict=True):
            if r["status"] != "marked" and (
                    r["period"] == "1d" or (r["period_start"] <= span[1] and r["period_end"] > span[0])):
                entry["status"] = "pending"
    return {
        "line_id": line_id, "device_id": device_id,
        "compliant": {s: _overall([c for c in checks if c["standard"] == s]) for s in ("gb", "eu")},
        "status": {s: _overall_status([c for c in checks if c["standard"] == s], late is not None)
                   for s in ("gb", "eu")},
        "pending": None if late is None else behind_summary(late, tz),
        "checks": checks, "daily_averages": dailies, "invalid_periods": invalid,
        "regulatory": regulatory_section(judgement, tz, late),
    }


def _co_daily_is_annual(check: dict[str, Any], eu_daily: float | None, limit: Limit) -> None:
    """Annex VI Part 8 (c): "at least 97 % of the daily average values over the year" within the CO daily limit —
    a day's value counts toward that annual rule (annual_report.py); it is no daily verdict of its own."""
    check["compliant"] = None
    check["annual_rule"] = True
    check["counts_toward_annual"] = None if eu_daily is None else eu_daily <= limit.value
    within = {None: "no valid daily value", True: "within the limit", False: "above the limit"}
    check["note"] = ("counts toward the 97 %-of-days annual rule (2010/75/EU Annex VI Part 8 (c)): this day "
                     + within[check["counts_toward_annual"]] + (f"; {check['note']}" if "note" in check else ""))


def _over(pairs: Sequence[tuple[Mapping[str, Any], float]], limit: float, tz: str, average: str
          ) -> list[dict[str, Any]]:
    return [{"start": _iso(r["period_start"], tz), "end": _iso(r["period_end"], tz), "value_mg_m3": round(v, 4),
             "average": average} for r, v in pairs if v > limit]


def co_24h_check(by: Mapping[tuple[str, str, str], Sequence[Mapping[str, Any]]], limits: LimitSet, tz: str
                 ) -> dict[str, Any] | None:
    """The EU CO 24-hour rule as one either/or check (2010/75/EU Annex VI Part 8 (c), natural day)."""
    ten_rows, half_rows = by.get(("co", "10min", "eu"), []), by.get(("co", "30min", "eu"), [])
    if not ten_rows and not half_rows:
        return None
    ci = limits.confidence_interval("co")
    figures = co_24h_limits(limits)
    ten = [(r, validated(r["avg_zs_mg_m3"], ci)) for r in ten_rows if r["valid"] and r["avg_zs_mg_m3"] is not None]
    half = [(r, validated(r["avg_zs_mg_m3"], ci)) for r in half_rows if r["valid"] and r["avg_zs_mg_m3"] is not None]
    rule = co_24h_rule([v for _, v in ten], [v for _, v in half], **figures)
    cited = [x for x in (limits.get(k, "co") for k in _CO_24H_KEYS) if x is not None]
    sources = sorted({x.source for x in cited})
    worst = max(half, key=lambda rv: rv[1], default=None)
    share = None if rule.share_within is None else round(rule.share_within, 4)
    ten_text = "no valid 10-minute average" if share is None else f"{share:.1%} of 10-minute averages within"
    half_text = ("no valid half-hourly average" if rule.worst_half_hour is None
                 else f"worst half-hour {rule.worst_half_hour:.1f}")
    return {
        "standard": "eu", "standard_name": _STANDARD_NAMES["eu"], "pollutant": "co", "limit_key": "eu.co_24h",
        "average": "10min|30min", "limit_mg_m3": None, "limit_source": "/".join(sources) or "default",
        "confidence_interval_mg_m3": ci, "n_averages": len(ten_rows) + len(half_rows), "n_valid": len(ten) + len(half),
        "worst": None if worst is None else {"value_mg_m3": round(worst[1], 4), "at": _iso(worst[0]["period_start"], tz),
                                             "measured_mg_m3": worst[0]["avg_meas_mg_m3"]},
        "exceedances": (_over(ten, figures["ten_minute_limit"], tz, "10min")
                        + _over(half, figures["half_hour_limit"], tz, "30min")),
        "share_within_limit": share, "required_share": figures["required_share"],
        "compliant": rule.holds, "status": _check_status(rule.holds),
        "permit": next((x.permit for x in cited if x.permit), None), "annual_rule": False,
        "rule": (f"2010/75/EU Annex VI Part 8 (c): at least {figures['required_share']:.0%} of the 10-minute averages "
                 f"≤ {figures['ten_minute_limit']:g} OR all half-hourly averages ≤ {figures['half_hour_limit']:g} "
                 "(validated; any 24-hour period judged as the natural day)"),
        "alternatives": {
            "ten_minute": {"limit_mg_m3": figures["ten_minute_limit"], "n_valid": rule.n_ten_minute,
                           "n_within": rule.n_ten_minute_within, "share_within_limit": share,
                           "required_share": figures["required_share"], "holds": rule.ten_minute_holds},
            "half_hour": {"limit_mg_m3": figures["half_hour_limit"], "n_valid": rule.n_half_hours,
                          "worst_mg_m3": None if rule.worst_half_hour is None else round(rule.worst_half_hour, 4),
                          "holds": rule.half_hour_holds}},
        "note": f"either/or: {ten_text}; {half_text}",
    }


def _overall(checks: Sequence[Mapping[str, Any]]) -> bool | None:
    """False if any check fails; True if every decidable-per-day check passes; else None."""
    daily_checks = [c for c in checks if not c.get("annual_rule")]
    if any(c["compliant"] is False for c in daily_checks):
        return False
    if daily_checks and all(c["compliant"] is True for c in daily_checks):
        return True
    return None


def _overall_status(checks: Sequence[Mapping[str, Any]], pending: bool) -> str:
    """An exceedance already judged stands; otherwise a line whose averages are behind is pending."""
    verdict = _overall(checks)
    if verdict is False:
        return "exceeded"
    if pending or any(c["status"] == "pending" for c in checks):
        return "pending"
    return "compliant" if verdict else "not_determinable"


def averages_behind(conn: psycopg.Connection, plant_id: str, start: datetime, end: datetime,
                    line: str | None = None) -> dict[str, Behind]:
    """Per CEMS device of the plant (or line), the readings of the local day [start, end) that its stored
    averages do not reflect yet (``cems_averages.behind``); devices that are up to date are absent."""
    return {device_id: late for device_id in plant_devices(conn, plant_id, line)
            for late in behind(conn, device_id, [(start, end)])}


def behind_summary(late: Behind, tz: str) -> dict[str, Any]:
    return {"reason": late.reason(), "readings": late.readings, "from": _iso(late.first_ts, tz),
            "to": _iso(late.last_ts, tz),
            "averaged_at": None if late.averaged_at is None else _iso(late.averaged_at, tz)}


_JUDGEMENT_COLUMNS = ("device_id", "line_id", "final", "status", "furnace_5min_valid", "furnace_5min_below_850",
                      "furnace_5min", "marked_hours", "marked_hours_ytd", "marks_over_limit", "marked_dust_1h_max",
                      "eu_co_24h_failed", "gb_exceedances", "details", "computed_at")


def fetch_judgements(conn: psycopg.Connection, plant_id: str, day_start: datetime, line: str | None = None
                     ) -> dict[str, dict[str, Any]]:
    """Per CEMS device, the stored daily judgement of the plant's local day starting at ``day_start``."""
    sql = (f"SELECT {', '.join(_JUDGEMENT_COLUMNS)} FROM cems_daily_judgements WHERE plant_id = %s"
           " AND day_start = %s")
    args: list[Any] = [plant_id, day_start]
    if line is not None:
        sql += " AND (line_id = %s OR device_id = %s)"
        args += [line, line]
    return {r[0]: dict(zip(_JUDGEMENT_COLUMNS, r, strict=True)) for r in conn.execute(sql, args).fetchall()}


def regulatory_section(j: Mapping[str, Any] | None, tz: str, late: Behind | None = None) -> dict[str, Any]:
    """The stored daily judgement (processors/cems_judgement.py) as the Chinese rules state it."""
    if j is None:
        return {"status": "not_judged", "final": False,
                "note": "no daily judgement stored for this day: the scheduled processor has not judged it yet"}
    d: Mapping[str, Any] = j["details"] or {}
    rules = {**_rule_figures(), **d.get("rules", {})}
    cap_exceeded = bool(d.get("marked_hours_cap_exceeded"))
    reasons = list(d.get("reasons", []))
    if cap_exceeded:
        reasons.append(f"{j['marked_hours_ytd']:.1f} marked hours this year, above the cap of "
                       f"{rules['marked_hours_per_year']:g} h: this day's marked hours are not exempt")
    section: dict[str, Any] = {
        "rules": "MEE Order No. 10 (2019) and GB 18485-2014 on automatic-monitoring data (figures unverified: "
                 "docs/compliance.md)",
        "status": j["status"], "final": j["final"], "computed_at": _iso(j["computed_at"], tz),
        "reasons": reasons, "gaps": list(d.get("gaps", [])),
        "daily_average_exceedances": {
            "rule": "GB 18485-2014 table 4: 24-hour averages under normal operation (marked periods excluded)",
            "count": j["gb_exceedances"], "items": d.get("gb_exceedances", [])},
        "furnace_temperature": {
            "rule": f"Order No. 10: {rules['furnace_average_minutes']}-minute averages of the furnace temperature "
                    f"below {rules['furnace_min_temp_c']:g} °C more than {rules['furnace_max_below_per_day']} times "
                    "in a natural day is a violation (marked periods not judged)",
            "min_temp_c": rules["furnace_min_temp_c"], "max_below_per_day": rules["furnace_max_below_per_day"],
            "averages_judged": j["furnace_5min_valid"], "below_min": j["furnace_5min_below_850"],
            "violation": j["furnace_5min_below_850"] > rules["furnace_max_below_per_day"],
            "five_minute_averages": [{"start": s, "avg_c": v, "marked": m} for s, v, m in j["furnace_5min"]]},
        "marked_periods": d.get("marks", []),
        "marked_hours": {"day": round(j["marked_hours"], 4), "year_to_date": round(j["marked_hours_ytd"], 4),
                         "cap_per_year": rules["marked_hours_per_year"], "cap_exceeded": cap_exceeded},
        "marks_over_limit": {"count": j["marks_over_limit"], "max_hours": rules["fault_or_accident_max_hours"],
                             "marks": d.get("marks_over_limit", [])},
        "marked_dust": {"max_1h_mg_m3": j["marked_dust_1h_max"], "cap_mg_m3": rules["marked_dust_1h_max_mg_m3"],
                        "violation": j["marked_dust_1h_max"] is not None
                        and j["marked_dust_1h_max"] > rules["marked_dust_1h_max_mg_m3"],
                        "hours": d.get("marked_dust_hours", [])},
        "completeness": d.get("completeness", {}),
        "eu_co_24h_failed": j["eu_co_24h_failed"],
    }
    if late is not None and j["status"] != "violation":  # a violation already judged stands (counts only grow)
        section["stored_status"], section["status"] = j["status"], "pending"
        section["note"] = f"judged on averages behind the readings: {late.reason()}"
    return section


def _rule_figures() -> dict[str, Any]:
    r = mee_rules()
    return {"furnace_min_temp_c": r.furnace_min_temp_c, "furnace_average_minutes": r.furnace_average_minutes,
            "furnace_max_below_per_day": r.furnace_max_below_per_day, "marked_hours_per_year": r.marked_hours_per_year,
            "marked_dust_1h_max_mg_m3": r.marked_dust_1h_max_mg_m3,
            "fault_or_accident_max_hours": r.fault_or_accident_max_hours}


def build_report(conn: psycopg.Connection, plant_id: str, day: date, line: str | None = None) -> dict[str, Any]:
    """The compliance report of one plant (or one of its lines) for one local day, JSON-able."""
    site = plant_site(conn, plant_id)
    tz = site[0] if site else DEFAULT_TZ
    start, end = local_day_bounds(day, tz)
    rows = fetch_averages(conn, plant_id, start, end, line)
    by_line: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_line.setdefault((r["line_id"] or r["device_id"], r["device_id"]), []).append(r)
    # readings the averages do not reflect yet, per device — a line with readings and no averages at all
    # (the scheduled processor stopped, or not there yet) is reported too, as pending
    late = averages_behind(conn, plant_id, start, end, line)
    for device_id in late:
        if not any(d == device_id for _, d in by_line):
            by_line[(device_placement(conn, device_id).line_id or device_id, device_id)] = []
    judgements = fetch_judgements(conn, plant_id, start, line)
    for device_id, j in judgements.items():  # judged (furnace temperature, marks) without emission averages
        if not any(d == device_id for _, d in by_line):
            by_line[(j["line_id"] or device_id, device_id)] = []
    lines = []
    for (line_id, device_id), line_rows in sorted(by_line.items()):
        lines.append(line_report(line_id, device_id, line_rows, line_limits(conn, plant_id, line_id, device_id), tz,
                                 late.get(device_id), judgements.get(device_id)))
    every = [c for ln in lines for c in ln["checks"]]
    pending = any(ln["pending"] is not None for ln in lines)
    return {
        "plant_id": plant_id, "day": day.isoformat(), "timezone": tz, "line": line, "reference": REFERENCE,
        "generated_at": datetime.now(UTC).isoformat(), "registered": site is not None,
        "compliant": {s: _overall([c for c in every if c["standard"] == s]) for s in ("gb", "eu")},
        "status": {s: _overall_status([c for c in every if c["standard"] == s], pending) for s in ("gb", "eu")},
        "regulatory_status": {ln["line_id"]: ln["regulatory"]["status"] for ln in lines},
        "lines": lines,
    }


# --- renderings ------------------------------------------------------------------------------------

CSV_COLUMNS = ("plant_id", "day", "line_id", "device_id", "standard", "pollutant", "average", "limit_mg_m3",
               "limit_source", "confidence_interval_mg_m3", "n_averages", "n_valid", "worst_mg_m3", "worst_at",
               "n_exceedances", "exceedance_starts", "share_within_limit", "required_share", "compliant", "status",
               "note", "rule", "value", "limit", "unit", "permit")


def report_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per check, then the line's regulatory rows (standard ``cn``): the CSV's rows."""
    out = []
    for ln in report["lines"]:
        for c in ln["checks"]:
            worst = c["worst"] or {}
            out.append({
                "plant_id": report["plant_id"], "day": report["day"], "line_id": ln["line_id"],
                "device_id": ln["device_id"], "standard": c["standard"], "pollutant": c["pollutant"],
                "average": c["average"], "limit_mg_m3": c["limit_mg_m3"], "limit_source": c["limit_source"],
                "confidence_interval_mg_m3": c["confidence_interval_mg_m3"], "n_averages": c["n_averages"],
                "n_valid": c["n_valid"], "worst_mg_m3": worst.get("value_mg_m3"), "worst_at": worst.get("at"),
                "n_exceedances": len(c["exceedances"]),
                "exceedance_starts": ";".join(e["start"] for e in c["exceedances"]),
                "share_within_limit": c["share_within_limit"], "required_share": c["required_share"],
                "compliant": c["compliant"], "status": c["status"], "note": c.get("note", ""),
                "rule": c["limit_key"], "value": worst.get("value_mg_m3"), "limit": c["limit_mg_m3"], "unit": "mg/m³",
                "permit": c.get("permit"),
            })
        out += regulatory_rows(report, ln)
    return out


def _growing_verdict(value: float, limit: float, final: bool) -> bool | None:
    """A count that can only grow: above its limit is a violation at once; within it only once the day ended."""
    if value > limit:
        return False
    return True if final else None


def regulatory_rows(report: Mapping[str, Any], ln: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The line's regulatory judgement as CSV rows: the day's status, each Chinese rule, completeness per pollutant,
    and one row per marked period."""
    reg = ln["regulatory"]
    base = {"plant_id": report["plant_id"], "day": report["day"], "line_id": ln["line_id"],
            "device_id": ln["device_id"], "standard": "cn"}
    status_verdict = {"compliant": True, "violation": False}.get(reg["status"])
    rows = [{**base, "rule": "cn.judgement", "average": "1d", "value": reg["status"], "compliant": status_verdict,
             "status": reg["status"], "note": "; ".join([*reg.get("reasons", []), *reg.get("gaps", [])])
             or reg.get("note", "")}]
    if reg["status"] == "not_judged":
        return rows
    final = reg["final"]
    furnace, hours, over, dust = (reg["furnace_temperature"], reg["marked_hours"], reg["marks_over_limit"],
                                  reg["marked_dust"])
    items: list[tuple[str, str, str, Any, Any, str, bool | None, str]] = [
        ("cn.gb_daily_exceedances", "", "1d", reg["daily_average_exceedances"]["count"], 0, "24-hour averages",
         _growing_verdict(reg["daily_average_exceedances"]["count"], 0, final),
         "; ".join(f"{e['pollutant']} {e['value_mg_m3']:g} > {e['limit_mg_m3']:g}"
                   for e in reg["daily_average_exceedances"]["items"])),
        ("cn.furnace_5min_below_850", "", "5min", furnace["below_min"], furnace["max_below_per_day"],
         f"5-minute averages below {furnace['min_temp_c']:g} °C",
         _growing_verdict(furnace["below_min"], furnace["max_below_per_day"], final),
         f"{furnace['averages_judged']} five-minute averages judged"),
        ("cn.marked_hours_ytd", "", "year", hours["year_to_date"], hours["cap_per_year"], "h",
         False if hours["cap_exceeded"] else (True if final else None), f"{hours['day']:g} h this day"),
        ("cn.marks_over_limit", "", "1d", over["count"], 0, f"fault/accident marks longer than {over['max_hours']:g} h",
         _growing_verdict(over["count"], 0, final), ""),
        ("cn.marked_dust_1h_max", "dust", "1h", dust["max_1h_mg_m3"], dust["cap_mg_m3"], "mg/m³",
         False if dust["violation"] else (True if final else None), "worst hourly dust average during marks"),
    ]
    for pollutant, c in reg["completeness"].items():
        items.append(("cn.completeness", pollutant, "1h", c["valid_hours"], c["needed_hours"], "valid hours",
                      c["complete"] if final else None,
                      f"{c['out_of_operation_hours']} h out of operation, {c['invalid_hours']} invalid, "
                      f"{c['missing_hours']} missing"))
    for m in reg["marked_periods"]:
        items.append(("cn.marked_period", "", m["mark"], m["hours_this_day"], None, "h", None,
                      f"{m['name_zh']} {m['start']} – {m['end'] or 'open'} ({m['source']}, {m['created_by']}): "
                      f"{m['reason']}"))
    for rule, pollutant, average, value, limit, unit, verdict, note in items:
        rows.append({**base, "rule": rule, "pollutant": pollutant, "average": average, "value": value, "limit": limit,
                     "unit": unit, "compliant": verdict,
                     "status": _check_status(verdict) if final or verdict is False else "in_progress", "note": note})
    return rows


def report_csv(report: Mapping[str, Any]) -> str:
    import pandas as pd

    csv: str = pd.DataFrame(report_rows(report), columns=list(CSV_COLUMNS)).to_csv(index=False)
    return csv


def half_hour_series(conn: psycopg.Connection, plant_id: str, day: date, line: str | None = None
                     ) -> list[dict[str, Any]]:
    """The day's half-hourly averages (the chart's data)."""
    site = plant_site(conn, plant_id)
    start, end = local_day_bounds(day, site[0] if site else DEFAULT_TZ)
    return fetch_averages(conn, plant_id, start, end, line, periods=("30min",))


def report_png(report: Mapping[str, Any], half_hours: Sequence[Mapping[str, Any]]) -> bytes:
    """A chart per line and pollutant: the day's half-hourly normalised averages against the EU
    half-hourly A and daily limits and the GB 1-hour limit, invalid half-hours shaded grey and marked ones blue;
    then per line its furnace temperature: the 5-minute averages against 850 °C (Order No. 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {ln["line_id"]: ln for ln in report["lines"]}
    panels: list[tuple[str, str | None]] = sorted(
        {(r["line_id"] or r["device_id"], r["pollutant"]) for r in half_hours})
    panels += [(line_id, None) for line_id, ln in sorted(lines.items()) if _furnace_points(ln)]
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(10, 2.4 * max(1, len(panels))), squeeze=False)
    for ax, (line_id, pollutant) in zip(axes[:, 0], panels, strict=False):
        if pollutant is None:
            _plot_furnace(ax, lines[line_id], f"{line_id} · furnace temperature", report["timezone"])
        else:
            rows = [r for r in half_hours if (r["line_id"] or r["device_id"]) == line_id
                    and r["pollutant"] == pollutant]
            _plot_panel(ax, rows, lines.get(line_id, {}).get("checks", []), pollutant, f"{line_id} · {pollutant}",
                        report["timezone"])
        ax.set_xlim(*local_day_bounds(date.fromisoformat(report["day"]), report["timezone"]))
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no half-hourly averages for this day", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.suptitle(f"{report['plant_id']} {report['day']} ({report['timezone']}) — half-hourly averages, {REFERENCE}",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


_MARKED_COLOUR = "lightsteelblue"


def _time_axis(ax: Any, tz: str) -> None:
    import matplotlib.dates as mdates

    zone = ZoneInfo(tz)
    ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 3), tz=zone))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))


def _plot_panel(ax: Any, rows: Sequence[Mapping[str, Any]], checks: Sequence[Mapping[str, Any]],
                pollutant: str, title: str, tz: str) -> None:
    xs = [r["period_start"] for r in rows] + [rows[-1]["period_end"]]
    ys = [r["avg_zs_mg_m3"] if r["valid"] and r["avg_zs_mg_m3"] is not None else float("nan") for r in rows]
    ax.step(xs, [*ys, ys[-1]], where="post", label="normalised 30-min")
    for r in rows:
        if r["status"] == "marked":  # outside normal operation (a furnace mark), not invalid data
            ax.axvspan(r["period_start"], r["period_end"], color=_MARKED_COLOUR, lw=0)
        elif not r["valid"] and r["status"] != "in_progress":
            ax.axvspan(r["period_start"], r["period_end"], color="0.85", lw=0)
    styles = {"eu.half_hour_a": ("tab:red", "EU ½h A"), "eu.daily": ("tab:orange", "EU daily"),
              "gb.1h": ("tab:purple", "GB 1-h"), "gb.24h": ("tab:brown", "GB 24-h")}
    for c in checks:
        if c["pollutant"] != pollutant:
            continue
        if c["limit_key"] in styles:
            color, label = styles[c["limit_key"]]
            ax.axhline(c["limit_mg_m3"], color=color, ls="--", lw=1, label=f"{label} {c['limit_mg_m3']:g}")
        elif c["limit_key"] == "eu.co_24h":
            half = c["alternatives"]["half_hour"]["limit_mg_m3"]
            ax.axhline(half, color="tab:red", ls="--", lw=1, label=f"EU CO ½h (either/or) {half:g}")
    _time_axis(ax, tz)
    ax.set_title(f"{title} (grey: invalid or missing; blue: marked)", fontsize=9)
    ax.set_ylabel("mg/m³")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")


def _furnace_points(ln: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    furnace = ln.get("regulatory", {}).get("furnace_temperature") or {}
    points: list[Mapping[str, Any]] = furnace.get("five_minute_averages", [])
    return points if any(p["avg_c"] is not None for p in points) else []


def _plot_furnace(ax: Any, ln: Mapping[str, Any], title: str, tz: str) -> None:
    """The 5-minute furnace-temperature averages against the Order No. 10 minimum; marked periods shaded blue."""
    furnace = ln["regulatory"]["furnace_temperature"]
    points = _furnace_points(ln)
    step = timedelta(minutes=5)
    xs = [datetime.fromisoformat(p["start"]) for p in points]
    ys = [float("nan") if p["avg_c"] is None else p["avg_c"] for p in points]
    ax.step([*xs, xs[-1] + step], [*ys, ys[-1]], where="post", color="tab:green", label="5-min average")
    for x, p in zip(xs, points, strict=True):
        if p["marked"]:
            ax.axvspan(x, x + step, color=_MARKED_COLOUR, lw=0)
    minimum = furnace["min_temp_c"]
    ax.axhline(minimum, color="tab:red", ls="--", lw=1, label=f"{minimum:g} °C")
    _time_axis(ax, tz)
    ax.set_title(f"{title}: {furnace['below_min']} five-minute averages below {minimum:g} °C "
                 f"(violation above {furnace['max_below_per_day']}; blue: marked)", fontsize=9)
    ax.set_ylabel("°C")
    ax.legend(fontsize=7, loc="upper right")
