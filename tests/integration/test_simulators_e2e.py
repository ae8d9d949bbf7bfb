"""Simulator → broker → the real collector → TimescaleDB: what lands in the tables is what the ground
truth says — rows for valid readings (duplicates once), dead letters with the recorded reasons. This
is where the simulator's idea of the contract meets the collector's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import AsyncConnection

from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.schemas.readings import BY_KIND_STREAM
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from sanitel.simulators.contract import ContractError, check_message
from sanitel.simulators.run import generate, simulate
from sanitel.simulators.truth import read_ground_truth
from sanitel.stack_cli import register_fleet
from tests.support.simulator_runs import register_scenario_fleet, registry_refusals

CITY = "sime2e"
START = "2026-03-10T06:30:00+08:00"  # a fixed morning in the past, as a compressed run's is


SEED = 6


@contextmanager
def running_collector(db: str, broker: MosquittoServer, data_dir: Path) -> Iterator[str]:
    settings = load_settings(database_url=db, mqtt_url=broker.url, data_dir=data_dir, city=CITY,
                             collector_client_id=f"sim-e2e-{broker.port}", collector_metrics_port=0)
    running = Collector(settings, serve_metrics=False)
    running.start()
    try:
        yield db
    finally:
        running.stop()


@pytest.fixture
def collector(fresh_db: str, mqtt_server: MosquittoServer, tmp_path: Path) -> Iterator[str]:
    """The collector on a fresh database where the demo fleet is registered as ``sanitel run`` registers it."""
    register_scenario_fleet(fresh_db, "demo", city=CITY, seed=SEED)
    with running_collector(fresh_db, mqtt_server, tmp_path) as db:
        yield db


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
    summary = simulate("demo", broker_url=mqtt_server.url, city=CITY, seed=SEED, duration_s=2 * 3600.0, speed=0.0,
                       start=start, faults="duplicate,malformed,out_of_order,clock_skew,spike",
                       ground_truth_path=truth_path, engine="fast")
    messages = list(generate("demo", seed=SEED, start=start, duration_s=2 * 3600.0, city=CITY,
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
    assert registry_refusals(collector) == {"auto_registered": []}  # the run met no device it did not know


def _stored_rows(db: str, tables: Counter[str]) -> tuple[Counter[str], int]:
    with psycopg.connect(db) as conn:
        rows = Counter({t: one_row(conn.execute(f"SELECT count(*) FROM {t}"))[0]  # table names from schemas
                        for t in tables})
        return rows, one_row(conn.execute("SELECT count(*) FROM dead_letters"))[0]


def test_a_registered_district_lands_whole_gateway_batches_and_hj212_frames_included(
        fresh_db: str, mqtt_server: MosquittoServer, tmp_path: Path) -> None:
    """The district fleet registered as ``sanitel run --scenario district`` registers it — each sorting point's
    gateway with its bins behind it, the HJ 212 units with their PW — lands whole: every batched bin reading and every
    HJ 212 frame is stored, nothing is dead-lettered, nothing auto-registered. Registering again (as each ``sanitel
    run`` does) changes nothing and keeps the passwords it is given."""

    async def register(known: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]]:
        async with await AsyncConnection.connect(fresh_db, autocommit=True) as conn:
            return await register_fleet(conn, "district", city=CITY, seed=SEED, known=known)

    first = asyncio.run(register(None))
    assert len(first["gateways"]) == 150 and len(first["devices"]) == 853
    assert asyncio.run(register(first)) == first
    with psycopg.connect(fresh_db) as conn:
        behind: dict[str, int] = dict(conn.execute(
            "SELECT gateway_id, count(*) FROM devices WHERE gateway_id IS NOT NULL GROUP BY 1").fetchall())
        with_pw = one_row(conn.execute("SELECT count(*) FROM devices WHERE hj212_password_hash IS NOT NULL"))[0]
    assert behind == {gateway_id: 4 for gateway_id in first["gateways"]} and with_pw == 3
    start = "2026-03-10T09:00:00+08:00"
    messages = list(generate("district", seed=SEED, start=start, duration_s=900.0, city=CITY, faults=[]))
    assert any("/gateway/" in topic for topic, _, _ in messages) and any(t.endswith("/hj212") for t, _, _ in messages)
    rows, invalid = expected_rows(messages)
    assert invalid == 0 and rows["bin_status"] > 0 and rows["cems_readings"] > 0
    with running_collector(fresh_db, mqtt_server, tmp_path):
        summary = simulate("district", broker_url=mqtt_server.url, city=CITY, seed=SEED, duration_s=900.0, speed=0.0,
                           start=start, faults=[], engine="fast")
        assert summary.acked == summary.messages == len(messages)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _stored_rows(fresh_db, rows) != (rows, 0):
            time.sleep(0.5)
    assert _stored_rows(fresh_db, rows) == (rows, 0)
    assert registry_refusals(fresh_db) == {"auto_registered": []}
