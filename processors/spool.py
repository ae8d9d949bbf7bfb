"""A local, fsync'd, append-only spool of raw messages for when the database is unreachable.

Messages are spooled raw (topic, payload, receive time) so that replay goes through the very same
decode-and-write path as live traffic. Segments are replayed oldest first and deleted only after
their rows are committed: a crash mid-replay replays the segment again, which idempotent writes
make harmless. Bounded by disk, not memory.

Record format: 4-byte big-endian length + msgpack ``[topic, payload, received_at_epoch_us]``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BufferedWriter
from pathlib import Path

import msgspec

_LEN = struct.Struct(">I")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SpooledMessage = tuple[str, bytes, datetime]


class Spool:
    """Not thread-safe: owned by the collector's writer thread."""

    def __init__(self, folder: Path, segment_bytes: int = 32 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._current: Path | None = None
        self._fh: BufferedWriter | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(tuple[str, bytes, int])

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.spool"))

    def backlog_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    def is_empty(self) -> bool:
        return not any(p.stat().st_size for p in self.segments())

    def append(self, messages: list[SpooledMessage]) -> None:
        """Append and fsync: when this returns, the messages survive a crash or power loss."""
        fh = self._open_segment()
        buf = bytearray()
        for topic, payload, received_at in messages:
            us = (received_at - _EPOCH) // timedelta(microseconds=1)
            record = self._encoder.encode((topic, payload, us))
            buf += _LEN.pack(len(record)) + record
        fh.write(buf)
        fh.flush()
        os.fsync(fh.fileno())
        if fh.tell() >= self.segment_bytes:
            self.close()

    def _open_segment(self) -> BufferedWriter:
        if self._fh is None:
            existing = self.segments()
            number = int(existing[-1].stem) + 1 if existing else 1
            self._current = self.folder / f"{number:012d}.spool"
            self._fh = open(self._current, "ab")  # noqa: SIM115 - kept open across appends
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new file's name must survive a crash too
            finally:
                os.close(dir_fd)
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._current = None

    def read_segment(self, path: Path) -> Iterator[SpooledMessage]:
        data = path.read_bytes()
        pos = 0
        while pos + _LEN.size <= len(data):
            (length,) = _LEN.unpack_from(data, pos)
            end = pos + _LEN.size + length
            if end > len(data):
                break  # a torn final record (crash mid-write, before fsync returned): never acked, so redelivered
            topic, payload, us = self._decoder.decode(data[pos + _LEN.size:end])
            yield topic, payload, _EPOCH + timedelta(microseconds=us)
            pos = end

    def oldest_segment(self) -> Path | None:
        """The oldest segment, closing the current one first so that it can be replayed."""
        segments = self.segments()
        if not segments:
            return None
        if self._current is not None and segments[0] == self._current:
            self.close()
        return segments[0]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
