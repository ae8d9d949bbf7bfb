"""The FastAPI application: ``create_app(settings)`` wires routers, errors, metrics and the database pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from sanitel import __version__
from sanitel.api.deps import ApiContext
from sanitel.api.errors import install_error_handlers
from sanitel.api.observability import ApiMetrics, RequestMetricsMiddleware
from sanitel.api.routes import (
    alerts,
    deposits,
    devices,
    emissions,
    gateways,
    health,
    readings,
    reports,
    rules,
    silences,
    sites,
    webhooks,
)
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

**Auth.** Every endpoint except `/health` and `/metrics` needs an API key, sent as
`Authorization: Bearer sntl_…` or `X-API-Key: sntl_…`. Keys are created with `sanitel keys create`.
Roles: *viewer* reads; *supervisor* also acknowledges, assigns and silences alerts; *admin* also registers
devices and changes rules. A missing or invalid key is 401, a key with too low a role 403.

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
               pool_size: int = 16) -> FastAPI:
    """The API. ``broker_auth`` defaults to the local stack's broker files; ``pool_size`` caps the database
    connections this process uses."""
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
        app.state.sanitel = ApiContext(settings, url, pool, VerifiedCache(), broker_auth, broadcaster, metrics)
        try:
            yield
        finally:
            await broadcaster.close()
            await pool.close()

    app = FastAPI(title="sanitel API", version=__version__, description=DESCRIPTION, openapi_tags=TAGS,
                  lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    for module in (sites, devices, gateways, readings, deposits, alerts, silences, webhooks, rules, reports, emissions,
                   health):
        app.include_router(module.router)
    return app
