"""Where sweepers drive: districts, depots and sweeping routes, in metres around a district centre.

Positions are kept in a local flat frame (x east, y north, metres) and turned into WGS-84 only when a
reading is written; at district scale (a few km) the equirectangular approximation is far below GPS
error.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True, slots=True)
class District:
    district_id: str
    lat: float
    lon: float
    radius_m: float

    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        lat = self.lat + y / M_PER_DEG_LAT
        lon = self.lon + x / (M_PER_DEG_LAT * math.cos(math.radians(self.lat)))
        return lat, lon

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        """The inverse of :meth:`to_latlon`: a position in this district's flat frame (metres)."""
        return ((lon - self.lon) * M_PER_DEG_LAT * math.cos(math.radians(self.lat)),
                (lat - self.lat) * M_PER_DEG_LAT)

    def depot(self) -> tuple[float, float]:
        """The district's depot (charging, water, unloading): a fixed point off the centre."""
        return (0.3 * self.radius_m, -0.25 * self.radius_m)


def heading_deg(dx: float, dy: float) -> float:
    """Compass heading of a movement: 0 = north, 90 = east."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


class Route:
    """A closed sweeping loop: a lawn-mower pattern over a block of streets inside the district."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        if len(points) < 2:
            raise ValueError("a route needs at least two points")
        self.points = [*points, points[0]]
        self.cumulative = [0.0]
        for (x0, y0), (x1, y1) in zip(self.points, self.points[1:], strict=False):
            self.cumulative.append(self.cumulative[-1] + math.hypot(x1 - x0, y1 - y0))
        self.length = self.cumulative[-1]

    @classmethod
    def random_block(cls, district: District, rng: random.Random) -> Route:
        """Streets of a block of the district, swept street by street (about 3-6 km per loop)."""
        width = rng.uniform(500, 1000)
        street_gap = rng.choice((120.0, 150.0, 200.0))
        streets = rng.randint(3, 6)
        height = street_gap * (streets - 1)
        reach = max(district.radius_m - max(width, height), 0.0)
        angle = rng.uniform(0, 2 * math.pi)
        distance = rng.uniform(0, reach)
        x0 = distance * math.cos(angle) - width / 2
        y0 = distance * math.sin(angle) - height / 2
        points: list[tuple[float, float]] = []
        for i in range(streets):
            y = y0 + i * street_gap
            ends = (x0, x0 + width) if i % 2 == 0 else (x0 + width, x0)
            points += [(ends[0], y), (ends[1], y)]
        return cls(points)

    def start(self) -> tuple[float, float]:
        return self.points[0]

    def at(self, s: float) -> tuple[float, float, float]:
        """(x, y, heading) at distance ``s`` along the loop (wraps around)."""
        s %= self.length
        i = min(bisect.bisect_right(self.cumulative, s) - 1, len(self.points) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        seg = self.cumulative[i + 1] - self.cumulative[i]
        f = (s - self.cumulative[i]) / seg if seg > 0 else 0.0
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0), heading_deg(x1 - x0, y1 - y0)


def move_towards(x: float, y: float, tx: float, ty: float, step_m: float) -> tuple[float, float, float, bool]:
    """Move up to ``step_m`` in a straight line: (x, y, heading, arrived)."""
    dx, dy = tx - x, ty - y
    dist = math.hypot(dx, dy)
    if dist <= step_m or dist == 0:
        return tx, ty, heading_deg(dx, dy) if dist else 0.0, True
    f = step_m / dist
    return x + f * dx, y + f * dy, heading_deg(dx, dy), False


def distance_to_segment(x: float, y: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Shortest distance (m) from (x, y) to the segment a-b."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    f = 0.0 if length2 == 0 else max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / length2))
    return math.hypot(x - (ax + f * dx), y - (ay + f * dy))


def distance_to_path(x: float, y: float, path: list[tuple[float, float]]) -> float:
    """Shortest distance (m) from (x, y) to a polyline (a single point: the distance to it)."""
    if len(path) == 1:
        return math.hypot(x - path[0][0], y - path[0][1])
    return min(distance_to_segment(x, y, a, b) for a, b in itertools.pairwise(path))
