"""Shared by the API tests: settings for an in-process app, API keys, the error shape, and the seeded
registry and readings.

The seed is written at fixed instants (``NOW``, ``DAY_START``), so what a test reads back does not depend
on the hour or the day it runs. Where the API itself compares with "now" a test holds this process's clock
at ``NOW`` (time-machine); the one comparison made by the database's ``now()`` (a device's ``online``
flag) is set up against the database's clock by the test that asserts it.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI

from sanitel.api.auth import new_key
from sanitel.api.threaded import serve_in_thread
from sanitel.servers import free_port
from sanitel.settings import Settings, load_settings

NOW = datetime(2026, 3, 10, 8, 30, tzinfo=UTC)  # when the seeded fleet was last heard from
DAY_START = datetime(2026, 3, 9, tzinfo=UTC)  # a whole UTC day before NOW, one reading a minute from SW-1

SEED_SQL = """
INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES
  ('futian', 'district', 'Futian District', NULL, 'UTC'),
  ('luohu', 'district', 'Luohu District', NULL, 'UTC'),
  ('estate-1', 'estate', 'Estate 1', 'futian', 'UTC'),
  ('sp-1', 'sorting_point', 'Point 1', 'estate-1', 'UTC'),
  ('ts-1', 'transfer_station', 'Station 1', 'futian', 'UTC'),
  ('depot-1', 'depot', 'Depot 1', 'futian', 'UTC'),
  ('depot-2', 'depot', 'Depot 2', 'luohu', 'UTC');
INSERT INTO devices (device_id, kind, site_id, name, inactivity_timeout_s) VALUES
  ('SW-1', 'sweeper', 'depot-1', 'Sweeper 1', 900),
  ('SW-2', 'sweeper', 'depot-2', 'Sweeper 2', 900),
  ('TS-1', 'transfer_station', 'ts-1', NULL, 900),
  ('BIN-1', 'bin', 'sp-1', NULL, 900),
  ('CAM-1', 'camera', 'sp-1', NULL, 900);
-- SW-1: one reading a minute for the seeded day; counters grow 0.1 km and 1/60 h a minute, with a
-- counter reset at noon (the day's distance must not go negative). SOC falls 100 -> ~52.
-- Telemetry is stored when it was received (stored_at), as the collector would have stored it.
INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, stored_at, soc_pct, speed_kmh, brush_on, work_mode,
                               swept_distance_km, work_hours_h)
SELECT 'SW-1', %(day)s + make_interval(mins => i), i, %(day)s + make_interval(mins => i),
       %(day)s + make_interval(mins => i), 100 - i / 30.0,
       10, i %% 2 = 0, CASE WHEN i < 720 THEN 'sweep' ELSE 'transport' END,
       CASE WHEN i < 720 THEN 1000 + i * 0.1 ELSE (i - 720) * 0.1 END, 50 + i / 60.0
FROM generate_series(0, 1439) AS i;
INSERT INTO sweeper_telemetry (device_id, ts, seq, received_at, stored_at, soc_pct)
VALUES ('SW-2', %(now)s - interval '1 hour', 1, %(now)s - interval '1 hour', %(now)s - interval '1 hour', 40);
INSERT INTO device_last_seen (device_id, last_ts, last_seq, last_received) VALUES
  ('SW-1', %(day)s + interval '1439 minutes', 1439, %(now)s - interval '10 seconds'),
  ('SW-2', %(now)s - interval '1 hour', 1, %(now)s - interval '1 hour');
INSERT INTO station_telemetry (device_id, ts, seq, received_at, stored_at, h2s_mg_m3, noise_dba, truck_id,
                               weighbridge_in_t, weighbridge_out_t) VALUES
  ('TS-1', %(day)s + interval '1 hour', 1, %(day)s, %(day)s, 0.05, 58, 'T1', 20, 12),
  ('TS-1', %(day)s + interval '2 hours', 2, %(day)s, %(day)s, 0.08, 61, 'T2', 18, 11),
  ('TS-1', %(day)s + interval '3 hours', 3, %(day)s, %(day)s, 0.02, 55, NULL, NULL, NULL);
INSERT INTO bin_deposits (device_id, ts, seq, received_at, point_id, household_id, category, weight_kg) VALUES
  ('BIN-1', %(day)s + interval '7 hours', 1, %(day)s, 'sp-1', 'HH-1', 'kitchen', 2.5),
  ('BIN-1', %(day)s + interval '8 hours', 2, %(day)s, 'sp-1', 'HH-1', 'recyclable', 1.0),
  ('BIN-1', %(day)s + interval '19 hours', 3, %(day)s, 'sp-1', 'HH-2', 'kitchen', 1.5),
  ('BIN-1', %(day)s - interval '3 days', 4, %(day)s, 'sp-1', 'HH-1', 'other', 9.0);
INSERT INTO bin_status (device_id, ts, seq, received_at, point_id, fill_level_pct, lid_open) VALUES
  ('BIN-1', %(day)s + interval '20 hours', 1, %(day)s, 'sp-1', 85, false);
INSERT INTO camera_detections (device_id, ts, seq, received_at, point_id, detection, confidence) VALUES
  ('CAM-1', %(day)s + interval '7 hours', 1, %(day)s, 'sp-1', 'mis_sorted', 0.9),
  ('CAM-1', %(day)s + interval '8 hours', 2, %(day)s, 'sp-1', 'mis_sorted', 0.8),
  ('CAM-1', %(day)s + interval '9 hours', 3, %(day)s, 'sp-1', 'overflow', 0.7);
"""


def seed(db_url: str) -> None:
    """The registry and readings of ``SEED_SQL``, at ``DAY_START`` and ``NOW``."""
    # a client-side cursor: several statements with parameters in one go
    with psycopg.connect(db_url, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(SEED_SQL, {"day": DAY_START, "now": NOW})


def api_settings(db_url: str, data_dir: Path, **overrides: Any) -> Settings:
    # a closed port unless a test names a broker: no test depends on the machine's 1883
    overrides.setdefault("mqtt_url", f"mqtt://127.0.0.1:{free_port()}")
    return load_settings(database_url=db_url, data_dir=data_dir, **overrides)


def mint_key(db_url: str, role: str, name: str | None = None) -> str:
    key = new_key()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, %s, %s, %s)",
                     (key.key_id, name or f"test-{role}", role, key.secret_hash))
    return key.token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The API's error shape: ``{"error": {"code", "message", "field"?}}`` with the expected status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field
    return body["error"]


def serve(app: FastAPI) -> contextlib.AbstractContextManager[str]:
    """``app`` served by uvicorn on a free port, in a thread; yields its base URL. For what needs a real
    server: endless SSE responses, concurrent clients, raw sockets."""
    return serve_in_thread(app, start_timeout_s=10)


def revoke_key(db_url: str, token: str) -> None:
    """Revoke the key of ``token``, as ``sanitel keys revoke`` does."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = %s", (token.split("_")[1],))
