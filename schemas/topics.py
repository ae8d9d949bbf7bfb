"""The MQTT topic grammar — the one place that defines it.

    sanitation/{city}/{kind}/{device_id}/{stream}     one device's readings
    sanitation/{city}/gateway/{gateway_id}/batch      many devices' readings in one message
    sanitation/{city}/cems/{mn}/hj212                 raw HJ 212-2017 frames from a CEMS unit
    sanitation/{city}/alerts/{severity}               alert notifications (published by sanitel)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "sanitation"
DEVICE_KINDS = ("sweeper", "transfer_station", "bin", "camera", "cems")
STREAMS = ("telemetry", "event", "status")
SEVERITIES = ("critical", "major", "minor", "warning")
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_ID = re.compile(rf"^{ID_PATTERN}$")
CITY_PATTERN = r"[a-z0-9_-]{1,32}"
_CITY = re.compile(rf"^{CITY_PATTERN}$")

DeviceKind = Literal["sweeper", "transfer_station", "bin", "camera", "cems"]


class TopicError(ValueError):
    """A topic outside the grammar; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    city: str
    kind: str
    device_id: str
    stream: str


@dataclass(frozen=True, slots=True)
class GatewayTopic:
    city: str
    gateway_id: str


@dataclass(frozen=True, slots=True)
class Hj212Topic:
    city: str
    mn: str


ParsedTopic = DeviceTopic | GatewayTopic | Hj212Topic


def parse_topic(topic: str) -> ParsedTopic:
    """Parse an inbound topic, or raise TopicError naming what is wrong."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise TopicError("bad_topic", f"topic {topic!r} is not sanitation/{{city}}/{{kind}}/{{device_id}}/{{stream}}")
    _, city, kind, ident, stream = parts
    if not _CITY.match(city):
        raise TopicError("bad_topic", f"city {city!r} in topic must match {CITY_PATTERN}")
    if not _ID.match(ident):
        raise TopicError("bad_topic", f"id {ident!r} in topic must match {ID_PATTERN}")
    if kind == "gateway":
        if stream != "batch":
            raise TopicError("bad_topic", f"gateway topics end in /batch, not /{stream}")
        return GatewayTopic(city, ident)
    if kind not in DEVICE_KINDS:
        raise TopicError("unknown_kind", f"unknown device kind {kind!r}; expected one of {', '.join(DEVICE_KINDS)}")
    if kind == "cems" and stream == "hj212":
        return Hj212Topic(city, ident)
    if stream not in STREAMS:
        raise TopicError("bad_topic", f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
    return DeviceTopic(city, kind, ident, stream)


def device_topic(city: str, kind: str, device_id: str, stream: str = "telemetry") -> str:
    return f"{ROOT}/{city}/{kind}/{device_id}/{stream}"


def gateway_topic(city: str, gateway_id: str) -> str:
    return f"{ROOT}/{city}/gateway/{gateway_id}/batch"


def hj212_topic(city: str, mn: str) -> str:
    return f"{ROOT}/{city}/cems/{mn}/hj212"


def alert_topic(city: str, severity: str) -> str:
    return f"{ROOT}/{city}/alerts/{severity}"


def subscription(city: str | None = None, share_group: str | None = None) -> str:
    """The collector's subscription: every inbound topic, optionally as an MQTT 5 shared subscription."""
    base = f"{ROOT}/{city or '+'}/+/+/+"
    return f"$share/{share_group}/{base}" if share_group else base
