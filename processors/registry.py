"""The device registry as the ingest side sees it: kind, gateway and HJ 212 password hash of each device, cached,
and kept current by PostgreSQL LISTEN/NOTIFY (migration 0060: channel ``sanitel_registry``, payload
``devices:<id>`` or ``gateways:<id>`` on every change).

Used by the collector's writer and by the HJ 212 TCP listener, each with nothing but the ingest role's URL (it
needs SELECT on ``devices``; LISTEN needs no privilege).

Freshness: ``start()`` runs a thread that LISTENs on a connection of its own and drops the entry of every device
named by a notification, so a change reaches the cache within the notification's latency (milliseconds). While
that connection is down — notifications may be missed — the cache is not used at all (every lookup reads the
database), and once it is back the whole cache is dropped. The whole cache is also dropped every ``refresh_s``
seconds (a safety net for anything the trigger does not see, such as ``ALTER TABLE … DISABLE TRIGGER``). Without
``start()`` (a one-off writer in a test or a tool) only the ``refresh_s`` bound applies.

A lookup that raced with a change cannot put the old value back into the cache: every drop bumps a generation,
and what a read found is kept only when nothing about those ids was dropped since the read began.

HJ 212 device settings (``schemas/hj212_settings.py``): a CEMS device's entry also carries the time zone its DAU's
``DataTime`` is local to and whether its analyser measures dry gas — ``devices.metadata`` keys ``timezone`` and
``gas_is_dry``, the time zone of its plant when it has none of its own — read by the same query, so the HJ 212
listener and the collector convert frames per device without a database round trip per frame. A device's
metadata change notifies like any other change of its row. Sites have no trigger (migration 0060): a changed
``sites.timezone`` reaches the caches with the next full reload (``refresh_s``), or at once where a ``sites:<id>``
notification is sent (it drops the whole cache: the devices below a site are not known here).

HJ 212 passwords (HJ 212-2017 §6.3: each frame carries the DAU's PW in clear) are compared with the stored salted
hash (``sanitel.secret_hash``); a verified (MN, hash, PW) is remembered for ``refresh_s`` at most, so scrypt runs
once per DAU and password, not once per frame. A rotated password changes the stored hash, so an entry of the old
one never matches again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

import psycopg

from sanitel.schemas.hj212_settings import (
    NO_SETTINGS,
    Hj212DeviceSettings,
    metadata_from_json,
    parse_device_settings,
)
from sanitel.secret_hash import VerifiedCache

log = logging.getLogger("sanitel.registry")

CHANNEL = "sanitel_registry"
# The HJ 212 settings of CEMS devices only (no other kind converts frames): each metadata key's JSON text, cut at
# MAX_STORED_JSON (100) characters so that no stored value is costly to read back; and the time zone of the
# device's plant as cems_averages.device_placement reads it for a device on a line (the line's parent's, else the
# line's own), else that of the device's own site.
_SELECT = """
SELECT d.device_id, d.kind, d.gateway_id, d.hj212_password_hash,
       CASE WHEN d.kind = 'cems' THEN left((d.metadata -> 'gas_is_dry')::text, 100) END,
       CASE WHEN d.kind = 'cems' THEN left((d.metadata -> 'timezone')::text, 100) END,
       CASE WHEN d.kind = 'cems' THEN
           CASE WHEN s.kind = 'line' THEN COALESCE(p.timezone, s.timezone) ELSE s.timezone END END
  FROM devices d LEFT JOIN sites s ON s.site_id = d.site_id LEFT JOIN sites p ON p.site_id = s.parent_id
 WHERE d.device_id = ANY(%s)"""
_RECONNECT_MAX_S = 10.0
_WAIT_S = 1.0  # the listener thread checks for stop() this often
_REFUSED_CACHE = 4096  # wrong (MN, hash, PW) triples remembered: a DAU retrying a wrong PW costs one scrypt per TTL


class RegistryUnavailable(Exception):
    """The registry's own connection to the database failed; the caller decides (the HJ 212 listener: do not
    confirm the frame)."""


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    kind: str
    gateway_id: str | None
    hj212_password_hash: str | None
    hj212: Hj212DeviceSettings = NO_SETTINGS  # time zone and gas basis of a CEMS device's frames


class Hj212Check(StrEnum):
    OK = "ok"
    UNKNOWN_DEVICE = "unknown_device"
    NO_PASSWORD = "no_password"
    WRONG_PASSWORD = "wrong_password"


class DeviceRegistry:
    """Thread-safe. ``clock`` is monotonic seconds (tests pass their own)."""

    def __init__(self, url: str, *, refresh_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, DeviceEntry] = {}
        self._loaded_at = clock()  # the whole cache is dropped refresh_s after this
        self._generation = 0  # bumped by every drop
        self._dropped_at: dict[str, int] = {}  # device id → generation of its last drop (since the last clear)
        self._cleared_at = 0  # generation of the last drop of everything
        self._started = False
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listen_conn: psycopg.Connection | None = None
        self._conn: psycopg.Connection | None = None  # for lookups without a caller's connection
        self._conn_lock = threading.Lock()
        self._verified = VerifiedCache(ttl_s=refresh_s, clock=clock)
        self._refused: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._settings_logged: dict[str, tuple[str, ...]] = {}  # device → problems logged since the last clear
        self.listen_connects = 0  # LISTEN connections made (tests wait for the listener with it)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """LISTEN for registry changes in a thread of its own (reconnecting after losses). Until it listens,
        lookups bypass the cache."""
        if self._thread is not None:
            return
        self._started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen_loop, name="sanitel-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._listen_conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.cancel_safe()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        with self._conn_lock:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None

    @property
    def listening(self) -> bool:
        """True while notifications are being received (the cache is in use)."""
        return self._listening

    def wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._listening:
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.02)
        return True

    # --- the cache -------------------------------------------------------------------------
    def lookup(self, device_ids: Iterable[str], conn: psycopg.Connection | None = None) -> dict[str, DeviceEntry]:
        """The registered devices among ``device_ids`` (unknown ones are absent). Misses are read from the
        database — in ``conn``'s transaction when given (its errors propagate; what it reads is not cached, since
        that transaction may still roll back: call ``remember`` after it commits), else on the registry's own
        connection (RegistryUnavailable when that fails)."""
        wanted = set(device_ids)
        token, found = self.cached(wanted)
        missing = sorted(wanted - found.keys())
        if not missing:
            return found
        if conn is not None:
            return found | self._noted(_read(conn, missing))
        read = self._noted(self._read_own(missing))
        self.remember(read, token)
        return found | read

    def _noted(self, read: dict[str, DeviceEntry]) -> dict[str, DeviceEntry]:
        """``read``, after logging the HJ 212 settings it could not use: once per device and problem until the next
        full reload, so a misconfigured device is named every ``refresh_s`` rather than on every frame while
        the cache is bypassed."""
        for device_id, entry in read.items():
            problems = entry.hj212.problems
            if not problems:
                continue
            with self._lock:
                if self._settings_logged.get(device_id) == problems:
                    continue
                self._settings_logged[device_id] = problems
            log.warning("device %s: HJ 212 settings in devices.metadata not used, the next default applies: %s",
                        device_id, "; ".join(problems))
        return read

    def cached(self, device_ids: Iterable[str]) -> tuple[int, dict[str, DeviceEntry]]:
        """(a token for ``remember``, the cached entries among ``device_ids``)."""
        with self._lock:
            self._expire()
            token = self._generation
            if self._started and not self._listening:
                return token, {}
            entries = self._entries
            return token, {d: entries[d] for d in device_ids if d in entries}

    def remember(self, entries: dict[str, DeviceEntry], token: int) -> None:
        """Cache what a read begun at ``token`` (from ``cached``) found, except the ids dropped since."""
        with self._lock:
            if (self._started and not self._listening) or self._cleared_at > token:
                return
            dropped = self._dropped_at
            for device_id, entry in entries.items():
                if dropped.get(device_id, -1) <= token:
                    self._entries[device_id] = entry

    def forget(self, device_id: str) -> None:
        with self._lock:
            self._generation += 1
            self._dropped_at[device_id] = self._generation
            self._entries.pop(device_id, None)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._generation += 1
        self._cleared_at = self._generation
        self._dropped_at = {}
        self._entries = {}
        self._settings_logged = {}
        self._loaded_at = self._clock()

    def _expire(self) -> None:
        if self._clock() - self._loaded_at >= self.refresh_s:
            self._clear()

    def _forget_gateway(self, gateway_id: str) -> None:
        # a deleted gateway's devices change too (ON DELETE SET NULL fires their own notifications); belt and braces
        with self._lock:
            self._generation += 1
            for device_id, entry in list(self._entries.items()):
                if entry.gateway_id == gateway_id:
                    self._dropped_at[device_id] = self._generation
                    del self._entries[device_id]

    # --- HJ 212 ----------------------------------------------------------------------------
    def check_password(self, mn: str, entry: DeviceEntry | None, password: str | None, *,
                       require_password: bool) -> Hj212Check:
        """Whether a frame of data unit ``mn`` (its registry entry, looked up by the caller: the writer in its
        transaction, the HJ 212 listener with ``lookup``) with access password ``password`` (PW) is accepted."""
        if entry is None:
            return Hj212Check.UNKNOWN_DEVICE
        stored = entry.hj212_password_hash
        if stored is None:
            return Hj212Check.NO_PASSWORD if require_password else Hj212Check.OK
        if password is None:
            return Hj212Check.WRONG_PASSWORD
        if self._verified.known(mn, stored, password):
            return Hj212Check.OK
        if self._known_wrong(mn, stored, password):
            return Hj212Check.WRONG_PASSWORD
        if self._verified.verify(mn, stored, password):
            return Hj212Check.OK
        self._remember_wrong(mn, stored, password)
        return Hj212Check.WRONG_PASSWORD

    def _known_wrong(self, mn: str, stored: str, password: str) -> bool:
        key = (mn, stored, password)
        with self._lock:
            at = self._refused.get(key)
            if at is None:
                return False
            if self._clock() - at >= self.refresh_s:
                del self._refused[key]
                return False
            return True

    def _remember_wrong(self, mn: str, stored: str, password: str) -> None:
        with self._lock:
            self._refused[(mn, stored, password)] = self._clock()
            while len(self._refused) > _REFUSED_CACHE:
                self._refused.popitem(last=False)

    # --- database --------------------------------------------------------------------------
    def _read_own(self, missing: list[str]) -> dict[str, DeviceEntry]:
        with self._conn_lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.url, connect_timeout=5, autocommit=True,
                                                 application_name="sanitel registry")
                return _read(self._conn, missing)
            except psycopg.Error as exc:
                if self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._conn.close()
                    self._conn = None
                raise RegistryUnavailable(f"device registry: {type(exc).__name__}: {exc}") from None

    def _listen_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, connect_timeout=5, autocommit=True,
                                     application_name="sanitel registry listener") as conn:
                    self._listen_conn = conn
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:  # notifications may have been missed while not listening
                        self._clear()
                        self._listening = True
                    self.listen_connects += 1
                    delay = 0.5
                    log.info("listening for registry changes")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_WAIT_S):
                            self._on_notify(note.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("registry listener lost its connection (%s); caches bypassed until it is back",
                                exc)
            except Exception:  # never let the thread die: without it the cache would go stale
                log.exception("registry listener failed; reconnecting")
            finally:
                with self._lock:
                    self._listening = False
                self._listen_conn = None
            self._stop.wait(delay)
            delay = min(_RECONNECT_MAX_S, delay * 2)

    def _on_notify(self, payload: str) -> None:
        table, _, ident = payload.partition(":")
        if table == "devices":
            self.forget(ident)
        elif table == "gateways":
            self._forget_gateway(ident)
        elif table == "sites":  # a site's time zone is that of every device below it: not worth finding them
            self.clear()
        else:
            log.warning("unexpected registry notification %r; dropping the whole cache", payload[:100])
            self.clear()


def _read(conn: psycopg.Connection, device_ids: list[str]) -> dict[str, DeviceEntry]:
    return {d: DeviceEntry(kind, gateway, password_hash,
                           NO_SETTINGS if kind != "cems" else
                           parse_device_settings(metadata_from_json(dry_json, tz_json), site_tz))
            for d, kind, gateway, password_hash, dry_json, tz_json, site_tz
            in conn.execute(_SELECT, (device_ids,)).fetchall()}
