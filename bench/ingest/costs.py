"""Two costs per reading that the side-by-side (bench/ingest/peers.py) cannot resolve on a noisy 2-core machine.

    .venv/bin/python bench/ingest/costs.py decode        # instructions a message, decode stage, by callgrind
    .venv/bin/python bench/ingest/costs.py time-index    # PostgreSQL CPU a row with and without a (ts DESC) index

``decode``: the collector's writer-thread work per message before the database — ``decode_message``, the writer's
``Message`` and its per-reading ``_Item`` — over the peer harness's sanitel-format sweeper messages, counted by
``valgrind --tool=callgrind`` (instructions, not seconds: the same count whatever else the machine does). It runs
this script under callgrind twice, for 2,000 and 10,000 messages with cyclic GC off, and prints the difference
divided by 8,000: the cost at the margin, start-up excluded.

``time-index``: a writer-only run (``ReadingWriter.write``, batches of 5,000, no MQTT) of 200,000 harness readings
into sweeper_telemetry of its own PostgreSQL+TimescaleDB (a temp folder, fsync on), alternating runs with
TimescaleDB's default ``(ts DESC)`` index created again and without it (migration 0088 drops it), and prints the
database backend's CPU (psutil) per row for each run.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(os.environ.get("SANITEL_BENCH_PEERS", ROOT.parent / "shared" / "bench-peers"))
NOW = datetime(2026, 12, 1, tzinfo=UTC)  # receive time: after every harness reading's device time
BASE = "2026-11-28T00:00:00Z"  # the harness messages' first device time
DECODE_COUNTS = (2000, 10000)


def harness_messages(n: int) -> list[tuple[str, bytes]]:
    """The peer harness's own sanitel-format sweeper messages (publish.py), as it publishes them."""
    sys.path.insert(0, str(HARNESS))
    from publish import build_messages  # type: ignore[import-not-found]  # the harness is not a package

    return list(build_messages("sanitel", n, 1500, BASE))


def decode_stage(n: int) -> None:
    """What the writer thread does per message before the database: run under callgrind by ``decode``."""
    from sanitel.ingest.decode import decode_message
    from sanitel.processors.writer import Message, _Item

    gc.disable()
    messages = [Message(t, p, NOW, decode_message(t, p, NOW)) for t, p in harness_messages(DECODE_COUNTS[-1])[:n]]
    items = [_Item(i, row) for i, m in enumerate(messages) for row in m.decoded.rows]
    assert len(items) == n  # every message one valid reading


def decode_instructions() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    counts = []
    for n in DECODE_COUNTS:
        with tempfile.TemporaryDirectory() as folder:
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
                                   sys.executable, __file__, "decode-stage", str(n)],
                                  capture_output=True, text=True, check=True)
        refs = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        assert refs is not None, done.stderr[-2000:]
        counts.append(int(refs.group(1).replace(",", "")))
        print(f"{n:>6} messages: {counts[-1]:,} instructions", flush=True)
    marginal = (counts[1] - counts[0]) / (DECODE_COUNTS[1] - DECODE_COUNTS[0])
    print(f"decode stage: {marginal:,.0f} instructions a message")


def backend_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def time_index(rounds: int, n: int) -> None:
    from sanitel.db import apply_migrations
    from sanitel.ingest.decode import decode_message
    from sanitel.processors.writer import Message, ReadingWriter
    from sanitel.servers import PostgresServer, free_port

    messages = [Message(t, p, NOW, decode_message(t, p, NOW)) for t, p in harness_messages(n)]
    folder = Path(tempfile.mkdtemp(prefix="sanitel-bench-costs-", dir="/var/tmp"))
    folder.chmod(0o755)  # the postgres user must traverse it
    server = PostgresServer(folder / "pg", free_port())
    try:
        server.init()
        server.start()
        apply_migrations(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("INSERT INTO devices (device_id, kind) SELECT DISTINCT unnest(%s::text[]), 'sweeper'",
                         ([m.decoded.rows[0].device_id for m in messages[:1500]],))
        for r in range(1, rounds + 1):
            for indexed in (True, False):
                with psycopg.connect(server.url, autocommit=True) as conn:
                    conn.execute("TRUNCATE sweeper_telemetry")
                    conn.execute("CREATE INDEX IF NOT EXISTS sweeper_telemetry_ts_idx ON sweeper_telemetry (ts DESC)"
                                 if indexed else "DROP INDEX IF EXISTS sweeper_telemetry_ts_idx")
                    conn.execute("CHECKPOINT")
                writer = ReadingWriter(server.url, collector_id="bench-costs", auto_register=False)
                try:
                    pid = writer._connection().info.backend_pid
                    cpu, started = backend_cpu_s(pid), time.monotonic()
                    for i in range(0, len(messages), 5000):
                        writer.write(messages[i:i + 5000])
                    cpu, wall = backend_cpu_s(pid) - cpu, time.monotonic() - started
                finally:
                    writer.close()
                print(f"round {r}, (ts DESC) index {'created' if indexed else 'dropped'}: backend CPU {cpu:.2f} s, "
                      f"{cpu / n * 1e6:.2f} µs a row; {n / wall:,.0f} rows/s", flush=True)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("decode", help="instructions a message of the decode stage, by callgrind")
    stage = sub.add_parser("decode-stage", help="(run under callgrind by `decode`)")
    stage.add_argument("n", type=int)
    index = sub.add_parser("time-index", help="PostgreSQL CPU a row with and without the (ts DESC) index")
    index.add_argument("--rounds", type=int, default=4)
    index.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    if args.what == "decode":
        decode_instructions()
    elif args.what == "decode-stage":
        decode_stage(args.n)
    else:
        time_index(args.rounds, args.n)


if __name__ == "__main__":
    main()
