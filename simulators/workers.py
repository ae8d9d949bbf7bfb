"""One run over several processes: when one core cannot generate and publish a load fast enough.

Every model is a function of (seed, device id, time), so a fleet splits cleanly: worker k of n steps
every n-th model (``Simulation(shard=(k, n))``) over its own broker connection. All workers plan the
same faults from the same seed and each keeps the ground truth of its own devices; the parent merges
their progress into one line, their summaries into one summary and their ground truth into one file.
Per device, messages stay in order (one device, one worker, one connection); across devices the
interleaving differs from a single-process run — as it would between real devices.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

from sanitel.errors import SanitelError
from sanitel.simulators.run import ProgressCallback, RunOptions, SimulationSummary, simulate_shard
from sanitel.simulators.scenario import Scenario
from sanitel.simulators.truth import read_ground_truth

Snapshot = tuple[int, int, int, int, float]  # messages, readings, acked, errors, simulated time reached


def simulate_in_workers(scenario: Scenario, options: RunOptions, workers: int, *,
                        progress: ProgressCallback | None = None,
                        ground_truth_path: str | Path | None = None) -> SimulationSummary:
    # spawn, not fork: the caller may have threads (a test's subscriber, a paho loop) whose locks a forked
    # child would inherit mid-use; workers build their own fleet anyway, so a fresh interpreter costs little
    context = multiprocessing.get_context("spawn")
    snapshots: Any = context.Queue()
    results: Any = context.Queue()
    parts = [_part(ground_truth_path, k) for k in range(workers)] if ground_truth_path else [None] * workers
    processes = [context.Process(target=_work, name=f"sanitel-sim-{k + 1}",
                                 args=(scenario, _share(options, k, workers), (k, workers), parts[k],
                                       snapshots, results))
                 for k in range(workers)]
    wall_start = time.monotonic()
    for process in processes:
        process.start()
    latest: dict[int, Snapshot] = {}
    done: dict[int, SimulationSummary] = {}
    errors: list[str] = []
    try:
        while len(done) + len(errors) < workers:
            _collect(results, done, errors, timeout=0.2)
            _drain_progress(snapshots, latest)
            if progress is not None and latest:
                progress(_aggregate(scenario, options, latest, wall_start), max(s[4] for s in latest.values()))
            if len(done) + len(errors) < workers and not any(p.is_alive() for p in processes):
                _collect_after_exit(results, done, errors, workers)
    except KeyboardInterrupt:
        # stop every worker (a Ctrl-C at the terminal reached them already; a second one is ignored) and
        # let each finish cleanly: flush, wait for PUBACKs, report
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        while len(done) + len(errors) < workers and any(p.is_alive() for p in processes):
            _collect(results, done, errors, timeout=0.5)
        _collect_queued(results, done, errors, workers, timeout=0.5)
    for process in processes:
        process.join(timeout=30)
    if errors:
        raise SanitelError(errors[0] if len(errors) == 1 else "; ".join(sorted(set(errors))))
    summary = _merge(list(done.values()))
    if ground_truth_path is not None:
        summary.ground_truth_path = str(_merge_ground_truth(Path(ground_truth_path), [p for p in parts if p]))
    return summary


def _share(options: RunOptions, k: int, workers: int) -> RunOptions:
    """Worker k's part of the caps, a client id of its own and, when the URL names a user, a user of its own."""
    rate = options.rate / workers if options.rate else None
    limit = None if options.max_messages is None else math.ceil(options.max_messages / workers)
    client_id = f"{options.client_id}-{k + 1}" if options.client_id else None
    return replace(options, rate=rate, max_messages=limit, client_id=client_id,
                   broker_url=worker_broker_url(options.broker_url, k))


def worker_broker_url(url: str, k: int) -> str:
    """Worker k > 0 logs in as ``<user>-<k+1>`` with the same password: a broker that makes the user name the client
    id (``use_username_as_clientid``, as the local stack's does) would otherwise let the workers knock each other off.
    The local stack creates ``sanitel-simulator-2`` … ``-8`` beside ``sanitel-simulator`` for this."""
    parts = urlsplit(url)
    if k == 0 or not parts.username:
        return url
    user = f"{unquote(parts.username)}-{k + 1}"
    password = f":{parts.password}" if parts.password is not None else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}{password}@{host}"))


def _part(path: str | Path | None, k: int) -> Path:
    target = Path(str(path))
    return target.with_name(f"{target.name}.part{k + 1}")


def _work(scenario: Scenario, options: RunOptions, shard: tuple[int, int], truth_part: Path | None,
          snapshots: Any, results: Any) -> None:
    def report(summary: SimulationSummary, sim_t: float) -> None:
        snapshots.put((shard[0], (summary.messages, summary.readings, summary.acked, summary.errors, sim_t)))

    def stop_once(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the first interrupt stops the run; flushing goes on
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop_once)

    try:
        summary = simulate_shard(scenario, options, shard=shard, progress=report, ground_truth_path=truth_part)
        results.put((shard[0], summary, None))
    except SanitelError as exc:
        results.put((shard[0], None, str(exc)))
    except KeyboardInterrupt:
        results.put((shard[0], None, "interrupted before the run started"))


def _collect(results: Any, done: dict[int, SimulationSummary], errors: list[str], timeout: float) -> bool:
    """One worker's summary or error, if one comes within ``timeout``; whether one came."""
    try:
        k, summary, error = results.get(timeout=timeout)
    except queue.Empty:
        return False
    if error is not None:
        errors.append(error)
    else:
        done[k] = summary
    return True


def _collect_queued(results: Any, done: dict[int, SimulationSummary], errors: list[str], workers: int,
                    timeout: float) -> None:
    """Every worker has exited: read every summary still queued — several may be, when the workers ended together —
    until each worker is heard of or none comes within ``timeout``."""
    while len(done) + len(errors) < workers and _collect(results, done, errors, timeout=timeout):
        pass


def _collect_after_exit(results: Any, done: dict[int, SimulationSummary], errors: list[str], workers: int) -> None:
    """Every worker has exited: read what they left (reading only one summary made a clean run fail, "a worker process
    died without a summary", on a slow machine), then count each worker still unheard of as died."""
    _collect_queued(results, done, errors, workers, timeout=1.0)
    errors.extend("a worker process died without a summary" for _ in range(workers - len(done) - len(errors)))


def _drain_progress(snapshots: Any, latest: dict[int, Snapshot]) -> None:
    while True:
        try:
            k, snapshot = snapshots.get_nowait()
        except queue.Empty:
            return
        latest[k] = snapshot


def _aggregate(scenario: Scenario, options: RunOptions, latest: dict[int, Snapshot],
               wall_start: float) -> SimulationSummary:
    summary = SimulationSummary(scenario.name, options.seed, options.start, sum(scenario.device_counts().values()))
    summary.messages = sum(s[0] for s in latest.values())
    summary.readings = sum(s[1] for s in latest.values())
    summary.acked = sum(s[2] for s in latest.values())
    summary.errors = sum(s[3] for s in latest.values())
    summary.elapsed_s = time.monotonic() - wall_start
    return summary


def _merge(parts: list[SimulationSummary]) -> SimulationSummary:
    """One summary; elapsed is the longest worker's publishing time (building fleets is not counted,
    as in a single-process run)."""
    first = parts[0]
    merged = SimulationSummary(first.scenario, first.seed, first.start, sum(p.devices for p in parts),
                               broker=first.broker)
    merged.end = max((p.end for p in parts if math.isfinite(p.end)), default=math.nan)
    for p in parts:
        merged.messages += p.messages
        merged.readings += p.readings
        merged.bytes += p.bytes
        merged.by_kind.update(p.by_kind)
        merged.acked += p.acked
        merged.errors += p.errors
        merged.reconnects += p.reconnects
        merged.interrupted |= p.interrupted
        merged.refused.update(p.refused)
    faults: Counter[str] = Counter()
    for p in parts:
        faults.update(p.faults)
    merged.faults = dict(faults)
    merged.elapsed_s = max(p.elapsed_s for p in parts)
    return merged


def _merge_ground_truth(path: Path, parts: list[Path]) -> Path:
    records = [r for part in parts if part.exists() for r in read_ground_truth(part)]
    records.sort(key=lambda r: (r["start"], r["device_id"], r["fault"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    with open(path, "wb") as fh:
        for record in records:
            fh.write(encoder.encode(record) + b"\n")
    for part in parts:
        part.unlink(missing_ok=True)
    return path
