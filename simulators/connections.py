"""Publishing as the devices themselves: one MQTT connection per device (and per gateway), all driven from the
caller's thread.

The broker's ACL lets a device write only ``sanitation/{city}/{its kind}/{its id}/…`` and makes its client id its
user name (``sanitel/broker_auth.py``), so a demo that shows the real security model cannot share one connection
between devices. Each sender gets a paho client (user name = client id = its id, its password from
``--credentials``) and one selector (epoll on Linux) waits on all their sockets: no thread per device, and no
``select()`` limit of 1,024 descriptors. paho's external-loop calls do the protocol: ``loop_read`` on a readable
socket, ``loop_write`` while paho holds unsent bytes, ``loop_misc`` (keep-alive) once a second per connection.

The connections speak MQTT 5, unlike the single service-account connection (3.1.1): to a 3.1.1 client the broker
acknowledges a PUBLISH the ACL denied exactly like one it accepted, so a missing ACL entry would look like
delivery. MQTT 5's PUBACK carries a reason code (0x87 not authorised), and such a message is an error.

A sender the broker refuses — its CONNECT (wrong password, unknown user) or one of its PUBLISHes (registered
with another kind or city than the scenario's) — is logged once, its connection is closed and not re-opened (a
password or a registration does not fix itself), and from then on each of its messages counts as an error. A
connection that drops is re-opened with backoff, and paho re-sends what the broker had not acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import selectors
import ssl
import time
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt

from sanitel.errors import ConfigError, SanitelError
from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.simulators.credentials import Sender, SenderCredentials, sender_of
from sanitel.simulators.publisher import Publisher, PublishStats, unreachable

log = logging.getLogger(__name__)

# One process's ceiling. Each connection is a socket (a descriptor here and one at the broker) and a paho client;
# a few thousand are a demo or a district, beyond that use the simulator service account (one connection) for load.
MAX_CONNECTIONS = 5000
_SPARE_DESCRIPTORS = 64  # for the interpreter, the ground-truth file, a worker's pipes


@dataclass
class DeviceStats(PublishStats):
    """``failed``: messages handed to a connection that will never be acknowledged (refused by PUBACK reason
    code, or their sender's reconnection was refused); they are errors, and flushing does not wait for them."""

    failed: int = 0

    @property
    def unacked(self) -> int:
        return self.sent - self.acked - self.failed


class _Link:
    """One sender's connection and its counts."""

    __slots__ = ("acked", "backoff", "client", "connected_once", "failed", "mids", "probing", "refused", "retry_at",
                 "sender", "sent", "up")

    def __init__(self, sender: Sender, client: mqtt.Client) -> None:
        self.sender = sender
        self.client = client
        self.up = False                 # CONNACK success on the current socket
        self.connected_once = False
        self.refused: str | None = None  # why the broker refused it (CONNECT or a PUBLISH), once it did
        self.retry_at = 0.0             # when a lost connection is re-opened
        self.backoff = 1.0
        self.sent = self.acked = self.failed = 0
        self.mids: dict[int, str] = {}  # message id → topic, to name the topic of a message the broker refused
        self.probing = False            # lost with messages outstanding, and nothing acknowledged since

    @property
    def outstanding(self) -> int:
        return self.sent - self.acked - self.failed


class DevicePublisher(Publisher):
    """Publishes each message over its sender's own connection (found from the topic). Not thread-safe."""

    QUEUE_LIMIT = 50_000            # unacknowledged messages over all connections before publish() waits
    INFLIGHT = 100                  # per connection
    KEEPALIVE_S = 60
    RECONNECT_S = (1.0, 30.0)       # first wait after a loss, doubling up to the cap (with jitter)
    RECONNECTS_PER_PASS = 100       # re-opened per housekeeping pass, so a dead broker cannot stall publishing

    def __init__(self, target: BrokerTarget, credentials: SenderCredentials, senders: list[Sender]) -> None:
        super().__init__(target, None)
        self.stats: DeviceStats = DeviceStats()
        missing = credentials.missing(senders)
        if missing:
            shown = ", ".join(str(s) for s in missing[:8]) + (", …" if len(missing) > 8 else "")
            raise ConfigError(
                f"--credentials {credentials.source}: no password for {len(missing):,} of the {len(senders):,} "
                f"senders of this run ({shown}); register them and write the file again, or run without "
                "--credentials as the simulator service account (its URL in --broker)")
        if len(senders) > MAX_CONNECTIONS:
            raise ConfigError(
                f"{len(senders):,} senders in one process: per-device connections are for demos (at most "
                f"{MAX_CONNECTIONS:,} a process); split the run with --workers, or for load publish as the "
                "simulator service account (its URL in --broker, no --credentials)")
        _ensure_descriptors(len(senders))
        self.credentials = credentials
        self.selector = selectors.DefaultSelector()
        # one TLS context for every connection: loading the CA store once, not per device
        self._ssl = target.ssl_context() if target.tls else None
        self.links: dict[Sender, _Link] = {}
        for sender in senders:
            password = credentials.password(sender)
            assert password is not None  # checked above
            self.links[sender] = self._link(sender, password)
        self._by_topic: dict[str, _Link | None] = {}
        self._unrouted: set[str] = set()
        self._pending_write: set[_Link] = set()
        self._since_service = 0
        self._next_misc = 0.0
        self._closing = False

    def _link(self, sender: Sender, password: str) -> _Link:
        own = replace(self.target, username=sender.sender_id, password=password, client_id=sender.sender_id,
                      tls=False)  # TLS is set below from the shared context
        client = paho_client(own, sender.sender_id, protocol=mqtt.MQTTv5, clean_start=True,
                             keepalive=self.KEEPALIVE_S, max_inflight=self.INFLIGHT)
        if self._ssl is not None:  # after paho_client's connect_async: paho reads it when it opens the socket
            client.tls_set_context(self._ssl)
        link = _Link(sender, client)
        client.user_data_set(link)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        return link

    # --- paho callbacks (all on the caller's thread, inside loop_read/loop_write/loop_misc) -------------

    def _on_socket_open(self, client: mqtt.Client, link: _Link, sock: Any) -> None:
        try:
            self.selector.register(sock, selectors.EVENT_READ, link)
        except KeyError:  # the descriptor number of a socket closed without our hearing of it: the old key is stale
            self.selector.unregister(sock.fileno())
            self.selector.register(sock, selectors.EVENT_READ, link)

    def _on_socket_close(self, client: mqtt.Client, link: _Link, sock: Any) -> None:
        # paho calls this just before closing the socket: unregister while the descriptor is still ours
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        self._pending_write.discard(link)

    def _on_connect(self, client: mqtt.Client, link: _Link, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            link.up = False
            log.warning("%s: the broker at %s refused its credentials from %s (%s); its messages count as errors",
                        link.sender, self.target.redacted(), self.credentials.source, reason)
            self._give_up(link, f"CONNECT: {reason}")
            return
        if link.connected_once:
            self.stats.reconnects += 1
        link.up = link.connected_once = True
        link.backoff = self.RECONNECT_S[0]

    def _on_disconnect(self, client: mqtt.Client, link: _Link, flags: Any, reason: Any, props: Any) -> None:
        if link.refused is not None or self._closing:
            return  # the refusal was reported once; closing is not a loss
        if link.up and link.probing and link.outstanding:
            # Mosquitto closes a connection right after refusing a PUBLISH (PUBACK 0x87). With more PUBLISHes unread
            # in its socket the close is a TCP reset, which can discard the PUBACK before paho reads it; paho then
            # reconnects, re-sends everything and is reset again, for ever. A second connection lost after its
            # CONNACK with nothing acknowledged since the first loss is that refusal.
            topic = next(iter(link.mids.values()), "?")
            log.warning("%s: the broker closed its connection after its messages on %s twice without acknowledging "
                        "any (a refused PUBLISH: is it registered with this kind and city?); its messages count as "
                        "errors", link.sender, topic)
            link.up = False
            self._give_up(link, f"PUBLISH on {topic}: connection closed by the broker without an acknowledgement "
                                "(refused)")
            return
        if link.up:  # a lost connection is an error; a (re)connection attempt that fails before CONNACK is retried
            link.up = False
            self.stats.errors += 1
        link.probing = link.outstanding > 0  # lost with messages outstanding: is the broker refusing them?
        self._schedule_retry(link)

    def _on_publish(self, client: mqtt.Client, link: _Link, mid: int, reason: Any, props: Any) -> None:
        topic = link.mids.pop(mid, "")
        if link.refused is not None:
            return  # given up on: what it had outstanding is already counted as failed
        if not reason.is_failure:
            link.acked += 1
            self.stats.acked += 1
            link.probing = False  # the next connection, if any, gets the full window again
            return
        # Mosquitto 2.0 closes the connection right after a PUBACK refusing a PUBLISH (logged as "Bad socket
        # read/write"); paho would reconnect and re-send the rest, one refusal and reconnection per message. The
        # ACL grants a device every stream of its kind, so a refusal means its registration (kind, city) does not
        # match the scenario: stop the sender, as for a refused CONNECT.
        log.warning("%s: the broker refused its message on %s (%s): is it registered with this kind and city? Its "
                    "connection is closed and its messages count as errors", link.sender, topic, reason)
        self._give_up(link, f"PUBLISH on {topic}: {reason}")

    def _give_up(self, link: _Link, reason: str) -> None:
        """Stop a sender the broker refused: what it has outstanding and everything it sends from now on are
        errors (flushing no longer waits for them). Its socket is closed by _service_events, outside paho's
        callback."""
        link.refused = reason
        lost = link.outstanding
        link.failed += lost
        self.stats.failed += lost
        self.stats.errors += lost

    # --- Publisher ------------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Open every sender's connection and wait for their CONNACKs. SanitelError when the broker cannot be
        reached or refuses every sender; a sender refused alone is logged and its messages become errors."""
        for n, link in enumerate(self.links.values()):
            try:
                link.client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                if n == 0:
                    raise unreachable(self.target, exc) from None
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise SanitelError(f"opened {n:,} of {len(self.links):,} device connections to "
                                   f"{self.target.redacted()}, then: {reason}") from None
            self._service_events(0.0)
        deadline = time.monotonic() + timeout
        while (waiting := [lk for lk in self.links.values() if not lk.up and lk.refused is None]) \
                and time.monotonic() < deadline:
            self._service_events(0.05)
        if waiting:
            raise SanitelError(f"no answer (CONNACK) from {self.target.redacted()} within {timeout:.0f}s for "
                               f"{len(waiting):,} of {len(self.links):,} device connections (e.g. {waiting[0].sender})")
        if self.links and all(link.refused is not None for link in self.links.values()):
            first = next(iter(self.links.values()))
            raise SanitelError(f"the broker at {self.target.redacted()} refused every sender's credentials "
                               f"(e.g. {first.sender}: {first.refused}); is {self.credentials.source} from this "
                               "broker's registry?")
        self._next_misc = time.monotonic() + 1.0

    def publish(self, topic: str, payload: bytes) -> None:
        link = self._by_topic.get(topic)
        if link is None:
            link = self._route(topic)
            if link is None:
                self.stats.errors += 1
                return
        if link.refused is not None:
            self.stats.errors += 1
            return
        while self.stats.unacked >= self.QUEUE_LIMIT:
            self.service(0.01)
        client = link.client
        # paho keeps a QoS 1 message while the connection is down and sends it after reconnecting
        info = client.publish(topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.stats.errors += 1
            return
        link.mids[info.mid] = topic
        link.sent += 1
        self.stats.sent += 1
        if client.want_write():  # the socket took only part of it: finish when it is writable
            self._pending_write.add(link)
        self._since_service += 1
        if self._since_service >= 200:
            self.service(0.0)

    def _route(self, topic: str) -> _Link | None:
        sender = sender_of(topic)
        link = self.links.get(sender) if sender is not None else None
        if link is None:
            if topic not in self._unrouted:  # once per topic: the run goes on, the summary shows the errors
                self._unrouted.add(topic)
                log.warning("no connection for %s (not a sender of this run); its messages count as errors",
                            sender or topic)
            return None
        self._by_topic[topic] = link
        return link

    def service(self, timeout: float = 0.0) -> None:
        self._since_service = 0
        self._service_events(timeout)
        if time.monotonic() >= self._next_misc:
            self._housekeeping()

    def _service_events(self, timeout: float) -> None:
        for link in self._pending_write:
            self._watch_writes(link)
        self._pending_write.clear()
        for key, mask in self.selector.select(timeout):
            link = key.data
            client = link.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
                sock = client.socket()
                # TLS: records already decrypted wait inside the SSL object, where the selector cannot see them
                while isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                    client.loop_read()
                    sock = client.socket()
            if link.refused is not None:
                if client.socket() is not None:
                    client.disconnect()
                continue
            if client.socket() is not None and (mask & selectors.EVENT_WRITE or client.want_write()):
                client.loop_write()
            if client.socket() is not None:
                self._watch_writes(link)

    def _watch_writes(self, link: _Link) -> None:
        """Ask the selector for writability exactly while paho holds unsent bytes for this connection."""
        sock = link.client.socket()
        if sock is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.client.want_write() else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self.selector.get_key(sock).events != events:
                self.selector.modify(sock, events, link)

    def _housekeeping(self) -> None:
        """Once a second: keep-alive for every open connection, re-open lost ones whose backoff is over."""
        now = time.monotonic()
        self._next_misc = now + 1.0
        reopened = 0
        for link in self.links.values():
            client = link.client
            if client.socket() is not None:
                client.loop_misc()
            elif link.refused is None and now >= link.retry_at and reopened < self.RECONNECTS_PER_PASS:
                reopened += 1
                try:
                    client.reconnect()  # paho re-sends unacknowledged QoS 1 messages after CONNACK
                except (OSError, ssl.SSLError):
                    self._schedule_retry(link)

    def _schedule_retry(self, link: _Link) -> None:
        # jitter: after a broker restart thousands of devices should not knock at the same instant
        link.retry_at = time.monotonic() + link.backoff * random.uniform(0.5, 1.0)
        link.backoff = min(link.backoff * 2, self.RECONNECT_S[1])

    def refused(self) -> dict[str, str]:
        """Senders the broker refused (their CONNECT or a PUBLISH) → why."""
        return {link.sender.sender_id: link.refused for link in self.links.values() if link.refused is not None}

    def close(self) -> None:
        self._closing = True
        for link in self.links.values():
            if link.client.socket() is not None:
                link.client.disconnect()  # writes DISCONNECT and closes the socket (on_socket_close unregisters)
        self.selector.close()


def _ensure_descriptors(connections: int) -> None:
    """Raise the soft limit on open files when the connections need more (up to the hard limit), or say why not."""
    needed = connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(f"{connections:,} device connections need {needed:,} open files, the limit is {hard:,} "
                          "(ulimit -Hn); raise it, use --workers, or publish as the simulator service account")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def open_device_publisher(broker_url: str, credentials: SenderCredentials, senders: list[Sender]) -> DevicePublisher:
    """A connected per-device publisher (SanitelError if the broker cannot be reached or refuses every sender)."""
    publisher = DevicePublisher(BrokerTarget.parse(broker_url), credentials, senders)
    try:
        publisher.connect(timeout=max(10.0, len(senders) / 100))
    except BaseException:
        publisher.close()
        raise
    return publisher
