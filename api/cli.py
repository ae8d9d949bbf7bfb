"""``sanitel api``, ``sanitel keys …`` and ``sanitel devices …``.

Keys and device credentials are printed once, when made; only hashes are stored.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg

from sanitel.api.auth import ROLES, new_key
from sanitel.api.credentials import rotate_device_password, set_service_account, sync_broker_files
from sanitel.api.queries import devices as device_queries
from sanitel.api.queries import keys as key_queries
from sanitel.api.queries import sites as site_queries
from sanitel.broker_auth import SERVICE_RULES, BrokerAuthFiles, hash_password, new_password
from sanitel.db import require_current_schema
from sanitel.errors import SanitelError
from sanitel.schemas.topics import DEVICE_KINDS, ID_PATTERN, ROOT
from sanitel.settings import Settings, load_settings

T = TypeVar("T")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_api(subparsers)
    _register_keys(subparsers)
    _register_devices(subparsers)


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
    reg.set_defaults(func=_devices_register)
    cred = sub.add_parser("credentials", help="issue new MQTT credentials for a device or a service account")
    cred.add_argument("username", help="device id, or a service account name with --service")
    cred.add_argument("--service", choices=tuple(SERVICE_RULES),
                      help="create or re-key a service account with this role (collector/alerts: 'service')")
    cred.set_defaults(func=_devices_credentials)
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
    password = new_password()

    async def work(conn: psycopg.AsyncConnection) -> bool:
        if args.site and not await site_queries.site_exists(conn, args.site):
            raise SanitelError(f"site {args.site!r} does not exist")
        if await device_queries.username_taken_by_service(conn, args.device_id):
            raise SanitelError(f"{args.device_id!r} is a broker service account's name; choose another id")
        created = await device_queries.register_device(
            conn, device_id=args.device_id, kind=args.kind, site_id=args.site, name=args.name,
            inactivity_timeout_s=args.timeout, metadata={}, password_hash=hash_password(password))
        if not created:
            raise SanitelError(f"device {args.device_id!r} is already registered; "
                               f"'sanitel devices credentials {args.device_id}' issues new credentials")
        return await sync_broker_files(conn, _auth_files(settings), settings.city)

    _check_device_id(args.device_id)
    reloaded = _run(work, settings)
    _print_credentials(settings, args.device_id, password, f"{ROOT}/{settings.city}/{args.kind}/{args.device_id}/",
                       reloaded)
    return 0


def _devices_credentials(args: argparse.Namespace) -> int:
    settings = load_settings()
    _check_device_id(args.username)

    async def work(conn: psycopg.AsyncConnection) -> tuple[str, bool]:
        if args.service:
            if await device_queries.username_taken_by_device(conn, args.username):
                raise SanitelError(f"{args.username!r} is a device's broker username; choose another name")
            password = await set_service_account(conn, args.username, args.service)
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


def _check_device_id(device_id: str) -> None:
    if not re.fullmatch(ID_PATTERN, device_id):
        raise SanitelError(f"{device_id!r} is not a valid id (letters, digits, _ . : -; at most 64 characters)")


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
