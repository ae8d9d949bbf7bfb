"""FastAPI dependencies: the application context, a database connection per request, and auth.

Auth: ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``. A missing, malformed, unknown or
revoked key is 401 (with ``WWW-Authenticate``); a valid key whose role is too low is 403. Keys are verified
by ``api.guard`` before the route (and its body) is touched; the dependencies here take the verified
principal from the request scope and check its role.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sanitel.api.auth import Principal, Role, role_allows
from sanitel.api.errors import ApiError
from sanitel.api.guard import KEY_REQUIRED, KeyVerifier, principal_in, remember_principal, unauthorized
from sanitel.api.observability import ApiMetrics, TimedCache
from sanitel.api.stream import AlertBroadcaster
from sanitel.broker_auth import BrokerAuthFiles
from sanitel.settings import Settings

__all__ = ["Admin", "ApiContext", "Context", "Db", "MaybePrincipal", "Principal", "Supervisor", "Viewer",
           "require_role"]


@dataclass
class ApiContext:
    """Everything a request may need, created once per application (see ``api.app.create_app``)."""

    settings: Settings
    database_url: str
    pool: AsyncConnectionPool
    keys: KeyVerifier
    broker_auth: BrokerAuthFiles
    alert_stream: AlertBroadcaster
    metrics: ApiMetrics
    # /health's checks and /metrics' gauges that need the database: run at most once per few seconds
    checks: TimedCache[Any]
    gauges: TimedCache[None]
    # rollup table → its columns, read once per process (a migration that changes them means a restart)
    rollup_columns: dict[str, frozenset[str]] = field(default_factory=dict)


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.sanitel  # set by create_app
    return context


Context = Annotated[ApiContext, Depends(get_context)]


# Declared for OpenAPI (the "Authorize" button); auto_error off so the 401s keep our error shape.
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token: `Bearer sntl_…`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key: `sntl_…`")


async def optional_principal(
    request: Request,
    ctx: Context,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal | None:
    """The caller's verified key, or None when the request presents none (an invalid key is 401)."""
    principal = principal_in(request.scope)
    if principal is not None:
        return principal  # verified by api.guard before the route ran: no second scrypt
    token = bearer.credentials if bearer is not None else api_key
    if not token:
        return None
    # only reached when the app runs without api.guard (which verifies every key a request presents)
    principal = await ctx.keys.authenticate(token)
    remember_principal(request.scope, principal)
    return principal


async def authenticate(principal: Annotated[Principal | None, Depends(optional_principal)]) -> Principal:
    if principal is None:
        raise unauthorized(KEY_REQUIRED)
    return principal


MaybePrincipal = Annotated[Principal | None, Depends(optional_principal)]


async def get_db(ctx: Context, _: Annotated[Principal, Depends(authenticate)]) -> AsyncIterator[AsyncConnection]:
    """One pooled connection per request (autocommit: reads need no transaction; writes open one).

    Only for a caller with a valid key, and taken after the key was checked: a caller without one never
    holds a pooled connection, whatever order a route declares its dependencies in."""
    async with ctx.pool.connection() as conn:
        yield conn


# scope="function": the connection goes back to the pool as soon as the route returns, not after the
# response is sent — an alert stream that stays open for hours must not hold a pooled connection.
Db = Annotated[AsyncConnection, Depends(get_db, scope="function")]


@cache  # one callable per role, so FastAPI runs the check once per request however often it is declared
def require_role(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Dependency: the caller's key, which must have at least ``role`` (viewer < supervisor < admin)."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not role_allows(principal.role, role):
            raise ApiError(403, f"this needs the {role} role; key {principal.name!r} is a {principal.role}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require_role("viewer"))]
Supervisor = Annotated[Principal, Depends(require_role("supervisor"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
