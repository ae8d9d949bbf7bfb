"""The FastAPI application: ``create_app(settings)`` wires routers, errors, metrics and the database pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from sanitel import __version__
from sanitel.api.console import mount_console
from sanitel.api.deps import ApiContext
from sanitel.api.errors import install_error_handlers
from sanitel.api.guard import GuardMiddleware, KeyVerifier
from sanitel.api.observability import ApiMetrics, RequestMetricsMiddleware, TimedCache
from sanitel.api.routes import ROUTERS, health
from sanitel.api.stream import AlertBroadcaster
from sanitel.broker_auth import BrokerAuthFiles
from sanitel.secret_hash import VerifiedCache
from sanitel.settings import Settings, load_settings

log = logging.getLogger("sanitel.api")

# Every connection: UTC (clients get offsets they can rely on) and a ceiling on any one query.
_SESSION_OPTIONS = "-c TimeZone=UTC -c statement_timeout=15000"
# How long a request waits for a pooled connection before it is answered 503: short, so that during a
# database outage clients learn it quickly instead of piling up.
POOL_TIMEOUT_S = 2.0

DESCRIPTION = """
Telemetry, alerts and reports for city sanitation fleets and facilities.

**Auth.** Every endpoint needs an API key, sent as `Authorization: Bearer sntl_…` or `X-API-Key: sntl_…`,
except `/health`, which without a key says only `{"status": "ok"|"degraded"|"down"}` (its checks need a
key), and the docs. `/metrics` needs a viewer key (or is served without one on `api_metrics_port`).
Keys are created with `sanitel keys create`. Roles: *viewer* reads; *supervisor* also acknowledges, assigns
and silences alerts and sets and corrects furnace operating-state marks; *admin* also registers devices and
gateways and changes rules and webhooks. A missing or invalid key is 401, a key with too low a role 403.
The key is checked before a request body is read:
a POST, PUT, PATCH or DELETE without a valid key is 401 whatever its body. A revoked key stops working at
once, and an open alert stream whose key is revoked ends within seconds (`event: revoked`).

**Limits.** A request body larger than the setting `api_max_body_bytes` (default 1 MiB) is refused with
413 before it is parsed.

**Errors** always have the shape `{"error": {"code": "…", "message": "…", "field": "query.limit"}}`;
`field` names the offending parameter when there is one.

**Paging.** Lists return `{"items": […], "next_cursor": "…"}`; pass `cursor` to get the next page.
Times are RFC 3339 with an offset; responses are in UTC.
"""

TAGS = [
    {"name": "sites", "description": "Districts, estates, sorting points, stations, plants (a tree)."},
    {"name": "devices", "description": "The device registry and MQTT credentials."},
    {"name": "readings", "description": "Latest readings and history of any metric."},
    {"name": "deposits", "description": "Household deposits at RFID bins, with totals by category."},
    {"name": "alerts", "description": "Alerts: filter, acknowledge, assign, history, live stream."},
    {"name": "silences", "description": "Mute notifications for matching alerts during a time window."},
    {"name": "rules", "description": "Alert rules: what is in force, and rules managed through the API."},
    {"name": "reports", "description": "Daily operations summaries."},
    {"name": "emissions", "description": "Incinerator plants: daily emission compliance and CEMS averages."},
    {"name": "operations", "description": "Health and Prometheus metrics."},
]


def create_app(settings: Settings | None = None, *, broker_auth: BrokerAuthFiles | None = None,
               pool_size: int = 16, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The API. ``broker_auth`` defaults to the local stack's broker files; ``pool_size`` caps the database
    connections this process uses; ``clock`` (monotonic seconds) times the caches of verified keys and of
    /health's checks (tests pass their own)."""
    settings = settings or load_settings()
    broker_auth = broker_auth or BrokerAuthFiles.for_data_dir(settings.data_dir)
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.database_url_for("api")
        pool = AsyncConnectionPool(url, min_size=min(2, pool_size), max_size=pool_size, open=False,
                                   timeout=POOL_TIMEOUT_S, name="sanitel-api",
                                   kwargs={"autocommit": True, "options": _SESSION_OPTIONS},
                                   check=AsyncConnectionPool.check_connection)
        # Not waiting: the API starts (and /health says why) even while the database is down.
        await pool.open(wait=False)
        broadcaster = AlertBroadcaster(url)
        keys = KeyVerifier(pool, VerifiedCache(ttl_s=settings.api_key_cache_s, clock=clock),
                           recheck_s=settings.api_stream_recheck_s)
        context = ApiContext(settings, url, pool, keys, broker_auth, broadcaster, metrics,
                             checks=TimedCache(health.CHECKS_CACHE_S, clock),
                             gauges=TimedCache(health.CHECKS_CACHE_S, clock))
        app.state.sanitel = context
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.close)
            stack.push_async_callback(broadcaster.close)
            stack.push_async_callback(keys.close)
            if settings.api_metrics_port:
                stack.enter_context(health.serve_metrics_port(metrics, settings.api_host, settings.api_metrics_port))
                refresher = asyncio.create_task(health.refresh_gauges_forever(context), name="metrics-refresh")
                stack.callback(refresher.cancel)
            yield

    app = FastAPI(title="sanitel API", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan)
    install_error_handlers(app)
    # the last added runs first: metrics count every request, also those the guard refuses before routing
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    for router in ROUTERS:
        app.include_router(router)
    mount_console(app)  # the supervisor console at / (issue 14); after the API's routes, which keep their paths
    return app
