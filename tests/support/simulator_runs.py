"""Runs shared by the simulator test modules, generated once per test session, and registering a scenario's
fleet before a run reaches the collector (no tests here).

Generating a simulated day takes seconds; several modules look at the same day from different sides
(contract, believable behaviour, faults), so they share it through these cached functions."""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

import psycopg
from psycopg import AsyncConnection

from sanitel.simulators.contract import CheckedReading, check_message
from sanitel.simulators.run import Simulation, generate
from sanitel.simulators.scenario import Scenario, load_scenario
from sanitel.stack_cli import register_fleet

DAY_START = "2026-11-22T00:00:00+08:00"
Messages = tuple[tuple[str, bytes, float], ...]


@cache
def demo_day(seed: int = 11) -> Messages:
    """A fault-free day of the demo scenario."""
    return tuple(generate("demo", seed=seed, start=DAY_START, duration_s=86_400.0, faults=[]))


@cache
def demo_day_readings(seed: int = 11) -> tuple[tuple[float, CheckedReading], ...]:
    """Every reading of :func:`demo_day`, validated against the schemas, with its send time."""
    return tuple((t, r) for topic, payload, t in demo_day(seed) for r in check_message(topic, payload))


@cache
def faulted_demo_day(seed: int = 21) -> tuple[Messages, Simulation]:
    """A demo day with every fault kind injected; the Simulation holds its ground truth."""
    from sanitel.simulators.clock import parse_instant

    sim = Simulation(load_scenario("demo"), seed=seed, start=parse_instant(DAY_START), duration_s=86_400.0,
                     faults="all")
    messages = tuple((m.topic, m.payload, m.t) for m in sim.messages())
    sim.finish(sim.end)
    return messages, sim


def register_scenario_fleet(url: str, scenario: Scenario | str | Path, *, city: str, seed: int) -> None:
    """Register a scenario's devices and gateways as ``sanitel run`` does (``register_fleet``): the collector takes
    gateway batches only for devices registered behind the gateway, limits auto-registration and wants HJ 212
    passwords, so a simulated fleet is registered like a real one before it publishes. ``seed`` must be the run's
    (the metadata depends on it). The broker passwords it sets go unused: the test brokers are anonymous."""

    async def register() -> None:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            await register_fleet(conn, scenario, city=city, seed=seed)

    asyncio.run(register())


# the dead-letter reasons of a reading the registry refused (processors/writer.py), not of its content
REGISTRY_REASONS = ("not_behind_gateway", "auto_register_limited", "unknown_device", "kind_mismatch",
                    "hj212_no_password", "hj212_wrong_password")


def registry_refusals(url: str) -> dict[str, list[str]]:
    """What a registered fleet never shows: readings the registry refused (reason → devices) and auto-registered
    devices (the collector met a device nobody registered)."""
    with psycopg.connect(url) as conn:
        refused = conn.execute("SELECT reason_code, array_agg(DISTINCT device_id) FROM dead_letters"
                               " WHERE reason_code = ANY(%s) GROUP BY 1", (list(REGISTRY_REASONS),)).fetchall()
        auto = conn.execute("SELECT coalesce(array_agg(device_id ORDER BY device_id), '{}') FROM devices"
                            " WHERE auto_registered").fetchone()
    return {**{str(reason): sorted(d for d in devices if d) for reason, devices in refused},
            "auto_registered": list(auto[0]) if auto else []}
