"""``sanitel api``, ``sanitel keys …``, ``sanitel devices …`` and ``sanitel gateways …``.

Keys, broker credentials and generated HJ 212 passwords are printed once, when made; only hashes are stored.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import secrets
import string
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg

from sanitel.api.auth import ROLES, new_key
from sanitel.api.credentials import (
    hj212_password_hash,
    new_password_hash,
    rotate_device_password,
    rotate_gateway_password,
    set_service_account,
    sync_broker_files,
)
from sanitel.api.models import Hj212PasswordChange
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import gateways as gateway_queries
from sanitel.api.queries import keys as key_queries
from sanitel.api.queries import sites as site_queries
from sanitel.broker_auth import SERVICE_RULES, USERNAME_PATTERN, BrokerAuthFiles, valid_username
from sanitel.db import require_current_schema
from sanitel.errors import SanitelError
from sanitel.schemas.topics import DEVICE_KINDS, ROOT
from sanitel.settings import Settings, load_settings

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_api(subparsers)
    _register_keys(subparsers)
    _register_devices(subparsers)
    _register_gateways(subparsers)


# --- sanitel api -------------------------------------------------------------------------------------

def _register_api(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("api", help="run the HTTP API (OpenAPI docs at /docs)")
    p.add_argument("--host", help="default: settings api_host")
    p.add_argument("--port", type=int, help="default: settings api_port")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_run_api)


def _run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from sanitel.api.app import create_app

    settings = load_settings()
    require_current_schema(settings.database_url_for("api"))
    uvicorn.run(create_app(settings), host=args.host or settings.api_host, port=args.port or settings.api_port,
                log_level=args.log_level, access_log=False,
                # no "server: uvicorn" header: it tells an attacker which server's bugs to try
                server_header=False,
                # open alert streams never end by themselves: give them a few seconds, then stop
                timeout_graceful_shutdown=5)
    return 0


# --- sanitel keys ------------------------------------------------------------------------------------

def _register_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keys", help="manage API keys")
    sub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", required=True, help="who or what uses it; recorded as the actor of its actions")
    create.set_defaults(func=_keys_create)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(func=_keys_list)
    revoke = sub.add_parser("revoke", help="revoke a key: it stops working at once")
    revoke.add_argument("key_id", help="the 16 hex digits after sntl_ (see 'sanitel keys list')")
    revoke.set_defaults(func=_keys_revoke)


def _keys_create(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        raise SanitelError("--name must be 1-200 characters")
    key = new_key()
    _run(lambda conn: key_queries.insert_key(conn, key.key_id, name, args.role, key.secret_hash))
    print(key.token)
    print(f"# key {key.key_id} ({args.role}, {name!r}); this is the only time the key is shown")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    rows = _run(lambda conn: key_queries.list_keys(conn, include_revoked=args.all))
    print(f"{'KEY ID':<18}{'ROLE':<12}{'CREATED':<22}{'REVOKED':<22}NAME")
    for r in rows:
        revoked = r["revoked_at"].strftime("%Y-%m-%d %H:%M:%S") if r["revoked_at"] else "-"
        print(f"{r['key_id']:<18}{r['role']:<12}{r['created_at'].strftime('%Y-%m-%d %H:%M:%S'):<22}"
              f"{revoked:<22}{r['name']}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    key_id = args.key_id.removeprefix("sntl_")[:16]
    revoked_at = _run(lambda conn: key_queries.revoke_key(conn, key_id))
    if revoked_at is None:
        raise SanitelError(f"no key {key_id!r}; 'sanitel keys list --all' shows the keys")
    print(f"key {key_id} revoked at {revoked_at:%Y-%m-%d %H:%M:%S %Z}")
    return 0


# --- sanitel devices ---------------------------------------------------------------------------------

def _register_devices(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("devices", help="register devices and manage broker credentials")
    sub = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    reg = sub.add_parser("register", help="register a device and print its MQTT credentials (once)")
    reg.add_argument("device_id")
    reg.add_argument("--kind", required=True, choices=DEVICE_KINDS)
    reg.add_argument("--site", help="site id")
    reg.add_argument("--name")
    reg.add_argument("--timeout", type=int, default=900, help="inactivity timeout in seconds (default 900)")
    reg.add_argument("--gateway", help="a registered gateway that may send this device's readings")
    reg.set_defaults(func=_devices_register)
    cred = sub.add_parser("credentials", help="issue new MQTT credentials for a device or a service account")
    cred.add_argument("username", help="device id, or a service account name with --service")
    cred.add_argument("--service", choices=tuple(SERVICE_RULES),
                      help="create or re-key a service account with this role ('service' = collector and "
                           "alert publisher in one, for old deployments)")
    cred.set_defaults(func=_devices_credentials)
    hj212 = sub.add_parser("hj212-password", help="set a CEMS device's HJ 212 access password (PW); only a hash "
                                                  "is stored")
    hj212.add_argument("device_id")
    hj212.add_argument("--generate", action="store_true",
                       help="make a new random password and print it (once) instead of reading one from stdin")
    hj212.set_defaults(func=_devices_hj212_password)
    files = sub.add_parser("broker-files", help="write the broker's password file and ACL from the registry "
                                                "and tell the broker to reload them (turns broker auth on)")
    files.add_argument("--password-file", type=Path)
    files.add_argument("--acl-file", type=Path)
    files.add_argument("--pid-file", type=Path, help="the broker's pid file, to send SIGHUP")
    files.set_defaults(func=_devices_broker_files)


def _auth_files(settings: Settings, args: argparse.Namespace | None = None) -> BrokerAuthFiles:
    default = BrokerAuthFiles.for_data_dir(settings.data_dir)
    if args is None:
        return default
    return BrokerAuthFiles(args.password_file or default.password_file, args.acl_file or default.acl_file,
                           args.pid_file or default.pid_file)


def _devices_register(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def work(conn: psycopg.AsyncConnection) -> tuple[str, bool]:
        if args.site and not await site_queries.site_exists(conn, args.site):
            raise SanitelError(f"site {args.site!r} does not exist")
        if args.gateway and not await gateway_queries.gateway_exists(conn, args.gateway):
            raise SanitelError(f"gateway {args.gateway!r} does not exist; register it with 'sanitel gateways "
                               "register'")
        password, password_hash = await new_password_hash()
        async with conn.transaction():
            await device_queries.lock_usernames(conn)
            owner = await device_queries.username_owner(conn, args.device_id)
            if owner in ("gateway", "service"):
                raise SanitelError(f"{args.device_id!r} is the broker username of a {owner}; choose another id")
            created = await device_queries.register_device(
                conn, device_id=args.device_id, kind=args.kind, site_id=args.site, name=args.name,
                inactivity_timeout_s=args.timeout, metadata={}, password_hash=password_hash,
                gateway_id=args.gateway)
        if not created:
            raise SanitelError(f"device {args.device_id!r} is already registered; "
                               f"'sanitel devices credentials {args.device_id}' issues new credentials")
        return password, await sync_broker_files(conn, _auth_files(settings), settings.city)

    _check_broker_id(args.device_id)
    password, reloaded = _run(work, settings)
    _print_credentials(settings, args.device_id, password, f"{ROOT}/{settings.city}/{args.kind}/{args.device_id}/",
                       reloaded)
    return 0


def _devices_credentials(args: argparse.Namespace) -> int:
    settings = load_settings()
    _check_broker_id(args.username)

    async def work(conn: psycopg.AsyncConnection) -> tuple[str, bool]:
        if args.service:
            password = await set_service_account(conn, args.username, args.service)  # refuses a device's name
        else:
            found = await rotate_device_password(conn, args.username)
            if found is None:
                raise SanitelError(f"no device {args.username!r}; register it with 'sanitel devices register'")
            password = found
        return password, await sync_broker_files(conn, _auth_files(settings), settings.city)

    password, reloaded = _run(work, settings)
    _print_credentials(settings, args.username, password, None, reloaded)
    return 0


def _devices_broker_files(args: argparse.Namespace) -> int:
    settings = load_settings()
    files = _auth_files(settings, args)
    reloaded = _run(lambda conn: sync_broker_files(conn, files, settings.city, force=True), settings)
    print(f"wrote {files.password_file} and {files.acl_file}")
    print("broker reloaded" if reloaded else "no running broker found to reload: start it with these files")
    return 0


# HJ 212 PW: up to 9 characters (models.Hj212Password); letters and digits only, so any DAU's keypad takes it
_HJ212_ALPHABET = string.ascii_letters + string.digits


def _devices_hj212_password(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.generate:
        password = "".join(secrets.choice(_HJ212_ALPHABET) for _ in range(9))
    else:
        # never an argument: it would stand in the shell history and in every process listing
        password = getpass.getpass("HJ 212 password: ") if sys.stdin.isatty() else sys.stdin.readline()
        password = password.rstrip("\r\n")
    try:
        Hj212PasswordChange(password=password)
    except ValueError:
        raise SanitelError("an HJ 212 password is 1-9 characters, none of ; , & = nor control characters") from None

    async def work(conn: psycopg.AsyncConnection) -> None:
        kind = await device_queries.device_kind(conn, args.device_id)
        if kind is None:
            raise SanitelError(f"no device {args.device_id!r}; register it with 'sanitel devices register'")
        if kind != "cems":
            raise SanitelError(f"device {args.device_id!r} is a {kind}; only a cems device speaks HJ 212")
        await device_queries.set_hj212_password(conn, args.device_id, await hj212_password_hash(password))

    _run(work, settings)
    if args.generate:
        print(f"hj212 password: {password}")
        print("# shown once; only a hash is stored. Configure it as PW on the data unit.")
    else:
        print(f"hj212 password of {args.device_id} set")
    return 0


# --- sanitel gateways --------------------------------------------------------------------------------

def _register_gateways(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("gateways", help="register gateways and the devices behind them")
    sub = p.add_subparsers(dest="gateways_command", required=True, metavar="ACTION")
    reg = sub.add_parser("register", help="register a gateway and print its MQTT credentials (once)")
    reg.add_argument("gateway_id")
    reg.add_argument("--device", action="append", default=[], metavar="DEVICE_ID",
                     help="a registered device behind it (repeat the option for each)")
    reg.add_argument("--site", help="site id")
    reg.add_argument("--name")
    reg.set_defaults(func=_gateways_register)
    devices = sub.add_parser("devices", help="add devices behind a gateway or take them away")
    devices.add_argument("gateway_id")
    devices.add_argument("--add", action="append", default=[], metavar="DEVICE_ID")
    devices.add_argument("--remove", action="append", default=[], metavar="DEVICE_ID")
    devices.set_defaults(func=_gateways_devices)
    listing = sub.add_parser("list", help="list gateways and their devices")
    listing.set_defaults(func=_gateways_list)
    cred = sub.add_parser("credentials", help="issue new MQTT credentials for a gateway")
    cred.add_argument("gateway_id")
    cred.set_defaults(func=_gateways_credentials)
    remove = sub.add_parser("remove", help="remove a gateway: its credentials stop working, its devices stay")
    remove.add_argument("gateway_id")
    remove.set_defaults(func=_gateways_remove)


async def _require_devices(conn: psycopg.AsyncConnection, device_ids: list[str]) -> None:
    missing = await gateway_queries.missing_devices(conn, device_ids)
    if missing:
        raise SanitelError(f"not registered devices: {', '.join(missing)}; register them first "
                           "('sanitel devices register')")


def _gateways_register(args: argparse.Namespace) -> int:
    settings = load_settings()
    _check_broker_id(args.gateway_id)
    device_ids = list(dict.fromkeys(args.device))

    async def work(conn: psycopg.AsyncConnection) -> tuple[str, bool]:
        if args.site and not await site_queries.site_exists(conn, args.site):
            raise SanitelError(f"site {args.site!r} does not exist")
        password, password_hash = await new_password_hash()
        async with conn.transaction():
            await device_queries.lock_usernames(conn)
            owner = await device_queries.username_owner(conn, args.gateway_id)
            if owner == "gateway":
                raise SanitelError(f"gateway {args.gateway_id!r} is already registered; "
                                   f"'sanitel gateways credentials {args.gateway_id}' issues new credentials")
            if owner is not None:
                raise SanitelError(f"{args.gateway_id!r} is the broker username of a {owner}; choose another id")
            await _require_devices(conn, device_ids)
            await gateway_queries.insert_gateway(conn, gateway_id=args.gateway_id, name=args.name,
                                                 site_id=args.site, password_hash=password_hash)
            await gateway_queries.set_devices(conn, args.gateway_id, device_ids)
        return password, await sync_broker_files(conn, _auth_files(settings), settings.city)

    password, reloaded = _run(work, settings)
    _print_credentials(settings, args.gateway_id, password, f"{ROOT}/{settings.city}/gateway/{args.gateway_id}/",
                       reloaded)
    return 0


def _gateways_devices(args: argparse.Namespace) -> int:
    settings = load_settings()
    add, remove = list(dict.fromkeys(args.add)), list(dict.fromkeys(args.remove))
    if not add and not remove:
        raise SanitelError("name devices with --add and/or --remove")
    if set(add) & set(remove):
        raise SanitelError(f"both added and removed: {', '.join(sorted(set(add) & set(remove)))}")

    async def work(conn: psycopg.AsyncConnection) -> list[str]:
        async with conn.transaction():
            if not await gateway_queries.gateway_exists(conn, args.gateway_id):
                raise SanitelError(f"no gateway {args.gateway_id!r}; 'sanitel gateways list' shows them")
            await _require_devices(conn, add)
            await gateway_queries.add_devices(conn, args.gateway_id, add)
            not_behind = await gateway_queries.remove_devices(conn, args.gateway_id, remove)
            if not_behind:
                raise SanitelError(f"not behind gateway {args.gateway_id!r}: {', '.join(not_behind)}")
            row = await gateway_queries.get_gateway(conn, args.gateway_id)
        await sync_broker_files(conn, _auth_files(settings), settings.city)
        return list(row["devices"]) if row else []

    devices = _run(work, settings)
    print(f"behind {args.gateway_id}: {', '.join(devices) or '(no devices)'}")
    return 0


def _gateways_list(args: argparse.Namespace) -> int:
    async def work(conn: psycopg.AsyncConnection) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        after = None
        while page := await gateway_queries.list_gateways(conn, after=after, limit=500):
            rows += page
            after = str(page[-1]["gateway_id"])
        return rows

    print(f"{'GATEWAY':<26}{'SITE':<20}{'CREDENTIALS':<13}DEVICES")
    for r in _run(work):
        devices = r["devices"] if isinstance(r["devices"], list) else []
        print(f"{r['gateway_id']!s:<26}{r['site_id'] or '-'!s:<20}{'yes' if r['has_credentials'] else 'no':<13}"
              f"{', '.join(devices) or '-'}")
    return 0


def _gateways_credentials(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def work(conn: psycopg.AsyncConnection) -> tuple[str, bool]:
        password = await rotate_gateway_password(conn, args.gateway_id)
        if password is None:
            raise SanitelError(f"no gateway {args.gateway_id!r}; register it with 'sanitel gateways register'")
        return password, await sync_broker_files(conn, _auth_files(settings), settings.city)

    password, reloaded = _run(work, settings)
    _print_credentials(settings, args.gateway_id, password, f"{ROOT}/{settings.city}/gateway/{args.gateway_id}/",
                       reloaded)
    return 0


def _gateways_remove(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def work(conn: psycopg.AsyncConnection) -> bool:
        if not await gateway_queries.delete_gateway(conn, args.gateway_id):
            raise SanitelError(f"no gateway {args.gateway_id!r}; 'sanitel gateways list' shows them")
        return await sync_broker_files(conn, _auth_files(settings), settings.city)

    reloaded = _run(work, settings)
    print(f"gateway {args.gateway_id} removed" + ("" if reloaded else
          " (broker not reloaded: auth off, or no running broker found)"))
    return 0


# --- shared by devices and gateways -----------------------------------------------------------------

def _check_broker_id(ident: str) -> None:
    if not valid_username(ident):
        raise SanitelError(f"{ident!r} is not a valid id: it is also a broker username, so it must match "
                           f"{USERNAME_PATTERN} (letters, digits, _ . -; no ':'; at most 64 characters)")


def _print_credentials(settings: Settings, username: str, password: str, topic_prefix: str | None,
                       reloaded: bool) -> None:
    print(f"username: {username}")
    print(f"password: {password}")
    if topic_prefix:
        print(f"publish under: {topic_prefix}<stream>")
    print("# shown once; only a hash is stored." + ("" if reloaded else
          " Broker not reloaded (auth off, or no running broker found)."))


# --- plumbing ----------------------------------------------------------------------------------------

def _run(work: Callable[[psycopg.AsyncConnection], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run one unit of work on a fresh autocommit connection, as the API's role."""
    settings = settings or load_settings()
    url = settings.database_url_for("api")
    require_current_schema(url)

    async def main() -> T:
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise SanitelError(f"cannot connect to the database: {str(exc).strip().splitlines()[-1]}") from None
        async with conn:
            return await work(conn)

    return asyncio.run(main())
