"""Two simulated days of two furnace lines through the real chain — readings stored in TimescaleDB, the scheduled
processor's pass (averages, marks, daily judgement), the shipped CEMS rule pack — compared with the simulator's
ground truth (issue 13, Must show 6): every expected alert raised, no alert the ground truth does not explain,
and the regulatory verdicts it states.

Line y1 (JSON data unit, one reading a minute):
- day 1: six furnace-temperature dips of 3–4 minutes, each inside one 5-minute bucket (Order No. 10 violation);
  an O2-analyser calibration while the pollutant analysers keep sending normalised values; SO2 over the analyser's
  range (flag T) for 20 minutes;
- day 2: a 2-hour data-unit outage (04:00–06:00, after the 03:00 calibration) re-sent afterwards as minute
  data; five dips (within the Order's allowance); a
  6-hour outage the data unit marks shut_down / shut / start_up.
Line y2 (HJ 212 data unit): the same outage on day 2, which HJ 212 cannot mark — the plant marks it through the
marks API (processors/cems_marks.add_mark, what `POST /plants/{id}/lines/{line}/marks` stores).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.alerts.rules import RuleSet, default_rule_files, load_files
from sanitel.processors.cems_averages import run_scheduled
from sanitel.processors.cems_judgement import finalise_ended_days
from sanitel.processors.cems_marks import add_mark
from sanitel.simulators.cems_span import LineSpan, simulate_cems_line
from sanitel.simulators.faults import FaultSpec
from tests.support.alerts_db import add_device, add_site, alerts, run

START = "2026-03-09T00:00:00+08:00"
DAY1, DAY2 = date(2026, 3, 9), date(2026, 3, 10)
END = datetime.fromisoformat("2026-03-11T00:00:00+08:00")
NOW = END + timedelta(hours=1)  # both days have ended; the readings run 2 minutes past midnight
OUTAGE = {"after": "36h", "duration": "6h"}  # day 2, 12:00–18:00 local
# what else a correct expected alert brings along (the same excursion judged by a sibling rule)
ALSO = {
    "cems_furnace_850_daily": {"cems_furnace_below_850"},  # the warning on the first 5-minute average below 850
    "cems_so2_half_hourly": {"cems_so2_half_hourly_b", "cems_so2_gb_1h"},
}


def _json_line() -> LineSpan:
    faults = [FaultSpec(kind="furnace_dips", devices=["cems-y1-l1"], count=6, at="06:00", duration="6h"),
              FaultSpec(kind="o2_calibration", devices=["cems-y1-l1"], at="10:00"),
              FaultSpec(kind="over_range", devices=["cems-y1-l1"], at="14:00"),
              FaultSpec(kind="dau_outage_backfill", devices=["cems-y1-l1"], after="28h", duration="2h"),
              FaultSpec(kind="furnace_dips", devices=["cems-y1-l1"], count=5, after="30h", duration="5h")]
    return simulate_cems_line(START, 2 * 86_400.0 + 120, seed=41, interval_s=60.0, outages=[OUTAGE], faults=faults,
                              plant_id="y1")


def _store(conn: psycopg.Connection, span: LineSpan, plant: str) -> None:
    """As the collector stores them (received at their device time; seq kept apart for the back-filled minutes)."""
    columns = sorted(set(span.readings[0]) - {"device_id", "plant_id", "line_id"})
    with conn.cursor().copy(f"COPY cems_readings (device_id, received_at, plant_id, line_id, {', '.join(columns)})"
                            " FROM STDIN") as copy:
        for r in span.readings:
            copy.write_row((span.device_id, r["ts"], plant, f"{plant}-l1",
                            *(Jsonb(r[c]) if c == "extra" and r[c] is not None else r[c] for c in columns)))


def _cems_pack() -> RuleSet:
    shipped = load_files(default_rule_files())
    out = RuleSet()
    for rule_id, rule in shipped.rules.items():
        if rule_id.startswith("cems_") and rule_id != "cems_offline":  # offline: a real-time matter
            out.add(rule, "shipped")
    return out


def _expected(truth: Iterable[Any]) -> set[str]:
    return {r.expected_effect["alert"] for r in truth if "alert" in r.expected_effect}


@pytest.fixture
def judged(fresh_db: str) -> dict[str, Any]:
    y1 = _json_line()
    y2 = simulate_cems_line(START, 2 * 86_400.0 + 120, seed=43, interval_s=60.0, protocol="hj212", outages=[OUTAGE],
                            plant_id="y2", excursions_per_day=0)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for plant in ("y1", "y2"):
            add_site(conn, plant, "plant")
            add_site(conn, f"{plant}-l1", "line", parent=plant)
            add_device(conn, f"cems-{plant}-l1", "cems", site=f"{plant}-l1")
        _store(conn, y1, "y1")
        _store(conn, y2, "y2")
        for record in y2.truth:  # the plant marks what its HJ 212 unit cannot
            mark = record.expected_effect.get("mark_via_api")
            if mark:
                add_mark(conn, device_id="cems-y2-l1", mark=mark["mark"],
                         starts_at=datetime.fromisoformat(mark["starts_at"]),
                         ends_at=datetime.fromisoformat(mark["ends_at"]), reason=mark["reason"], source="api",
                         created_by="shift supervisor")
        run_scheduled(conn, now=NOW)  # the scheduled processor's CEMS steps (processors/maintenance.py)
        finalise_ended_days(conn, now=NOW)
    run(fresh_db, _cems_pack(), now=NOW, lateness_horizon=timedelta(days=4), write_margin=timedelta(0))
    return {"url": fresh_db, "y1": y1, "y2": y2}


def _judgements(url: str, device: str) -> dict[date, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT day, status, furnace_5min_below_850, marked_hours, final FROM cems_daily_judgements"
                            " WHERE device_id = %s ORDER BY day", (device,)).fetchall()
    return {r[0]: {"status": r[1], "below_850": r[2], "marked_hours": r[3], "final": r[4]} for r in rows}


@pytest.mark.clock
def test_every_expected_alert_and_nothing_else(judged: dict[str, Any]) -> None:
    raised = {(a["rule_id"], a["subject"]) for a in alerts(judged["url"])}
    for line in ("y1", "y2"):
        span: LineSpan = judged[line]
        subject = f"device:{span.device_id}"
        expected = _expected(span.truth)
        got = {rule for rule, s in raised if s == subject}
        assert expected <= got, f"{line}: missing {expected - got}"
        explained = expected | {also for rule in expected for also in ALSO.get(rule, ())}
        assert got - explained == set(), f"{line}: alerts the ground truth does not explain"
    assert _expected(judged["y1"].truth) == {"cems_furnace_850_daily", "cems_furnace_below_850",  # 6 dips, then 5
                                             "cems_so2_over_range", "cems_so2_half_hourly"}
    assert _expected(judged["y2"].truth) == set()  # a marked outage: no emission alert at all


@pytest.mark.clock
def test_the_regulatory_verdicts_of_each_day(judged: dict[str, Any]) -> None:
    y1 = _judgements(judged["url"], "cems-y1-l1")
    # day 1: six 5-minute averages below 850 °C > 5 allowed — a violation; day 2: five, and the marked outage
    assert (y1[DAY1]["below_850"], y1[DAY1]["status"], y1[DAY1]["final"]) == (6, "violation", True)
    assert (y1[DAY2]["below_850"], y1[DAY2]["status"]) == (5, "compliant")
    # shut-down 1 h + start-up 2 h count against the yearly cap; the 3 h off ("shut", 停运) do not
    assert y1[DAY2]["marked_hours"] == pytest.approx(3.0, abs=0.05)
    y2 = _judgements(judged["url"], "cems-y2-l1")
    assert y2[DAY2]["marked_hours"] == pytest.approx(3.0, abs=0.05) and y2[DAY2]["status"] == "compliant"
    with psycopg.connect(judged["url"]) as conn:
        # the outage re-sent as minute data (04:00–06:00 on day 2) left no half-hour missing: valid after back-fill
        statuses = conn.execute(
            "SELECT status, count(*) FROM cems_averages WHERE device_id = 'cems-y1-l1' AND pollutant = 'nox'"
            " AND period = '30min' AND period_start >= %s AND period_start < %s GROUP BY 1",
            (datetime.fromisoformat("2026-03-10T04:00:00+08:00"), datetime.fromisoformat("2026-03-10T06:00:00+08:00"))
        ).fetchall()
        assert dict(statuses) == {"valid": 4}
        # during the O2 calibration the analyser-normalised values were discarded, not averaged
        (o2_discarded,) = conn.execute(
            "SELECT coalesce(sum((discarded->>'o2_flag_C')::int), 0) FROM cems_averages WHERE device_id = 'cems-y1-l1'"
            " AND pollutant = 'nox' AND period = '30min' AND period_start >= %s AND period_start < %s",
            (datetime.fromisoformat("2026-03-09T10:00:00+08:00"), datetime.fromisoformat("2026-03-09T11:00:00+08:00"))
        ).fetchone() or (0,)
        assert o2_discarded >= 14  # 15 minutes at one reading a minute, give or take the edge
        # the marked outage of the HJ 212 line: its half-hours are 'marked', judged neither way
        (marked,) = conn.execute(
            "SELECT count(*) FROM cems_averages WHERE device_id = 'cems-y2-l1' AND pollutant = 'nox'"
            " AND period = '30min' AND status = 'marked'").fetchone() or (0,)
        assert marked >= 11  # 6 hours = 12 half-hours, less one at an edge with enough valid minutes
