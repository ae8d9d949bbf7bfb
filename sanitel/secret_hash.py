"""Salted scrypt hashes of secrets (API keys, HJ 212 passwords), and a cache of secrets already verified.

Kernel: the API verifies keys with it and the collector verifies HJ 212 frame passwords, neither may import
the other. A stored hash reads ``scrypt$n$r$p$salt_hex$hash_hex``; the secret itself is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def verify_secret(secret: str, secret_hash: str) -> bool:
    """True when ``secret`` matches a stored ``scrypt$…`` hash, or a ``sha256$salt$hash`` one (what migration
    0060 made of HJ 212 passwords kept in clear before; SQL has no scrypt)."""
    try:
        scheme, *fields = secret_hash.split("$")
        if scheme == "scrypt":
            n, r, p, salt_hex, digest_hex = fields
            actual = _scrypt(secret, bytes.fromhex(salt_hex), int(n), int(r), int(p))
        elif scheme == "sha256":
            salt, digest_hex = fields
            actual = hashlib.sha256((salt + secret).encode()).digest()
        else:
            return False
        return hmac.compare_digest(actual, bytes.fromhex(digest_hex))
    except ValueError:
        return False


class VerifiedCache:
    """Remembers (id, stored hash, sha256(secret)) triples that passed scrypt, for ``ttl_s`` seconds at most.
    Thread-safe, bounded.

    The stored hash is part of the entry, so an id whose secret is replaced never matches an old entry; the
    caller still reads the stored row on every use, so revoking takes effect at once. ``clock`` is monotonic
    seconds (tests pass their own).
    """

    def __init__(self, size: int = 1024, *, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()  # entry → verified at
        self._lock = threading.Lock()

    @staticmethod
    def _entry(key_id: str, secret_hash: str, secret: str) -> tuple[str, str, bytes]:
        return key_id, secret_hash, hashlib.sha256(secret.encode()).digest()

    def known(self, key_id: str, secret_hash: str, secret: str) -> bool:
        """True when this secret was verified for this hash less than ``ttl_s`` ago (no scrypt)."""
        entry = self._entry(key_id, secret_hash, secret)
        with self._lock:
            verified_at = self._entries.get(entry)
            if verified_at is None:
                return False
            if self._clock() - verified_at >= self._ttl_s:
                del self._entries[entry]
                return False
            self._entries.move_to_end(entry)
            return True

    def verify(self, key_id: str, secret_hash: str, secret: str) -> bool:
        if self.known(key_id, secret_hash, secret):
            return True
        if not verify_secret(secret, secret_hash):
            return False
        with self._lock:
            self._entries[self._entry(key_id, secret_hash, secret)] = self._clock()
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return True
