"""Ground truth, end to end: a simulated day goes through a real broker, the real collector, the CEMS
averages processor and the evaluator; the alerts must match what the simulator says it did.

- Every injected fault (and every event the models record as alert-worthy) raises the expected alert
  — of exactly that rule, on that device — and it resolves after the fault ends.
- Nothing else fires: an alert no ground-truth record explains is a false positive (counted, reported
  in the test output, and required to be zero).
- Records marked ``no_alert`` (calibration, maintenance, start-up, a single spike …) raise none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.rules import default_rule_files, load_files
from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.processors.cems_averages import run_scheduled
from sanitel.servers import MosquittoServer, free_port
from sanitel.settings import load_settings
from sanitel.simulators.run import generate, inventory
from sanitel.simulators.truth import read_ground_truth
from tests.support.mqtt_tools import publish
from tests.support.simulator_runs import register_scenario_fleet, registry_refusals

CITY = "shenzhen"
TZ = "Asia/Shanghai"
SEED = 11
FLEET: dict[str, Any] = {
    "timezone": TZ, "duration": "24h",
    "districts": [{"id": "futian", "lat": 22.5431, "lon": 114.0579, "radius_km": 3}],
    "sweepers": {"count": 3, "interval": "30s", "parked_interval": "120s"},
    "stations": {"count": 2, "interval": "120s"},
    "sorting_points": {"count": 3, "status_interval": "10m", "cameras": 1, "gateway_interval": "120s"},
    "plants": [
        {"id": "p1", "lines": 2, "protocol": "json", "interval": "60s", "calibration": {"at": "03:00", "duration": "15m"},
         "outages": [{"line": 2, "at": "02:00", "duration": "6h"}]},
        {"id": "p2", "lines": 1, "protocol": "hj212", "interval": "60s", "calibration": {"at": "04:00", "duration": "15m"},
         "maintenance": [{"line": 1, "at": "13:00", "duration": "1h"}]},
    ],
}
FAULTS: list[dict[str, Any]] = [
    {"kind": "emission_exceedance", "devices": ["cems-p1-l1"], "pollutant": "nox", "at": "10:00", "duration": "1h"},
    {"kind": "emission_exceedance", "devices": ["cems-p2-l1"], "pollutant": "co", "at": "16:00", "duration": "1h"},
    {"kind": "silence", "devices": ["sw-0001"], "at": "08:00", "duration": "30m"},
    {"kind": "silence", "devices": ["ts-0002"], "at": "17:00", "duration": "40m"},
    {"kind": "spike", "devices": ["ts-0001"], "field": "h2s_mg_m3", "level": 4.0, "at": "12:00"},
    {"kind": "spike", "devices": ["sw-0002"], "at": "09:00"},
    {"kind": "stuck_sensor", "devices": ["sw-0003"], "field": "soc_pct", "at": "15:00", "duration": "45m"},
    {"kind": "duplicate", "devices": ["ts-0001"], "at": "07:00", "duration": "20m"},
    {"kind": "out_of_order", "devices": ["sw-0002"], "at": "06:00", "duration": "10m"},
    {"kind": "clock_skew", "devices": ["sw-0003"], "offset": "-2h", "at": "18:00", "duration": "10m"},
    {"kind": "malformed", "devices": ["ts-0001"], "reason": "invalid_json", "at": "20:00", "duration": "5m"},
    {"kind": "burst", "devices": ["sw-0001"], "factor": 20, "at": "14:00", "duration": "5m"},
    {"kind": "charger_failure", "devices": ["sw-0002"], "at": "11:00", "duration": "3h"},
    {"kind": "bin_fire", "devices": ["bin-00002-k"], "at": "19:30", "duration": "30m"},
]
# The simulated day: a whole local (Shanghai) day at a fixed date, in the past for any clock that runs the suite.
DAY_START = datetime(2026, 3, 9, tzinfo=ZoneInfo(TZ)).astimezone(UTC)
DAY_END = DAY_START + timedelta(days=1)
# The evaluator's wall clock: the morning after the day, as when the day was "yesterday". Every pass runs at
# this instant (the collector and the database keep their own clocks for receive and write times).
EVAL_NOW = DAY_END + timedelta(hours=2)
# The collector's write transactions here take well under a second.
CONFIG = EvaluatorConfig(lateness_horizon=timedelta(days=3), write_margin=timedelta(seconds=1))
# What else one physical event legitimately raises, besides the rule the ground truth names.
ALSO = {
    "cems_nox_half_hourly": {"cems_nox_half_hourly_b", "cems_nox_gb_1h"},
    "cems_co_half_hourly": {"cems_co_10min", "cems_co_gb_1h"},
    "bin_fire": {"camera_smoke_fire"},
}
# How long after a record ends its alert may still resolve: hysteresis, keep-firing, the next window.
RESOLVE_SLACK = {"device_offline": timedelta(minutes=5), "bin_fire": timedelta(minutes=45),
                 "bin_overflow": timedelta(minutes=40), "sweeper_low_soc": timedelta(hours=2)}


# Per-site parameters of the simulated sites (the shipped bin_overflow level, 90 %, is also the
# simulator's ground truth: simulators/models/sorting_point.py FULL_PCT).
SITE_PARAMS: dict[str, dict[str, Any]] = {
    "transfer_station": {"odour_grade": 2, "noise_class": 2},
}


def _register(url: str, scenario: Path) -> None:
    """The fleet in the registry with its sites, as an operator would have it (stations on grade 2): the sites
    first, then the devices with their metadata and sites, the sorting points' gateways with their bins behind
    them and the HJ 212 unit with its PW, registered as ``sanitel run`` registers a simulated fleet."""
    devices = inventory(scenario, seed=SEED, city=CITY)
    with psycopg.connect(url, autocommit=True) as conn:
        sites = {d["site_id"] for d in devices}
        for site in sorted(sites):
            kind = ("transfer_station" if site.startswith("ts-") else "estate" if site.startswith("es-")
                    else "line" if "-l" in site else "district")
            parent = site.split("-l")[0] if kind == "line" else None
            if parent:
                conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'plant', %s) ON CONFLICT DO NOTHING",
                             (parent, parent))
            conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone, params) VALUES"
                         " (%s, %s, %s, %s, %s, %s)", (site, kind, site, parent, TZ, Jsonb(SITE_PARAMS.get(kind, {}))))
    register_scenario_fleet(url, scenario, city=CITY, seed=SEED)


class Evaluation:
    """The evaluator and the averages processor running on a schedule while the day is ingested."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rules = load_files(default_rule_files())
        self.config = CONFIG
        self.stop = threading.Event()
        self.passes = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Evaluation:
        self.thread.start()
        return self

    def _loop(self) -> None:
        with psycopg.connect(self.url) as conn, psycopg.connect(self.url, autocommit=True) as averages:
            evaluator = Evaluator(conn, self.rules, self.config)
            while not self.stop.wait(0.3):
                run_scheduled(averages)
                evaluator.run_pass(EVAL_NOW)
                self.passes += 1

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        time.sleep(CONFIG.write_margin.total_seconds())  # the last writes are surely seen by the processor
        with psycopg.connect(self.url) as conn, psycopg.connect(self.url, autocommit=True) as averages:
            run_scheduled(averages)  # the last periods, then the passes that judge them
            for _ in range(2):
                Evaluator(conn, self.rules, self.config).run_pass(EVAL_NOW)


def _ingested(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(one_row(conn.execute(
            "SELECT (SELECT count(*) FROM sweeper_telemetry) + (SELECT count(*) FROM station_telemetry)"
            " + (SELECT count(*) FROM bin_status) + (SELECT count(*) FROM bin_deposits)"
            " + (SELECT count(*) FROM camera_detections) + (SELECT count(*) FROM cems_readings)"
            " + (SELECT count(*) FROM dead_letters)"))[0])


def _wait_settled(url: str, timeout: float = 120) -> None:
    deadline, last, still = time.monotonic() + timeout, -1, 0
    while time.monotonic() < deadline and still < 4:
        now = _ingested(url)
        still = still + 1 if now == last else 0
        last = now
        time.sleep(0.5)


def simulate_day(url: str, broker: MosquittoServer, tmp: Path, faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One simulated day through broker → collector → database → evaluator; returns the ground truth."""
    scenario = tmp / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"name": "alerts-ground-truth", **FLEET, "faults": faults}))
    _register(url, scenario)
    truth_file = tmp / "truth.jsonl"
    start = DAY_START
    # the day plus ten minutes of the next: the units report past midnight, so the day is complete
    messages = [(topic, payload) for topic, payload, _ in generate(
        scenario, seed=SEED, start=start.timestamp(), duration_s=86400 + 600, city=CITY,
        ground_truth_path=truth_file)]
    settings = load_settings(database_url=url, mqtt_url=broker.url, city=CITY, data_dir=tmp,
                             collector_client_id=f"gt-collector-{free_port()}", collector_metrics_port=0,
                             auto_register_devices=True)
    collector = Collector(settings, serve_metrics=False)
    collector.start()
    try:
        assert collector.wait_connected(10)
        with Evaluation(url) as evaluation:
            publish(broker.port, messages, client_id=f"gt-sim-{free_port()}")
            _wait_settled(url)
        assert evaluation.passes > 3  # evaluated while the data streamed in, not only at the end
    finally:
        collector.stop()
    # every reading reached the rules: none refused by the registry, no device the registry did not know
    assert registry_refusals(url) == {"auto_registered": []}
    return read_ground_truth(truth_file)


def fired_alerts(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM alerts WHERE fired_at IS NOT NULL ORDER BY started_at").fetchall()


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _subjects(record: dict[str, Any]) -> set[str]:
    point = (record.get("details") or {}).get("point_id")
    return {f"device:{record['device_id']}"} | ({f"point:{point}"} if point else set())


def _explains(record: dict[str, Any], alert: dict[str, Any], slack: timedelta = timedelta(hours=2)) -> bool:
    name = record["expected_effect"].get("alert")
    if name is None or alert["rule_id"] not in {name, *ALSO.get(name, ())}:
        return False
    subjects = _subjects(record) | {f"point:{(record.get('details') or {}).get('point_id')}"}
    if alert["subject"] not in subjects and alert["rule_id"] != "camera_smoke_fire":
        return False
    end = alert["resolved_at"] or datetime.max.replace(tzinfo=UTC)
    return alert["started_at"] <= _ts(record["end"]) + slack and end >= _ts(record["start"]) - slack


def check(truth: list[dict[str, Any]], found: list[dict[str, Any]], day_end: datetime) -> dict[str, list[str]]:
    """Problems by kind: missed, wrong_resolution, false_positive, alert_during_no_alert."""
    problems: dict[str, list[str]] = {"missed": [], "wrong_resolution": [], "false_positive": [],
                                      "alert_during_no_alert": []}
    expecting = [r for r in truth if "alert" in r["expected_effect"]]
    for record in expecting:
        name = record["expected_effect"]["alert"]
        exact = [a for a in found if a["rule_id"] == name and _explains(record, a)]
        if not exact:
            problems["missed"].append(f"{name} on {record['device_id']} {record['start']}–{record['end']}")
            continue
        end = _ts(record["end"])
        if end < day_end - timedelta(hours=1):
            latest_ok = end + RESOLVE_SLACK.get(name, timedelta(minutes=90))
            if not any(a["resolved_at"] is not None and a["resolved_at"] <= latest_ok for a in exact):
                problems["wrong_resolution"].append(
                    f"{name} on {record['device_id']}: resolved {[a['resolved_at'] for a in exact]}, truth ended {end}")
    for alert in found:
        if not any(_explains(r, alert) for r in expecting):
            problems["false_positive"].append(f"{alert['rule_id']} {alert['subject']} {alert['started_at']}: "
                                              f"{alert['summary']}")
    for record in (r for r in truth if "no_alert" in r["expected_effect"]):
        for alert in found:
            if alert["subject"] in _subjects(record) and not any(_explains(r, alert) for r in expecting) \
                    and alert["started_at"] <= _ts(record["end"]) and (alert["resolved_at"] is None or
                                                                      alert["resolved_at"] >= _ts(record["start"])):
                problems["alert_during_no_alert"].append(f"{record['fault']} on {record['device_id']}: "
                                                         f"{alert['rule_id']}")
    return problems


@pytest.fixture
def broker(make_mosquitto: Any) -> Iterator[MosquittoServer]:
    server = make_mosquitto()
    yield server
    server.stop()


@pytest.mark.clock
def test_injected_faults_raise_exactly_the_expected_alerts(fresh_db: str, broker: MosquittoServer,
                                                           tmp_path: Path) -> None:
    truth = simulate_day(fresh_db, broker, tmp_path, FAULTS)
    found = fired_alerts(fresh_db)
    problems = check(truth, found, DAY_END)
    injected = [r for r in truth if r["source"] == "injected" and "alert" in r["expected_effect"]]
    print(f"\nground truth: {len(truth)} records, {len(injected)} injected faults expecting an alert; "
          f"{len(found)} alerts fired; false positives: {len(problems['false_positive'])}")
    for kind, items in problems.items():
        for item in items:
            print(f"  {kind}: {item}")
    assert {r["expected_effect"]["alert"] for r in injected} >= {
        "device_offline", "cems_nox_half_hourly", "cems_co_half_hourly", "bin_fire"}
    assert problems == {"missed": [], "wrong_resolution": [], "false_positive": [], "alert_during_no_alert": []}


def _replay(url: str) -> list[dict[str, Any]]:
    """Forget every alert and evaluate the stored day again in one pass (a batch replay)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM alerts; DELETE FROM alert_eval_state; DELETE FROM alert_watermarks")
        Evaluator(conn, load_files(default_rule_files()), CONFIG).run_pass(EVAL_NOW)
    return fired_alerts(url)


def _spans(found: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {(a["rule_id"], a["subject"], a["started_at"], a["resolved_at"]) for a in found}


@pytest.mark.clock
def test_clean_day_raises_no_false_positive(fresh_db: str, broker: MosquittoServer, tmp_path: Path) -> None:
    truth = simulate_day(fresh_db, broker, tmp_path, [])
    found = fired_alerts(fresh_db)
    problems = check(truth, found, DAY_END)
    print(f"\nclean day: {len(truth)} ground-truth records "
          f"({sum('alert' in r['expected_effect'] for r in truth)} alert-worthy model events), "
          f"{len(found)} alerts fired, false positives: {len(problems['false_positive'])}")
    for kind, items in problems.items():
        for item in items:
            print(f"  {kind}: {item}")
    assert problems == {"missed": [], "wrong_resolution": [], "false_positive": [], "alert_during_no_alert": []}
    # the same day judged in one batch pass gives the same alerts as judging it while it streamed in
    assert _spans(_replay(fresh_db)) == _spans(found)
