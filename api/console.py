"""The supervisor console: static files served by the API itself (issue 14), and ``GET /me``, which tells the
console the role of the key it signed in with.

Why here and not a separate server: the issue asks for one process, and serving the page from the API's own
origin keeps every request same-origin, so the Content-Security-Policy can forbid everything else:

* ``script-src 'self'`` — no inline script, no ``eval``, no CDN: ECharts is copied from npm into
  ``static/vendor/`` by ``scripts/install.sh``;
* ``connect-src 'self'`` — the page talks to this API only;
* ``frame-ancestors 'none'`` — the console cannot be framed (clickjacking of acknowledge buttons).

The page is at ``/``; its files under ``/console/``. The JSON API keeps its own 404s (a catch-all mount at
``/`` would answer unknown API paths with the static 404 instead of the API's error shape). Every file is
served with ``Cache-Control: no-cache``: names are not content-hashed, so a browser must revalidate (ETag /
Last-Modified make that a 304) or it would run an old module beside a new one after an upgrade.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sanitel.api.auth import Role
from sanitel.api.deps import Viewer
from sanitel.api.errors import ApiError, error_json, error_responses

STATIC_DIR = Path(__file__).parent / "console" / "static"
PREFIX = "/console"
# 'self' only. ECharts sets styles through the CSSOM (element.style), which style-src does not govern; img data:
# and blob: are the chart's PNG download (getDataURL) and the CSV download.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(tags=["operations"])


class Me(BaseModel):
    """Who the presented key is: the console hides what this role may not do (the API still enforces it)."""

    key_id: str
    name: str = Field(description="recorded as the actor of acknowledgements, assignments and silences")
    role: Role


@router.get("/me", response_model=Me, summary="The calling key's name and role",
            responses=error_responses(401))
async def me(who: Viewer) -> Me:
    return Me(key_id=who.key_id, name=who.name, role=who.role)


class _Headers:
    """Adds the console's security and cache headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_NOT_INSTALLED = "the console's files are not installed with this API; the JSON API is at /docs"


def _index() -> FileResponse:
    index = STATIC_DIR / "index.html"
    if not index.is_file():  # an install without the console's files: the JSON API still works
        raise ApiError(404, _NOT_INSTALLED)
    return FileResponse(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


async def _not_installed(scope: Scope, receive: Receive, send: Send) -> None:
    await error_json(404, "not_found", _NOT_INSTALLED)(scope, receive, send)


def mount_console(app: FastAPI) -> None:
    """``/`` (the page), ``/console/*`` (its modules, styles, translations, vendored ECharts) and ``/me``."""
    app.include_router(router)
    app.add_api_route("/", _index, methods=["GET"], include_in_schema=False)
    # an install without the console's files answers 404 there instead of failing to start
    files: ASGIApp = StaticFiles(directory=STATIC_DIR) if STATIC_DIR.is_dir() else _not_installed
    app.mount(PREFIX, _Headers(files), name="console")
