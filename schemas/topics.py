"""The MQTT topic grammar — the one place that defines it.

    sanitation/{city}/{kind}/{device_id}/{stream}     one device's readings
    sanitation/{city}/gateway/{gateway_id}/batch      many devices' readings in one message
    sanitation/{city}/cems/{mn}/hj212                 raw HJ 212-2017 frames from a CEMS unit
    sanitation/{city}/alerts/{severity}               alert notifications (published by sanitel)

The collector subscribes to everything under ``sanitation/{city}/#``, so no message under the root goes unseen:
a topic outside the grammar (too few or too many levels, an empty or malformed level) is dead-lettered as
``bad_topic``. The one family it skips is the one sanitel itself publishes, ``sanitation/{city}/alerts/#``
(the broker ACL lets only service accounts write there, see ``sanitel/broker_auth.py``): such a message is
acknowledged without being stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "sanitation"
DEVICE_KINDS = ("sweeper", "transfer_station", "bin", "camera", "cems", "truck")
STREAMS = ("telemetry", "event", "status")
SEVERITIES = ("critical", "major", "minor", "warning")
SYSTEM_FAMILIES = ("alerts",)  # topic families sanitel itself publishes under sanitation/{city}/
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
_ID = re.compile(rf"^{ID_PATTERN}$")
CITY_PATTERN = r"[a-z0-9_-]{1,32}"
_CITY = re.compile(rf"^{CITY_PATTERN}$")

DeviceKind = Literal["sweeper", "transfer_station", "bin", "camera", "cems", "truck"]


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


@dataclass(frozen=True, slots=True)
class SystemTopic:
    """A topic sanitel itself publishes (``sanitation/{city}/alerts/…``): not a reading, skipped by the collector."""

    city: str
    family: str


ParsedTopic = DeviceTopic | GatewayTopic | Hj212Topic | SystemTopic
_SHOWN = 120  # characters of a bad topic quoted back in the reason


def parse_topic(topic: str) -> ParsedTopic:
    """Parse an inbound topic, or raise TopicError naming what is wrong. Never raises anything else."""
    parts = topic.split("/")
    if parts[0] != ROOT or len(parts) < 3:
        raise TopicError("bad_topic", f"topic {_show(topic)} is not sanitation/{{city}}/{{kind}}/{{device_id}}/"
                                      "{stream}")
    if parts[2] in SYSTEM_FAMILIES and _CITY.fullmatch(parts[1]):
        return SystemTopic(parts[1], parts[2])
    if len(parts) != 5:
        raise TopicError("bad_topic", f"topic {_show(topic)} has {len(parts)} levels; expected 5: "
                                      "sanitation/{city}/{kind}/{device_id}/{stream}")
    _, city, kind, ident, stream = parts
    if "" in parts:
        raise TopicError("bad_topic", f"topic {_show(topic)} has an empty level")
    if not _CITY.fullmatch(city):
        raise TopicError("bad_topic", f"city {_show(city)} in topic must match {CITY_PATTERN}")
    if not _ID.fullmatch(ident):
        raise TopicError("bad_topic", f"id {_show(ident)} in topic must match {ID_PATTERN}")
    if kind == "gateway":
        if stream != "batch":
            raise TopicError("bad_topic", f"gateway topics end in /batch, not /{_show(stream)}")
        return GatewayTopic(city, ident)
    if kind not in DEVICE_KINDS:
        raise TopicError("unknown_kind", f"unknown device kind {_show(kind)}; expected one of {', '.join(DEVICE_KINDS)}")
    if kind == "cems" and stream == "hj212":
        return Hj212Topic(city, ident)
    if stream not in STREAMS:
        raise TopicError("bad_topic", f"unknown stream {_show(stream)}; expected one of {', '.join(STREAMS)}")
    return DeviceTopic(city, kind, ident, stream)


def _show(text: str) -> str:
    """A topic or level quoted in a reason: repr (so NUL and control characters show as escapes), capped."""
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}…"


def device_topic(city: str, kind: str, device_id: str, stream: str = "telemetry") -> str:
    return f"{ROOT}/{city}/{kind}/{device_id}/{stream}"


def gateway_topic(city: str, gateway_id: str) -> str:
    return f"{ROOT}/{city}/gateway/{gateway_id}/batch"


def hj212_topic(city: str, mn: str) -> str:
    return f"{ROOT}/{city}/cems/{mn}/hj212"


def alert_topic(city: str, severity: str) -> str:
    return f"{ROOT}/{city}/alerts/{severity}"


def subscription(city: str | None = None, share_group: str | None = None) -> str:
    """The collector's subscription: everything under the city (a topic outside the grammar must be seen to be
    dead-lettered), optionally as an MQTT 5 shared subscription (``$share/{group}/{filter}``, MQTT 5 §4.8.2)."""
    base = f"{ROOT}/{city or '+'}/#"
    return f"$share/{share_group}/{base}" if share_group else base
