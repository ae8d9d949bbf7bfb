"""Silences (planned maintenance and the like): list, detail, create, edit, expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from sanitel.alerts.silences import Matcher as EngineMatcher
from sanitel.alerts.silences import MatcherError, parse_matchers
from sanitel.api.deps import Db, Supervisor, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Matcher, Page, Silence, SilenceIn
from sanitel.api.params import DEFAULT_PAGE, Cursor, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import silences as queries
from sanitel.api.routes.incidents import Alert  # the API's one Alert schema (with its incident)

router = APIRouter(prefix="/silences", tags=["silences"], responses=error_responses(401, 403, 422))

SilenceId = Annotated[int, Path(ge=1, le=2**63 - 1, description="silence id", examples=[4])]
MAX_SILENCE = timedelta(days=90)
PREVIEW_SHOWN = 50  # a preview lists this many alerts; it counts all of them


@router.get("", response_model=Page[Silence], summary="List silences, newest first")
async def list_silences(conn: Db, _: Viewer, status: Literal["pending", "active", "expired"] | None = None,
                        limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> Page[Silence]:
    after = decode_cursor(cursor, int)[0] if cursor else None
    items = [Silence.model_validate(r) for r in await queries.list_silences(conn, status, after, limit)]
    return Page(items=items, next_cursor=encode_cursor(items[-1].silence_id) if len(items) == limit else None)


@router.get("/{silence_id}", response_model=Silence, summary="One silence", responses=error_responses(404))
async def get_silence(silence_id: SilenceId, conn: Db, _: Viewer) -> Silence:
    row = await queries.get_silence(conn, silence_id)
    if row is None:
        raise not_found("silence", silence_id)
    return Silence.model_validate(row)


@router.post("", response_model=Silence, status_code=status.HTTP_201_CREATED,
             summary="Create a silence (supervisor)",
             description=f"Alerts matching every matcher are not notified between `starts_at` (default now) and "
                         f"`ends_at`. At most {MAX_SILENCE.days} days long; `=~`/`!~` take a regular expression "
                         f"matching the whole value, in RE2 syntax (linear time: no backreferences or look-arounds).")
async def create_silence(body: SilenceIn, conn: Db, who: Supervisor) -> Silence:
    _check(body, existing_start=None)
    row = await queries.create_silence(conn, _matchers(body), body.starts_at, body.ends_at, who.name, body.comment)
    return Silence.model_validate(row)


class SilencePreviewIn(BaseModel):
    matchers: list[Matcher] = Field(min_length=1, max_length=20)


class SilencePreview(BaseModel):
    matched: int = Field(description="open (pending or firing) alerts these matchers would silence")
    alerts: list[Alert] = Field(description=f"the newest {PREVIEW_SHOWN} of them")


@router.post("/preview", response_model=SilencePreview, summary="Which open alerts would these matchers silence",
             description="Matches the open alerts' labels with the alert engine's own matchers (RE2 for `=~`, `!~`); "
                         "creates nothing. Any role may preview; creating a silence needs a supervisor.")
async def preview_silence(body: SilencePreviewIn, conn: Db, _: Viewer) -> SilencePreview:
    matchers = _parsed([m.model_dump() for m in body.matchers])
    hits = [row for row in await queries.open_alerts(conn)
            if all(m.matches({k: str(v) for k, v in (row["labels"] or {}).items()}) for m in matchers)]
    return SilencePreview(matched=len(hits), alerts=[Alert.model_validate(r) for r in hits[:PREVIEW_SHOWN]])


@router.put("/{silence_id}", response_model=Silence, summary="Replace a silence's matchers, window, comment "
            "(supervisor)", responses=error_responses(404, 409))
async def update_silence(silence_id: SilenceId, body: SilenceIn, conn: Db, _: Supervisor) -> Silence:
    current = await queries.get_silence(conn, silence_id)
    if current is None:
        raise not_found("silence", silence_id)
    _check(body, existing_start=current["starts_at"])
    row = await queries.update_silence(conn, silence_id, _matchers(body), body.starts_at, body.ends_at, body.comment)
    if row is None:
        raise ApiError(409, f"silence {silence_id} has expired; create a new one")
    return Silence.model_validate(row)


@router.delete("/{silence_id}", response_model=Silence, summary="Expire a silence now (supervisor)",
               description="The silence is kept, with its end set to now, so the record of it stays.",
               responses=error_responses(404, 409))
async def expire_silence(silence_id: SilenceId, conn: Db, _: Supervisor) -> Silence:
    row = await queries.expire_silence(conn, silence_id)
    if row is not None:
        return Silence.model_validate(row)
    if await queries.get_silence(conn, silence_id) is None:
        raise not_found("silence", silence_id)
    raise ApiError(409, f"silence {silence_id} has already expired")


def _matchers(body: SilenceIn) -> list[dict[str, str]]:
    return [m.model_dump() for m in body.matchers]


def _check(body: SilenceIn, existing_start: datetime | None) -> None:
    now = datetime.now(UTC)
    start = body.starts_at or existing_start or now
    if body.ends_at <= start:
        raise ApiError(422, "ends_at must be after starts_at", field="body.ends_at")
    if body.ends_at <= now:
        raise ApiError(422, "ends_at is in the past; a silence must end in the future", field="body.ends_at")
    if body.ends_at - start > MAX_SILENCE:
        raise ApiError(422, f"a silence may last at most {MAX_SILENCE.days} days", field="body.ends_at")
    _parsed(_matchers(body))


def _parsed(matchers: list[dict[str, str]]) -> list[EngineMatcher]:
    try:
        return parse_matchers(matchers)  # the alert engine's own check: RE2 compiles every regex
    except MatcherError as exc:
        raise ApiError(422, str(exc), field=f"body.matchers.{exc.index}.{exc.key}") from None
