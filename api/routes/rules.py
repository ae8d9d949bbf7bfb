"""Alert rules: the rules in force (shipped packs, rule files, API-managed), and CRUD of the API-managed
ones, validated by the alert engine's own validator (``alerts.rules.validate_rule_dict``).

A stored rule with the id of a shipped one replaces it — that is how an admin edits or disables a default
(``PUT`` it with ``enabled: false``); deleting the stored rule restores the shipped one.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Path, status
from pydantic import BaseModel, Field

from sanitel.alerts.rules import RuleModel, load_rule_file, rule_files, validate_rule_dict
from sanitel.api.deps import Admin, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.params import contains_nul
from sanitel.api.queries import rules as queries
from sanitel.durations import format_duration
from sanitel.errors import ConfigError

router = APIRouter(prefix="/rules", tags=["rules"], responses=error_responses(401, 403, 422))

RuleId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120, examples=["transfer_station.h2s"])]
_KEY = re.compile(r"key '([^']+)'")

_EXAMPLE: dict[str, Any] = {
    "id": "transfer_station.h2s_boundary", "kind": "threshold", "source": "station_telemetry",
    "field": "h2s_mg_m3", "op": ">", "threshold": 0.06, "clear": 0.05, "for": "5m", "severity": "major",
    "summary": "boundary H2S {value:.3f} mg/m³ above {threshold} (GB 14554-93 grade 2)",
    "scope": {"kinds": ["transfer_station"]}}
RuleBody = Annotated[dict[str, Any], Body(description="a rule, exactly as in a YAML rule pack",
                                          examples=[_EXAMPLE])]


class Rule(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{
        "rule_id": "transfer_station.h2s_boundary", "kind": "threshold", "severity": "major", "enabled": True,
        "origin": "api", "overrides_shipped": False, "definition": _EXAMPLE, "problem": None,
        "updated_by": "ops-admin", "updated_at": "2024-05-01T08:00:00+08:00"}]}}
    rule_id: str
    kind: str | None
    severity: str | None
    enabled: bool
    origin: Literal["file", "api"] = Field(description="a shipped/configured rule file, or managed through the API")
    overrides_shipped: bool = Field(description="an API rule that replaces a file rule of the same id")
    definition: dict[str, Any]
    problem: str | None = Field(description="why a stored rule no longer validates (the engine skips it)")
    updated_by: str | None = None
    updated_at: datetime | None = None


class RuleList(BaseModel):
    rules: list[Rule]
    problems: list[str] = Field(description="rule files that do not validate (their rules are not listed; "
                                            "the engine refuses to start with them)")


@router.get("", response_model=RuleList, summary="The rules in force, and API rules that do not validate")
async def list_rules(ctx: Context, conn: Db, _: Viewer) -> RuleList:
    files, problems = await _file_rules(ctx)
    stored = {r["rule_id"]: _stored(r, r["rule_id"] in files) for r in await queries.list_rules(conn)}
    merged = {rid: _from_file(rule) for rid, rule in files.items()} | stored
    return RuleList(rules=[merged[rid] for rid in sorted(merged)], problems=problems)


@router.get("/{rule_id}", response_model=Rule, summary="One rule", responses=error_responses(404))
async def get_rule(rule_id: RuleId, ctx: Context, conn: Db, _: Viewer) -> Rule:
    files, _problems = await _file_rules(ctx)
    row = await queries.get_rule(conn, rule_id)
    if row is not None:
        return _stored(row, rule_id in files)
    if rule_id in files:
        return _from_file(files[rule_id])
    raise not_found("rule", rule_id)


@router.post("/validate", response_model=Rule, summary="Validate a rule without saving it",
             description="422 names the offending key and the fix, exactly as the engine would report it.")
async def validate_rule(body: RuleBody, _: Viewer) -> Rule:
    rule = _validated(body, body.get("id"))
    return Rule(rule_id=rule.id, kind=rule.kind, severity=rule.severity, enabled=rule.enabled, origin="api",
                overrides_shipped=False, definition=_definition(body), problem=None)


@router.post("", response_model=Rule, status_code=status.HTTP_201_CREATED, summary="Create a rule (admin)",
             responses=error_responses(409))
async def create_rule(body: RuleBody, ctx: Context, conn: Db, who: Admin) -> Rule:
    rule = _validated(body, body.get("id"))
    if rule.id in (await _file_rules(ctx))[0]:
        raise ApiError(409, f"rule {rule.id!r} is a shipped rule; PUT /rules/{rule.id} replaces it")
    row = await queries.insert_rule(conn, rule.id, _definition(body), who.name)
    if row is None:
        raise ApiError(409, f"rule {rule.id!r} already exists; PUT /rules/{rule.id} changes it")
    return _stored(row, False)


@router.put("/{rule_id}", response_model=Rule, summary="Create or replace a rule (admin)",
            description="Replacing a shipped rule's id overrides the shipped rule (e.g. `enabled: false`).")
async def put_rule(rule_id: RuleId, body: RuleBody, ctx: Context, conn: Db, who: Admin) -> Rule:
    if body.get("id", rule_id) != rule_id:
        raise ApiError(422, f"body id {body.get('id')!r} differs from the path's {rule_id!r}", field="body.id")
    _validated(body, rule_id)
    row = await queries.upsert_rule(conn, rule_id, _definition(body), who.name)
    return _stored(row, rule_id in (await _file_rules(ctx))[0])


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an API rule (admin)",
               description="A shipped rule of the same id is in force again afterwards.",
               responses=error_responses(404, 409))
async def delete_rule(rule_id: RuleId, ctx: Context, conn: Db, _: Admin) -> None:
    if not await queries.delete_rule(conn, rule_id):
        if rule_id in (await _file_rules(ctx))[0]:
            raise ApiError(409, f"rule {rule_id!r} is shipped in a rule file; PUT it with enabled: false to turn it off")
        raise not_found("rule", rule_id)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _validated(body: dict[str, Any], rule_id: object) -> RuleModel:
    if contains_nul(body):  # jsonb cannot store U+0000
        raise ApiError(422, "the rule must not contain NUL characters", field="body")
    try:
        return validate_rule_dict({**body, "id": rule_id}, origin="body")
    except ConfigError as exc:
        message = str(exc)
        key = _KEY.search(message)
        raise ApiError(422, message, code="invalid_rule", field=f"body.{key.group(1)}" if key else "body") from None


def _definition(body: dict[str, Any]) -> dict[str, Any]:
    # stored as sent (minus the id, which is the row's key): it is what an admin wrote and re-validates as such
    return {k: v for k, v in body.items() if k != "id"}


async def _file_rules(ctx: Context) -> tuple[dict[str, RuleModel], list[str]]:
    """Rules of the shipped packs and ``rules_dir``, file by file: one broken file must not stop admins
    from managing rules through the API (its problems are reported, its rules left out)."""

    def load() -> tuple[dict[str, RuleModel], list[str]]:
        rules: dict[str, RuleModel] = {}
        problems: list[str] = []
        try:
            paths = rule_files(ctx.settings.rules_dir)
        except ConfigError as exc:
            return rules, [str(exc)]
        for path in paths:
            try:
                rules |= {rule.id: rule for rule in load_rule_file(path)}
            except ConfigError as exc:
                problems.append(str(exc))
        return rules, problems

    return await anyio.to_thread.run_sync(load)


def _from_file(rule: RuleModel) -> Rule:
    definition = _as_written(rule.model_dump(by_alias=True, exclude_defaults=True))
    definition.pop("id", None)
    return Rule(rule_id=rule.id, kind=rule.kind, severity=rule.severity, enabled=rule.enabled, origin="file",
                overrides_shipped=False, definition=definition, problem=None)


def _as_written(value: Any) -> Any:
    """A dumped rule in the notation of the rule files (durations as 5m, not ISO 8601 PT5M)."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_written(v) for v in value]
    return value


def _stored(row: dict[str, Any], overrides: bool) -> Rule:
    definition = row["definition"] if isinstance(row["definition"], dict) else {}
    try:
        rule: RuleModel | None = validate_rule_dict({**definition, "id": row["rule_id"]}, origin="stored rule")
        problem = None
    except ConfigError as exc:
        rule, problem = None, str(exc)
    return Rule(rule_id=row["rule_id"], kind=rule.kind if rule else _text(definition.get("kind")),
                severity=rule.severity if rule else _text(definition.get("severity")),
                enabled=bool(row["enabled"] and (rule.enabled if rule else False)), origin="api",
                overrides_shipped=overrides, definition=definition, problem=problem,
                updated_by=row["updated_by"], updated_at=row["updated_at"])
