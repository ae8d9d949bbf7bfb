"""A city's worth of console data (issue 14, Must show 7): sites, 1,500 sweepers with one telemetry row each and
300 firing alerts, written into a migrated database for the console's browser benchmark (bench/console/render.py).

What is written is what the running system would hold: sites and devices in the registry tables; one
``sweeper_telemetry`` row and its ``device_last_seen`` row per sweeper; the alerts as the alert evaluator opens them
(``alerts`` with the fingerprint, labels, limits and summary the engine gives them — ``alerts.lifecycle.fingerprint``,
``Registry.labels``, ``limits_for``, ``render_summary`` of the shipped rules — and each one's ``alert_history`` row
of the transition to firing). Bulk rows go in by COPY: seconds for the whole city.

    .venv/bin/python bench/console/seed_city.py --database-url postgresql://…/db [--sweepers 1500] [--firing-alerts 300]

The ids are fixed (``sw-00001`` …): seed an empty, migrated database once.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sanitel.alerts.lifecycle import fingerprint
from sanitel.alerts.rules import (
    RuleModel,
    ThresholdRule,
    WindowRule,
    default_rule_files,
    limits_for,
    load_files,
    render_summary,
    smoothing_text,
)
from sanitel.alerts.subjects import Device, Registry, Site, Subject
from sanitel.api.catalog import tables_of_kind

TZ = "Asia/Shanghai"
# Shenzhen's districts and their approximate centres (map reading, not a survey: good enough for a plot's extent).
DISTRICTS = {
    "futian": (22.5431, 114.0579), "luohu": (22.5485, 114.1315), "nanshan": (22.5329, 113.9305),
    "baoan": (22.5553, 113.8836), "longgang": (22.7209, 114.2470), "longhua": (22.6964, 114.0446),
    "yantian": (22.5559, 114.2365), "guangming": (22.7487, 113.9358), "pingshan": (22.6908, 114.3466),
    "dapeng": (22.5931, 114.4794)}
STATIONS_PER_DISTRICT = 3
POINTS_PER_DISTRICT = 8
PLANT_LINES = 3
OFFLINE_SHARE = 0.05  # sweepers last heard hours ago: greyed on the plot
# Firing alerts by subject kind: the fleet is most of the devices and most of the alerts.
ALERT_MIX = (("sweeper", 0.45), ("transfer_station", 0.2), ("bin", 0.2), ("cems", 0.15))


@dataclass
class City:
    sites: list[Site]
    devices: list[Device]
    rows: list[dict[str, Any]]  # sites as inserted (names, places)


def build_city(sweepers: int, rng: random.Random) -> City:
    """Districts with a depot, transfer stations and an estate of sorting points (four bins each); a plant with its
    lines; the sweepers spread over the depots."""
    rows: list[dict[str, Any]] = []
    devices: list[Device] = []

    def site(site_id: str, kind: str, name: str, parent: str | None, place: tuple[float, float] | None = None,
             params: dict[str, Any] | None = None) -> None:
        rows.append({"site_id": site_id, "kind": kind, "name": name, "parent_id": parent, "timezone": TZ,
                     "latitude": place[0] if place else None, "longitude": place[1] if place else None,
                     "params": params or {}})

    for district, centre in DISTRICTS.items():
        site(district, "district", f"{district.title()} district", None, centre)
        site(f"{district}-depot", "depot", f"{district.title()} depot", district, _near(centre, 1.0, rng))
        for n in range(1, STATIONS_PER_DISTRICT + 1):
            station = f"ts-{district}-{n}"
            site(station, "transfer_station", f"{district.title()} transfer station {n}", district,
                 _near(centre, 3.0, rng), {"odour_grade": 2, "noise_class": 2})
            devices.append(Device(station, "transfer_station", station, 900, {}))
        estate = f"es-{district}"
        site(estate, "estate", f"{district.title()} estate", district, _near(centre, 2.0, rng))
        for n in range(1, POINTS_PER_DISTRICT + 1):
            point = f"sp-{district}-{n}"
            site(point, "sorting_point", f"{district.title()} sorting point {n}", estate, None,
                 {"households": rng.randint(200, 600)})
            devices += [Device(f"bin-{district}-{n}-{c}", "bin", point, 900, {"point_id": point}) for c in "krho"]
    site("p1", "plant", "Laohukeng plant", None, (22.7000, 113.8700))
    for n in range(1, PLANT_LINES + 1):
        site(f"p1-l{n}", "line", f"Laohukeng line {n}", "p1")
        devices.append(Device(f"cems-p1-l{n}", "cems", f"p1-l{n}", 900, {"plant_id": "p1", "line_id": f"p1-l{n}"}))
    depots = [f"{d}-depot" for d in DISTRICTS]
    devices += [Device(f"sw-{n:05d}", "sweeper", depots[(n - 1) % len(depots)], 900, {}) for n in range(1, sweepers + 1)]
    sites = [Site(r["site_id"], r["kind"], r["parent_id"], TZ, r["params"]) for r in rows]
    return City(sites, devices, rows)


def _near(centre: tuple[float, float], km: float, rng: random.Random) -> tuple[float, float]:
    # ~111 km per degree of latitude; at 22.5° N a degree of longitude is ~103 km
    return (round(centre[0] + rng.uniform(-km, km) / 111.0, 6), round(centre[1] + rng.uniform(-km, km) / 103.0, 6))


def _copy(conn: psycopg.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _telemetry(city: City, now: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    """One newest telemetry row per sweeper near its depot's district centre: (device, ts, lat, lon, soc)."""
    centres = {f"{d}-depot": c for d, c in DISTRICTS.items()}
    out = []
    for device in city.devices:
        if device.kind != "sweeper":
            continue
        silent = rng.random() < OFFLINE_SHARE
        ago = timedelta(hours=rng.uniform(2, 8)) if silent else timedelta(seconds=rng.uniform(1, 120))
        lat, lon = _near(centres[device.site_id or ""], 3.0, rng)
        out.append((device.device_id, now - ago, lat, lon, round(rng.uniform(5, 100), 1)))
    return out


def _alert_rules(rules: Iterable[RuleModel], kind: str) -> list[ThresholdRule | WindowRule]:
    """Rules that judge a plain reading value of the kind (the alerts a city's day raises most)."""
    tables = tables_of_kind(kind)
    return [r for r in rules if isinstance(r, ThresholdRule | WindowRule) and r.source in tables
            and kind in r.kinds() and r.field is not None and not getattr(r, "bit", None)
            and not getattr(r, "flagged", None) and getattr(r, "emission_limit", None) is None]


def _alerts(city: City, count: int, now: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    registry = Registry({d.device_id: d for d in city.devices}, {s.site_id: s for s in city.sites})
    rules = list(load_files(default_rule_files()).rules.values())
    by_kind = {kind: (_alert_rules(rules, kind), [d for d in city.devices if d.kind == kind]) for kind, _ in ALERT_MIX}
    taken: set[str] = set()
    out: list[tuple[Any, ...]] = []
    for _ in range(count * 100):
        if len(out) == count:
            break
        kind = rng.choices([k for k, _ in ALERT_MIX], [w for _, w in ALERT_MIX])[0]
        kind_rules, devices = by_kind[kind]
        if not kind_rules or not devices:
            continue
        rule, device = rng.choice(kind_rules), rng.choice(devices)
        subject = Subject(f"device:{device.device_id}", device.device_id, device.site_id, kind)
        fp = fingerprint(rule.id, subject.key)
        limits = limits_for(rule, registry.device_params(device.device_id))
        if fp in taken or limits is None:  # one open alert per fingerprint (alerts_one_open_per_fingerprint)
            continue
        taken.add(fp)
        labels = {**registry.labels(subject), **rule.labels, "rule_id": rule.id, "severity": rule.severity}
        value = limits.threshold * (1.2 if rule.op in (">", ">=") else 0.8)
        if (rule.field or "").endswith("_pct"):
            value = min(value, 100.0)  # a percentage past its limit, still a percentage
        started = now - timedelta(minutes=rng.uniform(5, 600))
        summary = render_summary(rule, {**labels, **limits.context, "value": value, "peak": value,
                                        "threshold": limits.threshold, "clear": limits.clear, "subject": subject.key,
                                        "window": getattr(rule, "window", None), "standard": rule.standard,
                                        "smoothing": smoothing_text(rule)})
        out.append((rule.id, fp, subject.key, device.device_id, device.site_id, kind, rule.severity, "firing",
                    Jsonb(labels), summary, value, limits.threshold, value, started, started, now, Jsonb({})))
    if len(out) < count:
        raise SystemExit(f"the city has subjects for only {len(out)} distinct firing alerts; ask for fewer")
    return out


_ALERT_COLUMNS = ("rule_id", "fingerprint", "subject", "device_id", "site_id", "kind", "severity", "state", "labels",
                  "summary", "value", "threshold", "peak_value", "started_at", "fired_at", "updated_at", "annotations")


def seed_city(database_url: str, *, now: datetime, sweepers: int = 1500, firing_alerts: int = 300) -> None:
    """Sites, ``sweepers`` sweepers (each with a last telemetry row: about 5 % heard from hours before ``now``, the
    rest within two minutes) and the other devices the alerts are about, then ``firing_alerts`` firing alerts that
    started in the ten hours before ``now``; in one transaction."""
    rng = random.Random(14)  # the same city every time
    city = build_city(sweepers, rng)
    telemetry = _telemetry(city, now, rng)
    alerts = _alerts(city, firing_alerts, now, rng)
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO sites (site_id, kind, name, parent_id, timezone, latitude, longitude, params)"
                            " VALUES (%(site_id)s, %(kind)s, %(name)s, %(parent_id)s, %(timezone)s, %(latitude)s,"
                            " %(longitude)s, %(params)s)", [{**r, "params": Jsonb(r["params"])} for r in city.rows])
        _copy(conn, "devices", ("device_id", "kind", "site_id", "name", "inactivity_timeout_s", "metadata"),
              ((d.device_id, d.kind, d.site_id, d.device_id, d.inactivity_timeout_s, Jsonb(dict(d.metadata)))
               for d in city.devices))
        _copy(conn, "sweeper_telemetry", ("device_id", "ts", "seq", "received_at", "lat", "lon", "soc_pct"),
              ((d, ts, 1, ts, lat, lon, soc) for d, ts, lat, lon, soc in telemetry))
        _copy(conn, "device_last_seen", ("device_id", "last_ts", "last_seq", "last_received"),
              ((d, ts, 1, ts) for d, ts, *_ in telemetry))
        _copy(conn, "alerts", _ALERT_COLUMNS, alerts)
        opened = conn.execute("SELECT alert_id, fired_at FROM alerts WHERE state = 'firing' AND fingerprint = ANY(%s)",
                              ([a[1] for a in alerts],)).fetchall()
        _copy(conn, "alert_history", ("alert_id", "at", "from_state", "to_state", "details"),
              ((alert_id, fired, None, "firing", Jsonb({"device_time": fired.isoformat()})) for alert_id, fired in opened))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a migrated PostgreSQL+TimescaleDB database")
    parser.add_argument("--sweepers", type=int, default=1500)
    parser.add_argument("--firing-alerts", type=int, default=300)
    args = parser.parse_args()
    seed_city(args.database_url, now=datetime.now(UTC), sweepers=args.sweepers, firing_alerts=args.firing_alerts)
    print(f"seeded {len(DISTRICTS)} districts, {args.sweepers} sweepers and {args.firing_alerts} firing alerts")


if __name__ == "__main__":
    main()
