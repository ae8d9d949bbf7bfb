"""Ingest benchmark: prints figures; it asserts nothing (targets are checked by reading its output).

It starts its own PostgreSQL+TimescaleDB (fsync on) and Mosquitto in a temp dir, a real `sanitel collector`
process, and publishes from separate processes at QoS 1. Measured in one run on the same machine:

  raw receive   paho subscriber + msgspec decode, no database (drain of a queued backlog)
  raw COPY      binary COPY of the same rows into the hypertable, no MQTT
  sustained     first publish → last row committed, publisher running flat out
  paced         2,500 readings/s (reference city peak): p50/p99 publish→commit, collector RSS
  drain         N queued while the collector is stopped, time to catch up; 1 and 2 collectors
  breakdown     decode and write cost per reading (cProfile-free: timed stages)

    .venv/bin/python bench/ingest/run.py [--n 100000] [--paced-seconds 20]

Poison (issue 11: one message must never stall ingestion): ``--poison-every N`` measures only the sustained
rate, clean and with 1 message in every N replaced by a poison message (rotating through the hostile cases of
tests/integration/test_hostile_input.py: year-0001 ts, JSON nested 10,000 deep, NUL in a gateway item's
device_id, a 6-level topic, an HJ 212 frame with DataTime 00010101000000, a NUL-padded text field), alternating
clean and poisoned runs ``--repeats`` times, and prints the ratio of the medians (target: within 10 %):

    .venv/bin/python bench/ingest/run.py --n 100000 --poison-every 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import msgspec
import paho.mqtt.client as mqtt
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sanitel.db import apply_migrations, one_row  # noqa: E402
from sanitel.ingest.buffered_client import BufferedClient  # noqa: E402
from sanitel.ingest.decode import decode_message  # noqa: E402
from sanitel.mqtt_wire import BrokerTarget  # noqa: E402
from sanitel.processors.writer import Message, ReadingWriter  # noqa: E402
from sanitel.schemas.readings import SweeperTelemetry, table_columns  # noqa: E402
from sanitel.servers import MosquittoServer, PostgresServer, free_port  # noqa: E402
from sanitel.simulators.publisher import FastPublisher  # noqa: E402

DEVICES = 1500


def payload(seq: int, pub_us: int) -> bytes:
    return json.dumps({"ts": pub_us // 1000, "seq": seq, "soc_pct": 40 + seq % 60, "lat": 22.54, "lon": 114.05,
                       "speed_kmh": 11.5, "work_mode": "sweep", "battery_temp_max_c": 31.0, "hopper_fill_pct": 42}).encode()


def topic(seq: int) -> str:
    return f"sanitation/shenzhen/sweeper/sw-{seq % DEVICES:04d}/telemetry"


# Poison messages (--poison-every): (name, sweeper rows it must add, dead letters it must add). Each one is
# a case of issue 11 that once stalled the collector or was lost; the NUL-padded reading must land.
POISONS: tuple[tuple[str, int, int], ...] = (
    ("year_0001_ts", 0, 1),
    ("json_10000_deep", 0, 1),
    ("gateway_nul_device_id", 1, 1),  # the batch's other reading lands
    ("six_level_topic", 0, 1),
    ("hj212_data_time_year_1", 0, 1),
    ("nul_padded_text", 1, 0),
)
_DEEP = b"[" * 10_000 + b"]" * 10_000


def poison(k: int, seq: int, pub_us: int) -> tuple[str, bytes]:
    """The k-th poison message (rotating through POISONS). Each is unique (its seq is in it): the collector stores a
    redelivered dead letter once, so identical poison messages would count as one."""
    from sanitel.schemas.hj212 import encode_frame

    name = POISONS[k % len(POISONS)][0]
    device = f"sw-{seq % DEVICES:04d}"
    ms = pub_us // 1000
    if name == "year_0001_ts":
        return topic(seq), b'{"ts":"0001-01-01T00:00:00+01:00","seq":%d}' % seq
    if name == "json_10000_deep":
        return topic(seq), b'{"seq":%d,"deep":' % seq + _DEEP + b"}"
    if name == "gateway_nul_device_id":
        items = [{"kind": "sweeper", "device_id": "gw-sw-\u0000bad", "ts": ms, "seq": seq},
                 {"kind": "sweeper", "device_id": device, "ts": ms, "seq": seq, "soc_pct": 50}]
        return "sanitation/shenzhen/gateway/gw-poison/batch", json.dumps({"readings": items}).encode()
    if name == "six_level_topic":
        return topic(seq) + "/extra", payload(seq, pub_us)
    if name == "hj212_data_time_year_1":
        cp = "DataTime=00010101000000;a21002-Rtd=50.0,a21002-Flag=N"
        return "sanitation/shenzhen/cems/MNPOISON/hj212", encode_frame("31", "2011", "MNPOISON", "123456", cp,
                                                                       qn=f"{seq:017d}")
    body = json.loads(payload(seq, pub_us))
    return topic(seq), json.dumps({**body, "fw": "2.1\u0000\u0000\u0000"}).encode()


def poison_plan(n: int, every: int) -> tuple[int, int, int]:
    """(poison messages, sweeper rows, dead letters) that n messages with 1 poison in every ``every`` must give."""
    k_total = n // every if every else 0
    rows = n - k_total + sum(POISONS[k % len(POISONS)][1] for k in range(k_total))
    dead = sum(POISONS[k % len(POISONS)][2] for k in range(k_total))
    return k_total, rows, dead


def publisher(port: int, start: int, n: int, rate: float | None, done: mp.Queue[tuple[float, float]],
              poison_every: int = 0) -> None:
    """Publish seq start..start+n at QoS 1 (optionally paced) and report when all PUBACKs arrived.

    Uses the simulators' lean MQTT 3.1.1 publisher: paho's own publish path tops out near the collector's
    rate on this machine, and the publisher must not be what is measured."""
    target = BrokerTarget.parse(f"mqtt://127.0.0.1:{port}")
    with FastPublisher(target) as pub:
        t0 = time.perf_counter()
        for i in range(n):
            if rate:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    pub.idle(delay)
            seq = start + i
            if poison_every and (i + 1) % poison_every == 0:
                pub.publish(*poison(i // poison_every, seq, time.time_ns() // 1000))
                continue
            pub.publish(topic(seq), payload(seq, time.time_ns() // 1000))
            if rate:
                pub.service(0.0)  # paced: send now, not when the write buffer fills
        pub.flush(600)
        done.put((t0, time.perf_counter()))


def publish_procs(port: int, n: int, procs: int = 1, rate: float | None = None, start: int = 0,
                  poison_every: int = 0) -> list[mp.Process]:
    done: mp.Queue[tuple[float, float]] = mp.Queue()
    per = n // procs
    out = []
    for k in range(procs):
        p = mp.Process(target=publisher, args=(port, start + k * per, per if k < procs - 1 else n - per * k,
                                               rate / procs if rate else None, done, poison_every))
        p.start()
        out.append(p)
    return out


class CollectorProc:
    def __init__(self, pg: PostgresServer, mq: MosquittoServer, data: Path, client_id: str, share: str | None = None):
        env = {**os.environ, "SANITEL_DATABASE_URL": pg.url, "SANITEL_MQTT_URL": mq.url, "SANITEL_DATA_DIR": str(data),
               "SANITEL_COLLECTOR_CLIENT_ID": client_id, "SANITEL_COLLECTOR_METRICS_PORT": "0"}
        if share:
            env["SANITEL_COLLECTOR_SHARE_GROUP"] = share
        # one process per CollectorProc: its CPU and RSS are what is measured (two collectors: two of these)
        self.proc = subprocess.Popen([sys.executable, "-m", "sanitel.cli", "collector", "--workers", "1"], env=env,
                                     cwd=ROOT,
                                     stderr=open(data / f"{client_id}.log", "ab"))  # noqa: SIM115
        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def rows(url: str) -> int:
    with psycopg.connect(url) as c:
        return one_row(c.execute("SELECT count(*) FROM sweeper_telemetry"))[0]


def wait_rows(url: str, n: int, timeout: float = 600, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            if one_row(c.execute("SELECT count(*) FROM sweeper_telemetry"))[0] >= n:
                return time.perf_counter()
            time.sleep(interval)
    raise TimeoutError(f"{n} rows did not land in {timeout} s")


def register_devices(url: str) -> None:
    """The fleet the publisher speaks for, registered as an operator would: an unknown device is auto-registered at
    most 60 a minute (issue 12), and the readings of the rest are dead-lettered, not measured."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("INSERT INTO devices (device_id, kind) SELECT 'sw-' || lpad(i::text, 4, '0'), 'sweeper'"
                  " FROM generate_series(0, %s - 1) i ON CONFLICT DO NOTHING", (DEVICES,))


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE sweeper_telemetry, device_last_seen, dead_letters, dead_letter_payloads")


def wait_ready(pg: PostgresServer, client_id: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(pg.url, autocommit=True) as c:
        while time.monotonic() < deadline:
            if one_row(c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                 (f"sanitel {client_id}",)))[0]:
                time.sleep(1.0)  # connected to the database; give MQTT its SUBACK
                return
            time.sleep(0.1)
    raise TimeoutError("collector did not start")


# ---------------------------------------------------------------------------------------------
def raw_receive(mq: MosquittoServer, n: int, lean: bool = False) -> float:
    """paho + msgspec decode, no database: drain n queued messages (readings/s). ``lean``: the collector's
    own receive path (BufferedClient, manual acks sent per 1,000) instead of stock paho with auto-ack."""
    decoder = msgspec.json.Decoder()
    got = [0]
    first = [0.0]
    finished = threading.Event()

    pending: list[int] = []

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        decoder.decode(msg.payload)
        if lean:
            pending.append(msg.mid)
            if len(pending) >= 1000:
                cast(BufferedClient, c).ack_many(pending)  # lean: the client is a BufferedClient
                pending.clear()
        if got[0] == 0:
            first[0] = time.perf_counter()
        got[0] += 1
        if got[0] >= n:
            finished.set()

    def client() -> mqtt.Client:
        cls = BufferedClient if lean else mqtt.Client
        c = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-receiver-{lean}", protocol=mqtt.MQTTv5,
                manual_ack=lean)
        c.on_message = on_message
        return c

    c = client()
    c.connect("127.0.0.1", mq.port, clean_start=False, properties=_session())
    c.loop_start()
    c.subscribe("sanitation/+/+/+/+", qos=1)
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    for p in publish_procs(mq.port, n):
        p.join()
    c = client()
    t0 = time.perf_counter()
    c.connect("127.0.0.1", mq.port, clean_start=False, properties=_session())
    c.loop_start()
    finished.wait(300)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return got[0] / elapsed


def _session() -> mqtt.Properties:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


def raw_copy(url: str, n: int) -> float:
    """Binary COPY of the same rows straight into the hypertable (readings/s)."""
    reset(url)
    now = datetime.now(UTC)
    decoded = [decode_message(topic(i), payload(i, time.time_ns() // 1000), now).rows[0].values for i in range(n)]
    cols = table_columns(SweeperTelemetry)
    with psycopg.connect(url) as c:
        types: dict[str, int] = dict(c.execute("SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = "
                               "'sweeper_telemetry'::regclass AND attnum > 0").fetchall())
        t0 = time.perf_counter()
        with c.cursor() as cur, cur.copy(f"COPY sweeper_telemetry ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types([types[x] for x in cols])
            for row in decoded:
                cp.write_row((*row[:-1], psycopg.types.json.Jsonb(row[-1])))
        c.commit()
        return n / (time.perf_counter() - t0)


def breakdown(url: str, n: int) -> dict[str, float]:
    """Per-reading cost of our two stages, on this core: decode+validate, and write (COPY+merge+commit)."""
    reset(url)
    now = datetime.now(UTC)
    raw = [(topic(i), payload(i, time.time_ns() // 1000)) for i in range(n)]
    t0 = time.perf_counter()
    messages = [Message(t, p, now, decode_message(t, p, now)) for t, p in raw]
    decode_us = (time.perf_counter() - t0) / n * 1e6
    writer = ReadingWriter(url, collector_id="bench", auto_register=True)
    t0 = time.perf_counter()
    for i in range(0, n, 5000):
        writer.write(messages[i:i + 5000])
    write_us = (time.perf_counter() - t0) / n * 1e6
    writer.close()
    return {"decode_us": decode_us, "write_us": write_us}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--paced-seconds", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2500)
    ap.add_argument("--poison-every", type=int, default=0, metavar="N",
                    help="only the sustained rate: clean vs 1 poison message in every N (see the docstring)")
    ap.add_argument("--repeats", type=int, default=3, help="with --poison-every: clean/poisoned run pairs")
    ap.add_argument("--poison-timeout", type=float, default=300,
                    help="with --poison-every: seconds a run may take before it is reported as stalled")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sanitel-bench-"))
    tmp.chmod(0o755)
    pg = PostgresServer(tmp / "pg", free_port())
    mq = MosquittoServer(tmp / "mqtt", free_port())
    pg.start()
    mq.start()
    apply_migrations(pg.url)
    register_devices(pg.url)
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; n = {args.n}")
    results: dict[str, object] = {}
    if args.poison_every:
        try:
            return poison_comparison(pg, mq, tmp, args.n, args.poison_every, args.repeats, args.poison_timeout)
        finally:
            mq.stop()
            pg.stop()
    try:
        results["raw_receive_per_s"] = raw_receive(mq, args.n)
        print(f"raw receive (paho + msgspec decode, no DB):   {results['raw_receive_per_s']:>9,.0f} readings/s")
        results["lean_receive_per_s"] = raw_receive(mq, args.n, lean=True)
        print(f"our receive path (BufferedClient + decode, no DB): {results['lean_receive_per_s']:>9,.0f} readings/s")
        results["raw_copy_per_s"] = raw_copy(pg.url, args.n)
        print(f"raw binary COPY (no MQTT):                    {results['raw_copy_per_s']:>9,.0f} readings/s")
        stages = breakdown(pg.url, min(args.n, 50_000))
        print(f"our stages per reading: decode+validate {stages['decode_us']:.1f} µs, "
              f"write (COPY, last-seen, commit) {stages['write_us']:.1f} µs")

        # sustained, flat out
        reset(pg.url)
        col = CollectorProc(pg, mq, tmp, "bench-1")
        wait_ready(pg, "bench-1")
        cpu0 = col.cpu_s()
        t_first = time.perf_counter()
        procs = publish_procs(mq.port, args.n)
        t_last = wait_rows(pg.url, args.n)
        for p in procs:
            p.join()
        sustained = args.n / (t_last - t_first)
        print(f"sustained end-to-end (first publish → last commit): {sustained:,.0f} readings/s "
              f"= {sustained / results['raw_receive_per_s']:.0%} of raw receive "
              f"({sustained / results['lean_receive_per_s']:.0%} of our own receive path), "
              f"{sustained / results['raw_copy_per_s']:.0%} of raw COPY; collector CPU {col.cpu_s() - cpu0:.1f} s, "
              f"peak RSS {col.peak_rss / 2**20:.0f} MiB")

        # paced at the reference city's peak
        reset(pg.url)
        col.peak_rss = 0
        n_paced = int(args.rate * args.paced_seconds)
        latencies = paced_latencies(pg.url, mq, n_paced, args.rate, start=10_000_000)
        lat_ms = sorted(latencies)
        p50 = lat_ms[len(lat_ms) // 2]
        p99 = lat_ms[int(len(lat_ms) * 0.99) - 1]
        print(f"paced {args.rate:,.0f} readings/s for {args.paced_seconds} s: publish→commit p50 {p50:.0f} ms, "
              f"p99 {p99:.0f} ms (poll granularity 20 ms); collector peak RSS {col.peak_rss / 2**20:.0f} MiB")
        col.stop()

        # backlog drain: one collector, then two on a shared subscription
        for n_collectors in (1, 2):
            reset(pg.url)
            ids = [f"drain{n_collectors}-{k}" for k in range(n_collectors)]
            share = "bench" if n_collectors > 1 else None
            cols = [CollectorProc(pg, mq, tmp, i, share) for i in ids]
            for i in ids:
                wait_ready(pg, i)
            for c in cols:
                c.stop()
            for p in publish_procs(mq.port, args.n, start=20_000_000):
                p.join()
            t0 = time.perf_counter()
            cols = [CollectorProc(pg, mq, tmp, i, share) for i in ids]
            t1 = wait_rows(pg.url, args.n)
            rate = args.n / (t1 - t0)
            print(f"backlog drain, {n_collectors} collector(s): {rate:,.0f} readings/s "
                  f"(includes process start-up; {args.n:,} queued)")
            for c in cols:
                c.stop()
    finally:
        mq.stop()
        pg.stop()
    return 0


def wait_rows_and_dead(url: str, rows_n: int, dead_n: int, timeout: float) -> tuple[float | None, int, int]:
    """Time when ``rows_n`` sweeper rows and ``dead_n`` dead letters are committed (None: not within timeout),
    and the counts last seen."""
    deadline = time.monotonic() + timeout
    got_rows = got_dead = 0
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            got_rows = one_row(c.execute("SELECT count(*) FROM sweeper_telemetry"))[0]
            if got_rows >= rows_n:
                got_dead = one_row(c.execute("SELECT count(*) FROM dead_letters"))[0]
                if got_dead >= dead_n:
                    return time.perf_counter(), got_rows, got_dead
            time.sleep(0.02)
        got_dead = one_row(c.execute("SELECT count(*) FROM dead_letters"))[0]
    return None, got_rows, got_dead


def poison_comparison(pg: PostgresServer, mq: MosquittoServer, tmp: Path, n: int, every: int, repeats: int,
                      timeout: float) -> int:
    """Sustained rate (first publish → last row and dead letter committed), clean vs 1 poison in every ``every``,
    alternating; the figure is the ratio of the medians. A poisoned run that stalls is reported, not timed."""
    k_total, rows_n, dead_n = poison_plan(n, every)
    print(f"poison: 1 in every {every:,}: {k_total} poison messages among {n:,}, rotating through "
          f"{', '.join(p[0] for p in POISONS)}; expected {rows_n:,} rows and {dead_n} dead letters per poisoned run")
    col = CollectorProc(pg, mq, tmp, "bench-poison")
    wait_ready(pg, "bench-poison")
    rates: dict[str, list[float]] = {"clean": [], "poisoned": []}
    stalled = 0
    try:
        for r in range(repeats):
            for mode in ("clean", "poisoned"):
                reset(pg.url)
                want_rows, want_dead = (n, 0) if mode == "clean" else (rows_n, dead_n)
                start = 30_000_000 + (2 * r + (mode == "poisoned")) * n
                t_first = time.perf_counter()
                procs = publish_procs(mq.port, n, start=start, poison_every=every if mode == "poisoned" else 0)
                t_last, got_rows, got_dead = wait_rows_and_dead(pg.url, want_rows, want_dead, timeout)
                for p in procs:
                    p.join()
                if t_last is None:
                    stalled += 1
                    print(f"  run {r + 1} {mode}: did NOT complete within {timeout:.0f} s: {got_rows:,} of "
                          f"{want_rows:,} rows, {got_dead} of {want_dead} dead letters (stalled or lost)")
                    continue
                rate = n / (t_last - t_first)
                rates[mode].append(rate)
                print(f"  run {r + 1} {mode}: {rate:,.0f} messages/s ({got_rows:,} rows, {got_dead} dead letters)")
        alive = col.proc.poll() is None
    finally:
        col.stop()
    if not rates["clean"] or not rates["poisoned"]:
        print(f"poison figure: not measurable ({stalled} run(s) did not complete); collector alive: {alive}")
        return 1
    clean = sorted(rates["clean"])[len(rates["clean"]) // 2]
    poisoned = sorted(rates["poisoned"])[len(rates["poisoned"]) // 2]
    ratio = poisoned / clean
    print(f"sustained, median of {repeats}: clean {clean:,.0f} /s, 1 poison in {every:,}: {poisoned:,.0f} /s "
          f"= {ratio:.1%} of clean ({'within' if ratio >= 0.9 else 'NOT within'} 10 %); "
          f"{stalled} run(s) stalled; collector alive at the end: {alive}")
    return 0 if ratio >= 0.9 and not stalled else 1


def paced_latencies(url: str, mq: MosquittoServer, n: int, rate: float, start: int) -> list[float]:
    """Poll newly committed rows every 20 ms; latency = first seen − publish time (the reading's ts, in ms)."""
    procs = publish_procs(mq.port, n, procs=1, rate=rate, start=start)
    latencies: list[float] = []
    last = start - 1
    deadline = time.monotonic() + n / rate + 60
    with psycopg.connect(url, autocommit=True) as c:
        while len(latencies) < n and time.monotonic() < deadline:
            seen_us = time.time_ns() // 1000
            got = c.execute("SELECT seq, (extract(epoch FROM ts) * 1e6)::bigint FROM sweeper_telemetry WHERE seq > %s "
                            "ORDER BY seq", (last,)).fetchall()
            for _seq, pub_us in got:
                latencies.append((seen_us - pub_us) / 1000)
            if got:
                last = got[-1][0]
            time.sleep(0.02)
    for p in procs:
        p.join()
    return latencies or [float("nan")]


if __name__ == "__main__":
    mp.set_start_method("fork")
    sys.exit(main())
