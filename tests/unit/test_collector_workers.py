"""``sanitel collector --workers N``'s supervisor with fake worker processes and a clock moved by hand: worker ids,
ports and group; a dead worker is restarted with backoff; a crash loop stops everything with exit 1; stop
signals every worker and waits for it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from sanitel.ingest.collector import WORKERS_SHARE_GROUP
from sanitel.ingest.workers import Supervisor, WorkerSpec, worker_specs
from sanitel.settings import load_settings


class FakeChild:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.ignores_sigterm = False
        self.killed = False

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.ignores_sigterm:
            self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Spawner:
    def __init__(self) -> None:
        self.started: list[tuple[str, FakeChild]] = []

    def __call__(self, spec: WorkerSpec) -> FakeChild:
        child = FakeChild(1000 + len(self.started))
        self.started.append((spec.client_id, child))
        return child

    def latest(self, client_id: str) -> FakeChild:
        return [c for cid, c in self.started if cid == client_id][-1]


def specs(n: int = 2) -> list[WorkerSpec]:
    return [WorkerSpec(k, f"c-{k}", "g", 0) for k in range(1, n + 1)]


def test_worker_ids_ports_and_group(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, collector_client_id="col", collector_metrics_port=9108)
    got = worker_specs(settings, 3)
    # 9109 is the evaluator's (settings' default): `sanitel run` on two cores crash-looped worker 2 on it
    assert settings.evaluator_metrics_port == 9109
    assert [(s.client_id, s.metrics_port, s.share_group) for s in got] == [
        ("col", 9108, WORKERS_SHARE_GROUP), ("col-w2", 9110, WORKERS_SHARE_GROUP), ("col-w3", 9111, WORKERS_SHARE_GROUP)]
    no_metrics = worker_specs(load_settings(data_dir=tmp_path, collector_metrics_port=0, collector_share_group="x"), 2)
    assert [(s.metrics_port, s.share_group) for s in no_metrics] == [(0, "x"), (0, "x")]
    argv = got[1].argv(supervisor_pid=42)
    assert argv[argv.index("--workers") + 1] == "1" and argv[argv.index("--client-id") + 1] == "col-w2"
    assert argv[argv.index("--share-group") + 1] == WORKERS_SHARE_GROUP
    assert argv[argv.index("--supervisor-pid") + 1] == "42"


def test_a_dead_worker_is_restarted_after_a_backoff() -> None:
    spawn, clock = Spawner(), Clock()
    supervisor = Supervisor(specs(), spawn, clock)
    for spec in specs():
        supervisor._start(supervisor._slots[spec.index - 1])
    clock.now += 60
    spawn.latest("c-2").returncode = -9  # killed
    assert supervisor.check()
    assert len(spawn.started) == 2  # not at once: after the backoff
    clock.now += 1.0
    assert supervisor.check()
    assert [cid for cid, _ in spawn.started] == ["c-1", "c-2", "c-2"]
    assert spawn.latest("c-1").poll() is None  # the other worker is left alone


def test_a_worker_dying_young_again_and_again_stops_everything_with_exit_1() -> None:
    spawn, clock = Spawner(), Clock()
    supervisor = Supervisor(specs(), spawn, clock)
    for slot in supervisor._slots:
        supervisor._start(slot)
    results = []
    for _ in range(5):
        spawn.latest("c-2").returncode = 2  # e.g. refused by the database at start
        results.append(supervisor.check())
        clock.now += 30  # past any backoff, but each run lasted < 10 s
        supervisor.check()
        clock.now += 1
    assert results == [True, True, True, True, False]
    supervisor.stop_all()
    assert spawn.latest("c-1").signals == [signal.SIGTERM]


def test_run_stops_every_worker_with_sigterm_and_exits_0() -> None:
    spawn = Spawner()
    supervisor = Supervisor(specs(3), spawn, Clock())
    supervisor.stopping.set()  # SIGTERM arrived
    assert supervisor.run() == 0
    assert [c.signals for _, c in spawn.started] == [[signal.SIGTERM]] * 3
    assert all(c.poll() == 0 for _, c in spawn.started)


def test_a_worker_that_ignores_sigterm_is_killed() -> None:
    spawn = Spawner()
    supervisor = Supervisor(specs(1), spawn, Clock())
    supervisor._start(supervisor._slots[0])
    spawn.latest("c-1").ignores_sigterm = True
    supervisor.stop_all()
    assert spawn.latest("c-1").killed
