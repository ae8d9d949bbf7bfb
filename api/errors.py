"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"?}}``.

Routes raise ``ApiError``; FastAPI's own errors (404 for unknown paths, 405, 422 validation) and anything
unexpected are converted here, so a client never sees a stack trace or a different shape. ``api.guard``
answers its 401 / 413 / 503 before any route runs with the same ``error_json``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sanitel.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable error code", examples=["validation_error"])
    message: str = Field(description="what went wrong and how to fix it",
                         examples=["query.limit: Input should be less than or equal to 500"])
    field: str | None = Field(None, description="the offending field (`query.limit`, `body.ends_at`)",
                              examples=["query.limit"])


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting the error shape for the given statuses."""
    return {s: {"model": ErrorResponse, "description": _CODES.get(s, "error").replace("_", " ")} for s in statuses}


class ApiError(Exception):
    """An error a route reports to the client as it is."""

    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = headers


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(404, f"{what} {ident!r} does not exist")


def error_json(status: int, code: str, message: str, field: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field_of(loc: tuple[int | str, ...] | list[int | str]) -> str:
    # ("query", "limit") -> "query.limit"; ("body", "matchers", 0, "op") -> "body.matchers.0.op"
    return ".".join(str(part) for part in loc)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_json(exc.status, exc.code, exc.message, exc.field, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_json(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_of(first.get("loc", ()))
    message = f"{field}: {first.get('msg', 'invalid value')}" if field else str(first.get("msg"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_json(422, "validation_error", message, field or None)


# What cannot reach the database: answered 503, never 500 (also by ``api.guard``, before any route runs).
DATABASE_UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)


def database_unavailable_json(exc: Exception, method: str, path: str) -> JSONResponse:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return error_json(503, "query_timeout", "the query took too long; narrow the time range or filters")
    log.warning("database unavailable during %s %s: %s", method, path, exc)
    return error_json(503, "database_unavailable", "the database is unavailable; retry shortly",
                      headers={"Retry-After": "5"})


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return database_unavailable_json(exc, request.method, request.url.path)


async def _rejected_by_database(request: Request, exc: Exception) -> JSONResponse:
    # A safety net: routes validate first, so reaching here means a check is missing somewhere.
    log.warning("database rejected a value in %s %s: %s", request.method, request.url.path, exc)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid value"
    if isinstance(exc, psycopg.errors.IntegrityError):
        return error_json(409, "conflict", f"conflicts with existing data: {first_line}")
    return error_json(422, "invalid_value", f"a value was not accepted: {first_line}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.error("unhandled error %s in %s %s", incident, request.method, request.url.path, exc_info=exc)
    return error_json(500, "internal_error", f"internal error (incident {incident}); it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(psycopg.errors.DataError, _rejected_by_database)
    app.add_exception_handler(psycopg.errors.IntegrityError, _rejected_by_database)
    app.add_exception_handler(Exception, _unexpected)
