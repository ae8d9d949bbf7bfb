"""Sorting points' day: RFID deposits (households, count, weight by category) and AI-camera detections per point.

Both read by the rows' own ``point_id`` and device time: deposits through ``bin_deposits_point_ts`` (migration 0032),
detections — a few a day per camera — through the hypertable's ``ts`` index over the day (tests/integration/
test_api_sorting_points.py checks both plans with EXPLAIN).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

DEPOSITS = """
        WITH d AS (SELECT point_id, household_id, category, weight_kg FROM bin_deposits
                    WHERE point_id = ANY(%(points)s) AND ts >= %(start)s AND ts < %(end)s),
             per_category AS (SELECT point_id, category, sum(weight_kg)::float8 AS kg FROM d GROUP BY 1, 2)
        SELECT p.point_id, p.households, p.deposits,
               (SELECT jsonb_object_agg(c.category, round(c.kg::numeric, 3)) FROM per_category c
                 WHERE c.point_id = p.point_id) AS weight_kg_by_category
        FROM (SELECT point_id, count(DISTINCT household_id)::int AS households, count(*)::int AS deposits
                FROM d GROUP BY point_id) p"""
DETECTIONS = """
        SELECT point_id, detection, count(*)::int AS n FROM camera_detections
         WHERE point_id = ANY(%(points)s) AND ts >= %(start)s AND ts < %(end)s GROUP BY 1, 2"""


async def deposits_by_point(conn: AsyncConnection, points: list[str], start: datetime, end: datetime
                            ) -> list[dict[str, Any]]:
    """Per point: distinct households, deposits, and weight per category (a JSON object) in [start, end)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(DEPOSITS, {"points": points, "start": start, "end": end})
    return await cur.fetchall()


async def detections_by_point(conn: AsyncConnection, points: list[str], start: datetime, end: datetime
                              ) -> list[dict[str, Any]]:
    """Per point and detection type: how many in [start, end)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(DETECTIONS, {"points": points, "start": start, "end": end})
    return await cur.fetchall()
