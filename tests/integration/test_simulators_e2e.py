"""Simulator → broker → the real collector → TimescaleDB: what lands in the tables is what the ground
truth says — rows for valid readings (duplicates once), dead letters with the recorded reasons. This
is where the simulator's idea of the contract meets the collector's."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.schemas.readings import BY_KIND_STREAM
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from sanitel.simulators.contract import ContractError, check_message
from sanitel.simulators.run import generate, simulate
from sanitel.simulators.truth import read_ground_truth

CITY = "sime2e"
START = "2026-03-10T06:30:00+08:00"  # a fixed morning in the past, as a compressed run's is


@pytest.fixture
def collector(fresh_db: str, mqtt_server: MosquittoServer, tmp_path: Path) -> Iterator[str]:
    settings = load_settings(database_url=fresh_db, mqtt_url=mqtt_server.url, data_dir=tmp_path, city=CITY,
                             collector_client_id=f"sim-e2e-{mqtt_server.port}", collector_metrics_port=0)
    running = Collector(settings, serve_metrics=False)
    running.start()
    yield fresh_db
    running.stop()


def expected_rows(messages: list[tuple[str, bytes, float]]) -> tuple[Counter[str], int]:
    """Distinct readings per table (a redelivery is the same row) and how many messages are invalid."""
    keys: dict[str, set[tuple[object, ...]]] = {t.table: set() for t in BY_KIND_STREAM.values()}
    invalid = 0
    for topic, payload, _ in messages:
        try:
            readings = check_message(topic, payload)
        except ContractError:
            invalid += 1
            continue
        for r in readings:
            reading = r.reading
            keys[type(reading).table].add((r.device_id, reading.ts, reading.seq, getattr(reading, "data_kind", "")))
    return Counter({table: len(k) for table, k in keys.items()}), invalid


def test_a_faulted_run_lands_as_the_ground_truth_says(collector: str, mqtt_server: MosquittoServer,
                                                      tmp_path: Path) -> None:
    start = START
    truth_path = tmp_path / "truth.jsonl"
    summary = simulate("demo", broker_url=mqtt_server.url, city=CITY, seed=6, duration_s=2 * 3600.0, speed=0.0,
                       start=start, faults="duplicate,malformed,out_of_order,clock_skew,spike",
                       ground_truth_path=truth_path, engine="fast")
    messages = list(generate("demo", seed=6, start=start, duration_s=2 * 3600.0, city=CITY,
                             faults="duplicate,malformed,out_of_order,clock_skew,spike"))
    assert summary.acked == summary.messages == len(messages)
    rows, invalid = expected_rows(messages)
    truth = [r for r in read_ground_truth(truth_path) if r["source"] == "injected"]
    dead: Counter[str] = Counter()
    for record in truth:
        if "dead_letter" in record["expected_effect"]:
            dead[record["expected_effect"]["dead_letter"]] += record["messages"]
    assert sum(dead.values()) == invalid > 0

    def stored() -> tuple[Counter[str], Counter[str]]:
        with psycopg.connect(collector) as conn:
            tables = Counter({t: one_row(conn.execute(f"SELECT count(*) FROM {t}"))[0]  # table names from schemas
                              for t in rows})
            reasons: Counter[str] = Counter(dict(conn.execute("SELECT reason_code, count(*) FROM dead_letters GROUP BY 1")))
        return tables, reasons

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and stored() != (rows, dead):
        time.sleep(0.5)
    assert stored() == (rows, dead)
