"""Devices: list with filters and paging, detail, registration with MQTT credentials, credential rotation, the
HJ 212 access password (write-only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status

from sanitel.api.credentials import (
    hj212_password_hash,
    mqtt_credentials,
    new_password_hash,
    rotate_device_password,
    sync_broker_files,
)
from sanitel.api.deps import Admin, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import (
    Device,
    DeviceKind,
    DeviceRegistration,
    Hj212PasswordChange,
    MqttCredentials,
    Page,
    RegisteredDevice,
)
from sanitel.api.params import DEFAULT_PAGE, Cursor, Ident, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import devices as queries
from sanitel.api.queries import gateways as gateway_queries
from sanitel.api.queries import sites as site_queries
from sanitel.broker_auth import USERNAME_PATTERN, valid_username
from sanitel.schemas.hj212_settings import metadata_problems
from sanitel.schemas.topics import ROOT

router = APIRouter(prefix="/devices", tags=["devices"], responses=error_responses(401, 403, 422))

DeviceId = Annotated[Ident, Path(description="device id", examples=["SW-0001"])]


@router.get("", response_model=Page[Device], summary="List devices")
async def list_devices(
    conn: Db, _: Viewer,
    kind: DeviceKind | None = None,
    site_id: Annotated[Ident | None, Query(description="devices at this site or below it")] = None,
    online: Annotated[bool | None, Query(description="heard from within the inactivity timeout")] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$",
                                   description="device id prefix or name substring")] = None,
    limit: Limit = DEFAULT_PAGE, cursor: Cursor = None,
) -> Page[Device]:
    after = decode_cursor(cursor, str)[0] if cursor else None
    rows = await queries.list_devices(conn, kind=kind, site_id=site_id, online=online, q=q, after=after, limit=limit)
    items = [Device.model_validate(r) for r in rows]
    return Page(items=items, next_cursor=encode_cursor(items[-1].device_id) if len(items) == limit else None)


@router.get("/{device_id}", response_model=Device, summary="One device", responses=error_responses(404))
async def get_device(device_id: DeviceId, conn: Db, _: Viewer) -> Device:
    row = await queries.get_device(conn, device_id)
    if row is None:
        raise not_found("device", device_id)
    return Device.model_validate(row)


@router.post("", response_model=RegisteredDevice, status_code=status.HTTP_201_CREATED,
             summary="Register a device and issue its MQTT credentials (admin)",
             description="The password is in this response only. A device the collector auto-registered on "
                         "first sight can be registered (claimed) once; registering it again is a conflict — "
                         "rotate its credentials instead. The id is also the broker username: it must not be "
                         "a gateway's or a service account's. `hj212_password` (cems only) is stored as a "
                         "salted hash and never returned; it must not be put in `metadata`. For a data unit "
                         "speaking HJ 212, `metadata.gas_is_dry` (boolean; false: the analyser measures wet gas) "
                         "and `metadata.timezone` (IANA name the unit's DataTime is local to; default: its "
                         "plant's) say how its frames are read (docs/ingest.md).",
             responses=error_responses(409))
async def register_device(body: DeviceRegistration, ctx: Context, conn: Db, _: Admin) -> RegisteredDevice:
    _check_hj212_metadata(body.metadata)
    if body.site_id is not None and not await site_queries.site_exists(conn, body.site_id):
        raise ApiError(422, f"site {body.site_id!r} does not exist", field="body.site_id")
    if body.gateway_id is not None and not await gateway_queries.gateway_exists(conn, body.gateway_id):
        raise ApiError(422, f"gateway {body.gateway_id!r} does not exist; register it with POST /gateways",
                       field="body.gateway_id")
    if body.hj212_password is not None and body.kind != "cems":
        raise ApiError(422, "only a cems device speaks HJ 212: hj212_password needs kind 'cems'",
                       field="body.hj212_password")
    password, password_hash = await new_password_hash()
    hj212_hash = await hj212_password_hash(body.hj212_password) if body.hj212_password is not None else None
    async with conn.transaction():
        await queries.lock_usernames(conn)
        owner = await queries.username_owner(conn, body.device_id)
        if owner in ("gateway", "service"):
            raise ApiError(409, f"{body.device_id!r} is the broker username of a {owner}; choose another id")
        created = await queries.register_device(
            conn, device_id=body.device_id, kind=body.kind, site_id=body.site_id, name=body.name,
            inactivity_timeout_s=body.inactivity_timeout_s, metadata=body.metadata, password_hash=password_hash,
            gateway_id=body.gateway_id, hj212_password_hash=hj212_hash)
    if not created:
        raise ApiError(409, f"device {body.device_id!r} is already registered; "
                       f"POST /devices/{body.device_id}/credentials issues new credentials")
    reloaded = await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    device = Device.model_validate(await queries.get_device(conn, body.device_id))
    return RegisteredDevice(device=device, credentials=_credentials(ctx, device, password, reloaded))


@router.post("/{device_id}/credentials", response_model=MqttCredentials,
             summary="Issue new MQTT credentials for a device (admin); the old password stops working",
             responses=error_responses(404))
async def rotate_credentials(device_id: DeviceId, ctx: Context, conn: Db, _: Admin) -> MqttCredentials:
    if not valid_username(device_id):  # an auto-registered id with ':' cannot stand in the password file
        raise ApiError(422, f"{device_id!r} cannot be a broker username (it must match {USERNAME_PATTERN}); "
                       "register the device under another id", field="path.device_id")
    password = await rotate_device_password(conn, device_id)
    if password is None:
        raise not_found("device", device_id)
    reloaded = await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    device = Device.model_validate(await queries.get_device(conn, device_id))
    return _credentials(ctx, device, password, reloaded)


@router.put("/{device_id}/hj212-password", response_model=Device,
            summary="Set a CEMS device's HJ 212 access password (admin); only a salted hash is stored",
            description="The collector checks the PW of every HJ 212 frame for this MN against it; the change "
                        "reaches the collectors within seconds. The password is never returned.",
            responses=error_responses(404))
async def set_hj212_password(device_id: DeviceId, body: Hj212PasswordChange, conn: Db, _: Admin) -> Device:
    kind = await queries.device_kind(conn, device_id)
    if kind is None:
        raise not_found("device", device_id)
    if kind != "cems":
        raise ApiError(422, f"device {device_id!r} is a {kind}; only a cems device speaks HJ 212",
                       field="path.device_id")
    await queries.set_hj212_password(conn, device_id, await hj212_password_hash(body.password))
    return Device.model_validate(await queries.get_device(conn, device_id))


def _check_hj212_metadata(metadata: dict[str, Any]) -> None:
    """422 naming the first HJ 212 metadata key with an unusable value (the listener would not use it, and would
    count and log it on every frame): ``gas_is_dry`` must be a boolean, ``timezone`` an IANA name."""
    problems = metadata_problems(metadata)
    if problems:
        key = min(problems)
        raise ApiError(422, problems[key], field=f"body.metadata.{key}")


def _credentials(ctx: Context, device: Device, password: str, reloaded: bool) -> MqttCredentials:
    return mqtt_credentials(ctx.settings, device.device_id,
                            f"{ROOT}/{ctx.settings.city}/{device.kind}/{device.device_id}/", password, reloaded)
