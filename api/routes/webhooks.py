"""Alert webhooks (admin): list, add (the signing secret is in the answer, once), rotate the secret, remove.

The alert engine POSTs Alertmanager-style notification groups to each webhook whose matchers match,
signed with the webhook's secret (``X-Sanitel-Signature``, see alerts/README.md), with connect and read
timeouts, a bounded read of the answer and no redirects followed (``alerts/notify/webhook.py``).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from sanitel.alerts.notify.outbox import DEFAULT_GROUP_BY, WebhookError, check_webhook, new_secret
from sanitel.api.deps import Admin, Db
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Matcher
from sanitel.api.queries import webhooks as queries
from sanitel.urls import redact_url

router = APIRouter(prefix="/webhooks", tags=["alerts"], responses=error_responses(401, 403, 422))

WebhookId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", examples=["ops-pager"])]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "webhook_id": "ops-pager", "url": "https://pager.example.com/sanitel",
        "matchers": [{"label": "severity", "op": "=~", "value": "critical|major"}]}]})
    webhook_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                   description="default: wh-<random>")
    url: str = Field(max_length=2000, description="http(s) URL of the receiver; redirects are not followed")
    matchers: list[Matcher] = Field([], max_length=20, description="only alerts matching all of these (RE2 "
                                                                   "regular expressions for =~ and !~); none = all")
    group_by: list[str] = Field(list(DEFAULT_GROUP_BY), max_length=10,
                                description="labels whose alerts go out together in one POST")
    send_resolved: bool = True
    max_attempts: int = Field(10, ge=1, le=100)


class Webhook(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "webhook_id": "ops-pager", "url": "https://pager.example.com/sanitel", "matchers": [],
        "group_by": ["rule_id", "site_id"], "send_resolved": True, "max_attempts": 10, "enabled": True,
        "created_at": "2024-05-01T08:00:00+08:00", "pending": 0, "failed": 0}]})
    webhook_id: str
    url: str = Field(description="as stored, a password in it shown as ***")
    matchers: list[dict[str, Any]]
    group_by: list[str]
    send_resolved: bool
    max_attempts: int
    enabled: bool
    created_at: datetime
    pending: int = Field(description="notifications waiting to be delivered (or retried)")
    failed: int = Field(description="notifications given up on")


class WebhookCreated(Webhook):
    secret: str = Field(description="the signing secret: shown this once, give it to the receiver")


class WebhookSecret(BaseModel):
    webhook_id: str
    secret: str = Field(description="the new signing secret: shown this once; the old one no longer signs")


def _shown(row: dict[str, Any]) -> Webhook:
    return Webhook.model_validate({**row, "url": redact_url(row["url"])})


@router.get("", response_model=list[Webhook], summary="The webhooks (admin)")
async def list_webhooks(conn: Db, _: Admin) -> list[Webhook]:
    return [_shown(r) for r in await queries.list_webhooks(conn)]


@router.post("", response_model=WebhookCreated, status_code=status.HTTP_201_CREATED,
             summary="Add a webhook (admin); the answer holds its signing secret, once",
             responses=error_responses(409))
async def create_webhook(body: WebhookIn, conn: Db, _: Admin) -> WebhookCreated:
    webhook_id = body.webhook_id or f"wh-{secrets.token_hex(4)}"
    try:
        matchers = check_webhook(webhook_id, body.url, [m.model_dump() for m in body.matchers], body.group_by,
                                 body.max_attempts)
    except WebhookError as exc:
        raise ApiError(422, str(exc), field=f"body.{exc.field}") from None
    secret = new_secret()
    async with conn.transaction():
        if not await queries.insert_webhook(conn, webhook_id, body.url, matchers, body.group_by, body.send_resolved,
                                            body.max_attempts, secret):
            raise ApiError(409, f"webhook {webhook_id!r} already exists; DELETE it first or choose another id")
        row = await queries.get_webhook(conn, webhook_id)
    assert row is not None
    return WebhookCreated.model_validate({**_shown(row).model_dump(), "secret": secret})


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookSecret,
             summary="Give a webhook a new signing secret (admin), shown once", responses=error_responses(404))
async def rotate_secret(webhook_id: WebhookId, conn: Db, _: Admin) -> WebhookSecret:
    secret = new_secret()
    if not await queries.set_secret(conn, webhook_id, secret):
        raise not_found("webhook", webhook_id)
    return WebhookSecret(webhook_id=webhook_id, secret=secret)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Remove a webhook and its queued deliveries (admin)", responses=error_responses(404))
async def delete_webhook(webhook_id: WebhookId, conn: Db, _: Admin) -> None:
    if not await queries.delete_webhook(conn, webhook_id):
        raise not_found("webhook", webhook_id)
