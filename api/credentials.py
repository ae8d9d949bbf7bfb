"""Issuing broker credentials and keeping the broker's password file and ACL in step with the registry.

Used by the devices routes and by ``sanitel devices …``; the SQL is in ``api.queries.devices``.
"""

from __future__ import annotations

import logging

import anyio
from psycopg import AsyncConnection

from sanitel.api.queries import devices as queries
from sanitel.broker_auth import BrokerAccount, BrokerAuthFiles, hash_password, new_password

log = logging.getLogger("sanitel.api.credentials")


async def sync_broker_files(conn: AsyncConnection, files: BrokerAuthFiles, city: str, *, force: bool = False) -> bool:
    """Rewrite the password file and ACL from the registry and SIGHUP the broker.

    Does nothing unless broker auth is on (the password file exists) or ``force``; returns whether a running
    broker was told to reload."""
    if not (force or files.enabled):
        return False
    # Serialised across processes (API workers, CLI): whoever writes last has read after every commit.
    async with queries.broker_files_lock(conn):
        accounts = [BrokerAccount(u, h, role) for u, h, role in await queries.broker_accounts(conn)]
        try:
            await anyio.to_thread.run_sync(files.write, accounts, city)
        except OSError as exc:
            # the registration itself is committed and its password must still reach the caller
            log.error("cannot write the broker's auth files %s / %s: %s", files.password_file, files.acl_file, exc)
            return False
    reloaded = files.reload_broker()
    log.info("broker auth files rewritten (%d accounts); broker reloaded: %s", len(accounts), reloaded)
    return reloaded


async def rotate_device_password(conn: AsyncConnection, device_id: str) -> str | None:
    """A new password for a registered device (returned once); None when the device does not exist."""
    password = new_password()
    hashed = await anyio.to_thread.run_sync(hash_password, password)
    return password if await queries.set_device_password(conn, device_id, hashed) else None


async def set_service_account(conn: AsyncConnection, username: str, role: str) -> str:
    """Create or re-key a service account (collector, simulator); returns its new password once."""
    password = new_password()
    await queries.set_service_password(conn, username, role, await anyio.to_thread.run_sync(hash_password, password))
    return password
