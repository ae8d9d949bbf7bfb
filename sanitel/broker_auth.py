"""Broker credentials: Mosquitto's password file and ACL, generated from the registry.

Kernel, not a stage: the local stack (sanitel/stack.py) reads these files when it starts the broker, and the API
and its ``sanitel devices`` / ``sanitel gateways`` commands write them.

One username namespace: every device logs in as its ``device_id``, every gateway as its ``gateway_id``, every
service account by its name. The ACL names each of them (no ``pattern`` rule: a pattern applies to every
user, and ``sanitation/{city}/+/%u/+`` let a device publish a gateway batch under its own id and any kind or
stream): a device may write only ``sanitation/{city}/{its kind}/{its id}/{stream}`` for the streams of
``schemas.topics.STREAMS`` (a CEMS unit also ``…/hj212``), a gateway only its ``…/gateway/{id}/batch``, a
service account what its role needs (``SERVICE_RULES``). Mosquitto denies whatever no rule allows, reading
included. The broker itself refuses retained messages and makes a client's id its username
(``retain_available false``, ``use_username_as_clientid true``: sanitel/servers.py).

Passwords are hashed here in the format Mosquitto 2.0 reads (``mosquitto_passwd`` default,
PBKDF2-HMAC-SHA512): ``$7$<iterations>$<base64 12-byte salt>$<base64 64-byte hash>``; the registry stores
exactly that string, so regenerating the files never needs a plain password.

After the files change the broker is sent SIGHUP, which makes Mosquitto re-read both files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sanitel.local_secrets import write_private_file
from sanitel.schemas.topics import CITY_PATTERN, DEVICE_KINDS, ROOT, STREAMS

log = logging.getLogger("sanitel.broker_auth")

# Mosquitto's default is 101. Device passwords are 192-bit random strings, so the iteration count is not
# what protects them; it is kept low because a broker restart makes every device reconnect at once.
PBKDF2_ITERATIONS = 1000
_SALT_BYTES = 12  # what mosquitto_passwd uses
_HASH_BYTES = 64  # SHA-512 output

# A broker username (device, gateway or service account). Narrower than the topic grammar's ids: no ':'
# (the password file's separator: "a:b:$7$…" would log in as "a"), no MQTT wildcards, no whitespace (the
# ACL file is split on spaces). The same pattern is a CHECK in migration 0060.
USERNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_USERNAME = re.compile(rf"^{USERNAME_PATTERN}$")
# what may stand after "name:" in the password file: a crypt-style hash, never a second ':' or a line break
_PASSWORD_HASH = re.compile(r"^\$[0-9]+\$[A-Za-z0-9+/=$.]+$")
_CITY = re.compile(rf"^{CITY_PATTERN}$")

GATEWAY = "gateway"  # BrokerAccount.kind of a gateway (the topic grammar's kind segment for batches)

# Topics per service role; "{city}" is the deployment's city. Whatever is not listed is denied.
SERVICE_RULES: dict[str, tuple[str, ...]] = {
    # subscribes to everything under the city (it must see malformed topics to dead-letter them), never writes
    "collector": (f"topic read {ROOT}/{{city}}/#",),
    # the HJ 212 TCP listener republishes each data unit's frames under its MN (schemas.topics.hj212_topic)
    "hj212": (f"topic write {ROOT}/{{city}}/cems/+/hj212",),
    # the alert publisher (alerts/notify/mqtt.py, schemas.topics.alert_topic); nobody else writes there
    "evaluator": (f"topic write {ROOT}/{{city}}/alerts/#",),
    # the API's /health probe only connects
    "api_probe": (),
    # load and scenario simulators publish as any device or gateway (engineers' test stacks only); spelled out
    # per kind so that sanitation/{city}/+/+/+ does not reach into alerts/
    "simulator": tuple(f"topic write {ROOT}/{{city}}/{kind}/+/+" for kind in (*DEVICE_KINDS, GATEWAY)),
    # before roles, one account did what the collector and the alert publisher do; kept for old deployments
    "service": (f"topic read {ROOT}/{{city}}/#", f"topic write {ROOT}/{{city}}/alerts/#"),
}


def valid_username(username: str) -> bool:
    """True when ``username`` can stand in the password file and the ACL (``USERNAME_PATTERN``)."""
    return bool(_USERNAME.fullmatch(username))


def new_password() -> str:
    """A random password for a device, gateway or service account (shown once, never stored)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """The password-file hash Mosquitto 2.0 verifies (same as ``mosquitto_passwd -H sha512-pbkdf2``)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (tests use it to prove Mosquitto's format)."""
    try:
        _, kind, iterations, salt_b64, digest_b64 = password_hash.split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except ValueError:
        return False
    if kind != "7":
        return False
    actual = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), len(expected))
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class BrokerAccount:
    """One broker login. A service account has a ``service_role`` (a key of ``SERVICE_RULES``); a device has its
    ``kind`` (one of ``DEVICE_KINDS``); a gateway has kind ``GATEWAY``."""

    username: str
    password_hash: str
    service_role: str | None = None
    kind: str | None = None

    def topics(self, city: str) -> tuple[str, ...]:
        """The ACL lines of this account; empty = may connect, may neither publish nor subscribe."""
        if self.service_role is not None:
            return tuple(rule.format(city=city) for rule in SERVICE_RULES.get(self.service_role, ()))
        if self.kind == GATEWAY:
            return (f"topic write {ROOT}/{city}/{GATEWAY}/{self.username}/batch",)
        if self.kind in DEVICE_KINDS:
            streams = (*STREAMS, "hj212") if self.kind == "cems" else STREAMS
            return tuple(f"topic write {ROOT}/{city}/{self.kind}/{self.username}/{s}" for s in streams)
        return ()


def usable_accounts(accounts: Iterable[BrokerAccount]) -> list[BrokerAccount]:
    """The accounts that can be written to the files, sorted by username; the others are logged and left out.

    Left out: a username outside ``USERNAME_PATTERN`` (an id with ':' registered before the pattern was
    narrowed would corrupt the password file), a hash that is not one crypt-style token, an unknown role, and
    every account after the first of the same username (service accounts first, then devices, then gateways:
    registration refuses such collisions, so only a hand-made row can cause one)."""
    def precedence(a: BrokerAccount) -> int:
        return 0 if a.service_role is not None else 2 if a.kind == GATEWAY else 1

    usable: dict[str, BrokerAccount] = {}
    for account in sorted(accounts, key=lambda a: (a.username, precedence(a))):
        if not valid_username(account.username):
            log.error("broker account %r left out of the broker files: a username must match %s",
                      account.username, USERNAME_PATTERN)
        elif not _PASSWORD_HASH.fullmatch(account.password_hash):
            log.error("broker account %r left out of the broker files: its password hash is malformed",
                      account.username)
        elif account.service_role is not None and account.service_role not in SERVICE_RULES:
            log.error("broker account %r left out of the broker files: unknown service role %r",
                      account.username, account.service_role)
        elif account.username in usable:
            log.error("broker account %r left out of the broker files: the username is taken by another account",
                      account.username)
        else:
            usable[account.username] = account
    return list(usable.values())


def password_file_text(accounts: Iterable[BrokerAccount]) -> str:
    return "".join(f"{a.username}:{a.password_hash}\n" for a in usable_accounts(accounts))


def acl_file_text(accounts: Iterable[BrokerAccount], city: str) -> str:
    """One ``user`` block per account with exactly its topics; no patterns (see the module docstring)."""
    if not _CITY.fullmatch(city):
        raise ValueError(f"city {city!r} must match {CITY_PATTERN}")
    lines = ["# Generated by sanitel from the registry; edits are overwritten.",
             "# Every account has only the topics listed under it; anything else is denied.", ""]
    for account in usable_accounts(accounts):
        lines.append(f"user {account.username}")
        lines.extend(account.topics(city) or ("# connect only",))
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class BrokerAuthFiles:
    """Where the broker reads its password file and ACL, and the pid file used to send SIGHUP.

    ``for_data_dir`` is the local stack's layout: the files sit in the broker's own data folder.
    """

    password_file: Path
    acl_file: Path
    pid_file: Path | None = None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> BrokerAuthFiles:
        folder = Path(data_dir).absolute() / "mosquitto"  # the local stack: sanitel/stack.py
        return cls(folder / "passwd", folder / "acl", folder / "mosquitto.pid")

    @property
    def enabled(self) -> bool:
        """Auth is on when the password file exists; the API only keeps existing files in step."""
        return self.password_file.exists()

    def write(self, accounts: list[BrokerAccount], city: str) -> None:
        # atomic (the broker may re-read at any moment and must never see half a file) and 0600: the hashes and the
        # list of accounts are nobody else's business; the broker runs as the user that writes them
        write_private_file(self.password_file, password_file_text(accounts))
        write_private_file(self.acl_file, acl_file_text(accounts, city))

    def reload_broker(self) -> bool:
        """SIGHUP the broker so it re-reads both files; False when no running broker is known."""
        pid = _mosquitto_pid(self.pid_file) if self.pid_file else None
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        return True


def _mosquitto_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # a stale pid file may name a reused pid: never signal anything but a mosquitto
    return pid if b"mosquitto" in cmdline else None
