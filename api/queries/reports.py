"""The daily operations summary's inputs: per-device aggregates of one day, and the device → district map.

Heavy lifting (counter deltas, sums over millions of rows) stays in SQL; ``api.reports`` joins the
per-device figures to districts with pandas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

# Every site below each district (the district included), tagged with its district.
_DISTRICT_TREE = """
    WITH RECURSIVE tree AS (
        SELECT site_id, site_id AS district_id FROM sites
         WHERE kind = 'district' AND (%(district_id)s::text IS NULL OR site_id = %(district_id)s)
        UNION
        SELECT s.site_id, t.district_id FROM sites s JOIN tree t ON s.parent_id = t.site_id
    ),
    devmap AS (SELECT d.device_id, d.kind, t.district_id FROM devices d JOIN tree t ON d.site_id = t.site_id)"""


async def _fetch(conn: AsyncConnection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    return await cur.fetchall()


async def districts(conn: AsyncConnection, district_id: str | None) -> list[dict[str, Any]]:
    return await _fetch(conn, "SELECT site_id AS district_id, name AS district, timezone FROM sites"
                              " WHERE kind = 'district' AND (%(district_id)s::text IS NULL OR site_id = %(district_id)s)"
                              " ORDER BY site_id", {"district_id": district_id})


async def device_districts(conn: AsyncConnection, district_ids: list[str]) -> list[dict[str, Any]]:
    return await _fetch(conn, _DISTRICT_TREE + " SELECT device_id, kind, district_id FROM devmap"
                              " WHERE district_id = ANY(%(ids)s)", {"district_id": None, "ids": district_ids})


def _window(ids: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    return {"district_id": None, "ids": ids, "start": start, "end": end}


_PER_DEVICE = _DISTRICT_TREE + ", devs AS (SELECT device_id FROM devmap WHERE district_id = ANY(%(ids)s))"


async def sweeper_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per sweeper: readings, distance swept and work hours (counter deltas; a reset or wrap counts as 0,
    not as a negative day), lowest SOC, and whether it swept at all."""
    return await _fetch(conn, _PER_DEVICE + """
        SELECT device_id, count(*)::int AS readings,
               coalesce(sum(greatest(d_km, 0)), 0)::float8 AS swept_km,
               coalesce(sum(greatest(d_h, 0)), 0)::float8 AS work_h,
               min(soc_pct)::float8 AS min_soc_pct,
               bool_or(work_mode LIKE 'sweep%%') AS swept
        FROM (SELECT device_id, soc_pct, work_mode,
                     swept_distance_km - lag(swept_distance_km) OVER w AS d_km,
                     work_hours_h - lag(work_hours_h) OVER w AS d_h
              FROM sweeper_telemetry
              WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s
              WINDOW w AS (PARTITION BY device_id ORDER BY ts)) x
        GROUP BY device_id""", _window(ids, start, end))


async def station_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per station: readings, weighed trucks, net tonnage received, worst boundary odour and noise."""
    return await _fetch(conn, _PER_DEVICE + """
        SELECT device_id, count(*)::int AS readings,
               count(weighbridge_in_t)::int AS trucks,
               coalesce(sum(weighbridge_in_t - weighbridge_out_t), 0)::float8 AS net_t,
               max(h2s_mg_m3)::float8 AS max_h2s, max(nh3_mg_m3)::float8 AS max_nh3,
               max(noise_dba)::float8 AS max_noise
        FROM station_telemetry
        WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s
        GROUP BY device_id""", _window(ids, start, end))


async def deposit_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per bin and category: deposits and weight."""
    return await _fetch(conn, _PER_DEVICE + """
        SELECT device_id, category, count(*)::int AS deposits, sum(weight_kg)::float8 AS weight_kg
        FROM bin_deposits
        WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s
        GROUP BY device_id, category""", _window(ids, start, end))


async def households_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime
                         ) -> list[dict[str, Any]]:
    """Distinct households per district (a household using two bins counts once)."""
    return await _fetch(conn, _DISTRICT_TREE + """
        SELECT m.district_id, count(DISTINCT b.household_id)::int AS households
        FROM bin_deposits b JOIN devmap m USING (device_id)
        WHERE m.district_id = ANY(%(ids)s) AND b.ts >= %(start)s AND b.ts < %(end)s
        GROUP BY m.district_id""", _window(ids, start, end))


async def detections_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime
                         ) -> list[dict[str, Any]]:
    return await _fetch(conn, _PER_DEVICE + """
        SELECT device_id, detection, count(*)::int AS n
        FROM camera_detections
        WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s
        GROUP BY device_id, detection""", _window(ids, start, end))


async def other_readings_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime
                             ) -> list[dict[str, Any]]:
    """Devices that reported through the tables the summary does not otherwise aggregate."""
    return await _fetch(conn, _PER_DEVICE + """
        SELECT device_id, count(*)::int AS readings FROM (
            SELECT device_id FROM bin_status
             WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s
            UNION ALL
            SELECT device_id FROM cems_readings
             WHERE device_id IN (SELECT device_id FROM devs) AND ts >= %(start)s AND ts < %(end)s) r
        GROUP BY device_id""", _window(ids, start, end))


async def alerts_day(conn: AsyncConnection, ids: list[str], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Alerts per district: opened during the day (by severity, acknowledged) and still open at its end.
    An alert belongs to its site's district, or its device's when it names no site."""
    return await _fetch(conn, _DISTRICT_TREE + """
        SELECT coalesce(t.district_id, m.district_id) AS district_id,
               count(*) FILTER (WHERE a.started_at >= %(start)s)::int AS opened,
               count(*) FILTER (WHERE a.started_at >= %(start)s AND a.severity = 'critical')::int AS critical,
               count(*) FILTER (WHERE a.started_at >= %(start)s AND a.acknowledged_at IS NOT NULL)::int AS acked,
               count(*) FILTER (WHERE a.resolved_at IS NULL OR a.resolved_at >= %(end)s)::int AS open_at_end
        FROM alerts a
        LEFT JOIN tree t ON t.site_id = a.site_id
        LEFT JOIN devmap m ON m.device_id = a.device_id AND a.site_id IS NULL
        WHERE a.started_at < %(end)s AND (a.resolved_at IS NULL OR a.resolved_at >= %(start)s)
          AND coalesce(t.district_id, m.district_id) = ANY(%(ids)s)
        GROUP BY 1""", _window(ids, start, end))
