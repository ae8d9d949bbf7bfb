"""Running a scenario: the message generator (no broker) and the paced publishing run.

``generate()`` yields every message of a run as ``(topic, payload, t)`` — pure, deterministic for the
seed and start, no network: tests and benchmarks use it. ``simulate()`` publishes the same messages
to a broker at QoS 1, paced to simulated time (real time, compressed, or as fast as possible) and
optionally capped to a rate, and returns a :class:`SimulationSummary`.

An agenda (:mod:`simulators.agenda`) orders all device models by the simulated time each wants to be
stepped next; ties break by the model's position, so the sequence is identical for the same inputs.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sanitel.errors import ConfigError
from sanitel.mqtt_wire import BrokerTarget
from sanitel.simulators.agenda import Agenda
from sanitel.simulators.clock import SimClock, parse_instant, rfc3339
from sanitel.simulators.connections import DevicePublisher, open_device_publisher
from sanitel.simulators.credentials import Sender, SenderCredentials, load_credentials
from sanitel.simulators.encode import Encoder
from sanitel.simulators.faults import FaultInjector, FaultSpec, Message, PlanContext, parse_fault_names, plan_faults
from sanitel.simulators.fleet import Fleet, TruckLayout, build_fleet, truck_layout
from sanitel.simulators.models.base import DeviceModel, Emission
from sanitel.simulators.models.routes import District
from sanitel.simulators.models.sorting_point import SortingPoint
from sanitel.simulators.models.truck import Truck, hhmm
from sanitel.simulators.publisher import Publisher, open_publisher
from sanitel.simulators.scenario import Scenario, load_scenario
from sanitel.simulators.truth import GroundTruth

DEFAULT_CITY = "shenzhen"
Faults = Sequence[FaultSpec | str] | str | None


@dataclass
class SimulationSummary:
    scenario: str
    seed: int
    start: float
    devices: int
    end: float = math.nan            # simulated time reached
    messages: int = 0                # messages published (or generated)
    readings: int = 0                # readings inside them (gateway batches carry many)
    bytes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    errors: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0
    broker: str | None = None
    ground_truth_path: str | None = None
    interrupted: bool = False
    refused: dict[str, str] = field(default_factory=dict)  # --credentials: sender → why the broker refused it

    @property
    def rate(self) -> float:
        """Messages per second of wall time."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, message: Message) -> None:
        self.messages += 1
        self.readings += message.readings
        self.bytes += len(message.payload)
        self.by_kind[message.kind] += 1
        self.end = message.t

    def lines(self) -> list[str]:
        """The end-of-run summary, a line per fact."""
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.by_kind.items())) or "none"
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "none"
        out = [
            f"scenario {self.scenario}, seed {self.seed}, {self.devices:,} devices",
            f"simulated {rfc3339(self.start)} → {rfc3339(self.end) if math.isfinite(self.end) else '-'}",
            f"messages {self.messages:,} ({self.readings:,} readings, {self.bytes / 1e6:,.1f} MB): {kinds}",
        ]
        if self.broker:
            out.append(f"broker {self.broker}: acknowledged {self.acked:,}, errors {self.errors}, "
                       f"reconnects {self.reconnects}")
        if self.refused:
            shown = ", ".join(f"{s} ({r})" for s, r in sorted(self.refused.items())[:10])
            out.append(f"refused by the broker: {len(self.refused)} sender(s), their messages counted as errors: "
                       f"{shown}{', …' if len(self.refused) > 10 else ''}")
        out.append(f"faults injected: {faults}")
        if self.ground_truth_path:
            out.append(f"ground truth: {self.ground_truth_path}")
        out.append(f"elapsed {self.elapsed_s:,.1f}s, {self.rate:,.0f} messages/s"
                   + (" (interrupted)" if self.interrupted else ""))
        return out


class Simulation:
    """A fleet, its planned faults and its ground truth, for one run."""

    def __init__(self, scenario: Scenario, *, seed: int, start: float, duration_s: float | None,
                 city: str = DEFAULT_CITY, faults: Faults = None, shard: tuple[int, int] = (0, 1),
                 realtime: bool = False) -> None:
        """``shard=(k, n)``: step only every n-th model starting at k — one of n processes sharing a
        fleet. Faults are planned on the whole fleet (so every shard agrees on them) and each shard
        keeps the ground truth of its own devices. ``realtime``: simulated time is wall-clock time
        (changes what a clock running ahead is expected to cause)."""
        index, count = shard
        if not 0 <= index < count:
            raise ConfigError(f"shard {index + 1}/{count}: the shard number must be 1..{count}")
        self.scenario = scenario
        self.seed = seed
        self.start = start
        self.end = start + duration_s if duration_s is not None else math.inf
        self.truth = GroundTruth()
        self.fleet: Fleet = build_fleet(scenario, seed=seed, city=city, start=start, incidents=self.truth.add)
        specs = resolve_faults(scenario, faults)
        self.injector: FaultInjector = plan_faults(
            specs, PlanContext(self.fleet, seed, start, self.end, self.truth, realtime=realtime))
        self.encoder = Encoder(scenario.ts_formats(), self.fleet.local, self.fleet.hj212_units())
        self.models = shard_models(self.fleet, index, count)
        if count > 1:
            mine = {info.device_id for model in self.models for info in model.devices()}
            self.truth.records = [r for r in self.truth.records if r.device_id in mine]

    def device_count(self) -> int:
        return sum(len(model.devices()) for model in self.models)

    def senders(self) -> list[Sender]:
        """Who publishes in this shard, each over its own connection with ``--credentials``: every device except
        the bins behind a gateway (their readings travel in its batches), and those gateways."""
        behind = self.fleet.gateway_devices
        out: list[Sender] = []
        for model in self.models:
            out += [Sender("devices", d.device_id) for d in model.devices() if d.device_id not in behind]
            if isinstance(model, SortingPoint) and model.gateway_id:
                out.append(Sender("gateways", model.gateway_id))
        return out

    def messages(self) -> Iterator[Message]:
        """Every message of the run, in sending order."""
        models = self.models
        agenda = Agenda((m.first_due(), i) for i, m in enumerate(models))
        end = self.end
        emissions: list[Emission] = []
        ready: list[Message] = []
        deliver = self._deliver
        while (entry := agenda.pop()) is not None:
            t, i = entry
            if t >= end:
                break
            agenda.add(models[i].step(t, emissions), i)
            for emission in emissions:
                deliver(emission, ready)
            emissions.clear()
            if ready:
                yield from ready
                ready.clear()
        self.injector.drain(ready)
        yield from ready

    def _deliver(self, emission: Emission, ready: list[Message]) -> None:
        injector = self.injector
        if emission.fmt == "batch":
            self._deliver_batch(emission, ready)
            return
        # the fast path: most devices are healthy; a station's faults hit its own telemetry, not the weighbridge's
        # tickets it carries (they are the trucks' ground truth: models/station.py Weighbridge)
        if emission.device_id not in injector.by_device or (
                emission.stream == "event" and emission.kind == "transfer_station"):
            payload = self.encoder.encode(emission, emission.body)
            ready.append(Message(emission.topic, payload, emission.t, emission.kind, emission.device_id))
            return
        body = injector.reading(emission.device_id, emission.t, emission.body)
        if body is None:
            return
        payload = self.encoder.encode(emission, body)
        injector.message(Message(emission.topic, payload, emission.t, emission.kind, emission.device_id), ready)

    def _deliver_batch(self, emission: Emission, ready: list[Message]) -> None:
        injector = self.injector
        items = emission.body["readings"]
        if injector.by_device:
            kept = [injector.reading(item["device_id"], item["ts"], item) for item in items]
            items = emission.body["readings"] = [item for item in kept if item is not None]
        if not items:
            return
        payload = self.encoder.encode(emission, emission.body)
        ready.append(Message(emission.topic, payload, emission.t, "gateway", emission.device_id, len(items)))

    def finish(self, reached: float) -> None:
        """Close ground-truth records at the time the run stopped: what did not happen is not truth."""
        for record in self.truth.records:
            record.end = min(record.end, reached)


def shard_models(fleet: Fleet, index: int, count: int) -> list[DeviceModel]:
    """Every ``count``-th model from ``index``; a truck goes with the station whose weighbridge tickets it causes
    (they are published as the station: with ``--credentials`` only the station's own shard holds its connection)."""
    models = fleet.models
    place = {id(m): i for i, m in enumerate(models)}

    def shard(i: int, model: DeviceModel) -> int:
        if isinstance(model, Truck) and model.weighbridge is not None:
            station = fleet.owners.get(model.weighbridge.device_id)
            if station is not None:
                return place[id(station)] % count
        return i % count

    return [m for i, m in enumerate(models) if shard(i, m) == index]


def resolve_faults(scenario: Scenario, faults: Faults) -> list[FaultSpec]:
    """None → the scenario's own faults; a string or list of names → those kinds with defaults."""
    if faults is None:
        return list(scenario.faults)
    available = scenario.device_counts()
    if isinstance(faults, str):
        return parse_fault_names(faults, available)
    specs: list[FaultSpec] = []
    for item in faults:
        specs += parse_fault_names(item, available) if isinstance(item, str) else [item]
    return specs


def _as_scenario(scenario: Scenario | str | Path) -> Scenario:
    return scenario if isinstance(scenario, Scenario) else load_scenario(scenario)


def _as_epoch(start: float | datetime | str | None) -> float | None:
    if start is None or isinstance(start, int | float):
        return start
    try:
        return parse_instant(start)
    except ValueError as exc:
        raise ConfigError(f"start: {exc}") from None


def default_start(scenario: Scenario, duration_s: float | None, speed: float) -> float:
    """Where simulated time begins when not given: the scenario's ``start``; else now in real time;
    else (compressed) so the run ends about now — readings far in the future would be rejected."""
    if scenario.start is not None:
        return scenario.start
    now = float(math.floor(time.time()))
    if speed == 1 or duration_s is None:
        return now
    return now - duration_s


def generate(scenario: Scenario | str | Path, *, seed: int, start: float | datetime | str, duration_s: float,
             faults: Faults = None, city: str = DEFAULT_CITY, ground_truth_path: str | Path | None = None,
             realtime: bool = False) -> Iterator[tuple[str, bytes, float]]:
    """Every message of a run as ``(topic, payload, t)`` without a broker; ``t`` is the simulated
    time (epoch seconds) the device sent it. Deterministic for (scenario, seed, start, duration).
    Pass ``realtime=True`` when the messages will be published as they are due, starting now: the
    ground truth then expects clocks running ahead to be rejected as ``ts_in_future``."""
    epoch = _as_epoch(start)
    assert epoch is not None
    sim = Simulation(_as_scenario(scenario), seed=seed, start=epoch, duration_s=duration_s, city=city, faults=faults,
                     realtime=realtime)
    reached = epoch
    for message in sim.messages():
        reached = message.t
        yield message.topic, message.payload, message.t
    sim.finish(max(reached, sim.end if math.isfinite(sim.end) else reached))
    if ground_truth_path is not None:
        sim.truth.write(ground_truth_path)


ProgressCallback = Callable[[SimulationSummary, float], None]


def simulate(
    scenario: Scenario | str | Path,
    *,
    broker_url: str,
    city: str,
    seed: int,
    duration_s: float | None,
    speed: float,
    rate: float | None = None,
    faults: Faults = None,
    ground_truth_path: str | Path | None = None,
    start: float | datetime | str | None = None,
    engine: str = "paho",
    client_id: str | None = None,
    max_messages: int | None = None,
    progress: ProgressCallback | None = None,
    progress_every_s: float = 1.0,
    ack_timeout_s: float = 30.0,
    workers: int = 1,
    credentials: SenderCredentials | str | Path | None = None,
) -> SimulationSummary:
    """Publish a run to a broker (QoS 1) and wait for the acknowledgements; synchronous.

    ``speed``: 1 = real time, 1440 = a day per minute, 0 = as fast as possible. ``rate`` caps
    messages per second. ``duration_s`` is simulated time (None: until interrupted). ``progress`` is
    called about every ``progress_every_s`` with the running summary and the simulated time reached.
    ``workers`` > 1 splits the fleet over that many processes, each with its own connection (see
    :mod:`simulators.workers`); ``rate`` and ``max_messages`` are then shared out between them.
    ``credentials`` (a :class:`SenderCredentials` or the path of a credentials file): every device and gateway
    publishes over its own connection as itself (:mod:`simulators.connections`); the broker URL then gives only
    where to connect, its user name and password are not used.
    Ctrl-C stops the run cleanly: the summary comes back with ``interrupted`` set."""
    scenario = _as_scenario(scenario)
    if credentials is not None and not isinstance(credentials, SenderCredentials):
        credentials = load_credentials(credentials)
    if credentials is not None:
        if engine != "paho":
            raise ConfigError(f"--credentials publishes over one paho connection per device; --engine {engine} is "
                              "for load runs as the simulator service account")
        if client_id:
            raise ConfigError("--credentials: each device's client id is its own id; drop --client-id")
    begin = _as_epoch(start)
    begin = default_start(scenario, duration_s, speed) if begin is None else begin
    options = RunOptions(broker_url=broker_url, city=city, seed=seed, duration_s=duration_s, speed=speed, rate=rate,
                         faults=faults, start=begin, engine=engine, client_id=client_id, max_messages=max_messages,
                         progress_every_s=progress_every_s, ack_timeout_s=ack_timeout_s, credentials=credentials)
    if workers > 1:
        from sanitel.simulators.workers import simulate_in_workers

        return simulate_in_workers(scenario, options, workers, progress=progress, ground_truth_path=ground_truth_path)
    return simulate_shard(scenario, options, progress=progress, ground_truth_path=ground_truth_path)


@dataclass(frozen=True)
class RunOptions:
    """Everything about a publishing run except the scenario (shared by every worker of a run)."""

    broker_url: str
    city: str
    seed: int
    duration_s: float | None
    speed: float
    start: float
    rate: float | None = None
    faults: Faults = None
    engine: str = "paho"
    client_id: str | None = None
    max_messages: int | None = None
    progress_every_s: float = 1.0
    ack_timeout_s: float = 30.0
    credentials: SenderCredentials | None = field(default=None, repr=False)  # None: one connection for all


def simulate_shard(scenario: Scenario, options: RunOptions, *, shard: tuple[int, int] = (0, 1),
                   progress: ProgressCallback | None = None,
                   ground_truth_path: str | Path | None = None) -> SimulationSummary:
    """One process's share of a run (all of it when ``shard == (0, 1)``)."""
    begin = options.start
    realtime = options.speed == 1.0 and abs(begin - time.time()) < 300.0
    sim = Simulation(scenario, seed=options.seed, start=begin, duration_s=options.duration_s, city=options.city,
                     faults=options.faults, shard=shard, realtime=realtime)
    summary = SimulationSummary(scenario.name, options.seed, begin, sim.device_count(),
                                broker=BrokerTarget.parse(options.broker_url).redacted())
    publisher: Publisher
    if options.credentials is None:
        publisher = open_publisher(options.broker_url, engine=options.engine, client_id=options.client_id)
    else:
        publisher = open_device_publisher(options.broker_url, options.credentials, sim.senders())
    wall_start = time.monotonic()
    clock = SimClock(begin, options.speed, wall_start)
    next_progress = wall_start + options.progress_every_s
    interval = 1.0 / options.rate if options.rate else 0.0

    def report(sim_t: float) -> None:
        nonlocal next_progress
        summary.elapsed_s = time.monotonic() - wall_start
        summary.acked, summary.errors = publisher.stats.acked, publisher.stats.errors
        if progress is not None:
            progress(summary, sim_t)
        next_progress = time.monotonic() + options.progress_every_s

    paced = clock.paced or interval > 0
    publish = publisher.publish
    try:
        for message in sim.messages():
            if paced:
                wait_until = max(clock.wall_due(message.t), wall_start + summary.messages * interval)
                while (now := time.monotonic()) < wait_until:
                    publisher.idle(min(wait_until - now, 0.2))
                    if time.monotonic() >= next_progress:
                        report(clock.now())
            publish(message.topic, message.payload)
            summary.count(message)
            if summary.messages & 255 == 0 and time.monotonic() >= next_progress:
                report(message.t)
            if options.max_messages is not None and summary.messages >= options.max_messages:
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        publisher.flush(options.ack_timeout_s)
        stats = publisher.stats
        summary.acked, summary.errors, summary.reconnects = stats.acked, stats.errors, stats.reconnects
        if isinstance(publisher, DevicePublisher):
            summary.refused = publisher.refused()
        publisher.close()
        summary.elapsed_s = time.monotonic() - wall_start
        reached = summary.end if math.isfinite(summary.end) else begin
        sim.finish(sim.end if not summary.interrupted and math.isfinite(sim.end) else reached)
        summary.faults = dict(sim.truth.counts())
        if ground_truth_path is not None:
            summary.ground_truth_path = str(sim.truth.write(ground_truth_path))
    return summary


def inventory(scenario: Scenario | str | Path, *, seed: int = 0, city: str = DEFAULT_CITY) -> list[dict[str, Any]]:
    """The scenario's devices as a registry would list them: ``device_id``, ``kind``, ``site_id``, ``metadata``
    (it depends on the seed: pass the run's) and ``gateway_id`` — the gateway whose batches carry the device's
    readings (``sanitation/{city}/gateway/{gateway_id}/batch``), None for a device that publishes on its own
    topics. The collector accepts a batch reading only from a device registered behind that gateway, so a
    registry seeded from this list must put each device there (``sanitel run`` does: ``register_fleet``)."""
    sim = Simulation(_as_scenario(scenario), seed=seed, start=0.0, duration_s=0.0, city=city, faults=[])
    out: list[dict[str, Any]] = []
    for model in sim.fleet.models:
        # only a point's bins are behind its gateway; its camera publishes on its own topics
        gateway_id = model.gateway_id if isinstance(model, SortingPoint) else None
        behind = model.gateway_devices() if isinstance(model, SortingPoint) else set()
        out += [{"device_id": d.device_id, "kind": d.kind, "site_id": d.site_id, "metadata": d.metadata,
                 "gateway_id": gateway_id if d.device_id in behind else None} for d in model.devices()]
    return out


# The day truck routes count from when the caller gives none: before any simulated day (the routes hold every day).
ROUTES_VALID_FROM = "2020-01-01"


def inventory_routes(scenario: Scenario | str | Path, *, seed: int = 0, city: str = DEFAULT_CITY,
                     valid_from: str = ROUTES_VALID_FROM) -> list[dict[str, Any]]:
    """The trucks' planned routes as rows of ``truck_routes`` (the truck contract): ``route_id``, ``truck_id``,
    ``shift_start``/``shift_end`` (local ``HH:MM``), ``points`` (ordered sorting point ids), ``tip_site_id``,
    ``valid_from``, ``valid_to``. Depends on the seed: pass the run's. Empty without trucks."""
    layout = _layout(scenario, seed, city)
    return [] if layout is None else [r.as_inventory(valid_from) for r in layout.routes]


def inventory_sites(scenario: Scenario | str | Path, *, seed: int = 0, city: str = DEFAULT_CITY) -> list[dict[str, Any]]:
    """The sites trucks need registered, parents first: ``site_id``, ``kind``, ``parent_id``, ``lat``/``lon`` and
    ``params`` — each district, its truck depot (``dp-<district>``), its transfer stations, its estates and their
    sorting points (``sp-00001``, kind ``sorting_point``; those on a route carry the scenario's ``clearance``
    parameter, the truck contract's site parameter). Empty without trucks (the other kinds' sites are named by their
    devices' ``site_id``, :func:`inventory`)."""
    loaded = _as_scenario(scenario)
    layout = _layout(loaded, seed, city)
    if layout is None:
        return []
    clearance = {c: {"by": hhmm(spec.by), "every": spec.every} for c, spec in loaded.sorting_points.clearance.items()}
    covered = layout.covered_points()
    out: list[dict[str, Any]] = []
    for district in layout.districts:
        out.append(_site(district.district_id, "district", None, district, 0.0, 0.0))
        out.append(_site(f"dp-{district.district_id}", "depot", district.district_id, district, *district.depot()))
    out += [_site(s.site_id, "transfer_station", s.district.district_id, s.district, s.x, s.y)
            for s in layout.stations.values()]
    estates: set[str] = set()
    for pid, where in layout.points.items():
        if where.site_id not in estates:
            estates.add(where.site_id)
            out.append(_site(where.site_id, "estate", where.district.district_id, where.district, where.x, where.y))
        params = {"clearance": clearance} if clearance and pid in covered else {}
        out.append(_site(pid, "sorting_point", where.site_id, where.district, where.x, where.y, params))
    return out


def _layout(scenario: Scenario | str | Path, seed: int, city: str) -> TruckLayout | None:
    loaded = _as_scenario(scenario)
    if not loaded.trucks.count:
        return None
    return truck_layout(loaded, seed)


def _site(site_id: str, kind: str, parent: str | None, district: District, x: float, y: float,
          params: dict[str, Any] | None = None) -> dict[str, Any]:
    lat, lon = district.to_latlon(x, y)
    return {"site_id": site_id, "kind": kind, "parent_id": parent, "lat": round(lat, 6), "lon": round(lon, 6),
            "params": params or {}}
