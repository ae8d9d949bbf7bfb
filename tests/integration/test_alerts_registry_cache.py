"""The evaluator keeps its registry across passes (issue 15, scale): ``RegistryCache`` returns the same ``Registry``
while nothing changed and a new one after any change — committed by another connection and announced by LISTEN/NOTIFY
(migrations 0060, 0080, 0086) — and the evaluator service keeps one ``Evaluator`` across passes.

Every pass runs on one evaluator's connection, as the service runs them; every change comes from another connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sanitel.alerts.evaluator import Evaluator, EvaluatorConfig
from sanitel.alerts.service import EvaluatorService
from sanitel.alerts.subjects import Registry, RegistryCache
from sanitel.servers import MosquittoServer
from sanitel.settings import load_settings
from tests.support.alerts_db import NOW, add_device, add_site, alerts, at, insert, ruleset, series

LOW_SOC = {"id": "t.low_soc", "kind": "threshold", "summary": "SOC {value:.0f}", "severity": "major",
           "source": "sweeper_telemetry", "field": "soc_pct", "op": "<", "threshold": 20, "clear": 25, "for": "1m"}
RAISED = {"limits": {"t.low_soc": 50}}  # site params under which SOC 40 is low
CONFIG = EvaluatorConfig(data_quiet_after=timedelta(0))  # as tests.support.alerts_db.run: windows close by ``now``


class Ticks:
    """Monotonic seconds that stand still until the test moves them (the cache's full-reload clock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def station(fresh_db: str) -> str:
    """A transfer station with no params and one sweeper on it."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "st-1")
        add_device(conn, "sw-0", "sweeper", site="st-1")
    return fresh_db


@pytest.fixture
def evaluator(station: str) -> Iterator[Evaluator]:
    with psycopg.connect(station) as conn:
        yield Evaluator(conn, ruleset(LOW_SOC), CONFIG, registry_cache=RegistryCache(clock=Ticks()))


def _elsewhere(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    """A registry change, committed by another connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def _soc(url: str, start_min: float, values: list[float], device: str = "sw-0") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "sweeper_telemetry", device, series(at(start_min), 30, values, "soc_pct"))


def _registry(evaluator: Evaluator) -> Registry | None:
    return evaluator.registry_cache._registry


def _warm(evaluator: Evaluator) -> Registry:
    """Two passes: after the second the cache trusts its registry (the first pass's LISTEN is in force)."""
    evaluator.run_pass(NOW)
    evaluator.run_pass(NOW)
    registry = _registry(evaluator)
    assert registry is not None
    return registry


# --- the cache follows changes ----------------------------------------------------------------------------------


def test_an_unchanged_registry_is_the_same_object_pass_after_pass(evaluator: Evaluator) -> None:
    registry = _warm(evaluator)
    loads = evaluator.registry_cache.loads
    evaluator.run_pass(NOW)
    evaluator.run_pass(NOW)
    assert _registry(evaluator) is registry and evaluator.registry_cache.loads == loads


@pytest.mark.parametrize("change", [
    pytest.param(("UPDATE sites SET params = %s WHERE site_id = 'st-1'", (Jsonb(RAISED),)), id="site-params"),
    pytest.param(("UPDATE devices SET metadata = %s WHERE device_id = 'sw-0'", (Jsonb(RAISED),)), id="device-limits"),
    pytest.param(("UPDATE devices SET site_id = 'st-2' WHERE device_id = 'sw-0'", ()), id="device-moved"),
])
def test_the_pass_after_a_change_judges_by_the_changed_registry(evaluator: Evaluator, station: str,
                                                                  change: tuple[str, tuple[Any, ...]]) -> None:
    with psycopg.connect(station, autocommit=True) as conn:
        add_site(conn, "st-2", params=RAISED)  # before the passes: known to the registry from the start
    _soc(station, 0, [40, 40, 40, 40, 40])
    before = _warm(evaluator)
    assert alerts(station) == []  # 40 is no low SOC under the rule's own threshold
    _elsewhere(station, *change)
    _soc(station, 3, [40, 40, 40, 40, 40])
    evaluator.run_pass(NOW)
    assert _registry(evaluator) is not before
    (alert,) = alerts(station)
    assert alert["state"] == "firing" and alert["threshold"] == 50


def test_a_new_site_and_a_deleted_device_reach_the_next_pass(evaluator: Evaluator, station: str) -> None:
    before = _warm(evaluator)
    _elsewhere(station, "INSERT INTO sites (site_id, kind, name) VALUES ('st-9', 'transfer_station', 'st-9')")
    evaluator.run_pass(NOW)
    after = _registry(evaluator)
    assert after is not before and after is not None and "st-9" in after.sites
    _elsewhere(station, "DELETE FROM devices WHERE device_id = 'sw-0'")
    evaluator.run_pass(NOW)
    gone = _registry(evaluator)
    assert gone is not after and gone is not None and "sw-0" not in gone.devices


@pytest.mark.parametrize("table", ["devices", "sites"])
def test_a_truncated_registry_reaches_the_next_get(station: str, table: str) -> None:
    cache = RegistryCache(clock=Ticks())
    with psycopg.connect(station) as conn:
        for _ in range(2):  # the first get's LISTEN commits with its transaction; the second trusts its load
            with conn.transaction():
                conn.execute("SELECT 1")
                cache.get(conn)
        with conn.transaction():
            conn.execute("SELECT 1")
            before = cache.get(conn)
        assert before.devices and before.sites
        _elsewhere(station, f"TRUNCATE {table} CASCADE")
        with conn.transaction():
            conn.execute("SELECT 1")  # reads the notification
            after = cache.get(conn)
    assert after is not before and not after.devices


def test_a_full_reload_every_refresh_s_even_without_notifications(station: str) -> None:
    """The safety net sees a change no trigger notified; a reload that finds nothing changed keeps the object (and
    what is memoised on it and keyed on it: the truck checks' verdicts)."""
    ticks = Ticks()
    cache = RegistryCache(refresh_s=60, clock=ticks)
    with psycopg.connect(station) as conn:
        for _ in range(2):
            with conn.transaction():
                conn.execute("SELECT 1")
                registry = cache.get(conn)
        loads = cache.loads
        ticks.now += 59
        with conn.transaction():
            conn.execute("SELECT 1")
            assert cache.get(conn) is registry and cache.loads == loads
        ticks.now += 1
        with conn.transaction():
            conn.execute("SELECT 1")
            assert cache.get(conn) is registry and cache.loads == loads + 1  # reloaded: the same registry
        with psycopg.connect(station, autocommit=True) as other:  # a change no trigger notifies
            other.execute("ALTER TABLE sites DISABLE TRIGGER USER")
            other.execute("UPDATE sites SET params = '{\"odour_limit\": 1}' WHERE site_id = 'st-1'")
            other.execute("ALTER TABLE sites ENABLE TRIGGER USER")
        with conn.transaction():
            conn.execute("SELECT 1")
            assert cache.get(conn) is registry  # not notified, not yet due
        ticks.now += 60
        with conn.transaction():
            conn.execute("SELECT 1")
            reloaded = cache.get(conn)
        assert reloaded is not registry and reloaded.sites["st-1"].params == {"odour_limit": 1}


# --- the first pass's window ------------------------------------------------------------------------------------


def test_a_change_committed_while_the_first_pass_runs_is_seen_by_the_second(
        evaluator: Evaluator, station: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pass's LISTEN takes effect when that pass commits: a change committed after its load and before
    then is never notified, so the second pass loads again."""
    load = Registry.load
    changed: list[bool] = []

    def load_then_change(conn: psycopg.Connection) -> Registry:
        registry = load(conn)
        if not changed:  # the first load only
            _elsewhere(station, "UPDATE sites SET params = %s WHERE site_id = 'st-1'", (Jsonb(RAISED),))
            changed.append(True)
        return registry

    monkeypatch.setattr(Registry, "load", staticmethod(load_then_change))
    _soc(station, 0, [40, 40, 40, 40, 40])
    evaluator.run_pass(NOW)
    assert changed and alerts(station) == []  # judged by the registry read before the change
    _soc(station, 3, [40, 40, 40, 40, 40])
    evaluator.run_pass(NOW)
    (alert,) = alerts(station)
    assert alert["state"] == "firing" and alert["threshold"] == 50


# --- a failed pass ----------------------------------------------------------------------------------------------


def test_a_failed_pass_drops_the_cache(evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _warm(evaluator)
    loads = evaluator.registry_cache.loads

    def crash(self: Evaluator, ctx: object) -> None:
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(Evaluator, "_save_watermarks", crash)
    with pytest.raises(RuntimeError):
        evaluator.run_pass(NOW)
    assert _registry(evaluator) is None
    monkeypatch.undo()
    evaluator.run_pass(NOW)
    assert _registry(evaluator) is not before and evaluator.registry_cache.loads == loads + 1


def test_a_first_pass_that_failed_listens_again(evaluator: Evaluator, station: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Its LISTEN rolled back with it: the next passes listen again, and a later change is still noticed."""

    def crash(self: Evaluator, ctx: object) -> None:
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(Evaluator, "_save_watermarks", crash)
    with pytest.raises(RuntimeError):
        evaluator.run_pass(NOW)
    monkeypatch.undo()
    _soc(station, 0, [40, 40, 40, 40, 40])
    _warm(evaluator)
    _elsewhere(station, "UPDATE sites SET params = %s WHERE site_id = 'st-1'", (Jsonb(RAISED),))
    _soc(station, 3, [40, 40, 40, 40, 40])
    evaluator.run_pass(NOW)
    (alert,) = alerts(station)
    assert alert["threshold"] == 50


# --- memoised params and limits ---------------------------------------------------------------------------------


def test_params_and_limits_are_memoised_per_registry(station: str) -> None:
    with psycopg.connect(station, autocommit=True) as conn:
        add_device(conn, "sw-1", "sweeper", site="st-1", metadata=RAISED)
        registry = Registry.load(conn)
    rule = ruleset(LOW_SOC).rules["t.low_soc"]
    plain, own = registry.subject("device:sw-0"), registry.subject("device:sw-1")
    # a device with no params of its own shares its site's (read-only) dict
    assert registry.params(plain) is registry.site_params("st-1")
    assert registry.params(own) is registry.params(own) and registry.params(own)["limits"] == {"t.low_soc": 50}
    limits = registry.limits(rule, own)
    assert limits is not None and limits.threshold == 50 and registry.limits(rule, own) is limits
    chained = registry.limits_with_site_chain(rule, plain)
    assert chained is not None and chained.threshold == 20 and registry.limits_with_site_chain(rule, plain) is chained
    # a reloaded rule set's rule is another object: computed for it, not taken from the old rule's entry
    assert registry.limits(ruleset(LOW_SOC).rules["t.low_soc"], own) is not limits


# --- the service ------------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def test_the_service_keeps_its_evaluator_and_registry_across_passes(station: str, mqtt_server: MosquittoServer,
                                                                     tmp_path: Path) -> None:
    settings = load_settings(database_url=station, mqtt_url=mqtt_server.url, data_dir=tmp_path / "evaluator",
                             evaluator_metrics_port=0)
    service = EvaluatorService(settings, metrics_port=0, clock=_Clock(NOW), config=CONFIG)
    try:
        _soc(station, 0, [30, 30])
        first = service.run_once()
        assert first is not None and first.ran
        evaluator = service._evaluator
        assert evaluator is not None and evaluator._data_seen is not None
        # the pass and the incident step after it share one registry: read twice (the first load is not trusted)
        assert service.registry_cache.loads == 2
        second = service.run_once()  # nothing new: the data clock is what the first pass saw
        assert second is not None and second.ran
        assert service._evaluator is evaluator and evaluator._data_seen is not None
        assert service.registry_cache.loads == 2
    finally:
        service.close()


def test_a_second_get_in_the_first_transaction_does_not_trust_its_load(station: str) -> None:
    """LISTEN is not in force before its transaction commits: until a later transaction sees it is, every get
    loads again (a load that finds the registry as it was keeps the object)."""
    cache = RegistryCache(clock=Ticks())
    with psycopg.connect(station) as conn:
        loads = []
        for _ in range(4):
            with conn.transaction():
                conn.execute("SELECT 1")
                cache.get(conn)
                loads.append(cache.loads)
                if len(loads) == 1:
                    cache.get(conn)
                    loads.append(cache.loads)
    assert loads == [1, 2, 3, 3, 3]
