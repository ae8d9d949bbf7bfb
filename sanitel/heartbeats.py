"""Stage heartbeats: each background stage records its last successful pass; readers judge who is overdue.

A stage is *overdue* when its newest instance last passed more than ``overdue_factor`` × its own interval ago,
and *missing* when no instance ever reported — e.g. a deployment that starts only the collector and the API,
where nothing would otherwise say that rollups and CEMS averages are never computed (issue 17).

Who records (each with its own process clock, so the lag is measured clock to clock like the collector's
receive times — keep the hosts' clocks in sync, NTP):
- the collector every ``collector_heartbeat_s`` while it is connected to the broker and its writer reaches the
  database (instance: its MQTT client id);
- the scheduled processor after each pass it ran (instance: host:pid);
- the alert evaluator after each evaluation pass it ran (instance: host:pid).
Who reads: /health and /metrics of the API, and the evaluator, which raises ``stage_overdue`` for the collector
and the processor. Nothing can alert about the evaluator itself: /health and Prometheus cover it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psycopg

Stage = Literal["collector", "processor", "evaluator"]
STAGES: tuple[Stage, ...] = ("collector", "processor", "evaluator")
STAGE_NAMES: dict[Stage, str] = {"collector": "collector", "processor": "scheduled processor",
                                 "evaluator": "alert evaluator"}
# what runs each stage, for the hint of what to check
STAGE_COMMANDS: dict[Stage, str] = {"collector": "sanitel collector", "processor": "sanitel maintain",
                                    "evaluator": "sanitel evaluator"}
_RECORD = (
    "INSERT INTO stage_heartbeats (stage, instance, interval_s, last_pass_at, started_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stage, instance) DO UPDATE SET "
    "interval_s = EXCLUDED.interval_s, last_pass_at = greatest(stage_heartbeats.last_pass_at, "
    "EXCLUDED.last_pass_at), started_at = EXCLUDED.started_at")
_READ = "SELECT stage, instance, interval_s, last_pass_at FROM stage_heartbeats"


def process_instance() -> str:
    """host:pid — stable while this process runs, distinct between processes."""
    return f"{socket.gethostname()}:{os.getpid()}"


def record_pass(conn: psycopg.Connection, stage: Stage, instance: str, *, interval_s: float, at: datetime,
                started_at: datetime) -> None:
    """Upsert this instance's heartbeat (autocommit or inside the pass's own transaction)."""
    conn.execute(_RECORD, (stage, instance, interval_s, at, started_at))


@dataclass(frozen=True)
class Heartbeat:
    stage: str
    instance: str
    interval_s: float
    last_pass_at: datetime


@dataclass(frozen=True)
class StageState:
    stage: Stage
    status: Literal["ok", "overdue", "missing"]
    last_pass_at: datetime | None  # the newest instance's
    lag_s: float | None
    interval_s: float | None
    instances: int  # instances that passed within the overdue limit (running)
    stopped_instances: int = 0  # instances known but silent for longer (stopped, or replaced)
    overdue_after_s: float | None = None  # overdue_factor × interval_s

    @property
    def name(self) -> str:
        return STAGE_NAMES[self.stage]

    @property
    def detail(self) -> str:
        """What is wrong (or right), and what to check."""
        name, command = self.name, STAGE_COMMANDS[self.stage]
        if self.status == "missing":
            return (f"the {name} has never reported a pass: is it running (`{command}`), and can it reach the "
                    "database?")
        assert self.lag_s is not None and self.interval_s is not None
        said = f"the {name} last passed {self.lag_s:.0f} s ago (every {self.interval_s:g} s"
        if self.status == "overdue":
            return (said + f"; overdue after {self.overdue_after_s:g} s): check that `{command}` is running, "
                    "its log, and that it reaches the database" + (" and the broker" if self.stage == "collector"
                                                                   else ""))
        return said + ")"


def read_heartbeats(conn: psycopg.Connection) -> list[Heartbeat]:
    rows = conn.execute(_READ).fetchall()
    return [Heartbeat(*row) for row in rows]


async def read_heartbeats_async(conn: psycopg.AsyncConnection) -> list[Heartbeat]:
    """``read_heartbeats`` on an async connection (the API's)."""
    cur = await conn.execute(_READ)
    return [Heartbeat(*row) for row in await cur.fetchall()]


def judge_stages(heartbeats: Iterable[Heartbeat], now: datetime, *, overdue_factor: float) -> list[StageState]:
    """One state per stage, from its most recent instance (a stopped old instance does not make it overdue)."""
    by_stage: dict[str, list[Heartbeat]] = {}
    for beat in heartbeats:
        by_stage.setdefault(beat.stage, []).append(beat)
    states = []
    for stage in STAGES:
        beats = by_stage.get(stage)
        if not beats:
            states.append(StageState(stage, "missing", None, None, None, 0))
            continue
        beat = max(beats, key=lambda b: b.last_pass_at)
        lag = max(0.0, (now - beat.last_pass_at).total_seconds())  # a clock ahead of ours: no lag
        limit = overdue_factor * beat.interval_s
        running = sum(1 for b in beats if (now - b.last_pass_at).total_seconds() <= overdue_factor * b.interval_s)
        status: Literal["ok", "overdue"] = "overdue" if lag > limit else "ok"
        states.append(StageState(stage, status, beat.last_pass_at, lag, beat.interval_s, running,
                                 len(beats) - running, limit))
    return states
