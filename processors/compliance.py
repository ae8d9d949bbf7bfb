"""Emission compliance report per plant, line and local day, against GB 18485-2014 and EU 2010/75/EU.

Reads the averages ``processors/cems_averages.py`` maintains (normalised to 11 % O2 dry) and, for
each limit (defaults in ``cems_limits.yaml``, overridable per plant/line in ``sites.params.limits``):
the limit, the worst value and its time, the exceedances with their times, and the invalid periods.

EU values are *validated* before comparison (Annex VI Part 8): the 95 % confidence interval —
a percentage of the pollutant's daily limit (``eu_confidence_interval_pct``; the daily limit is the
basis this project chose, as the German 17. BImSchV applies it) — is subtracted from each
half-hourly and 10-minute average (never below 0), and the daily value is the mean of the validated
half-hours. GB 18485 has no such subtraction: its 1-hour and 24-hour averages are compared as they are.

Verdicts: an average exceeds when it is *above* its limit. A check with no valid average, or a daily
check whose daily average is invalid, has verdict ``None`` (not determinable), never ``True``.
EU half-hourly B (97 %) is an annual criterion: the day's share is reported with verdict ``None``.

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
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import yaml

from sanitel.errors import ConfigError
from sanitel.processors.cems_averages import DEFAULT_TZ, Behind, behind, device_placement, local_day_bounds

LIMITS_FILE = Path(__file__).with_name("cems_limits.yaml")
REFERENCE = "dry flue gas, 273.15 K, 101.325 kPa, 11 % O2"
# canonical limit key → (standard, averaging period in cems_averages, how the check judges)
LIMIT_KEYS: dict[str, tuple[str, str, str]] = {
    "gb.1h": ("gb", "1h", "max"),
    "gb.24h": ("gb", "1d", "max"),
    "eu.daily": ("eu", "1d", "max"),
    "eu.half_hour_a": ("eu", "30min", "max"),
    "eu.half_hour_b": ("eu", "30min", "share"),
    "eu.10min": ("eu", "10min", "share"),
}
# plant override keys without a standard apply to the matching average of both standards
_ALIASES: dict[str, tuple[str, ...]] = {
    "daily": ("gb.24h", "eu.daily"), "24h": ("gb.24h", "eu.daily"), "hourly": ("gb.1h",), "1h": ("gb.1h",),
    "half_hourly": ("eu.half_hour_a",), "30min": ("eu.half_hour_a",), "half_hour_a": ("eu.half_hour_a",),
    "half_hour_b": ("eu.half_hour_b",), "10min": ("eu.10min",),
}
_STANDARD_NAMES = {"gb": "GB 18485-2014", "eu": "EU 2010/75/EU"}
_CHECK_PERIODS = ("10min", "30min", "1h", "1d")


# --- limits ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Limit:
    key: str  # canonical, e.g. "eu.daily"
    pollutant: str
    value: float
    source: str  # "default" or the site id whose params set it


@dataclass(frozen=True, slots=True)
class LimitSet:
    limits: tuple[Limit, ...]
    ci_pct: Mapping[str, float]
    required_share: Mapping[str, float]

    def get(self, key: str, pollutant: str) -> Limit | None:
        return next((x for x in self.limits if x.key == key and x.pollutant == pollutant), None)

    def confidence_interval(self, pollutant: str) -> float:
        """EU CI in mg/m³: a percentage of the pollutant's (possibly overridden) daily limit."""
        daily = self.get("eu.daily", pollutant)
        return daily.value * self.ci_pct.get(pollutant, 0.0) / 100.0 if daily else 0.0


@cache
def _default_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(LIMITS_FILE.read_text())
    return data


def default_limits() -> dict[tuple[str, str], float]:
    """(canonical key, pollutant) → limit, from cems_limits.yaml."""
    data = _default_file()
    out: dict[tuple[str, str], float] = {}
    for standard, section in (("gb", "gb_18485_2014"), ("eu", "eu_2010_75")):
        for pollutant, values in data[section].items():
            for name, value in values.items():
                out[(f"{standard}.{name}", pollutant)] = float(value)
    return out


def _override_keys(name: str, where: str) -> tuple[str, ...]:
    if name in LIMIT_KEYS:
        return (name,)
    if name in _ALIASES:
        return _ALIASES[name]
    raise ConfigError(f"{where}: unknown limit {name!r}; use one of {', '.join(sorted(_ALIASES))} "
                      "or nest under 'eu'/'gb'")


def parse_overrides(params: Mapping[str, Any] | None, site_id: str) -> dict[tuple[str, str], float]:
    """``sites.params.limits`` → (canonical key, pollutant) → limit. Pollutants may be named ``nox`` or
    ``nox_mg_m3``; limits flat (``daily``) or per standard (``{"eu": {"daily": 180}}``)."""
    raw = (params or {}).get("limits") or {}
    out: dict[tuple[str, str], float] = {}
    for pollutant_key, values in raw.items():
        pollutant = pollutant_key.removesuffix("_mg_m3")
        for name, value in _flatten(values):
            where = f"sites.params.limits.{pollutant_key}.{name} of {site_id}"
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{where}: limit {value!r} must be a positive number (mg/m³)")
            for key in _override_keys(name, where):
                out[(key, pollutant)] = float(value)
    return out


def _flatten(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for name, value in values.items():
        if name in ("eu", "gb") and isinstance(value, Mapping):
            items += [(f"{name}.{k}", v) for k, v in value.items()]
        else:
            items.append((name, value))
    return items


def limit_set(site_params: Sequence[tuple[str, Mapping[str, Any] | None]] = ()) -> LimitSet:
    """Defaults overlaid by each site's overrides in order (plant, then line: the most specific wins)."""
    values = {k: (v, "default") for k, v in default_limits().items()}
    for site_id, params in site_params:
        values.update({k: (v, site_id) for k, v in parse_overrides(params, site_id).items()})
    data = _default_file()
    required = {f"eu.{k}": float(v) for k, v in data["eu_required_share"].items()}
    return LimitSet(tuple(Limit(k, p, v, src) for (k, p), (v, src) in sorted(values.items())),
                    {k: float(v) for k, v in data["eu_confidence_interval_pct"].items()}, required)


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


def site_params(conn: psycopg.Connection, site_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT params FROM sites WHERE site_id = %s", (site_id,)).fetchone()
    return row[0] if row else None


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


def validated(value: float, ci: float) -> float:
    """EU validated value: the average minus the confidence interval, never below zero."""
    return max(0.0, value - ci)


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
    }


def _daily_summary(row: Mapping[str, Any], eu_daily: float | None, tz: str) -> dict[str, Any]:
    return {
        "standard": row["standard"], "pollutant": row["pollutant"], "status": row["status"], "valid": row["valid"],
        "normalised_mg_m3": row["avg_zs_mg_m3"], "measured_mg_m3": row["avg_meas_mg_m3"],
        "validated_mg_m3": eu_daily if row["standard"] == "eu" else row["avg_zs_mg_m3"],
        "valid_sub_periods": row["n_valid"], "discarded_sub_periods": row["n_discarded"],
        "discarded": row["discarded"], "start": _iso(row["period_start"], tz),
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


def line_report(line_id: str, device_id: str, rows: Sequence[Mapping[str, Any]], limits: LimitSet,
                tz: str, late: Behind | None = None) -> dict[str, Any]:
    """Every check of one line's day; with ``late``, no verdicts (pending)."""
    by: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["pollutant"], r["period"], r["standard"]), []).append(r)
    checks, dailies = [], []
    for limit in limits.limits:
        standard, period, _ = LIMIT_KEYS[limit.key]
        period_rows = by.get((limit.pollutant, period, standard), [])
        if not period_rows:
            continue
        ci = limits.confidence_interval(limit.pollutant)
        eu_daily = eu_daily_validated(by.get((limit.pollutant, "30min", "eu"), []), ci)
        check = run_check(limit, period_rows, limits, tz, eu_daily)
        if period == "1d" and not period_rows[0]["valid"]:
            check["compliant"] = None
            day_row = period_rows[0]
            check["note"] = f"daily average {day_row['status']}: {day_row['n_discarded']} sub-periods discarded"
        check["status"] = _check_status(check["compliant"])
        if late is not None:
            _pending(check, late)
        checks.append(check)
    order = list(LIMIT_KEYS)
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
            if r["period"] == "1d" or (r["period_start"] <= span[1] and r["period_end"] > span[0]):
                entry["status"] = "pending"
    return {
        "line_id": line_id, "device_id": device_id,
        "compliant": {s: _overall([c for c in checks if c["standard"] == s]) for s in ("gb", "eu")},
        "status": {s: _overall_status([c for c in checks if c["standard"] == s], late is not None)
                   for s in ("gb", "eu")},
        "pending": None if late is None else behind_summary(late, tz),
        "checks": checks, "daily_averages": dailies, "invalid_periods": invalid,
    }


def _overall(checks: Sequence[Mapping[str, Any]]) -> bool | None:
    """False if any check fails; True if every decidable-per-day check passes; else None."""
    daily_checks = [c for c in checks if c["limit_key"] != "eu.half_hour_b"]
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
    lines = []
    for (line_id, device_id), line_rows in sorted(by_line.items()):
        overrides = [(plant_id, site[1] if site else None)]
        if line_id != device_id:
            overrides.append((line_id, site_params(conn, line_id)))
        lines.append(line_report(line_id, device_id, line_rows, limit_set(overrides), tz, late.get(device_id)))
    every = [c for ln in lines for c in ln["checks"]]
    pending = any(ln["pending"] is not None for ln in lines)
    return {
        "plant_id": plant_id, "day": day.isoformat(), "timezone": tz, "line": line, "reference": REFERENCE,
        "generated_at": datetime.now(UTC).isoformat(), "registered": site is not None,
        "compliant": {s: _overall([c for c in every if c["standard"] == s]) for s in ("gb", "eu")},
        "status": {s: _overall_status([c for c in every if c["standard"] == s], pending) for s in ("gb", "eu")},
        "lines": lines,
    }


# --- renderings ------------------------------------------------------------------------------------

CSV_COLUMNS = ("plant_id", "day", "line_id", "device_id", "standard", "pollutant", "average", "limit_mg_m3",
               "limit_source", "confidence_interval_mg_m3", "n_averages", "n_valid", "worst_mg_m3", "worst_at",
               "n_exceedances", "exceedance_starts", "share_within_limit", "required_share", "compliant", "status",
               "note")


def report_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per check (the CSV's rows)."""
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
            })
    return out


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
    half-hourly A and daily limits and the GB 1-hour limit; invalid half-hours shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["line_id"] or r["device_id"], r["pollutant"]) for r in half_hours})
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(10, 2.4 * max(1, len(panels))), squeeze=False)
    lines = {ln["line_id"]: ln for ln in report["lines"]}
    for ax, (line_id, pollutant) in zip(axes[:, 0], panels, strict=False):
        rows = [r for r in half_hours if (r["line_id"] or r["device_id"]) == line_id and r["pollutant"] == pollutant]
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


def _plot_panel(ax: Any, rows: Sequence[Mapping[str, Any]], checks: Sequence[Mapping[str, Any]],
                pollutant: str, title: str, tz: str) -> None:
    import matplotlib.dates as mdates

    zone = ZoneInfo(tz)
    xs = [r["period_start"] for r in rows] + [rows[-1]["period_end"]]
    ys = [r["avg_zs_mg_m3"] if r["valid"] and r["avg_zs_mg_m3"] is not None else float("nan") for r in rows]
    ax.step(xs, [*ys, ys[-1]], where="post", label="normalised 30-min")
    for r in rows:
        if not r["valid"] and r["status"] != "in_progress":
            ax.axvspan(r["period_start"], r["period_end"], color="0.85", lw=0)
    styles = {"eu.half_hour_a": ("tab:red", "EU ½h A"), "eu.daily": ("tab:orange", "EU daily"),
              "gb.1h": ("tab:purple", "GB 1-h"), "gb.24h": ("tab:brown", "GB 24-h")}
    for c in checks:
        if c["pollutant"] == pollutant and c["limit_key"] in styles:
            color, label = styles[c["limit_key"]]
            ax.axhline(c["limit_mg_m3"], color=color, ls="--", lw=1, label=f"{label} {c['limit_mg_m3']:g}")
    ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 3), tz=zone))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
    ax.set_title(f"{title} (grey: invalid or missing)", fontsize=9)
    ax.set_ylabel("mg/m³")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right")
