"""One CEMS line over a span — a day or a whole year — without a broker: rows shaped like ``cems_readings`` and
the ground truth, for tests that judge a line's data the way the processors and a regulator do.

The readings come from the model's own step loop (:class:`simulators.run.Simulation` with a one-plant, one-line
scenario: outages with their marks, maintenance, calibrations, faults and ground truth all as in a published
run); each message is then decoded as the collector stores it — a JSON reading's schema fields become columns
and the rest goes to ``extra`` (``operating_state``, ``operating_mark``), an HJ 212 frame goes through the shared
codec (``schemas.hj212``) — so nothing here needs MQTT or a database. A year at a 5-minute interval (~105,000
readings) takes a few seconds.

    span = simulate_cems_line("2026-01-01T00:00:00+08:00", 365 * 86_400.0, interval_s=300.0,
                              outages=[{"after": "120d", "duration": "5d"}])
    span.readings[0]["ts"], span.readings[0]["furnace_temp_c"], span.readings[0]["extra"]
    [r.as_json() for r in span.truth]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from sanitel.schemas import hj212
from sanitel.schemas.readings import CemsReading
from sanitel.simulators.clock import parse_instant
from sanitel.simulators.faults import FaultSpec, Message
from sanitel.simulators.models.base import Emission
from sanitel.simulators.run import Simulation
from sanitel.simulators.scenario import parse_scenario
from sanitel.simulators.truth import TruthRecord

__all__ = ["FIELDS", "LineSpan", "message_rows", "simulate_cems_line"]  # the module's API (tests, the integrator)

FIELDS: tuple[str, ...] = CemsReading.__struct_fields__
_COLUMNS = frozenset(FIELDS) - {"device_id"}
# a column the reading leaves out holds the schema's default (data_kind rtd, gas_is_dry, seq 0 …) or NULL
_DEFAULTS: dict[str, Any] = dict.fromkeys(FIELDS) | dict(
    zip(FIELDS[len(FIELDS) - len(CemsReading.__struct_defaults__):], CemsReading.__struct_defaults__, strict=True))


@dataclass(frozen=True, slots=True)
class LineSpan:
    """A line's readings in sending order (rows of ``cems_readings``: ``ts`` an aware UTC datetime, every
    column present, None where the reading has no value, ``extra`` the non-column keys or None), its ground
    truth sorted by start, and how many messages break the contract (malformed faults: dead letters)."""

    device_id: str
    readings: list[dict[str, Any]]
    truth: list[TruthRecord]
    rejected: int


def simulate_cems_line(
    start: float | datetime | str,
    duration_s: float,
    *,
    seed: int = 1,
    interval_s: float = 300.0,
    protocol: str = "json",
    outages: Sequence[Mapping[str, Any]] = (),
    maintenance: Sequence[Mapping[str, Any]] = (),
    calibration: Mapping[str, Any] | None = None,
    excursions_per_day: float = 2.0,
    faults: Sequence[FaultSpec | str] = (),
    timezone: str = "Asia/Shanghai",
    plant_id: str = "y1",
    city: str = "shenzhen",
) -> LineSpan:
    """Line 1 of plant ``plant_id`` (device ``cems-<plant_id>-l1``) from ``start`` for ``duration_s``.

    ``outages`` and ``maintenance`` are scenario entries without the line (``{"after": "120d", "duration": "5d"}``
    or ``{"at": "13:00", "duration": "1h"}``); ``calibration`` the daily zero/span check (default 03:00 for
    15 min; ``{}`` for none); ``faults`` fault specs or preset names aimed at this line. Raises ConfigError for
    a scenario or fault that does not validate."""
    plant: dict[str, Any] = {
        "id": plant_id, "lines": 1, "protocol": protocol, "interval": interval_s,
        "excursions_per_day": excursions_per_day,
        "calibration": (calibration or None) if calibration is not None else {"at": "03:00", "duration": "15m"},
        "outages": [{"line": 1, **o} for o in outages], "maintenance": [{"line": 1, **m} for m in maintenance],
    }
    scenario = parse_scenario({"name": f"cems-line-{plant_id}", "timezone": timezone, "plants": [plant]},
                              source="simulate_cems_line")
    epoch = float(start) if isinstance(start, int | float) else parse_instant(start)
    sim = Simulation(scenario, seed=seed, start=epoch, duration_s=duration_s, city=city, faults=list(faults))
    rows = _Rows(sim, timezone)
    (line,) = sim.models
    out: list[Emission] = []
    t = line.first_due()
    while t < sim.end:  # Simulation.messages() for one model: no agenda needed
        t_next = line.step(t, out)
        for emission in out:
            rows.add(emission)
        out.clear()
        t = t_next
    rows.drain()
    sim.finish(sim.end)
    return LineSpan(f"cems-{plant_id}-l1", rows.readings, sim.truth.sorted_records(), rows.rejected)


class _Rows:
    """Emissions → rows. A JSON line no fault touches needs no encoding: its reading dict is already what the
    collector stores (the JSON round trip keeps every value; ``ts`` keeps milliseconds, as the encoder does).
    Faulted or HJ 212 lines go the published way — fault injection, encoding, decoding — message by message."""

    def __init__(self, sim: Simulation, timezone: str) -> None:
        self.sim, self.timezone = sim, timezone
        self.readings: list[dict[str, Any]] = []
        self.rejected = 0

    def add(self, emission: Emission) -> None:
        injector = self.sim.injector
        if emission.fmt == "json" and emission.device_id not in injector.by_device:
            clean = emission.body
            clean["ts"] = datetime.fromtimestamp(round(clean["ts"] * 1000.0) / 1000.0, UTC)
            self.readings.append(_row(emission.device_id, clean, validate=False))
            return
        faulted = injector.reading(emission.device_id, emission.t, emission.body)
        if faulted is None:
            return
        ready: list[Message] = []
        payload = self.sim.encoder.encode(emission, faulted)
        injector.message(Message(emission.topic, payload, emission.t, emission.kind, emission.device_id), ready)
        self._decode(ready)

    def drain(self) -> None:
        ready: list[Message] = []
        self.sim.injector.drain(ready)
        self._decode(ready)

    def _decode(self, messages: list[Message]) -> None:
        for message in messages:
            try:
                self.readings += message_rows(message.payload, message.device_id, self.timezone)
            except (hj212.Hj212Error, msgspec.DecodeError, msgspec.ValidationError):
                self.rejected += 1


def message_rows(payload: bytes, device_id: str, timezone: str) -> list[dict[str, Any]]:
    """The ``cems_readings`` rows one CEMS message makes (an HJ 212 frame's ``DataTime`` is local time in
    ``timezone``). Raises ``Hj212Error``, ``msgspec.DecodeError`` or ``msgspec.ValidationError`` for a message
    the collector would dead-letter."""
    if payload.startswith(b"##"):
        frame = hj212.parse_frame(payload)
        data: list[dict[str, Any]] = [dict(r) for r in hj212.frame_to_cems_readings(frame, device_id=frame.mn,
                                                                                       tz=timezone)]
    else:
        data = [msgspec.json.decode(payload)]
    return [_row(device_id, d) for d in data]


def _row(device_id: str, data: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
    """A reading → its row: every column (the schema's default where the reading has no value) and ``extra``.
    ``validate``: as the collector does (``msgspec.ValidationError`` otherwise); ``ts`` is then parsed too."""
    row = dict(_DEFAULTS)
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in _COLUMNS:
            row[key] = value
        elif key != "device_id":
            extra[key] = value
    if validate:
        reading = msgspec.convert({k: v for k, v in data.items() if k in _COLUMNS}, CemsReading)
        row["ts"] = _instant(reading.ts)
    row["device_id"] = device_id
    row["extra"] = extra or None
    return row


def _instant(ts: str | int) -> datetime:
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts / 1000.0, UTC)
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(UTC)
