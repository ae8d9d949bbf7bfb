"""API keys: random tokens shown once, stored as salted scrypt hashes, with a role each.

A token reads ``sntl_<key_id>_<secret>``: ``key_id`` (16 hex digits) is the lookup key and is not
secret; ``secret`` is 256 random bits. Only ``scrypt(secret, salt)`` is stored. Verification costs tens
of milliseconds by design, so a process remembers which (key, secret) pairs it has already verified;
the key row is still read on every request, so revoking a key or changing its role takes effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

Role = Literal["viewer", "supervisor", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "supervisor", "admin")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

TOKEN_PREFIX = "sntl_"
_TOKEN = re.compile(r"^sntl_([0-9a-f]{16})_([A-Za-z0-9_-]{20,128})$")
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def role_allows(role: str, needed: Role) -> bool:
    """Roles are ordered: an admin may do what a supervisor may, a supervisor what a viewer may."""
    return _RANK.get(role, -1) >= _RANK[needed]


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


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def verify_secret(secret: str, secret_hash: str) -> bool:
    try:
        scheme, n, r, p, salt_hex, digest_hex = secret_hash.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(secret, bytes.fromhex(salt_hex), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, bytes.fromhex(digest_hex))


class VerifiedCache:
    """Remembers (key_id, stored hash, sha256(secret)) triples that passed scrypt. Thread-safe, bounded.

    The stored hash is part of the entry, so a key whose secret is replaced never matches an old entry.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _entry(key_id: str, secret_hash: str, secret: str) -> tuple[str, str, bytes]:
        return key_id, secret_hash, hashlib.sha256(secret.encode()).digest()

    def verify(self, key_id: str, secret_hash: str, secret: str) -> bool:
        entry = self._entry(key_id, secret_hash, secret)
        with self._lock:
            if entry in self._entries:
                self._entries.move_to_end(entry)
                return True
        if not verify_secret(secret, secret_hash):
            return False
        with self._lock:
            self._entries[entry] = None
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return True
