"""Issue 12 item 5: registry changes reach the collector's caches within seconds (LISTEN/NOTIFY), not at restart.

Through a real Mosquitto, a real collector and a real PostgreSQL, with the full reload set to an hour so that only
the notifications can explain what is seen. Each test's docstring names the attack it shows; every change is
observed by polling with a generous deadline."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from sanitel.ingest.collector import Collector
from sanitel.schemas.hj212 import encode_frame
from sanitel.secret_hash import hash_secret
from sanitel.servers import MosquittoServer
from tests.support.mqtt_tools import count, publish, wait_for

CITY = "regtest"
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed past instant: nothing here reads the clock
TS = int(DEVICE_TIME.timestamp() * 1000)
DEADLINE_S = 30.0  # for anything asynchronous; generous for a slow CI machine
HOUR_S = 3600.0  # the full reload: never within a test
_seq = itertools.count(1)


def j(body: object) -> bytes:
    return json.dumps(body).encode()


def started(db: str, mqtt_url: str, make_collector: Callable[..., Collector], **overrides: object) -> Collector:
    collector = make_collector(db, mqtt_url, city=CITY, registry_refresh_s=HOUR_S, **overrides)
    assert collector.registry is not None and collector.registry.wait_listening(DEADLINE_S)
    return collector


def dead(db: str, device_id: str, reason_code: str) -> int:
    return count(db, "SELECT count(*) FROM dead_letters WHERE device_id = %s AND reason_code = %s", device_id,
                 reason_code)


def until(db: str, send: Callable[[], None], done: Callable[[], bool]) -> bool:
    """Send (a new message each time) until ``done``: the change may not be seen by the first ones."""
    def attempt() -> bool:
        send()
        return wait_for(done, 1.0)
    return wait_for(attempt, DEADLINE_S, interval=0.0)


@pytest.mark.clock
def test_a_rotated_hj212_password_applies_within_seconds(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: an HJ 212 password leaked and is rotated in the registry, yet the collector keeps accepting frames
    with it (it cached passwords until restart). Now the old password is dead-lettered and the new one accepted
    within seconds of the UPDATE."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, hj212_password_hash) VALUES ('MN-ROT', 'cems', %s)",
                     (hash_secret("old-pw"),))
    started(fresh_db, mqtt_server.url, make_collector)
    topic = f"sanitation/{CITY}/cems/MN-ROT/hj212"

    def frame(pw: str) -> bytes:  # a new reading each time: one minute later
        minute = next(_seq)
        cp = f"DataTime=2026031008{minute // 60:02d}{minute % 60:02d};a21002-Rtd=120.5,a21002-Flag=N"
        return encode_frame("31", "2011", "MN-ROT", pw, cp)

    publish(mqtt_server.port, [(topic, frame("old-pw"))])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM cems_readings") == 1, DEADLINE_S)  # cached now
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE devices SET hj212_password_hash = %s WHERE device_id = 'MN-ROT'",
                     (hash_secret("new-pw"),))
    landed = count(fresh_db, "SELECT count(*) FROM cems_readings")
    def new_password() -> None:
        publish(mqtt_server.port, [(topic, frame("new-pw"))])

    assert until(fresh_db, new_password, lambda: count(fresh_db, "SELECT count(*) FROM cems_readings") > landed)
    publish(mqtt_server.port, [(topic, frame("old-pw"))])
    assert wait_for(lambda: dead(fresh_db, "MN-ROT", "hj212_wrong_password") >= 1, DEADLINE_S)


def test_a_changed_kind_applies_within_seconds(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: a device re-registered as another kind (say a sweeper's id handed to a transfer station) keeps
    being accepted under its old kind, because the collector cached kinds for ever. Now readings of the old kind
    are kind_mismatch within seconds of the UPDATE, and readings of the new kind land."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('dev-k', 'sweeper')")
    started(fresh_db, mqtt_server.url, make_collector)

    def sweeper() -> None:
        publish(mqtt_server.port, [(f"sanitation/{CITY}/sweeper/dev-k/telemetry",
                                    j({"ts": TS + next(_seq), "soc_pct": 50}))])

    sweeper()
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1, DEADLINE_S)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE devices SET kind = 'transfer_station' WHERE device_id = 'dev-k'")
    assert until(fresh_db, sweeper, lambda: dead(fresh_db, "dev-k", "kind_mismatch") >= 1)
    publish(mqtt_server.port, [(f"sanitation/{CITY}/transfer_station/dev-k/telemetry",
                                j({"ts": TS, "h2s_mg_m3": 0.1}))])
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM station_telemetry") == 1, DEADLINE_S)


def test_a_device_moved_to_another_gateway_is_refused_from_the_old_one_within_seconds(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: a bin is moved from gateway A to gateway B (A was decommissioned or compromised), yet A can go on
    writing its readings because the collector cached where the bin was. Now A's batches for it are
    not_behind_gateway within seconds of the UPDATE, and B's land."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO gateways (gateway_id) VALUES ('gw-a'), ('gw-b')")
        conn.execute("INSERT INTO devices (device_id, kind, gateway_id) VALUES ('bin-m', 'bin', 'gw-a')")
    started(fresh_db, mqtt_server.url, make_collector)

    def batch(gateway_id: str) -> None:
        reading = {"kind": "bin", "device_id": "bin-m", "stream": "status", "ts": TS + next(_seq)}
        publish(mqtt_server.port, [(f"sanitation/{CITY}/gateway/{gateway_id}/batch", j({"readings": [reading]}))])

    batch("gw-a")
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM bin_status") == 1, DEADLINE_S)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE devices SET gateway_id = 'gw-b' WHERE device_id = 'bin-m'")
    assert until(fresh_db, lambda: batch("gw-a"), lambda: dead(fresh_db, "bin-m", "not_behind_gateway") >= 1)
    landed = count(fresh_db, "SELECT count(*) FROM bin_status")
    batch("gw-b")
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM bin_status") == landed + 1, DEADLINE_S)


def test_changes_made_while_the_listener_is_disconnected_are_not_missed(
        fresh_db: str, mqtt_server: MosquittoServer, make_collector: Callable[..., Collector]) -> None:
    """Attack: change the registry while the collector's LISTEN connection is down (a network blip, a
    restarted pooler), so the notification is lost and the stale entry is trusted until the full reload.
    Now the cache is bypassed while not listening and dropped whole on reconnecting: the change applies both
    while the listener cannot reconnect and after it has."""
    with psycopg.connect(fresh_db) as conn:
        conn.execute("INSERT INTO devices (device_id, kind) VALUES ('dev-l', 'sweeper')")
    collector = started(fresh_db, mqtt_server.url, make_collector)
    registry = collector.registry
    assert registry is not None
    dbname = fresh_db.rsplit("/", 1)[1]

    def sweeper() -> None:
        publish(mqtt_server.port, [(f"sanitation/{CITY}/sweeper/dev-l/telemetry",
                                    j({"ts": TS + next(_seq), "soc_pct": 50}))])

    sweeper()
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1, DEADLINE_S)
    connects = registry.listen_connects
    server = fresh_db.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(server, autocommit=True) as admin, psycopg.connect(fresh_db, autocommit=True) as session:
        def mismatches() -> int:  # on a session opened before: no new one may connect meanwhile
            row = session.execute("SELECT count(*) FROM dead_letters WHERE device_id = 'dev-l' "
                                  "AND reason_code = 'kind_mismatch'").fetchone()
            return int(row[0]) if row else 0

        # no new session may connect (the collector's writer keeps its own), then the listener's is ended
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'sanitel registry listener' AND datname = %s", (dbname,))
            session.execute("UPDATE devices SET kind = 'camera' WHERE device_id = 'dev-l'")  # its NOTIFY is lost
            assert wait_for(lambda: not registry.listening, DEADLINE_S)
            sweeper()
            assert wait_for(lambda: mismatches() == 1, DEADLINE_S)  # the cache is bypassed meanwhile
        finally:
            admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
    assert wait_for(lambda: registry.listening and registry.listen_connects > connects, DEADLINE_S)
    sweeper()
    assert wait_for(lambda: dead(fresh_db, "dev-l", "kind_mismatch") == 2, DEADLINE_S)
    assert count(fresh_db, "SELECT count(*) FROM sweeper_telemetry") == 1
