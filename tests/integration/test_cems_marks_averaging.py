"""Operating-state marks in the CEMS averages against a real TimescaleDB (issue 13): readings and stored marks
are put in with SQL (as the collector and the API would), ``recompute`` / ``recompute_since`` average them.
Every expected number is computed by hand in the comments; instants are fixed (``now=`` is passed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.db import one_row
from sanitel.processors.cems_averages import local_day_bounds, recompute, recompute_since

TZ = "Asia/Shanghai"
DAY, NEXT = date(2024, 5, 1), date(2024, 5, 2)
NOW = datetime(2024, 6, 1, tzinfo=UTC)
PLANT, LINE, DEVICE = "h1p", "h1p-l1", "H1P-L1"
COLUMNS = ("nox_mg_m3", "nox_flag", "so2_mg_m3", "so2_flag", "o2_pct", "o2_flag", "extra")


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        c.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'plant', 'Plant')", (PLANT,))
        c.execute("INSERT INTO sites (site_id, kind, name, parent_id) VALUES (%s, 'line', 'Line 1', %s)", (LINE, PLANT))
        c.execute("INSERT INTO devices (device_id, kind, site_id, metadata) VALUES (%s, 'cems', %s, %s)",
                  (DEVICE, LINE, Jsonb({"analyser_range_mg_m3": {"so2": 100}})))
        yield c


def insert_day(conn: psycopg.Connection, day: date, values: Callable[[datetime], dict[str, Any]]) -> None:
    """One minute row (CN 2051-like) a minute of the local day."""
    start, _ = local_day_bounds(day, TZ)
    with conn.cursor().copy(f"COPY cems_readings (device_id, ts, data_kind, received_at, {', '.join(COLUMNS)})"
                            " FROM STDIN") as copy:
        for i in range(1440):
            t = start + timedelta(minutes=i)
            v = {"o2_pct": 11.0, "o2_flag": "N", **values(t)}
            copy.write_row((DEVICE, t, "minute", NOW, *[Jsonb(v[c]) if c == "extra" and v.get(c) else v.get(c)
                                                         for c in COLUMNS]))


def insert_mark(conn: psycopg.Connection, mark: str, start: datetime, end: datetime, created_at: datetime | None = None,
                supersedes: int | None = None) -> int:
    mark_id = one_row(conn.execute(
        "INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source, created_by,"
        " created_at, supersedes) VALUES (%s, %s, %s, %s, %s, %s, 'test', 'api', 'tester', coalesce(%s, now()), %s)"
        " RETURNING mark_id", (DEVICE, PLANT, LINE, mark, start, end, created_at, supersedes)))[0]
    if supersedes is not None:
        conn.execute("UPDATE cems_marks SET superseded_by = %s WHERE mark_id = %s", (mark_id, supersedes))
    return int(mark_id)


def average(conn: psycopg.Connection, pollutant: str, period: str, start: datetime, standard: str | None = None
            ) -> dict[str, Any]:
    cur = conn.execute(
        "SELECT status, avg_zs_mg_m3, n_valid, n_discarded, discarded FROM cems_averages WHERE device_id = %s"
        " AND pollutant = %s AND period = %s AND period_start = %s AND (%s::text IS NULL OR standard = %s)",
        (DEVICE, pollutant, period, start, standard, standard))
    [found] = cur.fetchall()
    return dict(zip(("status", "avg", "n_valid", "n_discarded", "discarded"), found, strict=True))


def start_up_day(t: datetime, day: date = DAY) -> dict[str, Any]:
    """NOx 100 at 11 % O2, 300 during a start-up 06:00–08:00; SO2 30."""
    return {"nox_mg_m3": 300.0 if local(day, 6) <= t < local(day, 8) else 100.0, "nox_flag": "N",
            "so2_mg_m3": 30.0, "so2_flag": "N"}


def test_stored_and_dau_marks_exclude_periods_and_the_device_range_applies(conn: psycopg.Connection) -> None:
    def values(t: datetime) -> dict[str, Any]:
        v = start_up_day(t)
        if local(DAY, 20) <= t < local(DAY, 21):  # the data unit says the line is shutting down
            v |= {"nox_mg_m3": 300.0, "extra": {"operating_state": "shut_down"}}
        if local(DAY, 10) <= t < local(DAY, 11):  # SO2 over the analyser's range (100 for this device)
            v |= {"so2_mg_m3": 80.0, "so2_flag": "T"}
        return v
    insert_day(conn, DAY, values)
    insert_mark(conn, "start_up", local(DAY, 6), local(DAY, 8))
    day_start, day_end = local_day_bounds(DAY, TZ)
    assert recompute(conn, DEVICE, day_start, day_end, now=NOW) > 0

    for hh, mm in ((6, 0), (6, 30), (7, 0), (7, 30)):
        a = average(conn, "nox", "30min", local(DAY, hh, mm))
        assert (a["status"], a["discarded"]) == ("marked", {"marked_start_up": 30})
    a = average(conn, "nox", "30min", local(DAY, 20, 30))  # the DAU's mark, from extra.operating_state
    assert (a["status"], a["discarded"]) == ("marked", {"marked_shut_down": 30})
    # EU day: 48 − 6 marked half-hours = 42 valid, all 100; none discarded for the measuring system
    eu = average(conn, "nox", "1d", day_start, "eu")
    assert (eu["status"], eu["avg"], eu["n_valid"], eu["n_discarded"]) == ("valid", 100.0, 42, 0)
    assert eu["discarded"]["periods"] == {"marked": 6} and eu["discarded"]["cms_discarded"] == 0
    # SO2 10:00–11:00 flagged T at 80 with the device's range 100 → counted as 100, valid, not a discard
    h = average(conn, "so2", "1h", local(DAY, 10))
    assert (h["status"], h["avg"], h["n_discarded"], h["discarded"]) == ("valid", 100.0, 0, {"over_range": 60})
    # GB SO2 day: hours 06, 07 and 20 marked → 21 valid hours: (20 × 30 + 100) / 21 = 33.333
    gb = average(conn, "so2", "1d", day_start, "gb")
    assert (gb["status"], gb["n_valid"], gb["avg"]) == ("valid", 21, pytest.approx(33.333, abs=1e-3))


def test_a_mark_stored_after_a_pass_is_averaged_by_the_next_pass_and_a_correction_moves_it(
        conn: psycopg.Connection) -> None:
    insert_day(conn, DAY, start_up_day)
    insert_day(conn, NEXT, lambda t: start_up_day(t, NEXT))
    (day_start, _), (next_start, _) = local_day_bounds(DAY, TZ), local_day_bounds(NEXT, TZ)
    unmarked = pytest.approx((44 * 100 + 4 * 300) / 48)  # = 116.667: the start-up counts
    w1 = recompute_since(conn, datetime(2000, 1, 1, tzinfo=UTC), now=NOW)
    assert average(conn, "nox", "1d", next_start, "eu")["avg"] == unmarked

    # the plant marks the start-up, on the wrong day (NEXT), after the pass: the next pass averages that day again
    # although no reading changed (overlap 0: only the mark is new since w1)
    first = insert_mark(conn, "start_up", local(NEXT, 6), local(NEXT, 8), created_at=w1 + timedelta(seconds=1))
    w2 = recompute_since(conn, w1, overlap=timedelta(0), now=NOW)
    assert w2 == w1 + timedelta(seconds=1)  # the mark's created_at moves the watermark
    assert average(conn, "nox", "30min", local(NEXT, 6))["status"] == "marked"
    assert average(conn, "nox", "1d", next_start, "eu")["avg"] == 100.0  # 44 half-hours of 100
    assert average(conn, "nox", "1d", day_start, "eu")["avg"] == unmarked

    # the correction moves it to DAY: DAY is recomputed for the new span, NEXT for the superseded one
    insert_mark(conn, "start_up", local(DAY, 6), local(DAY, 8), created_at=w2 + timedelta(seconds=1), supersedes=first)
    recompute_since(conn, w2, overlap=timedelta(0), now=NOW)
    assert average(conn, "nox", "1d", day_start, "eu")["avg"] == 100.0
    assert average(conn, "nox", "30min", local(DAY, 6))["status"] == "marked"
    assert average(conn, "nox", "1d", next_start, "eu")["avg"] == unmarked
    assert average(conn, "nox", "30min", local(NEXT, 6))["status"] == "valid"
