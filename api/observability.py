"""The API's Prometheus metrics (on a registry of its own), the middleware that times requests, and the cache
that keeps /health and /metrics from querying the database on every call.

Every label has a bounded set of values whatever clients send: the route *template* (``/devices/{device_id}``;
``unmatched`` for a path no route matched, including requests refused before routing), the method from a
fixed list (anything else is ``other``) and the status class (``2xx`` … ``5xx``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sanitel_api_requests", "HTTP requests served", ["method", "route", "status_class"],
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
        # background stages (collector, processor, evaluator: a fixed set of label values), from their heartbeats
        self.stage_lag = Gauge("sanitel_stage_lag_seconds", "seconds since the stage's newest instance last "
                               "passed, on the API's clock (+Inf: never reported)", ["stage"], registry=r)
        self.stage_up = Gauge("sanitel_stage_up", "1 when the stage passed within stage_overdue_factor times its "
                              "interval, 0 when overdue or never reported", ["stage"], registry=r)
        self.stage_instances = Gauge("sanitel_stage_instances", "instances of the stage that passed within the "
                                     "overdue limit", ["stage"], registry=r)


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
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(method, route, f"{status['code'] // 100}xx").inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class TimedCache(Generic[T]):
    """The last result of an expensive check, reused for ``ttl_s``; callers arriving while it runs wait for
    that run instead of starting their own. ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._value: tuple[float, T] | None = None  # (when computed, result)

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            if self._value is not None and self._clock() - self._value[0] < self._ttl_s:
                return self._value[1]
            started = self._clock()
            result = await compute()
            self._value = (started, result)
            return result
