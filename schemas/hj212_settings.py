"""Per-device HJ 212 settings: the time zone a data unit's ``DataTime`` is local to, and whether its analyser
reports concentrations on dry or wet flue gas.

HJ 212-2017 frames carry neither: ``DataTime`` is the DAU's local time without an offset, and nothing in a frame
says whether the gas was dried before it reached the analyser. Both are properties of the installation, so they
are registered with the device, in ``devices.metadata``:

- ``gas_is_dry`` (JSON ``true``/``false``): ``false`` for an analyser measuring wet gas (hot-wet extraction, in-situ
  probes); the CEMS averages then correct to dry gas with the reported moisture (H2O) before normalising to 11 % O2.
- ``timezone`` (an IANA name such as ``Asia/Tokyo``).

Resolution, most specific first (``Hj212DeviceSettings.resolve``): the device's own value; for the time zone, the
device's plant (the parent of its line site, else the device's own site — the zone the CEMS averages judge its
local days by); then the default of whoever converts (the HJ 212 listener's, the collector's: Asia/Shanghai, dry).

A stored value that cannot be used (a string ``"false"``, a misspelt zone) never stops a frame: it is skipped with
the next level used instead, and named in ``problems`` for the caller to count and log. The API refuses such
values on registration (``metadata_problems``), so they can only come from direct writes to the database.

Pure: no I/O beyond reading the time-zone database (``zoneinfo``), like ``schemas.hj212`` itself.
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from sanitel.schemas.hj212 import DEFAULT_TZ

GAS_IS_DRY_KEY = "gas_is_dry"
TIMEZONE_KEY = "timezone"
# in the tz database's directory but not zones a plant can be in: the host's own zone, a link file, "unknown"
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
MAX_STORED_JSON = 100  # characters of a stored value's JSON text read back (a zone name has at most ~40)
_SHOWN = 60  # characters of a bad stored value quoted in a problem (metadata is admin input, but unbounded)


@cache
def known_timezones() -> frozenset[str]:
    """IANA zone names this host's time-zone database has (plus ``UTC``)."""
    return frozenset(zoneinfo.available_timezones() - _NOT_ZONES) | {"UTC"}


def is_timezone(name: object) -> bool:
    """Whether ``name`` is an IANA zone this host knows. A set lookup, not ``ZoneInfo(name)``, which also loads files
    of the tz directory that are not zone names (``localtime``, the host's zone; ``right/UTC``, with leap
    seconds; ``posix/…``) and whose errors differ by key (ValueError, ZoneInfoNotFoundError, IsADirectoryError)."""
    return isinstance(name, str) and name in known_timezones()


@dataclass(frozen=True, slots=True)
class Hj212Basis:
    """How one device's frames are read: the zone of ``DataTime`` and the gas basis of its concentrations."""

    tz: str = DEFAULT_TZ
    gas_is_dry: bool = True


DEFAULT_BASIS = Hj212Basis()


@dataclass(frozen=True, slots=True)
class Hj212DeviceSettings:
    """What the registry holds for a device: its time zone (its own, else its plant's) and gas basis, each None when
    not set (or not usable), and the stored values that could not be used."""

    timezone: str | None = None
    gas_is_dry: bool | None = None
    problems: tuple[str, ...] = ()

    def resolve(self, default: Hj212Basis = DEFAULT_BASIS) -> Hj212Basis:
        """The basis to convert with: each setting that is set, else ``default``'s."""
        return Hj212Basis(self.timezone if self.timezone is not None else default.tz,
                          self.gas_is_dry if self.gas_is_dry is not None else default.gas_is_dry)


NO_SETTINGS = Hj212DeviceSettings()


def metadata_problems(metadata: object) -> dict[str, str]:
    """The HJ 212 keys of ``metadata`` that hold an unusable value → what is wrong and how to fix it (the API's
    422). Never raises."""
    if not isinstance(metadata, Mapping):
        return {}
    problems: dict[str, str] = {}
    if GAS_IS_DRY_KEY in metadata and not isinstance(metadata[GAS_IS_DRY_KEY], bool):
        problems[GAS_IS_DRY_KEY] = (
            f"metadata.{GAS_IS_DRY_KEY} must be a JSON boolean, not {_shown(metadata[GAS_IS_DRY_KEY])}: true when "
            "the analyser measures dry gas, false when it measures wet gas (then H2O is used to correct to dry)")
    if TIMEZONE_KEY in metadata and not is_timezone(metadata[TIMEZONE_KEY]):
        problems[TIMEZONE_KEY] = (
            f"metadata.{TIMEZONE_KEY} must be an IANA time-zone name such as 'Asia/Shanghai' or 'Asia/Tokyo', not "
            f"{_shown(metadata[TIMEZONE_KEY])}; leave it out to use the time zone of the device's plant")
    return problems


def parse_device_settings(metadata: object, site_timezone: object = None) -> Hj212DeviceSettings:
    """``devices.metadata`` (any JSON value) and the time zone of the device's plant (``sites.timezone``, or None)
    → the device's settings. Never raises: an unusable value is left unset and named in ``problems``."""
    problems = list(metadata_problems(metadata).values())
    own = metadata if isinstance(metadata, Mapping) else {}
    dry = own.get(GAS_IS_DRY_KEY)
    tz = own.get(TIMEZONE_KEY)
    if not is_timezone(tz):
        tz = None
        if site_timezone is not None and not is_timezone(site_timezone):
            problems.append(f"the time zone {_shown(site_timezone)} of the device's plant (sites.timezone) is not "
                            "an IANA time-zone name")
        elif site_timezone is not None:
            tz = site_timezone
    return Hj212DeviceSettings(tz if isinstance(tz, str) else None, dry if isinstance(dry, bool) else None,
                               tuple(problems))


def metadata_from_json(gas_is_dry_json: str | None, timezone_json: str | None) -> dict[str, object]:
    """The two keys as the registry reads them — each value's JSON text cut to ``MAX_STORED_JSON`` characters by
    the query (None: the key is absent) — back into a metadata mapping for ``parse_device_settings``. Never raises:
    text that is not JSON (a cut value) is kept as the string it is, which is no usable value of either key. Cutting
    bounds what a stored value can cost the listener (no deep nesting, no megabyte strings)."""
    out: dict[str, object] = {}
    for key, text in ((GAS_IS_DRY_KEY, gas_is_dry_json), (TIMEZONE_KEY, timezone_json)):
        if text is not None:
            try:
                out[key] = json.loads(text[:MAX_STORED_JSON])
            except ValueError:
                out[key] = text[:MAX_STORED_JSON]
    return out


def _shown(value: object) -> str:
    """A bad value for a message: a scalar quoted (cut), a container by its JSON type (its repr could be huge, or
    deeply nested)."""
    if isinstance(value, Mapping):
        return "a JSON object"
    if isinstance(value, list | tuple):
        return "a JSON array"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str | int | float | bool) else f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}…"
