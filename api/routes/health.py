"""/health (database, broker, collector lag, spool backlog, dead letters, background stages) and /metrics.

Background stages (issue 17): the collector, the scheduled processor and the alert evaluator record a heartbeat
per pass (``sanitel/heartbeats.py``). Each is a check of its own — last pass, lag, interval, running instances —
``degraded`` when its newest instance is overdue (``stage_overdue_factor`` × its interval, on this process's clock)
or never reported; ``problems`` then names it and says what to check. /metrics exposes the same as
``sanitel_stage_lag_seconds{stage}`` (+Inf: never reported), ``sanitel_stage_up{stage}`` and
``sanitel_stage_instances{stage}`` — the only watch on the evaluator, which cannot alert about itself.

/health is open so that load balancers need no key, and then says only ``{"status": "ok"|"degraded"|"down"}``
(503 when down); a caller with a key (any role: viewer or better) gets every check with its detail. The
details never name the broker account, a password or a file path. /metrics needs a key (viewer or better),
unless ``api_metrics_port`` also serves it without one on a port of its own (``serve_metrics_port``). Both
read the database at most once per ``CHECKS_CACHE_S``, however often they are called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from pydantic import BaseModel, Field

from sanitel.api.auth import role_allows
from sanitel.api.deps import ApiContext, Context, MaybePrincipal, Viewer
from sanitel.api.errors import error_responses
from sanitel.api.models import Check, CheckStatus, Health
from sanitel.api.observability import ApiMetrics
from sanitel.api.probes import probe_broker
from sanitel.api.queries import alerts as alert_queries
from sanitel.api.queries import health as queries
from sanitel.errors import SanitelError
from sanitel.heartbeats import STAGES, Heartbeat, StageState, judge_stages, read_heartbeats_async
from sanitel.mqtt_wire import BrokerTarget
from sanitel.processors.spool import inspect_spool

log = logging.getLogger("sanitel.api.health")

router = APIRouter(tags=["operations"])

LAG_DEGRADED_S = 300.0  # no message from any device for 5 minutes: the collector (or the fleet) is stuck
CHECKS_CACHE_S = 5.0  # /health and /metrics run their queries at most this often
METRICS_PORT_REFRESH_S = 15.0  # gauges served on api_metrics_port are refreshed this often (Prometheus' default)
_ORDER: dict[CheckStatus, int] = {"ok": 0, "unknown": 1, "degraded": 2, "down": 3}
# an absolute path (POSIX or Windows) not part of a URL: "… file: '/var/lib/…/ca.pem'" → "… file: '…'"
_PATH = re.compile(r"(?<![\w:/.])(?:[A-Za-z]:)?[/\\][^\s'\"(),;]*")
_MIN_SCRUBBED = 3  # shorter account names would mangle ordinary words; the probe's account is longer anyway


class HealthSummary(BaseModel):
    """What a caller without a key learns."""

    status: CheckStatus = Field(description="ok, degraded or down (then the HTTP status is 503)",
                                examples=["ok"])


@router.get("/health", response_model=Health | HealthSummary, summary="Health of the API and what it depends on",
            description="Without a key: only `{\"status\": …}`. With a key (viewer or better): every check with "
                        "its detail. Checks are re-run at most every few seconds.",
            responses={503: {"model": HealthSummary | Health, "description": "the database is unreachable"},
                       **error_responses(401)})
async def health(ctx: Context, who: MaybePrincipal) -> JSONResponse:
    body: Health = await ctx.checks.get(lambda: _run_checks(ctx))
    status_code = 503 if body.status == "down" else 200
    if who is None or not role_allows(who.role, "viewer"):
        return JSONResponse({"status": body.status}, status_code=status_code)
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code)


async def _run_checks(ctx: ApiContext) -> Health:
    database, broker = await asyncio.gather(_database_checks(ctx), _broker_check(ctx))
    checks = {"database": database.pop("database"), "broker": broker, **database, "spool": _spool_check(ctx)}
    worst = max((c.status for c in checks.values()), key=_ORDER.__getitem__)
    overall: CheckStatus = "down" if checks["database"].status == "down" else (
        "ok" if worst in ("ok", "unknown") else "degraded")
    problems = [f"{name}: {check.detail}" for name, check in checks.items() if check.status in ("degraded", "down")]
    return Health(status=overall, time=_now(), checks=checks, problems=problems)


async def _database_checks(ctx: ApiContext) -> dict[str, Check]:
    """Database, collector lag, dead letters and the background stages: all need the database, so they share
    its fate."""
    try:
        async with ctx.pool.connection(timeout=1.5) as conn:
            info = await queries.timescaledb_info(conn)
            newest = await queries.last_received(conn)
            dead = await queries.dead_letters_last_hour(conn)
            beats = await read_heartbeats_async(conn)
    except Exception as exc:  # any failure here is "database down", reported, never raised
        ctx.metrics.database_up.set(0)
        down = Check(status="down", detail=f"unreachable: {exc.__class__.__name__}")
        unknown = Check(status="unknown", detail="database unreachable")
        return {"database": down, "collector_lag": unknown, "dead_letters": unknown,
                **{stage: unknown for stage in STAGES}}
    ctx.metrics.database_up.set(1)
    ctx.metrics.dead_letters_last_hour.set(dead)
    return {"database": Check(status="ok", detail="reachable",
                              data={"timescaledb": info["version"], "license": info["license"]}),
            "collector_lag": _lag_check(ctx, newest, _now()),
            "dead_letters": Check(status="ok" if dead == 0 else "degraded", detail=f"{dead} in the last hour",
                                  data={"last_hour": dead}),
            **{state.stage: _stage_check(state) for state in _judge_stages(ctx, beats)}}


def _judge_stages(ctx: ApiContext, beats: list[Heartbeat]) -> list[StageState]:
    """Each stage's state on this process's clock, also set on the stage gauges."""
    states = judge_stages(beats, _now(), overdue_factor=ctx.settings.stage_overdue_factor)
    for state in states:
        ctx.metrics.stage_lag.labels(state.stage).set(state.lag_s if state.lag_s is not None else float("inf"))
        ctx.metrics.stage_up.labels(state.stage).set(1 if state.status == "ok" else 0)
        ctx.metrics.stage_instances.labels(state.stage).set(state.instances)
    return states


def _stage_check(state: StageState) -> Check:
    return Check(status="ok" if state.status == "ok" else "degraded", detail=state.detail, data={
        "last_pass_at": state.last_pass_at.isoformat() if state.last_pass_at else None,
        "lag_s": round(state.lag_s, 3) if state.lag_s is not None else None, "interval_s": state.interval_s,
        "overdue_after_s": state.overdue_after_s, "instances": state.instances,
        "stopped_instances": state.stopped_instances})


def _now() -> datetime:
    """This process's clock. The collector stamps receive times with its own process clock, so the lag is
    measured clock to clock, not against the database's ``now()`` (and a test can set it with time-machine)."""
    return datetime.now(UTC)


def _lag_check(ctx: ApiContext, newest: datetime | None, now: datetime) -> Check:
    if newest is None:
        return Check(status="unknown", detail="no device has reported yet")
    lag = max(0.0, (now - newest).total_seconds())
    ctx.metrics.collector_lag.set(lag)
    status: CheckStatus = "ok" if lag <= LAG_DEGRADED_S else "degraded"
    return Check(status=status, detail=f"last message received {lag:.1f} s ago", data={"lag_s": round(lag, 3)})


async def _broker_check(ctx: ApiContext) -> Check:
    url = ctx.settings.mqtt_url_for("api_probe")
    probe = await probe_broker(url)
    data: dict[str, Any] = {}
    with contextlib.suppress(SanitelError):
        target = BrokerTarget.parse(url)
        data = {"host": target.host, "port": target.port, "tls": target.tls}
    detail = _scrub(probe.detail, _secrets_of(ctx, url))
    if not probe.reachable:
        return Check(status="down", detail=detail, data=data)
    # reachable but refusing our login (auth on, no service credentials in the URL) still means "up"
    return Check(status="ok" if probe.accepted else "degraded", detail=detail, data=data)


def _secrets_of(ctx: ApiContext, url: str) -> list[str]:
    """Strings no detail may show: the probe's account and password, its URL options (certificate and key
    paths) and the data folder."""
    values: list[str] = [str(ctx.settings.data_dir), str(ctx.settings.effective_spool_dir)]
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        account = [v for v in (parts.username, parts.password) if v]
        values += account + [unquote(v) for v in account]  # as written in the URL, and as sent
        values += [v for _, v in parse_qsl(parts.query) if v]
    return sorted({v for v in values if len(v) >= _MIN_SCRUBBED}, key=len, reverse=True)  # longest first


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "…")
    return _PATH.sub("…", text)


def _spool_check(ctx: ApiContext) -> Check:
    """The collectors' spools, read from their folder (the collector is another process): backlog, cap, records
    quarantined as damaged, and whether a collector is refusing messages because its spool is full."""
    spool = inspect_spool(ctx.settings.effective_spool_dir, ctx.settings.spool_max_bytes)
    ctx.metrics.spool_backlog_bytes.set(spool.bytes)
    ctx.metrics.spool_backlog_files.set(spool.files)
    data: dict[str, Any] = {"files": spool.files, "bytes": spool.bytes, "max_bytes": ctx.settings.spool_max_bytes,
                            "full": spool.full, "quarantined_records": spool.quarantined_records}
    quarantined = (f"; {spool.quarantined_records} damaged record(s) quarantined (*.quarantine in the spool folder)"
                   if spool.quarantined_records else "")
    if spool.full:
        reason = _scrub(spool.full_reason or "", _secrets_of(ctx, ctx.settings.mqtt_url_for("api_probe")))
        return Check(status="degraded", detail=f"full: {reason}. The collector is not acknowledging new "
                     "messages (the broker keeps them) until replay frees space" + quarantined, data=data)
    if spool.bytes == 0:
        return Check(status="ok", detail="empty" + quarantined, data=data)
    return Check(status="degraded", detail=f"{spool.bytes} bytes in {spool.files} segment(s) waiting to be "
                 "replayed (the database was or is unreachable)" + quarantined, data=data)


@router.get("/metrics", summary="Prometheus metrics (viewer)", response_class=Response,
            description="Needs a key (viewer or better; Prometheus sends it as `authorization: {credentials: …}`). "
                        "With `api_metrics_port` set, the same metrics are also served without a key on that "
                        "port of `api_host`.",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "sanitel_alerts_open{state=\"firing\","
                                                                          "severity=\"major\"} 3.0\n"}}},
                       **error_responses(401)})
async def metrics(ctx: Context, _: Viewer) -> Response:
    await ctx.gauges.get(lambda: refresh_gauges(ctx))
    body = await anyio.to_thread.run_sync(generate_latest, ctx.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def refresh_gauges(ctx: ApiContext) -> None:
    """Gauges that describe the system rather than this process are read at scrape time."""
    m = ctx.metrics
    m.stream_clients.set(len(ctx.alert_stream.subscribers))
    _spool_check(ctx)
    try:
        async with ctx.pool.connection(timeout=1.5) as conn:
            counts = await alert_queries.firing_counts(conn)
            newest = await queries.last_received(conn)
            m.dead_letters_last_hour.set(await queries.dead_letters_last_hour(conn))
            beats = await read_heartbeats_async(conn)
    except Exception:  # a scrape must still answer when the database is down; the gauge says so
        m.database_up.set(0)
        return
    m.database_up.set(1)
    m.alerts_open.clear()
    for state, severity, n in counts:
        m.alerts_open.labels(state, severity).set(n)
    if newest is not None:
        m.collector_lag.set(max(0.0, (_now() - newest).total_seconds()))
    _judge_stages(ctx, beats)


async def refresh_gauges_forever(ctx: ApiContext, every_s: float = METRICS_PORT_REFRESH_S) -> None:
    """For ``api_metrics_port``, whose server (a thread of prometheus_client) cannot run our queries."""
    while True:
        await ctx.gauges.get(lambda: refresh_gauges(ctx))
        await asyncio.sleep(every_s)


@contextlib.contextmanager
def serve_metrics_port(metrics: ApiMetrics, host: str, port: int) -> Iterator[None]:
    """``metrics``' registry (only it: not the process-wide default one) on ``host:port``, without a key."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics served without a key on %s:%d", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
