"""Issue 15, items 3 and 5, against a real TimescaleDB: the daily clearance report (points on time / late / missed,
route adherence, lifted against weighed tonnage), the rows the scheduled processor keeps in ``clearance_days``, and
the weekly street sanitation index with its ranking and week-on-week change — through the processors' code, the
command line and the API. Rows are inserted by SQL at fixed instants; every "now" is given (time-machine for the
API and the command line, which read the clock)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import time_machine
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.processors import clearance, sanitation_index
from sanitel.processors.maintenance import run_pass
from sanitel.processors.sanitation_index import hours_score, weighted_index
from sanitel.settings import load_settings
from tests.integration.security.as_roles import enable_logins, role_url
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)  # a Friday of ISO week 2026-W47 (Mon 16 … Sun 22 November)
AFTER_DAY = datetime(2026, 11, 21, 2, 0, tzinfo=TZ)
DURING_DAY = datetime(2026, 11, 20, 20, 0, tzinfo=TZ)
AFTER_WEEK = datetime(2026, 11, 23, 2, 0, tzinfo=TZ)


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), TZ)


REGISTRY = """
INSERT INTO sites (site_id, kind, name, parent_id, timezone, params) VALUES
  ('d1', 'district', 'District 1', NULL, 'Asia/Shanghai', '{}'),
  ('e1', 'estate', 'Estate 1', 'd1', 'Asia/Shanghai', '{}'),
  ('e2', 'urban_village', 'Village 2', 'd1', 'Asia/Shanghai', '{}'),
  ('p1', 'sorting_point', 'Point 1', 'e1', 'Asia/Shanghai',
   '{"clearance": {"kitchen": {"by": "10:00", "every": "daily"}, "other": {"by": "18:00", "every": "daily"}}}'),
  ('p2', 'sorting_point', 'Point 2', 'e1', 'Asia/Shanghai', '{"clearance": {"kitchen": {"by": "10:00"}}}'),
  ('p3', 'sorting_point', 'Point 3', 'e2', 'Asia/Shanghai', '{"clearance": {"kitchen": {"by": "10:00"}}}'),
  ('p4', 'sorting_point', 'Point 4', 'e2', 'Asia/Shanghai', '{"clearance": {"kitchen": {"by": "25:00"}}}'),
  ('p5', 'sorting_point', 'Point 5', 'e2', 'Asia/Shanghai', '{}'),
  ('ts1', 'transfer_station', 'Station 1', 'd1', 'Asia/Shanghai', '{}'),
  ('depot1', 'depot', 'Depot 1', 'd1', 'Asia/Shanghai', '{}');
INSERT INTO devices (device_id, kind, site_id) VALUES
  ('T1', 'truck', 'depot1'), ('WB1', 'transfer_station', 'ts1'), ('BIN1', 'bin', 'p1'), ('BIN2', 'bin', 'p2'),
  ('SW1', 'sweeper', 'e2');
INSERT INTO truck_routes (route_id, truck_id, shift_start, shift_end, points, tip_site_id, valid_from)
VALUES ('R1', 'T1', '06:00', '14:00', ARRAY['p1', 'p2', 'p3'], 'ts1', '2026-11-01');
"""


def pickup(conn: psycopg.Connection, at: datetime, point: str, category: str | None, kg: float, seq: int) -> None:
    conn.execute("INSERT INTO truck_events (device_id, ts, seq, received_at, event, weight_kg, point_id, category)"
                 " VALUES ('T1', %s, %s, %s, 'pickup', %s, %s, %s)", (at, seq, at, kg, point, category))


def fleet_report(conn: psycopg.Connection, at: datetime) -> None:
    """T1 reports from its depot: the fleet's telematics are up that day (its pickups, or their absence, count)."""
    conn.execute("INSERT INTO truck_telemetry (device_id, ts, received_at, shift_state) VALUES ('T1', %s, %s, 'depot')",
                 (at, at))


def statuses_of(report: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(p["point_id"], p["category"]): p["status"] for p in report["points"]}


def seed_day(conn: psycopg.Connection) -> None:
    """DAY: p1 kitchen on time, p3 kitchen on time (visited before p2), p1 other late, p2 never; one ticket."""
    conn.execute(REGISTRY)
    pickup(conn, local(DAY, 8), "p1", "kitchen", 500, 1)
    pickup(conn, local(DAY, 8, 30), "p3", "kitchen", 300, 2)
    pickup(conn, local(DAY, 19), "p1", "other", 200, 3)
    ticket = local(DAY, 20, 30)
    for seq, (category, net) in enumerate((("kitchen", 700.0), ("other", 250.0))):
        conn.execute("INSERT INTO weighbridge_tickets (device_id, ts, seq, received_at, ticket_id, truck_id, gross_kg,"
                     " tare_kg, net_kg, category) VALUES ('WB1', %s, %s, %s, %s, 'T1', %s, 10000, %s, %s)",
                     (ticket, seq, ticket, f"TK-{seq}", 10000 + net, net, category))


@pytest.fixture
def conn(fresh_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db, autocommit=True) as c:
        seed_day(c)
        yield c


# --- the daily report ----------------------------------------------------------------------------------------

def test_the_daily_report_after_the_day(conn: psycopg.Connection) -> None:
    report = clearance.build_report(conn, "d1", DAY, AFTER_DAY)
    assert report["day_over"] is True
    statuses = {(p["point_id"], p["category"]): p["status"] for p in report["points"]}
    assert statuses == {("p1", "kitchen"): "on_time", ("p1", "other"): "late", ("p2", "kitchen"): "missed",
                        ("p3", "kitchen"): "on_time"}
    assert {k: report["totals"][k] for k in ("scheduled", "on_time", "late", "missed", "no_data", "overdue",
                                             "pending")} == {
        "scheduled": 4, "on_time": 2, "late": 1, "missed": 1, "no_data": 0, "overdue": 0, "pending": 0}
    assert report["totals"]["on_time_pct"] == 50.0
    streets = {s["street_id"]: (s["on_time"], s["late"], s["missed"]) for s in report["streets"]}
    assert streets == {"e1": (1, 1, 1), "e2": (1, 0, 0)}
    # a point whose schedule does not validate is reported with the fix, not dropped silently nor fatal
    (bad,) = report["invalid_schedules"]
    assert bad["point_id"] == "p4" and "params.clearance.kitchen.by" in bad["error"] and "fix:" in bad["error"]
    # route R1 plans p1, p2, p3; T1 visited p1 then p3: two in plan order, p2 skipped
    (route,) = report["routes"]
    assert route | {} == {"route_id": "R1", "truck_id": "T1", "planned": 3, "visited": 2, "in_plan_order": 2,
                          "adherence_pct": 66.7, "skipped": ["p2"]}
    assert report["tonnage"] == [
        {"category": "kitchen", "collected_kg": 800.0, "received_kg": 700.0, "difference_kg": -100.0},
        {"category": "other", "collected_kg": 200.0, "received_kg": 250.0, "difference_kg": 50.0}]


def test_a_point_is_overdue_not_missed_while_its_day_runs(conn: psycopg.Connection) -> None:
    """Issue 18's rule: no verdict of "missed" before the local day has ended."""
    report = clearance.build_report(conn, "d1", DAY, DURING_DAY)
    statuses = {(p["point_id"], p["category"]): p["status"] for p in report["points"]}
    assert statuses[("p2", "kitchen")] == "overdue"
    assert statuses[("p1", "other")] == "late"  # picked up at 19:00, after its 18:00 deadline
    before_the_late_pickup = clearance.build_report(conn, "d1", DAY, local(DAY, 18, 30))
    assert {(p["point_id"], p["category"]): p["status"] for p in before_the_late_pickup["points"]}[
        ("p1", "other")] == "overdue"
    assert report["day_over"] is False and report["totals"]["missed"] == 0


def test_a_day_no_truck_reported_is_no_data_and_a_day_with_telemetry_but_no_pickup_is_missed(
        conn: psycopg.Connection) -> None:
    """The day before DAY: no pickup anywhere. Without any truck data that day, the fleet's telematics were down (or
    not connected yet): no verdict, counted apart, not in the on-time share — as the alert point_not_cleared gives
    none. Once telemetry of that day is stored, the same day is missed everywhere."""
    before = DAY - timedelta(days=1)
    report = clearance.build_report(conn, "d1", before, AFTER_DAY)
    assert set(statuses_of(report).values()) == {"no_data"}
    assert {k: report["totals"][k] for k in ("scheduled", "no_data", "missed", "on_time", "late")} == {
        "scheduled": 4, "no_data": 4, "missed": 0, "on_time": 0, "late": 0}
    assert report["totals"]["on_time_pct"] is None  # no verdict at all: no share
    assert {s["street_id"]: s["no_data"] for s in report["streets"]} == {"e1": 3, "e2": 1}
    (header, *rows) = list(csv.reader(io.StringIO(clearance.report_csv(report, "streets"))))
    assert "no_data" in header and [r[header.index("no_data")] for r in rows] == ["3", "1"]
    assert {r["status"] for r in csv.DictReader(io.StringIO(clearance.report_csv(report, "points")))} == {"no_data"}

    fleet_report(conn, local(before, 11))  # connected at 11:00, after the 10:00 kitchen deadlines
    report = clearance.build_report(conn, "d1", before, AFTER_DAY)
    assert statuses_of(report) == {("p1", "kitchen"): "no_data", ("p1", "other"): "missed",
                                   ("p2", "kitchen"): "no_data", ("p3", "kitchen"): "no_data"}
    assert report["totals"]["on_time_pct"] == 0.0

    fleet_report(conn, local(before, 6))  # a report of 06:00 arrives late: now every deadline is judged
    report = clearance.build_report(conn, "d1", before, AFTER_DAY)
    assert set(statuses_of(report).values()) == {"missed"}
    assert (report["totals"]["missed"], report["totals"]["no_data"]) == (4, 0)


def test_a_truck_event_is_fleet_data_even_without_telemetry(conn: psycopg.Connection) -> None:
    """DAY has no telemetry at all, only pickups (seed_day): a pickup is truck data, so p2's kitchen is missed,
    not no_data — one at another point, by another category, is enough."""
    assert conn.execute("SELECT count(*) FROM truck_telemetry").fetchone() == (0,)
    assert statuses_of(clearance.build_report(conn, "e1", DAY, AFTER_DAY))[("p2", "kitchen")] == "missed"
    conn.execute("DELETE FROM truck_events WHERE ts > %s", (local(DAY, 10),))  # only the 08:00 and 08:30 pickups
    conn.execute("DELETE FROM truck_events WHERE point_id = 'p1'")  # only p3's, in the other street
    assert statuses_of(clearance.build_report(conn, "e1", DAY, AFTER_DAY)) == {
        ("p1", "kitchen"): "missed", ("p1", "other"): "missed", ("p2", "kitchen"): "missed"}


def test_a_street_report_holds_only_its_points(conn: psycopg.Connection) -> None:
    report = clearance.build_report(conn, "e2", DAY, AFTER_DAY)
    assert [(p["point_id"], p["status"]) for p in report["points"]] == [("p3", "on_time")]
    assert report["tonnage"] == [{"category": "kitchen", "collected_kg": 300.0, "received_kg": 0.0,
                                  "difference_kg": -300.0}]
    with pytest.raises(LookupError):
        clearance.build_report(conn, "nowhere", DAY, AFTER_DAY)


def test_the_scheduled_processor_keeps_yesterday_and_today(conn: psycopg.Connection, fresh_db: str) -> None:
    assert run_pass(conn, load_settings(database_url=fresh_db), now=DURING_DAY, retention=False).ran
    stored = dict(((p, c, d), s) for p, c, d, s in conn.execute(
        "SELECT point_id, category, day, status FROM clearance_days").fetchall())
    assert stored[("p2", "kitchen", DAY)] == "overdue"
    # no truck sent anything the day before: stored as no_data (migration 0085 allows it), as the report says
    assert stored[("p2", "kitchen", DAY - timedelta(days=1))] == "no_data"
    # the next pass after midnight turns the day's verdicts final, and starts the new day as pending
    assert run_pass(conn, load_settings(database_url=fresh_db), now=AFTER_DAY, retention=False).ran
    rows = {(p, c, d): (s, n, w, street) for p, c, d, s, n, w, street in conn.execute(
        "SELECT point_id, category, day, status, pickups, weight_kg, street_id FROM clearance_days").fetchall()}
    assert rows[("p2", "kitchen", DAY)][0] == "missed"
    assert rows[("p1", "other", DAY)] == ("late", 1, 200.0, "e1")
    assert rows[("p1", "kitchen", DAY)] == ("on_time", 1, 500.0, "e1")
    assert rows[("p3", "kitchen", DAY + timedelta(days=1))][0] == "pending"
    assert ("p4", "kitchen", DAY) not in rows  # its schedule does not validate: logged, skipped
    # a pass that changes no verdict writes nothing; a late pickup rewrites just its row
    assert clearance.derive_recent(conn, AFTER_DAY + timedelta(minutes=1)) == 0
    pickup(conn, local(DAY + timedelta(days=1), 1), "p3", "kitchen", 40, 20)
    assert clearance.derive_recent(conn, AFTER_DAY + timedelta(minutes=2)) == 1
    assert conn.execute("SELECT status, judged_at FROM clearance_days WHERE point_id = 'p3' AND day = %s",
                        (DAY + timedelta(days=1),)).fetchone() == ("on_time", AFTER_DAY + timedelta(minutes=2))


# --- the weekly index ----------------------------------------------------------------------------------------

def seed_week(conn: psycopg.Connection) -> None:
    """W47 beside DAY's pickups: BIN1 (e1) full for about 3 h on the 18th, BIN2 (e1) never; odour alerts at WB1 on
    the 19th (6 h, one overlapping, one never fired); SW1 (e2) sweeping 4 h on the 17th; T1 reporting from the
    depot at 06:00 on the 16th to the 19th (nothing on the 21st and 22nd); WB1 reporting at noon every day of W47.
    W46: one on-time pickup at p3, nothing from the station."""
    for day in range(16, 20):
        fleet_report(conn, local(date(2026, 11, day), 6))
    for day in range(16, 23):
        conn.execute("INSERT INTO station_telemetry (device_id, ts, received_at, h2s_mg_m3) VALUES ('WB1', %s, %s, 0.01)",
                     (local(date(2026, 11, day), 12), local(date(2026, 11, day), 12)))
    start = local(date(2026, 11, 18), 9)
    fills = [40.0] * 5 + [95.0] * 18 + [30.0] * 5
    for i, fill in enumerate(fills):
        ts = start + timedelta(minutes=10 * i)
        conn.execute("INSERT INTO bin_status (device_id, ts, seq, received_at, point_id, fill_level_pct) "
                     "VALUES ('BIN1', %s, %s, %s, 'p1', %s), ('BIN2', %s, %s, %s, NULL, 20)",
                     (ts, i, ts, fill, ts, i, ts))
    for n, (rule, a, b, fired) in enumerate((("station_h2s", 10, 16, True), ("station_nh3", 12, 14, True),
                                             ("station_odour", 17, 23, False))):
        conn.execute("INSERT INTO alerts (rule_id, fingerprint, device_id, site_id, kind, severity, state, started_at,"
                     " fired_at, resolved_at) VALUES (%s, %s, 'WB1', 'ts1', 'transfer_station', 'major', 'resolved',"
                     " %s, %s, %s)", (rule, f"fp{n}", local(date(2026, 11, 19), a),
                                      local(date(2026, 11, 19), a) if fired else None, local(date(2026, 11, 19), b)))
    sweep = local(date(2026, 11, 17), 6)
    conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, work_mode)"
                 " SELECT 'SW1', %s + make_interval(mins => i), i, %s, 'sweep' FROM generate_series(0, 240) i",
                 (sweep, sweep))
    pickup(conn, local(date(2026, 11, 12), 9), "p3", "kitchen", 100, 10)


def test_the_weekly_index_components_ranking_and_change(conn: psycopg.Connection) -> None:
    seed_week(conn)
    report = sanitation_index.build_index(conn, "d1", date(2026, 11, 16), AFTER_WEEK)
    assert report["week"] == "2026-W47"
    by_street = {r["street_id"]: r for r in report["streets"]}
    e1, e2 = by_street["e1"], by_street["e2"]
    # clearance: e1 has 3 schedules a day, e2 1 (p4 invalid, p5 none); judged on the 16th-20th (the fleet reported),
    # no_data on the 21st and 22nd (it did not): in neither count. One on time in each street (on DAY)
    assert (e1["inputs"]["clearance_finished"], e1["inputs"]["clearance_no_data"]) == (15, 6)
    assert e1["components"]["clearance"] == round(100 / 15, 1)
    assert (e2["inputs"]["clearance_finished"], e2["inputs"]["clearance_no_data"]) == (5, 2)
    assert e2["components"]["clearance"] == round(100 / 5, 1)
    # overflow: BIN1 about 3 h full (the median of 5 lags a little at both ends), BIN2 (sited at p2, its readings
    # naming no point) never: the mean over the street's 2 bins; e2 has no bins
    assert 2.5 <= e1["inputs"]["overflow_bin_hours"] <= 3.2 and e1["inputs"]["bins"] == 2
    assert e1["components"]["overflow"] == hours_score(e1["inputs"]["overflow_bin_hours"] / 2)
    assert e2["components"]["overflow"] is None
    # odour: 10-16 and 12-14 overlap (6 h once); the alert that never fired does not count. Noise: none, 100
    for street in (e1, e2):
        assert street["inputs"]["odour_hours"] == 6.0 and street["components"]["odour"] == hours_score(6.0)
        assert street["components"]["noise"] == 100.0
    # sweeping: 4 h of the 56 h planned for one sweeper (8 h a day); e1 has no sweepers
    assert e2["inputs"]["swept_hours"] == 4.0 and e2["inputs"]["planned_sweep_hours"] == 56.0
    assert e2["components"]["sweeping"] == round(100 * 4 / 56, 1)
    assert e1["components"]["sweeping"] is None
    for street in (e1, e2):
        assert street["index"] == weighted_index(street["components"])
    # ranking and week-on-week change (W46: only p3's one on-time pickup; no overflow, alerts or sweeping)
    assert [r["street_id"] for r in report["streets"]] == sorted(by_street, key=lambda s: -by_street[s]["index"])
    assert [r["rank"] for r in report["streets"]] == [1, 2]
    for street in (e1, e2):
        assert street["previous_index"] is not None
        assert street["change"] == round(street["index"] - street["previous_index"], 1)
    # W46: no station sent anything, so no alert then says nothing about odour or noise: no component, not 100
    before = {r["street_id"]: r for r in sanitation_index.build_index(conn, "d1", date(2026, 11, 9), AFTER_WEEK)["streets"]}
    for street in before.values():
        assert (street["components"]["odour"], street["components"]["noise"]) == (None, None)


# --- the command line and the API ----------------------------------------------------------------------------

def test_the_command_line(conn: psycopg.Connection, fresh_db: str, monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sanitel.cli import main

    seed_week(conn)
    monkeypatch.setenv("SANITEL_DATABASE_URL", fresh_db)
    monkeypatch.setenv("SANITEL_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    with time_machine.travel(AFTER_WEEK, tick=False):
        assert main(["report", "clearance", "--district", "d1", "--day", str(DAY)]) == 0
        totals = json.loads(capsys.readouterr().out)["totals"]
        assert (totals["missed"], totals["no_data"]) == (1, 0)
        assert main(["report", "clearance", "--district", "d1", "--day", str(DAY), "--format", "csv",
                     "--section", "routes"]) == 0
        (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
        assert (row["route_id"], row["adherence_pct"], row["skipped"]) == ("R1", "66.7", "p2")
        assert main(["report", "sanitation-index", "--week", "2026-W47", "--format", "csv"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [r["rank"] for r in rows] == ["1", "2"] and {r["street_id"] for r in rows} == {"e1", "e2"}
        assert main(["report", "clearance", "--district", "nowhere", "--day", str(DAY)]) == 2
        assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "sanitation-index", "--week", "2026-47"])
    assert "YYYY-Www" in capsys.readouterr().err


def test_the_api(conn: psycopg.Connection, fresh_db: str, tmp_path: Path) -> None:
    seed_week(conn)
    viewer = auth(mint_key(fresh_db, "viewer"))
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client, time_machine.travel(AFTER_WEEK, tick=False):
        assert client.get("/reports/clearance", params={"site_id": "d1", "day": str(DAY)}).status_code == 401
        r = client.get("/reports/clearance", params={"site_id": "d1", "day": str(DAY)}, headers=viewer)
        assert r.status_code == 200, r.text
        assert r.json()["totals"]["on_time"] == 2
        # the 21st: no truck sent anything (seed_week): no verdict, in the JSON totals too
        r = client.get("/reports/clearance", params={"site_id": "d1", "day": str(DAY + timedelta(days=1))},
                       headers=viewer)
        assert (r.json()["totals"]["no_data"], r.json()["totals"]["missed"]) == (4, 0)
        r = client.get("/reports/clearance", params={"site_id": "d1", "day": str(DAY), "section": "streets"},
                       headers=viewer | {"Accept": "text/csv"})
        assert r.headers["content-type"].startswith("text/csv")
        assert [row["street_id"] for row in csv.DictReader(io.StringIO(r.text))] == ["e1", "e2"]
        assert_error(client.get("/reports/clearance", params={"site_id": "nowhere", "day": str(DAY)},
                                headers=viewer), 404, "not_found")
        r = client.get("/reports/sanitation-index", params={"week": "2026-W47", "site_id": "d1"}, headers=viewer)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert [s["rank"] for s in body["streets"]] == [1, 2] and body["weights"]["clearance"] == 0.4
        r = client.get("/reports/sanitation-index", params={"week": "2026-W47", "format": "csv"}, headers=viewer)
        assert r.text.splitlines()[0].startswith("week,rank,street_id")
        assert_error(client.get("/reports/sanitation-index", params={"week": "2026-47"}, headers=viewer), 422,
                     "validation_error", "query.week")
        assert_error(client.get("/reports/sanitation-index", params={"week": "2026-W47", "site_id": "nowhere"},
                                headers=viewer), 404, "not_found")


def test_utc_instants_are_judged_in_the_points_zone(conn: psycopg.Connection) -> None:
    """A pickup at 01:30 UTC is 09:30 in Shanghai: on time for a 10:00 deadline there, whatever zone "now" has."""
    conn.execute("DELETE FROM truck_events")
    pickup(conn, datetime(2026, 11, 20, 1, 30, tzinfo=UTC), "p2", "kitchen", 50, 1)
    report = clearance.build_report(conn, "e1", DAY, AFTER_DAY.astimezone(UTC))
    assert {(p["point_id"], p["category"]): p["status"] for p in report["points"]}[("p2", "kitchen")] == "on_time"


def test_the_component_roles_may_do_what_their_code_does(conn: psycopg.Connection, fresh_db: str) -> None:
    """0070's rule for 0084: the scheduled processor writes clearance_days as its role, the API reads the reports as
    its own (a missing grant is "permission denied" there, while the suite's superuser would not notice)."""
    seed_week(conn)
    enable_logins(fresh_db)
    with psycopg.connect(role_url(fresh_db, "processor"), autocommit=True) as processor:
        assert run_pass(processor, load_settings(database_url=fresh_db), now=AFTER_DAY, retention=False).ran
    with psycopg.connect(role_url(fresh_db, "api"), autocommit=True) as api:
        assert api.execute("SELECT count(*) FROM clearance_days WHERE status = 'missed'").fetchone() == (1,)
        assert clearance.build_report(api, "d1", DAY, AFTER_DAY)["totals"]["scheduled"] == 4
        assert len(sanitation_index.build_index(api, "d1", date(2026, 11, 16), AFTER_WEEK)["streets"]) == 2
