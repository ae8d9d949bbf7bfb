"""Sites: list with filters and paging, detail, the newest readings of every device at a site, the
site's rule parameters (``PUT /sites/{id}/params``, validated before they are stored: the alert engine and the
compliance report read them) and the limits those parameters give the rules in force (``GET /sites/{id}/limits``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Path, Query
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from sanitel.alerts.rules import (
    RuleModel,
    ThresholdRule,
    WindowRule,
    legacy_limit_message,
    legacy_limit_rules,
    limits_for,
    load_files_tolerant,
    validate_rule_dict,
)
from sanitel.alerts.subjects import Registry
from sanitel.alerts.subjects import Site as RegistrySite
from sanitel.api.catalog import metric_for, tables_of_kind
from sanitel.api.console_models import SiteLimit, SiteLimits
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


@router.get("/{site_id}/limits", response_model=SiteLimits, responses=error_responses(404),
            summary="Effective limits of the rules that judge the site's devices",
            description="Each threshold or window rule in force (files and API-managed) that judges a reading of a "
                        "device kind at the site or below, with its threshold after the site's parameters (odour "
                        "grade, noise class, `limits` overrides, merged down the site tree as the alert engine "
                        "merges them). Rules the site disables, rules on a flag or bit, rates, counts and "
                        "emission-limit averages (see `/plants/{id}/compliance`) are left out.")
async def site_limits(site_id: SiteId, ctx: Context, conn: Db, _: Viewer) -> SiteLimits:
    chain = await queries.site_chain(conn, site_id)
    if not chain:
        raise not_found("site", site_id)
    kinds = await queries.device_kinds_below(conn, site_id)
    registry = Registry(sites={r["site_id"]: RegistrySite(r["site_id"], r["kind"], r["parent_id"], r["timezone"],
                                                          r["params"] or {}) for r in chain})
    params = registry.site_params(site_id)
    limits = [limit for rule in await _rules_in_force(ctx, conn) for kind in kinds
              if (limit := effective_limit(rule, kind, params, [c["site_id"] for c in chain])) is not None]
    return SiteLimits(site_id=site_id, timezone=registry.timezone(site_id), limits=limits)


def effective_limit(rule: RuleModel, kind: str, params: dict[str, Any], chain: list[str]) -> SiteLimit | None:
    """The rule's limit on the metric of ``kind`` it judges, with these merged site ``params``; None when the rule
    does not judge a plain reading value of that kind there (see ``site_limits``)."""
    if not isinstance(rule, ThresholdRule | WindowRule) or not rule.enabled:  # rates, counts, offline: no level
        return None
    if rule.field is None or rule.source not in tables_of_kind(kind) or kind not in rule.kinds():
        return None
    if isinstance(rule, ThresholdRule) and (rule.bit is not None or rule.flagged is not None):
        return None
    if isinstance(rule, WindowRule) and (rule.emission_limit is not None or rule.aggregate == "count"):
        return None
    if rule.scope.devices or (rule.scope.sites and not set(rule.scope.sites) & set(chain)):
        return None  # a rule for named devices, or for another part of the tree
    try:
        limits = limits_for(rule, params)
    except ConfigError:
        return None  # params the engine refuses too (it raises rule_quarantined for them)
    if limits is None:
        return None
    metric = metric_for(kind, rule.field)
    return SiteLimit(rule_id=rule.id, metric=rule.field, op=rule.op, threshold=limits.threshold,
                     unit=metric.unit if metric else None, period=period_of(rule.local_hours), hours=rule.local_hours,
                     source=rule.standard, clear=limits.clear, kind=kind, severity=rule.severity,
                     unverified=rule.unverified, params=limits.context)


def period_of(hours: str | None) -> Literal["day", "night"] | None:
    # GB 12348-2008 names day (06:00-22:00) and night (22:00-06:00) periods (its clause number not checked here):
    # a rule's hours that hold noon are its day
    if hours is None:
        return None
    start, end = hours.split("-")
    return "day" if (start <= "12:00" < end) or (end <= start and not end <= "12:00" < start) else "night"


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
