"""Runs shared by the simulator test modules, generated once per test session (no tests here).

Generating a simulated day takes seconds; several modules look at the same day from different sides
(contract, believable behaviour, faults), so they share it through these cached functions."""

from __future__ import annotations

from functools import cache

from sanitel.simulators.contract import CheckedReading, check_message
from sanitel.simulators.run import Simulation, generate
from sanitel.simulators.scenario import load_scenario

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
