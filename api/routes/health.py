"""/health (database, broker, collector lag, spool backlog, dead letters) and /metrics (Prometheus).

Both are open (no API key): load balancers and Prometheus scrape them. They reveal states, never data.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sanitel.api.deps import ApiContext, Context
from sanitel.api.models import Check, CheckStatus, Health
from sanitel.api.probes import probe_broker
from sanitel.api.queries import alerts as alert_queries
from sanitel.api.queries import health as queries
from sanitel.processors.spool import inspect_spool
from sanitel.urls import redact_url

router = APIRouter(tags=["operations"])

LAG_DEGRADED_S = 300.0  # no message from any device for 5 minutes: the collector (or the fleet) is stuck
_ORDER: dict[CheckStatus, int] = {"ok": 0, "unknown": 1, "degraded": 2, "down": 3}


@router.get("/health", response_model=Health, summary="Health of the API and what it depends on",
            responses={503: {"model": Health, "description": "the database is unreachable"}})
async def health(ctx: Context) -> JSONResponse:
    database, broker = await asyncio.gather(_database_checks(ctx), _broker_check(ctx))
    checks = {"database": database.pop("database"), "broker": broker, **database, "spool": _spool_check(ctx)}
    worst = max((c.status for c in checks.values()), key=_ORDER.__getitem__)
    overall: CheckStatus = "down" if checks["database"].status == "down" else (
        "ok" if worst in ("ok", "unknown") else "degraded")
    body = Health(status=overall, time=_now(), checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if overall == "down" else 200)


async def _database_checks(ctx: ApiContext) -> dict[str, Check]:
    """Database, collector lag and dead letters: all need the database, so they share its fate."""
    try:
        async with ctx.pool.connection(timeout=1.5) as conn:
            info = await queries.timescaledb_info(conn)
            newest = await queries.last_received(conn)
            dead = await queries.dead_letters_last_hour(conn)
    except Exception as exc:  # any failure here is "database down", reported, never raised
        ctx.metrics.database_up.set(0)
        down = Check(status="down", detail=f"unreachable: {exc.__class__.__name__}")
        unknown = Check(status="unknown", detail="database unreachable")
        return {"database": down, "collector_lag": unknown, "dead_letters": unknown}
    ctx.metrics.database_up.set(1)
    ctx.metrics.dead_letters_last_hour.set(dead)
    return {"database": Check(status="ok", detail="reachable",
                              data={"timescaledb": info["version"], "license": info["license"]}),
            "collector_lag": _lag_check(ctx, newest, _now()),
            "dead_letters": Check(status="ok" if dead == 0 else "degraded", detail=f"{dead} in the last hour",
                                  data={"last_hour": dead})}


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
    shown = redact_url(url)
    if not probe.reachable:
        return Check(status="down", detail=probe.detail, data={"url": shown})
    # reachable but refusing our login (auth on, no service credentials in the URL) still means "up"
    return Check(status="ok" if probe.accepted else "degraded", detail=probe.detail, data={"url": shown})


def _spool_check(ctx: ApiContext) -> Check:
    """The collectors' spools, read from their folder (the collector is another process): backlog, cap, records
    quarantined as damaged, and whether a collector is refusing messages because its spool is full."""
    folder = ctx.settings.effective_spool_dir
    spool = inspect_spool(folder, ctx.settings.spool_max_bytes)
    ctx.metrics.spool_backlog_bytes.set(spool.bytes)
    ctx.metrics.spool_backlog_files.set(spool.files)
    data: dict[str, Any] = {"files": spool.files, "bytes": spool.bytes, "folder": str(folder),
                            "max_bytes": ctx.settings.spool_max_bytes, "full": spool.full,
                            "quarantined_records": spool.quarantined_records}
    quarantined = (f"; {spool.quarantined_records} damaged record(s) quarantined in {folder}/*/*.quarantine"
                   if spool.quarantined_records else "")
    if spool.full:
        return Check(status="degraded", detail=f"full: {spool.full_reason}. The collector is not acknowledging new "
                     "messages (the broker keeps them) until replay frees space" + quarantined, data=data)
    if spool.bytes == 0:
        return Check(status="ok", detail="empty" + quarantined, data=data)
    return Check(status="degraded", detail=f"{spool.bytes} bytes in {spool.files} segment(s) waiting to be "
                 "replayed (the database was or is unreachable)" + quarantined, data=data)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "sanitel_alerts_open{state=\"firing\","
                                                                          "severity=\"major\"} 3.0\n"}}}})
async def metrics(ctx: Context) -> Response:
    await _refresh_gauges(ctx)
    body = await anyio.to_thread.run_sync(generate_latest, ctx.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _refresh_gauges(ctx: ApiContext) -> None:
    """Gauges that describe the system rather than this process are read at scrape time."""
    m = ctx.metrics
    m.stream_clients.set(len(ctx.alert_stream.subscribers))
    _spool_check(ctx)
    try:
        async with ctx.pool.connection(timeout=1.5) as conn:
            counts = await alert_queries.firing_counts(conn)
            newest = await queries.last_received(conn)
            m.dead_letters_last_hour.set(await queries.dead_letters_last_hour(conn))
    except Exception:  # a scrape must still answer when the database is down; the gauge says so
        m.database_up.set(0)
        return
    m.database_up.set(1)
    m.alerts_open.clear()
    for state, severity, n in counts:
        m.alerts_open.labels(state, severity).set(n)
    if newest is not None:
        m.collector_lag.set(max(0.0, (_now() - newest).total_seconds()))
