"""Gateways: registered with the devices behind them. A gateway publishes one topic,
``sanitation/{city}/gateway/{gateway_id}/batch``, and the collector stores the items of its batches only for
the devices registered behind it (others are dead-lettered ``not_behind_gateway``). Its broker username is its
id, so an id must not be a device's or a service account's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from sanitel.api.credentials import mqtt_credentials, new_password_hash, rotate_gateway_password, sync_broker_files
from sanitel.api.deps import Admin, Context, Db, Viewer
from sanitel.api.errors import ApiError, error_responses, not_found
from sanitel.api.models import Gateway, GatewayDevices, GatewayRegistration, MqttCredentials, Page, RegisteredGateway
from sanitel.api.params import DEFAULT_PAGE, Cursor, Ident, Limit, decode_cursor, encode_cursor
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import gateways as queries
from sanitel.api.queries import sites as site_queries
from sanitel.schemas.topics import ROOT

router = APIRouter(prefix="/gateways", tags=["devices"], responses=error_responses(401, 403, 422))

GatewayId = Annotated[Ident, Path(description="gateway id", examples=["GW-futian-1"])]


@router.get("", response_model=Page[Gateway], summary="List gateways, each with the devices behind it")
async def list_gateways(conn: Db, _: Viewer, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> Page[Gateway]:
    after = decode_cursor(cursor, str)[0] if cursor else None
    items = [Gateway.model_validate(r) for r in await queries.list_gateways(conn, after=after, limit=limit)]
    return Page(items=items, next_cursor=encode_cursor(items[-1].gateway_id) if len(items) == limit else None)


@router.get("/{gateway_id}", response_model=Gateway, summary="One gateway with the devices behind it",
            responses=error_responses(404))
async def get_gateway(gateway_id: GatewayId, conn: Db, _: Viewer) -> Gateway:
    return await _gateway(conn, gateway_id)


@router.post("", response_model=RegisteredGateway, status_code=status.HTTP_201_CREATED,
             summary="Register a gateway with the devices behind it and issue its MQTT credentials (admin)",
             description="The password is in this response only. Every device listed must be registered; a "
                         "device is behind one gateway at most, so listing one moves it here.",
             responses=error_responses(409))
async def register_gateway(body: GatewayRegistration, ctx: Context, conn: Db, _: Admin) -> RegisteredGateway:
    if body.site_id is not None and not await site_queries.site_exists(conn, body.site_id):
        raise ApiError(422, f"site {body.site_id!r} does not exist", field="body.site_id")
    password, password_hash = await new_password_hash()
    async with conn.transaction():
        await device_queries.lock_usernames(conn)
        owner = await device_queries.username_owner(conn, body.gateway_id)
        if owner == "gateway":
            raise ApiError(409, f"gateway {body.gateway_id!r} is already registered; "
                           f"POST /gateways/{body.gateway_id}/credentials issues new credentials")
        if owner is not None:
            raise ApiError(409, f"{body.gateway_id!r} is the broker username of a {owner}; choose another id")
        await _check_devices(conn, body.devices)
        await queries.insert_gateway(conn, gateway_id=body.gateway_id, name=body.name, site_id=body.site_id,
                                     password_hash=password_hash)
        await queries.set_devices(conn, body.gateway_id, _unique(body.devices))
    reloaded = await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    gateway = await _gateway(conn, body.gateway_id)
    return RegisteredGateway(gateway=gateway, credentials=_credentials(ctx, body.gateway_id, password, reloaded))


@router.put("/{gateway_id}/devices", response_model=Gateway,
            summary="Replace the set of devices behind a gateway (admin)", responses=error_responses(404))
async def set_gateway_devices(gateway_id: GatewayId, body: GatewayDevices, ctx: Context, conn: Db,
                              _: Admin) -> Gateway:
    async with conn.transaction():
        if not await queries.gateway_exists(conn, gateway_id):
            raise not_found("gateway", gateway_id)
        await _check_devices(conn, body.devices)
        await queries.set_devices(conn, gateway_id, _unique(body.devices))
    # the ACL does not list devices per gateway, but every registry change keeps the files current
    await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    return await _gateway(conn, gateway_id)


@router.post("/{gateway_id}/credentials", response_model=MqttCredentials,
             summary="Issue new MQTT credentials for a gateway (admin); the old password stops working",
             responses=error_responses(404))
async def rotate_credentials(gateway_id: GatewayId, ctx: Context, conn: Db, _: Admin) -> MqttCredentials:
    password = await rotate_gateway_password(conn, gateway_id)
    if password is None:
        raise not_found("gateway", gateway_id)
    reloaded = await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    return _credentials(ctx, gateway_id, password, reloaded)


@router.delete("/{gateway_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               summary="Remove a gateway (admin): its credentials stop working, its devices stay registered",
               responses=error_responses(404))
async def delete_gateway(gateway_id: GatewayId, ctx: Context, conn: Db, _: Admin) -> Response:
    if not await queries.delete_gateway(conn, gateway_id):
        raise not_found("gateway", gateway_id)
    await sync_broker_files(conn, ctx.broker_auth, ctx.settings.city)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _gateway(conn: Db, gateway_id: str) -> Gateway:
    row = await queries.get_gateway(conn, gateway_id)
    if row is None:
        raise not_found("gateway", gateway_id)
    return Gateway.model_validate(row)


async def _check_devices(conn: Db, device_ids: list[str]) -> None:
    missing = await queries.missing_devices(conn, _unique(device_ids))
    if missing:
        shown = ", ".join(repr(d) for d in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20
                                                             else "")
        raise ApiError(422, f"not registered devices: {shown}; register them first (POST /devices)",
                       field="body.devices")


def _unique(device_ids: list[str]) -> list[str]:
    return list(dict.fromkeys(device_ids))


def _credentials(ctx: Context, gateway_id: str, password: str, reloaded: bool) -> MqttCredentials:
    return mqtt_credentials(ctx.settings, gateway_id, f"{ROOT}/{ctx.settings.city}/gateway/{gateway_id}/", password,
                            reloaded)
