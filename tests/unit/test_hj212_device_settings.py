"""Per-device HJ 212 settings (issue 13 item 5): ``devices.metadata`` keys ``gas_is_dry`` and ``timezone``, the
plant's time zone, the defaults — parsed without ever raising, refused by the API with the key and the fix, and
carried by the registry's entries to the listener. End to end through the listener, the collector and the
database: tests/integration/test_hj212_tcp.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.ingest.hj212_tcp import Hj212Listener
from sanitel.processors.registry import DeviceEntry, DeviceRegistry
from sanitel.schemas.hj212_settings import (
    DEFAULT_BASIS,
    MAX_STORED_JSON,
    NO_SETTINGS,
    Hj212Basis,
    Hj212DeviceSettings,
    is_timezone,
    known_timezones,
    metadata_from_json,
    metadata_problems,
    parse_device_settings,
)

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the parser ----------------------------------------------------------------------------------------------

def test_the_device_own_values_come_first_then_the_plant_then_none() -> None:
    assert parse_device_settings({"gas_is_dry": False, "timezone": "Asia/Tokyo"}, "Europe/Berlin") == \
        Hj212DeviceSettings("Asia/Tokyo", False)
    assert parse_device_settings({"vendor": "SDL"}, "Europe/Berlin") == Hj212DeviceSettings("Europe/Berlin", None)
    assert parse_device_settings({}, None) == NO_SETTINGS
    assert parse_device_settings({"gas_is_dry": True}) == Hj212DeviceSettings(None, True)


def test_unusable_values_are_skipped_and_named() -> None:
    """A value that is no setting never stops a frame: the next level applies and the problem says which key."""
    parsed = parse_device_settings({"gas_is_dry": "false", "timezone": "Asia/Tokio"}, "Europe/Berlin")
    assert (parsed.timezone, parsed.gas_is_dry) == ("Europe/Berlin", None)  # the plant's zone, no gas setting
    assert len(parsed.problems) == 2
    assert "gas_is_dry" in parsed.problems[0] and "'false'" in parsed.problems[0]
    assert "timezone" in parsed.problems[1] and "'Asia/Tokio'" in parsed.problems[1]
    bad_site = parse_device_settings({}, "Mars/Base")
    assert bad_site.timezone is None and "sites.timezone" in bad_site.problems[0]
    # null is no boolean either (the API refuses it): it falls back to the default, named
    assert parse_device_settings({"gas_is_dry": None}).problems
    # not an object at all (jsonb may hold an array): nothing set, nothing to name
    assert parse_device_settings(["gas_is_dry", False], "Asia/Tokyo") == Hj212DeviceSettings("Asia/Tokyo", None)


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "right/UTC", "posix/Asia/Tokyo",
                                  "../zoneinfo/UTC", "asia/tokyo", "Asia/Tokyo ", "", "+08:00"])
def test_only_iana_zone_names_are_time_zones(name: str) -> None:
    """``zoneinfo`` loads some of these (the host's zone, the leap-second and posix copies): not zone names."""
    assert not is_timezone(name)


def test_zone_names_are_time_zones() -> None:
    assert all(map(is_timezone, ["UTC", "Asia/Shanghai", "Asia/Tokyo", "Europe/Berlin", "America/Los_Angeles"]))
    assert not is_timezone(8) and not is_timezone(None)


def test_resolve_fills_what_is_not_set_from_the_default() -> None:
    listener_default = Hj212Basis("Asia/Urumqi", False)
    assert NO_SETTINGS.resolve() == DEFAULT_BASIS == Hj212Basis("Asia/Shanghai", True)
    assert NO_SETTINGS.resolve(listener_default) == listener_default
    assert Hj212DeviceSettings("Asia/Tokyo", None).resolve(listener_default) == Hj212Basis("Asia/Tokyo", False)
    assert Hj212DeviceSettings(None, True).resolve(listener_default) == Hj212Basis("Asia/Urumqi", True)


def test_the_api_message_names_the_key_and_the_fix() -> None:
    problems = metadata_problems({"gas_is_dry": "yes", "timezone": "UTC+8", "vendor": "x"})
    assert set(problems) == {"gas_is_dry", "timezone"}
    assert "JSON boolean" in problems["gas_is_dry"] and "false when it measures wet gas" in problems["gas_is_dry"]
    assert "IANA time-zone name" in problems["timezone"] and "'Asia/Shanghai'" in problems["timezone"]
    assert metadata_problems({"gas_is_dry": False, "timezone": "Asia/Tokyo"}) == {}
    # a container is described by its type, never repr'd (it may be huge)
    assert "a JSON object" in metadata_problems({"timezone": {"a": "b" * 10_000}})["timezone"]
    assert len(metadata_problems({"timezone": "Z" * 10_000})["timezone"]) < 400


def test_stored_json_text_is_read_back_safely() -> None:
    """The registry reads each key's JSON text cut at MAX_STORED_JSON characters: a cut text is no JSON, so it is
    kept as a string, which is no usable value; absent keys stay absent."""
    assert metadata_from_json("false", '"Asia/Tokyo"') == {"gas_is_dry": False, "timezone": "Asia/Tokyo"}
    assert metadata_from_json(None, None) == {}
    deep = "[" * MAX_STORED_JSON
    assert metadata_from_json(deep, None) == {"gas_is_dry": deep}
    assert parse_device_settings(metadata_from_json(deep, '"Asia/Tok')).problems


# --- property: the parser never raises ----------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4),
                     max_leaves=10)
_zones = st.sampled_from(sorted(known_timezones()))
_values = _json | _zones | st.sampled_from(["localtime", "Asia/Tokio", "false", "true"])
_metadata = _json | st.dictionaries(st.sampled_from(["gas_is_dry", "timezone", "vendor"]), _values, max_size=3)


@_SETTINGS
@given(metadata=_metadata, site_timezone=st.none() | _values)
def test_the_parser_never_raises_and_only_sets_usable_values(metadata: Any, site_timezone: Any) -> None:
    parsed = parse_device_settings(metadata, site_timezone)
    assert parsed.timezone is None or is_timezone(parsed.timezone)
    assert parsed.gas_is_dry is None or isinstance(parsed.gas_is_dry, bool)
    assert all(isinstance(p, str) and p for p in parsed.problems)
    own = metadata if isinstance(metadata, dict) else {}
    if is_timezone(own.get("timezone")):
        assert parsed.timezone == own["timezone"]
    if isinstance(own.get("gas_is_dry"), bool):
        assert parsed.gas_is_dry is own["gas_is_dry"]
    # a problem is named exactly when a present key, or the plant's zone where it was needed, is unusable
    unusable = set(metadata_problems(metadata))
    site_needed = not is_timezone(own.get("timezone")) and site_timezone is not None
    assert len(parsed.problems) == len(unusable) + (site_needed and not is_timezone(site_timezone))
    resolved = parsed.resolve()
    assert is_timezone(resolved.tz) and isinstance(resolved.gas_is_dry, bool)


@_SETTINGS
@given(gas=st.none() | st.text(max_size=200), tz=st.none() | st.text(max_size=200))
def test_stored_json_texts_never_raise(gas: str | None, tz: str | None) -> None:
    parse_device_settings(metadata_from_json(gas, tz))


@settings(max_examples=100, deadline=None)
@given(value=_json)
def test_any_stored_value_round_trips_or_is_refused(value: Any) -> None:
    """Whatever JSON a key holds, reading its (cut) text back gives that value when it was not cut (every valid
    setting: a boolean, a zone name of at most ~40 characters), else something that is not that value."""
    full = json.dumps(value)
    read = metadata_from_json(full[:MAX_STORED_JSON], full[:MAX_STORED_JSON])
    if len(full) <= MAX_STORED_JSON:
        assert json.dumps(read["gas_is_dry"]) == json.dumps(read["timezone"]) == full
    else:
        assert isinstance(read["gas_is_dry"], str) or json.dumps(read["gas_is_dry"]) != full


# --- the registry and the listener ---------------------------------------------------------------------------

def test_a_site_notification_drops_every_cached_entry_as_expected(caplog: pytest.LogCaptureFixture) -> None:
    """A site's time zone is that of every device below it, which the registry does not know: it drops all — an
    expected notification (for a sites trigger), not the "unexpected registry notification" warning."""
    registry = DeviceRegistry("postgresql://unused@127.0.0.1:1/x")
    registry.remember({"DAU-1": DeviceEntry("cems", None, None, Hj212DeviceSettings("Europe/Berlin", None))}, 0)
    assert registry.cached(["DAU-1"])[1]
    with caplog.at_level(logging.WARNING, logger="sanitel.registry"):
        registry._on_notify("sites:l-ber")
    assert registry.cached(["DAU-1"])[1] == {}
    assert caplog.records == []


def test_the_registry_logs_unusable_settings_once_per_device_until_the_next_reload(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = DeviceRegistry("postgresql://unused@127.0.0.1:1/x")
    bad = DeviceEntry("cems", None, None, parse_device_settings({"gas_is_dry": "no"}))
    with caplog.at_level(logging.WARNING, logger="sanitel.registry"):
        for _ in range(3):
            registry._noted({"DAU-1": bad, "DAU-2": DeviceEntry("cems", None, None)})
        assert [r.getMessage().split(":")[0] for r in caplog.records] == ["device DAU-1"]
        registry.clear()  # a full reload names it again
        registry._noted({"DAU-1": bad})
    assert len(caplog.records) == 2 and "gas_is_dry" in caplog.records[1].getMessage()


class _Registry:
    def __init__(self, entries: dict[str, DeviceEntry]) -> None:
        self.entries = entries

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def lookup(self, device_ids: list[str]) -> dict[str, DeviceEntry]:
        return {d: self.entries[d] for d in device_ids if d in self.entries}

    def check_password(self, *args: object, **kwargs: object) -> Any:
        return DeviceRegistry("postgresql://unused@127.0.0.1:1/x").check_password(*args, **kwargs)  # type: ignore[arg-type]


def test_the_listener_reads_each_device_with_its_settings_over_its_defaults() -> None:
    registry = _Registry({
        "DAU-TYO": DeviceEntry("cems", None, None, Hj212DeviceSettings("Asia/Tokyo", None)),
        "DAU-WET": DeviceEntry("cems", None, None, Hj212DeviceSettings(None, False)),
        "DAU-BAD": DeviceEntry("cems", None, None, parse_device_settings({"timezone": "Mars/Base"})),
    })
    listener = Hj212Listener("mqtt://127.0.0.1:1", "shenzhen", registry=registry, require_password=False,
                             default_tz="Asia/Urumqi", gas_is_dry=True)
    bases = {mn: listener._basis(registry.lookup([mn]).get(mn)) for mn in ("DAU-TYO", "DAU-WET", "DAU-BAD", "X")}
    assert bases == {"DAU-TYO": Hj212Basis("Asia/Tokyo", True), "DAU-WET": Hj212Basis("Asia/Urumqi", False),
                     "DAU-BAD": Hj212Basis("Asia/Urumqi", True), "X": Hj212Basis("Asia/Urumqi", True)}
    assert listener.stats.device_settings_fallbacks == 1


def test_a_listener_default_that_is_no_time_zone_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="IANA"):
        Hj212Listener("mqtt://127.0.0.1:1", "shenzhen", default_tz="CST")
