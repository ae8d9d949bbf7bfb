"""SQL per rule kind, over the typed hypertables (migration 0002), ``cems_averages`` (0020),
``cems_daily_judgements`` and ``cems_marks`` (0080), ``devices`` and ``device_last_seen`` (0001). Every function
takes per-device start times so one statement serves all the subjects of a rule in a pass.

Which rows are new: each reading row has ``stored_at`` — the start of the transaction that wrote it
(migration 0011). A row stored before the start of the oldest transaction still open is surely
committed, so ``safe_upto()`` is that start, and a pass takes the rows stored in
``[watermark, safe_upto)``: each row is seen exactly once, however the writer's transactions
interleave, and rows replayed from the collector's spool count as new when they land.

Which rows count: readings whose HJ 212 flag (``<pollutant>_flag``, the flag of a CEMS parameter kept in
``extra.hj212``, or ``extra.flag`` on other kinds) is not in the rule's ``accept_flags`` are ignored
— calibration, maintenance, fault and stopped readings never raise or clear an alert. A CEMS reading taken
while its furnace line is marked out of normal operation (a furnace mark in ``cems_marks`` or from the data
unit) counts as stopped (F) too. A ``flagged`` rule instead judges the flag itself (1 when the reading
carries it, 0 when not), for every reading of its field.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from sanitel.alerts.rules import (
    AVERAGE_PERIODS,
    AVERAGES_TABLE,
    JUDGEMENT_FIELDS,
    JUDGEMENTS_TABLE,
    EventCountRule,
    RateRule,
    ThresholdRule,
    WhereCondition,
    WindowRule,
    _field_kind,
)
from sanitel.db import one_row
from sanitel.schemas.hj212 import PARAMETER_CODES

log = logging.getLogger("sanitel.alerts")

MAX_TRANSACTION_HOLD = timedelta(minutes=5)  # an older open transaction is logged, not waited for
_CEMS_PARAMETER_FLAGS = {column: (code, flag) for code, (column, flag) in PARAMETER_CODES.items()}


# --------------------------------------------------------------------------------------------
# What is new
# --------------------------------------------------------------------------------------------


def safe_upto(conn: psycopg.Connection, fallback_settle: timedelta = timedelta(seconds=30)) -> datetime:
    """Rows stored before this instant are committed: the start of the oldest other open transaction
    in this database, or now. Call first in a transaction (pg_stat_activity is a per-transaction snapshot).
    When other sessions' transactions are hidden (another role without pg_read_all_stats), fall back
    to now − ``fallback_settle``."""
    row: tuple[datetime, datetime | None, int] = one_row(conn.execute(
        """SELECT clock_timestamp(),
                  min(xact_start) FILTER (WHERE xact_start IS NOT NULL),
                  count(*) FILTER (WHERE state IS NULL)
           FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"""
    ))
    now, oldest, hidden = row
    upto = now - fallback_settle if hidden else now
    if oldest is not None and oldest < upto:
        if now - oldest > MAX_TRANSACTION_HOLD:
            log.warning("a transaction open since %s holds back alert evaluation; not waiting for it", oldest)
            return max(oldest, now - MAX_TRANSACTION_HOLD)
        return oldest
    return upto


@dataclass(frozen=True, slots=True)
class Change:
    """Device-time span of a device's rows stored in this pass's slice."""

    first_ts: datetime
    last_ts: datetime
    last_stored: datetime | None = None  # write time of the newest row (readings only)


def changes(conn: psycopg.Connection, table: str, since: datetime, upto: datetime,
            horizon: datetime) -> dict[str, Change]:
    """Per device, the span of its rows stored in [since, upto) with device time after ``horizon``."""
    rows = conn.execute(
        sql.SQL("SELECT device_id, min(ts), max(ts), max(stored_at) FROM {}"
                " WHERE stored_at >= %s AND stored_at < %s AND ts >= %s"
                " GROUP BY device_id").format(sql.Identifier(table)), (since, upto, horizon)).fetchall()
    return {d: Change(a, b, stored) for d, a, b, stored in rows}


def averages_changes(conn: psycopg.Connection, since: datetime, upto: datetime,
                     horizon: datetime) -> dict[str, Change]:
    """Per device, the span of cems_averages periods (re)computed in [since, upto)."""
    rows = conn.execute(
        "SELECT device_id, min(period_start), max(period_start) FROM cems_averages"
        " WHERE computed_at >= %s AND computed_at < %s AND period_start >= %s GROUP BY device_id",
        (since, upto, horizon - timedelta(days=1))).fetchall()
    return {d: Change(a, b) for d, a, b in rows}


def judgements_changes(conn: psycopg.Connection, since: datetime, upto: datetime,
                       horizon: datetime) -> dict[str, Change]:
    """Per device, the span of cems_daily_judgements days (re)computed in [since, upto)."""
    rows = conn.execute(
        "SELECT device_id, min(day_start), max(day_start) FROM cems_daily_judgements"
        " WHERE computed_at >= %s AND computed_at < %s AND day_start >= %s GROUP BY device_id",
        (since, upto, horizon - timedelta(days=1))).fetchall()
    return {d: Change(a, b) for d, a, b in rows}


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    exists: bool = one_row(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)))[0]
    return exists


# --------------------------------------------------------------------------------------------
# Expressions built from a rule (identifiers quoted, values as parameters: rules come from the API)
# --------------------------------------------------------------------------------------------


def _column(name: str) -> sql.Composable:
    return sql.SQL("t.{}").format(sql.Identifier(name))


def value_sql(rule: ThresholdRule | RateRule | WindowRule | EventCountRule) -> sql.Composable:
    field = getattr(rule, "field", None)
    if field is None:
        return sql.SQL("1.0::float8")
    column = _column(field)
    flagged = getattr(rule, "flagged", None)
    if flagged is not None:  # the reading's own flag is the value: 1 when it is this one (no flag: N)
        own = _own_flag_sql(rule.source, field)
        return sql.SQL("(CASE WHEN {c} IS NULL AND {f} IS NULL THEN NULL WHEN coalesce({f}, 'N') = {x} THEN 1.0"
                       " ELSE 0.0 END)::float8").format(c=column, f=own, x=sql.Literal(flagged))
    bit = getattr(rule, "bit", None)
    if bit is not None:
        return sql.SQL("((({} >> {}) & 1)::float8)").format(column, sql.Literal(bit))
    if _field_kind(rule.source, field) == "bool":
        return sql.SQL("({}::int::float8)").format(column)
    # through numeric: a real column's 0.05 stays 0.05, not 0.05000000074505806, in values and summaries
    return sql.SQL("({}::numeric::float8)").format(column)


# Furnace marks (MEE announcement 2019 No. 50: 烘炉 启炉 停炉 停运 故障 事故), restated from
# processors/cems_marks.py FURNACE_MARKS: alerts do not import processor code.
FURNACE_MARKS = ("bake_out", "start_up", "shut_down", "shut", "fault", "accident")
# A line that is not in normal operation is not burning waste as the limits assume (GB 18485-2014, MEE Order
# No. 10): its readings count as stopped (F), judged under their own rules (cems_daily_judgements). It is marked
# by the plant (a current furnace mark in cems_marks: not superseded, not withdrawn) or by the data unit
# (extra.operating_mark, or the older extra.operating_state start_up / shut_down / off).
_NOT_OPERATING = sql.SQL(
    """CASE WHEN t.extra ->> 'operating_state' IN ('start_up', 'shut_down', 'off')
              OR t.extra ->> 'operating_mark' = ANY({marks})
              OR EXISTS (SELECT 1 FROM cems_marks m WHERE m.device_id = t.device_id AND m.mark = ANY({marks})
                         AND m.superseded_by IS NULL AND NOT m.withdrawn
                         AND m.starts_at <= t.ts AND (m.ends_at IS NULL OR m.ends_at > t.ts))
            THEN 'F' END""").format(marks=sql.Literal(list(FURNACE_MARKS)))


def _own_flag_sql(source: str, field: str) -> sql.Composable:
    """The flag a reading carries for this field (NULL when none): a CEMS value's own HJ 212 flag column (or
    the one kept in extra.hj212), another kind's extra.flag."""
    if source != "cems_readings":
        return sql.SQL("(t.extra ->> 'flag')")
    prefix = field.removesuffix("_zs_mg_m3").removesuffix("_mg_m3")
    if prefix != field:
        return sql.SQL("t.{}").format(sql.Identifier(f"{prefix}_flag"))
    if field in _CEMS_PARAMETER_FLAGS:
        code, flag_column = _CEMS_PARAMETER_FLAGS[field]
        return (sql.SQL("t.{}").format(sql.Identifier(flag_column)) if flag_column
                else sql.SQL("(t.extra #>> {})").format(sql.Literal(f"{{hj212,{code},Flag}}")))
    return sql.SQL("NULL")


def flag_sql(source: str, field: str | None) -> sql.Composable:
    """The HJ 212 data flag of a reading's value ('N' when the reading carries none)."""
    if source == "cems_readings" and field is not None:
        return sql.SQL("coalesce({}, {}, 'N')").format(_NOT_OPERATING, _own_flag_sql(source, field))
    return sql.SQL("coalesce(t.extra ->> 'flag', 'N')")


def counted_sql(rule: ThresholdRule | RateRule | WindowRule | EventCountRule) -> sql.Composable:
    if getattr(rule, "flagged", None) is not None:
        return sql.SQL("true")  # the flag is the value: every reading of the field is judged
    return sql.SQL("({} = ANY({}))").format(flag_sql(rule.source, getattr(rule, "field", None)),
                                             sql.Literal(list(rule.accept_flags)))


_WHERE_OPS = {"=": "=", "!=": "<>", ">": ">", ">=": ">=", "<": "<", "<=": "<="}


def where_sql(rule: ThresholdRule | RateRule | WindowRule | EventCountRule) -> sql.Composable:
    parts: list[sql.Composable] = []
    for column, condition in rule.where.items():
        if rule.source == AVERAGES_TABLE:
            continue  # pollutant and standard are applied by averages_rows
        col = _column(column)
        if isinstance(condition, WhereCondition):
            parts.append(sql.SQL("{} {} {}").format(col, sql.SQL(_WHERE_OPS[condition.op]),
                                                    sql.Literal(condition.value)))
        elif isinstance(condition, list):
            parts.append(sql.SQL("{}::text = ANY({})").format(col, sql.Literal([str(v) for v in condition])))
        else:
            parts.append(sql.SQL("{} = {}").format(col, sql.Literal(condition)))
    local_hours = getattr(rule, "local_hours", None)
    if local_hours:
        parts.append(_local_hours_sql(local_hours))
    return sql.SQL("").join(sql.SQL(" AND ") + p for p in parts)


def _local_hours_sql(hours: str) -> sql.Composable:
    start, end = hours.split("-")
    local = sql.SQL("(t.ts AT TIME ZONE q.tz)::time")
    if end == "24:00":
        return sql.SQL("{} >= {}::time").format(local, sql.Literal(start))
    if start <= end:
        return sql.SQL("({} >= {}::time AND {} < {}::time)").format(local, sql.Literal(start), local,
                                                                   sql.Literal(end))
    return sql.SQL("({} >= {}::time OR {} < {}::time)").format(local, sql.Literal(start), local, sql.Literal(end))


# --------------------------------------------------------------------------------------------
# Samples per rule kind
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Read one device's rows from ``start`` (device time, inclusive) for ``subject``."""

    device_id: str
    subject: str
    tz: str
    start: datetime


def _unnest(requests: Sequence[Request]) -> dict[str, Any]:
    return {"devices": [r.device_id for r in requests], "subjects": [r.subject for r in requests],
            "tzs": [r.tz for r in requests], "starts": [r.start for r in requests]}


_Q = sql.SQL("unnest(%(devices)s::text[], %(subjects)s::text[], %(tzs)s::text[], %(starts)s::timestamptz[])"
             " AS q (device_id, subject, tz, start)")

ReadingRow = tuple[datetime, float, bool, bool]  # ts, value, counted, look-back (before the request's start)


def reading_rows(conn: psycopg.Connection, rule: ThresholdRule, requests: Sequence[Request],
                 upto: datetime, lookback: int = 0) -> dict[str, list[ReadingRow]]:
    """Per device: (ts, value, counted, look-back) of its readings in time order — from its start, and, with
    ``lookback`` n, first the device's last n counted readings before the start (a rolling median's window spans
    passes; any age: the window is n readings, as the ground truth counts them). One statement: the look-back is
    a LATERAL newest-first scan of the unique (device_id, ts, seq) index per device, read backwards."""
    if not requests:
        return {}
    value, counted, where = value_sql(rule), counted_sql(rule), where_sql(rule)
    rows = sql.SQL(
        """SELECT t.device_id, t.ts, {value} AS v, {counted} AS counted, false AS lookback
           FROM {table} t JOIN {q} ON q.device_id = t.device_id
           WHERE t.ts >= q.start AND t.stored_at < %(upto)s AND {value} IS NOT NULL {where}"""
    ).format(value=value, counted=counted, table=sql.Identifier(rule.source), q=_Q, where=where)
    if lookback > 0:
        rows = sql.SQL(
            """{rows}
               UNION ALL
               SELECT q.device_id, b.ts, b.v, true, true
               FROM {q} CROSS JOIN LATERAL (
                   SELECT t.ts, {value} AS v FROM {table} t
                   WHERE t.device_id = q.device_id AND t.ts < q.start AND t.stored_at < %(upto)s
                     AND {value} IS NOT NULL AND {counted} {where}
                   ORDER BY t.ts DESC LIMIT %(lookback)s) b"""
        ).format(rows=rows, value=value, counted=counted, table=sql.Identifier(rule.source), q=_Q, where=where)
    query = sql.SQL("SELECT device_id, ts, v, counted, lookback FROM ({rows}) x ORDER BY device_id, ts").format(
        rows=rows)
    out: dict[str, list[ReadingRow]] = defaultdict(list)
    for device_id, ts, v, is_counted, is_lookback in conn.execute(
            query, {**_unnest(requests), "upto": upto, "lookback": lookback}):
        out[device_id].append((ts, v, is_counted, is_lookback))
    return out


RateRow = tuple[datetime, float | None]  # ts, rate (None when the look-back is too short to judge)


def rate_rows(conn: psycopg.Connection, rule: RateRule, requests: Sequence[Request],
              upto: datetime) -> dict[str, list[RateRow]]:
    """Per device: the rate of change at each counted reading, (v − v_first) / (ts − ts_first) over the
    readings within ``over`` before it, in units of ``rate_per``. A span shorter than half of ``over``
    gives None: two readings a second apart say nothing about a rate per minute."""
    if not requests:
        return {}
    value = value_sql(rule)
    query = sql.SQL(
        """SELECT device_id, ts,
                  CASE WHEN extract(epoch FROM ts - t0) >= %(min_span)s
                       THEN (v - v0) / extract(epoch FROM ts - t0) * %(per)s END
           FROM (SELECT t.device_id, t.ts, q.start, {value} AS v,
                        first_value({value}) OVER w AS v0, first_value(t.ts) OVER w AS t0
                 FROM {table} t JOIN {q} ON q.device_id = t.device_id
                 WHERE t.ts >= q.start - %(over)s AND t.stored_at < %(upto)s AND {value} IS NOT NULL
                   AND {counted} {where}
                 WINDOW w AS (PARTITION BY t.device_id ORDER BY t.ts RANGE BETWEEN %(over)s PRECEDING AND CURRENT ROW)
                ) x
           WHERE ts >= start ORDER BY device_id, ts"""
    ).format(value=value, counted=counted_sql(rule), table=sql.Identifier(rule.source), q=_Q, where=where_sql(rule))
    params = {**_unnest(requests), "upto": upto, "over": rule.over,
              "min_span": rule.over.total_seconds() / 2, "per": rule.rate_per.total_seconds()}
    out: dict[str, list[RateRow]] = defaultdict(list)
    for device_id, ts, rate in conn.execute(query, params):
        out[device_id].append((ts, rate))
    return out


@dataclass(frozen=True, slots=True)
class WindowRow:
    bucket: datetime
    value: float | None
    n_valid: int
    n_discarded: int
    last_ts: datetime
    devices: tuple[str, ...]  # the devices whose readings are in it


_AGGREGATES = {
    "avg": "avg(v) FILTER (WHERE counted)",
    "min": "min(v) FILTER (WHERE counted)",
    "max": "max(v) FILTER (WHERE counted)",
    "sum": "sum(v) FILTER (WHERE counted)",
    "count": "count(*) FILTER (WHERE counted)::float8",
    # equivalent continuous sound level: the energy mean of dB values, not their arithmetic mean
    "leq": "10 * log(avg(power(10, v / 10.0)) FILTER (WHERE counted))",
}


def window_rows(conn: psycopg.Connection, rule: WindowRule | EventCountRule, requests: Sequence[Request],
                upto: datetime) -> dict[str, list[WindowRow]]:
    """Per subject: one row per clock-aligned window (in the subject's time zone) that has readings."""
    if not requests:
        return {}
    aggregate = "count" if isinstance(rule, EventCountRule) else rule.aggregate
    subject = (sql.SQL("coalesce('point:' || t.point_id, q.subject)") if rule.per == "point"
               else sql.SQL("q.subject"))
    query = sql.SQL(
        """SELECT subject, bucket, {aggregate}, count(*) FILTER (WHERE counted),
                  count(*) FILTER (WHERE NOT counted), max(ts), array_agg(DISTINCT device_id)
           FROM (SELECT {subject} AS subject, time_bucket(%(width)s, t.ts, q.tz) AS bucket, t.ts, t.device_id,
                        {value} AS v, {counted} AS counted
                 FROM {table} t JOIN {q} ON q.device_id = t.device_id
                 WHERE t.ts >= q.start AND t.stored_at < %(upto)s AND {value} IS NOT NULL {where}) x
           GROUP BY subject, bucket ORDER BY subject, bucket"""
    ).format(aggregate=sql.SQL(_AGGREGATES[aggregate]), subject=subject, value=value_sql(rule),
             counted=counted_sql(rule), table=sql.Identifier(rule.source), q=_Q, where=where_sql(rule))
    out: dict[str, list[WindowRow]] = defaultdict(list)
    for subj, bucket, value, n_valid, n_discarded, last_ts, devices in conn.execute(
            query, {**_unnest(requests), "upto": upto, "width": rule.width}):
        out[subj].append(WindowRow(bucket, value, n_valid, n_discarded, last_ts, tuple(devices)))
    return out


@dataclass(frozen=True, slots=True)
class AverageRow:
    start: datetime
    end: datetime
    value: float | None
    status: str  # valid | invalid | missing | not_operating | marked | in_progress
    final: bool  # computed after the unit had reported past the period's end: its data was complete


def averages_rows(conn: psycopg.Connection, rule: WindowRule, requests: Sequence[Request],
                  upto: datetime, write_margin: timedelta) -> dict[str, list[AverageRow]]:
    """Per device: the cems_averages periods of the rule's pollutant, standard and window. A period is
    ``final`` when it was computed after the unit had reported past its end — ``write_margin`` after
    that reading's transaction began, time enough for it to commit, so the processor saw it."""
    if not requests:
        return {}
    field = rule.field or "avg_zs_mg_m3"
    query = sql.SQL(
        """SELECT a.device_id, a.period_start, a.period_end, a.{field}, a.status,
                  EXISTS (SELECT 1 FROM cems_readings r WHERE r.device_id = a.device_id
                          AND r.ts >= a.period_end AND r.stored_at <= a.computed_at - %(write_margin)s)
           FROM cems_averages a JOIN unnest(%(devices)s::text[], %(starts)s::timestamptz[]) AS q (device_id, start)
                ON q.device_id = a.device_id
           WHERE a.pollutant = %(pollutant)s AND a.standard = %(standard)s AND a.period = %(period)s
             AND a.period_start >= q.start AND a.computed_at < %(upto)s
           ORDER BY a.device_id, a.period_start"""
    ).format(field=sql.Identifier(field))
    params = {"devices": [r.device_id for r in requests], "starts": [r.start for r in requests], "upto": upto,
              "pollutant": str(rule.where["pollutant"]), "standard": str(rule.where["standard"]),
              "period": AVERAGE_PERIODS[rule.window], "write_margin": write_margin}
    out: dict[str, list[AverageRow]] = defaultdict(list)
    for device_id, start, end, value, status, final in conn.execute(query, params):
        out[device_id].append(AverageRow(start, end, value, status, final))
    return out


@dataclass(frozen=True, slots=True)
class JudgementRow:
    start: datetime  # the local day, as UTC instants
    end: datetime
    value: float | None  # None: not judged (e.g. no mark that day for marked_dust_1h_max)
    final: bool  # the day had ended when computed, and the unit had reported past its end by then


def judgement_rows(conn: psycopg.Connection, rule: WindowRule, requests: Sequence[Request],
                   upto: datetime, write_margin: timedelta) -> dict[str, list[JudgementRow]]:
    """Per device: its cems_daily_judgements days with the rule's field. A day is ``final`` when its row says
    the day had ended and it was computed after the unit had reported past the day's end (as ``averages_rows``)."""
    if not requests or rule.field not in JUDGEMENT_FIELDS:
        return {}
    query = sql.SQL(
        """SELECT j.device_id, j.day_start, j.day_end, j.{field}::float8,
                  j.final AND EXISTS (SELECT 1 FROM cems_readings r WHERE r.device_id = j.device_id
                                      AND r.ts >= j.day_end AND r.stored_at <= j.computed_at - %(write_margin)s)
           FROM {table} j JOIN unnest(%(devices)s::text[], %(starts)s::timestamptz[]) AS q (device_id, start)
                ON q.device_id = j.device_id
           WHERE j.day_start >= q.start AND j.computed_at < %(upto)s
           ORDER BY j.device_id, j.day_start"""
    ).format(field=sql.Identifier(rule.field), table=sql.Identifier(JUDGEMENTS_TABLE))
    params = {"devices": [r.device_id for r in requests], "starts": [r.start for r in requests], "upto": upto,
              "write_margin": write_margin}
    out: dict[str, list[JudgementRow]] = defaultdict(list)
    for device_id, start, end, value, final in conn.execute(query, params):
        out[device_id].append(JudgementRow(start, end, value, final))
    return out


# The scheduled processor's watermark of CEMS averages in ``maintenance_watermarks``: the newest ``stored_at`` it has
# averaged (processors/cems_averages.py ``WATERMARK_NAME``; restated: alerts do not import processor code).
AVERAGES_WATERMARK = "cems_averages"


@dataclass(frozen=True, slots=True)
class AveragesBehind:
    """A CEMS device's base readings that its stored averages do not reflect yet."""

    device_id: str
    readings: int
    first_ts: datetime  # device times of those readings
    last_ts: datetime
    oldest_stored: datetime  # write time of the one waiting longest


def averages_behind(conn: psycopg.Connection, devices: Sequence[str], horizon: datetime,
                    upto: datetime) -> dict[str, AveragesBehind]:
    """Per device, the base readings (rtd, minute; device time after ``horizon``, stored before ``upto``) that its
    averages do not reflect: stored after the processor's watermark — it has not read them — and after the
    averages of their day were computed, or their day has none.

    The watermark bound keeps the read to rows written since the last pass (BRIN on ``stored_at``, or the
    ``(device_id, stored_at)`` index of migration 0062) and tells a unit that reports nothing to average from one
    not processed yet. A day's averages are written in one transaction, so its ``1d`` rows carry the day's
    ``computed_at``; hour buckets map onto local days for whole-hour offsets, as the processor assumes. A row
    stored before the watermark but committed after the pass read is averaged by the next pass's overlap and
    is not reported here."""
    if not devices:
        return {}
    rows = conn.execute(
        """WITH late AS MATERIALIZED (
               SELECT r.device_id, r.ts, r.stored_at FROM cems_readings r
               WHERE r.device_id = ANY(%(devices)s) AND r.ts >= %(horizon)s AND r.stored_at < %(upto)s
                 AND r.stored_at > coalesce((SELECT watermark FROM maintenance_watermarks WHERE name = %(mark)s),
                                            '-infinity')
                 AND r.data_kind IN ('rtd', 'minute')),
           hours AS (
               SELECT h.device_id, h.hour,
                      (SELECT max(a.computed_at) FROM cems_averages a
                       WHERE a.device_id = h.device_id AND a.period = '1d'
                         AND a.period_start <= h.hour AND a.period_end > h.hour) AS computed_at
               FROM (SELECT DISTINCT device_id, time_bucket('1 hour', ts) AS hour FROM late) h)
           SELECT l.device_id, count(*), min(l.ts), max(l.ts), min(l.stored_at)
           FROM late l JOIN hours h ON h.device_id = l.device_id AND h.hour = time_bucket('1 hour', l.ts)
           WHERE l.stored_at > coalesce(h.computed_at, '-infinity')
           GROUP BY l.device_id""",
        {"devices": list(devices), "horizon": horizon, "upto": upto, "mark": AVERAGES_WATERMARK}).fetchall()
    return {d: AveragesBehind(d, n, first, last, oldest) for d, n, first, last, oldest in rows}


# --------------------------------------------------------------------------------------------
# Offline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastSeen:
    device_id: str
    kind: str
    timeout_s: int
    last_ts: datetime | None
    last_received: datetime | None
    registered_at: datetime


def last_seen(conn: psycopg.Connection, kinds: Sequence[str], now: datetime, timeout_s: int | None,
              also: Sequence[str] = ()) -> list[LastSeen]:
    """Devices of these kinds silent at ``now`` for longer than their timeout (or ``timeout_s``), by
    receive time — plus the devices in ``also`` whatever their state."""
    rows = conn.execute(
        """SELECT d.device_id, d.kind, coalesce(%(timeout)s, d.inactivity_timeout_s), l.last_ts, l.last_received,
                  d.registered_at
           FROM devices d LEFT JOIN device_last_seen l ON l.device_id = d.device_id
           WHERE d.kind = ANY(%(kinds)s)
             AND (d.device_id = ANY(%(also)s)
                  OR coalesce(l.last_received, d.registered_at)
                     < %(now)s - coalesce(%(timeout)s, d.inactivity_timeout_s) * interval '1 second')""",
        {"kinds": list(kinds), "now": now, "timeout": timeout_s, "also": list(also)}).fetchall()
    return [LastSeen(*r) for r in rows]


def shift_states_at(conn: psycopg.Connection, instants: Sequence[tuple[str, datetime]],
                    upto: datetime | None = None) -> dict[tuple[str, datetime], str | None]:
    """Per (truck, device time), the ``shift_state`` of the truck's newest telemetry reading at or before that time
    (stored before ``upto`` when given) — None when there is no such reading or it states none. One statement; the
    unique (device_id, ts, seq) index finds each row."""
    if not instants:
        return {}
    devices, times = [d for d, _ in instants], [t for _, t in instants]
    rows = conn.execute(
        sql.SQL("SELECT q.device_id, q.at, (SELECT t.shift_state FROM {} t WHERE t.device_id = q.device_id"
                " AND t.ts <= q.at AND (%s::timestamptz IS NULL OR t.stored_at < %s) ORDER BY t.ts DESC, t.seq DESC"
                " LIMIT 1) FROM unnest(%s::text[], %s::timestamptz[]) AS q (device_id, at)").format(
            sql.Identifier(TRUCK_TELEMETRY)), (upto, upto, devices, times)).fetchall()
    return {(device_id, at): state for device_id, at, state in rows}


def previous_reading(conn: psycopg.Connection, tables: Sequence[str], before: dict[str, datetime],
                     horizon: datetime) -> dict[str, datetime]:
    """Per device, its newest reading before the given device time (after ``horizon``)."""
    out: dict[str, datetime] = {}
    if not before:
        return out
    devices, times = list(before), [before[d] for d in before]
    for table in tables:
        rows = conn.execute(
            sql.SQL("SELECT q.device_id, (SELECT max(t.ts) FROM {} t WHERE t.device_id = q.device_id"
                    " AND t.ts < q.before AND t.ts >= %s)"
                    " FROM unnest(%s::text[], %s::timestamptz[]) AS q (device_id, before)").format(
                sql.Identifier(table)), (horizon, devices, times)).fetchall()
        for device_id, ts in rows:
            if ts is not None and (device_id not in out or ts > out[device_id]):
                out[device_id] = ts
    return out


def reading_gaps(conn: psycopg.Connection, tables: Sequence[str], starts: dict[str, datetime],
                 timeouts_s: dict[str, int], upto: datetime) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per device, (previous, next) device times of consecutive readings from its start that lie further
    apart than its timeout — a silence in device time, also when the readings arrived late (any flag:
    a flagged reading still shows the device is alive)."""
    if not starts:
        return {}
    devices = list(starts)
    # per device along its (device_id, ts) index: as a join (or a LATERAL the planner pulls up into one: OFFSET 0
    # keeps it) the planner scanned the whole newest chunk of a table for a few rows per device
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT q.device_id, t.ts FROM q CROSS JOIN LATERAL (SELECT ts FROM {} t"
                " WHERE t.device_id = q.device_id AND t.ts >= q.start AND t.stored_at < %(upto)s OFFSET 0) t"
                ).format(sql.Identifier(table))
        for table in tables)
    query = sql.SQL(
        """WITH q AS (SELECT * FROM unnest(%(devices)s::text[], %(starts)s::timestamptz[], %(timeouts)s::int[])
                      AS q (device_id, start, timeout_s))
           SELECT g.device_id, g.prev, g.ts
           FROM (SELECT device_id, ts, lag(ts) OVER (PARTITION BY device_id ORDER BY ts) AS prev
                 FROM ({union}) u) g
           JOIN q ON q.device_id = g.device_id
           WHERE g.ts - g.prev > q.timeout_s * interval '1 second'
           ORDER BY g.device_id, g.prev""").format(union=union)
    params = {"devices": devices, "starts": [starts[d] for d in devices],
              "timeouts": [timeouts_s[d] for d in devices], "upto": upto}
    out: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for device_id, prev, ts in conn.execute(query, params):
        out[device_id].append((prev, ts))
    return out


# --------------------------------------------------------------------------------------------
# Collection trucks (issue 15; tables of migration 0083): alerts/trucks.py
# --------------------------------------------------------------------------------------------

TRUCK_TELEMETRY = "truck_telemetry"


@dataclass(frozen=True, slots=True)
class TruckRow:
    """One truck telemetry reading, the fields the truck checks read."""

    ts: datetime
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    load_kg: float | None
    rated_payload_kg: float | None
    route_id: str | None
    shift_state: str | None
    lookback: bool  # before the request's start: only fills a rolling window


def truck_rows(conn: psycopg.Connection, starts: dict[str, datetime], upto: datetime,
               lookback: int = 0) -> dict[str, list[TruckRow]]:
    """Per truck, its telemetry from its start in time order, after its last ``lookback`` readings with a load
    before the start (a rolling median's window spans passes). One statement, as ``reading_rows``."""
    if not starts:
        return {}
    columns = "t.ts, t.lat, t.lon, t.speed_kmh, t.load_kg, t.rated_payload_kg, t.route_id, t.shift_state"
    query = f"""
        WITH q AS (SELECT * FROM unnest(%(devices)s::text[], %(starts)s::timestamptz[]) AS q (device_id, start))
        SELECT device_id, ts, lat, lon, speed_kmh, load_kg, rated_payload_kg, route_id, shift_state, lookback FROM (
            SELECT t.device_id, {columns}, false AS lookback
            FROM truck_telemetry t JOIN q ON q.device_id = t.device_id
            WHERE t.ts >= q.start AND t.stored_at < %(upto)s
            UNION ALL
            SELECT q.device_id, b.*, true FROM q CROSS JOIN LATERAL (
                SELECT {columns} FROM truck_telemetry t
                WHERE t.device_id = q.device_id AND t.ts < q.start AND t.stored_at < %(upto)s
                  AND t.load_kg IS NOT NULL
                ORDER BY t.ts DESC LIMIT %(lookback)s) b
        ) x ORDER BY device_id, ts"""
    out: dict[str, list[TruckRow]] = defaultdict(list)
    for device_id, *fields in conn.execute(query, {"devices": list(starts), "starts": list(starts.values()),
                                                   "upto": upto, "lookback": lookback}):
        out[device_id].append(TruckRow(*fields))
    return out


def truck_rows_stored(conn: psycopg.Connection, since: datetime, stored_from: datetime | None, upto: datetime
                      ) -> list[tuple[str, TruckRow]]:
    """(truck, row) of every truck's telemetry from ``since`` (device time) stored in [``stored_from``, ``upto``)
    — from any time when None —, in time order per truck: what a telemetry log kept between passes adds."""
    stored = " AND stored_at >= %(stored_from)s" if stored_from is not None else ""
    rows = conn.execute(
        "SELECT device_id, ts, lat, lon, speed_kmh, load_kg, rated_payload_kg, route_id, shift_state, false"
        " FROM truck_telemetry WHERE ts >= %(since)s AND stored_at < %(upto)s" + stored + " ORDER BY device_id, ts",
        {"since": since, "stored_from": stored_from, "upto": upto})
    return [(device_id, TruckRow(*fields)) for device_id, *fields in rows]


@dataclass(frozen=True, slots=True)
class Pickup:
    truck_id: str
    ts: datetime
    point_id: str | None
    category: str | None
    weight_kg: float


def pickups_stored(conn: psycopg.Connection, since: datetime, stored_from: datetime | None, upto: datetime
                   ) -> list[Pickup]:
    """Pickup events from ``since`` (device time, no upper bound) stored in [``stored_from``, ``upto``) — from any
    time when None —, in time order: what a pickup log kept between passes adds (``trucks.PickupLog``)."""
    stored = " AND stored_at >= %(stored_from)s" if stored_from is not None else ""
    rows = conn.execute(
        "SELECT device_id, ts, point_id, category, coalesce(weight_kg, 0) FROM truck_events"
        " WHERE event = 'pickup' AND ts >= %(since)s AND stored_at < %(upto)s" + stored +
        " ORDER BY ts, device_id, seq",
        {"since": since, "stored_from": stored_from, "upto": upto}).fetchall()
    return [Pickup(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Ticket:
    truck_id: str
    ts: datetime
    ticket_id: str
    net_kg: float


def tickets(conn: psycopg.Connection, since: datetime, until: datetime, upto: datetime) -> list[Ticket]:
    """Weighbridge tickets of loads coming in (direction ``in``) in [since, until], in time order."""
    rows = conn.execute(
        "SELECT truck_id, ts, ticket_id, net_kg FROM weighbridge_tickets"
        " WHERE coalesce(direction, 'in') = 'in' AND ts >= %s AND ts <= %s AND stored_at < %s"
        " ORDER BY ts, device_id, seq", (since, until, upto)).fetchall()
    return [Ticket(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Route:
    route_id: str
    truck_id: str | None
    points: tuple[str, ...]
    valid_from: Any  # date
    valid_to: Any  # date | None


def routes(conn: psycopg.Connection, trucks: Sequence[str]) -> list[Route]:
    """The planned routes of these trucks (any validity: the caller picks the day's)."""
    rows = conn.execute("SELECT route_id, truck_id, points, valid_from, valid_to FROM truck_routes"
                        " WHERE truck_id = ANY(%s) ORDER BY route_id", (list(trucks),)).fetchall()
    return [Route(r[0], r[1], tuple(r[2] or ()), r[3], r[4]) for r in rows]


def fill_rows(conn: psycopg.Connection, starts: dict[str, datetime], upto: datetime,
              lookback: int) -> dict[str, list[tuple[datetime, float, bool]]]:
    """Per bin: (ts, fill_level_pct, look-back) from its start in time order, after its last ``lookback`` readings
    before it (a rolling median's window)."""
    if not starts:
        return {}
    query = """
        WITH q AS (SELECT * FROM unnest(%(devices)s::text[], %(starts)s::timestamptz[]) AS q (device_id, start))
        SELECT device_id, ts, v, lookback FROM (
            SELECT t.device_id, t.ts, t.fill_level_pct AS v, false AS lookback
            FROM bin_status t JOIN q ON q.device_id = t.device_id
            WHERE t.ts >= q.start AND t.stored_at < %(upto)s AND t.fill_level_pct IS NOT NULL
            UNION ALL
            SELECT q.device_id, b.ts, b.v, true FROM q CROSS JOIN LATERAL (
                SELECT t.ts, t.fill_level_pct AS v FROM bin_status t
                WHERE t.device_id = q.device_id AND t.ts < q.start AND t.stored_at < %(upto)s
                  AND t.fill_level_pct IS NOT NULL
                ORDER BY t.ts DESC LIMIT %(lookback)s) b
        ) x ORDER BY device_id, ts"""
    out: dict[str, list[tuple[datetime, float, bool]]] = defaultdict(list)
    for device_id, ts, v, lookback_row in conn.execute(
            query, {"devices": list(starts), "starts": list(starts.values()), "upto": upto, "lookback": lookback}):
        out[device_id].append((ts, v, lookback_row))
    return out


def collecting_positions(conn: psycopg.Connection, since: datetime, stored_from: datetime | None, upto: datetime
                         ) -> list[tuple[str, datetime, float, float]]:
    """(truck, ts, lat, lon) of collecting trucks' readings with a position from ``since`` (device time), stored in
    [``stored_from``, ``upto``) — from any time when None."""
    stored = " AND stored_at >= %(stored_from)s" if stored_from is not None else ""
    return [(truck, ts, lat, lon) for truck, ts, lat, lon in conn.execute(
        "SELECT device_id, ts, lat, lon FROM truck_telemetry WHERE ts >= %(since)s AND stored_at < %(upto)s" + stored
        + " AND shift_state = 'collecting' AND lat IS NOT NULL AND lon IS NOT NULL",
        {"since": since, "stored_from": stored_from, "upto": upto})]


def newest_telemetry(conn: psycopg.Connection, since: datetime, stored_from: datetime | None,
                     upto: datetime) -> dict[str, datetime]:
    """Per truck, the device time of its newest telemetry from ``since`` stored in [``stored_from``, ``upto``)."""
    stored = " AND stored_at >= %(stored_from)s" if stored_from is not None else ""
    return dict(conn.execute(
        "SELECT device_id, max(ts) FROM truck_telemetry WHERE ts >= %(since)s AND stored_at < %(upto)s" + stored
        + " GROUP BY device_id", {"since": since, "stored_from": stored_from, "upto": upto}).fetchall())
