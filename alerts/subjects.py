"""The registry as the alert engine sees it: devices, the site tree, rule scopes, per-site parameters,
time zones and the labels an alert carries.

A *subject* is what one alert is about: ``device:<id>``, ``site:<id>`` or ``point:<id>`` (a sorting
point). Parameters merge down the site tree — plant → line, district → station — the nearest site
winning key by key (``limits`` merged per rule id, ``disabled_rules`` added up), then the device's
``metadata.params`` / ``metadata.limits`` / ``metadata.disabled_rules`` on top.

A ``Registry`` is read once and then only read: its merged params and rule limits are memoised on the object, so
whatever it returns is shared and must not be mutated. ``RegistryCache`` keeps one across evaluation passes and
hands out a new one only after the registry changed (LISTEN/NOTIFY, see there).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sanitel.alerts.rules import Limits, RuleModel, SiteParams, limits_for

DEFAULT_TZ = "Asia/Shanghai"  # sites.timezone's default (migration 0001)
CHANNEL = "sanitel_registry"  # where the registry triggers notify (migrations 0060, 0080, 0086)


@dataclass(frozen=True, slots=True)
class Site:
    site_id: str
    kind: str
    parent_id: str | None
    timezone: str
    params: Mapping[str, Any]
    latitude: float | None = None  # WGS-84: a sorting point's position (truck routes, visits)
    longitude: float | None = None


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    kind: str
    site_id: str | None
    inactivity_timeout_s: int
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Subject:
    key: str  # device:ID, site:ID or point:ID
    device_id: str | None
    site_id: str | None
    kind: str | None

    @property
    def id(self) -> str:
        return self.key.split(":", 1)[1]


def subject_key(per: str, ident: str) -> str:
    return f"{per}:{ident}"


def _merge(into: dict[str, Any], params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if key == "limits" and isinstance(value, Mapping):
            into["limits"] = {**into.get("limits", {}), **value}
        elif key == "disabled_rules" and isinstance(value, list):
            into["disabled_rules"] = [*into.get("disabled_rules", []), *value]
        else:
            into[key] = value


# a memoised limits_for result: the rule and params it was computed for are kept, so that their id()s, the memo's
# key, cannot be reused by other objects while the entry lives
_LimitsEntry = tuple[RuleModel, Mapping[str, Any], Limits | None]


@dataclass(eq=False)  # compared by identity: per-pass memos elsewhere are keyed on the object
class Registry:
    devices: dict[str, Device] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    _params: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _device_params: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _limits: dict[tuple[int, int, bool], _LimitsEntry] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, conn: psycopg.Connection) -> Registry:
        sites = {r[0]: Site(r[0], r[1], r[2], r[3] or DEFAULT_TZ, r[4] or {}, r[5], r[6]) for r in conn.execute(
            "SELECT site_id, kind, parent_id, timezone, params, latitude, longitude FROM sites").fetchall()}
        devices = {r[0]: Device(r[0], r[1], r[2], r[3], r[4] or {}) for r in conn.execute(
            "SELECT device_id, kind, site_id, inactivity_timeout_s, metadata FROM devices").fetchall()}
        return cls(devices, sites)

    # --- the site tree --------------------------------------------------------------------------
    def chain(self, site_id: str | None) -> list[Site]:
        """The site and its ancestors, nearest first (a cycle in parent ids is cut, not looped)."""
        out: list[Site] = []
        seen: set[str] = set()
        while site_id is not None and site_id in self.sites and site_id not in seen:
            seen.add(site_id)
            site = self.sites[site_id]
            out.append(site)
            site_id = site.parent_id
        return out

    def site_params(self, site_id: str | None) -> dict[str, Any]:
        key = site_id or ""
        if key not in self._params:
            merged: dict[str, Any] = {}
            for site in reversed(self.chain(site_id)):
                _merge(merged, site.params)
            self._params[key] = merged
        return self._params[key]

    def device_params(self, device_id: str) -> dict[str, Any]:
        """The device's merged params (read-only: memoised, and the very dict of its site when the device's
        metadata adds nothing, so that 100,000 devices do not hold 100,000 copies)."""
        merged = self._device_params.get(device_id)
        if merged is None:
            merged = self._merge_device(device_id)
            self._device_params[device_id] = merged
        return merged

    def _merge_device(self, device_id: str) -> dict[str, Any]:
        device = self.devices.get(device_id)
        if device is None:
            return self.site_params(None)  # {} (no site chain), shared
        meta = device.metadata
        own = {k: meta[k] for k in ("limits", "disabled_rules") if k in meta}
        if not meta.get("params") and not own:
            return self.site_params(device.site_id)
        merged = dict(self.site_params(device.site_id))
        _merge(merged, meta.get("params") or {})
        _merge(merged, own)
        return merged

    def site_chain_params(self, site_id: str | None) -> SiteParams:
        """The site and its ancestors with their own params, root first (plant, then line): what the emission
        limits of ``limits_for`` overlay."""
        return [(site.site_id, site.params) for site in reversed(self.chain(site_id))]

    def timezone(self, site_id: str | None) -> str:
        chain = self.chain(site_id)
        return chain[0].timezone if chain else DEFAULT_TZ

    # --- scopes ---------------------------------------------------------------------------------
    def in_scope(self, rule: RuleModel, device_id: str) -> bool:
        device = self.devices.get(device_id)
        if device is None or device.kind not in rule.kinds():
            return False
        scope = rule.scope
        if scope.devices and device_id not in scope.devices:
            return False
        return not scope.sites or any(s.site_id in scope.sites for s in self.chain(device.site_id))

    def devices_at(self, site_id: str | None) -> list[str]:
        return [d for d, dev in self.devices.items() if dev.site_id == site_id]

    # --- subjects -------------------------------------------------------------------------------
    def subject(self, key: str, kind: str | None = None) -> Subject:
        per, ident = key.split(":", 1)
        if per == "device":
            device = self.devices.get(ident)
            return Subject(key, ident, device.site_id if device else None, device.kind if device else kind)
        site_id = ident if ident in self.sites else None
        return Subject(key, None, site_id, kind)

    def params(self, subject: Subject) -> dict[str, Any]:
        """The subject's merged params; read-only (memoised and shared)."""
        if subject.device_id is not None:
            return self.device_params(subject.device_id)
        return self.site_params(subject.site_id)

    # --- limits ---------------------------------------------------------------------------------
    def limits(self, rule: RuleModel, subject: Subject) -> Limits | None:
        """``limits_for(rule, self.params(subject))``, memoised: the subject's merged params alone, no site
        chain — right for rules without ``emission_limit`` (programmed checks: alerts/trucks.py). Raises as
        ``limits_for`` does (a failure is not memoised)."""
        return self._memo_limits(rule, subject, with_site_chain=False)

    def limits_with_site_chain(self, rule: RuleModel, subject: Subject) -> Limits | None:
        """``limits_for(rule, self.params(subject), self.site_chain_params(subject.site_id))``, memoised: as
        ``limits``, and an ``emission_limit`` rule reads the limit sets of the subject's plant and line
        (the evaluator's rules). Raises ConfigError as ``limits_for`` does (not memoised)."""
        return self._memo_limits(rule, subject, with_site_chain=True)

    def _memo_limits(self, rule: RuleModel, subject: Subject, *, with_site_chain: bool) -> Limits | None:
        # keyed on the params dict, not the subject: every device without params of its own shares its site's,
        # so the memo holds one entry per site and rule rather than one per device. A params dict determines
        # the site chain too (a site's is its own; a device's is that of the device, on one site).
        params = self.params(subject)
        key = (id(rule), id(params), with_site_chain)
        entry = self._limits.get(key)
        if entry is not None and entry[0] is rule and entry[1] is params:
            return entry[2]
        sites = self.site_chain_params(subject.site_id) if with_site_chain else ()
        limits = limits_for(rule, params, sites)
        self._limits[key] = (rule, params, limits)
        return limits

    def subject_timezone(self, subject: Subject) -> str:
        return self.timezone(subject.site_id)

    def labels(self, subject: Subject) -> dict[str, str]:
        """What silences and webhooks match on: ids, and one label per site level (plant, line,
        transfer_station, district …) so a matcher on a plant covers its lines."""
        labels: dict[str, str] = {}
        for site in reversed(self.chain(subject.site_id)):
            labels[site.kind] = site.site_id
        per, ident = subject.key.split(":", 1)
        labels[per] = ident
        if subject.device_id:
            labels["device_id"] = subject.device_id
        if subject.site_id:
            labels["site_id"] = subject.site_id
        if subject.kind:
            labels["kind"] = subject.kind
        return labels


class RegistryCache:
    """One ``Registry`` kept across the evaluator's passes (and the incident step after each): ``get`` returns the
    SAME object as last time while the registry has not changed, and a NEW object after any change — callers may
    key memos on the object's identity (per pass, or across passes: an unchanged object means unchanged
    devices, sites and params).

    Changes arrive by LISTEN/NOTIFY on channel ``sanitel_registry`` (migrations 0060, 0080, 0086: every insert,
    update, delete and truncate of devices, gateways and sites notifies after its transaction commits), on the
    caller's connection: psycopg runs the handler while any statement on it reads the notification. The safety
    net is a full reload every ``refresh_s`` seconds (``clock``: monotonic seconds; tests pass their own), for what
    no trigger sees (``ALTER TABLE … DISABLE TRIGGER``).

    ``get`` is called inside the caller's transaction, after at least one statement of it (pending notifications
    are read by that statement), and runs its statements in that transaction only: one issued outside would open
    a transaction of its own and turn the caller's ``with conn.transaction()`` into a savepoint that never commits.
    Hence LISTEN is issued in the first caller's transaction and takes effect only when that commits: a change
    committed between the first load and then is never notified, so the first load is not trusted — the next
    ``get`` checks that the LISTEN is in force (``pg_listening_channels``, in its own, later transaction) and
    loads again. A caller whose transaction failed calls ``drop``: a notification may have been read and acted on
    in it, or the LISTEN rolled back with it. One connection at a time: another one (a reconnect) starts over.
    """

    def __init__(self, refresh_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = refresh_s
        self._clock = clock
        self._conn: psycopg.Connection | None = None  # the connection whose notifications are handled
        self._listening = False  # LISTEN seen in force on _conn (committed)
        self._registry: Registry | None = None
        self._loaded_at = 0.0
        self._changed = True  # a notification arrived since the last load (or the load is not trusted)
        self.loads = 0  # registries loaded (tests and metrics)

    def get(self, conn: psycopg.Connection) -> Registry:
        """The registry, as current as the notifications read so far on ``conn`` say (see the class)."""
        if conn is not self._conn:
            self._follow(conn)
        if not self._listening:
            self._listening = _listening(conn)
            if not self._listening:  # first call, or the LISTEN rolled back: (again) in this transaction
                conn.execute(f"LISTEN {CHANNEL}")
                self._changed = True
        registry = self._registry
        if registry is not None and not self._changed and self._clock() - self._loaded_at < self.refresh_s:
            return registry
        # cleared before the load: a notification read while it runs makes the next get load again
        self._changed = not self._listening
        registry = Registry.load(conn)
        if self._registry is not None and registry.devices == self._registry.devices \
                and registry.sites == self._registry.sites:
            # nothing the evaluator reads changed (a gateway's change notifies too; the safety-net reload): the
            # same object, so that what is memoised on it, and keyed on it, holds
            registry = self._registry
        self._registry, self._loaded_at = registry, self._clock()
        self.loads += 1
        return registry

    def drop(self) -> None:
        """Forget the registry and whether LISTEN is in force: after a transaction that failed."""
        self._registry = None
        self._listening = False
        self._changed = True

    def _follow(self, conn: psycopg.Connection) -> None:
        if self._conn is not None:
            with contextlib.suppress(ValueError):  # not there: nothing to remove
                self._conn.remove_notify_handler(self._on_notify)
        conn.add_notify_handler(self._on_notify)
        self._conn = conn
        self.drop()

    def _on_notify(self, note: psycopg.Notify) -> None:
        if note.channel == CHANNEL:
            self._changed = True


def _listening(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT %s = ANY(ARRAY(SELECT pg_listening_channels()))", (CHANNEL,)).fetchone()
    return bool(row and row[0])
