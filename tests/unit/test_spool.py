"""The spool's framing and its cap, on files in a temp folder: damage (a torn tail, a flipped byte, garbage between
records, a bad length, an empty file, a segment of the old format) never stops reading, and is quarantined with its
offset; a full spool or a full disk refuses a batch whole. No clock, no servers."""

from __future__ import annotations

import errno
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.processors.spool import (
    MAGIC,
    STATUS_FILE,
    BadSpan,
    Spool,
    SpooledMessage,
    SpoolFull,
    encode_record,
    inspect_spool,
    parse_segment,
    read_quarantine,
)

AT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def message(n: int, size: int = 20) -> SpooledMessage:
    return (f"sanitation/testcity/bin/b{n}/status", (b'{"n": %d, "pad": "' % n) + b"x" * size + b'"}',
            AT + timedelta(microseconds=n))


def frames(messages: list[SpooledMessage]) -> tuple[bytes, list[int]]:
    """The segment bytes of these messages, and where each record starts."""
    data, offsets = b"", []
    for m in messages:
        offsets.append(len(data))
        data += encode_record(m)
    return data, offsets


def legacy_record(m: SpooledMessage) -> bytes:
    """A record as the spool wrote it before version 1: 4-byte length + msgpack, nothing else."""
    topic, payload, at = m
    body = msgspec.msgpack.encode((topic, payload, (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)))
    return struct.pack(">I", len(body)) + body


MESSAGES = [message(n) for n in range(5)]


# --- framing -----------------------------------------------------------------------------------------------------


def test_records_round_trip_with_their_offsets(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(MESSAGES[:2])
    spool.append(MESSAGES[2:])
    (segment,) = spool.segments()
    contents = spool.read_segment(segment)
    assert [r.message for r in contents.records] == MESSAGES
    assert contents.bad == [] and not contents.legacy
    data, offsets = frames(MESSAGES)
    assert segment.read_bytes() == data
    assert [r.offset for r in contents.records] == offsets


def test_an_empty_segment_has_nothing_and_nothing_bad(tmp_path: Path) -> None:
    (tmp_path / "000000000001.spool").write_bytes(b"")
    spool = Spool(tmp_path)
    assert spool.is_empty() and spool.backlog_bytes() == 0
    contents = spool.read_segment(tmp_path / "000000000001.spool")
    assert (contents.records, contents.bad) == ([], [])


@pytest.mark.parametrize("kept", [1, 2, 4, 8, 13, 14, -1])
def test_a_torn_tail_is_one_torn_span_and_every_record_before_it_reads(kept: int) -> None:
    """``kept`` bytes of the last record reached the disk (-1: all but its last byte)."""
    data, offsets = frames(MESSAGES)
    contents = parse_segment(data[:offsets[-1] + kept] if kept > 0 else data[:kept])
    assert [r.message for r in contents.records] == MESSAGES[:-1]
    (bad,) = contents.bad
    assert (bad.offset, bad.reason) == (offsets[-1], "torn")


@pytest.mark.parametrize("where", ["magic", "version", "length", "crc", "body"])
def test_a_flipped_byte_in_the_middle_loses_that_record_only(where: str) -> None:
    data, offsets = frames(MESSAGES)
    at = offsets[2] + {"magic": 1, "version": 4, "length": 6, "crc": 10, "body": 40}[where]
    damaged = data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]
    contents = parse_segment(damaged)
    assert [r.message for r in contents.records] == MESSAGES[:2] + MESSAGES[3:]
    (bad,) = contents.bad
    assert (bad.offset, bad.length, bad.reason) == (offsets[2], offsets[3] - offsets[2], "corrupt")


def test_a_length_that_runs_past_the_end_in_the_middle_is_corrupt_not_torn() -> None:
    data, offsets = frames(MESSAGES)
    damaged = data[:offsets[1] + 5] + struct.pack(">I", 10_000) + data[offsets[1] + 9:]
    contents = parse_segment(damaged)
    assert [r.message for r in contents.records] == [MESSAGES[0], *MESSAGES[2:]]
    assert [(b.offset, b.reason) for b in contents.bad] == [(offsets[1], "corrupt")]


def test_garbage_between_records_even_with_a_magic_in_it_is_skipped() -> None:
    data, offsets = frames(MESSAGES)
    garbage = b"\x00garbage" + MAGIC + b"\x01\x00\x00\x00\x05junk!" + MAGIC[:2]
    damaged = data[:offsets[3]] + garbage + data[offsets[3]:]
    contents = parse_segment(damaged)
    assert [r.message for r in contents.records] == MESSAGES
    assert [(b.offset, b.length, b.reason) for b in contents.bad] == [(offsets[3], len(garbage), "corrupt")]


def test_garbage_at_the_start_and_a_payload_holding_the_magic_are_fine() -> None:
    tricky = ("sanitation/testcity/bin/b9/status", MAGIC * 3 + b"\x01\xff", AT)
    data, _ = frames([tricky, *MESSAGES])
    contents = parse_segment(b"\xffnoise" + data)
    assert [r.message for r in contents.records] == [tricky, *MESSAGES]
    assert [(b.offset, b.length, b.reason) for b in contents.bad] == [(0, 6, "corrupt")]


def test_a_sound_frame_whose_body_is_not_a_message_is_undecodable_and_skipped() -> None:
    body = msgspec.msgpack.encode(["only", "two"])
    import zlib

    crc = zlib.crc32(body, zlib.crc32(struct.pack(">BI", 1, len(body))))
    odd = MAGIC + struct.pack(">BII", 1, len(body), crc) + body
    data, _ = frames(MESSAGES[:1])
    contents = parse_segment(data + odd + frames(MESSAGES[1:2])[0])
    assert [r.message for r in contents.records] == MESSAGES[:2]
    assert [(b.offset, b.reason) for b in contents.bad] == [(len(data), "undecodable")]


def test_an_old_format_segment_is_read_once_with_the_old_reader() -> None:
    old = b"".join(legacy_record(m) for m in MESSAGES)
    contents = parse_segment(old)
    assert contents.legacy and contents.bad == []
    assert [r.message for r in contents.records] == MESSAGES
    torn = parse_segment(old[:-3])
    assert torn.legacy and [r.message for r in torn.records] == MESSAGES[:-1]
    assert [b.reason for b in torn.bad] == ["torn"]


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=60), min_size=1, max_size=8), data=st.data())
def test_one_damaged_byte_anywhere_never_raises_and_costs_only_its_own_record(
        payloads: list[bytes], data: st.DataObject) -> None:
    messages = [(f"t/{i}", p, AT) for i, p in enumerate(payloads)]
    segment, offsets = frames(messages)
    at = data.draw(st.integers(0, len(segment) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = segment[:at] + bytes([segment[at] ^ flip]) + segment[at + 1:]
    contents = parse_segment(damaged)
    hit = max(i for i, o in enumerate(offsets) if o <= at)
    assert [r.message for r in contents.records] == messages[:hit] + messages[hit + 1:]
    assert len(contents.bad) == 1 and contents.bad[0].offset == offsets[hit]
    truncated = parse_segment(segment[:at])
    assert [r.message for r in truncated.records] == messages[:hit]


# --- quarantine ----------------------------------------------------------------------------------------------------


def test_quarantine_keeps_the_raw_bytes_with_their_offset_and_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(MESSAGES)
    (segment,) = spool.segments()
    spool.close()
    raw = segment.read_bytes()
    spans = [BadSpan(10, 5, "corrupt", "checksum mismatch"), BadSpan(0, 3, "replay_error", "ValueError: x")]
    target = spool.quarantine(segment, spans)
    assert spool.quarantine(segment, spans) == target  # replaying the segment again after a crash: same file
    entries = list(read_quarantine(target))
    assert [(e.segment, e.offset, e.length, e.reason, e.raw) for e in entries] == [
        (segment.name, 0, 3, "replay_error", raw[0:3]), (segment.name, 10, 5, "corrupt", raw[10:15])]
    assert len(list(read_quarantine(target, with_raw=False))) == 2
    assert target.name == segment.name.replace(".spool", ".quarantine")


def test_a_segment_number_is_never_reused_while_its_quarantine_file_is_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(MESSAGES[:1])
    (first,) = spool.segments()
    spool.close()
    spool.quarantine(first, [BadSpan(0, 1, "corrupt", "test")])
    spool.remove(first)
    spool.append(MESSAGES[1:2])
    (second,) = spool.segments()
    assert second.name != first.name and second.name > first.name


# --- cap and a full disk -------------------------------------------------------------------------------------------


def test_at_its_cap_the_spool_refuses_a_batch_whole(tmp_path: Path) -> None:
    big = [message(n, size=30_000) for n in range(3)]
    spool = Spool(tmp_path, max_bytes=64 * 1024)
    spool.append(big[:2])  # 60 KB: below the cap
    spool.append(big[2:])  # below the cap before it, so taken: the cap is exceeded by at most one batch
    before = spool.backlog_bytes()
    assert before >= 64 * 1024
    with pytest.raises(SpoolFull, match="at its cap of 65536"):
        spool.append([message(9)])
    assert spool.backlog_bytes() == before
    assert [r.message for s in spool.segments() for r in spool.read_segment(s).records] == big


def test_a_disk_full_mid_write_cuts_the_partial_batch_off_and_refuses(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    spool.append(MESSAGES[:2])
    (segment,) = spool.segments()
    sound = segment.read_bytes()

    def half_then_enospc(fd: int, buf: bytes) -> None:
        import os

        os.write(fd, buf[:len(buf) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool, "_write_all", half_then_enospc)
    with pytest.raises(SpoolFull, match=r"disk .* is full"):
        spool.append(MESSAGES[2:])
    assert segment.read_bytes() == sound  # nothing torn left behind
    monkeypatch.undo()
    spool.append(MESSAGES[2:])  # the disk has room again: a new segment
    assert [r.message for s in spool.segments() for r in spool.read_segment(s).records] == MESSAGES
    assert len(spool.segments()) == 2


# --- what /health reads ---------------------------------------------------------------------------------------------


def test_inspect_reports_backlog_quarantine_and_fullness_of_every_collector(tmp_path: Path) -> None:
    assert inspect_spool(tmp_path / "absent", 1 << 20).bytes == 0
    one, two = Spool(tmp_path / "c1", max_bytes=64 * 1024), Spool(tmp_path / "c2", max_bytes=64 * 1024)
    one.append(MESSAGES)
    one.close()
    (segment,) = one.segments()
    one.quarantine(segment, [BadSpan(0, 4, "torn", "cut")])
    report = inspect_spool(tmp_path, 1 << 30)
    assert (report.files, report.bytes, report.quarantined_records, report.full) == (
        1, segment.stat().st_size, 1, False)

    two.write_status(full=True, reason="the disk under /x is full")
    report = inspect_spool(tmp_path, 1 << 30)
    assert report.full and report.full_reason == "the disk under /x is full"
    assert json.loads((tmp_path / "c2" / STATUS_FILE).read_bytes())["max_bytes"] == 64 * 1024
    two.write_status(full=False, reason=None)
    assert not inspect_spool(tmp_path, 1 << 30).full
    assert inspect_spool(tmp_path / "c1", 100).full  # no status file there: the backlog against the cap decides


def test_health_reports_cap_quarantine_and_a_full_spool_as_degraded(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from sanitel.api.observability import ApiMetrics
    from sanitel.api.routes.health import _spool_check
    from sanitel.settings import load_settings

    settings = load_settings(data_dir=tmp_path, spool_max_bytes=64 * 1024)
    ctx = cast(Any, SimpleNamespace(settings=settings, metrics=ApiMetrics()))
    check = _spool_check(ctx)
    assert (check.status, check.detail) == ("ok", "empty")
    assert check.data["max_bytes"] == 64 * 1024 and check.data["full"] is False

    spool = Spool(settings.effective_spool_dir / "collector-1", max_bytes=64 * 1024)
    spool.append(MESSAGES)
    spool.close()
    (segment,) = spool.segments()
    spool.quarantine(segment, [BadSpan(0, 4, "corrupt", "checksum mismatch")])
    spool.remove(segment)
    check = _spool_check(ctx)
    assert check.status == "ok" and check.data["quarantined_records"] == 1 and "1 damaged record" in check.detail

    spool.write_status(full=True, reason="the disk under /srv is full (No space left on device)")
    check = _spool_check(ctx)
    assert check.status == "degraded" and check.data["full"] is True
    # the reason is shown with its paths redacted (/health details name no folder of the host, issue 12)
    assert check.detail.startswith("full: the disk under \u2026 is full") and "not acknowledging" in check.detail
    assert "/srv" not in check.detail
