"""Scenarios are data: YAML files describing a fleet, its sites and its day, validated on load.

``load_scenario("demo")`` reads ``simulators/scenarios/demo.yaml``; any other argument naming a file
reads that file. Every validation error names the file, the key and the fix, e.g.::

    demo.yaml: sweepers.interval: '10 sec' is not a duration; use e.g. 30s, 15m, 2h or 1d
    demo.yaml: sweepers.cout: unknown key; did you mean 'count'?

See ``simulators/README.md`` for every key; the shipped scenarios show them in use.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from sanitel.errors import ConfigError
from sanitel.simulators.clock import Duration, Instant, PositiveDuration, TimeOfDay, TimeWindow, load_zone
from sanitel.simulators.faults import FaultSpec

SCENARIO_DIR = Path(__file__).parent / "scenarios"
Category = Literal["kitchen", "recyclable", "hazardous", "other"]
CATEGORIES: tuple[Category, ...] = ("kitchen", "recyclable", "hazardous", "other")
TsFormat = Literal["rfc3339", "epoch_ms"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistrictSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(3.0, gt=0, le=50)


class SweeperFleet(_Strict):
    count: int = Field(0, ge=0, le=100_000)
    interval: PositiveDuration = 10.0
    parked_interval: PositiveDuration = 60.0
    shifts: list[TimeWindow] = Field(default_factory=lambda: [(5 * 3600.0, 11 * 3600.0), (14 * 3600.0, 20 * 3600.0)])
    districts: list[str] | None = None
    ts_format: TsFormat = "rfc3339"


class StationFleet(_Strict):
    count: int = Field(0, ge=0, le=100_000)
    interval: PositiveDuration = 60.0
    trucks_per_day: float = Field(60.0, ge=0, le=2000)
    ts_format: TsFormat = "rfc3339"


class ClearanceSpec(_Strict):
    """When a category of every sorting point on a truck route must be picked up (the truck contract's site
    parameter ``clearance``): by a local time, every day."""

    by: TimeOfDay
    every: Literal["daily"] = "daily"


class SortingPointFleet(_Strict):
    count: int = Field(0, ge=0, le=1_000_000)
    households: tuple[int, int] = (200, 600)
    categories: list[Category] = Field(
        default_factory=lambda: list(CATEGORIES), min_length=1)
    deposits_per_household_day: float = Field(1.2, ge=0, le=20)
    status_interval: PositiveDuration = 300.0
    collection_times: list[TimeOfDay] = Field(default_factory=lambda: [10 * 3600.0, 22 * 3600.0])
    cameras: int = Field(1, ge=0, le=8)
    camera_detections_per_day: float = Field(12.0, ge=0, le=10_000)
    fire_rate_per_day: float = Field(0.0005, ge=0, le=10)
    fill_outlier_prob: float = Field(0.002, ge=0, le=1)
    gateway_interval: PositiveDuration | None = None
    clearance: dict[Category, ClearanceSpec] = Field(default_factory=dict)
    ts_format: TsFormat = "rfc3339"

    @model_validator(mode="after")
    def _clearance_has_bins(self) -> SortingPointFleet:
        absent = sorted(set(self.clearance) - set(self.categories))
        if absent:
            raise ValueError(f"clearance names {', '.join(absent)}, which the points have no bin for; add it to "
                             f"'categories' or remove it from 'clearance'")
        return self

    @field_validator("households")
    @classmethod
    def _households_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 100_000:
            raise ValueError(f"{list(v)} is not a range of households; use [min, max] with 1 <= min <= max")
        return v

    @field_validator("categories")
    @classmethod
    def _unique_categories(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a category is listed twice; list each bin category once")
        return v


Powertrain = Literal["electric", "diesel", "cng", "hybrid"]
# the fleet's mix when a scenario gives none (illustrative: Shenzhen electrified most of its sanitation fleet)
DEFAULT_POWERTRAINS: dict[Powertrain, float] = {"electric": 0.6, "diesel": 0.3, "hybrid": 0.05, "cng": 0.05}


class TruckFleet(_Strict):
    """Collection trucks: each drives one planned route of sorting points a day (simulators/models/truck.py)."""

    count: int = Field(0, ge=0, le=100_000)
    interval: PositiveDuration = 10.0
    parked_interval: PositiveDuration = 60.0
    shift: TimeWindow = (5 * 3600.0, 12 * 3600.0)
    points_per_route: int = Field(15, ge=1, le=200)
    rated_payload_kg: float = Field(8000.0, gt=0, le=60_000)
    idle_limit_min: int = Field(30, ge=1, le=1440)
    powertrains: dict[Powertrain, float] = Field(default_factory=lambda: dict(DEFAULT_POWERTRAINS))
    ts_format: TsFormat = "rfc3339"

    @field_validator("powertrains")
    @classmethod
    def _some_share(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(share < 0 for share in v.values()) or sum(v.values()) <= 0:
            raise ValueError("give each powertrain a share >= 0, at least one above 0, e.g. {electric: 0.6, diesel: 0.4}")
        return v


class Calibration(_Strict):
    at: TimeOfDay
    duration: PositiveDuration = 900.0


class LineEvent(_Strict):
    """A maintenance window or an outage of one line: ``after`` the run start or ``at`` a local time."""

    line: int = Field(ge=1)
    after: Duration | None = None
    at: TimeOfDay | None = None
    duration: PositiveDuration

    @model_validator(mode="after")
    def _one_start(self) -> LineEvent:
        if (self.after is None) == (self.at is None):
            raise ValueError("give exactly one of 'after' (e.g. 4h after the start) or 'at' (local time, e.g. 13:00)")
        return self


class PlantSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9]{1,16}$")
    name: str = ""
    lines: int = Field(1, ge=1, le=20)
    protocol: Literal["json", "hj212"] = "json"
    interval: PositiveDuration = 30.0
    password: str = Field("123456", pattern=r"^[^;,&=]{1,9}$")
    calibration: Calibration | None = Calibration(at=3 * 3600.0)
    excursions_per_day: float = Field(2.0, ge=0, le=100)
    maintenance: list[LineEvent] = Field(default_factory=list)
    outages: list[LineEvent] = Field(default_factory=list)
    ts_format: TsFormat = "rfc3339"

    @model_validator(mode="after")
    def _lines_exist(self) -> PlantSpec:
        for key in ("maintenance", "outages"):
            for i, event in enumerate(getattr(self, key)):
                if event.line > self.lines:
                    raise ValueError(f"{key}[{i}].line is {event.line} but plant {self.id} has {self.lines} "
                                     f"line(s); use 1..{self.lines}")
        for i, outage in enumerate(self.outages):
            if outage.duration < 3 * 3600:
                raise ValueError(f"outages[{i}].duration must be at least 3h (shut-down 1h, start-up 2h)")
        return self


class Scenario(_Strict):
    name: str
    description: str = ""
    timezone: str = "Asia/Shanghai"
    duration: PositiveDuration = 86_400.0
    start: Instant | None = None
    districts: list[DistrictSpec] = Field(default_factory=list)
    sweepers: SweeperFleet = SweeperFleet()
    stations: StationFleet = StationFleet()
    sorting_points: SortingPointFleet = SortingPointFleet()
    trucks: TruckFleet = TruckFleet()
    plants: list[PlantSpec] = Field(default_factory=list)
    faults: list[FaultSpec] = Field(default_factory=list)
    source: str = Field("", exclude=True, description="the file it was loaded from")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        load_zone(v)
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> Scenario:
        ids = [d.id for d in self.districts]
        if len(set(ids)) != len(ids):
            raise ValueError("districts: a district id is used twice; give each district its own id")
        if self.sweepers.count and not self.districts:
            raise ValueError("sweepers need at least one entry under 'districts' to drive in")
        for name in self.sweepers.districts or []:
            if name not in ids:
                raise ValueError(f"sweepers.districts names {name!r}, which is not under 'districts' "
                                 f"(known: {', '.join(ids) or 'none'})")
        if self.trucks.count and not (self.districts and self.stations.count and self.sorting_points.count):
            raise ValueError("trucks need 'districts' to drive in, 'sorting_points' to collect from and 'stations' "
                             "to tip at; add them or set trucks.count to 0")
        plant_ids = [p.id for p in self.plants]
        if len(set(plant_ids)) != len(plant_ids):
            raise ValueError("plants: a plant id is used twice; give each plant its own id")
        return self

    # --- derived --------------------------------------------------------------------------

    def device_counts(self) -> dict[str, int]:
        points = self.sorting_points
        return {
            "sweeper": self.sweepers.count,
            "transfer_station": self.stations.count,
            "bin": points.count * len(points.categories),
            "camera": points.count * points.cameras,
            "cems": sum(p.lines for p in self.plants),
            "truck": self.trucks.count,
        }

    def scaled(self, fraction: float) -> Scenario:
        """The same scenario with fleet sizes multiplied by ``fraction`` (each non-empty fleet keeps at
        least one device; plants keep their lines). ``--scale 0.01`` runs Shenzhen on a laptop."""
        if not 0 < fraction <= 1_000:
            raise ConfigError(f"scale {fraction} must be above 0 (e.g. 0.01 for 1 %)")

        def scale(n: int) -> int:
            return 0 if n == 0 else max(1, math.floor(n * fraction + 0.5))

        return self.model_copy(update={
            "sweepers": self.sweepers.model_copy(update={"count": scale(self.sweepers.count)}),
            "stations": self.stations.model_copy(update={"count": scale(self.stations.count)}),
            "sorting_points": self.sorting_points.model_copy(update={"count": scale(self.sorting_points.count)}),
            "trucks": self.trucks.model_copy(update={"count": scale(self.trucks.count)}),
        })

    def ts_formats(self) -> dict[str, str]:
        cems = {p.ts_format for p in self.plants}
        return {"sweeper": self.sweepers.ts_format, "transfer_station": self.stations.ts_format,
                "bin": self.sorting_points.ts_format, "camera": self.sorting_points.ts_format,
                "cems": cems.pop() if len(cems) == 1 else "rfc3339", "truck": self.trucks.ts_format}


# --- loading ---------------------------------------------------------------------------------


class _ScenarioLoader(yaml.SafeLoader):
    """YAML 1.1 reads an unquoted ``10:00`` as the base-60 integer 600; scenarios are full of times of
    day, so this loader drops the base-60 forms and ``10:00`` stays the string "10:00"."""


_ScenarioLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ScenarioLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_ScenarioLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """A shipped scenario's name, or a path to a YAML file."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or "/" in text or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"{text}: scenario file does not exist; give a YAML file or one of the shipped "
                              f"scenarios: {', '.join(available_scenarios())}")
        return candidate
    shipped = SCENARIO_DIR / f"{text}.yaml"
    if not shipped.is_file():
        close = difflib.get_close_matches(text, available_scenarios(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown scenario {text!r}{hint} Shipped scenarios: {', '.join(available_scenarios())}; "
                          "or give the path of a YAML file")
    return shipped


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load and validate a scenario; raises ConfigError naming the file, the key and the fix."""
    path = scenario_path(name_or_path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ScenarioLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}); "
                          "check the indentation and quoting on that line") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read scenario ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a scenario is a mapping of keys (name, sweepers, stations, …), "
                          f"not {type(data).__name__}")
    data.setdefault("name", path.stem)
    return parse_scenario(data, source=str(path))


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    try:
        return Scenario.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(explain(source, exc)) from None


def explain(source: str, exc: ValidationError) -> str:
    """One line per problem: file, dotted key, what is wrong, and how to fix it."""
    name = Path(source).name
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top level)"
        lines.append(f"{name}: {loc}: {_message(err)}")
    header = f"{source}: scenario does not validate ({len(lines)} problem{'s' if len(lines) > 1 else ''})"
    return header + "\n  " + "\n  ".join(lines)


def _message(err: ErrorDetails) -> str:
    kind, msg = err["type"], err["msg"]
    key = str(err["loc"][-1]) if err["loc"] else ""
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(key, sorted(_all_keys()), n=1)
        return "unknown key; " + (f"did you mean {close[0]!r}?" if close else "remove it (see simulators/README.md)")
    if kind == "missing":
        return f"required key is missing; add '{key}: …'"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    given = err.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict | list) else ""
    return f"{msg}{shown}"


def _all_keys() -> set[str]:
    keys: set[str] = set()
    for model in (Scenario, DistrictSpec, SweeperFleet, StationFleet, SortingPointFleet, PlantSpec, Calibration,
                  LineEvent, FaultSpec, TruckFleet, ClearanceSpec):
        keys |= set(model.model_fields)
    return keys
