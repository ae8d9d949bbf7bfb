"""The one timestamp grammar (schemas/timestamps.py): exactly RFC 3339 date-time, or epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sanitel.schemas.timestamps import (
    _FLOAT_EXACT_MS,
    RFC3339_PATTERN,
    TimestampError,
    _canonical_utc,
    _general_rfc3339,
    parse_timestamp,
)

T = datetime(2026, 11, 28, 19, 21, 20, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)

ACCEPT: list[tuple[str | int, datetime]] = [
    ("2026-11-28T19:21:20Z", T),
    ("2026-11-28t19:21:20z", T),  # RFC 3339 §5.6 NOTE: t and z may be lower case
    ("2026-11-28T19:21:20z", T),
    ("2026-11-28t19:21:20Z", T),
    ("2026-11-29T03:21:20+08:00", T),
    ("2026-11-28T11:21:20-08:00", T),
    ("2026-11-28T19:21:20+00:00", T),
    ("2026-11-28T19:21:20-00:00", T),  # §4.3: unknown local offset, same instant
    ("2026-11-28T19:21:20.123+08:00", datetime(2026, 11, 28, 11, 21, 20, 123000, tzinfo=UTC)),
    ("2026-11-28T19:21:20.5Z", T.replace(microsecond=500000)),
    ("2026-11-28T19:21:20.123456Z", T.replace(microsecond=123456)),
    ("2026-11-28T19:21:20.1234569Z", T.replace(microsecond=123456)),  # truncated, never rounded up
    ("2026-11-28T19:21:20.999999999Z", T.replace(microsecond=999999)),
    ("2026-11-28T19:21:20.000Z", T),
    ("2028-02-29T00:00:00Z", datetime(2028, 2, 29, tzinfo=UTC)),  # leap day
    ("2000-02-29T00:00:00Z", datetime(2000, 2, 29, tzinfo=UTC)),  # divisible by 400
    ("2026-11-28T23:59:00+23:59", datetime(2026, 11, 28, 0, 0, tzinfo=UTC)),  # largest offset
    ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),  # leap second (§5.7), stored as POSIX time
    ("2016-12-31T23:59:60.25Z", datetime(2017, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),
    ("2017-01-01T07:59:60+08:00", datetime(2017, 1, 1, tzinfo=UTC)),  # the same leap second in UTC+8
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),  # the earliest instant
    ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),  # the latest
    ("9999-12-31T23:59:59+01:00", datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)),
    (1_795_893_680_000, T),  # epoch milliseconds
    (0, datetime(1970, 1, 1, tzinfo=UTC)),
    (-1000, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (253_402_300_799_999, datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
]

REJECT: list[tuple[object, str]] = [
    ("20261128T192120Z", "ISO 8601 basic format"),
    ("2026-11-28T192120Z", "basic time"),
    ("2026-11-28T19:21:20", "no offset"),
    ("2026-11-28 19:21:20Z", "space for T (RFC 3339 §5.6 NOTE allows an application to choose it; this one doesn't)"),
    ("2026-11-28_19:21:20Z", "other separator"),
    ("2026-11-28T24:00:00Z", "24:00 (ISO 8601 end of day)"),
    ("2026-11-28T19:60:00Z", "minute 60"),
    ("2026-11-28T19:21:61Z", "second 61"),
    ("2026-11-28T19:21:60Z", "leap second not at the end of a UTC day"),
    ("2026-11-30T23:59:60+01:00", "leap second spelled in UTC+1 but 22:59:60 UTC"),
    ("2026-11-29T23:59:60Z", "leap second not on the last day of the month"),
    ("2026-02-29T00:00:00Z", "not a leap year"),
    ("1900-02-29T00:00:00Z", "century, not a leap year"),
    ("2026-13-01T00:00:00Z", "month 13"),
    ("2026-00-10T00:00:00Z", "month 0"),
    ("2026-04-31T00:00:00Z", "April 31"),
    ("2026-11-00T00:00:00Z", "day 0"),
    ("0000-01-01T00:00:00Z", "year 0 (RFC 3339 allows it; no instant before 0001 is held)"),
    ("0001-01-01T00:00:00+01:00", "year 0 after conversion to UTC"),
    ("9999-12-31T23:59:59-01:00", "year 10000 after conversion to UTC"),
    ("9999-12-31T23:59:60Z", "a leap second past the end of year 9999"),
    ("2026-11-28T19:21:20+24:00", "offset hour 24"),
    ("2026-11-28T19:21:20+08:60", "offset minute 60"),
    ("2026-11-28T19:21:20+0800", "offset without a colon"),
    ("2026-11-28T19:21:20+08", "offset without minutes"),
    ("2026-11-28T19:21:20.Z", "empty fraction"),
    ("2026-11-28T19:21:20,5Z", "decimal comma"),
    ("2026-11-28T19:21Z", "no seconds"),
    ("2026-11-28T19Z", "reduced precision"),
    ("2026-11-28", "date only"),
    ("2026-W48-6T19:21:20Z", "week date"),
    ("2026-332T19:21:20Z", "ordinal date"),
    ("+2026-11-28T19:21:20Z", "expanded year"),
    ("26-11-28T19:21:20Z", "two-digit year"),
    ("2026-11-28T19:21:20Z\n", "trailing newline"),
    (" 2026-11-28T19:21:20Z", "leading space"),
    ("2026-11-28T19:21:20Z ", "trailing space"),
    ("２０２６-11-28T19:21:20Z", "full-width digits"),
    ("٢٠٢٦-11-28T19:21:20Z", "Arabic-Indic digits"),
    ("2026-11-28T19:21:20Z\x00", "NUL"),
    ("", "empty"),
    ("yesterday", "words"),
    ("1795893680000", "epoch milliseconds as a string"),
    (10**20, "epoch milliseconds beyond year 9999"),
    (-(10**20), "epoch milliseconds before year 1"),
    (10**400, "a huge integer"),
    (True, "a boolean"),
    (1.764e12, "a float (integral numbers are turned into int by the decoder, not here)"),
    (None, "null"),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPT, ids=[str(v) for v, _ in ACCEPT])
def test_accepted(value: str | int, expected: datetime) -> None:
    got = parse_timestamp(value)
    assert got == expected and got.tzinfo is UTC


@pytest.mark.parametrize(("value", "why"), REJECT, ids=[w for _, w in REJECT])
def test_rejected_with_a_timestamp_error(value: object, why: str) -> None:
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(value)  # type: ignore[arg-type]  # non-str/int values on purpose: JSON can carry anything
    assert len(str(caught.value)) < 400  # a huge value is not quoted back whole


SHAPED_BUT_REFUSED = {  # right shape for the pattern; the calendar, the clock or the range refuses them
    "2026-11-28T24:00:00Z", "2026-11-28T19:60:00Z", "2026-11-28T19:21:61Z", "2026-11-28T19:21:60Z",
    "2026-11-30T23:59:60+01:00", "2026-11-29T23:59:60Z", "2026-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
    "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z", "2026-04-31T00:00:00Z", "2026-11-00T00:00:00Z",
    "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:60Z",
    "2026-11-28T19:21:20+24:00", "2026-11-28T19:21:20+08:60",
}


def test_the_published_pattern_agrees_on_shape() -> None:
    """The pattern in the JSON Schema accepts every accepted string, and refuses every refused one whose fault is
    its shape; what it lets through is what no regular expression judges (dates, ranges, leap seconds)."""
    pattern = re.compile(RFC3339_PATTERN)
    assert all(pattern.search(v) for v, _ in ACCEPT if isinstance(v, str))
    # a final newline aside: Python's "$" matches before it, ECMA-262's (JSON Schema's) does not
    shaped = {v for v, _ in REJECT if isinstance(v, str) and not v.endswith("\n") and pattern.search(v)}
    assert shaped == SHAPED_BUT_REFUSED


@given(st.text(max_size=60) | st.integers() | st.from_regex(RFC3339_PATTERN, fullmatch=True))
def test_never_raises_anything_but_timestamp_error(value: str | int) -> None:
    try:
        got = parse_timestamp(value)
    except TimestampError:
        return
    assert got.tzinfo is UTC


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_round_trips_isoformat_and_epoch_milliseconds(value: datetime) -> None:
    assert parse_timestamp(value.isoformat()) == value
    assert parse_timestamp(value.isoformat().replace("+00:00", "z").replace("T", "t")) == value
    ms = (value - EPOCH) // MS
    assert parse_timestamp(ms) == EPOCH + ms * MS


# --- the C fast path for the canonical spelling (issue 16) -------------------------------------------------------

# canonical-shaped strings with any character at any place: digits mostly, and what a parser might let slip (a
# sign, a space, a non-ASCII digit, a lower-case t or z, a comma for the decimal point)
_ODD = "+- ,.:Tt Zz٣𝟘"
_LAYOUT = "0000-00-00T00:00:00"


def _place(expected: str) -> st.SearchStrategy[str]:
    return (st.sampled_from("0123456789") if expected == "0" else st.just(expected)) | st.sampled_from(_ODD)


_CANONICAL_SHAPED = st.builds(
    lambda chars, end: "".join(chars) + end,
    st.tuples(*map(_place, _LAYOUT)),
    st.sampled_from(["Z", "z", ".Z", "+08:00"]) | st.from_regex(r"\.[0-9]{1,12}[Zz]", fullmatch=True))


def _canonical(d: datetime) -> str:
    digits = d.microsecond % 7  # 0–6 fractional digits
    return d.isoformat(timespec="seconds") + (f".{d.microsecond:06d}"[: 1 + digits] if digits else "") + "Z"


_CANONICAL_VALID = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).map(
    _canonical)


@given(_CANONICAL_SHAPED | _CANONICAL_VALID | st.from_regex(RFC3339_PATTERN, fullmatch=True))
def test_the_fast_path_accepts_nothing_the_grammar_refuses_and_reads_the_same_instant(text: str) -> None:
    fast = _canonical_utc(text)
    if fast is None:
        return  # the general parse judges it
    assert fast == _general_rfc3339(text)
    assert fast.tzinfo is UTC


@given(_CANONICAL_VALID)
def test_the_canonical_spelling_takes_the_fast_path(text: str) -> None:
    assert _canonical_utc(text) is not None, text


# --- the float fast path for epoch milliseconds (issue 16) --------------------------------------------------------

@given(st.integers(min_value=0, max_value=_FLOAT_EXACT_MS - 1)
       | st.sampled_from([0, 999, _FLOAT_EXACT_MS - 1, 946_684_800_000, 4_102_444_800_000]))
def test_epoch_milliseconds_on_the_fast_path_read_the_exact_instant(ms: int) -> None:
    got = parse_timestamp(ms)
    assert got == EPOCH + timedelta(0, ms // 1000, 0, ms % 1000)  # integer arithmetic only
    assert got.tzinfo is UTC and got.microsecond % 1000 == 0


def test_epoch_milliseconds_past_the_fast_paths_range_are_read_exactly() -> None:
    for ms in (_FLOAT_EXACT_MS, 253_402_300_799_999, -1, -62_135_596_800_000):
        assert parse_timestamp(ms) == EPOCH + timedelta(0, ms // 1000, 0, ms % 1000)
