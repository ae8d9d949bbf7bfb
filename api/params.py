"""Request parameter types shared by the routes: identifiers, times, ranges, buckets, paging cursors.

Limits live here so every endpoint enforces the same ones: page size, time-range length, bucket count.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, AwareDatetime, StringConstraints

from sanitel.api.errors import ApiError
from sanitel.durations import DURATION_PATTERN, parse_duration
from sanitel.schemas.topics import ID_PATTERN

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_RANGE = timedelta(days=366)
MAX_BUCKETS = 10_000
MAX_RAW_POINTS = 10_000
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)

# Registry identifiers follow the topic grammar (no '/', '+', '#', NUL): safe in topics, paths and SQL.
Ident = Annotated[str, StringConstraints(pattern=rf"^{ID_PATTERN}$")]
# Free text from users (comments, names): bounded, and no NUL, which PostgreSQL text cannot hold.
ShortText = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00]*$")]
LongText = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]


def contains_nul(value: object) -> bool:
    """True when any string in a JSON-like value holds U+0000 (PostgreSQL text and jsonb cannot)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


def _in_supported_range(value: datetime) -> datetime:
    if not _EARLIEST <= value <= _LATEST:
        raise ValueError("time must be between 1970-01-01 and 2200-01-01")
    return value


# Timezone-aware and within a sane range (far-away years would overflow date arithmetic).
ApiTime = Annotated[AwareDatetime, AfterValidator(_in_supported_range)]

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size (at most {MAX_PAGE})")]
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_=-]*$",
                                     description="`next_cursor` of the previous page")]
FromTime = Annotated[ApiTime | None, Query(alias="from", description="start, inclusive (RFC 3339 with offset)")]
ToTime = Annotated[ApiTime | None, Query(alias="to", description="end, exclusive (RFC 3339 with offset)")]


def time_range(start: datetime | None, end: datetime | None, default: timedelta,
               maximum: timedelta = MAX_RANGE) -> tuple[datetime, datetime]:
    """Resolve an optional [from, to) pair: `to` defaults to now, `from` to `to - default`."""
    end = end or datetime.now(UTC)
    start = start or end - default
    if start >= end:
        raise ApiError(422, "`from` must be before `to`", code="validation_error", field="query.from")
    if end - start > maximum:
        raise ApiError(422, f"time range is longer than the limit of {maximum.days} days; narrow `from`/`to`",
                       code="validation_error", field="query.from")
    return start, end


BUCKET_PATTERN = DURATION_PATTERN  # a bucket width is a duration: 30s, 5m, 1h30m, 1d …


def parse_bucket(text: str) -> timedelta:
    """A bucket width (the Query pattern has checked the grammar; the value is checked here)."""
    try:
        width = parse_duration(text)
    except ValueError as exc:
        raise ApiError(422, f"bucket: {exc}", code="validation_error", field="query.bucket") from None
    if width <= timedelta(0):
        raise ApiError(422, "bucket must be longer than zero, e.g. 30s, 5m, 1h or 1d", code="validation_error",
                       field="query.bucket")
    return width


def check_bucket_count(start: datetime, end: datetime, bucket: timedelta) -> None:
    if (end - start) / bucket > MAX_BUCKETS:
        raise ApiError(422, f"{(end - start) / bucket:.0f} buckets requested, the limit is {MAX_BUCKETS}; "
                       "use a larger bucket or a shorter range", code="validation_error", field="query.bucket")


def encode_cursor(*values: Any) -> str:
    """An opaque keyset cursor: the sort key of the last row of a page."""
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str, *types: type) -> tuple[Any, ...]:
    """The values ``encode_cursor`` packed, checked against ``types``; a bad cursor is a 422 naming it."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError
        return tuple(_cursor_value(value, kind) for value, kind in zip(values, types, strict=True))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "cursor is not one this API issued; start again without it",
                       code="validation_error", field="query.cursor") from None


def _cursor_value(value: Any, kind: type) -> Any:
    if kind is datetime:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("naive time in cursor")
        return parsed
    if kind is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    if kind is str and isinstance(value, str) and "\x00" not in value:
        return value
    raise ValueError(f"cursor value {value!r} is not a {kind.__name__}")
