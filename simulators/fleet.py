"""From a scenario to device models: ids, sites, districts and schedules.

Device ids are stable and readable: ``sw-0001`` (sweeper), ``ts-0001`` (transfer station),
``bin-00001-k`` (sorting point 00001, kitchen bin; ``r`` recyclable, ``h`` hazardous, ``o`` other),
``cam-00001`` (its camera), ``gw-00001`` (its gateway), ``cems-p1-l1`` (plant p1, line 1).
Sites: a district per sweeper, the station itself, an estate per four sorting points
(``es-00001``), a line per CEMS (``p1-l1``).

Trucks (``tk-0001``, route ``rt-0001``, depot ``dp-<district>``) need a map the other kinds do without: the sorting
points and stations are placed in districts (contiguous blocks of ids per district, positions from each site's own
random stream: :func:`truck_layout`), and each truck gets a route over the points of its district nearest in
bearing, capped at ``points_per_route``; its tip site is the station nearest its last point. None of this draws
from a device model's random stream, so the other devices send the same with or without trucks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import DeviceInfo, DeviceModel, IncidentSink, device_rng, pick_weighted
from sanitel.simulators.models.cems import CemsLine, Window, random_calibration_time
from sanitel.simulators.models.routes import District
from sanitel.simulators.models.sorting_point import SortingPoint, bin_id, point_id
from sanitel.simulators.models.station import TransferStation, Weighbridge
from sanitel.simulators.models.sweeper import Sweeper
from sanitel.simulators.models.truck import Stop, Truck, TruckRoute, order_stops, place
from sanitel.simulators.scenario import LineEvent, PlantSpec, Scenario

POINTS_PER_ESTATE = 4


@dataclass
class Fleet:
    models: list[DeviceModel]
    local: LocalTime
    kinds: dict[str, str] = field(default_factory=dict)            # device id → kind
    owners: dict[str, DeviceModel] = field(default_factory=dict)   # device id → its model
    points: dict[str, SortingPoint] = field(default_factory=dict)  # point id → model
    gateway_devices: set[str] = field(default_factory=set)
    protocols: dict[str, str] = field(default_factory=dict)        # CEMS device id → json / hj212
    layout: TruckLayout | None = None                              # the trucks' map, when there are trucks

    def add(self, model: DeviceModel) -> None:
        self.models.append(model)
        for info in model.devices():
            self.kinds[info.device_id] = info.kind
            self.owners[info.device_id] = model
        if isinstance(model, SortingPoint):
            self.points[model.point_id] = model
            self.gateway_devices |= model.gateway_devices()
        if isinstance(model, CemsLine):
            self.protocols[model.device_id] = model.protocol

    # --- lookups -------------------------------------------------------------------------------

    def kind_of(self, device_id: str) -> str | None:
        return self.kinds.get(device_id)

    def protocol_of(self, device_id: str) -> str:
        return self.protocols.get(device_id, "json")

    def model_of(self, device_id: str) -> DeviceModel:
        return self.owners[device_id]

    def sweeper(self, device_id: str) -> Sweeper:
        model = self.owners[device_id]
        assert isinstance(model, Sweeper)
        return model

    def truck(self, device_id: str) -> Truck:
        model = self.owners[device_id]
        assert isinstance(model, Truck)
        return model

    def cems_line(self, device_id: str) -> CemsLine:
        model = self.owners[device_id]
        assert isinstance(model, CemsLine)
        return model

    def point_of(self, device_id: str) -> SortingPoint:
        model = self.points.get(device_id) or self.owners[device_id]
        assert isinstance(model, SortingPoint)
        return model

    def fault_candidates(self, kind: str, *, message_level: bool) -> list[str]:
        """Devices of a kind a fault may target; message faults skip devices behind a gateway."""
        return [d for d, k in self.kinds.items()
                if k == kind and not (message_level and d in self.gateway_devices)]

    def devices(self) -> Iterator[DeviceInfo]:
        for model in self.models:
            yield from model.devices()

    def device_count(self) -> int:
        return len(self.kinds)

    def hj212_units(self) -> dict[str, tuple[str, str]]:
        """CEMS device id → (MN, password) for units that send HJ 212 frames."""
        return {m.device_id: (m.mn, m.password) for m in self.models
                if isinstance(m, CemsLine) and m.protocol == "hj212"}

    def max_interval(self) -> float:
        return max((m.max_interval() for m in self.models), default=0.0)


def build_fleet(scenario: Scenario, *, seed: int, city: str, start: float, incidents: IncidentSink) -> Fleet:
    local = LocalTime(scenario.timezone)
    fleet = Fleet([], local)
    model: DeviceModel
    for model in _sweepers(scenario, seed, city, start, local, incidents):
        fleet.add(model)
    for model in _stations(scenario, seed, city, start, local, incidents):
        fleet.add(model)
    for model in _points(scenario, seed, city, start, local, incidents):
        fleet.add(model)
    for plant in scenario.plants:
        for model in _lines(plant, seed, city, start, local, incidents):
            fleet.add(model)
    if scenario.trucks.count:  # last: the other models keep their places (ties in the agenda break by place)
        fleet.layout = truck_layout(scenario, seed)
        for model in _trucks(scenario, fleet.layout, seed, city, start, local, incidents):
            fleet.add(model)
    return fleet


@dataclass(frozen=True)
class PlacedSite:
    site_id: str
    district: District
    x: float
    y: float


@dataclass(frozen=True)
class TruckLayout:
    """The trucks' map: sorting points and stations placed in districts, and the routes over them."""

    districts: list[District]
    points: dict[str, PlacedSite]      # point id → where (site_id: its estate)
    stations: dict[str, PlacedSite]
    routes: list[TruckRoute]

    def covered_points(self) -> set[str]:
        return {s.point_id for r in self.routes for s in r.stops}


def _block(n: int, count: int, parts: int) -> int:
    """Which of ``parts`` contiguous blocks the ``n``-th of ``count`` (1-based) falls in."""
    return (n - 1) * parts // count


def truck_layout(scenario: Scenario, seed: int) -> TruckLayout:
    districts = [District(d.id, d.lat, d.lon, d.radius_km * 1000.0) for d in scenario.districts]
    spec, points_spec = scenario.trucks, scenario.sorting_points
    points: dict[str, PlacedSite] = {}
    for n in range(1, points_spec.count + 1):
        district = districts[_block(n, points_spec.count, len(districts))]
        points[point_id(n)] = PlacedSite(f"es-{(n - 1) // POINTS_PER_ESTATE + 1:05d}", district,
                                         *place(seed, point_id(n), district))
    stations: dict[str, PlacedSite] = {}
    for n in range(1, scenario.stations.count + 1):
        station = f"ts-{n:04d}"
        district = districts[_block(n, scenario.stations.count, len(districts))]
        stations[station] = PlacedSite(station, district, *place(seed, station, district))
    clearance: dict[str, float] = {c: s.by for c, s in points_spec.clearance.items()}
    stops_of: dict[str, list[Stop]] = {d.district_id: [] for d in districts}
    for n in range(1, points_spec.count + 1):
        where = points[point_id(n)]
        stops_of[where.district.district_id].append(Stop(point_id(n), where.x, where.y,
                                                          tuple((c, bin_id(n, c)) for c in points_spec.categories)))
    trucks_of: dict[str, list[str]] = {d.district_id: [] for d in districts}
    for n in range(1, spec.count + 1):
        trucks_of[districts[_block(n, spec.count, len(districts))].district_id].append(f"tk-{n:04d}")
    routes = []
    for district in districts:
        trucks = trucks_of[district.district_id]
        # by bearing from the centre: each truck gets a sector of the district
        stops = sorted(stops_of[district.district_id], key=lambda s: (math.atan2(s.y, s.x), s.point_id))
        # as even as the cap allows: points beyond trucks × points_per_route stay off every route
        covered = min(len(stops), len(trucks) * spec.points_per_route)
        taken = 0
        for k, truck_id in enumerate(trucks):
            size = covered // len(trucks) + (1 if k < covered % len(trucks) else 0)
            mine = order_stops(district.depot(), stops[taken:taken + size])
            taken += size
            routes.append(_route(truck_id, district, mine, stations, spec.shift, clearance))
    routes.sort(key=lambda r: r.truck_id)
    return TruckLayout(districts, points, stations, routes)


def _route(truck_id: str, district: District, stops: list[Stop], stations: dict[str, PlacedSite],
           shift: tuple[float, float], clearance: Mapping[str, float]) -> TruckRoute:
    """A truck's route; its tip site is the station nearest its last point (any district's, by position)."""
    lx, ly = (stops[-1].x, stops[-1].y) if stops else district.depot()

    def distance(site: PlacedSite) -> float:
        x, y = district.to_xy(*site.district.to_latlon(site.x, site.y))
        return math.hypot(x - lx, y - ly)

    tip = min(stations.values(), key=lambda s: (distance(s), s.site_id))
    tip_xy = district.to_xy(*tip.district.to_latlon(tip.x, tip.y))
    return TruckRoute(f"rt-{truck_id.removeprefix('tk-')}", truck_id, district, f"dp-{district.district_id}",
                      district.depot(), tuple(stops), tip.site_id, tip_xy, shift, clearance)


def _trucks(scenario: Scenario, layout: TruckLayout, seed: int, city: str, start: float, local: LocalTime,
            incidents: IncidentSink) -> Iterator[Truck]:
    spec = scenario.trucks
    bridges = {r.tip_site_id: Weighbridge(r.tip_site_id, seed=seed, city=city) for r in layout.routes}
    mix = sorted(spec.powertrains.items())
    for route in layout.routes:
        powertrain = pick_weighted(device_rng(seed, route.truck_id, "layout"), mix)
        yield Truck(route.truck_id, seed=seed, city=city, start=start, local=local, route=route,
                    weighbridge=bridges[route.tip_site_id], interval_s=spec.interval,
                    parked_interval_s=spec.parked_interval, powertrain=powertrain,
                    rated_payload_kg=spec.rated_payload_kg, idle_limit_min=spec.idle_limit_min, incidents=incidents)


def _sweepers(scenario: Scenario, seed: int, city: str, start: float, local: LocalTime,
              incidents: IncidentSink) -> Iterator[Sweeper]:
    spec = scenario.sweepers
    names = spec.districts or [d.id for d in scenario.districts]
    by_id = {d.id: District(d.id, d.lat, d.lon, d.radius_km * 1000.0) for d in scenario.districts}
    for n in range(1, spec.count + 1):
        yield Sweeper(f"sw-{n:04d}", seed=seed, city=city, start=start, local=local,
                      district=by_id[names[(n - 1) % len(names)]], shifts=spec.shifts, interval_s=spec.interval,
                      parked_interval_s=spec.parked_interval, incidents=incidents)


def _stations(scenario: Scenario, seed: int, city: str, start: float, local: LocalTime,
              incidents: IncidentSink) -> Iterator[TransferStation]:
    spec = scenario.stations
    for n in range(1, spec.count + 1):
        yield TransferStation(f"ts-{n:04d}", seed=seed, city=city, start=start, local=local,
                              interval_s=spec.interval, trucks_per_day=spec.trucks_per_day, incidents=incidents)


def _points(scenario: Scenario, seed: int, city: str, start: float, local: LocalTime,
            incidents: IncidentSink) -> Iterator[SortingPoint]:
    spec = scenario.sorting_points
    lo, hi = spec.households
    for n in range(1, spec.count + 1):
        households = device_rng(seed, f"sp-{n:05d}", "layout").randint(lo, hi)
        yield SortingPoint(
            n, seed=seed, city=city, start=start, local=local, households=households,
            categories=spec.categories, cameras=spec.cameras,
            camera_detections_per_day=spec.camera_detections_per_day, status_interval_s=spec.status_interval,
            collection_times_s=spec.collection_times, deposits_per_household_day=spec.deposits_per_household_day,
            fire_rate_per_day=spec.fire_rate_per_day, fill_outlier_prob=spec.fill_outlier_prob,
            gateway_interval_s=spec.gateway_interval, incidents=incidents,
            site_id=f"es-{(n - 1) // POINTS_PER_ESTATE + 1:05d}",
        )


def _lines(plant: PlantSpec, seed: int, city: str, start: float, local: LocalTime,
           incidents: IncidentSink) -> Iterator[CemsLine]:
    for line in range(1, plant.lines + 1):
        device_id = f"cems-{plant.id}-l{line}"
        rng = device_rng(seed, device_id, "layout")
        calibration = None
        if plant.calibration is not None:
            calibration = (random_calibration_time(rng, plant.calibration.at, line - 1), plant.calibration.duration)
        yield CemsLine(
            device_id, seed=seed, city=city, start=start, local=local, plant_id=plant.id,
            line_id=f"{plant.id}-l{line}", interval_s=plant.interval, protocol=plant.protocol,
            mn=device_id, password=plant.password, calibration_s=calibration,
            maintenance=_windows(plant.maintenance, line, start, local),
            outages=_windows(plant.outages, line, start, local),
            excursions_per_day=plant.excursions_per_day, incidents=incidents,
        )


def _windows(events: list[LineEvent], line: int, start: float, local: LocalTime) -> list[Window]:
    windows = []
    for event in events:
        if event.line != line:
            continue
        begin = start + event.after if event.after is not None else local.next_time_of_day(start, event.at or 0.0)
        windows.append(Window(begin, begin + event.duration))
    return windows
