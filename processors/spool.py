"""A local, fsync'd, append-only spool of raw messages for when the database is unreachable.

Messages are spooled raw (topic, payload, receive time) so that replay goes through the very same
decode-and-write path as live traffic. Segments (``<number>.spool``, 12 digits) are replayed oldest first
and deleted only after their rows are committed: a crash mid-replay replays the segment again, which
idempotent writes make harmless.

Record format (version 1), all integers big-endian::

    magic   4 bytes  F5 53 50 4C  (0xF5 "SPL")
    version 1 byte   1
    length  4 bytes  length of the body
    crc32   4 bytes  zlib.crc32 of version + length + body
    body    msgpack  [topic: str, payload: bytes, received_at: int (µs since the Unix epoch, UTC)]

Damage is survived, never fatal. A record that fails a check (magic, version, length, checksum) is skipped
by resynchronising on the next magic whose record passes every check; the bytes in between are one *bad
span*. A span that reaches the end of the file is ``torn`` (a crash or a full disk mid-write: never
acknowledged, so the broker redelivers it); one followed by a good record is ``corrupt`` (a bit flip,
garbage); a record with a good checksum whose body is not a spooled message is ``undecodable``; a message
that makes replay fail for its content is ``replay_error`` (the collector decides that). Replay copies bad
spans to a side file, ``<number>.quarantine``, with a log line and a count
(``sanitel_spool_quarantined_records_total``), then goes on with the next good record. A payload that itself
contains a whole valid record could be mistaken for one only while resynchronising inside damage.

Quarantine file: entries, each one header line ``#sanitel-spool-quarantine {json}\\n`` (segment, offset,
length, reason, detail) followed by ``length`` raw bytes and ``\\n``. A segment number is never reused while
its quarantine file exists, so quarantine files are never overwritten by another segment's.

Segments of the earlier format (4-byte length + msgpack, no magic, no checksum) are read once with the old
reader — a segment whose first bytes are not the magic and whose first record decodes that way — replayed
and deleted; whatever follows the first bad record of such a segment is quarantined (the old format cannot
resynchronise). New records are always written in version 1.

Cap: with ``max_bytes`` set, ``append`` raises ``SpoolFull`` once the segments hold that many bytes or more
(the cap is checked before a batch, so the spool may exceed it by at most one batch); a disk that fills up
(ENOSPC, EDQUOT) or any other write error raises ``SpoolFull`` too, after cutting the partly written batch
off again. Either way nothing of the batch is durable and the caller must not acknowledge it.

``status.json`` next to the segments is the collector's own word on whether it is refusing (full), for the
API's /health, which reads this folder (``inspect_spool``) as it reads the backlog.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

log = logging.getLogger("sanitel.spool")

MAGIC = b"\xf5SPL"  # 0xF5 first: an old-format record would need a 4 GiB length to start with it
VERSION = 1
_HEAD = struct.Struct(">4sBII")  # magic, version, body length, crc32
_VERSIONED_LENGTH = struct.Struct(">BI")  # what the checksum covers before the body
_MAX_BODY = 260 * 1024 * 1024  # an MQTT packet is at most 256 MiB: a longer length is damage
_LEGACY_LEN = struct.Struct(">I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUARANTINE_MARK = b"#sanitel-spool-quarantine "
_QUARANTINE_HEADER_MAX = 64 * 1024
STATUS_FILE = "status.json"
_STATUS_BYTES = 1024  # rewritten in place at a fixed size: no new disk blocks needed when the disk is full
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

SpooledMessage = tuple[str, bytes, datetime]

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(tuple[str, bytes, int])


class SpoolFull(Exception):
    """The spool cannot take this batch now (at its cap, disk full, not writable); nothing of it is durable."""


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    offset: int  # where the record starts in its segment
    length: int  # bytes on disk, header included
    message: SpooledMessage


@dataclass(frozen=True, slots=True)
class BadSpan:
    offset: int
    length: int
    reason: str  # torn | corrupt | undecodable | replay_error
    detail: str


@dataclass(frozen=True, slots=True)
class SegmentContents:
    records: list[SpoolRecord]
    bad: list[BadSpan]
    legacy: bool = False  # written in the format before version 1


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    segment: str
    offset: int
    length: int
    reason: str
    detail: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class SpoolReport:
    """What /health says about the spool folder (all collectors under it)."""

    files: int
    bytes: int
    quarantined_records: int
    full: bool  # some collector is refusing messages (its status says so, or its backlog is at its cap)
    full_reason: str | None


# --- records -----------------------------------------------------------------------------------------------


def encode_record(message: SpooledMessage) -> bytes:
    topic, payload, received_at = message
    us = (received_at - _EPOCH) // timedelta(microseconds=1)
    body = _ENCODER.encode((topic, payload, us))
    versioned_length = _VERSIONED_LENGTH.pack(VERSION, len(body))
    crc = zlib.crc32(body, zlib.crc32(versioned_length))
    return _HEAD.pack(MAGIC, VERSION, len(body), crc) + body


def _decode_body(body: bytes) -> SpooledMessage:
    topic, payload, us = _DECODER.decode(body)
    return topic, payload, _EPOCH + timedelta(microseconds=us)


_BODY_ERRORS = (msgspec.DecodeError, OverflowError, ValueError)


def _frame_at(data: bytes, pos: int) -> int | tuple[str, str]:
    """The body length of a sound record at ``pos``, or (reason, detail) of why there is none."""
    rest = len(data) - pos
    if rest < _HEAD.size:
        if data[pos:pos + len(MAGIC)] == MAGIC[:min(rest, len(MAGIC))]:
            return "torn", f"record header cut short ({rest} of {_HEAD.size} bytes)"
        return "corrupt", "no record magic"
    magic, version, length, crc = _HEAD.unpack_from(data, pos)
    if magic != MAGIC:
        return "corrupt", "no record magic"
    if version != VERSION:
        return "corrupt", f"unknown record version {version}"
    if length > _MAX_BODY:
        return "corrupt", f"implausible record length {length}"
    if rest < _HEAD.size + length:
        return "torn", f"record cut short ({rest} of {_HEAD.size + length} bytes)"
    body = data[pos + _HEAD.size:pos + _HEAD.size + length]
    if zlib.crc32(body, zlib.crc32(_VERSIONED_LENGTH.pack(version, length))) != crc:
        return "corrupt", "checksum mismatch"
    return int(length)


def parse_segment(data: bytes) -> SegmentContents:
    """Every sound record of a segment, and the spans of damage between them. Never raises."""
    if data and not data.startswith(MAGIC[:min(len(data), len(MAGIC))]):
        legacy = _parse_legacy(data)
        if legacy is not None:
            return legacy
    records: list[SpoolRecord] = []
    bad: list[BadSpan] = []
    damage_at: int | None = None
    why = ("", "")
    pos, end_of_data = 0, len(data)
    while pos < end_of_data:
        frame = _frame_at(data, pos)
        if isinstance(frame, tuple):
            if damage_at is None:
                damage_at, why = pos, frame
            found = data.find(MAGIC, pos + 1)
            pos = end_of_data if found < 0 else found
            continue
        if damage_at is not None:  # a sound record follows the damage: it was not a torn tail
            bad.append(BadSpan(damage_at, pos - damage_at, "corrupt", why[1]))
            damage_at = None
        end = pos + _HEAD.size + frame
        try:
            records.append(SpoolRecord(pos, end - pos, _decode_body(data[pos + _HEAD.size:end])))
        except _BODY_ERRORS as exc:
            bad.append(BadSpan(pos, end - pos, "undecodable", f"{exc.__class__.__name__}: {exc}"))
        pos = end
    if damage_at is not None:
        bad.append(BadSpan(damage_at, end_of_data - damage_at, *why))
    return SegmentContents(records, bad)


def _parse_legacy(data: bytes) -> SegmentContents | None:
    """A segment of the format before version 1, or None when its first record does not read that way."""
    records: list[SpoolRecord] = []
    pos = 0
    torn = False
    while pos < len(data):
        if pos + _LEGACY_LEN.size > len(data):
            torn = True
            break
        (length,) = _LEGACY_LEN.unpack_from(data, pos)
        end = pos + _LEGACY_LEN.size + length
        if end > len(data):
            torn = True
            break
        try:
            message = _decode_body(data[pos + _LEGACY_LEN.size:end])
        except _BODY_ERRORS:
            break
        records.append(SpoolRecord(pos, end - pos, message))
        pos = end
    if not records:
        return None
    bad = [] if pos == len(data) else [
        BadSpan(pos, len(data) - pos, "torn" if torn else "corrupt",
                "old-format segment: the rest after the last readable record")]
    return SegmentContents(records, bad, legacy=True)


# --- quarantine files ----------------------------------------------------------------------------------------


def read_quarantine(path: Path, *, with_raw: bool = True) -> Iterator[QuarantineEntry]:
    """The entries of a quarantine file (raw bytes left empty unless ``with_raw``); stops at a damaged entry."""
    with path.open("rb") as fh:
        while line := fh.readline(_QUARANTINE_HEADER_MAX):
            if not line.startswith(QUARANTINE_MARK):
                return
            try:
                head = json.loads(line[len(QUARANTINE_MARK):])
                length = int(head["length"])
                entry = QuarantineEntry(str(head["segment"]), int(head["offset"]), length, str(head["reason"]),
                                        str(head["detail"]), b"")
            except (ValueError, KeyError, TypeError):
                return
            if with_raw:
                entry = QuarantineEntry(entry.segment, entry.offset, length, entry.reason, entry.detail,
                                        fh.read(length))
                fh.read(1)
            else:
                fh.seek(length + 1, os.SEEK_CUR)
            yield entry


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _number(path: Path) -> int | None:
    stem = path.name.split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


def _why(exc: OSError, folder: Path) -> str:
    if exc.errno in _DISK_FULL:
        return f"the disk under {folder} is full ({exc.strerror})"
    return f"the spool in {folder} cannot be written ({exc.__class__.__name__}: {exc})"


# --- the spool -------------------------------------------------------------------------------------------


class Spool:
    """Not thread-safe: owned by the collector's writer thread (reading a folder is safe from anywhere)."""

    def __init__(self, folder: Path, *, max_bytes: int | None = None, segment_bytes: int = 32 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._current: Path | None = None
        self._fd: int | None = None

    def segments(self) -> list[Path]:
        numbered = [(n, p) for p in self.folder.glob("*.spool") if (n := _number(p)) is not None]
        return [p for _, p in sorted(numbered)]

    def backlog_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    def is_empty(self) -> bool:
        return not any(p.stat().st_size for p in self.segments())

    def append(self, messages: list[SpooledMessage]) -> None:
        """Append and fsync: when this returns, the messages survive a crash or power loss. SpoolFull when the
        spool is at its cap or the write fails; then nothing of the batch is left in the spool."""
        if self.max_bytes is not None and (backlog := self.backlog_bytes()) >= self.max_bytes:
            raise SpoolFull(f"the spool in {self.folder} holds {backlog} bytes, at its cap of {self.max_bytes}")
        buf = b"".join(encode_record(m) for m in messages)
        try:
            fd = self._open_segment()
        except OSError as exc:
            raise SpoolFull(_why(exc, self.folder)) from exc
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            self._write_all(fd, buf)
            os.fsync(fd)
        except OSError as exc:
            self._cut_back(fd, start)
            raise SpoolFull(_why(exc, self.folder)) from exc
        if start + len(buf) >= self.segment_bytes:
            self.close()

    @staticmethod
    def _write_all(fd: int, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            view = view[os.write(fd, view):]

    def _cut_back(self, fd: int, size: int) -> None:
        """Remove a batch written in part; if even that fails, replay quarantines it as a torn record."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as exc:
            log.error("could not cut a partly written batch off %s (%s); replay will quarantine it",
                      self._current, exc)
        self.close()  # the next batch starts a new segment

    def _open_segment(self) -> int:
        if self._fd is None:
            numbers = [n for p in self.folder.iterdir() if (n := _number(p)) is not None]
            path = self.folder / f"{max(numbers, default=0) + 1:012d}.spool"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._current = path
            _fsync_dir(self.folder)  # the new file's name must survive a crash too
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._current = None

    def read_segment(self, path: Path) -> SegmentContents:
        """Sound records and damage of a segment; reads only."""
        return parse_segment(path.read_bytes())

    def oldest_segment(self) -> Path | None:
        """The oldest segment, closing the current one first so that it can be replayed."""
        segments = self.segments()
        if not segments:
            return None
        if self._current is not None and segments[0] == self._current:
            self.close()
        return segments[0]

    def quarantine(self, segment: Path, spans: list[BadSpan]) -> Path:
        """Copy the spans of a segment to its quarantine file (written whole, atomically: replaying the segment
        again after a crash writes the same file), fsync'd before the segment may be removed."""
        data = segment.read_bytes()
        out = bytearray()
        for span in sorted(spans, key=lambda s: s.offset):
            head = {"segment": segment.name, "offset": span.offset, "length": span.length, "reason": span.reason,
                    "detail": span.detail}
            out += QUARANTINE_MARK + json.dumps(head).encode() + b"\n"
            out += data[span.offset:span.offset + span.length] + b"\n"
        target = self.folder / f"{segment.name.split('.', 1)[0]}.quarantine"
        partial = target.with_name(target.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._write_all(fd, bytes(out))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
        _fsync_dir(self.folder)
        return target

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def write_status(self, *, full: bool, reason: str | None) -> None:
        """Tell /health whether this collector is refusing messages. Best effort: never raises."""
        status = {"full": full, "reason": reason, "max_bytes": self.max_bytes}
        body = json.dumps(status).encode()
        if len(body) > _STATUS_BYTES:
            body = json.dumps({**status, "reason": (reason or "")[:200]}).encode()[:_STATUS_BYTES]
        try:
            fd = os.open(self.folder / STATUS_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, body.ljust(_STATUS_BYTES), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not write %s (%s); /health judges fullness by the backlog alone",
                        self.folder / STATUS_FILE, exc)


# --- what /health reads --------------------------------------------------------------------------------------


def inspect_spool(folder: Path, default_max_bytes: int) -> SpoolReport:
    """Backlog, quarantined records and fullness of every collector spool under ``folder``; an absent folder is an
    empty spool. A collector's folder is full when its status says so or its backlog is at its cap (from the
    status, else ``default_max_bytes``). Files replayed and deleted while this looks are skipped."""
    if not folder.is_dir():
        return SpoolReport(0, 0, 0, False, None)
    files = 0
    backlog: dict[Path, int] = {}
    for path in folder.rglob("*.spool"):
        with contextlib.suppress(FileNotFoundError):
            backlog[path.parent] = backlog.get(path.parent, 0) + path.stat().st_size
            files += 1
    quarantined = 0
    for path in folder.rglob("*.quarantine"):
        with contextlib.suppress(OSError):
            quarantined += sum(1 for _ in read_quarantine(path, with_raw=False))
    statuses: dict[Path, dict[str, object]] = {}
    for path in folder.rglob(STATUS_FILE):
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(path.read_bytes())
            if isinstance(loaded, dict):
                statuses[path.parent] = loaded
    reasons: list[str] = []
    for where in sorted(set(backlog) | set(statuses)):
        status = statuses.get(where, {})
        cap = status.get("max_bytes")
        cap = cap if isinstance(cap, int) else default_max_bytes
        if status.get("full") is True:
            reasons.append(str(status.get("reason") or f"{where} is full"))
        elif backlog.get(where, 0) >= cap:
            reasons.append(f"the spool in {where} holds {backlog[where]} bytes, at its cap of {cap}")
    return SpoolReport(files, sum(backlog.values()), quarantined, bool(reasons), "; ".join(reasons) or None)
