"""Property tests: the HJ 212 codec raises nothing but ``Hj212Error`` — for arbitrary bytes, for frames whose
framing and CRC are right but whose content is arbitrary, and for mutated valid frames — and whatever it
converts, the CEMS reading schema and the collector's decoder accept (issue 11 items 1 and 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.ingest.decode import decode_message
from sanitel.schemas import hj212
from sanitel.schemas.hj212 import Hj212Error, crc_hj212
from sanitel.schemas.hj212_codes import AIR_CODES
from sanitel.schemas.readings import CemsReading
from sanitel.schemas.topics import hj212_topic

# after every DataTime the codec accepts in Asia/Shanghai (≤ 9999-12-31T15:59:59.999Z), so no rejection is about
# the clock; + the collector's 5 min of allowed skew stays within datetime's range
RECEIVED_AT = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wrap(segment: bytes) -> bytes:
    """Correct length, CRC and CRLF around any bytes: the content reaches the parser."""
    return b"##%04d%s%04X\r\n" % (len(segment), segment, crc_hj212(segment))


def check(raw: bytes) -> None:
    """The codec's whole contract for one input."""
    assert isinstance(hj212.peek_header(raw), dict)  # never raises
    try:
        frame = hj212.parse_frame(raw)
    except Hj212Error as exc:
        assert exc.code in hj212.ERROR_CODES
        return
    try:
        conversion = hj212.convert_frame(frame, device_id=frame.mn)
    except Hj212Error as exc:
        assert exc.code in hj212.ERROR_CODES
        return
    for reading in conversion.readings:
        typed = msgspec.convert(reading, CemsReading)  # the schema accepts it: never dead-lettered after 9014
        instant = datetime.fromisoformat(str(typed.ts))
        assert instant.astimezone(UTC).year >= hj212.MIN_DATA_TIME_YEAR
        invalid: Any = reading.get(hj212.EXTRA_INVALID, {})
        for column, entry in invalid.items():
            assert getattr(typed, column) is None and isinstance(entry["raw"], str) and entry["reason"]
        unknown: Any = reading.get(hj212.EXTRA_UNKNOWN, {})
        assert {key.partition("-")[0] for key in unknown} == set(conversion.unknown_codes)
    decoded = decode_message(hj212_topic("testcity", frame.mn), raw, RECEIVED_AT)
    assert len(decoded.rows) == len(conversion.readings), decoded.rejections
    assert not decoded.rejections


@_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)
    check(b"##" + raw)


@_SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_content_with_correct_framing(segment: bytes) -> None:
    check(wrap(segment))
    check(wrap(b"QN=20240501080000123;ST=31;CN=2011;PW=1;MN=A;Flag=5;CP=&&" + segment + b"&&"))


# --- mutated valid frames -------------------------------------------------------------------------

_mapped = sorted(hj212.POLLUTANT_CODES) + sorted(hj212.PARAMETER_CODES)
_codes = st.one_of(st.sampled_from(_mapped), st.sampled_from(_mapped), st.sampled_from(sorted(AIR_CODES)),
                   st.sampled_from(["i33101", "i12001", "a99999", "01", "B02", ""]), st.from_regex(r"\A[a-z][0-9]{5}\Z"))
_suffixes = st.one_of(st.sampled_from(["Rtd", "ZsRtd", "Avg", "ZsAvg", "Flag"]),
                      st.sampled_from(["Min", "Max", "Cou", "EFlag", "Info", "SampleTime", "ZsMin"]))
_numbers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e12).map(lambda v: f"{v:.4f}")
_values = st.one_of(_numbers, st.floats(-10, 120).map(lambda v: f"{v:.2f}"), st.floats(-6, 0).map(lambda v: f"{v:.3f}"),
                    st.integers(-30, 200_000).map(str),
                    st.sampled_from(["N", "F", "M", "S", "D", "C", "T", "B", "X", "", "-0", "+.5", "1e5", "nan", "inf",
                                     "21", "21.05", "20.99", "-0.3", "-50", "9" * 400, "1.", ".", "-"]))
_data_times = st.one_of(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(lambda d: d.strftime("%Y%m%d%H%M%S")),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(lambda d: d.strftime("%Y%m%d%H%M%S")),
    st.from_regex(r"\A[0-9]{14}([0-9]{3})?\Z"))
_ALPHABET = st.sampled_from(list(";,=&-#.+ ") + list("0123456789aAZzNCPQnr") + ["\r\n", "&&", "CP=&&", "\x00", "é"])


@st.composite
def valid_frames(draw: st.DrawFn) -> str:
    cn = draw(st.sampled_from(["2011", "2011", "2051", "2061", "2031", "2021", "9014"]))
    codes: dict[str, dict[str, str | float]] = {}
    for code, suffix, value in draw(st.lists(st.tuples(_codes, _suffixes, _values), max_size=12)):
        codes.setdefault(code, {})[suffix] = value
    data_time = draw(st.one_of(_data_times, _data_times, _data_times, st.none()))
    cp = hj212.encode_cp(data_time, codes)
    flag = draw(st.none() | st.integers(0, 255))
    split = ";PNUM=2;PNO=1" if flag is not None and flag & hj212.FLAG_SPLIT else ""
    header = f"QN=20240501080000123;ST=31;CN={cn};PW=123456;MN=LHK-L1" + (f";Flag={flag}" if flag is not None else "")
    return f"{header}{split};CP=&&{cp}&&"


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(valid_frames())
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = "".join(draw(st.lists(_ALPHABET, max_size=4)))
        end = min(len(text), at + draw(st.integers(0, 6)))
        text = text[:at] + ("" if action == "delete" else piece) + (text[end:] if action != "insert" else text[at:])
    return text


@_SETTINGS
@given(valid_frames())
def test_valid_frames_with_arbitrary_codes_and_values(segment: str) -> None:
    check(wrap(segment.encode()))


@_SETTINGS
@given(mutated(), st.booleans())
def test_mutated_frames(segment: str, rewrap: bool) -> None:
    data = segment.encode("utf-8")
    # rewrapped: the mutation reaches the parser; not: the CRC or the length catches it (or not)
    check(wrap(data) if rewrap else b"##%04d%s0000\r\n" % (len(data) % 10_000, data))
