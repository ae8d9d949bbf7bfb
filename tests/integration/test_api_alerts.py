"""Alerts, silences and the live alert stream over the HTTP API, against a real TimescaleDB."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.db import one_row
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key, serve
from tests.support.db_clock import database_now

T0 = datetime(2024, 5, 1, tzinfo=UTC)

ALERTS_SQL = """
INSERT INTO sites (site_id, kind, name, parent_id) VALUES
  ('futian', 'district', 'Futian', NULL), ('ts-1', 'transfer_station', 'TS 1', 'futian'),
  ('luohu', 'district', 'Luohu', NULL);
INSERT INTO alerts (alert_id, rule_id, fingerprint, device_id, site_id, kind, severity, state, summary, value,
                    threshold, started_at, fired_at, resolved_at) VALUES
  (1, 'station_h2s', 'station_h2s:TS-1', 'TS-1', 'ts-1', 'transfer_station', 'major', 'firing',
      'H2S 0.12 mg/m3 above 0.06', 0.12, 0.06, %(t0)s + interval '1 hour', %(t0)s + interval '1 hour', NULL),
  (2, 'sweeper_low_soc', 'sweeper_low_soc:SW-1', 'SW-1', 'futian', 'sweeper', 'minor', 'pending',
      'SOC low', 9, 10, %(t0)s + interval '2 hours', NULL, NULL),
  (3, 'sweeper_low_soc', 'sweeper_low_soc:SW-2', 'SW-2', 'luohu', 'sweeper', 'minor', 'resolved',
      'SOC low', 9, 10, %(t0)s, %(t0)s, %(t0)s + interval '30 minutes'),
  (4, 'bin_fire', 'bin_fire:BIN-1', 'BIN-1', 'luohu', 'bin', 'critical', 'firing',
      'fire', 1, 1, %(t0)s + interval '3 hours', %(t0)s + interval '3 hours', NULL);
INSERT INTO alert_history (alert_id, at, from_state, to_state, actor) VALUES
  (1, %(t0)s + interval '1 hour', NULL, 'pending', 'evaluator'),
  (1, %(t0)s + interval '1 hour', 'pending', 'firing', 'evaluator');
"""


@pytest.fixture
def alerts_db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(ALERTS_SQL, {"t0": T0})
    return fresh_db


@pytest.fixture
def client(alerts_db: str, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings(alerts_db, tmp_path))) as c:
        yield c


@pytest.fixture
def viewer(alerts_db: str) -> dict[str, str]:
    return auth(mint_key(alerts_db, "viewer"))


@pytest.fixture
def supervisor(alerts_db: str) -> dict[str, str]:
    return auth(mint_key(alerts_db, "supervisor", "duty-supervisor"))


def ids(client: TestClient, headers: dict[str, str], query: str) -> list[int]:
    response = client.get(f"/alerts?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return [a["alert_id"] for a in response.json()["items"]]


# --- alerts -------------------------------------------------------------------------------------------

def test_alerts_filter_by_state_severity_site_kind_and_time(client: TestClient, viewer: dict[str, str]) -> None:
    assert ids(client, viewer, "") == [4, 2, 1, 3]  # newest first
    assert ids(client, viewer, "state=firing") == [4, 1]
    assert ids(client, viewer, "state=firing&state=pending") == [4, 2, 1]
    assert ids(client, viewer, "severity=minor") == [2, 3]
    assert ids(client, viewer, "site_id=futian") == [2, 1]  # ts-1 is below futian
    assert ids(client, viewer, "kind=sweeper&state=resolved") == [3]
    assert ids(client, viewer, "device_id=TS-1") == [1]
    assert ids(client, viewer, "rule_id=sweeper_low_soc") == [2, 3]
    window = {"from": (T0 + timedelta(minutes=30)).isoformat(), "to": (T0 + timedelta(hours=3)).isoformat()}
    assert [a["alert_id"] for a in client.get("/alerts", params=window, headers=viewer).json()["items"]] == [2, 1]
    assert_error(client.get("/alerts?severity=bad", headers=viewer), 422, "validation_error", "query.severity.0")


def test_alert_pages_do_not_skip_or_repeat(client: TestClient, viewer: dict[str, str]) -> None:
    seen: list[int] = []
    cursor = None
    while True:
        page = client.get("/alerts", params={"limit": 1} | ({"cursor": cursor} if cursor else {}),
                          headers=viewer).json()
        seen += [a["alert_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [4, 2, 1, 3]


def test_acknowledge_records_who_when_and_why(client: TestClient, viewer: dict[str, str],
                                              supervisor: dict[str, str]) -> None:
    assert_error(client.post("/alerts/1/acknowledge", json={}, headers=viewer), 403, "forbidden")
    response = client.post("/alerts/1/acknowledge", json={"comment": "crew on the way"}, headers=supervisor)
    assert response.status_code == 200, response.text
    alert = response.json()
    assert alert["acknowledged_by"] == "duty-supervisor" and alert["ack_comment"] == "crew on the way"
    assert alert["acknowledged_at"] is not None and alert["state"] == "firing"
    history = client.get("/alerts/1/history", headers=viewer).json()
    assert [h["to_state"] for h in history] == ["pending", "firing", "acknowledged"]
    assert history[-1]["actor"] == "duty-supervisor" and history[-1]["comment"] == "crew on the way"
    assert ids(client, viewer, "acknowledged=true") == [1]

    assert_error(client.post("/alerts/3/acknowledge", json={}, headers=supervisor), 409, "conflict")  # resolved
    assert_error(client.post("/alerts/999/acknowledge", json={}, headers=supervisor), 404, "not_found")
    assert_error(client.post("/alerts/1/acknowledge", json={"comment": "x" * 2001}, headers=supervisor), 422,
                 "validation_error", "body.comment")
    assert_error(client.post("/alerts/1/acknowledge", json={"note": "typo"}, headers=supervisor), 422,
                 "validation_error", "body.note")


def test_resolve_by_hand_records_who_and_why(client: TestClient, viewer: dict[str, str],
                                             supervisor: dict[str, str]) -> None:
    assert_error(client.post("/alerts/1/resolve", json={}, headers=viewer), 403, "forbidden")
    response = client.post("/alerts/1/resolve", json={"comment": "fire put out"}, headers=supervisor)
    assert response.status_code == 200, response.text
    alert = response.json()
    assert alert["state"] == "resolved" and alert["resolved_by"] == "duty-supervisor"
    assert alert["resolved_at"] is not None
    history = client.get("/alerts/1/history", headers=viewer).json()
    assert [h["to_state"] for h in history] == ["pending", "firing", "resolved"]
    assert history[-1]["actor"] == "duty-supervisor" and history[-1]["comment"] == "fire put out"
    assert history[-1]["details"] == {"reason": "cleared by hand"}
    assert_error(client.post("/alerts/1/resolve", json={}, headers=supervisor), 409, "conflict")  # already resolved
    assert_error(client.post("/alerts/999/resolve", json={}, headers=supervisor), 404, "not_found")


def test_assign_and_unassign(client: TestClient, viewer: dict[str, str], supervisor: dict[str, str]) -> None:
    assert client.post("/alerts/4/assign", json={"assignee": "li.wei"}, headers=supervisor).json()["assignee"] \
        == "li.wei"
    assert client.get("/alerts/4", headers=viewer).json()["assignee"] == "li.wei"
    assert client.post("/alerts/4/assign", json={"assignee": None}, headers=supervisor).json()["assignee"] is None
    history = client.get("/alerts/4/history", headers=viewer).json()
    assert [(h["to_state"], h["details"]) for h in history] == [("assigned", {"assignee": "li.wei"}),
                                                                  ("assigned", {"assignee": None})]
    assert_error(client.get("/alerts/999/history", headers=viewer), 404, "not_found")


# --- silences -----------------------------------------------------------------------------------------

def test_silence_lifecycle(client: TestClient, alerts_db: str, viewer: dict[str, str],
                           supervisor: dict[str, str]) -> None:
    # a silence's status is judged by the database's now(): its windows are set around that clock
    now = database_now(alerts_db)
    body = {"matchers": [{"label": "site_id", "op": "=", "value": "ts-1"}],
            "ends_at": (now + timedelta(hours=2)).isoformat(), "comment": "compactor maintenance"}
    assert_error(client.post("/silences", json=body, headers=viewer), 403, "forbidden")
    created = client.post("/silences", json=body, headers=supervisor)
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["status"] == "active" and silence["created_by"] == "duty-supervisor"

    later = body | {"starts_at": (now + timedelta(days=1)).isoformat(),
                    "ends_at": (now + timedelta(days=1, hours=1)).isoformat()}
    pending = client.post("/silences", json=later, headers=supervisor).json()
    assert pending["status"] == "pending"
    assert [s["silence_id"] for s in client.get("/silences?status=active", headers=viewer).json()["items"]] == \
        [silence["silence_id"]]

    edited = client.put(f"/silences/{silence['silence_id']}", headers=supervisor,
                        json=body | {"comment": "extended", "ends_at": (now + timedelta(hours=4)).isoformat()})
    assert edited.status_code == 200 and edited.json()["comment"] == "extended"

    for sid in (silence["silence_id"], pending["silence_id"]):
        expired = client.delete(f"/silences/{sid}", headers=supervisor)
        assert expired.status_code == 200 and expired.json()["status"] == "expired"
    assert_error(client.delete(f"/silences/{silence['silence_id']}", headers=supervisor), 409, "conflict")
    assert_error(client.delete("/silences/999", headers=supervisor), 404, "not_found")
    assert_error(client.put(f"/silences/{silence['silence_id']}", json=body, headers=supervisor), 409, "conflict")
    assert client.get(f"/silences/{silence['silence_id']}", headers=viewer).json()["comment"] == "extended"


def test_silence_validation_names_the_field(client: TestClient, alerts_db: str, supervisor: dict[str, str]) -> None:
    now = database_now(alerts_db)  # the machine's clock, as the API's own checks are (hours of margin)
    good = {"matchers": [{"label": "rule_id", "op": "=~", "value": "station_.*"}],
            "ends_at": (now + timedelta(hours=1)).isoformat()}

    def post(**changes: object) -> httpx.Response:
        return client.post("/silences", json=good | changes, headers=supervisor)

    assert post().status_code == 201
    assert_error(post(matchers=[{"label": "rule_id", "op": "=~", "value": "("}]), 422, "validation_error",
                 "body.matchers.0.value")
    assert_error(post(matchers=[]), 422, "validation_error", "body.matchers")
    assert_error(post(matchers=[{"label": "Site", "value": "x"}]), 422, "validation_error", "body.matchers.0.label")
    assert_error(post(ends_at=(now - timedelta(hours=1)).isoformat()), 422, "validation_error", "body.ends_at")
    assert_error(post(ends_at=(now + timedelta(days=120)).isoformat()), 422, "validation_error", "body.ends_at")
    assert_error(post(starts_at=(now + timedelta(hours=2)).isoformat()), 422, "validation_error", "body.ends_at")


# --- live stream --------------------------------------------------------------------------------------

POOL_SIZE = 2  # small, to show that open streams do not hold pooled connections


@pytest.fixture
def live_api(alerts_db: str, tmp_path: Path) -> Iterator[str]:
    """The app served by uvicorn on a free port (an endless SSE response needs a real server)."""
    with serve(create_app(api_settings(alerts_db, tmp_path), pool_size=POOL_SIZE)) as url:
        yield url


def read_events(url: str, headers: dict[str, str], events: queue.Queue[tuple[str, str]],
                ready: threading.Event, stop: threading.Event) -> None:
    """Collect (event, data) pairs from an SSE stream until told to stop (the server shutting down
    under a stopped reader is expected)."""
    try:
        with httpx.Client(timeout=httpx.Timeout(5, read=30)) as http, \
                http.stream("GET", url, headers=headers) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            event = "message"
            for line in r.iter_lines():
                if line == ": listening":
                    ready.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.put((event, line[6:]))
                if stop.is_set():
                    return
    except httpx.TransportError:
        if not stop.is_set():
            raise


def test_stream_delivers_engine_notifications_and_api_acknowledgements(live_api: str, alerts_db: str,
                                                                      viewer: dict[str, str],
                                                                      supervisor: dict[str, str]) -> None:
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    reader = threading.Thread(target=read_events, daemon=True,
                              args=(f"{live_api}/alerts/stream?severity=major", viewer, events, ready, stop))
    reader.start()
    assert ready.wait(10), "stream did not start listening"

    # what the alert engine does on a transition
    engine_event = {"event": "firing", "alert": {"alert_id": 1, "severity": "major", "state": "firing"}}
    with psycopg.connect(alerts_db, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('sanitel_alerts', %s)",
                     (json.dumps({"event": "firing", "alert": {"alert_id": 4, "severity": "critical"}}),))
        conn.execute("SELECT pg_notify('sanitel_alerts', %s)", (json.dumps(engine_event),))
    kind, data = events.get(timeout=10)
    assert kind == "alert" and json.loads(data) == engine_event  # the critical one was filtered out

    response = httpx.post(f"{live_api}/alerts/1/acknowledge", json={"comment": "on it"}, headers=supervisor)
    assert response.status_code == 200, response.text
    kind, data = events.get(timeout=10)
    payload = json.loads(data)
    assert kind == "alert" and payload["event"] == "acknowledged" and payload["actor"] == "duty-supervisor"
    assert payload["alert"]["alert_id"] == 1 and payload["alert"]["ack_comment"] == "on it"
    # the notice names the history row it announces, as the engine's notices do
    history = httpx.get(f"{live_api}/alerts/1/history", headers=viewer).json()
    assert history[-1]["to_state"] == "acknowledged" and payload["history_id"] == history[-1]["id"]
    stop.set()


def test_stream_says_resync_after_losing_the_database_and_recovers(live_api: str, alerts_db: str,
                                                                   viewer: dict[str, str]) -> None:
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    ready, stop = threading.Event(), threading.Event()
    threading.Thread(target=read_events, daemon=True,
                     args=(f"{live_api}/alerts/stream", viewer, events, ready, stop)).start()
    assert ready.wait(10)
    with psycopg.connect(alerts_db, autocommit=True) as conn:
        killed = one_row(conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                      " WHERE datname = current_database() AND query LIKE 'LISTEN%'"))[0]
        assert killed == 1
        assert events.get(timeout=10)[0] == "resync"
        # the listener comes back by itself; notifications flow again
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            conn.execute("SELECT pg_notify('sanitel_alerts', '{\"alert\": {\"alert_id\": 2}}')")
            try:
                kind, data = events.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        else:
            raise AssertionError("no notification after the listener reconnected")
    assert kind == "alert" and json.loads(data)["alert"]["alert_id"] == 2
    stop.set()


def test_open_streams_do_not_hold_database_connections(live_api: str, viewer: dict[str, str]) -> None:
    streams = []
    with httpx.Client(timeout=httpx.Timeout(5, read=30)) as http:
        try:
            for _ in range(POOL_SIZE + 2):
                stream = http.stream("GET", f"{live_api}/alerts/stream", headers=viewer)
                response = stream.__enter__()
                streams.append(stream)
                assert next(response.iter_lines()) == ": listening"
            # every pooled connection would be taken by now if the streams kept theirs
            assert httpx.get(f"{live_api}/alerts", headers=viewer, timeout=10).status_code == 200
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


def test_stream_needs_a_key(live_api: str) -> None:
    response = httpx.get(f"{live_api}/alerts/stream", timeout=5)
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


# --- rules --------------------------------------------------------------------------------------------

H2S_RULE = {"id": "station.h2s_boundary", "kind": "threshold", "source": "station_telemetry", "field": "h2s_mg_m3",
            "op": ">", "threshold": 0.06, "clear": 0.05, "for": "5m", "severity": "major",
            "summary": "boundary H2S {value} above {threshold}"}
SHIPPED_RULE = """
rules:
  - id: sweeper.low_soc
    kind: threshold
    source: sweeper_telemetry
    field: soc_pct
    op: "<"
    threshold: 10
    severity: minor
    summary: "SOC {value} below {threshold}"
"""


@pytest.fixture
def rules_client(alerts_db: str, tmp_path: Path) -> Iterator[TestClient]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "fleet.yaml").write_text(SHIPPED_RULE)
    with TestClient(create_app(api_settings(alerts_db, tmp_path, rules_dir=rules_dir))) as c:
        yield c


def test_rules_crud_is_admin_only_and_validated(rules_client: TestClient, alerts_db: str,
                                                supervisor: dict[str, str]) -> None:
    c = rules_client
    admin = auth(mint_key(alerts_db, "admin", "ops-admin"))
    assert_error(c.post("/rules", json=H2S_RULE, headers=supervisor), 403, "forbidden")
    created = c.post("/rules", json=H2S_RULE, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["origin"] == "api" and created.json()["updated_by"] == "ops-admin"
    with psycopg.connect(alerts_db) as conn:  # stored as written, for the engine to load
        stored = one_row(conn.execute("SELECT definition FROM alert_rules WHERE rule_id = 'station.h2s_boundary'"))
    assert stored[0] == {k: v for k, v in H2S_RULE.items() if k != "id"}
    assert_error(c.post("/rules", json=H2S_RULE, headers=admin), 409, "conflict")

    error = assert_error(c.post("/rules", json=H2S_RULE | {"id": "x.y", "field": "h2s"}, headers=admin), 422,
                         "invalid_rule", "body.field")
    assert "h2s_mg_m3" in str(error["message"])  # the validator's suggestion reaches the user
    assert_error(c.post("/rules", json=H2S_RULE | {"id": "x.y", "threshold": "high"}, headers=admin), 422,
                 "invalid_rule", "body.threshold")
    assert_error(c.post("/rules/validate", json=H2S_RULE | {"kind": "magic"}, headers=supervisor), 422,
                 "invalid_rule", "body.kind")

    changed = c.put("/rules/station.h2s_boundary", json=H2S_RULE | {"threshold": 0.1}, headers=admin)
    assert changed.status_code == 200 and changed.json()["definition"]["threshold"] == 0.1
    assert_error(c.put("/rules/other", json=H2S_RULE, headers=admin), 422, "validation_error", "body.id")
    assert c.delete("/rules/station.h2s_boundary", headers=admin).status_code == 204
    assert_error(c.get("/rules/station.h2s_boundary", headers=supervisor), 404, "not_found")


def test_overriding_and_restoring_a_shipped_rule(rules_client: TestClient, alerts_db: str,
                                                 viewer: dict[str, str]) -> None:
    c = rules_client
    admin = auth(mint_key(alerts_db, "admin"))
    shipped = c.get("/rules/sweeper.low_soc", headers=viewer).json()
    assert shipped["origin"] == "file" and shipped["enabled"] is True and shipped["definition"]["threshold"] == 10
    assert_error(c.post("/rules", json={**shipped["definition"], "id": "sweeper.low_soc"}, headers=admin), 409,
                 "conflict")
    assert_error(c.delete("/rules/sweeper.low_soc", headers=admin), 409, "conflict")

    off = c.put("/rules/sweeper.low_soc", json={**shipped["definition"], "enabled": False}, headers=admin).json()
    assert off["origin"] == "api" and off["overrides_shipped"] is True and off["enabled"] is False
    listed = {r["rule_id"]: r for r in c.get("/rules", headers=viewer).json()["rules"]}
    assert listed["sweeper.low_soc"]["enabled"] is False

    assert c.delete("/rules/sweeper.low_soc", headers=admin).status_code == 204
    assert c.get("/rules/sweeper.low_soc", headers=viewer).json()["origin"] == "file"
