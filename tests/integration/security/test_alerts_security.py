"""Issue 12, item 7: the alert engine as an attacker (or a careless edit) approaches it, against a real TimescaleDB,
real local HTTP receivers (threading http.server on free ports) and, for the process test, a real broker.

Each test names the attack it shows and fails on the engine as it was: silence regexes run on Python's
backtracking ``re`` inside the pass; a summary like ``{value.foo}`` validated and then crashed the evaluator (and a
bad rule file stopped it at start-up, so ``sanitel run`` took the whole stack down); webhook POSTs ran inside an open
transaction, unsigned, with one socket timeout, an unbounded read and redirects followed; a webhook could not be
removed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sanitel.alerts.evaluator import PassReport
from sanitel.alerts.notify.outbox import create_webhook
from sanitel.alerts.notify.webhook import HttpLimits, RetryPolicy, WebhookDispatcher
from sanitel.alerts.rules import RuleSet, load_database_rules, validate_rule_dict
from sanitel.alerts.service import cli_webhook_id, register_webhooks
from sanitel.alerts.silences import create_silence
from sanitel.api.app import create_app
from sanitel.cli import main
from sanitel.db import load_migrations
from sanitel.servers import MosquittoServer, free_port
from tests.support.alerts_db import NOW, add_device, alerts, at, insert, notifications, ruleset, run
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key
from tests.support.db_clock import database_now
from tests.support.mqtt_tools import wait_for

FIRE = {"id": "t.bin_fire", "kind": "threshold", "summary": "{device_id} fire", "severity": "critical",
        "source": "bin_status", "field": "fire_alarm", "op": "==", "threshold": True}
DEADLINE_S = 60.0  # waiting for something asynchronous: generous, the CI machine may be 2x slower


def fire(url: str, device: str, minute: float = 0) -> None:
    """A bin reporting a fire at device time ``at(minute)`` (registered on first use)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM devices WHERE device_id = %s", (device,)).fetchone():
            add_device(conn, device, "bin")
        insert(conn, "bin_status", device, [{"ts": at(minute), "fire_alarm": True, "seq": int(minute * 10)}])


def firing_devices(url: str) -> set[str]:
    return {a["device_id"] for a in alerts(url) if a["state"] == "firing" and a["device_id"]}


def deliveries(url: str, webhook_id: str | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM alert_webhook_deliveries WHERE %(w)s::text IS NULL OR webhook_id = %(w)s"
                            " ORDER BY notification_id", {"w": webhook_id}).fetchall()


def in_thread(work: Callable[[], Any], deadline_s: float = 120.0) -> Any:
    """Run ``work`` in a thread and wait for it with a generous deadline: a pass that hangs fails the test instead of
    hanging it (the thread is a daemon)."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(work()), daemon=True)
    worker.start()
    worker.join(deadline_s)
    assert not worker.is_alive(), f"still running after {deadline_s:.0f} s"
    assert len(outcome) == 1
    return outcome[0]


# --- a real HTTP receiver ---------------------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on a free port; ``respond(handler, receiver)`` answers each request after it was recorded.
    ``arrived`` is set when a request came in, ``done`` when a handler has returned (answered, or given up because
    the client went away — ``errors`` then says how)."""

    respond: Callable[[BaseHTTPRequestHandler, Receiver], None]
    seen: list[Seen] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    sent: int = 0  # body bytes a streaming answer got out

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.seen.append(Seen(self.command, self.path, dict(self.headers), body))
                receiver.arrived.set()
                try:
                    receiver.respond(self, receiver)
                except OSError as exc:  # the client closed the connection on us
                    receiver.errors.append(exc)
                finally:
                    receiver.done.set()

            do_POST = do_GET = handle_any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer_ok(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


def answer_after(event: threading.Event) -> Callable[[BaseHTTPRequestHandler, Receiver], None]:
    """Accept the POST and answer nothing until ``event`` (at most two minutes)."""
    def respond(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        event.wait(120)
        answer_ok(handler, receiver)
    return respond


@contextmanager
def receiving(respond: Callable[[BaseHTTPRequestHandler, Receiver], None] = answer_ok) -> Iterator[Receiver]:
    receiver = Receiver(respond)
    try:
        yield receiver
    finally:
        receiver.close()


@contextmanager
def dispatching(url: str, limits: HttpLimits, policy: RetryPolicy | None = None) -> Iterator[WebhookDispatcher]:
    dispatcher = WebhookDispatcher(url, policy=policy or RetryPolicy(base_backoff_s=60, jitter=0.0), limits=limits,
                                   poll_s=0.05, refresh_s=0.2)
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop()


def add_webhook(url: str, webhook_id: str, target: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        secret = create_webhook(conn, webhook_id, target)
    assert secret is not None
    return secret


LIMITS = HttpLimits(connect_timeout_s=5.0, read_timeout_s=30.0, max_response_bytes=64 * 1024)


# --- silences: a regex cannot hang the evaluator --------------------------------------------------------------

def test_a_pathological_silence_regex_cannot_hang_the_evaluator(fresh_db: str) -> None:
    """Attack: a supervisor silences ``device_id =~ (.*.*)*x``. The evaluator matches every silence against every
    alert inside its pass, under the evaluation lock; on Python's backtracking ``re`` this pattern takes time
    exponential in the value's length (16 characters: seconds; a 64-character device id: forever), so all alerting
    froze. On RE2 the pass completes, and the alert (whose id does not end in x) is announced."""
    device = "bin-" + "a" * 60
    fire(fresh_db, device)
    with psycopg.connect(fresh_db) as conn:
        create_silence(conn, [{"label": "device_id", "op": "=~", "value": "(.*.*)*x"}],
                       NOW - timedelta(hours=1), NOW + timedelta(hours=1), "mallory")
    report: PassReport = in_thread(lambda: run(fresh_db, ruleset(FIRE)))
    assert report.ran
    (alert,) = alerts(fresh_db)
    assert alert["device_id"] == device and alert["state"] == "firing" and alert["silenced_by"] is None
    assert [n["event"] for n in notifications(fresh_db)] == ["firing"]


def test_a_regex_only_a_backtracking_engine_runs_is_refused_naming_the_field(fresh_db: str, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str],
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: the same through the API and the CLI — a pattern RE2 cannot run (a backreference) must not be stored
    to be run by a backtracking engine later: API 422 naming the matcher, CLI error naming the option."""
    supervisor, admin = auth(mint_key(fresh_db, "supervisor")), auth(mint_key(fresh_db, "admin"))
    ends = (database_now(fresh_db) + timedelta(hours=1)).isoformat()
    bad = [{"label": "site_id", "value": "x"}, {"label": "device_id", "op": "=~", "value": r"(a+)+\1"}]
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        error = assert_error(client.post("/silences", json={"matchers": bad, "ends_at": ends}, headers=supervisor),
                             422, "validation_error", "body.matchers.1.value")
        assert "RE2" in error["message"]
        assert_error(client.post("/webhooks", json={"url": "http://127.0.0.1:9/x", "matchers": bad}, headers=admin),
                     422, "validation_error", "body.matchers.1.value")
    monkeypatch.setenv("SANITEL_DATABASE_URL", fresh_db)
    monkeypatch.delenv("SANITEL_API_DATABASE_URL", raising=False)
    assert main(["webhooks", "add", "http://127.0.0.1:9/x", "--match", "site_id=x", "--match",
                 r"device_id=~(a+)+\1"]) == 2
    assert "--match (matchers.1.value)" in capsys.readouterr().err
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM silences").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM alert_webhooks").fetchone() == (0,)


# --- rules: one bad rule is quarantined, the others go on ------------------------------------------------------

def test_a_bad_rule_is_quarantined_and_the_other_rules_still_fire(fresh_db: str) -> None:
    """Attack (or a careless edit): an API-managed rule whose summary is ``{value.foo}`` — the old validator checked
    only the name before the dot — and a rule that raises while evaluated. Before: rendering raised AttributeError
    out of the pass, every pass, so no alert fired any more and the evaluator process died (``sanitel run`` then
    stopped the whole stack). Now: the stored rule fails validation on load, the failing one is rolled back and
    quarantined, the other rules fire, and a ``rule_quarantined`` warning stands for each bad rule until it is
    fixed."""
    bad_definition = {k: v for k, v in FIRE.items() if k != "id"} | {"summary": "{value.foo}"}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO alert_rules (rule_id, definition, created_by, updated_by) VALUES (%s, %s, 'x', 'x')",
                     ("ops.stored_bad", Jsonb(bad_definition)))
    # the same summary slipped past validation (as with the old validator): it fails when an alert is raised
    failing = validate_rule_dict({**FIRE, "id": "ops.runtime_bad"}).model_copy(update={"summary": "{value.foo}"})
    fire(fresh_db, "bin-1")

    def rules(*extra: Any) -> RuleSet:
        loaded = ruleset(FIRE)
        for rule in extra:
            loaded.add(rule, "test")
        with psycopg.connect(fresh_db) as conn:
            load_database_rules(conn, loaded)  # as the evaluator service composes them
        return loaded

    report: PassReport = in_thread(lambda: run(fresh_db, rules(failing)))
    assert report.ran
    by_rule = {(a["rule_id"], a["subject"]): a for a in alerts(fresh_db)}
    assert by_rule[("t.bin_fire", "device:bin-1")]["state"] == "firing"
    assert not any(rule_id.startswith("ops.") for rule_id, _ in by_rule)  # the failing rule's writes rolled back
    stored = by_rule[("rule_quarantined", "rule:ops.stored_bad")]
    runtime = by_rule[("rule_quarantined", "rule:ops.runtime_bad")]
    for quarantined in (stored, runtime):
        assert quarantined["state"] == "firing" and quarantined["severity"] == "warning"
    assert "{value.foo}" in stored["summary"] and "attribute and index access" in stored["summary"]
    assert "AttributeError" in runtime["summary"]
    with psycopg.connect(fresh_db) as conn:  # the pass reports only what was committed
        known = {r[0] for r in conn.execute("SELECT alert_id FROM alerts").fetchall()}
    assert {alert_id for alert_id, _ in report.transitions} <= known

    # fixed: the stored row validates, the other rule renders — their quarantine alerts resolve
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE alert_rules SET definition = %s, updated_at = now() WHERE rule_id = 'ops.stored_bad'",
                     (Jsonb({**bad_definition, "summary": "{device_id} fire (ops)"}),))
    fixed = failing.model_copy(update={"summary": "{device_id} fire (runtime)"})
    assert in_thread(lambda: run(fresh_db, rules(fixed), NOW + timedelta(minutes=1))).ran
    states = {a["subject"]: a["state"] for a in alerts(fresh_db, "rule_quarantined")}
    assert states == {"rule:ops.stored_bad": "resolved", "rule:ops.runtime_bad": "resolved"}
    assert "bin-1" in firing_devices(fresh_db)


def test_the_evaluator_process_keeps_running_with_bad_rules(fresh_db: str, mqtt_server: MosquittoServer,
                                                            tmp_path: Path) -> None:
    """Attack (or a typo): a rule file that is not YAML and one with an unrenderable summary in ``rules_dir``, and a
    bad API rule. Before: the evaluator refused to start (ConfigError, exit 2) — and ``sanitel run``, which stops
    everything when a child exits, stopped the whole stack. Now it runs, evaluates the good rules and raises a
    quarantine alert for each bad one."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "broken.yaml").write_text("rules: [\n")
    (rules_dir / "site.yaml").write_text(json.dumps({"rules": [{**FIRE, "id": "x.bad", "summary": "{value.foo}"},
                                                               FIRE]}))
    now = database_now(fresh_db)  # the process judges device time by the machine's clock
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "bin-1", "bin")
        insert(conn, "bin_status", "bin-1", [{"ts": now, "received_at": now, "fire_alarm": True}])
        conn.execute("INSERT INTO alert_rules (rule_id, definition) VALUES ('ops.bad', %s)",
                     (Jsonb({"kind": "offline", "severity": "minor", "summary": "{value:.1f}"}),))
    env = {**os.environ, "SANITEL_DATABASE_URL": fresh_db, "SANITEL_MQTT_URL": mqtt_server.url,
           "SANITEL_RULES_DIR": str(rules_dir), "SANITEL_DATA_DIR": str(tmp_path), "SANITEL_CITY": "testcity"}
    proc = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "evaluator", "--interval", "0.3",
                             "--metrics-port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def quarantined() -> set[str]:
            return {a["subject"] for a in alerts(fresh_db, "rule_quarantined") if a["state"] == "firing"}

        expected = {"rule:file:broken.yaml", "rule:x.bad", "rule:ops.bad"}
        assert wait_for(lambda: expected <= quarantined() or proc.poll() is not None, DEADLINE_S), quarantined()
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert wait_for(lambda: "bin-1" in firing_devices(fresh_db), DEADLINE_S)  # the good rules run
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- webhooks ------------------------------------------------------------------------------------------------

def test_a_slow_receiver_does_not_delay_evaluation(fresh_db: str) -> None:
    """Attack: a webhook receiver that accepts the POST and does not answer. Before: the POST ran inside an open
    database transaction, and the evaluator reads only rows stored before the oldest open transaction began
    (``queries.safe_upto``) — so new readings went unevaluated for as long as the receiver held on (up to 5
    minutes). Now no transaction is open during the POST: a pass run while the POST hangs sees the new fire."""
    release = threading.Event()
    with receiving(answer_after(release)) as receiver:
        add_webhook(fresh_db, "slow", receiver.url)
        fire(fresh_db, "bin-1", 0)
        run(fresh_db, ruleset(FIRE))
        with dispatching(fresh_db, HttpLimits(read_timeout_s=120.0)):
            assert receiver.arrived.wait(DEADLINE_S)  # the POST is under way and hangs
            fire(fresh_db, "bin-2", 1)
            report: PassReport = in_thread(lambda: run(fresh_db, ruleset(FIRE), NOW + timedelta(minutes=1)))
            # the order of events: the pass has completed, and the receiver has still not answered
            assert not receiver.done.is_set()
            assert report.ran and firing_devices(fresh_db) == {"bin-1", "bin-2"}
            release.set()
            assert receiver.done.wait(DEADLINE_S)
            assert wait_for(lambda: [d["status"] for d in deliveries(fresh_db)] == ["delivered", "delivered"],
                            DEADLINE_S)


def _drip(stop: threading.Event) -> Callable[[BaseHTTPRequestHandler, Receiver], None]:
    """Answer one header byte every 0.2 s — each read well within any socket timeout — until told to stop."""
    def respond(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for _ in range(600):
            if stop.wait(0.2):
                return
            handler.wfile.write(b"X")
    return respond


@pytest.mark.parametrize("behaviour", ["silent", "drip"])
def test_a_receiver_that_never_finishes_answering_is_cut_at_the_read_timeout(fresh_db: str, behaviour: str) -> None:
    """Attack: a receiver that never answers, or answers one byte at a time. Before: one socket timeout (10 s) per
    read, so a receiver sending a byte every few seconds held the delivery (and its transaction) indefinitely. Now
    the whole answer must come within ``webhook_read_timeout_s``; the attempt fails with that reason."""
    stop = threading.Event()
    with receiving(answer_after(stop) if behaviour == "silent" else _drip(stop)) as receiver:
        add_webhook(fresh_db, "stalling", receiver.url)
        fire(fresh_db, "bin-1")
        run(fresh_db, ruleset(FIRE))
        try:
            with dispatching(fresh_db, HttpLimits(connect_timeout_s=5.0, read_timeout_s=1.0)):
                assert wait_for(lambda: "read timeout" in (deliveries(fresh_db)[0]["last_error"] or ""), DEADLINE_S), \
                    deliveries(fresh_db)
            if behaviour == "drip":  # the sender hung up on the dripping receiver, whose next bytes found no one
                assert receiver.done.wait(DEADLINE_S) and receiver.errors
        finally:
            stop.set()
        (row,) = deliveries(fresh_db)
        assert row["status"] == "pending" and row["attempts"] == 1  # retried later, with backoff


def test_redirects_are_not_followed(fresh_db: str) -> None:
    """Attack: the receiver answers ``302 Location: <somewhere else>`` to steer the POST — alert data and all — to
    another address (e.g. a service inside the network). Before: urllib followed it (as a GET). Now a 3xx is a failed
    attempt whose reason names the target, and the target hears nothing."""
    with receiving() as target:
        def redirect(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
            handler.send_response(302)
            handler.send_header("Location", target.url + "/internal")
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with receiving(redirect) as redirector:
            add_webhook(fresh_db, "redirecting", redirector.url)
            fire(fresh_db, "bin-1")
            run(fresh_db, ruleset(FIRE))
            with dispatching(fresh_db, LIMITS):
                assert wait_for(lambda: deliveries(fresh_db)[0]["attempts"] == 1, DEADLINE_S)
            (row,) = deliveries(fresh_db)
            assert row["status"] == "pending"
            assert f"HTTP 302 Found: redirect to {target.url}/internal not followed" in row["last_error"]
            assert len(redirector.seen) == 1 and target.seen == []


def test_a_huge_answer_is_read_only_up_to_the_limit(fresh_db: str) -> None:
    """Attack: a receiver answering ``200`` with a 256 MiB body. Before: the whole answer was read into the
    evaluator's memory. Now at most ``webhook_max_response_bytes`` are read and the connection is closed: the
    receiver cannot send the rest."""
    total = 256 * 1024 * 1024
    chunk = b"\0" * 65536

    def huge(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        while receiver.sent < total:
            handler.wfile.write(chunk)
            receiver.sent += len(chunk)

    with receiving(huge) as receiver:
        add_webhook(fresh_db, "huge", receiver.url)
        fire(fresh_db, "bin-1")
        run(fresh_db, ruleset(FIRE))
        with dispatching(fresh_db, HttpLimits(max_response_bytes=64 * 1024)):
            assert wait_for(lambda: deliveries(fresh_db)[0]["status"] == "delivered", DEADLINE_S)
            assert receiver.done.wait(DEADLINE_S)
        assert receiver.errors and receiver.sent < total  # cut off: the sender closed the connection


def verify(secret: str, seen: Seen) -> bool:
    """What a receiver does (alerts/README.md, "Webhook signatures"), written out independently of the sender."""
    timestamp = seen.headers["X-Sanitel-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + seen.body, hashlib.sha256).hexdigest()
    return timestamp.isdigit() and hmac.compare_digest(expected, seen.headers["X-Sanitel-Signature"])


def test_every_post_is_signed_with_the_webhook_secret_shown_once(fresh_db: str, tmp_path: Path) -> None:
    """Attack: anyone who can reach a receiver could forge alerts to it — the POSTs were unsigned. Now an admin adds
    the webhook through the API and gets its secret once; every POST carries a timestamp and an HMAC-SHA256 of
    timestamp and body under that secret; rotating the secret switches the signature over; nobody below admin
    manages webhooks, and no listing shows a secret."""
    viewer, supervisor, admin = (auth(mint_key(fresh_db, role)) for role in ("viewer", "supervisor", "admin"))
    with receiving() as receiver, TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        body = {"webhook_id": "signed", "url": receiver.url}
        assert_error(client.post("/webhooks", json=body, headers=supervisor), 403, "forbidden")
        assert_error(client.get("/webhooks", headers=viewer), 403, "forbidden")
        created = client.post("/webhooks", json=body, headers=admin)
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        assert len(secret) >= 32
        assert_error(client.post("/webhooks", json=body, headers=admin), 409, "conflict")
        listed = client.get("/webhooks", headers=admin)
        assert [w["webhook_id"] for w in listed.json()] == ["signed"] and secret not in listed.text

        fire(fresh_db, "bin-1")
        run(fresh_db, ruleset(FIRE))
        with dispatching(fresh_db, LIMITS) as dispatcher:
            assert wait_for(lambda: len(receiver.seen) == 1, DEADLINE_S)
            first = receiver.seen[0]
            assert verify(secret, first) and not verify(secret + "x", first)
            assert json.loads(first.body)["alerts"][0]["device_id"] == "bin-1"
            tampered = Seen(first.method, first.path, first.headers, first.body.replace(b"bin-1", b"bin-9"))
            assert not verify(secret, tampered)

            rotated = client.post("/webhooks/signed/rotate-secret", headers=admin)
            assert rotated.status_code == 200, rotated.text
            new_secret = rotated.json()["secret"]
            fire(fresh_db, "bin-2", 1)
            run(fresh_db, ruleset(FIRE), NOW + timedelta(minutes=1))
            dispatcher.wake()
            assert wait_for(lambda: len(receiver.seen) == 2, DEADLINE_S)
            assert verify(new_secret, receiver.seen[1]) and not verify(secret, receiver.seen[1])


def test_a_deleted_webhook_gets_nothing_more(fresh_db: str, tmp_path: Path) -> None:
    """Attack: a receiver that must be cut off (compromised, or gone to a new owner) — a webhook added from the CLI
    could not be removed at all. Now ``DELETE /webhooks/{id}`` removes it with its queued deliveries: the retry it
    had pending never happens and new alerts go only to the webhooks that remain."""
    admin = auth(mint_key(fresh_db, "admin"))
    answers = iter([500])

    def fail_once(handler: BaseHTTPRequestHandler, receiver: Receiver) -> None:
        handler.send_response(next(answers, 200))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with receiving(fail_once) as doomed, receiving() as witness, \
            TestClient(create_app(api_settings(fresh_db, tmp_path))) as client:
        add_webhook(fresh_db, "doomed", doomed.url)
        add_webhook(fresh_db, "witness", witness.url)
        fire(fresh_db, "bin-1")
        run(fresh_db, ruleset(FIRE))
        with dispatching(fresh_db, LIMITS, RetryPolicy(base_backoff_s=5.0, jitter=0.0)) as dispatcher:
            assert wait_for(lambda: (deliveries(fresh_db, "doomed") or [{}])[0].get("attempts") == 1, DEADLINE_S)
            retry_due = deliveries(fresh_db, "doomed")[0]["next_attempt_at"]
            assert client.delete("/webhooks/doomed", headers=admin).status_code == 204
            assert len(doomed.seen) == 1  # deleted before its retry was due
            assert wait_for(lambda: "doomed" not in dispatcher.running(), DEADLINE_S)  # its worker has ended
            assert wait_for(lambda: database_now(fresh_db) > retry_due, DEADLINE_S)  # the retry would be due now
            fire(fresh_db, "bin-2", 1)
            run(fresh_db, ruleset(FIRE), NOW + timedelta(minutes=1))
            dispatcher.wake()
            # the witness hears both alerts: the dispatcher ran its rounds, after the retry was due
            assert wait_for(lambda: {a["device_id"] for s in witness.seen for a in json.loads(s.body)["alerts"]}
                            == {"bin-1", "bin-2"}, DEADLINE_S)
        assert len(doomed.seen) == 1  # the first, failed attempt only
        assert deliveries(fresh_db, "doomed") == []
        assert [w["webhook_id"] for w in client.get("/webhooks", headers=admin).json()] == ["witness"]
        assert_error(client.delete("/webhooks/doomed", headers=admin), 404, "not_found")


def test_webhooks_are_listed_added_and_removed_from_the_cli(fresh_db: str, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI manages the same webhooks: ``add`` shows the secret once, ``list`` never shows it, ``remove`` removes;
    ``sanitel evaluator --webhook URL`` registers through the same code (and ``remove`` removes that one too)."""
    monkeypatch.setenv("SANITEL_DATABASE_URL", fresh_db)
    monkeypatch.delenv("SANITEL_API_DATABASE_URL", raising=False)
    assert main(["webhooks", "add", "http://127.0.0.1:9/hook", "--id", "ops", "--match", "severity=~critical|major"]) == 0
    shown = capsys.readouterr().out
    secret = shown.split("signing secret ", 1)[1].split()[0]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT secret, matchers FROM alert_webhooks WHERE webhook_id = 'ops'").fetchone() == (
            secret, [{"label": "severity", "op": "=~", "value": "critical|major"}])
    assert main(["webhooks", "add", "http://127.0.0.1:9/hook", "--id", "ops"]) == 2  # taken
    assert "already exists" in capsys.readouterr().err
    assert main(["webhooks", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ops" in listing and "severity=~critical|major" in listing and secret not in listing
    assert main(["webhooks", "remove", "ops"]) == 0
    assert main(["webhooks", "remove", "ops"]) == 2
    capsys.readouterr()
    assert main(["webhooks", "list"]) == 0
    assert "ops" not in capsys.readouterr().out
    # `sanitel evaluator --webhook URL`: the same code, a secret on first registration only, removable
    created = register_webhooks(fresh_db, ["http://127.0.0.1:9/cli"])
    ((cli_id, cli_secret),) = created.items()
    assert cli_id == cli_webhook_id("http://127.0.0.1:9/cli") and len(cli_secret) >= 32
    assert register_webhooks(fresh_db, ["http://127.0.0.1:9/cli"]) == {}  # restarted: same webhook, same secret
    assert main(["webhooks", "remove", cli_id]) == 0
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM alert_webhooks").fetchone() == (0,)


def test_existing_webhooks_get_a_secret_from_the_migration(fresh_db: str) -> None:
    """Webhooks made before signatures existed get their own secret (and a second run of the migration changes
    nothing), so no POST ever goes out unsigned."""
    (migration,) = [m for m in load_migrations() if m.version == "0061"]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE alert_webhooks DROP CONSTRAINT alert_webhooks_secret_check")
        conn.execute("ALTER TABLE alert_webhooks ALTER COLUMN secret DROP NOT NULL, ALTER COLUMN secret DROP DEFAULT")
        conn.execute("INSERT INTO alert_webhooks (webhook_id, url, secret) VALUES ('old-1', 'http://a/', NULL),"
                     " ('old-2', 'http://b/', NULL)")
        conn.execute(migration.sql)
        secrets_after: dict[str, str] = dict(conn.execute("SELECT webhook_id, secret FROM alert_webhooks").fetchall())
        conn.execute(migration.sql)
        assert dict(conn.execute("SELECT webhook_id, secret FROM alert_webhooks").fetchall()) == secrets_after
        conn.execute("INSERT INTO alert_webhooks (webhook_id, url) VALUES ('new', 'http://c/')")  # the default
        new = conn.execute("SELECT secret FROM alert_webhooks WHERE webhook_id = 'new'").fetchone()
    assert len(set(secrets_after.values())) == 2 and all(len(s) >= 32 for s in secrets_after.values())
    assert new is not None and len(new[0]) >= 32 and new[0] not in secrets_after.values()


def test_connection_refused_is_a_retried_failure(fresh_db: str) -> None:
    """A receiver that is down is a failed attempt with the reason, retried later (not a crash of the worker)."""
    add_webhook(fresh_db, "down", f"http://127.0.0.1:{free_port()}/hook")
    fire(fresh_db, "bin-1")
    run(fresh_db, ruleset(FIRE))
    with dispatching(fresh_db, LIMITS):
        assert wait_for(lambda: deliveries(fresh_db)[0]["attempts"] == 1, DEADLINE_S)
    (row,) = deliveries(fresh_db)
    assert row["status"] == "pending" and "Connection" in row["last_error"]
