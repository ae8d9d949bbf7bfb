"""``sanitel collector --workers N``: N collector processes on one MQTT 5 shared subscription, from one command.

Why processes: one collector is limited by one GIL shared by paho's network thread and the writer thread (issue
16); N processes use N cores. Each worker is today's single collector (``--workers 1``) started as a child of this
supervisor, with
- its own client id and persistent session: worker 1 keeps the configured ``collector_client_id`` (so a switch
  from one process to N keeps the session that holds the backlog), worker k ≥ 2 uses ``<client id>-w<k>``; ids
  must stay stable because the broker routes a shared subscription's messages to offline sessions too (Mosquitto
  2.0 queues them round-robin), so each session's share is drained only by the worker with that id;
- one shared subscription ``$share/<group>/…`` (MQTT 5 §4.8.2): ``collector_share_group`` or, when settings name
  none, ``sanitel-collectors``;
- its own database connection, spool folder (the spool is per client id) and heartbeat instance;
- its own Prometheus port: ``collector_metrics_port`` for worker 1, the next free ones upward for the others,
  skipping every other port the settings give a sanitel service (the evaluator's 9109 is the collector's
  9108 + 1: ``sanitel run`` on two cores crash-looped worker 2 on it); none when the port is 0. The simplest correct
  choice: each worker's metrics are its own process's, so no cross-process aggregation can be wrong; Prometheus
  scrapes N targets and sums them.

Supervision: a worker that exits is restarted (after 1 s, doubling to 30 s while it keeps dying young), because its
session keeps receiving its share of messages while nobody drains it. A worker that dies within
``_YOUNG_S`` seconds of its start ``_CRASH_LOOP`` times in a row is a configuration or schema problem a restart
will not fix: then every worker is stopped and the command exits 1. SIGTERM/SIGINT: every worker gets SIGTERM
(each flushes, acknowledges what committed and disconnects), the supervisor waits for them and exits 0. A worker
whose supervisor is gone (killed with SIGKILL) stops by itself (``--supervisor-pid``), so no orphan keeps a
client id a new supervisor's worker would fight over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sanitel.ingest.collector import WORKERS_SHARE_GROUP
from sanitel.settings import Settings

log = logging.getLogger("sanitel.collector.workers")

_POLL_S = 0.5  # how often the supervisor looks at its workers
_YOUNG_S = 10.0  # a worker that exits sooner than this after its start died young
_CRASH_LOOP = 5  # this many young deaths in a row: stop everything, exit 1
_BACKOFF_MAX_S = 30.0
_STOP_TIMEOUT_S = 60.0  # a worker's own stop waits up to 30 s for its writer; then SIGKILL


def default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int  # 1-based
    client_id: str
    share_group: str
    metrics_port: int  # 0: none

    def argv(self, supervisor_pid: int) -> list[str]:
        return [sys.executable, "-m", "sanitel.cli", "collector", "--workers", "1", "--client-id", self.client_id,
                "--share-group", self.share_group, "--metrics-port", str(self.metrics_port),
                "--supervisor-pid", str(supervisor_pid)]


def worker_specs(settings: Settings, n: int) -> list[WorkerSpec]:
    base = settings.collector_client_id
    group = settings.collector_share_group or WORKERS_SHARE_GROUP
    ports = worker_metrics_ports(settings, n)
    return [WorkerSpec(k, base if k == 1 else f"{base}-w{k}", group, ports[k - 1]) for k in range(1, n + 1)]


def worker_metrics_ports(settings: Settings, n: int) -> list[int]:
    """Worker k's Prometheus port: the configured one for worker 1, then upward past the ports the settings give
    other services (all 0 when the collector serves none)."""
    first = settings.collector_metrics_port
    if not first:
        return [0] * n
    taken = {settings.evaluator_metrics_port, settings.api_metrics_port, settings.api_port, settings.pg_port,
             settings.mqtt_port, settings.mqtt_tls_port}
    ports, port = [first], first + 1
    while len(ports) < n:
        if port not in taken:
            ports.append(port)
        port += 1
    return ports


class Child(Protocol):
    """What the supervisor needs of a worker process: ``subprocess.Popen`` in service, a fake in unit tests."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


def spawn_worker(spec: WorkerSpec) -> Child:
    return subprocess.Popen(spec.argv(os.getpid()), stdin=subprocess.DEVNULL)


@dataclass
class _Slot:
    spec: WorkerSpec
    child: Child | None = None
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, specs: Sequence[WorkerSpec], spawn: Callable[[WorkerSpec], Child] = spawn_worker,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._slots = [_Slot(spec) for spec in specs]
        self._spawn = spawn
        self._monotonic = monotonic
        self.stopping = threading.Event()

    def run(self) -> int:
        """Start every worker, keep them running until ``stopping`` is set, then stop them. 0, or 1 after a crash
        loop."""
        for slot in self._slots:
            self._start(slot)
        log.info("started %d collector workers on $share/%s/…: %s", len(self._slots),
                 self._slots[0].spec.share_group, ", ".join(s.spec.client_id for s in self._slots))
        code = 0
        while not self.stopping.wait(_POLL_S):
            if not self.check():
                code = 1
                break
        self.stop_all()
        return code

    def check(self) -> bool:
        """One look at the workers: restart the dead (when due). False when one is in a crash loop."""
        now = self._monotonic()
        for slot in self._slots:
            if slot.child is not None and (rc := slot.child.poll()) is not None and not self._died(slot, rc, now):
                return False
            if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        return True

    def _died(self, slot: _Slot, rc: int, now: float) -> bool:
        slot.child = None
        slot.young_deaths = slot.young_deaths + 1 if now - slot.started < _YOUNG_S else 1
        if slot.young_deaths >= _CRASH_LOOP:
            log.error("collector worker %s exited %d times in a row within %.0f s of starting (last exit code %d): "
                      "not a crash a restart fixes (settings, schema or credentials?); stopping all workers",
                      slot.spec.client_id, slot.young_deaths, _YOUNG_S, rc)
            return False
        delay = min(_BACKOFF_MAX_S, 2.0 ** (slot.young_deaths - 1))
        slot.restart_at = now + delay
        log.warning("collector worker %s exited with code %d; restarting it in %.0f s (its session keeps receiving "
                    "its share of the shared subscription meanwhile)", slot.spec.client_id, rc, delay)
        return True

    def _start(self, slot: _Slot) -> None:
        slot.child = self._spawn(slot.spec)
        slot.started = self._monotonic()
        slot.restart_at = None

    def stop_all(self) -> None:
        """SIGTERM to every worker, then wait for each (SIGKILL after ``_STOP_TIMEOUT_S``)."""
        live = [slot.child for slot in self._slots if slot.child is not None and slot.child.poll() is None]
        for child in live:
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                child.send_signal(signal.SIGTERM)
        for child in live:
            try:
                child.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("collector worker %d did not stop in %.0f s; killing it (its unacknowledged messages stay "
                          "with the broker)", child.pid, _STOP_TIMEOUT_S)
                child.kill()
                child.wait()
        for slot in self._slots:
            slot.child = None
