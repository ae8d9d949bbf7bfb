"""Residential sorting point: RFID bins with smart scales (one per GB/T 19095-2019 category) and its
AI cameras.

Households swipe their card and drop a bag: a deposit event with the household id, category and net
weight, mostly in the sorting time slots (07:00-09:00, 19:00-21:00). Each deposit raises the bin's
fill level; the collection round empties the bins after each slot. Bins report status on a fixed
cadence: an ultrasonic fill level (noisy, now and then a wild echo), lid, temperature and battery.
When is a bin "full"? The rules' definition (``bin_full`` in ``sanitel/signal_conditions.yaml``), judged on the
fill levels each bin sent: its ground truth is what the ``bin_overflow`` rule should see, not the true fill.
Rarely a bin catches fire: its temperature climbs, the fire alarm trips, the bin reports faster and
the point's camera sees smoke.

With ``gateway_interval_s`` set, the point's gateway batches its bins' readings into one message per
interval (``sanitation/{city}/gateway/{gateway_id}/batch``), as real sorting-point gateways do;
cameras always publish on their own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from sanitel.schemas.readings import BinDeposit, BinStatus
from sanitel.schemas.topics import device_topic, gateway_topic
from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import (
    INF,
    SORTING_SLOT_WEIGHTS,
    DeviceInfo,
    DeviceModel,
    Emission,
    IncidentSink,
    SeqCounter,
    ambient_temp_c,
    device_rng,
    hourly_profile,
    next_arrival,
    pick_weighted,
    r1,
    r3,
)
from sanitel.simulators.models.camera import Camera
from sanitel.simulators.truth import SignalJudge, SignalWatch, Source, TruthRecord, signal_judge

CATEGORY_CODE = {"kitchen": "k", "recyclable": "r", "hazardous": "h", "other": "o"}
CATEGORY_SHARE = {"kitchen": 0.45, "other": 0.35, "recyclable": 0.17, "hazardous": 0.03}
# log-normal (mu, sigma) of a bag's net weight in kg
BAG_WEIGHT = {"kitchen": (math.log(0.8), 0.5), "other": (math.log(0.9), 0.55),
              "recyclable": (math.log(0.6), 0.7), "hazardous": (math.log(0.12), 0.6)}
FULL_CONDITION, FULL_ALERT = "bin_full", "bin_overflow"  # sanitel/signal_conditions.yaml, alerts/rules
# An ultrasonic sensor reads a bag, a lid, condensation: ±3 % around the true level (triangular), so a bin sitting
# near the threshold hovers around it for as long as nobody adds a bag (the issue-18 case the smoothing is for).
FILL_NOISE_PCT = 3.0
# Storage clamps the fill level (processors/derive.py); the truth judges it as stored, as the rule does.
STORED_FILL = (0.0, 100.0)
FIRE_ALARM_C = 60.0
FIRE_STATUS_INTERVAL_S = 30.0


def point_id(point_no: int) -> str:
    return f"sp-{point_no:05d}"


def bin_id(point_no: int, category: str) -> str:
    return f"bin-{point_no:05d}-{CATEGORY_CODE[category]}"


def camera_id(point_no: int, index: int) -> str:
    return f"cam-{point_no:05d}" if index == 0 else f"cam-{point_no:05d}-{index + 1}"


def gateway_id(point_no: int) -> str:
    return f"gw-{point_no:05d}"


class Bin:
    """One RFID bin with its scale: true fill in %, temperature state, sequence numbers."""

    __slots__ = ("battery", "category", "deposit_topic", "device_id", "fill", "fire", "fire_record", "full",
                 "pct_per_kg", "seq", "status_topic", "warmth_c")

    def __init__(self, device_id: str, category: str, city: str, rng: random.Random, capacity_kg: float,
                 full: SignalJudge, incidents: IncidentSink, where: dict[str, Any]) -> None:
        self.device_id = device_id
        self.category = category
        self.seq = SeqCounter(rng)
        self.fill = rng.uniform(0.0, 30.0)
        self.pct_per_kg = 100.0 / max(capacity_kg, 1.0)
        self.battery = rng.uniform(35.0, 100.0)
        self.warmth_c = 3.0 if category == "kitchen" else 1.0  # food waste ferments
        self.fire: tuple[float, float, float] | None = None   # (start, extinguished, peak °C)
        self.fire_record: TruthRecord | None = None
        self.full = SignalWatch(full, device_id, "bin", incidents, where)  # "full" as bin_overflow sees it
        self.status_topic = device_topic(city, "bin", device_id, BinStatus.stream)
        self.deposit_topic = device_topic(city, "bin", device_id, BinDeposit.stream)

    def temperature(self, air: float, t: float) -> float:
        base = air + self.warmth_c
        if self.fire is None or t < self.fire[0]:
            return base
        start, end, peak = self.fire
        if t < end:
            return base + (peak - base) * (1.0 - math.exp(-(t - start) / 240.0))
        at_end = base + (peak - base) * (1.0 - math.exp(-(end - start) / 240.0))
        return base + (at_end - base) * math.exp(-(t - end) / 600.0)


class SortingPoint(DeviceModel):
    kind: ClassVar[str] = "bin"

    def __init__(
        self,
        point_no: int,
        *,
        seed: int,
        city: str,
        start: float,
        local: LocalTime,
        households: int,
        categories: Sequence[str],
        cameras: int,
        camera_detections_per_day: float,
        status_interval_s: float,
        collection_times_s: Sequence[float],
        deposits_per_household_day: float,
        fire_rate_per_day: float,
        fill_outlier_prob: float,
        gateway_interval_s: float | None,
        incidents: IncidentSink,
        site_id: str | None = None,
    ) -> None:
        self.point_no = point_no
        self.point_id = point_id(point_no)
        self.site_id = site_id or self.point_id
        self.rng = rng = device_rng(seed, self.point_id)
        self.local = local
        self.households = households
        self.incidents = incidents
        self.status_interval_s = status_interval_s
        self.fill_outlier_prob = fill_outlier_prob
        shares = {c: CATEGORY_SHARE[c] for c in categories}
        self.category_weights = tuple((c, s / sum(shares.values())) for c, s in shares.items())
        per_day = households * deposits_per_household_day * sum(shares.values())
        self.deposit_rates = hourly_profile(SORTING_SLOT_WEIGHTS, per_day)
        # "full" as the rules define it (looked up per point: a changed definition changes the truth with it)
        full, where = signal_judge(FULL_CONDITION, FULL_ALERT, bounds=STORED_FILL), {"point_id": self.point_id}
        self.bins = {c: Bin(bin_id(point_no, c), c, city, rng,
                            self._capacity_kg(rng, c, households, deposits_per_household_day), full, incidents, where)
                     for c in categories}
        self.cameras = [Camera(camera_id(point_no, i), self.point_id, seed=seed, city=city, start=start, local=local,
                               detections_per_day=camera_detections_per_day) for i in range(cameras)]
        # the collection round reaches each point at its own time, give or take 20 minutes
        self.collection_times_s = tuple((s + rng.uniform(-1200.0, 1200.0)) % 86_400.0 for s in collection_times_s)
        self.gateway_id = gateway_id(point_no) if gateway_interval_s else None
        self.gateway_topic = gateway_topic(city, self.gateway_id) if self.gateway_id else ""
        self.gateway_interval_s = gateway_interval_s or 0.0
        self.pending: list[dict[str, Any]] = []

        self.t = start
        self.next_deposit = next_arrival(start, rng, self.deposit_rates, local)
        self.next_status = start + rng.uniform(0.0, status_interval_s)
        self.next_collection = self._next_collection(start)
        # the gateway wakes on its own cadence and sends only when it holds something
        self.flush_phase = start + rng.uniform(0.0, self.gateway_interval_s) if self.gateway_id else 0.0
        self.next_flush = INF
        self.fires: list[tuple[float, float, Source]] = []  # (start, duration, source) scheduled
        if fire_rate_per_day > 0:
            natural = start + rng.expovariate(fire_rate_per_day / 86_400.0)
            self.fires.append((natural, rng.uniform(1200.0, 2400.0), "model"))
        self.next_fire = min((f[0] for f in self.fires), default=INF)
        self.overflow_seen = False

    @staticmethod
    def _capacity_kg(rng: random.Random, category: str, households: int, per_household_day: float) -> float:
        """Bins are sized so a half-day's deposits fill them to one half to four fifths."""
        mu, sigma = BAG_WEIGHT[category]
        daily_kg = households * per_household_day * CATEGORY_SHARE[category] * math.exp(mu + sigma * sigma / 2)
        return daily_kg * rng.uniform(0.6, 1.0)

    # --- interface ---------------------------------------------------------------------------

    def first_due(self) -> float:
        return self._next_due()

    def max_interval(self) -> float:
        return max(self.status_interval_s, self.gateway_interval_s)

    def devices(self) -> list[DeviceInfo]:
        meta: dict[str, Any] = {"point_id": self.point_id, "households": self.households}
        if self.gateway_id:
            meta["gateway_id"] = self.gateway_id
        bins = [DeviceInfo(b.device_id, "bin", self.site_id, {**meta, "category": b.category}) for b in self.bins.values()]
        return bins + [DeviceInfo(c.device_id, "camera", self.site_id, {"point_id": self.point_id}) for c in self.cameras]

    def signal_watches(self, device_id: str) -> list[SignalWatch]:
        return [b.full for b in self.bins.values() if b.device_id == device_id]

    def gateway_devices(self) -> set[str]:
        """Devices whose readings travel inside gateway batches."""
        return {b.device_id for b in self.bins.values()} if self.gateway_id else set()

    def add_fire(self, start: float, duration_s: float) -> None:
        """Fault hook: a fire starts in one of the bins at ``start``."""
        self.fires.append((start, duration_s, "injected"))
        self.next_fire = min(self.next_fire, start)

    def step(self, t: float, out: list[Emission]) -> float:
        if t >= self.next_collection:
            self._collect(t)
        if t >= self.next_fire:
            self._ignite(t, out)
        if t >= self.next_deposit:
            self._deposit(t, out)
        for camera in self.cameras:
            if t >= camera.next_due:
                camera.step(t, out)
        if t >= self.next_status:
            self._report_status(t, out)
        if t >= self.next_flush:
            self._flush(t, out)
        return self._next_due()

    def _next_due(self) -> float:
        due = self.next_deposit
        for other in (self.next_status, self.next_collection, self.next_flush, self.next_fire):
            if other < due:
                due = other
        for camera in self.cameras:
            if camera.next_due < due:
                due = camera.next_due
        return due

    # --- behaviour ---------------------------------------------------------------------------

    def _next_collection(self, t: float) -> float:
        if not self.collection_times_s:
            return INF
        return min(self.local.next_time_of_day(t + 1.0, s) for s in self.collection_times_s)

    def _collect(self, t: float) -> None:
        for b in self.bins.values():
            b.fill = self.rng.uniform(0.0, 3.0)  # the full episode ends when the readings say so (hysteresis)
        self.overflow_seen = False
        self.next_collection = self._next_collection(t)

    def _deposit(self, t: float, out: list[Emission]) -> None:
        rng = self.rng
        category = pick_weighted(rng, self.category_weights)
        b = self.bins[category]
        mu, sigma = BAG_WEIGHT[category]
        weight = min(30.0, max(0.02, rng.lognormvariate(mu, sigma)))
        b.fill += weight * b.pct_per_kg
        household = f"hh-{self.point_no:05d}-{rng.randrange(self.households):04d}"
        body = {"ts": t, "seq": b.seq(), "household_id": household, "category": category,
                "weight_kg": r3(weight), "point_id": self.point_id}
        self._send(out, b, BinDeposit.stream, t, body)
        self.next_deposit = next_arrival(t, rng, self.deposit_rates, self.local)

    def _report_status(self, t: float, out: list[Emission]) -> None:
        rng = self.rng
        rand = rng.random
        air = ambient_temp_c(self.local, t)
        drain = 0.01 * max(t - self.t, 0.0) / 3600.0  # the bins' batteries: 0.01 %/h
        self.t = t
        burning = False
        for b in self.bins.values():
            b.battery = max(0.0, b.battery - drain)
            temperature = b.temperature(air, t) + 0.8 * (rand() - 0.5)
            burning |= b.fire is not None and b.fire[0] <= t < b.fire[1] + 1800.0
            # bags piled above the rim come no closer to the sensor than its blind zone (~120 %)
            fill = min(b.fill, 120.0) + FILL_NOISE_PCT * (rand() + rand() - 1.0)
            if rand() < self.fill_outlier_prob:  # an echo off a bag edge: one wild reading
                fill = rng.uniform(-20.0, 150.0)
            body = {"ts": t, "seq": b.seq(), "point_id": self.point_id, "fill_level_pct": r1(fill),
                    "lid_open": rand() < 0.03, "temperature_c": r1(temperature),
                    "fire_alarm": temperature >= FIRE_ALARM_C, "battery_pct": r1(b.battery)}
            self._send(out, b, BinStatus.stream, t, body)
            if not b.full.handed_over:  # a faulted bin's readings are judged after its faults (faults.py)
                b.full.see(t, body)
            if b.fire_record is not None and t <= b.fire_record.end:
                b.fire_record.messages += 1
        self._watch_overflow(t, out)
        self.next_status = t + (FIRE_STATUS_INTERVAL_S if burning else self.status_interval_s)

    def _watch_overflow(self, t: float, out: list[Emission]) -> None:
        if not self.overflow_seen and any(b.fill >= 100.0 for b in self.bins.values()):
            self.overflow_seen = True
            for camera in self.cameras:
                camera.observe(t, "overflow", out)

    def _ignite(self, t: float, out: list[Emission]) -> None:
        due = [f for f in self.fires if f[0] <= t]
        self.fires = [f for f in self.fires if f[0] > t]
        self.next_fire = min((f[0] for f in self.fires), default=INF)
        for _, duration, source in due:
            b = self.rng.choice([b for c, b in self.bins.items() if c != "hazardous"] or list(self.bins.values()))
            peak = self.rng.uniform(90.0, 160.0)
            b.fire = (t, t + duration, peak)
            b.fire_record = self.incidents(TruthRecord(
                b.device_id, "bin", "bin_fire", t, t + duration, {"alert": "bin_fire"},
                source=source,
                details={"point_id": self.point_id, "peak_c": round(peak, 1)}))
            for camera in self.cameras:
                camera.observe(t, "smoke_fire", out)
            self.next_status = min(self.next_status, t + FIRE_STATUS_INTERVAL_S)

    # --- sending ---------------------------------------------------------------------------

    def _send(self, out: list[Emission], b: Bin, stream: str, t: float, body: dict[str, Any]) -> None:
        if self.gateway_id:
            if not self.pending:  # wake the gateway at its next slot
                slots = max(math.ceil((t - self.flush_phase) / self.gateway_interval_s), 0)
                self.next_flush = max(t, self.flush_phase + slots * self.gateway_interval_s)
            self.pending.append({"kind": "bin", "device_id": b.device_id, "stream": stream, **body})
            return
        topic = b.status_topic if stream == BinStatus.stream else b.deposit_topic
        out.append(Emission(topic, b.device_id, "bin", stream, t, body))

    def _flush(self, t: float, out: list[Emission]) -> None:
        body = {"gateway_id": self.gateway_id, "readings": self.pending}
        out.append(Emission(self.gateway_topic, self.gateway_id or "", "gateway", "batch", t, body, "batch"))
        self.pending = []
        self.next_flush = INF

