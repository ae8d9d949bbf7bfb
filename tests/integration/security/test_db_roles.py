"""Least privilege in the database (issue 12, item 4): each component's role (migration 0070) can do its job and no more.

The test clusters trust local connections, so a test connects as any role once it may log in (the roles are created
NOLOGIN); fixture rows are written as the superuser. Without migration 0070 every component ran as the superuser: each
"cannot" below would succeed, and the roles would not exist at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors

from sanitel.api.app import create_app
from sanitel.cli import main as sanitel_main
from sanitel.db import one_row
from sanitel.ingest.collector import Collector
from sanitel.processors.maintenance import run_pass
from sanitel.processors.stored_spans import record_spans
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.integration.security.as_roles import enable_logins, role_url
from tests.support.alerts_db import add_device, alerts, insert, notifications, ruleset, run, series
from tests.support.alerts_db import at as device_at
from tests.support.api_helpers import api_settings, auth, mint_key
from tests.support.mqtt_tools import count, publish, wait_for

READING_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
                  "cems_readings", "truck_telemetry", "truck_events", "weighbridge_tickets")
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)  # device time of the fixture readings: fixed, in the past


@pytest.fixture
def roles_db(fresh_db: str) -> str:
    """A fresh database whose component roles may log in (no password: the test cluster trusts 127.0.0.1)."""
    enable_logins(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, mqtt_username, mqtt_password_hash, hj212_password_hash)"
                     " VALUES ('sw-1', 'sweeper', 'sw-1', '$7$1000$c2FsdA==$aGFzaA==', NULL)")
        conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, soc_pct)"
                     " VALUES ('sw-1', %s, 0, %s, 50)", (T0, T0))
        conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash)"
                     " VALUES ('0123456789abcdef', 'ops', 'admin', 'scrypt$1$1$1$00$00')")
    return fresh_db


def _refused(url: str, statement: str, *params: object) -> bool:
    """True when the role of ``url`` is refused ``statement`` for lack of privilege (ownership included)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(statement, params or None)
        except errors.InsufficientPrivilege:
            return True
    return False


def test_ingest_role_cannot_rewrite_readings_drop_tables_or_read_keys(roles_db: str) -> None:
    """Attack: whoever takes over the collector (a parser bug, a leaked URL) connects with its credentials. As the
    superuser it could rewrite or erase stored readings (emission records a plant is judged by), read API key hashes,
    give itself broker credentials, or drop the schema. As sanitel_ingest it can only add readings."""
    ingest = role_url(roles_db, "ingest")
    with psycopg.connect(ingest, autocommit=True) as conn:  # what it is for still works, new chunks included
        for ts in (T0, T0 - timedelta(days=30)):
            conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, soc_pct)"
                         " VALUES ('sw-1', %s, 1, %s, 51)", (ts, ts))
    for table in READING_TABLES:
        assert _refused(ingest, f"UPDATE {table} SET received_at = now()"), table
        assert _refused(ingest, f"DELETE FROM {table}"), table
        assert _refused(ingest, f"TRUNCATE {table}"), table
        assert _refused(ingest, f"DROP TABLE {table}"), table
    assert _refused(ingest, "SELECT * FROM api_keys")
    assert _refused(ingest, "SELECT mqtt_password_hash FROM devices")
    assert _refused(ingest, "SELECT * FROM mqtt_service_users")
    assert _refused(ingest, "SELECT * FROM alert_webhooks")  # their signing secrets
    # auto-registration makes bare devices only: never one with broker credentials of the attacker's choosing
    assert _refused(ingest, "INSERT INTO devices (device_id, kind, mqtt_username, mqtt_password_hash)"
                            " VALUES ('evil', 'sweeper', 'evil', '$7$1$x$y')")
    assert _refused(ingest, "UPDATE devices SET kind = 'cems' WHERE device_id = 'sw-1'")
    assert _refused(ingest, "CREATE TABLE evil (x int)")
    assert _refused(ingest, "ALTER TABLE dead_letters ADD COLUMN evil int")
    assert _refused(ingest, "DELETE FROM dead_letters")
    # it records the spans of device time it wrote; erasing them would let a rollup hide late readings
    with psycopg.connect(ingest, autocommit=True) as conn, conn.cursor() as cur:
        record_spans(cur, "sweeper_telemetry", [T0])
    assert _refused(ingest, "DELETE FROM stored_spans")
    assert _refused(ingest, "UPDATE stored_spans SET spans = '{}'")
    assert count(roles_db, "SELECT count(*) FROM sweeper_telemetry") == 3


def test_api_role_cannot_write_readings(roles_db: str) -> None:
    """Attack: a flaw in the API (an injection, a stolen pool connection) must not let it forge or erase the
    readings reports and compliance judgements are computed from."""
    api = role_url(roles_db, "api")
    for table in READING_TABLES:
        assert _refused(api, f"INSERT INTO {table} (device_id, ts, received_at) SELECT device_id, ts, received_at"
                             " FROM sweeper_telemetry"), table
        assert _refused(api, f"UPDATE {table} SET received_at = now()"), table
        assert _refused(api, f"DELETE FROM {table}"), table
        assert _refused(api, f"DROP TABLE {table}"), table
    assert _refused(api, "INSERT INTO cems_averages (device_id, pollutant, period, standard, period_start, period_end,"
                         " status, valid) VALUES ('c', 'so2', '1h', 'gb', now(), now(), 'valid', true)")
    assert _refused(api, "DELETE FROM api_keys")  # revoked keys stay, for the audit trail
    assert _refused(api, "DELETE FROM stored_spans")  # it reads them: which buckets a rollup lacks
    assert _refused(api, "CREATE TABLE evil (x int)")
    assert count(roles_db, "SELECT count(*) FROM sweeper_telemetry") == 1


def test_processor_role_runs_a_maintenance_pass_and_drops_only_old_chunks_of_its_tables(roles_db: str) -> None:
    """The scheduled processor's role computes rollups and CEMS averages and applies retention. Dropping chunks
    needs the owner, so it goes through sanitel_drop_chunks, which must not become a way to drop anything else:
    not another table, not recent data, and drop_chunks itself stays the owner's."""
    with psycopg.connect(roles_db, autocommit=True) as conn:
        conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, soc_pct, stored_at)"
                     " VALUES ('sw-1', %s, 0, %s, 40, %s)", (T0 - timedelta(days=500),) * 2 + (T0,))
        conn.execute("INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, soc_pct, stored_at)"
                     " VALUES ('sw-1', %s, 1, %s, 60, %s)", (T0 + timedelta(minutes=1),) * 2 + (T0,))
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('cems-1', 'cems')")
        conn.execute("INSERT INTO cems_readings (device_id, ts, received_at, so2_zs_mg_m3, o2_pct, stored_at)"
                     " VALUES ('cems-1', %s, %s, 20, 11, %s)", (T0,) * 3)
        conn.execute("INSERT INTO dead_letter_payloads (sha256, size, payload, first_received_at, last_received_at)"
                     " VALUES ('ab', 1, 'x', %s, %s)", (T0 - timedelta(days=200),) * 2)
        conn.execute("INSERT INTO dead_letters (received_at, topic, reason_code, reason, message_key, payload_sha256)"
                     " VALUES (%s, 't', 'invalid_json', 'r', 'k', 'ab')", (T0 - timedelta(days=200),))
    settings = load_settings(database_url=roles_db)
    processor = role_url(roles_db, "processor")
    with psycopg.connect(processor, autocommit=True) as conn:
        assert one_row(conn.execute("SELECT current_user"))[0] == "sanitel_processor"
        result = run_pass(conn, settings, now=T0 + timedelta(hours=1))
    assert result.ran
    assert result.rollup_buckets["sweeper_telemetry"] >= 1
    assert result.cems_watermark is not None
    assert result.dropped["sweeper_telemetry"] == 1 and result.dropped["dead_letters"] == 1
    assert count(roles_db, "SELECT count(*) FROM sweeper_telemetry") == 2  # sw-1's T0 row and the minute after
    assert count(roles_db, "SELECT count(*) FROM sweeper_telemetry_5m") >= 1
    assert count(roles_db, "SELECT count(*) FROM dead_letter_payloads") == 0
    # the definer function is no skeleton key
    assert _refused(processor, "SELECT sanitel_drop_chunks('api_keys', now() - interval '1 day')")
    assert _refused(processor, "SELECT sanitel_drop_chunks('sweeper_telemetry', now() + interval '1 day')")
    assert _refused(processor, "SELECT drop_chunks('sweeper_telemetry', older_than => now())")
    assert _refused(processor, "DELETE FROM sweeper_telemetry")
    assert _refused(role_url(roles_db, "ingest"), "SELECT sanitel_drop_chunks('sweeper_telemetry', %s)",
                    T0 - timedelta(days=400))
    assert count(roles_db, "SELECT count(*) FROM sweeper_telemetry") == 2


LOW_SOC = {"id": "t.low_soc", "kind": "threshold", "summary": "SOC {value:.0f} % < {threshold:.0f} %",
           "severity": "major", "source": "sweeper_telemetry", "field": "soc_pct", "op": "<", "threshold": 20}


def test_evaluator_role_runs_an_evaluation_pass(fresh_db: str) -> None:
    """The evaluator's role reads readings and the registry and writes alerts, their history, its own state and the
    notification outbox — and cannot touch readings or keys."""
    enable_logins(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "sw-9", "sweeper")
        insert(conn, "sweeper_telemetry", "sw-9", series(device_at(0), 30, [30, 15, 10], "soc_pct"))
    evaluator = role_url(fresh_db, "evaluator")
    report = run(evaluator, ruleset(LOW_SOC))
    assert report is not None
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "firing" and alert["device_id"] == "sw-9"
    assert [n["event"] for n in notifications(fresh_db)] == ["firing"]
    assert count(fresh_db, "SELECT count(*) FROM alert_eval_state") >= 1
    assert _refused(evaluator, "DELETE FROM sweeper_telemetry")
    assert _refused(evaluator, "SELECT * FROM api_keys")
    assert _refused(evaluator, "SELECT mqtt_password_hash FROM devices")


def test_collector_as_ingest_role_stores_readings_dead_letters_and_registers_devices(
        roles_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """End to end: a collector connected as sanitel_ingest stores readings (auto-registering a new device), its
    last-seen row, and dead letters with their payload — the same bad payload twice widens one payload row."""
    make_collector(roles_db, mqtt_server.url, ingest_database_url=role_url(roles_db, "ingest"))
    ts = int((T0 + timedelta(minutes=5)).timestamp() * 1000)
    publish(mqtt_server.port, [
        ("sanitation/shenzhen/sweeper/sw-new/telemetry", f'{{"ts": {ts}, "seq": 1, "soc_pct": 70}}'.encode()),
        ("sanitation/shenzhen/sweeper/sw-1/telemetry", f'{{"ts": {ts}, "seq": 2, "soc_pct": 71}}'.encode()),
        ("sanitation/shenzhen/sweeper/sw-bad/telemetry", b"{not json"),
        ("sanitation/shenzhen/sweeper/sw-bad2/telemetry", b"{not json"),
    ])
    assert wait_for(lambda: count(roles_db, "SELECT count(*) FROM sweeper_telemetry") == 3
                    and count(roles_db, "SELECT count(*) FROM dead_letters") == 2, 30)
    assert count(roles_db, "SELECT count(*) FROM devices WHERE device_id = 'sw-new' AND auto_registered") == 1
    assert count(roles_db, "SELECT count(*) FROM device_last_seen WHERE device_id IN ('sw-1', 'sw-new')") == 2
    assert count(roles_db, "SELECT count(*) FROM dead_letter_payloads") == 1
    with psycopg.connect(roles_db) as conn:  # the writes were the ingest role's, not the superuser's
        backends = {r[0] for r in conn.execute("SELECT usename FROM pg_stat_activity WHERE datname = current_database()"
                                               " AND application_name LIKE 'sanitel %'").fetchall()}
    assert backends <= {"sanitel_ingest"}


def test_api_as_api_role_serves_devices_registers_one_and_makes_a_key(
        roles_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: the API connected as sanitel_api lists and registers devices, and ``sanitel keys create`` (which
    connects as the API's role) makes a key that then works."""
    api = role_url(roles_db, "api")
    admin = auth(mint_key(roles_db, "admin", "ops-admin"))
    with TestClient(create_app(api_settings(roles_db, tmp_path, api_database_url=api))) as client:
        listed = client.get("/devices", headers=admin)
        assert listed.status_code == 200, listed.text
        assert [d["device_id"] for d in listed.json()["items"]] == ["sw-1"]
        made = client.post("/devices", json={"device_id": "sw-2", "kind": "sweeper"}, headers=admin)
        assert made.status_code == 201, made.text
        monkeypatch.setenv("SANITEL_DATABASE_URL", roles_db)
        monkeypatch.setenv("SANITEL_API_DATABASE_URL", api)
        monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("SANITEL_CONFIG", str(tmp_path / "none.yaml"))
        (tmp_path / "none.yaml").write_text("{}\n")
        assert sanitel_main(["keys", "create", "--role", "viewer", "--name", "made-as-api-role"]) == 0
        token = capsys.readouterr().out.splitlines()[0]
        assert client.get("/devices/sw-2", headers=auth(token)).status_code == 200
    with psycopg.connect(roles_db) as conn:
        assert one_row(conn.execute("SELECT count(*) FROM api_keys WHERE name = 'made-as-api-role'"))[0] == 1
