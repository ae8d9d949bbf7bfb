"""Garbage transfer station: weighbridge, hopper and compactor, boundary odour and noise, leachate.

Collection trucks arrive mostly in the morning and the evening (after the residential sorting
slots), are weighed in full and out empty; what they tip raises the hopper level and, slowly, the
leachate tank. When the hopper passes about two thirds the compactor runs a cycle of a few minutes:
pressure builds, the hopper level drops, and the cycle releases H2S and NH3 and raises boundary noise;
the gases then decay back to background. Compaction only runs in the daytime (06:00-22:00, when the
GB 12348 day limits apply). The leachate tank is pumped out when nearly full.

Background values keep below GB 14554-93 grade 2 and GB 12348 class 2 limits, so a normal day raises
no odour or noise alert; exceedances come from injected faults. Whether H2S or NH3 exceeded is decided the
alert rules' way (``station_h2s_exceeded`` / ``station_nh3_exceeded`` in ``sanitel/signal_conditions.yaml``, at the
station's GB 14554 grade) on the values the station sent, spikes and stuck sensors included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from sanitel.schemas.readings import StationTelemetry, WeighbridgeTicket
from sanitel.schemas.topics import device_topic
from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import (
    INF,
    DeviceInfo,
    DeviceModel,
    Emission,
    IncidentSink,
    SeqCounter,
    clamp,
    device_rng,
    hourly_profile,
    next_arrival,
)
from sanitel.simulators.truth import SignalWatch, signal_judge

# Trucks come after the sorting slots and on the morning round; almost none at night.
TRUCK_WEIGHTS: tuple[float, ...] = (
    0.05, 0.05, 0.05, 0.05, 0.1, 1.0, 3.0, 4.0, 5.0, 6.0, 5.0, 3.0,
    1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 2.0, 2.0, 3.0, 4.0, 3.0, 1.0,
)
DAY_START_S, NIGHT_START_S = 6 * 3600.0, 22 * 3600.0
HOPPER_PCT_PER_T = 5.0
LEACHATE_PCT_PER_T = 0.25
H2S_CAP, NH3_CAP = 0.05, 1.35  # peaks stay under grade 2 (0.06 / 1.5 mg/m³)
# The sites' parameters the odour conditions read (the rules read them from sites.params): grade 2 unless told.
DEFAULT_SITE_PARAMS: Mapping[str, Any] = {"odour_grade": "2"}
# condition (sanitel/signal_conditions.yaml) → the alert rule that judges it (alerts/rules/transfer_station.yaml)
ODOUR_CONDITIONS = (("station_h2s_exceeded", "station_h2s"), ("station_nh3_exceeded", "station_nh3"))


class TransferStation(DeviceModel):
    kind: ClassVar[str] = StationTelemetry.kind

    def __init__(
        self,
        device_id: str,
        *,
        seed: int,
        city: str,
        start: float,
        local: LocalTime,
        interval_s: float,
        trucks_per_day: float,
        site_id: str | None = None,
        incidents: IncidentSink | None = None,
        site_params: Mapping[str, Any] | None = None,
    ) -> None:
        """``incidents``: where the odour exceedances go as ground truth (none recorded without it);
        ``site_params``: the station site's parameters (``odour_grade``), as the rules read them."""
        self.device_id = device_id
        self.site_id = site_id or device_id
        self.rng = rng = device_rng(seed, device_id)
        self.topic = device_topic(city, self.kind, device_id, StationTelemetry.stream)
        self.local = local
        self.interval_s = interval_s
        self.seq = SeqCounter(rng)
        self.truck_rates = hourly_profile(TRUCK_WEIGHTS, trucks_per_day * rng.uniform(0.8, 1.2))
        self.truck_pool = [f"SZ-B{rng.randrange(10_000, 99_999)}" for _ in range(rng.randint(8, 25))]
        self.h2s_background = rng.uniform(0.005, 0.012)
        self.nh3_background = rng.uniform(0.15, 0.35)

        self.t = start
        self.hopper = rng.uniform(5.0, 40.0)
        self.leachate = rng.uniform(10.0, 60.0)
        self.h2s, self.nh3 = self.h2s_background, self.nh3_background
        self.compactor_left = 0.0
        self.pressure = 0.0
        self.trucks_on_site: list[tuple[float, str, float, float]] = []  # (leaves at, id, gross, tare)
        self.next_report = start + rng.uniform(0.0, interval_s)
        self.next_truck = next_arrival(start, rng, self.truck_rates, local)
        params = dict(DEFAULT_SITE_PARAMS if site_params is None else site_params)
        self.signals: tuple[SignalWatch, ...] = () if incidents is None else tuple(
            SignalWatch(signal_judge(name, alert, params=params), device_id, self.kind, incidents,
                        {"site_id": self.site_id}) for name, alert in ODOUR_CONDITIONS)

    # --- interface ---------------------------------------------------------------------------

    def first_due(self) -> float:
        return min(self.next_report, self.next_truck)

    def max_interval(self) -> float:
        return self.interval_s

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo(self.device_id, self.kind, self.site_id, {"trucks": len(self.truck_pool)})]

    def signal_watches(self, device_id: str) -> list[SignalWatch]:
        return list(self.signals) if device_id == self.device_id else []

    def step(self, t: float, out: list[Emission]) -> float:
        self._advance(t, max(t - self.t, 0.0))
        self.t = t
        if t >= self.next_truck:
            self._truck_arrives(t, out)
        while self.trucks_on_site and self.trucks_on_site[0][0] <= t:
            self._truck_leaves(t, out)
        if t >= self.next_report:
            body = self._telemetry(t)
            out.append(self._emission(t, body))
            for watch in self.signals:
                if not watch.handed_over:  # a faulted station's readings are judged after its faults (faults.py)
                    watch.see(t, body)
            self.next_report = t + self.cadence(t, self.interval_s) + self.rng.uniform(-0.2, 0.2)
        leaves = self.trucks_on_site[0][0] if self.trucks_on_site else INF
        return min(self.next_report, self.next_truck, leaves)

    # --- behaviour ---------------------------------------------------------------------------

    def _daytime(self, t: float) -> bool:
        return DAY_START_S <= self.local.seconds_of_day(t) < NIGHT_START_S

    def _advance(self, t: float, dt: float) -> None:
        decay = math.exp(-dt / 900.0)  # odour disperses over ~15 minutes
        self.h2s = self.h2s_background + (self.h2s - self.h2s_background) * decay
        self.nh3 = self.nh3_background + (self.nh3 - self.nh3_background) * decay
        if self.compactor_left > 0:
            run = min(dt, self.compactor_left)
            self.compactor_left -= run
            self.hopper = max(3.0, self.hopper - 9.0 * run / 60.0)
            self.pressure = self.rng.uniform(17.0, 24.0) if self.compactor_left > 0 else 0.0
        elif self.hopper >= 65.0 and self._daytime(t):
            self._start_compaction()
        if self.leachate >= 85.0:  # the tanker pumps the tank out
            self.leachate = self.rng.uniform(10.0, 20.0)

    def _start_compaction(self) -> None:
        rng = self.rng
        self.compactor_left = rng.uniform(240.0, 360.0)
        self.pressure = rng.uniform(8.0, 12.0)
        self.h2s = min(H2S_CAP, self.h2s + rng.uniform(0.018, 0.03))
        self.nh3 = min(NH3_CAP, self.nh3 + rng.uniform(0.55, 0.85))

    def _truck_arrives(self, t: float, out: list[Emission]) -> None:
        rng = self.rng
        truck = rng.choice(self.truck_pool)
        tare = round(rng.uniform(7.0, 10.0), 2)
        gross = round(tare + rng.uniform(2.0, 9.0), 2)
        self.trucks_on_site.append((t + rng.uniform(420.0, 900.0), truck, gross, tare))
        self.trucks_on_site.sort()
        out.append(self._emission(t, {"ts": t, "seq": self.seq(), "truck_id": truck, "weighbridge_in_t": gross}))
        self.next_truck = next_arrival(t, rng, self.truck_rates, self.local)

    def _truck_leaves(self, t: float, out: list[Emission]) -> None:
        _, truck, gross, tare = self.trucks_on_site.pop(0)
        net = gross - tare
        self.hopper = clamp(self.hopper + net * HOPPER_PCT_PER_T, 0.0, 100.0)
        self.leachate = clamp(self.leachate + net * LEACHATE_PCT_PER_T, 0.0, 100.0)
        out.append(self._emission(t, {"ts": t, "seq": self.seq(), "truck_id": truck, "weighbridge_out_t": tare}))

    def _emission(self, t: float, body: dict[str, Any]) -> Emission:
        return Emission(self.topic, self.device_id, self.kind, "telemetry", t, body)

    def _telemetry(self, t: float) -> dict[str, Any]:
        rng = self.rng
        running = self.compactor_left > 0
        daytime = self._daytime(t)
        noise = (48.0 if daytime else 42.0) + rng.gauss(0.0, 1.2)
        noise += 3.0 * bool(self.trucks_on_site) + 6.0 * running
        h2s = max(0.0, self.h2s * rng.uniform(0.9, 1.1))
        nh3 = max(0.0, self.nh3 * rng.uniform(0.9, 1.1))
        sod = self.local.seconds_of_day(t)
        return {
            "ts": t,
            "seq": self.seq(),
            "compactor_running": running,
            "compactor_pressure_mpa": round(self.pressure, 1),
            "hopper_level_pct": round(self.hopper, 1),
            "h2s_mg_m3": round(h2s, 4),
            "nh3_mg_m3": round(nh3, 3),
            "odour_concentration": round(3.0 + 150.0 * h2s + 5.0 * nh3, 1),
            "noise_dba": round(noise, 1),
            "leachate_level_pct": round(self.leachate, 1),
            "deodoriser_on": running or 5 * 3600.0 <= sod < 23 * 3600.0,
        }


# --- the weighbridge's tickets (issue 15) ----------------------------------------------------------------------------


class Weighbridge:
    """A station's weighbridge as a collection truck meets it: weighed in full, weighed out empty, one ticket per
    visit on the station's ``event`` stream (the truck contract's ``weighbridge_tickets``: ticket id, truck, gross,
    tare, net = gross − tare, ticket time). Its own random stream and sequence numbers: a station's telemetry is
    the same with or without trucks tipping there.

    A weighbridge reads in whole divisions: ``DIVISION_KG`` = 10 kg, a typical division for a 30-60 t road
    weighbridge (OIML R 76 class III; the figure is typical, not verified against a Shenzhen station)."""

    DIVISION_KG = 10.0

    def __init__(self, device_id: str, *, seed: int, city: str, site_id: str | None = None) -> None:
        self.device_id = device_id
        self.site_id = site_id or device_id
        rng = device_rng(seed, device_id, "weighbridge")
        self.seq = SeqCounter(rng)
        self.next_ticket = rng.randrange(1, 900_000)
        self.topic = device_topic(city, WeighbridgeTicket.kind, device_id, WeighbridgeTicket.stream)

    def weigh(self, kg: float) -> float:
        """A mass as the bridge shows it: rounded to its division."""
        return round(kg / self.DIVISION_KG) * self.DIVISION_KG

    def ticket(self, t: float, truck_id: str, gross_kg: float, tare_kg: float,
               category: str | None = None) -> Emission:
        """The ticket of a truck weighed in at ``gross_kg`` and out at ``tare_kg`` (both as shown), issued at ``t``."""
        number = self.next_ticket
        self.next_ticket += 1
        body: dict[str, Any] = {"ts": t, "seq": self.seq(), "ticket_id": f"{self.device_id}-{number:06d}",
                                "truck_id": truck_id, "gross_kg": gross_kg, "tare_kg": tare_kg,
                                "net_kg": gross_kg - tare_kg, "direction": "in"}
        if category is not None:
            body["category"] = category
        return Emission(self.topic, self.device_id, WeighbridgeTicket.kind, WeighbridgeTicket.stream, t, body)
