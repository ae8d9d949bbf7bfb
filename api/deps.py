"""FastAPI dependencies: the application context, a database connection per request, and auth.

Auth: ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``. A missing, malformed, unknown or
revoked key is 401 (with ``WWW-Authenticate``); a valid key whose role is too low is 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sanitel.api.auth import Role, parse_token, role_allows
from sanitel.api.errors import ApiError
from sanitel.api.observability import ApiMetrics
from sanitel.api.queries import keys as key_queries
from sanitel.api.stream import AlertBroadcaster
from sanitel.broker_auth import BrokerAuthFiles
from sanitel.secret_hash import VerifiedCache
from sanitel.settings import Settings


@dataclass
class ApiContext:
    """Everything a request may need, created once per application (see ``api.app.create_app``)."""

    settings: Settings
    database_url: str
    pool: AsyncConnectionPool
    verified_keys: VerifiedCache
    broker_auth: BrokerAuthFiles
    alert_stream: AlertBroadcaster
    metrics: ApiMetrics
    # rollup table → its columns, read once per process (a migration that changes them means a restart)
    rollup_columns: dict[str, frozenset[str]] = field(default_factory=dict)


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.sanitel  # set by create_app
    return context


Context = Annotated[ApiContext, Depends(get_context)]


async def get_db(ctx: Context) -> AsyncIterator[AsyncConnection]:
    """One pooled connection per request (autocommit: reads need no transaction; writes open one)."""
    async with ctx.pool.connection() as conn:
        yield conn


# scope="function": the connection goes back to the pool as soon as the route returns, not after the
# response is sent — an alert stream that stays open for hours must not hold a pooled connection.
Db = Annotated[AsyncConnection, Depends(get_db, scope="function")]


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str  # recorded as the actor of acknowledgements, assignments and silences
    role: Role


# Declared for OpenAPI (the "Authorize" button); auto_error off so the 401s keep our error shape.
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token: `Bearer sntl_…`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key: `sntl_…`")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="sanitel"'})


async def authenticate(
    ctx: Context,
    conn: Db,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    token = bearer.credentials if bearer is not None else api_key
    if not token:
        raise _unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    parsed = parse_token(token)
    if parsed is None:
        raise _unauthorized("the API key is malformed (keys look like sntl_<16 hex>_<secret>)")
    key_id, secret = parsed
    row = await key_queries.get_key(conn, key_id)
    if row is None or row["revoked_at"] is not None:
        raise _unauthorized("the API key is unknown or revoked")
    # scrypt is deliberately slow: run it off the event loop (and only once per key and process)
    valid = await anyio.to_thread.run_sync(ctx.verified_keys.verify, key_id, row["secret_hash"], secret)
    if not valid:
        raise _unauthorized("the API key is unknown or revoked")
    return Principal(key_id, row["name"], row["role"])


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
