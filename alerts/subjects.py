"""The registry as the alert engine sees it: devices, the site tree, rule scopes, per-site parameters,
time zones and the labels an alert carries.

A *subject* is what one alert is about: ``device:<id>``, ``site:<id>`` or ``point:<id>`` (a sorting
point). Parameters merge down the site tree — plant → line, district → station — the nearest site
winning key by key (``limits`` merged per rule id, ``disabled_rules`` added up), then the device's
``metadata.params`` / ``metadata.limits`` / ``metadata.disabled_rules`` on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sanitel.alerts.rules import RuleModel

DEFAULT_TZ = "Asia/Shanghai"  # sites.timezone's default (migration 0001)


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


@dataclass
class Registry:
    devices: dict[str, Device] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    _params: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

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
        device = self.devices.get(device_id)
        if device is None:
            return {}
        merged = dict(self.site_params(device.site_id))
        meta = device.metadata
        _merge(merged, meta.get("params") or {})
        _merge(merged, {k: meta[k] for k in ("limits", "disabled_rules") if k in meta})
        return merged

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
        if subject.device_id is not None:
            return self.device_params(subject.device_id)
        return self.site_params(subject.site_id)

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
