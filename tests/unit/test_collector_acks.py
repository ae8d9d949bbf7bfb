"""The collector's batching and acknowledgement policy, with a fake MQTT client, an in-memory writer and clocks the
tests move by hand (the seams Telegraf's mqtt_consumer tests use). No broker, no database, no sleeping: a test waits
only for the writer thread to reach a state, with a generous timeout that is never the thing under test.

The contract (DESIGN.md §5): a message is acknowledged only after its batch is durable — committed (readings and
dead letters) or fsync'd to the spool — and acknowledgements go out in the order the messages came."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sanitel.ingest.buffered_client import BufferedClient
from sanitel.ingest.collector import Batcher, ClientHandlers, Collector, paho_collector_client
from sanitel.processors.spool import STATUS_FILE, Spool, read_quarantine
from sanitel.processors.writer import DatabaseUnavailable, Message, OutOfTurn, Turn, WriteResult
from sanitel.schemas.topics import subscription
from sanitel.settings import Settings, load_settings

TOPIC = "sanitation/testcity/bin/b1/status"
RECEIVED_AT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
WAIT_S = 10.0  # how long a test waits for the writer thread before calling it stuck


class Clock:
    """A monotonic clock that moves only when told to (``advance``), or by ``tick`` on every reading."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def payload(mid: int) -> bytes:
    return b'{"mid": %d}' % mid


class MemoryWriter:
    """The database: commits batches into a list; can be down, or fail a batch, or hold a batch until released."""

    def __init__(self, database: MemoryWriter | None = None) -> None:
        """``database``: another writer whose committed list this one writes to (a second commit lane)."""
        self.committed: list[bytes] = [] if database is None else database.committed
        self.up = True
        self.fail_with: Exception | None = None  # raised by the next write
        self.poison: bytes | None = None  # a batch holding this payload fails, every time: a content error
        self.gate: threading.Event | None = None  # when set up, write waits for it
        self.writing = threading.Event()  # a write has begun
        self.session_pid: int | None = None
        self.out_of_turn = False  # the next write that follows a commit meets it (a redelivery in both batches)
        self.waiting_turn = threading.Event()  # a write has begun waiting for the commit it follows
        self._lock: threading.Lock = threading.Lock() if database is None else database._lock
        # which writer wrote each batch (by its first payload); shared with the writers of the same database
        self.batches_by: dict[bytes, MemoryWriter] = {} if database is None else database.batches_by

    def ping(self) -> bool:
        return self.up

    def write(self, messages: list[Message], turn: Turn | None = None) -> WriteResult:
        self.writing.set()
        if messages:
            self.batches_by[messages[0].payload] = self
        if self.gate is not None:
            assert self.gate.wait(WAIT_S), "the test never released the writer"
        if not self.up:
            raise DatabaseUnavailable("connection refused")
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        if self.poison is not None and any(m.payload == self.poison for m in messages):
            raise ValueError("a value the database refuses")
        if turn is not None:  # "COPYed"; committed only after the commit ahead
            if self.out_of_turn:
                self.out_of_turn = False
                raise OutOfTurn("the commit ahead waits for rows this write holds")
            self.waiting_turn.set()
            assert turn.settled(WAIT_S), "the commit ahead never settled"
        with self._lock:
            self.committed += [m.payload for m in messages]  # readings and dead letters alike
        return WriteResult()

    def flush_last_seen(self) -> None:
        pass

    def close(self) -> None:
        pass

    def durable(self) -> list[bytes]:
        with self._lock:
            return list(self.committed)


class FakeClient:
    """The broker side of the collector's MQTT client: connects at once, grants the subscription, delivers what the
    test sends, and records acknowledgements — checking at each one that the message is already durable."""

    def __init__(self, settings: Settings, handlers: ClientHandlers, writer: MemoryWriter, spool_dir: Path) -> None:
        self.handlers = handlers
        self.writer, self.spool_dir = writer, spool_dir
        self.calls: list[tuple[str, object]] = []
        self.acks: list[list[int]] = []
        self.acked_before_durable: list[int] = []
        self.refuse_connect = False
        self._payloads: dict[int, bytes] = {}
        self._changed = threading.Condition()

    # --- what the collector calls -------------------------------------------------------------
    def reconnect(self) -> None:
        self.calls.append(("reconnect", None))
        if self.refuse_connect:
            raise ConnectionRefusedError("connection refused")

    def loop_start(self) -> None:
        self.calls.append(("loop_start", None))
        if not self.refuse_connect:
            self.handlers.on_connect(self, None, mqtt.ConnectFlags(session_present=False),
                                     ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def subscribe(self, topic: str, qos: int) -> None:
        self.calls.append(("subscribe", (topic, qos)))
        self.handlers.on_subscribe(self, None, 1, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)

    def ack_many(self, mids: list[int]) -> None:
        durable = set(self.writer.durable()) | self._spooled()
        with self._changed:
            self.acked_before_durable += [mid for mid in mids if self._payloads[mid] not in durable]
            self.acks.append(list(mids))
            self.calls.append(("ack_many", list(mids)))
            self._changed.notify_all()

    def wait_acks_read(self, timeout: float) -> bool:
        self.calls.append(("wait_acks_read", None))
        return True

    def disconnect(self) -> None:
        self.calls.append(("disconnect", None))

    def loop_stop(self) -> None:
        self.calls.append(("loop_stop", None))

    # --- what the test calls ------------------------------------------------------------------
    def deliver(self, mid: int, qos: int = 1, topic: str = TOPIC, body: bytes | None = None) -> None:
        """A PUBLISH arriving on the network thread (this call blocks as long as the collector's on_publishes does)."""
        body = body if body is not None else payload(mid)
        self._payloads[mid] = body
        self.handlers.on_publishes(self, None, [(topic.encode(), body, mid, qos)])

    def acked(self) -> list[int]:
        with self._changed:
            return [mid for batch in self.acks for mid in batch]

    def wait_acked(self, count: int) -> list[int]:
        with self._changed:
            assert self._changed.wait_for(lambda: sum(map(len, self.acks)) >= count, WAIT_S), (
                f"only {self.acks} acknowledged; waited for {count} messages")
        return self.acked()

    def _spooled(self) -> set[bytes]:
        spool = Spool(self.spool_dir)  # a second reader of the same folder: read only
        return {r.message[1] for segment in spool.segments() for r in spool.read_segment(segment).records}


Make = Callable[..., tuple[Collector, FakeClient, Clock]]


@pytest.fixture
def writer() -> MemoryWriter:
    return MemoryWriter()


@pytest.fixture
def make(tmp_path: Path, writer: MemoryWriter) -> Iterator[Make]:
    """make(**settings) → (collector, fake client, clock); the collector is started, and stopped at teardown."""
    made: list[Collector] = []

    def _make(clock: Clock | None = None, start: bool = True, refuse_connect: bool = False, idle_wake_s: float = 1.0,
              lane: MemoryWriter | None = None, **overrides: object) -> tuple[Collector, FakeClient, Clock]:
        clock = clock or Clock()
        settings = load_settings(**{
            "data_dir": tmp_path, "city": "testcity", "collector_client_id": "unit", "collector_metrics_port": 0,
            "collector_batch_size": 3, "collector_flush_ms": 60_000, "collector_queue_max": 100, **overrides})
        clients: list[FakeClient] = []

        def factory(s: Settings, handlers: ClientHandlers) -> FakeClient:
            clients.append(FakeClient(s, handlers, writer, s.effective_spool_dir / s.collector_client_id))
            clients[-1].refuse_connect = refuse_connect
            return clients[-1]

        collector = Collector(settings, serve_metrics=False, client_factory=factory, writer=writer,
                              monotonic=clock, now=lambda: RECEIVED_AT, idle_wake_s=idle_wake_s, lane_writer=lane)
        made.append(collector)
        if start:
            collector.start(wait_connected=0 if refuse_connect else WAIT_S)
        return collector, clients[0], clock

    yield _make
    for collector in made:
        collector.stop(timeout=WAIT_S)


# --- connecting ----------------------------------------------------------------------------------------------


def test_start_connects_and_subscribes_at_qos_1(make: Make) -> None:
    collector, client, _ = make()
    assert client.calls == [("reconnect", None), ("loop_start", None), ("subscribe", (subscription("testcity"), 1))]
    assert collector.connected


def test_an_unreachable_broker_at_start_is_left_to_the_network_thread(make: Make) -> None:
    collector, client, _ = make(refuse_connect=True)
    assert [name for name, _ in client.calls] == ["reconnect", "loop_start"]
    assert not collector.connected


# --- acknowledgement after durability ------------------------------------------------------------------------


def test_messages_are_acked_in_order_only_once_their_batch_is_committed(
        make: Make, writer: MemoryWriter) -> None:
    _, client, _ = make()
    for mid in range(1, 7):
        client.deliver(mid, topic=TOPIC if mid != 5 else "not/a/sanitel/topic")  # 5 is dead-lettered: durable too
    assert client.wait_acked(6) == [1, 2, 3, 4, 5, 6]
    assert client.acks == [[1, 2, 3], [4, 5, 6]]  # one PUBACK write per committed batch of 3
    assert client.acked_before_durable == []
    assert writer.durable() == [payload(mid) for mid in range(1, 7)]


def test_qos_0_messages_are_written_but_have_nothing_to_ack(make: Make, writer: MemoryWriter) -> None:
    _, client, _ = make()
    client.deliver(1)
    client.deliver(2, qos=0)
    client.deliver(3)
    assert client.wait_acked(2) == [1, 3]
    assert writer.durable() == [payload(1), payload(2), payload(3)]


def test_a_batch_that_fails_is_not_acknowledged(make: Make, writer: MemoryWriter) -> None:
    writer.fail_with = RuntimeError("a bug in the writer")
    _, client, _ = make()
    for mid in range(1, 7):
        client.deliver(mid)
    assert client.wait_acked(3) == [4, 5, 6]  # the next batch goes on; 1-3 stay with the broker for redelivery
    assert client.acks == [[4, 5, 6]]
    assert writer.durable() == [payload(mid) for mid in (4, 5, 6)]


def test_while_the_database_is_down_batches_are_spooled_then_acked_and_replayed_in_order(
        make: Make, writer: MemoryWriter) -> None:
    writer.up = False
    _, client, clock = make()
    for mid in (1, 2, 3):
        client.deliver(mid)
    assert client.wait_acked(3) == [1, 2, 3]  # durable in the spool (fsync'd), not in the database
    assert client.acked_before_durable == [] and writer.durable() == []

    writer.up = True
    clock.advance(2.0)  # past the one-second pause between replay attempts
    for mid in (4, 5, 6):
        client.deliver(mid)
    assert client.wait_acked(6) == [1, 2, 3, 4, 5, 6]
    assert writer.durable() == [payload(mid) for mid in range(1, 7)]  # the spool first: order kept


def test_a_database_lost_mid_write_spools_the_batch_before_acking(make: Make, writer: MemoryWriter) -> None:
    _, client, _ = make()
    writer.up = False  # ping said yes at start; the write finds it gone
    for mid in (1, 2, 3):
        client.deliver(mid)
    assert client.wait_acked(3) == [1, 2, 3]
    assert client.acked_before_durable == []


# --- two commit lanes: a batch is written while the one before still commits; acknowledgements stay in order ---


def test_by_default_the_collector_writes_on_two_lanes(tmp_path: Path) -> None:
    """Two lanes are safe by default since a batch commits only after the one ahead of it (the next tests). (No
    connection is opened: the writers connect on first use.)"""
    def collector(**overrides: object) -> Collector:
        settings = load_settings(data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none",
                                 collector_metrics_port=0, **overrides)
        return Collector(settings, serve_metrics=False,
                         client_factory=lambda s, h: FakeClient(s, h, MemoryWriter(), tmp_path))

    assert len(collector()._lanes) == 2
    assert len(collector(collector_commit_lanes=1)._lanes) == 1


def test_with_two_lanes_a_batch_is_written_beside_the_one_before_but_commits_after_it(
        make: Make, writer: MemoryWriter) -> None:
    """Commits in arrival order: the alert evaluator's data clock (the newest reading stored) must not run ahead of
    a batch still in the other lane (false device_offline alerts, tests/integration/test_truck_ground_truth.py)."""
    lane = MemoryWriter(database=writer)
    writer.gate = threading.Event()  # the first lane's commit takes its time
    _, client, _ = make(lane=lane)
    for mid in range(1, 7):
        client.deliver(mid)
    wait_until(lane.waiting_turn.is_set)  # the second lane's write is under way, its commit waits for the first's
    assert writer.durable() == [] and client.acked() == []
    writer.gate.set()
    assert client.wait_acked(6) == [1, 2, 3, 4, 5, 6]
    assert writer.durable() == [payload(mid) for mid in range(1, 7)]
    assert client.acks == [[1, 2, 3], [4, 5, 6]] and client.acked_before_durable == []


def test_with_two_lanes_a_write_that_met_the_one_ahead_is_written_again_after_it(
        make: Make, writer: MemoryWriter) -> None:
    lane = MemoryWriter(database=writer)
    lane.out_of_turn = True
    writer.gate = threading.Event()
    collector, client, _ = make(lane=lane)
    for mid in range(1, 7):
        client.deliver(mid)
    wait_until(lane.writing.is_set)
    writer.gate.set()
    assert client.wait_acked(6) == [1, 2, 3, 4, 5, 6]
    assert writer.durable() == [payload(mid) for mid in range(1, 7)] and client.acked_before_durable == []
    assert collector.metrics.registry.get_sample_value("sanitel_batches_rewritten_out_of_turn_total") == 1
    assert collector.spool.backlog_bytes() == 0  # written again, not spooled


def test_with_two_lanes_batches_take_the_lanes_in_turn(make: Make, writer: MemoryWriter) -> None:
    lane = MemoryWriter(database=writer)
    _, client, _ = make(lane=lane)
    for mid in range(1, 13):
        client.deliver(mid)
    assert client.wait_acked(12) == list(range(1, 13))
    # batch k (first message 3k + 1) on lane k mod 2; two lanes' writes overlap, so their calls may come in any order
    assert [writer.batches_by[payload(mid)] for mid in (1, 4, 7, 10)] == [writer, lane, writer, lane]


def test_with_two_lanes_a_database_lost_under_the_second_spools_it_after_the_first_settled(
        make: Make, writer: MemoryWriter) -> None:
    lane = MemoryWriter(database=writer)
    lane.up = False  # the second lane's write finds the database gone; the first's still commits
    writer.gate = threading.Event()
    collector, client, _ = make(lane=lane)
    for mid in range(1, 7):
        client.deliver(mid)
    wait_until(lambda: lane.writing.is_set())
    writer.gate.set()
    assert client.wait_acked(6) == [1, 2, 3, 4, 5, 6]
    assert client.acked_before_durable == []  # 4-6 in the spool before their acknowledgement
    assert writer.durable() == [payload(mid) for mid in (1, 2, 3)]
    assert collector.spool.backlog_bytes() > 0


def test_with_two_lanes_a_failed_batch_is_not_acknowledged_and_the_next_still_is(
        make: Make, writer: MemoryWriter) -> None:
    lane = MemoryWriter(database=writer)
    lane.fail_with = RuntimeError("a bug in the writer")
    _, client, _ = make(lane=lane)
    for mid in range(1, 10):
        client.deliver(mid)
    assert client.wait_acked(6) == [1, 2, 3, 7, 8, 9]  # 4-6 stay with the broker for redelivery
    assert writer.durable() == [payload(mid) for mid in (1, 2, 3, 7, 8, 9)]


# --- a full spool: backpressure, never loss ---------------------------------------------------------------------

CAP = 64 * 1024  # the smallest cap the settings allow


def big(mid: int) -> bytes:
    return payload(mid) + b" " * 20_000  # three of these stay below the cap, four pass it


def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for the writer thread to reach a state (polling; the timeout is generous and never the thing tested)."""
    pause = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return
        pause.wait(0.01)
    raise AssertionError("the writer thread never reached the state waited for")


def sample(collector: Collector, name: str, **labels: str) -> float | None:
    return collector.metrics.registry.get_sample_value(name, labels)


def status(collector: Collector) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((collector.spool.folder / STATUS_FILE).read_bytes())
    return loaded


def count_calls(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(target, name)

    def counting(*args: object) -> object:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(target, name, counting)
    return calls


def test_a_full_spool_stops_acknowledging_until_replay_frees_space(
        make: Make, writer: MemoryWriter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    writer.up = False
    caplog.set_level(logging.INFO, logger="sanitel.collector")
    collector, client, clock = make(collector_batch_size=1, spool_max_bytes=CAP, idle_wake_s=0.01)
    appends = count_calls(monkeypatch, collector.spool, "append")
    for mid in range(1, 8):
        client.deliver(mid, body=big(mid))
    assert client.wait_acked(4) == [1, 2, 3, 4]  # the 4th came while the spool was still below its cap
    wait_until(lambda: len(appends) >= 10)  # message 5 refused again and again: held, not dropped, not acked
    assert client.acked() == [1, 2, 3, 4] and client.acked_before_durable == []
    assert sample(collector, "sanitel_spool_full") == 1.0
    assert sample(collector, "sanitel_spool_max_bytes") == CAP
    assert status(collector)["full"] is True
    full = [r for r in caplog.records if r.getMessage().startswith("spool full")]
    assert len(full) == 1, "said once, not on every retry"
    assert "SANITEL_SPOOL_MAX_BYTES" in full[0].getMessage() and "database back" in full[0].getMessage()

    writer.up = True
    clock.advance(2.0)  # past the pause between replay attempts: replay drains the spool, message 5 goes through
    assert client.wait_acked(7) == list(range(1, 8))
    assert writer.durable() == [big(mid) for mid in range(1, 8)]  # every message once, in order
    wait_until(lambda: sample(collector, "sanitel_spool_full") == 0.0)  # set right after the acknowledgement
    assert collector.spool.backlog_bytes() == 0 and status(collector)["full"] is False
    assert any(r.getMessage().startswith("spool accepting again") for r in caplog.records)


def test_a_disk_full_during_append_is_backpressure_not_loss(
        make: Make, writer: MemoryWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    writer.up = False
    collector, client, _ = make(idle_wake_s=0.01)

    def half_then_enospc(fd: int, buf: bytes) -> None:
        os.write(fd, buf[:len(buf) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(collector.spool, "_write_all", half_then_enospc)
    for mid in (1, 2, 3):
        client.deliver(mid)
    wait_until(lambda: sample(collector, "sanitel_spool_full") == 1.0)
    assert client.acked() == []
    assert collector.spool.backlog_bytes() == 0  # the half-written batch was cut off again: nothing torn on disk
    assert "full" in str(status(collector)["reason"])

    monkeypatch.undo()  # space again
    assert client.wait_acked(3) == [1, 2, 3]
    assert client.acked_before_durable == []
    wait_until(lambda: sample(collector, "sanitel_spool_full") == 0.0)  # set right after the acknowledgement


def test_stopping_while_the_spool_is_full_leaves_the_held_messages_with_the_broker(
        make: Make, writer: MemoryWriter) -> None:
    writer.up = False
    collector, client, _ = make(collector_batch_size=1, spool_max_bytes=CAP, idle_wake_s=0.01)
    for mid in range(1, 8):
        client.deliver(mid, body=big(mid))
    assert client.wait_acked(4) == [1, 2, 3, 4]
    wait_until(lambda: sample(collector, "sanitel_spool_full") == 1.0)
    collector.stop(timeout=WAIT_S)
    assert client.calls[-2:] == [("disconnect", None), ("loop_stop", None)]  # the writer thread ended
    assert client.acked() == [1, 2, 3, 4]  # 5-7 were never durable: not acknowledged, the broker redelivers them


# --- replay never stalls on what is in the spool ---------------------------------------------------------------


def test_a_spooled_message_that_cannot_be_written_is_quarantined_and_the_collector_still_starts(
        tmp_path: Path, make: Make, writer: MemoryWriter) -> None:
    spool = Spool(tmp_path / "spool" / "unit")  # left by an earlier run, during a database outage
    spool.append([(TOPIC, payload(1), RECEIVED_AT), (TOPIC, b"poison", RECEIVED_AT), (TOPIC, payload(3), RECEIVED_AT)])
    spool.close()
    (segment,) = spool.segments()
    writer.poison = b"poison"
    collector, client, _ = make()  # replays at start: must not fail
    assert writer.durable() == [payload(1), payload(3)]
    assert spool.segments() == []
    (entry,) = read_quarantine(segment.with_suffix(".quarantine"))
    assert entry.reason == "replay_error" and "ValueError" in entry.detail and b"poison" in entry.raw
    assert sample(collector, "sanitel_spool_quarantined_records_total", reason="replay_error") == 1.0
    for mid in (4, 5, 6):  # a whole batch: the clock stands still, so no partial batch is cut
        client.deliver(mid)
    assert client.wait_acked(3) == [4, 5, 6]
    assert writer.durable() == [payload(mid) for mid in (1, 3, 4, 5, 6)]


def test_damaged_spool_records_are_quarantined_and_replay_goes_on(
        tmp_path: Path, make: Make, writer: MemoryWriter) -> None:
    spool = Spool(tmp_path / "spool" / "unit")
    spool.append([(TOPIC, payload(mid), RECEIVED_AT) for mid in range(1, 6)])
    spool.close()
    (segment,) = spool.segments()
    records = spool.read_segment(segment).records
    data = bytearray(segment.read_bytes())
    data[records[1].offset + 20] ^= 0x01  # a bit flip in the middle of message 2
    segment.write_bytes(bytes(data[:-3]))  # and message 5 torn (a crash mid-write)
    collector, client, _ = make()
    assert writer.durable() == [payload(1), payload(3), payload(4)]
    entries = list(read_quarantine(segment.with_suffix(".quarantine")))
    assert [(e.offset, e.reason) for e in entries] == [(records[1].offset, "corrupt"), (records[4].offset, "torn")]
    assert sample(collector, "sanitel_spool_quarantined_records_total", reason="corrupt") == 1.0
    assert sample(collector, "sanitel_spool_quarantined_records_total", reason="torn") == 1.0
    for mid in (6, 7, 8):
        client.deliver(mid)
    assert client.wait_acked(3) == [6, 7, 8]


# --- batching --------------------------------------------------------------------------------------------------


def test_a_batch_is_cut_at_the_batch_size() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=3, flush_s=60, monotonic=Clock())
    for n in range(7):
        batcher.put_many([n])
    batcher.close()
    assert batcher.take(idle_s=0) == ([0, 1, 2], False)
    assert batcher.take(idle_s=0) == ([3, 4, 5], False)
    assert batcher.take(idle_s=0) == ([6], True)  # closed: what is left, and the news


def test_a_partial_batch_is_written_once_the_flush_interval_has_passed() -> None:
    clock = Clock(tick=0.3)  # every reading of the clock moves it 0.3 s: past the 0.2 s interval at once
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=1000, flush_s=0.2, monotonic=clock)
    batcher.put_many([1])
    batcher.put_many([2])
    assert batcher.take(idle_s=0) == ([1, 2], False)  # no waiting for the other 998


def test_with_nothing_queued_take_comes_back_empty_so_the_writer_can_replay_the_spool() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=3, flush_s=0.2, monotonic=Clock())
    assert batcher.take(idle_s=0) == ([], False)


def test_the_collector_flushes_a_partial_batch_after_the_interval(make: Make) -> None:
    _, client, _ = make(clock=Clock(tick=61.0), collector_batch_size=1000)  # each reading passes the 60 s interval
    client.deliver(1)
    assert client.wait_acked(1) == [1]


# --- backpressure ----------------------------------------------------------------------------------------------


def test_a_full_queue_holds_the_network_thread_until_the_writer_catches_up(
        make: Make, writer: MemoryWriter) -> None:
    writer.gate = threading.Event()  # the database is slow: the first write hangs until released
    collector, client, _ = make(collector_batch_size=1)
    client.deliver(1)
    assert writer.writing.wait(WAIT_S)  # message 1 is in the database, which does not answer
    client.deliver(2)  # taken and decoded meanwhile; it waits for message 1's commit
    wait_until(lambda: collector._batcher.qsize() == 0)
    for mid in range(3, 103):  # 100 more fill the queue exactly
        client.deliver(mid)
    entered, returned = threading.Event(), threading.Event()

    def network_thread() -> None:
        entered.set()
        client.deliver(103)
        returned.set()

    threading.Thread(target=network_thread, daemon=True).start()
    assert entered.wait(WAIT_S)
    assert not returned.is_set()  # held, not dropped: the broker keeps the rest (Receive Maximum)
    writer.gate.set()
    assert returned.wait(WAIT_S)
    assert client.wait_acked(103) == list(range(1, 104))


def test_the_next_batch_is_decoded_while_one_commits_and_committed_only_after_it_was_acked(
        make: Make, writer: MemoryWriter) -> None:
    writer.gate = threading.Event()  # the first commit hangs until released
    in_database, most_in_database = [0], [0]
    write = writer.write

    def counting_write(messages: list[Message], turn: Turn | None = None) -> WriteResult:
        in_database[0] += 1
        most_in_database[0] = max(most_in_database[0], in_database[0])
        try:
            return write(messages, turn)
        finally:
            in_database[0] -= 1

    writer.write = counting_write  # type: ignore[method-assign]
    collector, client, _ = make(collector_batch_size=1)
    client.deliver(1)
    assert writer.writing.wait(WAIT_S)
    client.deliver(2)
    wait_until(lambda: collector._batcher.qsize() == 0)  # taken off the queue (and decoded) during 1's commit
    assert client.acked() == [] and writer.durable() == []
    writer.gate.set()
    assert client.wait_acked(2) == [1, 2]
    assert client.acks == [[1], [2]]  # one acknowledgement per batch, in order, each after its commit
    assert client.acked_before_durable == []
    assert most_in_database[0] == 1  # one batch in the database at a time


# --- stopping (SIGTERM/SIGINT) ----------------------------------------------------------------------------------


def test_stop_flushes_the_partial_batch_acks_it_waits_for_the_broker_to_read_that_then_disconnects(
        make: Make, writer: MemoryWriter) -> None:
    collector, client, _ = make(collector_batch_size=100)  # the clock stands still: no flush before stop
    for mid in (1, 2, 3):
        client.deliver(mid)
    assert client.acked() == []
    collector.stop(timeout=WAIT_S)
    assert client.calls[-4:] == [("ack_many", [1, 2, 3]), ("wait_acks_read", None), ("disconnect", None),
                                 ("loop_stop", None)]
    assert writer.durable() == [payload(1), payload(2), payload(3)]
    client.deliver(4)  # arrives after stop began: not taken, so not acked; the broker keeps it
    assert client.acked() == [1, 2, 3]


# --- the client in service ---------------------------------------------------------------------------------------


def test_the_real_factory_builds_a_persistent_session_with_manual_acks(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, mqtt_url="mqtt://user:pw@broker.example:1884",
                             collector_client_id="collector-7", session_expiry_s=3600, collector_queue_max=500)
    handlers = ClientHandlers(lambda *a: None, lambda *a: None, lambda *a: None, lambda *a: None)
    client = paho_collector_client(settings, handlers)
    assert isinstance(client, BufferedClient)
    assert (client.host, client.port, client.username, client.password) == ("broker.example", 1884, "user", "pw")
    assert client.protocol == mqtt.MQTTv5 and client._manual_ack and client._client_id == b"collector-7"
    assert client._clean_start is False  # the broker keeps the session (and our messages) while we are away
    props = client._connect_properties
    assert props is not None and props.json() == {"SessionExpiryInterval": 3600, "ReceiveMaximum": 500}
    assert client.on_publishes is handlers.on_publishes and client.on_subscribe is handlers.on_subscribe
