"""HJ 212-2017 codec: hand-made frames, the standard's published example, every rejection code, the
mapping into CEMS readings, replies, and a property test round-tripping encode ↔ parse."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.schemas import hj212
from sanitel.schemas.hj212 import Hj212Error, crc_hj212, encode_cp, encode_frame, frame_to_cems_readings, parse_frame
from sanitel.schemas.hj212_codes import O2_AIR_PCT
from sanitel.schemas.readings import CemsReading


def hand_crc(data: bytes) -> int:
    """standards.md §2, written out again independently of the codec."""
    reg = 0xFFFF
    for b in data:
        reg = (reg >> 8) ^ b
        for _ in range(8):
            low = reg & 1
            reg >>= 1
            if low:
                reg ^= 0xA001
    return reg


def hand_frame(segment: str) -> bytes:
    data = segment.encode()
    return f"##{len(data):04d}{segment}{hand_crc(data):04X}\r\n".encode()


# The example printed in HJ 212-2017 itself (CRC section), quoted by many implementations, e.g.
# hutool's CRC16Ansi test asserting "1c80" for this data segment.
PUBLISHED = (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
             b"CP=&&RtdInterval=30&&1C80\r\n")

RTD_SEGMENT = ("QN=20240501080000123;ST=31;CN=2011;PW=123456;MN=LHK-L1;Flag=5;CP=&&DataTime=20240501080000;"
               "a21002-Rtd=152.5,a21002-ZsRtd=117.31,a21002-Flag=N;a21026-Rtd=20.1,a21026-Flag=C;"
               "a34013-Rtd=3.2,a34013-ZsRtd=2.46,a34013-Flag=N;a19001-Rtd=8.0,a19001-Flag=N;a01014-Rtd=18.5;"
               "a01012-Rtd=145.2;a01013-Rtd=-0.3;a01011-Rtd=12.4;a00000-Rtd=50.0;a01901-Rtd=1010&&")


def test_crc_matches_the_standards_published_example() -> None:
    data = PUBLISHED[6:-6]
    assert len(data) == 101
    assert hand_crc(data) == 0x1C80 == crc_hj212(data)
    frame = parse_frame(PUBLISHED)
    assert (frame.qn, frame.st, frame.cn, frame.pw, frame.mn, frame.flag) == (
        "20160801085857223", "32", "1062", "100000", "010000A8900016F000169DC0", 5)
    assert frame.cp.other == {"RtdInterval": "30"} and frame.wants_ack


def test_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS of "123456789" is 0x4B37; the HJ 212 variant differs (byte into the low byte of
    # crc >> 8, not crc ^ byte)
    assert crc_hj212(b"123456789") == hand_crc(b"123456789") != 0x4B37


def test_encode_frame_equals_the_hand_made_frame() -> None:
    cp = RTD_SEGMENT.split("CP=&&", 1)[1][:-2]
    built = encode_frame("31", "2011", "LHK-L1", "123456", cp, qn="20240501080000123", flag=5)
    assert built == hand_frame(RTD_SEGMENT)
    assert encode_frame("31", "2011", "LHK-L1", "123456", f"&&{cp}&&", qn="20240501080000123", flag=5) == built


def test_real_time_frame_maps_into_a_cems_reading() -> None:
    frame = parse_frame(hand_frame(RTD_SEGMENT))
    [reading] = frame_to_cems_readings(frame, device_id="LHK-L1")
    assert reading["ts"] == "2024-05-01T08:00:00+08:00"  # DataTime is local (Asia/Shanghai) time
    assert reading["data_kind"] == "rtd" and reading["source"] == "hj212"
    assert (reading["nox_mg_m3"], reading["nox_zs_mg_m3"], reading["nox_flag"]) == (152.5, 117.31, "N")
    assert (reading["so2_mg_m3"], reading["so2_flag"]) == (20.1, "C") and "so2_zs_mg_m3" not in reading
    assert (reading["o2_pct"], reading["o2_flag"], reading["h2o_pct"]) == (8.0, "N", 18.5)
    assert reading["flue_temp_c"] == 145.2 and reading["flue_pressure_kpa"] == -0.3
    assert reading["flue_velocity_m_s"] == 12.4 and reading["furnace_temp_c"] == 1010
    assert reading["flue_flow_m3_h"] == 50.0 * 3600  # a00000 is m³/s on the wire
    typed = msgspec.convert(reading, CemsReading)
    assert typed.device_id == "LHK-L1" and typed.source == "hj212" and typed.dust_zs_mg_m3 == 2.46


@pytest.mark.parametrize(("cn", "kind"), [("2051", "minute"), ("2061", "hour"), ("2031", "day")])
def test_interval_frames_use_avg_and_zsavg_and_keep_min_max(cn: str, kind: str) -> None:
    seg = (f"QN=20240501090000000;ST=31;CN={cn};PW=123456;MN=LHK-L1;Flag=4;CP=&&DataTime=20240501080000;"
           "a21005-Min=3.0,a21005-Avg=5.5,a21005-Max=9.0,a21005-ZsAvg=4.2,a21005-Flag=N;a21028-Avg=0.01&&")
    [reading] = frame_to_cems_readings(parse_frame(hand_frame(seg)))
    assert reading["data_kind"] == kind
    assert (reading["co_mg_m3"], reading["co_zs_mg_m3"], reading["co_flag"]) == (5.5, 4.2, "N")
    # no column for Min/Max, nor for H2S (a known code): kept for the collector's `extra`
    assert reading["hj212"] == {"a21005": {"Min": "3.0", "Max": "9.0"}, "a21028": {"Avg": "0.01"}}
    msgspec.convert(reading, CemsReading)


def test_split_packets_get_their_packet_number_as_seq() -> None:
    seg = ("QN=20240501080000123;ST=31;CN=2011;PW=123456;MN=LHK-L1;Flag=7;PNUM=2;PNO=2;"
           "CP=&&DataTime=20240501080000;a21005-Rtd=5.0,a21005-Flag=N&&")
    frame = parse_frame(hand_frame(seg))
    assert (frame.pnum, frame.pno, frame.wants_ack) == (2, 2, True)
    assert frame_to_cems_readings(frame)[0]["seq"] == 2
    assert "seq" not in frame_to_cems_readings(parse_frame(hand_frame(RTD_SEGMENT)))[0]


def test_timezone_is_a_parameter() -> None:
    frame = parse_frame(hand_frame(RTD_SEGMENT))
    assert frame_to_cems_readings(frame, tz="UTC")[0]["ts"] == "2024-05-01T08:00:00+00:00"


def _with(old: str, new: str) -> bytes:
    assert old in RTD_SEGMENT
    return hand_frame(RTD_SEGMENT.replace(old, new))


@pytest.mark.parametrize(("raw", "code"), [
    (b"#0101" + PUBLISHED[5:], "bad_header"),
    (b"##01a1" + PUBLISHED[6:], "bad_header"),
    (PUBLISHED.replace(b"1C80", b"1C81"), "bad_crc"),
    (PUBLISHED.replace(b"1C80", b"1CZ0"), "bad_crc"),
    (PUBLISHED.replace(b"##0101", b"##0100"), "bad_length"),
    (PUBLISHED.replace(b"##0101", b"##0102"), "bad_length"),
    (PUBLISHED[:60], "truncated"),
    (PUBLISHED[:-2], "truncated"),
    (b"##01", "truncated"),
    (PUBLISHED[:-2] + b"XX\r\n", "bad_length"),
    (hand_frame("QN=20240501080000123;ST=31;CN=2011;PW=123456;MN=LHK-L1;Flag=5"), "bad_field"),
    (_with("QN=20240501080000123", "QN=2024050108"), "bad_field"),
    (_with("MN=LHK-L1", "MN=LHK/../x"), "bad_field"),
    (_with("MN=LHK-L1", "MN=0123456789012345678901234"), "bad_field"),  # > 24 characters
    (_with("ST=31;", ""), "bad_field"),
    (_with("Flag=5", "Flag=A"), "bad_field"),
    (_with("DataTime=20240501080000", "DataTime=2024"), "bad_field"),
    (_with("PW=123456;", "PW=123456;XX=1;"), "bad_field"),
    (_with("Flag=5;", "Flag=5;QN=20240501080000123;"), "bad_field"),  # duplicate field
    (_with("a01901-Rtd=1010&&", "a01901-Rtd=1010&"), "bad_field"),  # CP not closed
    (hand_frame("QN=20240501080000123;ST=31;CN=2011;PW=1;MN=A;CP=&&a21002-Rtd=1&&").replace(b"A;", b"\xc4;"),
     "bad_crc"),  # a corrupted byte is a CRC error first
])
def test_bad_frames_are_rejected_with_a_precise_code(raw: bytes, code: str) -> None:
    with pytest.raises(Hj212Error) as err:
        parse_frame(raw)
    assert err.value.code == code, str(err.value)
    assert code in hj212.ERROR_CODES


def test_non_ascii_data_segment_is_bad_encoding() -> None:
    seg = b"QN=20240501080000123;ST=31;CN=2011;PW=1;MN=A;CP=&&DataTime=20240501080000&&"
    seg = seg.replace(b"MN=A", b"MN=\xc4")
    raw = b"##%04d%s%04X\r\n" % (len(seg), seg, hand_crc(seg))
    with pytest.raises(Hj212Error) as err:
        parse_frame(raw)
    assert err.value.code == "bad_encoding"


@pytest.mark.parametrize(("replace", "code"), [
    ({"CN=2011": "CN=2021"}, "unsupported_cn"),
    ({"DataTime=20240501080000;": ""}, "bad_field"),
    ({"DataTime=20240501080000": "DataTime=20241301080000"}, "bad_field"),  # month 13
    ({"DataTime=20240501080000": "DataTime=20240501240000"}, "bad_field"),  # hour 24
    ({"DataTime=20240501080000": "DataTime=20230229080000"}, "bad_field"),  # not a leap year
    ({"DataTime=20240501080000": "DataTime=00010101000000"}, "bad_field"),  # issue 11 item 1: escaped as OverflowError
    ({"DataTime=20240501080000": "DataTime=00000101000000"}, "bad_field"),  # year 0
    ({"DataTime=20240501080000": "DataTime=19991231235959"}, "bad_field"),  # before 2000, as the collector
])
def test_faults_of_the_frame_itself_are_rejected_when_mapping(replace: dict[str, str], code: str) -> None:
    seg = RTD_SEGMENT
    for old, new in replace.items():
        seg = seg.replace(old, new)
    frame = parse_frame(hand_frame(seg))
    with pytest.raises(Hj212Error) as err:
        frame_to_cems_readings(frame)
    assert err.value.code == code, str(err.value)
    assert err.value.field in {"CN", "DataTime"}


def test_a_data_time_far_in_the_future_of_a_western_zone_is_rejected_not_an_overflow() -> None:
    with pytest.raises(Hj212Error) as err:
        hj212.data_time_to_rfc3339("99991231235959", "America/New_York")  # 10000-01-01 in UTC
    assert err.value.code == "bad_field"


def test_data_time_with_milliseconds_is_accepted() -> None:
    # issue 11 item 7: 17-digit DataTime (YYYYMMDDhhmmsszzz), seen in published frames, was bad_field
    frame = parse_frame(_with("DataTime=20240501080000", "DataTime=20240501080000250"))
    assert frame.cp.data_time == "20240501080000250"
    [reading] = frame_to_cems_readings(frame)
    assert reading["ts"] == "2024-05-01T08:00:00.250+08:00"
    assert datetime.fromisoformat(str(reading["ts"])) == datetime(2024, 5, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    msgspec.convert(reading, CemsReading)
    with pytest.raises(Hj212Error):
        parse_frame(_with("DataTime=20240501080000", "DataTime=2024050108000025"))  # 16 digits


def test_a_header_number_of_thousands_of_digits_is_bad_field_not_a_value_error() -> None:
    # int() of more than 4,300 digits raises a plain ValueError (CPython's conversion limit)
    with pytest.raises(Hj212Error) as err:
        parse_frame(_with("Flag=5;", "Flag=5;PNO=" + "1" * 5000 + ";"))
    assert (err.value.code, err.value.field) == ("bad_field", "PNO")


# --- one field never takes the frame down (issue 11 item 7) ------------------------------------------

def _convert(replace: dict[str, str]) -> hj212.Hj212Conversion:
    seg = RTD_SEGMENT
    for old, new in replace.items():
        assert old in seg, old
        seg = seg.replace(old, new)
    conversion = hj212.convert_frame(parse_frame(hand_frame(seg)), device_id="LHK-L1")
    for reading in conversion.readings:
        msgspec.convert(reading, CemsReading)  # the collector will accept it: nothing dead-lettered after 9014
    return conversion


def test_unknown_codes_are_kept_raw_and_counted_and_the_known_ones_land() -> None:
    conversion = _convert({"a01901-Rtd=1010": "a01901-Rtd=1010;i33101-Rtd=912.3,i33101-Flag=N;a99999-Rtd=1.0;"
                                              "01-Rtd=7"})  # 01: an HJ/T 212-2005 style code
    [reading] = conversion.readings
    assert reading["hj212_unknown"] == {"i33101-Rtd": "912.3", "i33101-Flag": "N", "a99999-Rtd": "1.0", "01-Rtd": "7"}
    assert conversion.unknown_codes == ("i33101", "a99999", "01")
    assert (reading["nox_mg_m3"], reading["furnace_temp_c"], reading["o2_pct"]) == (152.5, 1010, 8.0)
    assert "invalid" not in reading


def test_codes_the_old_table_lacked_are_recognised_and_kept_under_hj212() -> None:
    # issue 11 item 7: a01902 furnace DCS temperature, a01016 flue area, a20058 Hg, a01017 dynamic pressure,
    # a21017 cyanide each rejected the whole frame (unknown_code)
    conversion = _convert({"a01901-Rtd=1010": "a01901-Rtd=1010;a01902-Rtd=912.3;a01016-Rtd=3.14;a20058-Rtd=2.5;"
                                              "a01017-Rtd=0.12;a21017-Rtd=0.01"})
    [reading] = conversion.readings
    assert reading["hj212"] == {"a01902": {"Rtd": "912.3"}, "a01016": {"Rtd": "3.14"}, "a20058": {"Rtd": "2.5"},
                                "a01017": {"Rtd": "0.12"}, "a21017": {"Rtd": "0.01"}}
    assert conversion.unknown_codes == () and "hj212_unknown" not in reading
    assert "hg_mg_m3" not in reading  # a20058 is ng/m³ in the table: not converted (hj212_codes.py)


def test_fluoride_a21018_fills_the_hf_columns() -> None:
    [reading] = _convert({"a01901-Rtd=1010": "a01901-Rtd=1010;a21018-Rtd=0.42,a21018-ZsRtd=0.35,a21018-Flag=N"}).readings
    assert (reading["hf_mg_m3"], reading["hf_zs_mg_m3"], reading["hf_flag"]) == (0.42, 0.35, "N")


@pytest.mark.parametrize(("replace", "column", "raw"), [
    ({"a19001-Rtd=8.0": "a19001-Rtd=21.05"}, "o2_pct", "21.05"),  # issue 11 item 7: rejected the reading
    ({"a19001-Rtd=8.0": "a19001-Rtd=21"}, "o2_pct", "21"),  # at 21 % the O2 correction is undefined
    ({"a01014-Rtd=18.5": "a01014-Rtd=100.5"}, "h2o_pct", "100.5"),
    ({"a01014-Rtd=18.5": "a01014-Rtd=-7"}, "h2o_pct", "-7"),  # beyond the drift allowance (1 %)
    ({"a21026-Rtd=20.1": "a21026-Rtd=-50"}, "so2_mg_m3", "-50"),  # beyond the drift allowance (5 mg/m³)
    ({"a21002-ZsRtd=117.31": "a21002-ZsRtd=100001"}, "nox_zs_mg_m3", "100001"),  # above the schema's range
    ({"a01012-Rtd=145.2": "a01012-Rtd=-60"}, "flue_temp_c", "-60"),
    ({"a00000-Rtd=50.0": "a00000-Rtd=300000"}, "flue_flow_m3_h", "300000"),  # 1.08e9 m³/h after x3600
    ({"a01901-Rtd=1010": "a01901-Rtd=2500"}, "furnace_temp_c", "2500"),
    ({"a21002-Rtd=152.5": "a21002-Rtd=abc"}, "nox_mg_m3", "abc"),
    ({"a21002-Rtd=152.5": "a21002-Rtd=1e5"}, "nox_mg_m3", "1e5"),  # HJ 212 numbers are fixed-point
    ({"a21002-Rtd=152.5": "a21002-Rtd="}, "nox_mg_m3", ""),
    ({"a21002-Rtd=152.5": "a21002-Rtd=" + "9" * 400}, "nox_mg_m3", "9" * 400),  # inf as a float
])
def test_an_implausible_value_invalidates_that_field_only(replace: dict[str, str], column: str, raw: str) -> None:
    conversion = _convert(replace)
    [reading] = conversion.readings
    assert reading[column] is None
    invalid: Any = reading["invalid"]
    assert set(invalid) == {column} and invalid[column]["raw"] == raw and invalid[column]["reason"]
    assert conversion.invalid_fields == (column,)
    # the rest of the reading lands
    assert reading["dust_mg_m3"] == 3.2 and reading["so2_flag"] == "C"
    assert reading["nox_flag"] == "N" and reading["flue_velocity_m_s"] == 12.4


def test_an_unknown_data_flag_invalidates_the_flag_and_the_values_it_qualifies() -> None:
    [reading] = _convert({"a21002-Flag=N": "a21002-Flag=X"}).readings
    assert reading["nox_flag"] is None and reading["nox_mg_m3"] is None and reading["nox_zs_mg_m3"] is None
    invalid: Any = reading["invalid"]
    assert {k: v["raw"] for k, v in invalid.items()} == {"nox_flag": "X", "nox_mg_m3": "152.5", "nox_zs_mg_m3": "117.31"}
    assert reading["so2_mg_m3"] == 20.1 and reading["o2_pct"] == 8.0
    # a parameter whose flag has no column: the flag stays in hj212 (alerts read it there), the value is voided
    [reading] = _convert({"a01012-Rtd=145.2": "a01012-Rtd=145.2,a01012-Flag=Q"}).readings
    assert reading["flue_temp_c"] is None and reading["hj212"] == {"a01012": {"Flag": "Q"}}


@pytest.mark.parametrize(("replace", "column", "raw"), [
    ({"a21026-Rtd=20.1": "a21026-Rtd=-0.3"}, "so2_mg_m3", "-0.3"),  # issue 11 item 7: rejected the reading
    ({"a21002-ZsRtd=117.31": "a21002-ZsRtd=-4.9"}, "nox_zs_mg_m3", "-4.9"),
    ({"a34013-Rtd=3.2": "a34013-Rtd=-1"}, "dust_mg_m3", "-1"),
    ({"a19001-Rtd=8.0": "a19001-Rtd=-0.2"}, "o2_pct", "-0.2"),
    ({"a01014-Rtd=18.5": "a01014-Rtd=-0.5"}, "h2o_pct", "-0.5"),
    ({"a01011-Rtd=12.4": "a01011-Rtd=-0.1"}, "flue_velocity_m_s", "-0.1"),
])
def test_zero_drift_is_stored_as_zero_with_the_measured_value_kept(replace: dict[str, str], column: str,
                                                                    raw: str) -> None:
    conversion = _convert(replace)
    [reading] = conversion.readings
    assert reading[column] == 0.0 and "invalid" not in reading
    adjusted: Any = reading["adjusted"]
    assert adjusted[column]["raw"] == raw and adjusted[column]["stored"] == 0.0
    assert conversion.adjusted_fields == (column,)


def test_values_the_schema_allows_below_zero_are_kept_as_measured() -> None:
    [reading] = _convert({"a01013-Rtd=-0.3": "a01013-Rtd=-1.5", "a01012-Rtd=145.2": "a01012-Rtd=-12"}).readings
    assert (reading["flue_pressure_kpa"], reading["flue_temp_c"]) == (-1.5, -12.0)
    assert "adjusted" not in reading and "invalid" not in reading


def test_replies() -> None:
    frame = parse_frame(hand_frame(RTD_SEGMENT))
    ack = parse_frame(hj212.encode_data_reply(frame))
    assert (ack.qn, ack.st, ack.cn, ack.mn, ack.pw, ack.flag) == (frame.qn, "91", "9014", "LHK-L1", "123456", 4)
    nack = parse_frame(hj212.encode_request_reply(frame.qn, "LHK-L1", "123456", hj212.QN_RTN_BAD_CRC))
    assert nack.cn == "9011" and nack.cp.other == {"QnRtn": "9"}
    assert hj212.qn_rtn_for(Hj212Error("bad_field", "x", "MN")) == hj212.QN_RTN_BAD_MN
    assert hj212.qn_rtn_for(Hj212Error("bad_field", "x", "DataTime")) == hj212.QN_RTN_UNKNOWN


def test_peek_header_reads_a_broken_frame() -> None:
    broken = PUBLISHED.replace(b"1C80", b"0000")
    assert hj212.peek_header(broken)["MN"] == "010000A8900016F000169DC0"
    assert hj212.peek_header(b"\x00garbage") == {}


# --- property test: encode_frame ↔ parse_frame ----------------------------------------------------

_values = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)
_mn = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,23}\Z")
_pollutants = st.dictionaries(st.sampled_from(sorted(hj212.POLLUTANT_CODES)),
                              st.tuples(_values, _values, st.sampled_from(sorted(hj212.DATA_FLAGS))),
                              min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(mn=_mn, pw=st.from_regex(r"\A[0-9A-Za-z]{1,9}\Z"), cn=st.sampled_from(sorted(hj212.CN_DATA_KIND)),
       qn=st.none() | st.from_regex(r"\A[0-9]{17}\Z"), flag=st.none() | st.integers(0, 255),
       o2=st.decimals(min_value=0, max_value=21, places=2), pollutants=_pollutants,
       when=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1)))
def test_round_trip(mn: str, pw: str, cn: str, qn: str | None, flag: int | None, o2: Decimal,
                    pollutants: dict[str, tuple[Decimal, Decimal, str]], when: datetime) -> None:
    value, zs = ("Rtd", "ZsRtd") if cn == "2011" else ("Avg", "ZsAvg")
    codes = {code: {value: str(v), zs: str(z), "Flag": f} for code, (v, z, f) in pollutants.items()}
    codes["a19001"] = {value: str(o2), "Flag": "N"}
    data_time = when.strftime("%Y%m%d%H%M%S")
    raw = encode_frame("31", cn, mn, pw, encode_cp(data_time, codes), qn=qn, flag=flag)
    frame = parse_frame(raw)
    assert (frame.mn, frame.pw, frame.cn, frame.qn, frame.flag) == (mn, pw, cn, qn, flag)
    [reading] = frame_to_cems_readings(frame, device_id=mn if mn[0].isalnum() else None)
    typed = msgspec.convert(reading, CemsReading)
    for code, (v, z, f) in pollutants.items():
        prefix = hj212.POLLUTANT_CODES[code]
        assert getattr(typed, f"{prefix}_mg_m3") == float(v)
        assert getattr(typed, f"{prefix}_zs_mg_m3") == float(z)
        assert getattr(typed, f"{prefix}_flag") == f
    assert typed.o2_pct == (float(o2) if o2 < 21 else None)  # 21 %vol is air, not flue gas


# --- property test: the simulator's frame generator ↔ parse_frame ----------------------------------

def _simulated_line(seed: int, start: float) -> Any:
    from sanitel.simulators.clock import LocalTime
    from sanitel.simulators.models.cems import CemsLine, Window

    # an outage (shut-down, off, start-up: O2 near ambient, no Zs values), a daily calibration (flag C)
    # and a maintenance window (flag M) within the first simulated day, so every code path is framed
    return CemsLine("LHK-L1", seed=seed, city="shenzhen", start=start, local=LocalTime("Asia/Shanghai"),
                    plant_id="lhk", line_id="lhk-l1", interval_s=60.0, protocol="hj212", mn="LHK0000000000000001",
                    password="123456", calibration_s=(3600.0, 900.0),
                    maintenance=[Window(start + 5 * 3600, start + 6 * 3600)],
                    outages=[Window(start + 8 * 3600, start + 16 * 3600)], excursions_per_day=20.0,
                    incidents=lambda record: record)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), start=st.integers(1_600_000_000, 1_900_000_000),
       offsets=st.lists(st.floats(0, 86_400), min_size=1, max_size=20))
def test_simulator_frames_round_trip(seed: int, start: int, offsets: list[float]) -> None:
    sim = pytest.importorskip("sanitel.simulators.models.cems")  # written concurrently by the simulator owner
    from sanitel.simulators.clock import LocalTime

    line = _simulated_line(seed, float(start))
    local = LocalTime("Asia/Shanghai")
    out: list[Any] = []
    for t in sorted(start + o for o in offsets):
        line.step(t, out)
    assert out, "the line emitted nothing to frame"
    for emission in out:
        reading = emission.body
        raw = sim.hj212_frame(reading, mn=line.mn, password=line.password, local=local)
        frame = parse_frame(raw)
        [decoded] = frame_to_cems_readings(frame, device_id=line.mn)
        typed = msgspec.convert(decoded, CemsReading)
        assert typed.ts == datetime.fromtimestamp(int(reading["ts"]), ZoneInfo("Asia/Shanghai")).isoformat()
        for p in sim.POLLUTANTS:
            if p.hj212_code is None:
                continue
            for field in (f"{p.name}_mg_m3", f"{p.name}_zs_mg_m3", f"{p.name}_flag"):
                assert getattr(typed, field) == reading.get(field), field
        o2 = reading["o2_pct"] if reading["o2_pct"] < O2_AIR_PCT else None  # the model may clamp at 21
        assert (typed.o2_pct, typed.o2_flag, typed.h2o_pct) == (o2, reading["o2_flag"], reading["h2o_pct"])
        assert typed.flue_flow_m3_h == pytest.approx(reading["flue_flow_m3_h"], abs=0.005 * 3600)
