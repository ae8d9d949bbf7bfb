"""Judging background stages from their heartbeats (issue 17: a stopped stage must show)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sanitel.alerts.service import config_from_settings
from sanitel.heartbeats import Heartbeat, judge_stages
from sanitel.ingest.collector import ClientHandlers, Collector
from sanitel.processors.writer import Message, Turn, WriteResult
from sanitel.settings import load_settings

NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def _states(*beats: Heartbeat) -> dict[str, tuple[str, float | None, int]]:
    return {s.stage: (s.status, s.lag_s, s.instances) for s in judge_stages(beats, NOW, overdue_factor=3.0)}


def test_a_stage_that_never_reported_is_missing() -> None:
    states = _states(Heartbeat("collector", "c1", 30.0, NOW - timedelta(seconds=10)))
    assert states["collector"] == ("ok", 10.0, 1)
    assert states["processor"] == ("missing", None, 0)
    assert states["evaluator"] == ("missing", None, 0)


def test_overdue_after_the_factor_times_its_own_interval() -> None:
    just_in = Heartbeat("processor", "p1", 60.0, NOW - timedelta(seconds=180))
    late = Heartbeat("evaluator", "e1", 5.0, NOW - timedelta(seconds=15.5))
    states = _states(just_in, late)
    assert states["processor"][0] == "ok"
    assert states["evaluator"] == ("overdue", 15.5, 0)  # no instance running


def test_the_newest_instance_decides_so_a_replaced_instance_does_not_alarm() -> None:
    old = Heartbeat("collector", "old-host", 30.0, NOW - timedelta(days=2))
    new = Heartbeat("collector", "new-host", 30.0, NOW - timedelta(seconds=5))
    assert _states(old, new)["collector"] == ("ok", 5.0, 1)  # one running instance …
    assert _states(new, old)["collector"] == ("ok", 5.0, 1)
    [collector, _, _] = judge_stages([old, new], NOW, overdue_factor=3.0)
    assert collector.stopped_instances == 1  # … and one known but silent


def test_a_clock_ahead_of_the_reader_is_no_lag() -> None:
    ahead = Heartbeat("evaluator", "e1", 5.0, NOW + timedelta(seconds=2))
    assert _states(ahead)["evaluator"] == ("ok", 0.0, 1)


def test_detail_names_the_stage_and_says_what_to_check() -> None:
    [_, processor, _] = judge_stages([], NOW, overdue_factor=3.0)
    assert "scheduled processor has never reported" in processor.detail
    assert "`sanitel maintain`" in processor.detail
    [collector, _, _] = judge_stages([Heartbeat("collector", "c1", 30.0, NOW - timedelta(seconds=100))], NOW,
                                     overdue_factor=3.0)
    assert collector.status == "overdue" and collector.overdue_after_s == 90.0
    assert collector.detail.startswith("the collector last passed 100 s ago (every 30 s; overdue after 90 s)")
    assert "`sanitel collector`" in collector.detail and "broker" in collector.detail


# --- the collector's heartbeat policy (fake broker client and database: no servers) --------------------------------

class _Client:
    """Connects at once and grants the subscription; nothing is ever delivered."""

    def __init__(self, handlers: ClientHandlers) -> None:
        self.handlers = handlers

    def reconnect(self) -> None:
        pass

    def loop_start(self) -> None:
        self.handlers.on_connect(self, None, mqtt.ConnectFlags(session_present=False),
                                 ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def subscribe(self, topic: str, qos: int) -> None:
        self.handlers.on_subscribe(self, None, 1, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)

    def ack_many(self, mids: list[int]) -> None:
        pass

    def wait_acks_read(self, timeout: float) -> bool:
        return True

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass


class _Database:
    """The writer's view of the database: up or down; counts pings (each one is a pass of the writer loop)."""

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.session_pid: int | None = None

    def ping(self) -> bool:
        self.pings += 1
        return self.up

    def write(self, messages: list[Message], turn: Turn | None = None) -> WriteResult:
        return WriteResult()

    def flush_last_seen(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Beats:
    def __init__(self) -> None:
        self.at: list[datetime] = []
        self.changed = threading.Condition()

    def beat(self, at: datetime, started_at: datetime) -> bool:
        with self.changed:
            self.at.append(at)
            self.changed.notify_all()
        return True

    def close(self) -> None:
        pass

    def wait(self, n: int) -> list[datetime]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.at) >= n, 10.0), self.at
            return list(self.at)


def test_the_collector_beats_only_while_it_writes_to_the_database_and_then_every_interval(tmp_path: Path) -> None:
    database, beats, monotonic = _Database(), _Beats(), [1000.0]
    settings = load_settings(data_dir=tmp_path, city="testcity", collector_client_id="unit", collector_metrics_port=0,
                             collector_heartbeat_s=30)
    collector = Collector(settings, serve_metrics=False, client_factory=lambda s, h: _Client(h), writer=database,
                          monotonic=lambda: monotonic[0], now=lambda: NOW, idle_wake_s=0.01, heartbeat=beats)
    collector.start(wait_connected=10)
    try:
        # the database is unreachable (spooling): a round of the writer loop checks the heartbeat, then retries the
        # database (a ping) — and does not beat
        seen = database.pings
        monotonic[0] += 2  # past the retry pause
        deadline = time.monotonic() + 10
        while database.pings == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert database.pings > seen and beats.at == []
        database.up = True  # back: the next round replays (nothing) and beats at once …
        monotonic[0] += 2
        assert beats.wait(1) == [NOW]
        monotonic[0] += 30  # … and again one interval later
        assert beats.wait(2) == [NOW, NOW]
    finally:
        collector.stop()


def test_the_evaluator_service_watches_the_stages_by_the_settings() -> None:
    config = config_from_settings(load_settings(maintain_interval_s=60, stage_overdue_factor=3))
    assert config.stage_overdue_factor == 3
    assert config.averages_behind_after == timedelta(minutes=3)  # a processor on schedule never raises it
