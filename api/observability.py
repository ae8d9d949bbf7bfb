"""The API's Prometheus metrics (on a registry of its own) and the middleware that times requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sanitel_api_requests", "HTTP requests served", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("sanitel_api_request_seconds", "time to serve a request", ["method", "route"],
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=r)
        self.alerts_open = Gauge("sanitel_alerts_open", "open alerts by state and severity", ["state", "severity"],
                                 registry=r)
        self.spool_backlog_bytes = Gauge("sanitel_api_spool_backlog_bytes",
                                         "bytes in the collector's on-disk spool, as the API sees them", registry=r)
        self.spool_backlog_files = Gauge("sanitel_api_spool_backlog_files", "spool segment files", registry=r)
        self.collector_lag = Gauge("sanitel_api_collector_lag_seconds",
                                   "now minus the newest receive time of any device", registry=r)
        self.dead_letters_last_hour = Gauge("sanitel_dead_letters_last_hour", "messages dead-lettered in the last hour",
                                            registry=r)
        self.database_up = Gauge("sanitel_api_database_up", "1 when the API reached the database", registry=r)
        self.stream_clients = Gauge("sanitel_api_alert_stream_clients", "connected alert-stream clients", registry=r)


class RequestMetricsMiddleware:
    """Counts and times every request by route template (``/devices/{device_id}``), not by raw path,
    so the label set stays bounded whatever clients ask for."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = scope.get("method", "?")
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
