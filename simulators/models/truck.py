"""Refuse collection truck (issue 15): a shift over a planned route of sorting points, tipping at a station.

A truck's day: parked at its district depot (``off_shift``; an electric pack charges); at its shift start a short
pre-trip check (``depot``), then it drives to its route's first sorting point (``to_route``) and works the route in
its planned order (``collecting``): at each point the lifter empties every bin, one ``pickup`` event per bin with the
lifter scale's weight, and the on-board scale's ``load_kg`` rises; after the last point it drives to its transfer
station (``to_tip``), is weighed in full, tips (a ``tip`` event with the load it unloaded), is weighed out empty —
the station's weighbridge issues a ticket on the station's own ``event`` stream (models/station.py
:class:`Weighbridge`) — and drives back (``returning``). Telemetry every ``interval_s`` while out, every
``parked_interval_s`` when parked; GB/T 32960.3 pack fields only for electric and hybrid trucks.

Positions: straight lines between the route's points (the path the ``truck_off_route`` rule measures against), in
the district's flat frame like the sweepers' (models/routes.py).

Ground truth (:mod:`simulators.truth`) is judged on what the truck did, with the limits the truck rules use (the
truck contract): a clearance deadline of a point on the route that passes without a pickup of that category that
local day (``point_not_cleared``: late when the pickup comes later that day, missed when none does), a load above
the rated payload (``truck_overweight``), a load not followed by a weighbridge ticket within 3 h
(``load_not_weighed``), a ticket whose net differs from the pickups summed since the previous ticket by more than
10 % and 200 kg (``weighbridge_mismatch``, until the truck's next ticket, as the rule holds it), a detour beyond 300 m
of the path (``truck_off_route``). A record is ``injected`` when a fault planned on the truck caused it, ``model``
otherwise — a clean day has none.

Bin weights per 240 L bin (``BIN_KG``): kitchen 20-120 kg as the brief gives it; the others are plausible
densities of a 240 L bin (not verified against a published survey). The bins' own fill levels
(models/sorting_point.py) are not coupled to the pickups: the points keep their own collection rounds so that a
scenario's other devices send the same with or without trucks.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sanitel.schemas.readings import TruckEvent, TruckTelemetry
from sanitel.schemas.topics import device_topic
from sanitel.signal_conditions import condition
from sanitel.simulators.clock import LocalTime, rfc3339
from sanitel.simulators.models.base import (
    INF,
    DeviceInfo,
    DeviceModel,
    Emission,
    IncidentSink,
    SeqCounter,
    ambient_at,
    clamp,
    device_rng,
    r1,
    r2,
    r3,
    r6,
)
from sanitel.simulators.models.routes import District, distance_to_path, heading_deg
from sanitel.simulators.models.station import Weighbridge
from sanitel.simulators.truth import TruthRecord

KIND = TruckTelemetry.kind
TELEMETRY, EVENT = TruckTelemetry.stream, TruckEvent.stream

# shift states (the truck contract)
DEPOT, TO_ROUTE, COLLECTING, TO_TIP, TIPPING, RETURNING, OFF_SHIFT = (
    "depot", "to_route", "collecting", "to_tip", "tipping", "returning", "off_shift")
WITH_PACK = frozenset({"electric", "hybrid"})  # GB/T 32960.3 battery data: absent on diesel and CNG trucks

# Overweight is the kernel's condition truck_overweight (sanitel/signal_conditions.yaml), read by the rule too: the load
# above `threshold` % of the rated payload, until at or below `clear` %.
OVERWEIGHT = condition("truck_overweight")
# The limits of the other truck rules (alerts/rules/truck.yaml), which the ground truth judges with: restated here (the
# simulators may import no alert code), held equal to the shipped rules by tests/integration/test_truck_ground_truth.py.
OFF_ROUTE_M = 300.0
OFF_ROUTE_FOR_S = 300.0
WEIGH_WITHIN_S = 3 * 3600.0
MISMATCH_SHARE, MISMATCH_KG = 0.10, 200.0

# kg per 240 L bin, triangular (low, high, mode); kitchen from the brief, the rest unverified plausible densities
BIN_KG: Mapping[str, tuple[float, float, float]] = {
    "kitchen": (20.0, 120.0, 60.0), "other": (15.0, 80.0, 35.0),
    "recyclable": (5.0, 40.0, 15.0), "hazardous": (0.5, 8.0, 2.0)}
LIFT_S = (40.0, 75.0)           # one bin: hook, lift, shake, lower
LIFTER_ERROR = 0.02             # lifter scale: ±2 % per bin (unverified; typical of dynamic bin weighing)
ONBOARD_ERROR = 0.01            # on-board (axle) scale: ±1 % of the load (unverified)
CELLS = 168                     # LFP cells in series (≈ 540 V pack)
DRAIN_PCT_H = {"drive": 14.0, "lift": 8.0, "idle": 1.0}
CURRENT_A = {"drive": 110.0, "lift": 70.0, "idle": 4.0}
# faults that change a shift (applied to the first shift leaving at or after the fault's time)
SHIFT_FAULTS = ("missed_pickup", "late_round", "overweight", "off_route", "never_weighed", "weighbridge_mismatch")
DETOUR_M = (900.0, 1300.0, 2000.0, 3000.0)   # how far off the path an off-route detour goes (first that fits)
DETOUR_PAUSE_S = (480.0, 600.0)              # … and waits there: well over the rule's 5 minutes beyond 300 m
# A telematics outage (fault truck_telematics_outage, :class:`TelematicsOutage`): the terminal sends nothing, telemetry
# or events, from a little into the first haul to the tip at or after the fault's time, while the truck keeps working
# (drives on, is weighed, tips, drives back). The haul, because no pickup falls in it: a lost pickup would rightly
# make its point look not cleared — another fault's effect. Expected: the truck rules' offline alert, a silence
# begun on shift (alerts/rules/offline.yaml).
TELEMATICS_OUTAGE = "truck_telematics_outage"
OFFLINE_ALERT = "truck_offline"
OUTAGE_S = 45 * 60.0          # silent this long unless the fault's duration says otherwise
OUTAGE_INTO_HAUL_S = 120.0    # … from this far into the haul: the readings of the load just lifted still go out


@dataclass(frozen=True, slots=True)
class Stop:
    """A sorting point on a route: where it is (district frame, m) and its bins (category, bin id / RFID tag)."""

    point_id: str
    x: float
    y: float
    bins: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TruckRoute:
    """A truck's planned route: depot → stops in order → tip site → depot, one shift a day."""

    route_id: str
    truck_id: str
    district: District
    depot_site_id: str
    depot: tuple[float, float]
    stops: tuple[Stop, ...]
    tip_site_id: str
    tip: tuple[float, float]
    shift: tuple[float, float]            # local seconds of day: start, end
    clearance: Mapping[str, float] = field(default_factory=dict)  # category → deadline (local seconds of day)

    def path(self) -> list[tuple[float, float]]:
        """The polyline of the route's points, in order (what ``truck_off_route`` measures against)."""
        return [(s.x, s.y) for s in self.stops]

    def as_inventory(self, valid_from: str, valid_to: str | None = None) -> dict[str, Any]:
        """The row of ``truck_routes`` (the truck contract)."""
        return {"route_id": self.route_id, "truck_id": self.truck_id, "shift_start": hhmm(self.shift[0]),
                "shift_end": hhmm(self.shift[1]), "points": [s.point_id for s in self.stops],
                "tip_site_id": self.tip_site_id, "valid_from": valid_from, "valid_to": valid_to}


def hhmm(seconds_of_day: float) -> str:
    minutes = int(seconds_of_day // 60) % 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def place(seed: int, ident: str, district: District, share: float = 0.9) -> tuple[float, float]:
    """A fixed position (district frame, m) for a site the scenario does not place: uniform over the district's
    disc, from its own random stream (a device's model stream is not touched)."""
    rng = device_rng(seed, ident, "position")
    r = district.radius_m * share * math.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return r * math.cos(angle), r * math.sin(angle)


def order_stops(start: tuple[float, float], stops: Sequence[Stop]) -> list[Stop]:
    """Nearest neighbour from ``start``: the order a dispatcher would draw (ties by point id, so stable)."""
    left = sorted(stops, key=lambda s: s.point_id)
    out: list[Stop] = []
    x, y = start
    while left:
        best = min(left, key=lambda s: (math.hypot(s.x - x, s.y - y), s.point_id))
        left.remove(best)
        out.append(best)
        x, y = best.x, best.y
    return out


def bin_weight(rng: random.Random, category: str) -> float:
    lo, hi, mode = BIN_KG.get(category, BIN_KG["other"])
    return rng.triangular(lo, hi, mode)


@dataclass(slots=True)
class Action:
    """One thing a truck does, from ``start`` to ``end`` (set when it begins)."""

    kind: str                 # park, prep, drive, lift, weigh_in, tip, weigh_out, dump, leak, pause
    state: str                # the shift state while doing it
    to: tuple[float, float] | None = None
    stop: Stop | None = None
    category: str | None = None
    bin_tag: str | None = None
    bulky: bool = False       # overweight fault: a load lifted on top of the bins
    detour: str = ""          # off_route fault: "out" of the path to a waypoint, "back" onto it
    start: float = 0.0
    end: float = 0.0
    origin: tuple[float, float] = (0.0, 0.0)
    distance_m: float = 0.0


@dataclass(slots=True)
class ShiftFault:
    kind: str
    after: float
    details: dict[str, Any]


class TelematicsOutage:
    """A truck's terminal silent in [start, end): nothing it would send goes out. Its ground-truth record opens with the
    first message it swallows (an outage the run never reached is no truth) and expects ``truck_offline`` when the gap
    left between the messages sent — last before → first after, ``details.gap_s`` — is longer than the truck's
    inactivity timeout, measured as the ``silence`` fault measures it (simulators/faults.py ``Silence``). The
    last message before the outage was sent on shift (collecting or hauling), so the silence began on shift."""

    __slots__ = ("details", "end", "last_before", "measured", "record", "sink", "start", "timeout_s")

    def __init__(self, start: float, end: float, timeout_s: float, last_before: float, details: dict[str, Any],
                 sink: IncidentSink) -> None:
        self.start, self.end, self.timeout_s, self.last_before = start, end, timeout_s, last_before
        self.details, self.sink = details, sink
        self.record: TruthRecord | None = None
        self.measured = False

    def swallows(self, device_id: str, t: float) -> bool:
        """Whether a message the truck sends at ``t`` is lost."""
        if t < self.start:
            self.last_before = t
            return False
        if t < self.end:
            if self.record is None:
                planned = {"alert": OFFLINE_ALERT} if self.end - self.start > self.timeout_s else {}
                self.record = self.sink(TruthRecord(device_id, KIND, TELEMATICS_OUTAGE, self.start, self.end,
                                                    {"rows": "missing", **planned}, details=self.details))
            self.record.messages += 1
            return True
        if self.record is not None and not self.measured:
            self.measured = True
            gap = t - self.last_before
            self.record.details["gap_s"] = round(gap, 3)
            self.record.expected_effect.pop("alert", None)
            if gap > self.timeout_s:
                self.record.expected_effect["alert"] = OFFLINE_ALERT
        return False


class Truck(DeviceModel):
    kind: ClassVar[str] = KIND

    def __init__(self, device_id: str, *, seed: int, city: str, start: float, local: LocalTime, route: TruckRoute,
                 weighbridge: Weighbridge | None, interval_s: float, parked_interval_s: float, powertrain: str,
                 rated_payload_kg: float, idle_limit_min: float, incidents: IncidentSink) -> None:
        self.device_id = device_id
        self.rng = rng = device_rng(seed, device_id)
        self.telemetry_topic = device_topic(city, KIND, device_id, TELEMETRY)
        self.event_topic = device_topic(city, KIND, device_id, EVENT)
        self.local = local
        self.route = route
        self.path = route.path()
        self.weighbridge = weighbridge
        self.interval_s, self.parked_interval_s = interval_s, parked_interval_s
        self.powertrain = powertrain
        self.rated_payload_kg = rated_payload_kg
        self.idle_limit_min = idle_limit_min
        self.incidents = incidents
        self.seq = SeqCounter(rng)
        self.tare_kg = rated_payload_kg * rng.uniform(1.1, 1.4)  # curb mass of a compactor truck (unverified ratio)
        self.scale_bias = rng.uniform(-ONBOARD_ERROR, ONBOARD_ERROR)
        self.insulation_kohm = rng.uniform(8_000, 25_000)
        self.odometer = rng.uniform(5_000.0, 150_000.0)
        self.soc = rng.uniform(90.0, 100.0)
        self.battery_temp = ambient_at(local.seconds_of_day(start)) + 1.0
        self.x, self.y = route.depot
        self.heading = rng.uniform(0.0, 360.0)
        self.speed_kmh = 0.0
        self.load_kg = 0.0
        self.gross_kg = 0.0      # the last weigh-in, as the bridge showed it
        self.detour_m = 0.0      # how far off the path the last detour went

        self.t = start
        self.action: Action | None = None
        self.plan: deque[Action] = deque()
        self.next_report = start + rng.uniform(0.0, parked_interval_s)
        self.pending: list[ShiftFault] = []
        self.shift_faults: dict[str, ShiftFault] = {}
        self.fault_days: dict[int, dict[str, ShiftFault]] = {}  # local day → its shift's late_round/missed_pickup
        self.skipped: set[str] = set()                   # points a missed_pickup fault skipped, that day
        # the load since the last ticket: reported pickups, first pickup
        self.picked_kg, self.first_pickup, self.last_pickup = 0.0, INF, INF
        self.picked: dict[tuple[str, str], float] = {}   # (point, category) → last pickup
        self.open_records: list[TruthRecord] = []
        self.overweight: TruthRecord | None = None
        self.unweighed: TruthRecord | None = None
        self.mismatch: TruthRecord | None = None   # open until the truck's next ticket
        self.off_route: TruthRecord | None = None
        self.clearance_open: dict[tuple[str, str], TruthRecord] = {}
        self.clearance_day_end = INF
        self.next_deadline = self._deadline_after(start)
        self.outage: TelematicsOutage | None = None

    # --- interface ---------------------------------------------------------------------------

    def first_due(self) -> float:
        return min(self.next_report, self.next_deadline)

    def max_interval(self) -> float:
        return self.parked_interval_s

    def devices(self) -> list[DeviceInfo]:
        lat, lon = self.route.district.to_latlon(*self.route.depot)
        params = {"rated_payload_kg": self.rated_payload_kg, "depot_site_id": self.route.depot_site_id,
                  "idle_limit_min": self.idle_limit_min}
        return [DeviceInfo(self.device_id, KIND, self.route.depot_site_id,
                           {"params": params, "route_id": self.route.route_id, "powertrain": self.powertrain,
                            "district_id": self.route.district.district_id, "depot": [round(lat, 6), round(lon, 6)]})]

    def add_fault(self, kind: str, after: float, details: dict[str, Any]) -> None:
        """Fault hook: ``kind`` (one of SHIFT_FAULTS) changes the first shift leaving at or after ``after``;
        TELEMATICS_OUTAGE silences the first haul to the tip at or after it (``details``: ``timeout_s``, the truck's
        inactivity timeout, and ``duration_s``)."""
        self.pending.append(ShiftFault(kind, after, details))

    def step(self, t: float, out: list[Emission]) -> float:
        if self.action is None:
            self.action = self._begin(Action("park", OFF_SHIFT), self.t)
        while self.action.end <= t:
            self._finish(self.action, out)
            self.action = self._begin(self.plan.popleft() if self.plan else Action("park", OFF_SHIFT),
                                      self.action.end)
        self._energy(t)
        self._position(t)
        self.t = t
        if t >= self.next_deadline:
            self._deadline(t)
        if t >= self.clearance_day_end:
            self._day_ends()
        if t >= self.next_report:
            self._send(out, Emission(self.telemetry_topic, self.device_id, KIND, TELEMETRY, t, self._reading(t)))
            parked = self.action.kind == "park"
            self.next_report = t + self.cadence(t, self.parked_interval_s if parked else self.interval_s)
        return min(self.next_report, self.action.end, self.next_deadline, self.clearance_day_end)

    # --- the shift ---------------------------------------------------------------------------

    def _departure(self, t: float) -> float:
        """When the next shift leaves: its start, later by a late_round fault due by then."""
        if not self.route.stops:
            return INF
        nominal = self.local.next_time_of_day(t, self.route.shift[0])
        late = self._take("late_round", nominal)
        if late is None:
            return nominal
        delay = float(late.details.get("delay_s", 5 * 3600.0))
        self.fault_days.setdefault(self._day(nominal), {})["late_round"] = late
        return nominal + delay

    def _take(self, kind: str, by: float) -> ShiftFault | None:
        for fault in self.pending:
            if fault.kind == kind and fault.after <= by:
                self.pending.remove(fault)
                return fault
        return None

    def _plan_shift(self, t: float) -> None:
        """The actions of a shift leaving at ``t``, with the faults due by then."""
        self.shift_faults = {k: f for k in SHIFT_FAULTS if k != "late_round" and (f := self._take(k, t)) is not None}
        stops = list(self.route.stops)
        self.skipped = set()
        missed = self.shift_faults.get("missed_pickup")
        if missed is not None and stops:
            skipped = stops.pop()  # the last point: the truck heads for the tip without it
            self.skipped = {skipped.point_id}
            missed.details["point_id"] = skipped.point_id
            self.fault_days.setdefault(self._day(t), {})["missed_pickup"] = missed
        plan = self.plan
        plan.append(Action("prep", DEPOT))
        detour_at = len(stops) // 2 if "off_route" in self.shift_faults else -1
        for i, stop in enumerate(stops):
            plan.append(Action("drive", TO_ROUTE if i == 0 else COLLECTING, to=(stop.x, stop.y)))
            plan.extend(Action("lift", COLLECTING, stop=stop, category=c, bin_tag=tag) for c, tag in stop.bins)
            if i == len(stops) - 1 and "overweight" in self.shift_faults:
                plan.append(Action("lift", COLLECTING, stop=stop, category="other", bulky=True))
            if i == detour_at:
                self._plan_detour(stops, i)
        self._plan_tip(stops[-1] if stops else None)
        plan.append(Action("drive", RETURNING, to=self.route.depot))

    def _plan_detour(self, stops: list[Stop], i: int) -> None:
        """off_route: from stop i, out to a place far from the whole path, a wait, and back on the path."""
        here = stops[i]
        after = stops[i + 1] if i + 1 < len(stops) else here
        mx, my = (here.x + after.x) / 2, (here.y + after.y) / 2
        dx, dy = after.x - here.x, after.y - here.y
        norm = math.hypot(dx, dy)
        nx, ny = (-dy / norm, dx / norm) if norm > 0 else (1.0, 0.0)
        candidates = [(mx + side * d * nx, my + side * d * ny) for d in DETOUR_M for side in (1.0, -1.0)]
        def off_path(c: tuple[float, float]) -> float:
            return distance_to_path(c[0], c[1], self.path)

        waypoint = next((c for c in candidates if off_path(c) >= 2 * OFF_ROUTE_M), max(candidates, key=off_path))
        self.detour_m = off_path(waypoint)
        self.plan.append(Action("drive", COLLECTING, to=waypoint, detour="out"))
        self.plan.append(Action("pause", COLLECTING))
        self.plan.append(Action("drive", COLLECTING, to=(after.x, after.y), detour="back"))

    def _plan_tip(self, last: Stop | None) -> None:
        plan = self.plan
        fx, fy = (last.x, last.y) if last else self.route.depot
        tx, ty = self.route.tip
        midway = ((fx + tx) / 2, (fy + ty) / 2)
        if "never_weighed" in self.shift_faults:  # unloaded short of the station: no tip, no ticket
            plan.append(Action("drive", TO_TIP, to=midway))
            plan.append(Action("dump", TO_TIP))
            return
        if "weighbridge_mismatch" in self.shift_faults:  # part of the load leaves on the way
            plan.append(Action("drive", TO_TIP, to=midway))
            plan.append(Action("leak", TO_TIP))
        plan.append(Action("drive", TO_TIP, to=self.route.tip))
        plan.extend((Action("weigh_in", TIPPING), Action("tip", TIPPING), Action("weigh_out", TIPPING)))

    def _begin(self, action: Action, t: float) -> Action:
        rng = self.rng
        action.start, action.origin = t, (self.x, self.y)
        kind = action.kind
        if kind == "park":
            action.end = self._departure(t)
        elif kind == "drive":
            assert action.to is not None
            action.distance_m = math.hypot(action.to[0] - self.x, action.to[1] - self.y)
            speed = rng.uniform(15.0, 25.0) if action.state == COLLECTING else rng.uniform(25.0, 40.0)
            action.end = t + action.distance_m / (speed / 3.6)
            if action.distance_m > 0:
                self.heading = heading_deg(action.to[0] - self.x, action.to[1] - self.y)
            if action.state == TO_TIP:
                self._haul_begins(t)
            if action.detour == "out" and self.off_route is None:
                self.off_route = self._record(t, "off_route", "truck_off_route", {
                    "path_limit_m": OFF_ROUTE_M, "for_s": OFF_ROUTE_FOR_S, "route_id": self.route.route_id})
        elif kind == "lift":
            action.end = t + rng.uniform(*LIFT_S) * (2.0 if action.bulky else 1.0)
        elif kind == "prep":
            action.end = t + rng.uniform(300.0, 600.0)
        elif kind == "pause":
            action.end = t + rng.uniform(*DETOUR_PAUSE_S)
        elif kind in ("weigh_in", "weigh_out"):
            action.end = t + rng.uniform(60.0, 120.0)
        elif kind == "tip":
            action.end = t + rng.uniform(240.0, 480.0)
        else:  # dump, leak
            action.end = t + rng.uniform(300.0, 540.0)
        return action

    def _finish(self, action: Action, out: list[Emission]) -> None:
        t, kind = action.end, action.kind
        self._energy(t)
        self.t = t
        if kind == "park":
            self._plan_shift(t)
        elif kind == "drive":
            assert action.to is not None
            self.x, self.y = action.to
            self.odometer += action.distance_m / 1000.0
            if action.detour == "back" and self.off_route is not None:
                self.off_route.details["max_distance_m"] = round(self.detour_m)
                self._close(self.off_route, t)
                self.off_route = None
        elif kind == "lift":
            self._lift(action, t, out)
        elif kind == "weigh_in":
            self.gross_kg = self._bridge(self.tare_kg + self.load_kg)
        elif kind == "tip":
            self._event(t, out, {"event": "tip", "site_id": self.route.tip_site_id, "weight_kg": self._onboard()})
            self._unloaded(t)
        elif kind == "weigh_out":
            self._ticket(t, out)
        elif kind == "dump":
            self._dumped(t)
        elif kind == "leak":
            self._leak()
            if self.overweight is not None and not self._over_payload():
                self._close(self.overweight, t)
                self.overweight = None

    # --- what happens at a point and at the station --------------------------------------------

    def _lift(self, action: Action, t: float, out: list[Emission]) -> None:
        stop = action.stop
        assert stop is not None and action.category is not None
        if action.bulky:  # overweight: a load lifted on top that takes the truck over its rated payload
            weight = self.rated_payload_kg - self.load_kg + self.rng.uniform(600.0, 1500.0)
        else:
            weight = bin_weight(self.rng, action.category)
        self.load_kg += weight
        reported = r1(max(0.1, weight * (1.0 + self.rng.uniform(-LIFTER_ERROR, LIFTER_ERROR))))
        body: dict[str, Any] = {"event": "pickup", "point_id": stop.point_id, "category": action.category,
                                "weight_kg": reported}
        if action.bin_tag:
            body["bin_tag"] = action.bin_tag
        self._event(t, out, body)
        self.picked_kg += reported
        self.first_pickup = min(self.first_pickup, t)
        self.last_pickup = t
        self._picked(stop.point_id, action.category, t)
        if self._over_payload() and self.overweight is None:
            self.overweight = self._record(t, "overweight", "truck_overweight",
                                           {"rated_payload_kg": self.rated_payload_kg, "load_kg": round(self.load_kg)})

    def _leak(self) -> None:
        """weighbridge_mismatch: a good part of a load leaves the truck on the way (leakage, dumping); a small load
        instead gains waste no lifter weighed (loaded by hand off the books) — either way the ticket's net then
        differs from the pickups by well over the tolerance (10 % and 200 kg)."""
        mismatch = self.shift_faults.get("weighbridge_mismatch")
        if self.load_kg >= 4 * MISMATCH_KG:
            change = -self.load_kg * self.rng.uniform(0.35, 0.5)
        else:
            change = self.rng.uniform(2.0, 4.5) * MISMATCH_KG
        self.load_kg += change
        if mismatch is not None:
            mismatch.details["mechanism"] = "leak" if change < 0 else "unweighed_load"

    def _over_payload(self) -> bool:
        """The load against the rated payload as truck_overweight judges it: above the threshold, and until at or
        below the clear level once above it (hysteresis)."""
        threshold, clear = OVERWEIGHT.limits()
        pct = 100.0 * self.load_kg / self.rated_payload_kg
        return OVERWEIGHT.breaches(pct, threshold if self.overweight is None or clear is None else clear)

    def _unloaded(self, t: float) -> None:
        self.load_kg = 0.0
        if self.overweight is not None:
            self._close(self.overweight, t)
            self.overweight = None

    def _dumped(self, t: float) -> None:
        """never_weighed: the load leaves the truck short of any weighbridge."""
        if self.picked_kg > 0 and self.unweighed is None:
            self.unweighed = self._record(self.first_pickup, "never_weighed", "load_not_weighed", {
                "picked_kg": round(self.picked_kg, 1), "last_pickup": rfc3339(self.last_pickup),
                "dumped_at": rfc3339(t), "limit_h": WEIGH_WITHIN_S / 3600.0})
        self._unloaded(t)

    def _ticket(self, t: float, out: list[Emission]) -> None:
        tare = self._bridge(self.tare_kg)
        gross = max(self.gross_kg, tare)
        net = gross - tare
        if self.weighbridge is not None:
            out.append(self.weighbridge.ticket(t, self.device_id, gross, tare))
        if self.mismatch is not None:  # the rule holds a mismatch until the truck's next ticket
            self._close(self.mismatch, t)
            self.mismatch = None
        if self.unweighed is not None:  # the unweighed load's condition lasts until a ticket
            self._close(self.unweighed, t)
            self.unweighed = None
        elif self.first_pickup < INF and t - self.first_pickup > WEIGH_WITHIN_S:
            self._record(self.first_pickup, "never_weighed", "load_not_weighed",
                         {"picked_kg": round(self.picked_kg, 1), "ticket_at": rfc3339(t)}, end=t)
        diff = abs(net - self.picked_kg)
        if diff > MISMATCH_SHARE * self.picked_kg and diff > MISMATCH_KG:
            self.mismatch = self._record(t, "weighbridge_mismatch", "weighbridge_mismatch", {
                "net_kg": net, "picked_kg": round(self.picked_kg, 1), "tolerance_share": MISMATCH_SHARE,
                "tolerance_kg": MISMATCH_KG, "site_id": self.route.tip_site_id})
        self.picked_kg, self.first_pickup, self.last_pickup = 0.0, INF, INF

    def _bridge(self, kg: float) -> float:
        return self.weighbridge.weigh(kg) if self.weighbridge is not None else round(kg, -1)

    def _onboard(self) -> float:
        return r1(max(0.0, self.load_kg * (1.0 + self.scale_bias)))

    def _event(self, t: float, out: list[Emission], body: dict[str, Any]) -> None:
        lat, lon = self.route.district.to_latlon(self.x, self.y)
        self._send(out, Emission(self.event_topic, self.device_id, KIND, EVENT, t,
                                 {"ts": t, "seq": self.seq(), **body, "lat": r6(lat), "lon": r6(lon)}))

    def _send(self, out: list[Emission], emission: Emission) -> None:
        """A message of the truck's terminal goes out, unless a telematics outage swallows it (its sequence number
        is spent all the same: the receiver sees the gap)."""
        if self.outage is not None and self.outage.swallows(self.device_id, emission.t):
            return
        out.append(emission)
        self._touch(emission.t)

    def _haul_begins(self, t: float) -> None:
        """truck_telematics_outage: an outage due by now starts a little into this haul to the tip."""
        fault = self._take(TELEMATICS_OUTAGE, t)
        if fault is None:
            return
        start = t + OUTAGE_INTO_HAUL_S
        duration = float(fault.details.get("duration_s", OUTAGE_S))
        timeout = float(fault.details["timeout_s"])
        details = {**fault.details, "duration_s": duration, "route_id": self.route.route_id, "shift_state": TO_TIP}
        self.outage = TelematicsOutage(start, start + duration, timeout, t, details, self.incidents)

    # --- clearance deadlines -------------------------------------------------------------------

    def _day(self, t: float) -> int:
        """The local day holding ``t``, as a number (its local midnight in days since the epoch)."""
        return round((t - self.local.seconds_of_day(t)) / 86_400.0)

    def _deadline_after(self, t: float) -> float:
        if not self.route.clearance or not self.route.stops:
            return INF
        return min(self.local.next_time_of_day(t, by) for by in self.route.clearance.values())

    def _picked(self, point: str, category: str, t: float) -> None:
        self.picked[(point, category)] = t
        record = self.clearance_open.pop((point, category), None)
        if record is not None:
            record.details["verdict"] = "late"
            record.details["picked_up_at"] = rfc3339(t)
            self._close(record, t)

    def _deadline(self, t: float) -> None:
        """A deadline passes: every point of the route with a category due now and no pickup of it today opens a
        record (closed by a late pickup, or as missed when the local day ends)."""
        due_at = self.next_deadline
        day_start = due_at - self.local.seconds_of_day(due_at)
        for category, by in sorted(self.route.clearance.items()):
            if abs(self.local.next_time_of_day(day_start, by) - due_at) > 1.0:
                continue
            for stop in self.route.stops:
                if category not in {c for c, _ in stop.bins}:
                    continue
                if self.picked.get((stop.point_id, category), -INF) >= day_start:
                    continue
                causes = self.fault_days.get(self._day(due_at), {})
                cause = causes.get("missed_pickup") if stop.point_id in self.skipped else None
                cause = cause or causes.get("late_round")
                self.clearance_open[(stop.point_id, category)] = self._record(
                    due_at, "point_not_cleared", "point_not_cleared",
                    {"point_id": stop.point_id, "category": category, "deadline": hhmm(by),
                     "route_id": self.route.route_id, "verdict": "missed",
                     "day_ends": rfc3339(day_start + 86_400.0)}, fault=cause)
                self.clearance_day_end = min(self.clearance_day_end, day_start + 86_400.0)
        self.next_deadline = self._deadline_after(due_at + 1.0)

    def _day_ends(self) -> None:
        for record in self.clearance_open.values():  # missed: no pickup that day
            self._close(record, self.clearance_day_end)
        self.clearance_open = {}
        self.clearance_day_end = INF

    # --- ground truth ----------------------------------------------------------------------------

    def _record(self, t: float, fault_kind: str, alert: str, details: dict[str, Any], *, end: float = INF,
                fault: ShiftFault | None = None) -> TruthRecord:
        """A record of what the truck did: ``injected`` (named after the fault) when a fault of this shift caused
        it, ``model`` (named after what happened) otherwise."""
        cause = fault if fault is not None else self.shift_faults.get(fault_kind)
        if fault_kind == "point_not_cleared" and fault is None:
            cause = None
        name = cause.kind if cause is not None else {"never_weighed": "load_not_weighed"}.get(fault_kind, fault_kind)
        record = self.incidents(TruthRecord(
            self.device_id, KIND, name, t, end, {"alert": alert}, source="injected" if cause else "model",
            details={**(cause.details if cause else {}), **details}))
        self.open_records.append(record)
        return record

    @staticmethod
    def _close(record: TruthRecord, t: float) -> None:
        record.end = max(record.start, t)

    def _touch(self, t: float) -> None:
        """A message went out at ``t``: it counts into the records open then."""
        keep = []
        for record in self.open_records:
            if record.start <= t <= record.end:
                record.messages += 1
            if t <= record.end:
                keep.append(record)
        self.open_records = keep

    # --- physics and the reading -------------------------------------------------------------

    def _mode(self) -> str:
        kind = self.action.kind if self.action is not None else "park"
        return "drive" if kind == "drive" else "lift" if kind == "lift" else "idle"

    def _energy(self, t: float) -> None:
        dt = max(t - self.t, 0.0)
        if dt == 0.0 or self.powertrain not in WITH_PACK:
            return
        mode = self._mode()
        charging = self.action is not None and self.action.kind == "park" and self.soc < 99.5
        if charging:  # the depot charger: constant current to 80 %, slower above
            self.soc = min(100.0, self.soc + (25.0 if self.soc < 80.0 else 8.0) * dt / 3600.0)
        else:
            self.soc = clamp(self.soc - DRAIN_PCT_H[mode] * dt / 3600.0, 0.0, 100.0)
        current = -60.0 if charging else CURRENT_A[mode]
        air = ambient_at(self.local.seconds_of_day(t))
        self.battery_temp += (air + 0.08 * abs(current) - self.battery_temp) * (1.0 - math.exp(-dt / 2400.0))

    def _position(self, t: float) -> None:
        action = self.action
        if action is None or action.kind != "drive" or action.to is None or action.end <= action.start:
            self.speed_kmh = 0.0
            return
        f = clamp((t - action.start) / (action.end - action.start), 0.0, 1.0)
        (x0, y0), (x1, y1) = action.origin, action.to
        self.x, self.y = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        self.speed_kmh = action.distance_m / 1000.0 / ((action.end - action.start) / 3600.0)

    def _states(self) -> tuple[str, str, str]:
        """(shift state, lifter, compactor) now."""
        action = self.action
        if action is None:
            return OFF_SHIFT, "stowed", "idle"
        lifting = action.kind == "lift"
        return action.state, "lifting" if lifting else "stowed", "compacting" if lifting else "idle"

    def _reading(self, t: float) -> dict[str, Any]:
        rand = self.rng.random
        lat, lon = self.route.district.to_latlon(self.x + 4.0 * rand() - 2.0, self.y + 4.0 * rand() - 2.0)
        shift_state, lifter, compactor = self._states()
        driven = 0.0
        action = self.action
        if action is not None and action.kind == "drive" and action.end > action.start:
            driven = action.distance_m / 1000.0 * clamp((t - action.start) / (action.end - action.start), 0.0, 1.0)
        body: dict[str, Any] = {
            "ts": t, "seq": self.seq(), "lat": r6(lat), "lon": r6(lon), "speed_kmh": r1(self.speed_kmh),
            "heading_deg": r1(self.heading), "odometer_km": r2(self.odometer + driven), "powertrain": self.powertrain,
            "load_kg": self._onboard(), "rated_payload_kg": self.rated_payload_kg, "compactor_state": compactor,
            "lifter_state": lifter, "route_id": self.route.route_id, "shift_state": shift_state,
        }
        if self.powertrain in WITH_PACK:
            current = -60.0 if shift_state == OFF_SHIFT and self.soc < 99.5 else CURRENT_A[self._mode()]
            cell_v = 3.0 + 0.004 * self.soc - 0.0005 * current
            body.update({
                "soc_pct": r1(self.soc), "pack_voltage_v": r1(CELLS * cell_v),
                "pack_current_a": r1(current + 4.0 * rand() - 2.0),
                "cell_voltage_max_v": r3(cell_v + 0.005 + 0.015 * rand()),
                "cell_voltage_min_v": r3(cell_v - 0.005 - 0.015 * rand()),
                "battery_temp_max_c": r1(self.battery_temp + 0.8 + 1.2 * rand()),
                "battery_temp_min_c": r1(self.battery_temp - 0.8 - 1.2 * rand()),
                "insulation_kohm": float(int(self.insulation_kohm + 300.0 * rand())),
                "alarm_level": 0, "alarm_flags": 0})
        return body
