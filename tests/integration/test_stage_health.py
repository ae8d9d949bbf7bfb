"""Nothing hides a stage that stopped (issue 17): /health, Prometheus and alerts, through the real broker, database,
API and the real services in-process — the collector, the scheduled processor's pass and the evaluator service.

Every stage records a heartbeat per pass on its own process clock; here each one is given the same standing clock
(``Clock``) that the test moves, the API's clock is moved with time-machine, so every lag asserted is exact.
A CEMS unit whose readings are newer than its averages raises ``cems_averages_behind`` instead of an "invalid day"
verdict on averages not computed yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import time_machine
from fastapi.testclient import TestClient

from sanitel.alerts.evaluator import EvaluatorConfig
from sanitel.alerts.service import EvaluatorService
from sanitel.api.app import create_app
from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.processors.maintenance import run_pass
from sanitel.servers import MosquittoServer
from sanitel.settings import Settings, load_settings
from tests.support.api_helpers import api_settings, auth, mint_key
from tests.support.mqtt_tools import count, publish, wait_for

pytestmark = pytest.mark.clock  # lags and CEMS day boundaries, on fixed instants

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
WAIT_S = 60  # generous: the CI machine may be slow


class Clock:
    """A wall clock that stands still until the test moves it: the stages' ``now``."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Monotonic:
    """The API's cache clock (monotonic seconds), moved by hand so each call re-runs the checks."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 10  # past CHECKS_CACHE_S: every call sees the database as it is now
        return self.now


@pytest.fixture
def settings(fresh_db: str, mqtt_server: MosquittoServer, tmp_path: Path) -> Settings:
    return load_settings(database_url=fresh_db, mqtt_url=mqtt_server.url, data_dir=tmp_path / "stages",
                         collector_metrics_port=0, evaluator_metrics_port=0, collector_flush_ms=50,
                         collector_client_id="stage-collector")


@pytest.fixture
def start_collector(settings: Settings) -> Iterator[Callable[[Clock], Collector]]:
    """An in-process collector on ``settings`` with the given clock; stopped at teardown."""
    started: list[Collector] = []

    def start(clock: Clock) -> Collector:
        collector = Collector(settings, now=clock)  # a restart: the same client id, spool and heartbeat row
        started.append(collector)
        collector.start()
        assert collector.wait_connected(WAIT_S), "collector did not connect to the broker"
        return collector

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    yield start
    for collector in started:
        collector.stop()


@pytest.fixture
def evaluator(settings: Settings) -> Iterator[Callable[..., EvaluatorService]]:
    made: list[EvaluatorService] = []

    def make(clock: Clock, config: EvaluatorConfig | None = None) -> EvaluatorService:
        made.append(EvaluatorService(settings, metrics_port=0, clock=clock, config=config))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    viewer = auth(mint_key(settings.database_url or "", "viewer"))
    app = create_app(api_settings(settings.database_url or "", tmp_path / "api", mqtt_url=settings.mqtt_url),
                     clock=Monotonic())
    with TestClient(app) as client:
        yield client, viewer


def _last_pass(db: str, stage: str) -> datetime | None:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT max(last_pass_at) FROM stage_heartbeats WHERE stage = %s", (stage,)).fetchone()
    return row[0] if row else None


def _processor_pass(settings: Settings, now: datetime) -> None:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        assert run_pass(conn, settings, now=now, retention=False).ran


def _alerts(db: str, rule_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(db) as conn:
        cur = conn.execute("SELECT subject, state, severity, summary, value, threshold, labels, device_id FROM alerts"
                           " WHERE rule_id = %s ORDER BY alert_id", (rule_id,))
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _health(api: tuple[TestClient, dict[str, str]], at: datetime) -> dict[str, Any]:
    client, viewer = api
    with time_machine.travel(at, tick=False):  # the API measures lags on its own clock
        body: dict[str, Any] = client.get("/health", headers=viewer).json()
        assert client.get("/health").json() == {"status": body["status"]}  # anonymous: the status only
    return body


def _metrics(api: tuple[TestClient, dict[str, str]], at: datetime) -> str:
    client, viewer = api
    with time_machine.travel(at, tick=False):
        return client.get("/metrics", headers=viewer).text


# --- the scheduled processor ---------------------------------------------------------------------------------

def test_a_processor_that_never_ran_degrades_health_and_raises_stage_overdue_until_it_passes(
        settings: Settings, start_collector: Callable[[Clock], Collector],
        evaluator: Callable[..., EvaluatorService], api: tuple[TestClient, dict[str, str]]) -> None:
    db = settings.database_url or ""
    clock = Clock(T0)
    start_collector(clock)  # a deployment that starts the collector, the evaluator and the API — no `maintain`
    assert wait_for(lambda: _last_pass(db, "collector") == T0, WAIT_S), "the collector reported no heartbeat"
    service = evaluator(clock)
    clock.at = T0 + timedelta(seconds=1)
    report = service.run_once()
    assert report is not None and report.ran

    [alert] = _alerts(db, "stage_overdue")
    assert (alert["subject"], alert["state"], alert["severity"]) == ("stage:processor", "firing", "critical")
    assert alert["summary"] == ("the scheduled processor has never reported a pass: is it running (`sanitel "
                                "maintain`), and can it reach the database?")
    assert alert["labels"]["stage"] == "processor"

    health = _health(api, T0 + timedelta(seconds=2))
    assert health["status"] == "degraded"
    assert health["problems"] == ["processor: " + alert["summary"]]  # names the stage and what to check
    checks = health["checks"]
    assert checks["processor"]["status"] == "degraded" and checks["processor"]["data"]["last_pass_at"] is None
    # (the collector beats again every 30 s of real time, on the clock as it stands: its lag is not fixed)
    assert checks["collector"]["status"] == "ok"
    assert checks["collector"]["data"]["interval_s"] == settings.collector_heartbeat_s
    assert (checks["evaluator"]["status"], checks["evaluator"]["data"]["lag_s"]) == ("ok", 1.0)
    assert checks["evaluator"]["data"]["instances"] == 1
    text = _metrics(api, T0 + timedelta(seconds=2))
    assert 'sanitel_stage_lag_seconds{stage="processor"} +Inf' in text
    assert 'sanitel_stage_up{stage="processor"} 0.0' in text
    assert 'sanitel_stage_lag_seconds{stage="evaluator"} 1.0' in text
    assert 'sanitel_stage_up{stage="evaluator"} 1.0' in text

    _processor_pass(settings, T0 + timedelta(seconds=3))  # the scheduled processor runs a pass
    clock.at = T0 + timedelta(seconds=4)
    assert service.run_once() is not None
    [alert] = _alerts(db, "stage_overdue")
    assert alert["state"] == "resolved"
    health = _health(api, T0 + timedelta(seconds=5))
    assert (health["status"], health["problems"]) == ("ok", [])
    assert health["checks"]["processor"]["data"]["lag_s"] == 2.0
    assert health["checks"]["processor"]["data"]["interval_s"] == settings.maintain_interval_s
    assert 'sanitel_stage_up{stage="processor"} 1.0' in _metrics(api, T0 + timedelta(seconds=5))


# --- the evaluator ----------------------------------------------------------------------------------------------

def test_an_evaluator_that_stopped_degrades_health_and_prometheus(
        settings: Settings, start_collector: Callable[[Clock], Collector],
        evaluator: Callable[..., EvaluatorService], api: tuple[TestClient, dict[str, str]]) -> None:
    """The evaluator cannot alert about its own silence: /health and the API's metrics say it."""
    db = settings.database_url or ""
    clock = Clock(T0)
    start_collector(clock)
    assert wait_for(lambda: _last_pass(db, "collector") == T0, WAIT_S), "the collector reported no heartbeat"
    _processor_pass(settings, T0)
    service = evaluator(clock)
    assert service.run_once() is not None  # its last pass: at T0, every 5 s; then it stops

    health = _health(api, T0 + timedelta(seconds=16))
    assert health["status"] == "degraded"
    assert health["problems"] == [
        "evaluator: the alert evaluator last passed 16 s ago (every 5 s; overdue after 15 s): check that "
        "`sanitel evaluator` is running, its log, and that it reaches the database"]
    assert health["checks"]["evaluator"]["data"]["instances"] == 0
    assert health["checks"]["evaluator"]["data"]["stopped_instances"] == 1
    assert health["checks"]["collector"]["status"] == health["checks"]["processor"]["status"] == "ok"
    text = _metrics(api, T0 + timedelta(seconds=16))
    assert 'sanitel_stage_up{stage="evaluator"} 0.0' in text
    assert 'sanitel_stage_lag_seconds{stage="evaluator"} 16.0' in text
    assert _alerts(db, "stage_overdue") == []


# --- the collector ----------------------------------------------------------------------------------------------

def test_a_collector_that_stopped_degrades_health_and_raises_stage_overdue_until_it_reports_again(
        settings: Settings, start_collector: Callable[[Clock], Collector],
        evaluator: Callable[..., EvaluatorService], api: tuple[TestClient, dict[str, str]]) -> None:
    db = settings.database_url or ""
    clock = Clock(T0)
    collector = start_collector(clock)
    assert wait_for(lambda: _last_pass(db, "collector") == T0, WAIT_S), "the collector reported no heartbeat"
    collector.stop()

    later = T0 + timedelta(seconds=100)  # more than 3 × 30 s
    clock.at = later
    _processor_pass(settings, later)
    service = evaluator(clock)
    assert service.run_once() is not None
    [alert] = _alerts(db, "stage_overdue")
    assert (alert["subject"], alert["state"], alert["severity"]) == ("stage:collector", "firing", "critical")
    assert alert["summary"] == ("the collector last passed 100 s ago (every 30 s; overdue after 90 s): check that "
                                "`sanitel collector` is running, its log, and that it reaches the database and the "
                                "broker")
    assert (alert["value"], alert["threshold"]) == (100.0, 90.0)  # the lag, and the limit it passed

    health = _health(api, later)
    assert health["status"] == "degraded" and health["problems"] == ["collector: " + alert["summary"]]
    assert health["checks"]["collector"]["data"]["instances"] == 0
    assert 'sanitel_stage_up{stage="collector"} 0.0' in _metrics(api, later)

    clock.at = later + timedelta(seconds=10)  # the collector is started again: same client id, same row
    start_collector(clock)
    assert wait_for(lambda: _last_pass(db, "collector") == clock.at, WAIT_S), "the collector reported no heartbeat"
    clock.at += timedelta(seconds=1)
    assert service.run_once() is not None
    [alert] = _alerts(db, "stage_overdue")
    assert alert["state"] == "resolved"
    health = _health(api, clock.at)
    assert health["checks"]["collector"]["status"] == "ok"
    assert health["checks"]["collector"]["data"]["instances"] == 1


# --- CEMS averages behind the readings --------------------------------------------------------------------------

DAY = datetime(2026, 3, 9, tzinfo=UTC)  # the plant's local day (its zone is UTC)
PLANT, LINE, CEMS = "plant-1", "plant-1-l1", "cems-1"


def _cems(minutes: range) -> list[tuple[str, bytes]]:
    """One reading a minute from DAY: NOx 260 measured at 8 % O2 = 200 normalised, within every limit."""
    topic = f"sanitation/shenzhen/cems/{CEMS}/telemetry"
    return [(topic, json.dumps({"ts": int((DAY + timedelta(minutes=m)).timestamp() * 1000), "nox_mg_m3": 260.0,
                                "nox_flag": "N", "o2_pct": 8.0, "o2_flag": "N"}).encode()) for m in minutes]


def test_readings_newer_than_their_averages_raise_averages_behind_not_an_invalid_day(
        settings: Settings, mqtt_server: MosquittoServer, start_collector: Callable[[Clock], Collector],
        evaluator: Callable[..., EvaluatorService]) -> None:
    """The DAU delivers the day but 10:00–14:00 and the next midnight; a pass averages that (eight half-hours
    missing: an invalid EU day). Then the four hours arrive, and no pass has run since. The evaluator used to
    judge the stored day — more than 5 half-hours discarded: ``cems_nox_daily_invalid`` — on averages that
    lack readings already stored. Now the line's averages are behind: ``cems_averages_behind`` fires instead,
    and resolves once a pass has averaged them (a valid day: nothing else fires)."""
    db = settings.database_url or ""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES (%s, 'plant', 'Plant 1', 'UTC')",
                     (PLANT,))
        conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES (%s, 'line', 'Line 1', %s,"
                     " 'UTC')", (LINE, PLANT))
        conn.execute("INSERT INTO devices (device_id, kind, site_id) VALUES (%s, 'cems', %s)", (CEMS, LINE))
    clock = Clock(DAY + timedelta(days=1, minutes=10))  # receive times: after the day
    start_collector(clock)
    ten, fourteen = 10 * 60, 14 * 60
    publish(mqtt_server.port, _cems(range(0, ten)) + _cems(range(fourteen, 1441)))  # 1440: the next midnight
    assert wait_for(lambda: count(db, "SELECT count(*) FROM cems_readings") == 1201, WAIT_S)
    _processor_pass(settings, DAY + timedelta(days=1, minutes=20))
    with psycopg.connect(db) as conn:
        daily = one_row(conn.execute("SELECT status FROM cems_averages WHERE device_id = %s AND pollutant = 'nox'"
                                     " AND period = '1d' AND standard = 'eu' AND period_start = %s", (CEMS, DAY)))
    assert daily == ("invalid",)  # eight half-hours missing

    publish(mqtt_server.port, _cems(range(ten, fourteen)))  # the missing hours arrive; no pass follows
    assert wait_for(lambda: count(db, "SELECT count(*) FROM cems_readings") == 1441, WAIT_S)
    # rows are committed (counted) before the pass: no write margin needed; stages are another test's
    config = EvaluatorConfig(write_margin=timedelta(0), averages_behind_after=timedelta(0))
    clock.at = DAY + timedelta(days=1, minutes=30)
    service = evaluator(clock, config)
    assert service.run_once() is not None
    assert _alerts(db, "cems_nox_daily_invalid") == []  # no verdict on averages that lack stored readings
    [behind] = _alerts(db, "cems_averages_behind")
    assert (behind["subject"], behind["state"], behind["severity"]) == (f"device:{CEMS}", "firing", "warning")
    assert behind["device_id"] == CEMS and behind["labels"]["line"] == LINE and behind["labels"]["plant"] == PLANT
    assert behind["summary"].startswith(
        f"emission averages of {CEMS} are behind its readings: 240 readings from 2026-03-09T10:00:00+00:00 to "
        "2026-03-09T13:59:00+00:00 not averaged yet")
    clock.at += timedelta(minutes=1)
    assert service.run_once() is not None  # still behind: one alert, still firing, still no verdict
    assert [a["state"] for a in _alerts(db, "cems_averages_behind")] == ["firing"]
    assert _alerts(db, "cems_nox_daily_invalid") == []

    _processor_pass(settings, DAY + timedelta(days=1, minutes=40))  # the averages catch up: a valid day
    clock.at = DAY + timedelta(days=1, minutes=45)
    assert service.run_once() is not None
    assert [a["state"] for a in _alerts(db, "cems_averages_behind")] == ["resolved"]
    assert _alerts(db, "cems_nox_daily_invalid") == []
    with psycopg.connect(db) as conn:
        # no emission rule fired (the unit is silent since the collector's clock stood still: cems_offline)
        fired = conn.execute("SELECT rule_id FROM alerts WHERE rule_id LIKE 'cems_%' AND state <> 'resolved'"
                             " AND rule_id <> 'cems_offline'")
        assert fired.fetchall() == []
