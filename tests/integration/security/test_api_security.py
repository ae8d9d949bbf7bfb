"""Issue 12, item 6: the HTTP API as an attacker approaches it, against a real TimescaleDB and a real uvicorn.

Each test names the attack it shows; each fails on the API as it was before (bodies read and parsed before
the key was checked and without a limit, scrypt run on a pooled connection, alert streams that outlive their
key, /health and /metrics open to anyone, request labels taken from whatever the client sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import random
import secrets
import socket
import string
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sanitel.api.app import create_app
from sanitel.api.auth import new_key
from sanitel.api.observability import METHODS, UNMATCHED
from sanitel.servers import MosquittoServer, free_port
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key, revoke_key, seed, serve

SOCKET_TIMEOUT_S = 10.0  # a server that waits for a body never sent answers only after this: the test fails


@pytest.fixture
def seeded_db(fresh_db: str) -> str:
    seed(fresh_db)
    return fresh_db


# --- helpers --------------------------------------------------------------------------------------------

def raw_request(base_url: str, head: str) -> tuple[int, bytes]:
    """Send only a request's head (no body, whatever its Content-Length says) and read the answer.

    A server that reads the body before answering waits for bytes that never come, and the socket times out."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise AssertionError("no answer: the server is waiting for the request body") from None
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), body


def _length(response: bytes) -> int:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), 0)


def post_head(path: str, content_length: int, extra: str = "") -> str:
    return (f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
            f"Content-Length: {content_length}\n{extra}")


def mint_costly_key(db_url: str, role: str, p: int) -> str:
    """A key whose stored hash is scrypt with parallelism ``p`` (the hash records its own parameters, so the
    API verifies it as any other): every check of a secret costs ``p`` times the usual — the machine under a
    slower CPU or load, without sending hundreds of requests."""
    key = new_key()
    secret = key.token.split("_", 2)[2]
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    stored = f"scrypt${2**14}$8${p}${salt.hex()}${digest.hex()}"
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO api_keys (key_id, name, role, secret_hash) VALUES (%s, %s, %s, %s)",
                     (key.key_id, f"costly-{role}", role, stored))
    return key.token


# --- 1. body size ---------------------------------------------------------------------------------------

def test_oversized_declared_body_is_refused_before_it_is_read(seeded_db: str, tmp_path: Path) -> None:
    """Attack: announce a body of gigabytes to make the API buffer and parse it. Before: the API waited for
    and read the whole body (no limit). Now: 413 on the Content-Length alone, without reading a byte."""
    admin = mint_key(seeded_db, "admin")
    with serve(create_app(api_settings(seeded_db, tmp_path))) as url:
        status, body = raw_request(url, post_head("/devices", 2 * 1024**3, f"Authorization: Bearer {admin}\n"))
        assert status == 413 and b"payload_too_large" in body


def test_chunked_body_is_counted_and_refused_past_the_limit(seeded_db: str, tmp_path: Path) -> None:
    """Attack: a chunked body (no Content-Length) of any size. Before: read whole and parsed (422 here). Now:
    counted while read and refused with 413 once past api_max_body_bytes; smaller chunked bodies still work."""
    viewer = auth(mint_key(seeded_db, "viewer"))
    with serve(create_app(api_settings(seeded_db, tmp_path, api_max_body_bytes=1024))) as url:
        def chunks(n: int) -> Iterator[bytes]:
            yield b'{"padding": "'
            for _ in range(n):
                yield b"x" * 500
            yield b'"}'

        big = httpx.post(f"{url}/rules/validate", content=chunks(4), headers=viewer, timeout=30)
        assert "content-length" not in {k.lower() for k in big.request.headers}  # really chunked
        assert_error(big, 413, "payload_too_large")
        small = httpx.post(f"{url}/rules/validate", content=chunks(1), headers=viewer, timeout=30)
        assert_error(small, 422, "validation_error")  # reached the route: a rule without its fields


# --- 2. the key before the body -------------------------------------------------------------------------

def test_key_is_checked_before_the_body_is_read(seeded_db: str, tmp_path: Path) -> None:
    """Attack: anonymous or forged-key writes with bodies, to make the API read and parse them for nothing.
    Before: FastAPI read (and waited for) the body before any dependency checked the key. Now: 401 on the
    head alone. A valid key with too low a role still gets 403 from the role check, after one verification."""
    wrong = mint_key(seeded_db, "admin")[:-4] + "AAAA"
    viewer = mint_key(seeded_db, "viewer")
    with serve(create_app(api_settings(seeded_db, tmp_path))) as url:
        status, body = raw_request(url, post_head("/silences", 100))
        assert status == 401 and b"unauthorized" in body
        status, body = raw_request(url, post_head("/silences", 100, f"Authorization: Bearer {wrong}\n"))
        assert status == 401 and b"unknown or revoked" in body
        status, body = raw_request(url, post_head("/no/such/route", 100, "X-API-Key: sntl_nonsense\n"))
        assert status == 401 and b"malformed" in body
        forbidden = httpx.post(f"{url}/devices", json={"device_id": "SW-9", "kind": "sweeper"},
                               headers=auth(viewer), timeout=30)
        assert_error(forbidden, 403, "forbidden")


# --- 3. scrypt off the pool -----------------------------------------------------------------------------

WRONG_REQUESTS = 16
COSTLY_P = 6  # 0.25-0.6 s a check: 16 wrong secrets take 4-10 s of hashing, well past the pool's 2 s timeout


def test_wrong_secrets_for_a_known_key_do_not_starve_valid_requests(seeded_db: str, tmp_path: Path) -> None:
    """Attack: 16 requests with wrong secrets for a known key id (key ids are not secret) — each costs a full
    scrypt. Before: each held a pooled connection while scrypt ran, so valid requests waited for the pool and
    got 503. Now: the key row is read on a short checkout and released; scrypt runs in a worker thread, one
    at a time per key id, so the wrong secrets queue among themselves and valid (cached) keys pass by.
    The pool has one connection here so that 16 requests exhaust it, as 16+ exhaust the default pool."""
    token = mint_costly_key(seeded_db, "viewer", COSTLY_P)
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    async def attack(url: str) -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            assert (await http.get("/sites", headers=auth(token))).status_code == 200  # verified once, cached
            attackers = [asyncio.create_task(http.get("/sites", headers=auth(wrong)))
                         for _ in range(WRONG_REQUESTS)]
            await asyncio.sleep(0.3)  # let them reach the server first
            valid = [(await http.get("/sites", headers=auth(token))).status_code for _ in range(4)]
            valid += [r.status_code for r in
                      await asyncio.gather(*(http.get("/sites", headers=auth(token)) for _ in range(4)))]
            return valid, [r.status_code for r in await asyncio.gather(*attackers)]

    with serve(create_app(api_settings(seeded_db, tmp_path), pool_size=1)) as url:
        valid, attacked = asyncio.run(attack(url))
    assert valid == [200] * 8
    assert attacked == [401] * WRONG_REQUESTS  # refused, none with 503


# --- 4. alert streams end on revocation ---------------------------------------------------------------

def test_open_stream_ends_when_its_key_is_revoked(seeded_db: str, tmp_path: Path) -> None:
    """Attack: keep reading alerts after your key was revoked, through a stream opened before. Before: the
    stream lived as long as the connection. Now: the keys of open streams are re-checked every
    api_stream_recheck_s and a revoked key's stream ends with `event: revoked` within seconds; the stream of
    a key still valid goes on."""
    revoked_token, other_token = mint_key(seeded_db, "viewer"), mint_key(seeded_db, "viewer")
    streams: dict[str, queue.Queue[str | None]] = {revoked_token: queue.Queue(), other_token: queue.Queue()}

    def read(url: str, token: str) -> None:
        lines = streams[token]  # None: the stream ended
        with contextlib.suppress(httpx.TransportError), httpx.Client(timeout=httpx.Timeout(5, read=60)) as http, \
                http.stream("GET", f"{url}/alerts/stream", headers=auth(token)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.put(line)
        lines.put(None)  # ended by the server; or cut when the server stops at the end of the test

    with serve(create_app(api_settings(seeded_db, tmp_path, api_stream_recheck_s=0.2))) as url:
        for token in streams:
            threading.Thread(target=read, args=(url, token), daemon=True).start()
            assert streams[token].get(timeout=10) == ": listening"
        revoke_key(seeded_db, revoked_token)
        seen: list[str] = []
        deadline = time.monotonic() + 10  # 50 re-checks: generous even on a slow machine
        while (line := streams[revoked_token].get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
            seen.append(line)
        assert "event: revoked" in seen, seen
        assert_error(httpx.get(f"{url}/alerts/stream", headers=auth(revoked_token), timeout=10), 401, "unauthorized")
        # the other stream still delivers
        with psycopg.connect(seeded_db, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('sanitel_alerts', '{\"alert\": {\"alert_id\": 7}}')")
        lines = [streams[other_token].get(timeout=10) for _ in range(4)]  # blank line, id, event, data
        assert 'data: {"alert": {"alert_id": 7}}' in lines, lines


# --- 5. /health -----------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_tells_anonymous_callers_only_the_status(seeded_db: str, tmp_path: Path,
                                                        mqtt_server: MosquittoServer) -> None:
    """Attack: read the broker account, file paths and internals from an open /health. Before: anonymous
    callers got every check, including the broker URL with its user name and the spool folder. Now:
    anonymous → {"status": …} only; a key gets the checks, which name no account, password or path."""
    ca = tmp_path / "secret-dir" / "ca.pem"  # missing: the TLS probe fails with an OSError naming it
    probe_url = f"mqtts://probe-account:probe-password@127.0.0.1:{mqtt_server.port}?ca={ca}"
    settings = api_settings(seeded_db, tmp_path, api_probe_mqtt_url=probe_url)
    viewer = auth(mint_key(seeded_db, "viewer"))
    with TestClient(create_app(settings)) as c:
        anonymous = c.get("/health")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "degraded"}
        detailed = c.get("/health", headers=viewer)
        assert detailed.status_code == 200 and set(detailed.json()["checks"]) >= {"database", "broker", "spool"}
        assert detailed.json()["checks"]["broker"]["status"] == "down"
        for secret in ("probe-account", "probe-password", str(tmp_path), "secret-dir", "ca.pem"):
            assert secret not in detailed.text, (secret, detailed.text)
    # reachable with the account: still not named
    settings = api_settings(seeded_db, tmp_path,
                            api_probe_mqtt_url=f"mqtt://probe-account:probe-password@127.0.0.1:{mqtt_server.port}")
    with TestClient(create_app(settings)) as c:
        detailed = c.get("/health", headers=viewer)
        assert detailed.json()["checks"]["broker"]["status"] == "ok", detailed.text
        assert "probe-account" not in detailed.text and "probe-password" not in detailed.text


def test_health_checks_are_cached_not_run_per_call(seeded_db: str, tmp_path: Path) -> None:
    """Attack: hammer the open /health so that every call runs the database checks and the broker probe.
    Before: a query set per call. Now: the checks run at most once per few seconds, whoever calls."""
    clock = FakeClock()
    viewer = auth(mint_key(seeded_db, "viewer"))
    with TestClient(create_app(api_settings(seeded_db, tmp_path), clock=clock)) as c:
        assert c.get("/health", headers=viewer).json()["checks"]["dead_letters"]["data"]["last_hour"] == 0
        with psycopg.connect(seeded_db) as conn:
            conn.execute("INSERT INTO dead_letter_payloads (sha256, size, payload, first_received_at, "
                         "last_received_at) VALUES ('h1', 1, 'x', now(), now())")
            conn.execute("INSERT INTO dead_letters (received_at, topic, reason_code, reason, message_key, "
                         "payload_sha256) VALUES (now(), 't', 'invalid_json', 'bad', 'k1', 'h1')")
        for _ in range(20):
            assert c.get("/health").json() == {"status": "degraded"}  # broker down (closed port)
        # the checks were not run again: the dead letter is not seen yet
        assert c.get("/health", headers=viewer).json()["checks"]["dead_letters"]["data"]["last_hour"] == 0
        clock.now += 6
        assert c.get("/health", headers=viewer).json()["checks"]["dead_letters"]["data"]["last_hour"] == 1


# --- 6. /metrics ----------------------------------------------------------------------------------------

def test_metrics_need_a_key_or_their_own_port(seeded_db: str, tmp_path: Path) -> None:
    """Attack: scrape /metrics anonymously (internals, and a query set per scrape). Before: open. Now: a
    viewer key on the API's port; without a key only on api_metrics_port, when configured."""
    viewer = auth(mint_key(seeded_db, "viewer"))
    port = free_port()
    with TestClient(create_app(api_settings(seeded_db, tmp_path, api_metrics_port=port))) as c:
        assert_error(c.get("/metrics"), 401, "unauthorized")
        assert "sanitel_api_requests_total" in c.get("/metrics", headers=viewer).text
        deadline = time.monotonic() + 15
        while True:  # the gauges of the metrics port are refreshed in the background: wait for the first pass
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            if "sanitel_api_database_up 1.0" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "sanitel_api_database_up 1.0" in text
        assert 'sanitel_api_requests_total{method="GET",route="/metrics",status_class="4xx"} 1.0' in text


Series = set[tuple[str, frozenset[tuple[str, str]]]]  # (metric, its labels)


def _request_series(app: FastAPI) -> Series:
    metrics = app.state.sanitel.metrics
    series: Series = set()
    for metric in (metrics.requests, metrics.latency):
        for family in metric.collect():
            series |= {(family.name, frozenset(s.labels.items())) for s in family.samples if "le" not in s.labels}
    return series


def _random_path(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits + "-_.~%/"
    return "/zz" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))


def test_random_paths_and_methods_add_no_metric_label_values(seeded_db: str, tmp_path: Path) -> None:
    """Attack: blow up Prometheus' memory (and the API's) with one time series per request, by sending random
    paths and methods. Before: the method label took any method a client sent. Now: labels are the route
    template (``unmatched`` for no route), a method from a fixed set (else ``other``) and the status class."""
    rng = random.Random(12)  # the same paths every run
    viewer = auth(mint_key(seeded_db, "viewer"))
    app = create_app(api_settings(seeded_db, tmp_path))
    with TestClient(app) as c:
        c.get(_random_path(rng))
        c.get(_random_path(rng), headers=viewer)
        before = _request_series(app)
        for i in range(1000):
            c.get(_random_path(rng), headers=viewer if i % 2 else None)
        assert _request_series(app) == before  # 1,000 random paths: not one new series

        odd_methods: list[str] = ["PROPFIND", "BREW", "X" * 40] + [
            "".join(rng.choice(string.ascii_uppercase) for _ in range(12)) for _ in range(50)]
        for method in odd_methods:
            c.request(method, _random_path(rng))
            c.request(method, "/sites", headers=viewer)
        series = _request_series(app)
    routes = set(app.openapi()["paths"]) | {getattr(r, "path", None) for r in app.routes} | {UNMATCHED}
    labels: dict[str, set[Any]] = {"method": set(), "route": set(), "status_class": set()}
    for _, pairs in series:
        for name, value in pairs:
            labels[name].add(value)
    assert labels["method"] <= METHODS | {"other"}, labels["method"]
    assert labels["route"] <= routes, labels["route"]
    assert labels["status_class"] <= {"1xx", "2xx", "3xx", "4xx", "5xx"}
