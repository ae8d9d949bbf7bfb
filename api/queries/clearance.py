"""The clearance report and the street sanitation index for the API: the processors' code (the same the command
line prints), run on the request's pooled connection in a worker thread (``api.blocking``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection

from sanitel.api.blocking import run_blocking
from sanitel.processors import clearance, sanitation_index


async def site_exists(conn: AsyncConnection, site_id: str) -> bool:
    return await run_blocking(conn, clearance.site_info, site_id) is not None


async def clearance_report(conn: AsyncConnection, site_id: str, day: date, now: datetime) -> dict[str, Any] | None:
    """The report, or None when the site does not exist."""
    return await run_blocking(conn, _clearance_report, site_id, day, now)


def _clearance_report(conn: psycopg.Connection, site_id: str, day: date, now: datetime) -> dict[str, Any] | None:
    try:
        return clearance.build_report(conn, site_id, day, now)
    except LookupError:
        return None


async def sanitation_index_report(conn: AsyncConnection, site_id: str | None, monday: date,
                                  now: datetime) -> dict[str, Any]:
    return await run_blocking(conn, sanitation_index.build_index, site_id, monday, now)
