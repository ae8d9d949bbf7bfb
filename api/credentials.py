"""Issuing broker credentials and keeping the broker's password file and ACL in step with the registry.

Used by the devices and gateways routes and by ``sanitel devices …`` / ``sanitel gateways …``; the SQL is in
``api.queries.devices`` and ``api.queries.gateways``. Devices, gateways and service accounts share one broker
username namespace: a name taken by one kind of account is refused for the others.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import anyio
from psycopg import AsyncConnection

from sanitel.api.models import MqttCredentials
from sanitel.api.queries import devices as queries
from sanitel.api.queries import gateways as gateway_queries
from sanitel.broker_auth import BrokerAuthFiles, hash_password, new_password
from sanitel.errors import SanitelError
from sanitel.secret_hash import hash_secret
from sanitel.settings import Settings

log = logging.getLogger("sanitel.api.credentials")


class UsernameTaken(SanitelError):
    """The broker username belongs to another device, gateway or service account."""


async def sync_broker_files(conn: AsyncConnection, files: BrokerAuthFiles, city: str, *, force: bool = False) -> bool:
    """Rewrite the password file and ACL from the registry and SIGHUP the broker.

    Does nothing unless broker auth is on (the password file exists) or ``force``; returns whether a running
    broker was told to reload."""
    if not (force or files.enabled):
        return False
    # Serialised across processes (API workers, CLI): whoever writes last has read after every commit.
    async with queries.broker_files_lock(conn):
        accounts = await queries.broker_accounts(conn)
        try:
            await anyio.to_thread.run_sync(files.write, accounts, city)
        except OSError as exc:
            # the registration itself is committed and its password must still reach the caller
            log.error("cannot write the broker's auth files %s / %s: %s", files.password_file, files.acl_file, exc)
            return False
    reloaded = files.reload_broker()
    log.info("broker auth files rewritten (%d accounts); broker reloaded: %s", len(accounts), reloaded)
    return reloaded


async def new_password_hash() -> tuple[str, str]:
    """A new broker password and its hash (PBKDF2, off the event loop)."""
    password = new_password()
    return password, await anyio.to_thread.run_sync(hash_password, password)


async def rotate_device_password(conn: AsyncConnection, device_id: str) -> str | None:
    """A new password for a registered device (returned once); None when the device does not exist."""
    password, hashed = await new_password_hash()
    return password if await queries.set_device_password(conn, device_id, hashed) else None


async def rotate_gateway_password(conn: AsyncConnection, gateway_id: str) -> str | None:
    """A new password for a registered gateway (returned once); None when the gateway does not exist."""
    password, hashed = await new_password_hash()
    return password if await gateway_queries.set_gateway_password(conn, gateway_id, hashed) else None


async def hj212_password_hash(password: str) -> str:
    """The salted scrypt hash stored for an HJ 212 access password (the collector verifies frames against it)."""
    return await anyio.to_thread.run_sync(hash_secret, password)


async def set_service_account(conn: AsyncConnection, username: str, role: str) -> str:
    """Create or re-key a service account (collector, hj212, evaluator, api_probe, simulator); returns its new
    password once. Raises ``UsernameTaken`` when a device or gateway has the name."""
    password, hashed = await new_password_hash()
    async with conn.transaction():
        await queries.lock_usernames(conn)
        owner = await queries.username_owner(conn, username)
        if owner not in (None, "service"):
            raise UsernameTaken(f"{username!r} is a {owner}'s broker username; choose another name")
        await queries.set_service_password(conn, username, role, hashed)
    return password


def mqtt_credentials(settings: Settings, username: str, topic_prefix: str, password: str,
                     reloaded: bool) -> MqttCredentials:
    """The credentials response of a device or a gateway."""
    return MqttCredentials(username=username, password=password,
                           broker_url=_without_userinfo(settings.effective_mqtt_url),
                           topic_prefix=topic_prefix, broker_reloaded=reloaded)


def _without_userinfo(url: str) -> str:
    # the API's own broker login must never leak into a device's credentials
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
