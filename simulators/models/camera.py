"""AI camera at a sorting point: detections with a confidence and an image reference.

Most detections are people's behaviour — mis-sorted waste, bags left outside the bin, scattered
waste, littering — so they follow the sorting time slots like the deposits. Overflow and smoke/fire
are not random: the sorting point tells its cameras when a bin overflows or burns
(:meth:`Camera.observe`), so detections agree with the bins' own readings.
"""

from __future__ import annotations

import time
from typing import Any

from sanitel.schemas.readings import CameraDetection
from sanitel.schemas.topics import device_topic
from sanitel.simulators.clock import LocalTime
from sanitel.simulators.models.base import (
    SORTING_SLOT_WEIGHTS,
    DeviceInfo,
    Emission,
    SeqCounter,
    device_rng,
    hourly_profile,
    next_arrival,
    pick_weighted,
)

BEHAVIOUR_DETECTIONS: tuple[tuple[str, float], ...] = (
    ("mis_sorted", 0.55), ("bag_outside", 0.2), ("scattered_waste", 0.12), ("littering", 0.13),
)


class Camera:
    """One camera; stepped by its sorting point (it shares the point's site and schedule)."""

    kind = CameraDetection.kind

    def __init__(self, device_id: str, point_id: str, *, seed: int, city: str, start: float,
                 local: LocalTime, detections_per_day: float) -> None:
        self.device_id = device_id
        self.point_id = point_id
        self.rng = rng = device_rng(seed, device_id)
        self.local = local
        self.topic = device_topic(city, self.kind, device_id, CameraDetection.stream)
        self.seq = SeqCounter(rng)
        self.rates = hourly_profile(SORTING_SLOT_WEIGHTS, detections_per_day * rng.uniform(0.6, 1.4))
        self.next_due = next_arrival(start, rng, self.rates, local)

    def info(self) -> DeviceInfo:
        return DeviceInfo(self.device_id, self.kind, self.point_id)

    def step(self, t: float, out: list[Emission]) -> None:
        """A behaviour detection is due at ``t``."""
        out.append(self._detection(t, pick_weighted(self.rng, BEHAVIOUR_DETECTIONS), self.rng.triangular(0.5, 0.99, 0.85)))
        self.next_due = next_arrival(t, self.rng, self.rates, self.local)

    def observe(self, t: float, detection: str, out: list[Emission]) -> None:
        """Something the point knows happened (overflow, smoke/fire): the camera sees it, confidently."""
        out.append(self._detection(t, detection, self.rng.uniform(0.8, 0.99)))

    def _detection(self, t: float, detection: str, confidence: float) -> Emission:
        rng = self.rng
        body: dict[str, Any] = {
            "ts": t,
            "seq": self.seq(),
            "detection": detection,
            "confidence": round(confidence, 3),
            "point_id": self.point_id,
            "object_count": 1 if rng.random() < 0.8 else rng.randint(2, 4),
            "image_ref": f"img/{self.device_id}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}Z.jpg",
        }
        return Emission(self.topic, self.device_id, self.kind, CameraDetection.stream, t, body)

