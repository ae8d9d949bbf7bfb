"""Issue 16's side-by-side table: sanitel's collector against Node-RED 4.1 through the shared peer harness.

    .venv/bin/python bench/ingest/peers.py                    # 3 rounds, 100,000 live / 200,000 backlog, ~12 min
    RUNS=1 N=5000 N_BACKLOG=10000 .venv/bin/python bench/ingest/peers.py    # smoke run
    .venv/bin/python bench/ingest/peers.py --json out.json    # also the figures, per round, as JSON
    .venv/bin/python bench/ingest/peers.py --from-raw raw.jsonl    # table only, from lines collected before

What it does: copies the harness (``../shared/bench-peers`` beside the checkout, read-only; ``--harness``) into a
work folder (``--workdir``; Node-RED's ``node_modules`` there is kept between runs so that npm installs it once),
makes sure PostgreSQL with
TimescaleDB answers on 127.0.0.1:55432 (``sanitel stack up`` otherwise, the supported way to start it; the harness
connects as the local stack's superuser, whose password is handed on in PGPASSWORD and never printed), then per round:

1. ``run_all.sh`` with ``--peers`` on the harness's broker (``max_inflight_messages 0``);
2. ``backlog-sanitel`` again with SANITEL_BIN pointing at a
   two-line wrapper that adds ``--workers N`` (the harness runs ``$SANITEL_BIN collector``; no edit to it needed),
   recorded as ``backlog-sanitel-workers``;
3. ``--default-inflight-peers`` with the harness's ``mosquitto.conf`` set to Mosquitto's default
   ``max_inflight_messages 20`` (as its README says; the copy is restored afterwards).

Each round is its own ``run_all.sh`` invocation (RUNS=1): the harness's broker keeps no state across restarts
(``persistence false``), so the persistent MQTT sessions that measure.py does not clear — the second collector's of
``*-x2``, the extra workers' — cannot carry queued messages from one round into the next. The rounds' lines are
merged into ``<workdir>/results/peers-<stamp>.jsonl`` (keys ``round`` and ``broker`` added) and turned into ONE
Markdown table (bench/ingest/peers_table.py) on stdout; the harness's own output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.ingest.peers_table import (  # noqa: E402
    DEFAULT_BROKER,
    DEFAULT_INFLIGHT_BROKER,
    annotate,
    build_rows,
    render_markdown,
    rows_as_json,
)
from sanitel.settings import load_settings  # noqa: E402

# the shared harness sits beside the checkout (../shared/bench-peers), as the developers' guide places it
HARNESS = Path(os.environ.get("SANITEL_BENCH_PEERS", ROOT.parent / "shared" / "bench-peers"))
# Node-RED's peers first: sanitel's collector keeps a persistent session (client id sanitel-collector-1) that the
# harness clears only after a sanitel *backlog* run, so a Node-RED run after the live `sanitel` run published its
# 200,000 readings (same topics, same device ids, seq and ts) into that offline session too, and `backlog-sanitel`
# then drained both backlogs — its prime run already wrote ~70,000 of Node-RED's readings before the timed drain
# began (issue 16, measured 2026-11-29: first rows visible 0.05 s after the launch). This order leaves no sanitel
# session open while a Node-RED run publishes.
DEFAULT_PEERS = "nodered-batch500 backlog-nodered-batch500 sanitel backlog-sanitel backlog-sanitel-x2"
DEFAULT_INFLIGHT_PEERS = "backlog-nodered-batch500 backlog-sanitel"
HARNESS_DB = ("127.0.0.1", 55432, "postgres")  # fixed in run_all.sh and measure.py
HARNESS_DEVICES = 1500  # publish.py --devices default; ids SW00000…SW01499
WORKERS_NAME = "backlog-sanitel-workers"


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync_harness(harness: Path, workdir: Path) -> None:
    """Copy the harness over the work folder (installs and logs there survive); the copy must be writable."""
    shutil.copytree(harness, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules", ".venvs"))
    for path in [harness, *harness.rglob("*")]:
        copy = workdir / path.relative_to(harness)
        copy.chmod(copy.stat().st_mode | 0o200)


def superuser_password() -> str | None:
    """The local stack's superuser password (sanitel/settings.py effective_database_url), if it has one."""
    url = conninfo_to_dict(load_settings().effective_database_url)
    if (url.get("host"), int(url.get("port") or 5432), url.get("user")) != HARNESS_DB:
        raise SystemExit(f"the harness needs the superuser {HARNESS_DB[2]} on {HARNESS_DB[0]}:{HARNESS_DB[1]}; "
                         "sanitel's database is elsewhere (SANITEL_DATABASE_URL): start a local one or unset it")
    password = url.get("password")
    return str(password) if password else None


def database_answers(password: str | None) -> bool:
    host, port, user = HARNESS_DB
    try:
        psycopg.connect(host=host, port=port, user=user, dbname="postgres", password=password, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True


def ensure_database(sanitel_bin: Path) -> str | None:
    password = superuser_password()
    if database_answers(password):
        return password
    log("PostgreSQL on 127.0.0.1:55432 does not answer: sanitel stack up")
    subprocess.run([str(sanitel_bin), "stack", "up"], check=True, stdout=sys.stderr)
    password = superuser_password()
    if not database_answers(password):
        raise SystemExit("PostgreSQL on 127.0.0.1:55432 still does not answer after `sanitel stack up`")
    return password


def register_harness_fleet(sanitel_bin: Path, password: str | None) -> None:
    """Migrate the harness's database and register the devices its publisher uses, as an operator does.

    The collector auto-registers at most ``auto_register_per_minute`` unknown devices (60 by default) and dead-letters
    the rest's readings; publish.py sends as 1,500 devices SW00000… that no one registered, so without this the sanitel
    peers stall at a few hundred rows. run_all.sh's TRUNCATE leaves ``devices`` alone, so this holds for all rounds.
    """
    host, port, user = HARNESS_DB
    with psycopg.connect(host=host, port=port, user=user, dbname="postgres", password=password,
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'peers'").fetchone() is None:
            conn.execute("CREATE DATABASE peers")
    url = f"postgresql://{user}@{host}:{port}/peers"
    env = {**os.environ, "SANITEL_DATABASE_URL": url, **({"PGPASSWORD": password} if password else {})}
    subprocess.run([str(sanitel_bin), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    with psycopg.connect(host=host, port=port, user=user, dbname="peers", password=password) as conn:
        added = conn.execute("INSERT INTO devices (device_id, kind) SELECT d, 'sweeper' FROM unnest(%s::text[]) AS d "
                             "ON CONFLICT (device_id) DO NOTHING",
                             ([f"SW{i:05d}" for i in range(HARNESS_DEVICES)],)).rowcount
    log(f"harness database: migrated; {added} of its {HARNESS_DEVICES} devices newly registered")


def workers_wrapper(workdir: Path, sanitel_bin: Path, workers: int) -> Path:
    """A SANITEL_BIN for the harness that runs ``collector --workers N`` (exec: the PID stays the collector's)."""
    path = workdir / "logs" / f"sanitel-workers-{workers}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    collector = f'exec {sanitel_bin} collector --workers {workers} "$@"'
    path.write_text("#!/usr/bin/env bash\n# written by bench/ingest/peers.py\n"
                    f'if [[ "${{1:-}}" == collector ]]; then shift; {collector}; fi\n'
                    f'exec {sanitel_bin} "$@"\n')
    path.chmod(0o755)
    return path


def set_inflight(workdir: Path, value: int) -> None:
    conf = workdir / "mosquitto.conf"
    lines = [f"max_inflight_messages {value}" if ln.startswith("max_inflight_messages") else ln
             for ln in conf.read_text().splitlines()]
    conf.write_text("\n".join(lines) + "\n")


def run_harness(workdir: Path, peers: str, out: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """One run_all.sh invocation (one round); its stdout goes to our stderr; returns the lines it appended."""
    if out.exists():
        out.unlink()
    run_env = {**env, "ONLY": peers, "RUNS": "1", "OUT": str(out)}
    log(f"run_all.sh ONLY='{peers}' (load {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    subprocess.run(["bash", str(workdir / "run_all.sh")], cwd=workdir, env=run_env, stdout=sys.stderr, check=False)
    if not out.exists():
        return []
    return [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]


def notes_file(merged: Path) -> Path:
    """The table's notes of a measuring run, beside its merged lines (``--from-raw`` shows them again)."""
    return merged.with_suffix(".notes.json")


def git_diff_stat() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "diff", "--stat"], capture_output=True, text=True).stdout.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=int(env.get("RUNS", 3)), help="rounds (env RUNS; default 3)")
    ap.add_argument("--n", type=int, default=int(env.get("N", 100_000)), help="readings per live run (env N)")
    ap.add_argument("--n-backlog", type=int, default=int(env.get("N_BACKLOG", 200_000)),
                    help="readings per backlog run (env N_BACKLOG)")
    ap.add_argument("--peers", default=env.get("PEERS", DEFAULT_PEERS), help="harness peers on its broker")
    ap.add_argument("--default-inflight-peers", default=DEFAULT_INFLIGHT_PEERS,
                    help="peers run again on a broker at max_inflight_messages 20 ('' = none)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="N of the backlog-sanitel-workers row (0 = leave it out; default: the number of cores)")
    ap.add_argument("--harness", type=Path, default=HARNESS)
    ap.add_argument("--workdir", type=Path, default=Path(env.get("TMPDIR", "/tmp")) / "sanitel-bench-peers")
    ap.add_argument("--sanitel-bin", type=Path, default=ROOT / ".venv" / "bin" / "sanitel")
    ap.add_argument("--python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    ap.add_argument("--json", type=Path, help="also write the rows, the raw lines and the conditions here")
    ap.add_argument("--from-raw", type=Path, help="no measuring: build the table from lines merged by an earlier run")
    return ap.parse_args(argv)


def measure(a: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """All rounds; returns the merged lines, notes for the table, and the conditions."""
    notes: list[str] = []
    password = ensure_database(a.sanitel_bin)
    register_harness_fleet(a.sanitel_bin, password)
    sync_harness(a.harness, a.workdir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    env = {**os.environ, "PY": str(a.python), "SANITEL_BIN": str(a.sanitel_bin), "N": str(a.n),
           "N_BACKLOG": str(a.n_backlog)}
    if password:
        env["PGPASSWORD"] = password
    workers = max(a.workers, 0)
    # `collector` alone starts one process per core: the one-collector rows (and each of the x2 pair) pin 1
    env["SANITEL_BIN"] = str(workers_wrapper(a.workdir, a.sanitel_bin, 1))
    notes.append("One-collector rows (and each collector of the x2 pair) run `sanitel collector --workers 1`: "
                 "without it the collector starts one worker process per core.")
    conditions: dict[str, Any] = {
        "command": " ".join(sys.argv), "runs": a.runs, "n": a.n, "n_backlog": a.n_backlog, "peers": a.peers,
        "default_inflight_peers": a.default_inflight_peers, "workers": workers, "harness": str(a.harness),
        "git_head": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                   text=True).stdout.strip(),
        "git_diff_stat_at_start": git_diff_stat(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    lines: list[dict[str, Any]] = []
    scratch = a.workdir / "results" / f"round-{stamp}.jsonl"
    for r in range(1, a.runs + 1):
        log(f"round {r} of {a.runs}")
        set_inflight(a.workdir, 0)
        lines += [annotate(ln, r, DEFAULT_BROKER) for ln in run_harness(a.workdir, a.peers, scratch, env)]
        if workers:
            wenv = {**env, "SANITEL_BIN": str(workers_wrapper(a.workdir, a.sanitel_bin, workers))}
            lines += [annotate(ln, r, DEFAULT_BROKER, WORKERS_NAME)
                      for ln in run_harness(a.workdir, "backlog-sanitel", scratch, wenv)]
        if a.default_inflight_peers.strip():
            set_inflight(a.workdir, 20)
            try:
                lines += [annotate(ln, r, DEFAULT_INFLIGHT_BROKER)
                          for ln in run_harness(a.workdir, a.default_inflight_peers, scratch, env)]
            finally:
                set_inflight(a.workdir, 0)
    if workers:
        notes.append(f"`collector --workers {workers}`: run by the harness unchanged, with SANITEL_BIN set to a "
                     "wrapper that adds `--workers`; the harness clears only the MQTT session `sanitel-collector-1` "
                     "afterwards, so each round restarts its broker.")
    conditions.update(git_diff_stat_at_end=git_diff_stat(), loadavg_at_end=Path("/proc/loadavg").read_text().split()[:3],
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    merged = a.workdir / "results" / f"peers-{stamp}.jsonl"
    merged.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    notes_file(merged).write_text(json.dumps(notes, indent=1) + "\n")
    conditions["raw"] = str(merged)
    log(f"merged lines: {merged}")
    return lines, notes, conditions


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_raw:
        lines = [json.loads(ln) for ln in a.from_raw.read_text().splitlines() if ln.strip()]
        saved = notes_file(a.from_raw)
        notes: list[str] = json.loads(saved.read_text()) if saved.exists() else []
        conditions: dict[str, Any] = {"raw": str(a.from_raw)}
    else:
        lines, notes, conditions = measure(a)
    busy = [ln["machine_busy_cores"] for ln in lines
            if ln.get("machine_busy_cores") is not None and ln.get("status") == "complete"]
    if busy:
        notes.append(f"Machine busy while measuring: {min(busy):.2f}–{max(busy):.2f} of {os.cpu_count()} cores "
                     "(harness's machine_busy_cores, all processes).")
    rows = build_rows(lines)
    print(render_markdown(rows, notes), end="")
    if a.json:
        a.json.write_text(json.dumps({"conditions": conditions, "rows": rows_as_json(rows), "notes": notes,
                                      "raw": lines}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
