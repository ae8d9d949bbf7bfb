"""Reads never hide data that arrived late (issue 17), through the real broker, collector, database and API.

A gateway that lost its uplink back-fills a day: device times over a whole day, all stored within seconds.
The 5-minute rollup must not hide those buckets (it used to: it was trusted for every bucket before the
processor's watermark, a write time compared with device times). History serves them from the raw
readings, marked provisional, until the scheduled processor rolls them up; then the same answer comes
from the rollup. The same for CEMS averages, and the compliance report gives no verdict on averages that
lag the readings.

Device times are a fixed day in the past. The scheduled processor's clock is the database's (read once,
``database_now``): the rows' write times come from it, and the pass must come after them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.processors.maintenance import run_pass
from sanitel.processors.rollups import settled_upto
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.support.api_helpers import api_settings, auth, mint_key
from tests.support.db_clock import database_now
from tests.support.mqtt_tools import count, publish, wait_for

pytestmark = pytest.mark.clock  # buckets of device time

DAY = datetime(2026, 3, 9, tzinfo=UTC)  # the back-filled day (device time)
SWEEPER = "sw-0001"
PLANT, LINE, CEMS = "plant-1", "plant-1-l1", "cems-1"
STORE_TIMEOUT_S = 60  # generous: the CI machine may be slow


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _soc(i: int) -> float:
    return 100 - i * 0.1


def _sweeper_day() -> list[tuple[str, bytes]]:
    """One reading every 5 minutes over DAY: 288 readings, 12 an hour."""
    topic = f"sanitation/shenzhen/sweeper/{SWEEPER}/telemetry"
    return [(topic, json.dumps({"ts": _ms(DAY + timedelta(minutes=5 * i)), "seq": i, "soc_pct": _soc(i)}).encode())
            for i in range(288)]


def _pass(db_url: str) -> None:
    """One pass of the scheduled processor, on the database's clock (after every row stored so far)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert run_pass(conn, load_settings(database_url=db_url), now=database_now(db_url), retention=False).ran


@pytest.fixture
def stack(fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector],
          tmp_path: Path) -> Iterator[tuple[str, MosquittoServer, TestClient]]:
    make_collector(fresh_db, mqtt_server.url)
    with TestClient(create_app(api_settings(fresh_db, tmp_path)), headers=auth(mint_key(fresh_db, "viewer"))) as c:
        yield fresh_db, mqtt_server, c


def _hourly(client: TestClient, device: str = SWEEPER, metric: str = "soc_pct", **extra: str) -> dict[str, Any]:
    response = client.get(f"/devices/{device}/history", params={
        "metric": metric, "bucket": "1h", "from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat(),
        **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _at(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _source(start: datetime, end: datetime, source: str, table: str) -> dict[str, str]:
    return {"from": _at(start), "to": _at(end), "source": source, "table": table}


def test_a_backfilled_day_is_served_in_full_before_the_rollup_has_it_and_from_the_rollup_after(
        stack: tuple[str, MosquittoServer, TestClient]) -> None:
    db, broker, client = stack
    _pass(db)  # the processor is running: its watermark is now, after every device time of DAY
    publish(broker.port, _sweeper_day())
    assert wait_for(lambda: count(db, "SELECT count(*) FROM sweeper_telemetry") == 288, STORE_TIMEOUT_S)

    # before the next pass: all 24 hours, from the raw readings, provisional (the rollup used to hide them)
    raw = _hourly(client)
    assert len(raw["points"]) == 24 and all(p["provisional"] is True for p in raw["points"])
    assert raw["sources"] == [_source(DAY, DAY + timedelta(days=1), "raw", "sweeper_telemetry")]
    assert [p["count"] for p in raw["points"]] == [12] * 24
    assert raw["points"][0]["value"] == pytest.approx(sum(_soc(i) for i in range(12)) / 12, abs=1e-3)

    # one pass: the same answer, from the rollup, final
    _pass(db)
    rolled = _hourly(client)
    assert rolled["source"] == "sweeper_telemetry_5m"
    assert rolled["sources"] == [_source(DAY, DAY + timedelta(days=1), "rollup", "sweeper_telemetry_5m")]
    assert [p["ts"] for p in rolled["points"]] == [p["ts"] for p in raw["points"]]
    for got, want in zip(rolled["points"], raw["points"], strict=True):
        assert "provisional" not in got
        assert got["value"] == pytest.approx(want["value"], abs=1e-4) and got["count"] == want["count"]

    # a late reading lands in the rolled-up 05:00 bucket: that bucket alone is raw and provisional
    five = DAY + timedelta(hours=5)
    late = {"ts": _ms(five + timedelta(minutes=2)), "seq": 10_000, "soc_pct": 0.0}
    publish(broker.port, [(f"sanitation/shenzhen/sweeper/{SWEEPER}/telemetry", json.dumps(late).encode())])
    assert wait_for(lambda: count(db, "SELECT count(*) FROM sweeper_telemetry") == 289, STORE_TIMEOUT_S)
    patched = _hourly(client)
    assert patched["sources"] == [
        _source(DAY, five, "rollup", "sweeper_telemetry_5m"), _source(five, five + timedelta(hours=1), "raw",
                                                                      "sweeper_telemetry"),
        _source(five + timedelta(hours=1), DAY + timedelta(days=1), "rollup", "sweeper_telemetry_5m")]
    assert patched["source"] == "sweeper_telemetry_5m + sweeper_telemetry"
    by_ts = {p["ts"]: p for p in patched["points"]}
    assert [t for t, p in by_ts.items() if p.get("provisional")] == [_at(five)]
    assert by_ts[_at(five)]["count"] == 13
    assert by_ts[_at(five)]["value"] == pytest.approx(sum(_soc(i) for i in range(60, 72)) / 13, abs=1e-3)

    # the next pass rolls it up: the same value, final
    _pass(db)
    settled = _hourly(client)
    assert settled["sources"] == rolled["sources"]
    assert not any("provisional" in p for p in settled["points"])
    assert {p["ts"]: (p["value"], p["count"]) for p in settled["points"]}[_at(five)] == (
        pytest.approx(by_ts[_at(five)]["value"], abs=1e-4), 13)


def test_without_the_scheduled_processor_history_stays_raw_and_says_so(
        stack: tuple[str, MosquittoServer, TestClient]) -> None:
    db, broker, client = stack  # a deployment that starts only the collector and the API
    publish(broker.port, _sweeper_day())
    assert wait_for(lambda: count(db, "SELECT count(*) FROM sweeper_telemetry") == 288, STORE_TIMEOUT_S)
    hourly = _hourly(client)
    assert len(hourly["points"]) == 24 and all(p["provisional"] for p in hourly["points"])
    assert hourly["sources"] == [_source(DAY, DAY + timedelta(days=1), "raw", "sweeper_telemetry")]
    # a series no rollup holds is raw and final
    count_series = _hourly(client, aggregate="count")
    assert len(count_series["points"]) == 24 and not any("provisional" in p for p in count_series["points"])


def test_a_pass_rolls_up_what_committed_before_it_and_waits_for_an_open_write(fresh_db: str) -> None:
    """The watermark the API trusts never passes a row that is not in the rollup: a pass moves it up to the
    database's clock (no slack: late data is re-rolled by the next pass), but not past the start of a write
    transaction still open, whose rows will commit with that ``stored_at``."""
    settings = load_settings(database_url=fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn, psycopg.connect(fresh_db) as writer:
        ahead = database_now(fresh_db) + timedelta(hours=1)  # a processor whose clock runs ahead of the database's
        assert settled_upto(conn, ahead) <= database_now(fresh_db)
        opened = one_row(writer.execute(
            "INSERT INTO sweeper_telemetry (device_id, ts, received_at, soc_pct) VALUES (%s, %s, %s, 50)"
            " RETURNING stored_at", (SWEEPER, DAY, DAY)))[0]
        assert run_pass(conn, settings, now=database_now(fresh_db), retention=False).rollup_buckets == {
            "sweeper_telemetry": 0, "station_telemetry": 0}  # not committed: not visible, not passed
        assert one_row(conn.execute("SELECT watermark FROM maintenance_watermarks"
                                    " WHERE name = 'rollup:sweeper_telemetry'"))[0] < opened
        writer.commit()
        assert run_pass(conn, settings, now=database_now(fresh_db), retention=False).rollup_buckets[
            "sweeper_telemetry"] == 1


# --- CEMS: averages and compliance ---------------------------------------------------------------------

def _cems(minutes: range, nox: Callable[[int], float]) -> list[tuple[str, bytes]]:
    """One reading a minute of DAY (a UTC day: the plant's zone is UTC): NOx measured at 8 % O2, so
    normalised = measured × (21 − 11) / (21 − 8) = measured × 10/13."""
    topic = f"sanitation/shenzhen/cems/{CEMS}/telemetry"
    return [(topic, json.dumps({"ts": _ms(DAY + timedelta(minutes=m)), "nox_mg_m3": nox(m), "nox_flag": "N",
                                "o2_pct": 8.0, "o2_flag": "N"}).encode()) for m in minutes]


def _compliance(client: TestClient) -> dict[str, Any]:
    response = client.get(f"/plants/{PLANT}/compliance", params={"day": date(2026, 3, 9).isoformat()})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _check(report: dict[str, Any], key: str) -> dict[str, Any]:
    [line] = report["lines"]
    [found] = [c for c in line["checks"] if c["limit_key"] == key and c["pollutant"] == "nox"]
    return found


def test_compliance_is_pending_while_averages_are_behind_the_readings(
        stack: tuple[str, MosquittoServer, TestClient]) -> None:
    db, broker, client = stack
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES (%s, 'plant', 'Plant 1', 'UTC')",
                     (PLANT,))
        conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES (%s, 'line', 'Line 1', %s,"
                     " 'UTC')", (LINE, PLANT))
        conn.execute("INSERT INTO devices (device_id, kind, site_id) VALUES (%s, 'cems', %s)", (CEMS, LINE))
    ten, eleven = 10 * 60, 11 * 60
    # the day but 10:00–11:00 (the DAU could not deliver that hour in time): 260 measured → 200 normalised
    publish(broker.port, _cems(range(0, ten), lambda m: 260.0) + _cems(range(eleven, 1440), lambda m: 260.0))
    assert wait_for(lambda: count(db, "SELECT count(*) FROM cems_readings") == 1380, STORE_TIMEOUT_S)

    # no averages yet: no verdict, pending, with the reason
    report = _compliance(client)
    assert report["status"] == {"gb": "pending", "eu": "pending"} and report["compliant"] == {"gb": None, "eu": None}
    [line] = report["lines"]
    assert line["line_id"] == LINE and line["checks"] == [] and line["pending"]["readings"] == 1380
    assert "not averaged yet" in line["pending"]["reason"]
    # history of the averages: computed from the readings meanwhile, provisional
    before = _hourly(client, CEMS, "nox_zs_mg_m3")
    assert before["sources"] == [_source(DAY, DAY + timedelta(days=1), "raw", "cems_readings")]
    assert len(before["points"]) == 24 and all(p["provisional"] for p in before["points"])
    assert before["points"][0]["value"] == pytest.approx(200, abs=1e-3)
    assert before["points"][10]["status"] == "missing"

    # a pass: verdicts, on the same averages
    _pass(db)
    report = _compliance(client)
    assert report["status"] == {"gb": "compliant", "eu": "compliant"}  # 200 ≤ 300 (1 h), ≤ 250 (24 h); EU 160
    assert report["lines"][0]["pending"] is None
    assert client.get(f"/plants/{PLANT}/averages", params={"day": "2026-03-09"}).json()["behind"] == []
    after = _hourly(client, CEMS, "nox_zs_mg_m3")
    assert after["source"] == "cems_averages (1h, gb)"
    assert [(p["ts"], p["value"], p["status"]) for p in after["points"]] == [
        (p["ts"], p["value"], p["status"]) for p in before["points"]]
    assert not any("provisional" in p for p in after["points"])

    # the missing hour arrives late, far above the GB 1-hour limit (520 measured → 400 > 300): until the
    # averages have it, the day is pending — not "compliant" on averages that lack it
    publish(broker.port, _cems(range(ten, eleven), lambda m: 520.0))
    assert wait_for(lambda: count(db, "SELECT count(*) FROM cems_readings") == 1440, STORE_TIMEOUT_S)
    report = _compliance(client)
    assert report["status"] == {"gb": "pending", "eu": "pending"} and report["compliant"] == {"gb": None, "eu": None}
    gb_1h = _check(report, "gb.1h")
    assert (gb_1h["status"], gb_1h["compliant"]) == ("pending", None)
    assert "60 readings" in gb_1h["note"] and "stored after the day was averaged" in gb_1h["note"]
    pending_hour = [p for p in report["lines"][0]["invalid_periods"] if p["average"] == "1h"]
    assert [(p["start"], p["status"]) for p in pending_hour] == [("2026-03-09T10:00:00+00:00", "pending")]
    averages = client.get(f"/plants/{PLANT}/averages", params={"day": "2026-03-09", "period": "1h"}).json()
    assert [(b["device_id"], b["readings"]) for b in averages["behind"]] == [(CEMS, 60)]
    late = _hourly(client, CEMS, "nox_zs_mg_m3")
    assert late["sources"] == [_source(DAY, DAY + timedelta(days=1), "raw", "cems_readings")]
    assert late["points"][10]["value"] == pytest.approx(400, abs=1e-3) and late["points"][10]["provisional"]

    # the next pass: the exceedance is judged
    _pass(db)
    report = _compliance(client)
    assert report["status"]["gb"] == "exceeded" and report["compliant"]["gb"] is False
    gb_1h = _check(report, "gb.1h")
    assert gb_1h["status"] == "exceeded" and gb_1h["exceedances"][0]["start"] == "2026-03-09T10:00:00+00:00"
    final = _hourly(client, CEMS, "nox_zs_mg_m3")
    assert final["points"][10]["value"] == pytest.approx(400, abs=1e-3) and "provisional" not in final["points"][10]
