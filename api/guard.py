"""The ASGI layer in front of every route: a request body limit, the API key checked before any body is read,
and alert streams closed once their key is revoked.

Why below FastAPI: FastAPI reads and parses a request's body before it resolves a single dependency, so a
dependency can neither refuse an oversized body nor an unauthenticated caller before the body has been read
and parsed. Here, in order:

1. a declared ``Content-Length`` over ``api_max_body_bytes`` is refused (413) before anything else; a body
   without one (chunked) is counted as it is read, and refused (413) as soon as it exceeds the limit;
2. a request that presents a key is authenticated — and a POST/PUT/PATCH/DELETE must present one — before
   the route runs (401 otherwise). The verified ``Principal`` is put in the request scope, where the role
   checks of ``api.deps`` (403) find it: scrypt runs once per request at most;
3. a streamed response (``text/event-stream``) is ended with ``event: revoked`` once its key is revoked or
   re-keyed: the keys of all open streams are read again every ``api_stream_recheck_s``, in one statement.

``KeyVerifier`` never hashes while it holds a pooled connection: it reads the key row with a short checkout,
gives the connection back, then runs scrypt in a worker thread behind two limits — one verification per key
id at a time (wrong secrets tried against one known key queue among themselves) and ``SCRYPT_THREADS``
verifications in all. A secret verified within ``api_key_cache_s`` is not hashed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sanitel.api.auth import Principal, parse_token, token_of
from sanitel.api.errors import DATABASE_UNAVAILABLE, ApiError, database_unavailable_json, error_json
from sanitel.api.queries import keys as key_queries
from sanitel.secret_hash import VerifiedCache

if TYPE_CHECKING:
    from sanitel.api.deps import ApiContext

log = logging.getLogger("sanitel.api.guard")

# Methods whose requests carry a body: they must present a valid key before the body is read.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# scrypt costs ~40 ms of one core and 16 MiB a run: more parallel runs would only let failed guesses take
# more of the machine from the requests being served.
SCRYPT_THREADS = 2
_STATE_KEY = "sanitel_principal"  # in scope["state"], shared with the routes' Request.state
_REVOKED_FRAME = ("event: revoked\ndata: " + json.dumps({"reason": "the API key was revoked"}) + "\n\n").encode()


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="sanitel"'})


KEY_REQUIRED = "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
_MALFORMED = "the API key is malformed (keys look like sntl_<16 hex>_<secret>)"
_REJECTED = "the API key is unknown or revoked"


def principal_in(scope: Scope) -> Principal | None:
    """The principal ``GuardMiddleware`` verified for this request (None: the request presented no key)."""
    found = scope.get("state", {}).get(_STATE_KEY)
    return found if isinstance(found, Principal) else None


def remember_principal(scope: Scope, principal: Principal) -> None:
    scope.setdefault("state", {})[_STATE_KEY] = principal


@dataclass
class _KeySlot:
    lock: asyncio.Lock
    users: int = 0


class KeyVerifier:
    """Checks API keys against the ``api_keys`` table (read on every check, so revocation applies at once)."""

    def __init__(self, pool: AsyncConnectionPool, cache: VerifiedCache, *, recheck_s: float) -> None:
        self.pool = pool
        self.cache = cache
        self.recheck_s = recheck_s  # open streams' keys are read again this often
        self._threads = anyio.CapacityLimiter(SCRYPT_THREADS)
        self._slots: dict[str, _KeySlot] = {}  # key id → its queue, only while someone waits on it
        self._watched: set[_Watch] = set()
        self._recheck: asyncio.Task[None] | None = None

    async def _row(self, key_id: str) -> dict[str, Any] | None:
        # a short checkout: the connection is back in the pool before any hashing starts
        async with self.pool.connection() as conn:
            return await key_queries.get_key(conn, key_id)

    async def authenticate(self, token: str) -> Principal:
        """The key's principal; ``ApiError`` 401 when malformed, unknown, revoked or wrong. Database failures
        propagate (the caller answers 503)."""
        parsed = parse_token(token)
        if parsed is None:
            raise unauthorized(_MALFORMED)
        key_id, secret = parsed
        row = await self._row(key_id)
        if row is None or row["revoked_at"] is not None:
            raise unauthorized(_REJECTED)
        if not await self._verify(key_id, row["secret_hash"], secret):
            raise unauthorized(_REJECTED)
        return Principal(key_id, row["name"], row["role"], row["secret_hash"])

    async def _verify(self, key_id: str, secret_hash: str, secret: str) -> bool:
        if self.cache.known(key_id, secret_hash, secret):
            return True  # verified lately: no scrypt, no queue
        async with self._one_at_a_time(key_id):
            # verify() looks in the cache again: a request queued behind the first check of the same right
            # secret finds it there
            return await anyio.to_thread.run_sync(self.cache.verify, key_id, secret_hash, secret,
                                                  limiter=self._threads)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key_id: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(key_id, _KeySlot(asyncio.Lock()))
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key_id]  # bounded by the requests in flight, not by the key ids ever tried

    @contextlib.asynccontextmanager
    async def watching(self, principal: Principal) -> AsyncIterator[asyncio.Event]:
        """An event set once ``principal``'s key is revoked or re-keyed. One loop re-checks the keys of every
        open stream together, every ``recheck_s``, in one statement: a thousand open streams cost one query
        per interval, not a thousand."""
        watch = _Watch(principal)
        self._watched.add(watch)
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self._recheck_forever(), name="api-key-recheck")
        try:
            yield watch.revoked
        finally:
            self._watched.discard(watch)

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(self.recheck_s)
            watched = list(self._watched)
            if not watched:
                continue
            try:
                async with self.pool.connection() as conn:
                    rows = await key_queries.get_keys(conn, sorted({w.principal.key_id for w in watched}))
            except Exception as exc:  # the database is away (streams say resync themselves): the next round
                log.warning("cannot re-check the keys of open streams (%s)", exc)  # checks again; never die
                continue
            for watch in watched:
                row = rows.get(watch.principal.key_id)
                if row is None or row["revoked_at"] is not None or row["secret_hash"] != watch.principal.secret_hash:
                    watch.revoked.set()

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
            self._recheck = None


@dataclass(eq=False)
class _Watch:
    principal: Principal
    revoked: asyncio.Event = field(default_factory=asyncio.Event)


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once a body exceeds the limit: FastAPI re-raises HTTP exceptions met while it
    reads a body, so the error handlers answer it in the usual shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class GuardMiddleware:
    """Pure ASGI (no ``BaseHTTPMiddleware``: it would buffer streams and run the app in another task)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            # uvicorn already refuses a malformed Content-Length; other servers may not
            await self._refuse(scope, receive, send, ApiError(
                413 if declared.isdigit() else 400,
                f"the request body is larger than {self.max_body_bytes} bytes" if declared.isdigit()
                else "malformed Content-Length"))
            return
        principal = None
        token = token_of(headers)
        if token is not None or scope["method"] in BODY_METHODS:
            try:
                principal = await self._authenticate(scope, token)
            except ApiError as exc:
                await self._refuse(scope, receive, send, exc)
                return
            except DATABASE_UNAVAILABLE as exc:
                await database_unavailable_json(exc, scope["method"], scope["path"])(scope, receive, send)
                return
            remember_principal(scope, principal)
        await self._serve(scope, receive, send, principal)

    async def _authenticate(self, scope: Scope, token: str | None) -> Principal:
        if token is None:
            raise unauthorized(KEY_REQUIRED)
        context: ApiContext | None = getattr(scope["app"].state, "sanitel", None)
        if context is None:  # the lifespan has not run (or failed): nothing to check keys against
            raise ApiError(503, "the API is starting; retry shortly", headers={"Retry-After": "5"})
        return await context.keys.authenticate(token)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, exc: ApiError) -> None:
        # no `receive` before answering: the body (if any) is never read
        await error_json(exc.status, exc.code, exc.message, exc.field, exc.headers)(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, principal: Principal | None) -> None:
        received = 0
        started = ended = False
        revoked = anyio.Event()
        watcher: asyncio.Task[None] | None = None
        app_scope = anyio.CancelScope()

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started, ended, watcher
            if message["type"] == "http.response.start":
                started = True
                if principal is not None and _is_event_stream(message):
                    watcher = asyncio.create_task(self._watch(scope, principal, app_scope, revoked),
                                                  name="api-stream-watch")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            with app_scope:
                await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge as exc:  # raised where FastAPI does not convert it (a route reading the stream)
            if started:
                raise
            await error_json(413, "payload_too_large", str(exc.detail))(scope, receive, send)
        finally:
            if watcher is not None:
                # not awaited: awaiting could swallow a cancellation of this request's own task
                watcher.cancel()
        if revoked.is_set() and started and not ended:
            # the stream was cut by _watch: tell the client why, then end the response properly
            await send({"type": "http.response.body", "body": _REVOKED_FRAME, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch(scope: Scope, principal: Principal, app_scope: anyio.CancelScope, revoked: anyio.Event) -> None:
        """Wait for the key of an open stream to be revoked; then stop the app (its generator's ``finally``
        runs, so the stream's subscription ends) and let ``_serve`` close the response."""
        context: ApiContext = scope["app"].state.sanitel
        async with context.keys.watching(principal) as key_revoked:
            await key_revoked.wait()
        log.info("key %s revoked: closing its open stream", principal.key_id)
        revoked.set()
        app_scope.cancel()


def _is_event_stream(message: Message) -> bool:
    headers: list[tuple[bytes, bytes]] = message.get("headers", [])
    return any(name.lower() == b"content-type" and value.lower().startswith(b"text/event-stream")
               for name, value in headers)

