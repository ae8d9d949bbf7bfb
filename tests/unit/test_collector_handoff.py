"""Issue 16: the batch hand-off between the network thread and the writer thread, the warning when an in-flight
window keeps batches small, and the clean-up of a session's subscription from the other mode (one process vs
``--workers N``). Fakes only: no broker, no database, clocks moved by hand; a test waits for a thread only with a
generous timeout that is never the thing under test."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sanitel.errors import SanitelError
from sanitel.ingest.collector import (
    WORKERS_SHARE_GROUP,
    Batcher,
    ClientHandlers,
    Collector,
    InflightWindowWatch,
    paho_collector_client,
    stale_subscriptions,
)
from sanitel.processors.writer import Message, Turn, WriteResult
from sanitel.schemas.topics import subscription
from sanitel.settings import Settings, load_settings
from tests.unit.test_collector_acks import TOPIC, WAIT_S, Clock

# --- the hand-off ----------------------------------------------------------------------------------------------


def test_a_full_batch_wakes_the_writer_before_the_flush_interval() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=5, flush_s=3600, monotonic=Clock())
    taken: list[tuple[list[int], bool]] = []
    writer = threading.Thread(target=lambda: taken.append(batcher.take(idle_s=WAIT_S)))
    writer.start()
    for n in range(5):
        batcher.put_many([n])
    writer.join(WAIT_S)
    assert taken == [([0, 1, 2, 3, 4], False)]  # cut by size, long before the hour-long flush interval
    assert not batcher.cut_by_deadline


def test_a_batch_cut_by_the_flush_interval_says_so() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=5, flush_s=0.2, monotonic=Clock(tick=0.3))
    batcher.put_many([1])
    assert batcher.take(idle_s=0) == ([1], False)
    assert batcher.cut_by_deadline


def test_the_writer_takes_at_most_a_batch_and_leaves_the_rest_in_order() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=4, flush_s=0, monotonic=Clock())
    for n in range(10):
        batcher.put_many([n])
    assert batcher.take(idle_s=0) == ([0, 1, 2, 3], False)
    assert batcher.qsize() == 6
    assert batcher.take(idle_s=0) == ([4, 5, 6, 7], False)
    assert batcher.take(idle_s=0) == ([8, 9], False)


def test_close_wakes_a_waiting_writer_with_what_is_queued() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=5, flush_s=3600, monotonic=Clock())
    batcher.put_many([1])
    taken: list[tuple[list[int], bool]] = []
    writer = threading.Thread(target=lambda: taken.append(batcher.take(idle_s=WAIT_S)))
    writer.start()
    batcher.close()
    writer.join(WAIT_S)
    assert taken == [([1], True)]


def test_a_network_thread_blocked_at_maxsize_resumes_once_the_writer_takes_a_batch() -> None:
    batcher: Batcher[int] = Batcher(maxsize=3, batch_size=2, flush_s=0, monotonic=Clock())
    for n in range(3):
        batcher.put_many([n])
    returned = threading.Event()

    def network_thread() -> None:
        batcher.put_many([3])
        returned.set()

    threading.Thread(target=network_thread, daemon=True).start()
    assert not returned.wait(0.2)  # held: backpressure, not loss (a short look; not a timed assertion on speed)
    assert batcher.take(idle_s=0) == ([0, 1], False)
    assert returned.wait(WAIT_S)
    assert batcher.take(idle_s=0) == ([2, 3], False)


def test_one_read_larger_than_the_room_goes_in_as_room_is_made_in_order() -> None:
    batcher: Batcher[int] = Batcher(maxsize=4, batch_size=3, flush_s=0, monotonic=Clock())
    batcher.put_many([0])
    network = threading.Thread(target=lambda: batcher.put_many(list(range(1, 10))), daemon=True)
    network.start()
    taken: list[int] = []
    while len(taken) < 10:
        batch, _ = batcher.take(idle_s=WAIT_S)
        assert batch, "the network thread's read never went in"
        assert len(batch) <= 3 and batcher.qsize() <= 4
        taken += batch
    network.join(WAIT_S)
    assert taken == list(range(10))


def test_a_read_that_completes_a_batch_wakes_the_writer_before_the_flush_interval() -> None:
    batcher: Batcher[int] = Batcher(maxsize=100, batch_size=5, flush_s=3600, monotonic=Clock())
    batcher.put_many([0, 1])
    taken: list[tuple[list[int], bool]] = []
    writer = threading.Thread(target=lambda: taken.append(batcher.take(idle_s=WAIT_S)))
    writer.start()
    batcher.put_many([2, 3, 4, 5])  # from 2 to 6 queued: past the batch size in one call
    writer.join(WAIT_S)
    assert taken == [([0, 1, 2, 3, 4], False)]
    assert not batcher.cut_by_deadline


# --- the in-flight window watch --------------------------------------------------------------------------------


def capped(watch: InflightWindowWatch, size: int, times: int) -> list[int | None]:
    return [watch.observe(size, cut_by_deadline=True) for _ in range(times)]


def test_ten_capped_batches_in_a_row_report_the_window_once() -> None:
    watch = InflightWindowWatch(batch_size=5000)
    assert capped(watch, 20, 15) == [None] * 9 + [20] + [None] * 5


def test_batches_of_varying_size_full_batches_or_single_messages_are_not_a_window() -> None:
    watch = InflightWindowWatch(batch_size=5000)
    for size in (20, 21, 20, 19, 20, 22, 20, 18, 20, 20, 20, 21, 20):  # a live stream at ~100 msg/s: sizes vary
        assert watch.observe(size, cut_by_deadline=True) is None
    assert [watch.observe(5000, cut_by_deadline=False) for _ in range(20)] == [None] * 20
    assert [watch.observe(700, cut_by_deadline=False) for _ in range(20)] == [None] * 20  # cut at close, not timer
    assert capped(watch, 1, 20) == [None] * 20  # one message per interval: a quiet device, not a window


def test_the_window_is_reported_again_only_after_it_was_lifted() -> None:
    watch = InflightWindowWatch(batch_size=5000)
    assert capped(watch, 20, 10)[-1] == 20
    assert watch.observe(7, cut_by_deadline=True) is None  # the backlog's tail
    assert capped(watch, 20, 30) == [None] * 30  # the same condition: said once
    assert watch.observe(5000, cut_by_deadline=False) is None  # lifted
    assert watch.reported is None
    assert capped(watch, 20, 10)[-1] == 20


class MemoryWriter:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.session_pid: int | None = None

    def ping(self) -> bool:
        return True

    def write(self, messages: list[Message], turn: Turn | None = None) -> WriteResult:
        self.batches.append(len(messages))
        return WriteResult()

    def flush_last_seen(self) -> None:
        pass

    def close(self) -> None:
        pass


class WindowBroker:
    """A broker with an in-flight window: sends ``window`` messages, then the next ones only as acks come in. The
    refill is delivered inside ``ack_many`` (the writer thread), so it is complete before the writer takes again:
    after the first window (which the writer may split), every batch holds exactly the window."""

    def __init__(self, handlers: ClientHandlers, window: int, backlog: int) -> None:
        self.handlers, self.window = handlers, window
        self.pending = list(range(1, backlog + 1))
        self.acked: list[int] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def reconnect(self) -> None:
        pass

    def loop_start(self) -> None:
        self.handlers.on_connect(self, None, mqtt.ConnectFlags(session_present=False),
                                 ReasonCode(PacketTypes.CONNACK, "Success"), None)
        self._send(self.window)

    def subscribe(self, topic: str, qos: int) -> None:
        self.handlers.on_subscribe(self, None, 1, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)

    def ack_many(self, mids: list[int]) -> None:
        with self._lock:
            self.acked += mids
            if not self.pending:
                self.done.set()
        self._send(len(mids))

    def wait_acks_read(self, timeout: float) -> bool:
        return True

    def _send(self, n: int) -> None:
        with self._lock:
            mids, self.pending = self.pending[:n], self.pending[n:]
        self.handlers.on_publishes(self, None, [(TOPIC.encode(), b'{"mid": %d}' % mid, mid, 1) for mid in mids])

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, city="testcity", collector_client_id="unit", collector_metrics_port=0,
                         collector_batch_size=1000, collector_flush_ms=200, collector_queue_max=5000)


def run_against(settings: Settings, window: int, backlog: int) -> Iterator[tuple[Collector, WindowBroker]]:
    brokers: list[WindowBroker] = []

    def factory(s: Settings, handlers: ClientHandlers) -> WindowBroker:
        brokers.append(WindowBroker(handlers, window, backlog))
        return brokers[0]

    received_at = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    collector = Collector(settings, serve_metrics=False, client_factory=factory, writer=MemoryWriter(),
                          monotonic=Clock(tick=0.25), now=lambda: received_at)  # every take passes the 200 ms
    collector.start(wait_connected=WAIT_S)
    try:
        assert brokers[0].done.wait(WAIT_S), "the backlog was not drained"
        yield collector, brokers[0]
    finally:
        collector.stop(timeout=WAIT_S)


def window_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "caps batches" in r.getMessage()]


def test_a_broker_window_of_20_is_reported_once_with_the_fix(settings: Settings,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sanitel.collector")
    for collector, broker in run_against(settings, window=20, backlog=400):
        assert broker.acked == list(range(1, 401))  # acknowledge-after-commit still holds, in order
        assert collector.metrics.registry.get_sample_value("sanitel_inflight_window_cap") == 20
    [warning] = window_warnings(caplog)
    assert warning.startswith("broker in-flight window caps batches at 20 messages")
    assert "max_inflight_messages 0" in warning and "receive-maximum" in warning


def test_no_window_warning_when_the_broker_sends_whole_batches(settings: Settings,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sanitel.collector")
    for collector, _ in run_against(settings, window=5000, backlog=4000):
        assert collector.metrics.registry.get_sample_value("sanitel_inflight_window_cap") == 0
    assert window_warnings(caplog) == []


def test_our_own_receive_maximum_below_a_batch_is_reported_as_ours(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "sanitel.collector")
    settings = load_settings(data_dir=tmp_path, city="testcity", collector_client_id="unit", collector_metrics_port=0,
                             collector_batch_size=1000, collector_flush_ms=200, collector_queue_max=100)
    for _ in run_against(settings, window=100, backlog=2000):  # the broker honours our Receive Maximum of 100
        pass
    [warning] = window_warnings(caplog)
    assert warning.startswith("our own receive maximum caps batches at 100") and "SANITEL_COLLECTOR_QUEUE_MAX" in warning


def test_a_metrics_port_in_use_is_one_clear_error_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        settings = load_settings(data_dir=tmp_path, city="testcity", collector_client_id="unit",
                                 collector_metrics_port=taken)
        collector = Collector(settings, client_factory=lambda s, h: WindowBroker(h, 1, 0), writer=MemoryWriter())
        with pytest.raises(SanitelError, match=rf"127\.0\.0\.1:{taken}.*SANITEL_COLLECTOR_METRICS_PORT"):
            collector.start(wait_connected=WAIT_S)


# --- a session's subscription from the other mode ---------------------------------------------------------------


def test_switching_modes_unsubscribes_the_other_modes_filter_on_a_present_session(tmp_path: Path) -> None:
    shared = load_settings(data_dir=tmp_path, city="shenzhen", collector_share_group="g")
    assert stale_subscriptions(shared) == [subscription("shenzhen"), subscription("shenzhen", WORKERS_SHARE_GROUP)]
    plain = load_settings(data_dir=tmp_path, city="shenzhen")
    assert stale_subscriptions(plain) == [subscription("shenzhen", WORKERS_SHARE_GROUP)]

    subscribed: list[str] = []
    handlers = ClientHandlers(lambda *a: subscribed.append("handler"), lambda *a: None, lambda *a: None,
                              lambda *a: None)
    client = paho_collector_client(shared, handlers)
    unsubscribed: list[str] = []
    setattr(client, "unsubscribe", lambda topic, properties=None: unsubscribed.append(topic))  # noqa: B010
    success = ReasonCode(PacketTypes.CONNACK, "Success")
    on_connect = cast(Callable[..., None], client.on_connect)  # paho types it as the version 1 callback
    on_connect(client, None, mqtt.ConnectFlags(session_present=False), success, None)
    assert (subscribed, unsubscribed) == (["handler"], [])  # a fresh session holds nothing old
    on_connect(client, None, mqtt.ConnectFlags(session_present=True), success, None)
    assert subscribed == ["handler", "handler"] and unsubscribed == stale_subscriptions(shared)


def test_a_refused_connection_unsubscribes_nothing(tmp_path: Path) -> None:
    handlers = ClientHandlers(lambda *a: None, lambda *a: None, lambda *a: None, lambda *a: None)
    client = paho_collector_client(load_settings(data_dir=tmp_path, collector_share_group="g"), handlers)
    unsubscribed: list[str] = []
    setattr(client, "unsubscribe", lambda topic, properties=None: unsubscribed.append(topic))  # noqa: B010
    on_connect = cast(Callable[..., None], client.on_connect)
    on_connect(client, None, mqtt.ConnectFlags(session_present=True), ReasonCode(PacketTypes.CONNACK, "Not authorized"),
               None)
    assert unsubscribed == []


