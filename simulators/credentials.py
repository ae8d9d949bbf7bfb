"""``--credentials FILE``: the passwords the simulated devices (and gateways) log in with.

The file is JSON, written by the local stack when it registers the demo fleet::

    {"devices": {"sw-0001": "<password>", …}, "gateways": {"gw-00001": "<password>", …}}

``gateways`` is optional (only scenarios with ``gateway_interval`` send batches). Each sender logs in with
user name = client id = its id (the broker runs ``use_username_as_clientid``) and may write only its own topics
(``sanitel/broker_auth.py``). The file holds plain passwords, so it must be private: a file that its group
or other users may read or write is refused (as ssh refuses a readable private key), and nothing here ever
prints a password — errors name the file, the key and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sanitel.broker_auth import USERNAME_PATTERN, valid_username
from sanitel.errors import ConfigError
from sanitel.schemas.topics import DeviceTopic, GatewayTopic, Hj212Topic, TopicError, parse_topic

Section = Literal["devices", "gateways"]
SECTIONS: tuple[Section, ...] = ("devices", "gateways")
MAX_FILE_BYTES = 16 * 1024 * 1024  # ~100k entries; anything larger is not a credentials file


@dataclass(frozen=True, slots=True)
class Sender:
    """Who publishes a message: a device (its own topics, HJ 212 frames included) or a gateway (its batches)."""

    section: Section
    sender_id: str

    def __str__(self) -> str:
        return f"{'gateway' if self.section == 'gateways' else 'device'} {self.sender_id}"


def sender_of(topic: str) -> Sender | None:
    """The sender whose credentials a message on ``topic`` needs; None for a topic outside the grammar."""
    try:
        parsed = parse_topic(topic)
    except TopicError:
        return None
    if isinstance(parsed, DeviceTopic):
        return Sender("devices", parsed.device_id)
    if isinstance(parsed, Hj212Topic):  # a simulated CEMS unit's MN is its device id (simulators/fleet.py)
        return Sender("devices", parsed.mn)
    if isinstance(parsed, GatewayTopic):
        return Sender("gateways", parsed.gateway_id)
    return None  # sanitel's own alerts/… family: never published by a simulated device


@dataclass(frozen=True)
class SenderCredentials:
    """Passwords by sender. ``repr`` shows counts only: the object travels to worker processes and into logs."""

    devices: Mapping[str, str] = field(default_factory=dict)
    gateways: Mapping[str, str] = field(default_factory=dict)
    source: str = "credentials"  # the file, for messages

    def password(self, sender: Sender) -> str | None:
        return (self.devices if sender.section == "devices" else self.gateways).get(sender.sender_id)

    def missing(self, senders: list[Sender]) -> list[Sender]:
        """The senders without a password, in the given order."""
        return [s for s in senders if self.password(s) is None]

    def __repr__(self) -> str:
        return (f"SenderCredentials({self.source!r}: {len(self.devices)} devices, "
                f"{len(self.gateways)} gateways)")


def load_credentials(path: str | Path) -> SenderCredentials:
    """Read and check a credentials file; ConfigError naming the file and the fix when it is not usable."""
    name = str(path)
    try:
        # O_NOFOLLOW + fstat on the open file: the mode checked is the mode of the file read, not of whatever a
        # symlink swapped in between a stat() and an open()
        # (O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file reads the same)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"--credentials {name}: no such file") from None
    except OSError as exc:
        reason = "a symbolic link; give the file itself" if exc.errno == errno.ELOOP else exc.strerror
        raise ConfigError(f"--credentials {name}: cannot open it ({reason})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"--credentials {name}: not a regular file")
        check_private(name, info.st_mode)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object owns it now
            data = fh.read(MAX_FILE_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"--credentials {name}: larger than {MAX_FILE_BYTES // 2**20} MiB; not a credentials file")
    return parse_credentials(data, source=name)


def check_private(name: str, mode: int) -> None:
    """Refuse a file its group or others may read or write: it holds every device's password."""
    if mode & 0o077:
        raise ConfigError(f"--credentials {name}: mode {stat.S_IMODE(mode):04o} lets other users read or change "
                          f"the device passwords it holds; make it private with: chmod 600 {name}")


def parse_credentials(data: bytes | str, *, source: str = "credentials") -> SenderCredentials:
    """The JSON document of a credentials file, checked; errors never quote a password."""
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise ConfigError(f"--credentials {source}: not UTF-8 text; expected JSON") from None
    except json.JSONDecodeError as exc:
        # exc.msg is e.g. "Expecting ',' delimiter": the place, never the content (which holds passwords)
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise ConfigError(f"--credentials {source}: not JSON ({where}); expected "
                          '{"devices": {"<device id>": "<password>", …}, "gateways": {…}}') from None
    if not isinstance(document, dict):
        raise ConfigError(f"--credentials {source}: the top level must be an object with 'devices' "
                          "(and optionally 'gateways')")
    unknown = sorted(set(document) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"--credentials {source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          "expected 'devices' and 'gateways'")
    sections: dict[Section, dict[str, str]] = {}
    for section in SECTIONS:
        entries = document.get(section, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"--credentials {source}: '{section}' must be an object of id → password")
        for sender_id, password in entries.items():
            if not valid_username(sender_id):
                # the id is not a secret; it is shown cut short in case someone swapped id and password
                raise ConfigError(f"--credentials {source}: {section}: id {sender_id[:64]!r} is not a broker user "
                                  f"name; ids must match {USERNAME_PATTERN}")
            if not isinstance(password, str) or not password:
                raise ConfigError(f"--credentials {source}: {section}.{sender_id}: the password must be a "
                                  "non-empty string")
        sections[section] = dict(entries)
    both = sorted(set(sections["devices"]) & set(sections["gateways"]))
    if both:
        # one broker user name is one login: the same id cannot be a device and a gateway
        raise ConfigError(f"--credentials {source}: {', '.join(both[:5])} listed both as device and as gateway")
    if not sections["devices"] and not sections["gateways"]:
        raise ConfigError(f"--credentials {source}: no credentials in it ('devices' is empty)")
    return SenderCredentials(sections["devices"], sections["gateways"], source)
