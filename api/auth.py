"""API keys: random tokens shown once, stored as salted scrypt hashes, with a role each.

A token reads ``sntl_<key_id>_<secret>``: ``key_id`` (16 hex digits) is the lookup key and is not
secret; ``secret`` is 256 random bits. Only ``scrypt(secret, salt)`` is stored. Verification costs tens
of milliseconds by design, so a process remembers which (key, secret) pairs it has already verified;
the key row is still read on every request, so revoking a key or changing its role takes effect at once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sanitel.secret_hash import hash_secret

Role = Literal["viewer", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "supervisor", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

TOKEN_PREFIX = "sntl_"
_TOKEN = re.compile(r"^sntl_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")


def role_allows(role: str, needed: Role) -> bool:
    """Roles are ordered: an admin may do what a supervisor may, a supervisor what a viewer may."""
    return _RANK.get(role, -1) >= _RANK[needed]


@dataclass(frozen=True)
class Principal:
    """The verified caller of one request."""

    key_id: str
    name: str  # recorded as the actor of acknowledgements, assignments and silences
    role: Role
    # the stored hash the key was verified against: an open stream stays valid while it is unchanged
    secret_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class NewKey:
    key_id: str
    token: str  # shown to the user once
    secret_hash: str


def new_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, f"{TOKEN_PREFIX}{key_id}_{secret}", hash_secret(secret))


def parse_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret), or None when the token is not one of ours."""
    match = _TOKEN.match(token.strip())
    return (match.group(1), match.group(2)) if match else None


def token_of(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` first, else ``X-API-Key: <key>``.

    The same reading as FastAPI's ``HTTPBearer`` / ``APIKeyHeader`` (which document it in OpenAPI): another
    ``Authorization`` scheme is ignored, an empty value is no key."""
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None
