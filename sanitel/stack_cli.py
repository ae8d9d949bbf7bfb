"""``sanitel stack up|down|status``, ``sanitel migrate`` and ``sanitel run`` (the whole system).

The local stack starts secure (docs/security.md): PostgreSQL with passwords (scram-sha-256) and one role per
component, Mosquitto without anonymous access, its accounts written from the registry before it starts. Generated
secrets stay under ``data_dir/secrets`` (0600) and are never printed: every URL shown here is redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanitel.broker_auth import BrokerAuthFiles, hash_password, new_password
from sanitel.db import apply_migrations, connect, provision_component_roles, timescaledb_info
from sanitel.errors import SanitelError
from sanitel.local_secrets import (
    BROKER_ACCOUNTS,
    LocalSecrets,
    simulator_devices_file,
    stack_secrets_file,
    write_private_file,
)
from sanitel.secret_hash import hash_secret
from sanitel.settings import Settings, load_settings
from sanitel.stack import LocalStack
from sanitel.urls import redact_url

if TYPE_CHECKING:  # imported where used: every other sanitel command skips them
    from psycopg import AsyncConnection

    from sanitel.simulators.scenario import Scenario


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stack = sub.add_parser("stack", help="the local PostgreSQL+TimescaleDB and Mosquitto")
    stack_sub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    stack_sub.add_parser("up", help="start them (and apply migrations); waits until healthy").set_defaults(func=up)
    stack_sub.add_parser("down", help="stop them cleanly").set_defaults(func=down)
    stack_sub.add_parser("status", help="what runs where, TimescaleDB version and license").set_defaults(func=status)
    sub.add_parser("migrate", help="apply database migrations (safe to run twice)").set_defaults(func=migrate)
    run_p = sub.add_parser("run", help="the whole system: stack, collector, alert evaluator, API, simulated fleet")
    run_p.add_argument("--scenario", default="demo", help="simulated fleet scenario (default: demo)")
    run_p.add_argument("--no-simulator", action="store_true", help="do not start a simulated fleet")
    run_p.set_defaults(func=run_all)


# --- bringing the stack up --------------------------------------------------------------------------------


def bring_up(settings: Settings) -> tuple[LocalStack, list[str]]:
    """Start what is local, in the order security needs: PostgreSQL; the migrations, as the owner; each component
    role's password; the broker's service accounts and its password file and ACL from the registry; only then
    Mosquitto, which so never runs a moment with anonymous access. Returns the stack and the migrations applied now."""
    stack = LocalStack(settings)
    stored = stack.start_database()
    owner = settings.database_url_for("owner")
    applied = apply_migrations(owner)
    if settings.uses_local_database:
        provision_component_roles(owner, stored.role_passwords)
    if stack.mosquitto is not None:
        asyncio.run(_provision_broker(settings, stored))
        stack.start_broker()
    return stack, applied


SIMULATOR_WORKER_ACCOUNTS = 8  # `sanitel simulate --workers N` on the local stack: up to 8 processes


async def _provision_broker(settings: Settings, stored: LocalSecrets) -> None:
    """The local services' broker accounts (re-hashed from the stored passwords: deleting one from the secrets
    file and starting again rotates it), then the broker's files from the whole registry."""
    # here, not at the top: every other sanitel command skips these imports
    from psycopg import AsyncConnection

    from sanitel.api.credentials import sync_broker_files
    from sanitel.api.queries import devices as device_queries

    async with await AsyncConnection.connect(settings.database_url_for("api"), autocommit=True) as conn:
        for account, (username, role) in BROKER_ACCOUNTS.items():
            hashed = hash_password(stored.broker_passwords[account])
            async with conn.transaction():
                await device_queries.lock_usernames(conn)
                owner = await device_queries.username_owner(conn, username)
                if owner not in (None, "service"):
                    raise SanitelError(f"the broker username {username!r} of the local {account} is taken by a "
                                       f"{owner}; rename that {owner}")
                await device_queries.set_service_password(conn, username, role, hashed)
                if account == "simulator":  # one user per load worker (simulators/workers.py worker_broker_url)
                    for k in range(2, SIMULATOR_WORKER_ACCOUNTS + 1):
                        await device_queries.set_service_password(conn, f"{username}-{k}", role, hashed)
        await sync_broker_files(conn, BrokerAuthFiles.for_data_dir(settings.data_dir), settings.city, force=True)


def _local_note(settings: Settings) -> tuple[str, str]:
    database = " (local; one role per component, passwords in " \
        f"{stack_secrets_file(settings.data_dir)})" if settings.uses_local_database else ""
    broker = ""
    if settings.uses_local_broker:
        tls = f"; TLS on {settings.mqtt_tls_port}" if settings.broker_tls else ""
        broker = f" (local; no anonymous access{tls})"
    return database, broker


# --- commands -----------------------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, applied = bring_up(settings)
    database, broker = _local_note(settings)
    print(f"database  {redact_url(settings.database_url_for('owner'))}{database}")
    print(f"broker    {redact_url(settings.effective_mqtt_url)}{broker}")
    print(f"migrations applied now: {', '.join(applied) or 'none (up to date)'}")
    return 0


def down(args: argparse.Namespace) -> int:
    LocalStack(load_settings()).down()
    print("stack stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    settings = load_settings()
    stack = LocalStack(settings)
    healthy = True
    for name, server, url in (("postgres", stack.postgres, settings.database_url_for("owner")),
                              ("mosquitto", stack.mosquitto, settings.effective_mqtt_url)):
        if server is None:
            print(f"{name:<10} external  {redact_url(url)}")
        else:
            running = server.running()
            healthy &= running
            print(f"{name:<10} {'running' if running else 'stopped':<9} {redact_url(url)}")
    try:
        with connect(settings.database_url_for("owner")) as conn:
            info = timescaledb_info(conn)
        print(f"timescaledb {info['version']} (license: {info['license']})")
    except SanitelError as exc:
        print(f"timescaledb unknown: {exc}")  # connect() redacts the URL in its message
        healthy = False
    return 0 if healthy else 1


def migrate(args: argparse.Namespace) -> int:
    applied = apply_migrations(load_settings().database_url_for("owner"))
    print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


# --- sanitel run ---------------------------------------------------------------------------------------------


async def register_demo_fleet(settings: Settings, scenario: str | Path, *, seed: int | None = None) -> Path:
    """Register the scenario's devices and gateways (:func:`register_fleet`) with broker credentials, so that the
    simulator publishes as each of them; returns the credentials file for ``sanitel simulate --credentials``
    ({"devices": {id: password}, "gateways": …}, 0600). Passwords are kept across runs; the registry and the
    broker's files are brought in line with the file each time. ``seed``: the run's (default: the simulator's
    default, which ``sanitel run`` uses), so the registered metadata is that of the simulated fleet."""
    from psycopg import AsyncConnection

    from sanitel.api.credentials import sync_broker_files
    from sanitel.simulators.cli import DEFAULT_SEED

    path = simulator_devices_file(settings.data_dir)
    async with await AsyncConnection.connect(settings.database_url_for("api"), autocommit=True) as conn:
        passwords = await register_fleet(conn, scenario, city=settings.city,
                                         seed=DEFAULT_SEED if seed is None else seed, known=_read_credentials(path))
        await sync_broker_files(conn, BrokerAuthFiles.for_data_dir(settings.data_dir), settings.city, force=True)
    if not passwords["gateways"]:
        del passwords["gateways"]
    write_private_file(path, json.dumps(passwords, indent=2, sort_keys=True) + "\n")
    return path


async def register_fleet(conn: AsyncConnection, scenario: Scenario | str | Path, *, city: str, seed: int,
                         known: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """The registry part of :func:`register_demo_fleet`, on an autocommit ``conn``: the scenario's inventory as an
    operator registers a real fleet. First its sites (:func:`scenario_sites`: districts, depots, estates, sorting
    points, transfer stations, plants and their lines, with names and parents); then each device with its kind,
    metadata, site (:func:`device_site`) and a broker password (``known``'s, else a new one); each HJ 212 unit also
    with the access password its frames carry (its plant's, HJ 212-2017 §6.3 PW) so the collector's password check
    passes; each gateway the inventory names with a broker password, its devices' site and exactly its devices behind
    it (the collector takes a gateway batch only for those); each truck's planned route. Idempotent: what an earlier
    run registered keeps its row (a site, too, with the params an operator gave it; a route, with its plan) and gets
    the password given; its devices that have no site yet get theirs. Returns the passwords ({"devices": …,
    "gateways": …}); against an anonymous broker (tests) they go unused."""
    from sanitel.api.queries import devices as device_queries
    from sanitel.api.queries import gateways as gateway_queries
    from sanitel.api.queries import routes as route_queries
    from sanitel.api.queries import sites as site_queries
    from sanitel.simulators.run import inventory, inventory_routes, inventory_sites
    from sanitel.simulators.scenario import Scenario, load_scenario

    loaded = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    known = known or {}
    devices = inventory(loaded, seed=seed, city=city)
    await site_queries.add_sites(conn, merge_sites(scenario_sites(loaded, devices),
                                                   inventory_sites(loaded, seed=seed, city=city), loaded.timezone))
    for device in devices:
        device["site_id"] = device_site(device)
    plant_passwords = {p.id: p.password for p in loaded.plants if p.protocol == "hj212"}
    passwords: dict[str, dict[str, str]] = {"devices": {}, "gateways": {}}
    sites: dict[str, bool] = {}  # site id → registered (a city has far fewer sites than devices)

    async def registered_site(site_id: str | None) -> str | None:
        if site_id and site_id not in sites:
            sites[site_id] = await site_queries.site_exists(conn, site_id)
        return site_id if site_id and sites[site_id] else None

    async def claim_username(username: str, owner_kind: str) -> None:
        # inside the caller's transaction: the broker has one username namespace (devices, gateways, services)
        await device_queries.lock_usernames(conn)
        owner = await device_queries.username_owner(conn, username)
        if owner not in (None, owner_kind):
            raise SanitelError(f"the demo {owner_kind} {username!r} has the broker username of a {owner}")

    for device in devices:
        device_id = device["device_id"]
        password = passwords["devices"][device_id] = known.get("devices", {}).get(device_id) or new_password()
        metadata: dict[str, Any] = device.get("metadata") or {}
        hj212 = plant_passwords.get(metadata.get("plant_id", "")) if metadata.get("protocol") == "hj212" else None
        hj212_hash = hash_secret(hj212) if hj212 else None
        hashed = hash_password(password)
        site_id = await registered_site(device.get("site_id"))
        async with conn.transaction():
            await claim_username(device_id, "device")
            registered = await device_queries.register_device(
                conn, device_id=device_id, kind=device["kind"], name=None, inactivity_timeout_s=900,
                site_id=site_id, metadata=metadata, password_hash=hashed, hj212_password_hash=hj212_hash)
            if not registered:  # from an earlier run: the password given is the one that counts
                await device_queries.set_device_password(conn, device_id, hashed)
                if hj212_hash:
                    await device_queries.set_hj212_password(conn, device_id, hj212_hash)
    behind: dict[str, list[str]] = {}
    for device in devices:
        if device.get("gateway_id"):
            behind.setdefault(device["gateway_id"], []).append(device["device_id"])
    site_of = {d["device_id"]: d.get("site_id") for d in devices}
    for gateway_id, device_ids in sorted(behind.items()):
        password = passwords["gateways"][gateway_id] = known.get("gateways", {}).get(gateway_id) or new_password()
        hashed = hash_password(password)
        # a sorting point's gateway stands where its bins do
        site_ids = {site_of[d] for d in device_ids}
        site_id = await registered_site(site_ids.pop()) if len(site_ids) == 1 else None
        async with conn.transaction():
            await claim_username(gateway_id, "gateway")
            if not await gateway_queries.insert_gateway(conn, gateway_id=gateway_id, name=None, site_id=site_id,
                                                        password_hash=hashed):
                await gateway_queries.set_gateway_password(conn, gateway_id, hashed)
            await gateway_queries.set_devices(conn, gateway_id, device_ids)
    # devices an earlier run registered before their sites existed (sanitel run until issue 14) get them now
    await site_queries.attach_unplaced_devices(conn, {d["device_id"]: d["site_id"] for d in devices if d["site_id"]})
    # the trucks' planned routes (a route registered before, perhaps changed by an operator, keeps its plan)
    for route in inventory_routes(loaded, seed=seed, city=city):
        if await route_queries.get_route(conn, route["route_id"]) is None:
            plan = {key: value for key, value in route.items() if key != "route_id"}
            await route_queries.put_route(conn, route["route_id"], plan)
    return passwords


def device_site(device: Mapping[str, Any]) -> str | None:
    """Where a simulated device is registered: a sorting point's bins and camera at the point itself — the place
    alerts/incidents.py groups a bin fire and the camera's smoke at — the others at the site the inventory names."""
    point = (device.get("metadata") or {}).get("point_id")
    return str(point) if point else device.get("site_id")


def scenario_sites(scenario: Scenario, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The site tree of a simulated fleet, parents first, for :func:`register_fleet`: each district (its centre); a
    depot per district with sweepers (where they park, from their metadata); the estates the inventory names, each
    under a district (round robin: the simulator places no estate); under them each sorting point, with its
    ``households`` (the registered households its participation rate is measured against); each transfer station,
    under a district the same way; each plant and its lines. Names are made from the ids (a scenario has none but a
    plant's); the time zone is the scenario's."""
    tz = scenario.timezone
    districts = [d.id for d in scenario.districts]

    def site(site_id: str, kind: str, name: str, parent: str | None = None, lat: float | None = None,
             lon: float | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"site_id": site_id, "kind": kind, "name": name, "parent_id": parent, "timezone": tz,
                "latitude": lat, "longitude": lon, "params": params or {}}

    def district_of(n: int) -> str | None:
        return districts[n % len(districts)] if districts else None

    rows = [site(d.id, "district", f"{d.id.replace('_', ' ').title()} district", lat=d.lat, lon=d.lon)
            for d in scenario.districts]
    depots: dict[str, tuple[float, float]] = {}
    estates: list[str] = []
    points: dict[str, tuple[str, int | None]] = {}  # point → (estate, households)
    stations: list[str] = []
    for device in devices:
        meta = device.get("metadata") or {}
        if device["kind"] == "sweeper" and device.get("site_id") in districts and meta.get("depot"):
            depots.setdefault(device["site_id"], (float(meta["depot"][0]), float(meta["depot"][1])))
        elif meta.get("point_id") and device.get("site_id"):
            if device["site_id"] not in estates:
                estates.append(device["site_id"])
            points.setdefault(meta["point_id"], (device["site_id"], meta.get("households")))
        elif device["kind"] == "transfer_station" and device.get("site_id"):
            stations.append(device["site_id"])
    rows += [site(f"dp-{d}", "depot", f"{d.replace('_', ' ').title()} depot", d, lat, lon)
             for d, (lat, lon) in depots.items()]
    rows += [site(e, "estate", f"Estate {e}", district_of(n)) for n, e in enumerate(estates) if e not in points]
    rows += [site(p, "sorting_point", f"Sorting point {p}", estate if estate != p else None,
                  params={"households": households} if households else None)
             for p, (estate, households) in points.items()]
    rows += [site(t, "transfer_station", f"Transfer station {t}", district_of(n)) for n, t in enumerate(stations)]
    for plant in scenario.plants:
        rows.append(site(plant.id, "plant", plant.name or f"Plant {plant.id}"))
        rows += [site(f"{plant.id}-l{n}", "line", f"{plant.name or plant.id} line {n}", plant.id)
                 for n in range(1, plant.lines + 1)]
    return rows


FIRST_KEY_NAME = "first admin (sanitel run)"


async def create_first_key(settings: Settings) -> str | None:
    """An admin key when the registry has no usable key yet (a fresh stack): its token, to be shown once — only its
    hash is stored. None when a key that is not revoked exists (then nothing is created and nothing shown)."""
    from psycopg import AsyncConnection

    from sanitel.api.auth import new_key
    from sanitel.api.queries import keys as key_queries

    async with await AsyncConnection.connect(settings.database_url_for("api"), autocommit=True) as conn, \
            conn.transaction():
        # two `sanitel run` at once must not both mint one: the check and the insert under one lock
        await conn.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
        if await key_queries.list_keys(conn, include_revoked=False):
            return None
        key = new_key()
        await key_queries.insert_key(conn, key.key_id, FIRST_KEY_NAME, "admin", key.secret_hash)
    return key.token


# Parents before children: the kinds in the order their rows are registered.
_SITE_ORDER = ("district", "depot", "estate", "urban_village", "transfer_station", "sorting_point", "plant", "line")


def merge_sites(ours: list[dict[str, Any]], placed: list[dict[str, Any]], timezone: str) -> list[dict[str, Any]]:
    """:func:`scenario_sites` with the sites a truck scenario lays out (``simulators.run.inventory_sites``: the
    same ids, with the positions and districts the trucks drive between, and parameters such as ``clearance``) taking
    precedence for where a site is; parameters of both are kept. Parents first."""
    merged = {r["site_id"]: dict(r) for r in ours}
    for row in placed:
        mine = merged.get(row["site_id"], {})
        name = mine.get("name") or f"{row['kind'].replace('_', ' ').capitalize()} {row['site_id']}"
        merged[row["site_id"]] = {
            "site_id": row["site_id"], "kind": row["kind"], "name": name, "parent_id": row.get("parent_id"),
            "timezone": timezone, "latitude": row.get("lat"), "longitude": row.get("lon"),
            "params": {**(mine.get("params") or {}), **(row.get("params") or {})}}
    return sorted(merged.values(), key=lambda r: _SITE_ORDER.index(r["kind"]) if r["kind"] in _SITE_ORDER else 99)


def _read_credentials(path: Path) -> dict[str, dict[str, str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = {}
    return {section: {str(k): str(v) for k, v in (raw.get(section) or {}).items()} for section in
            ("devices", "gateways")} if isinstance(raw, dict) else {"devices": {}, "gateways": {}}


def _service_commands(settings: Settings, args: argparse.Namespace,
                      credentials: Path | None) -> list[tuple[str, list[str]]]:
    exe = [sys.executable, "-m", "sanitel.cli"]
    wanted = [("collector", [*exe, "collector"]), ("maintenance", [*exe, "maintain"]),
              ("evaluator", [*exe, "evaluator"]), ("api", [*exe, "api"])]
    if not args.no_simulator:
        simulate = [*exe, "simulate", "--scenario", args.scenario, "--speed", "1"]
        if credentials is not None:
            # each device as itself: the URL gives only where (and, with broker_tls, the CA), never a password
            simulate += ["--credentials", str(credentials), "--broker", settings.local_broker_url()]
        wanted.append(("simulator", simulate))
    return wanted


def run_all(args: argparse.Namespace) -> int:
    """Everything in one terminal; Ctrl-C stops it all (children first, then the stack)."""
    settings = load_settings()
    stack, _ = bring_up(settings)
    credentials = None
    if not args.no_simulator and settings.uses_local_broker:
        credentials = asyncio.run(register_demo_fleet(settings, args.scenario))
    first_key = asyncio.run(create_first_key(settings))
    database, broker = _local_note(settings)
    print(f"[run] database {redact_url(settings.database_url_for('owner'))}{database}")
    print(f"[run] broker {redact_url(settings.effective_mqtt_url)}{broker}")
    base = f"http://{settings.api_host}:{settings.api_port}"
    print(f"[run] console {base}/ — API docs {base}/docs — Ctrl-C stops everything")
    if first_key is not None:
        print(f"[run] first API key (admin; shown this once — sign in to the console with it): {first_key}")
    else:
        print("[run] API keys exist already; 'sanitel keys create --role admin --name NAME' makes another")
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for name, cmd in _service_commands(settings, args, credentials):
            children.append((name, subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)))
            print(f"[run] started {name} (pid {children[-1][1].pid})")
        while not stop:
            for name, proc in children:
                if proc.poll() is not None:
                    print(f"[run] {name} exited with {proc.returncode}; stopping everything", file=sys.stderr)
                    stop = True
            time.sleep(0.5)
    finally:
        for _, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in children:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print(f"[run] {name} did not stop in 30 s; killing it", file=sys.stderr)
                proc.kill()
        stack.down()
        print("[run] stopped")
    return 0
