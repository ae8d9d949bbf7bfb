"""The reconnect loops (tenacity, with their sleep and clock as parameters) back off on schedule and give up when
they should — driven against a port where nothing listens, with a fake sleep that only moves a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from sanitel.api.stream import AlertBroadcaster
from sanitel.errors import SanitelError
from sanitel.mqtt_wire import BrokerTarget
from sanitel.servers import free_port
from sanitel.simulators.publisher import FastPublisher


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_fast_publisher_backs_off_to_10_s_and_gives_up_after_120_s() -> None:
    time = FakeTime()
    publisher = FastPublisher(BrokerTarget.parse(f"mqtt://127.0.0.1:{free_port()}"), "sim-test",
                              sleep=time.sleep, monotonic=time.monotonic)
    with pytest.raises(SanitelError, match=r"could not reconnect for 120s: cannot reach the broker"):
        publisher.service()  # no connection: service() reconnects
    assert time.sleeps == [0.5, 1, 2, 4, 8] + [10] * 11  # the attempt after 125.5 s of trying is the last
    assert (publisher.stats.errors, publisher.stats.reconnects) == (1, 0)


def test_the_alert_stream_retries_an_unreachable_database_with_backoff_up_to_15_s() -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 7:
            raise asyncio.CancelledError  # the API shutting down

    broadcaster = AlertBroadcaster(f"postgresql://nobody@127.0.0.1:{free_port()}/sanitel", sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(broadcaster._run())  # the listener task's body
    assert sleeps == [0.5, 1, 2, 4, 8, 15, 15]
