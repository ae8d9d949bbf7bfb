"""Sites: list with filters and paging, detail, the newest readings of every device at a site, and the
site's rule parameters (``PUT /sites/{id}/params``, validated before they are stored: the alert engine and the
compliance report read them)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Path, Query
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from sanitel.alerts.rules import (
    RuleModel,
    legacy_limit_message,
    legacy_limit_rules,
    load_files_tolerant,
    validate_rule_dict,
)
from sanitel.api.deps import Admin, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.latest import latest_for_devices
from sanitel.api.models import DeviceLatest, Page, Site, SiteDetail, SiteKind
from sanitel.api.params import DEFAULT_PAGE, Cursor, Ident, Limit, contains_nul, decode_cursor, encode_cursor
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import rules as rule_queries
from sanitel.api.queries import sites as queries
from sanitel.emission_limits import PARAMS_KEY, parse_emission_limits
from sanitel.errors import ConfigError

router = APIRouter(prefix="/sites", tags=["sites"], responses=error_responses(401, 403, 422))

SiteId = Annotated[Ident, Path(description="site id", examples=["futian"])]


@router.get("", response_model=Page[Site], summary="List sites")
async def list_sites(
    conn: Db, _: Viewer,
    kind: SiteKind | None = None,
    parent_id: Annotated[Ident | None, Query(description="direct children of this site")] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$",
                                   description="substring of the name or id")] = None,
    limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> Page[Site]:
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await queries.list_sites(conn, kind=kind, parent_id=parent_id, q=q, after=after, limit=limit)
    items = [Site.model_validate(r) for r in rows]
    return Page(items=items, next_cursor=encode_cursor(items[-1].site_id) if len(items) == limit else None)


@router.get("/{site_id}", response_model=SiteDetail, summary="One site, with counts over its subtree",
            responses=error_responses(404))
async def get_site(site_id: SiteId, conn: Db, _: Viewer) -> SiteDetail:
    row = await queries.get_site(conn, site_id)
    if row is None:
        raise not_found("site", site_id)
    return SiteDetail.model_validate(row | await queries.site_counts(conn, site_id))


@router.get("/{site_id}/latest", response_model=Page[DeviceLatest],
            summary="Newest reading of every device at the site and below", responses=error_responses(404))
async def site_latest(site_id: SiteId, conn: Db, _: Viewer,
                      limit: Annotated[int, Query(ge=1, le=200, description="devices per page")] = 50,
                      cursor: Cursor = None) -> Page[DeviceLatest]:
    if not await queries.site_exists(conn, site_id):
        raise not_found("site", site_id)
    after = decode_cursor(cursor, str)[0] if cursor else None
    devices = await device_queries.list_devices(conn, kind=None, site_id=site_id, online=None, q=None,
                                                after=after, limit=limit)
    items = await latest_for_devices(conn, devices)
    return Page(items=items, next_cursor=encode_cursor(devices[-1]["device_id"]) if len(devices) == limit else None)


_PARAMS_EXAMPLE: dict[str, Any] = {
    "emission_limits": {"permit": "深圳市排污许可证 9144030000000000XX001P (2024)",
                        "nox": {"gb.24h": 120, "eu.daily": 120}},
    "disabled_rules": ["cems_*_half_hourly_b"]}
SiteParams = Annotated[dict[str, Any], Body(
    description="the site's own rule parameters, replacing the stored ones: `emission_limits` (incinerator "
                "permits, the grammar of sanitel/emission_limits.py), `limits` {rule id: value} for other rules, "
                "`disabled_rules`, lookup parameters such as `odour_grade`", examples=[_PARAMS_EXAMPLE])]


@router.put("/{site_id}/params", response_model=SiteDetail, summary="Replace a site's rule parameters (admin)",
            description="422 names the parameter and the fix: an `emission_limits` that does not parse, or "
                        "`limits` naming an emission-limit rule (set it in `emission_limits`, which the compliance "
                        "report reads too).", responses=error_responses(404))
async def put_site_params(site_id: SiteId, body: SiteParams, ctx: Context, conn: Db, _: Admin) -> SiteDetail:
    await _check_params(site_id, body, ctx, conn)
    cur = await conn.execute("UPDATE sites SET params = %s WHERE site_id = %s", (Jsonb(body), site_id))
    if cur.rowcount == 0:
        raise not_found("site", site_id)
    row = await queries.get_site(conn, site_id)
    if row is None:  # removed between the update and the read
        raise not_found("site", site_id)
    return SiteDetail.model_validate(row | await queries.site_counts(conn, site_id))


async def _check_params(site_id: str, params: dict[str, Any], ctx: Context, conn: AsyncConnection) -> None:
    if contains_nul(params):  # jsonb cannot store U+0000
        raise ApiError(422, "site parameters must not contain NUL characters", field="body")
    if params.get("limits") is not None and not isinstance(params["limits"], dict):
        raise ApiError(422, "limits must be an object {rule id: value | {threshold, clear}}", field="body.limits")
    disabled = params.get("disabled_rules")
    if disabled is not None and not (isinstance(disabled, list) and all(isinstance(d, str) for d in disabled)):
        raise ApiError(422, "disabled_rules must be a list of rule ids or globs", field="body.disabled_rules")
    try:
        parse_emission_limits(params, site_id)
    except ConfigError as exc:
        raise ApiError(422, str(exc), field=f"body.{PARAMS_KEY}") from None
    legacy = legacy_limit_rules(params.get("limits"), await _rules_in_force(ctx, conn))
    if legacy:
        rule = legacy[0]
        raise ApiError(422, legacy_limit_message("body", rule, params["limits"][rule.id]),
                       field=f"body.limits.{rule.id}")


async def _rules_in_force(ctx: Context, conn: AsyncConnection) -> list[RuleModel]:
    """The shipped and configured rule files (those that validate) and the API-managed rules over them."""
    rules = dict((await anyio.to_thread.run_sync(load_files_tolerant, ctx.settings.rules_dir)).rules)
    for row in await rule_queries.list_rules(conn):
        definition = row["definition"] if isinstance(row["definition"], dict) else {}
        try:
            rules[row["rule_id"]] = validate_rule_dict({**definition, "id": row["rule_id"]}, origin="stored rule")
        except ConfigError:
            continue  # the engine skips it too
    return list(rules.values())
