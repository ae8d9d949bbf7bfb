"""HJ 212-2017 codec: frames of China's online-monitoring transmission protocol ↔ CEMS readings.

Pure: no I/O. Used by the collector (frames arriving on ``sanitation/{city}/cems/{mn}/hj212``), by the
TCP listener for data acquisition units (DAUs), and by the simulators (``encode_frame``).

Frame::

    ## dddd  QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;CP=&&DataTime=…;a21002-Rtd=…,a21002-Flag=N&&  XXXX \\r\\n
       len   data segment (len ASCII characters)                                          CRC

Every rejection is an ``Hj212Error`` whose ``code`` becomes the dead-letter reason
(``hj212_<code>``): see ``ERROR_CODES``.

Codes (schemas/hj212_codes.py): the ones with a column in ``cems_readings`` are mapped; the other codes
of HJ 212-2017's air table are kept as sent under the reading's ``hj212`` key, which the collector stores in
``extra``. A frame from a real data unit must not lose everything for one field (issue 11):

- a code outside the table (a vendor's ``i3…`` furnace-zone codes, a typo) is kept raw under
  ``hj212_unknown`` (``{"i33101-Rtd": "912.3"}``) and counted (``Hj212Conversion.unknown_codes``);
- a value that is not a number, not physical (O2 ≥ 21 %vol, H2O outside 0–100 %), outside the column's
  range in schemas/readings.py, or negative beyond the zero-drift allowance invalidates that field only:
  it is null, and ``invalid`` records ``{"o2_pct": {"raw": "21.05", "reason": "…"}}``; a data flag that is
  not one of N F M S D C T B invalidates the flag and the values it qualifies (they cannot be classified);
- a negative value within the zero-drift allowance is stored as 0 and its measured value kept under
  ``adjusted`` (the column cannot hold a negative concentration; see ``hj212_codes.ZERO_DRIFT_FRACTION``).

So every reading this codec returns passes ``schemas.readings.CemsReading``; only faults of the frame
itself (framing, CRC, header, CN without data, a missing or impossible ``DataTime``) are an ``Hj212Error``.

Split packets (Flag bit D, ``PNUM``/``PNO``): each packet carries its own CP and becomes its own
reading with ``seq = PNO``, so packets of one ``DataTime`` do not collide on the readings table's
unique key (device, ts, data kind, seq) and none is dropped as a duplicate. (DAUs split only frames
over the length limit, which a CEMS line's ~20 codes do not reach.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec

from sanitel.schemas.hj212_codes import A00000_TO_M3_H as A00000_TO_M3_H
from sanitel.schemas.hj212_codes import O2_AIR_PCT, zero_drift_allowance
from sanitel.schemas.hj212_codes import PARAMETER_CODES as PARAMETER_CODES
from sanitel.schemas.hj212_codes import POLLUTANT_CODES as POLLUTANT_CODES
from sanitel.schemas.hj212_codes import RECOGNISED_UNMAPPED as RECOGNISED_UNMAPPED
from sanitel.schemas.readings import CemsReading

ERROR_CODES: dict[str, str] = {
    "bad_header": "the frame does not start with '##' and a 4-digit decimal length",
    "truncated": "the frame ends before the length it declares (plus CRC and CRLF)",
    "bad_length": "the declared length differs from the data segment's actual length",
    "bad_crc": "the CRC is not 4 hex digits or does not match the data segment",
    "bad_encoding": "the data segment is not ASCII",
    "bad_field": "a header field (QN, ST, CN, PW, MN, Flag, PNUM, PNO, CP, DataTime) is missing or malformed, "
                 "or DataTime is not a real instant from 2000 on",
    "unsupported_cn": "the command code carries no CEMS data (only 2011, 2051, 2061, 2031 are stored)",
    "wrong_password": "PW does not match the password registered for this MN",
}

MAX_DATA_LEN = 9999  # the length field has 4 decimal digits
MAX_FRAME_BYTES = 2 + 4 + MAX_DATA_LEN + 4 + 2
DEFAULT_TZ = "Asia/Shanghai"  # HJ 212 DataTime and QN are the DAU's local time

# CN → data_kind of cems_readings, and which suffix carries the value for that kind.
CN_DATA_KIND: dict[str, str] = {"2011": "rtd", "2051": "minute", "2061": "hour", "2031": "day"}
# Replies (HJ 212-2017 command codes, CN 9011–9014): 9014 数据应答 (data reply) acknowledges an upload whose
# Flag asks for one and carries no result code (CP=&&&&), so it can only mean "received". The standard has
# no negative data reply; its one table of refusal codes is QnRtn of 9011 请求应答 (request reply); ExeRtn of
# 9012 执行结果 reports how a host *command* ran and does not apply to uploads. A frame the host will not
# store is therefore answered 9011 with the QnRtn naming the fault, never 9014.
CN_DATA_REPLY = "9014"
CN_REQUEST_REPLY = "9011"
ST_SYSTEM = "91"  # system interaction (replies)

FLAG_ACK = 1  # Flag bit A: the sender wants an acknowledgement
FLAG_SPLIT = 2  # Flag bit D: split packet, PNUM/PNO present
FLAG_V2017 = 4  # protocol-version bits for HJ 212-2017

DATA_FLAGS = frozenset("NFMSDCTB")

# QnRtn values of the 9011 request reply (HJ 212-2017 table of request-reply codes), checked against a
# public Java implementation (com.apr7.sponge.protocol.hjt212.Constants.QN_RTN_CODE): 1 准备执行请求,
# 2 请求被拒绝, 3 PW 错误, 4 MN 错误, 5 ST 错误, 6 Flag 错误, 7 QN 错误, 8 CN 错误, 9 CRC 校验错误, 100 未知错误.
QN_RTN_READY = 1
QN_RTN_REJECTED = 2
QN_RTN_BAD_PW = 3
QN_RTN_BAD_MN = 4
QN_RTN_BAD_ST = 5
QN_RTN_BAD_FLAG = 6
QN_RTN_BAD_QN = 7
QN_RTN_BAD_CN = 8
QN_RTN_BAD_CRC = 9
QN_RTN_UNKNOWN = 100
_FIELD_QN_RTN = {"QN": QN_RTN_BAD_QN, "ST": QN_RTN_BAD_ST, "CN": QN_RTN_BAD_CN, "PW": QN_RTN_BAD_PW,
                 "MN": QN_RTN_BAD_MN, "Flag": QN_RTN_BAD_FLAG}
_CODE_QN_RTN = {"bad_crc": QN_RTN_BAD_CRC, "wrong_password": QN_RTN_BAD_PW, "unsupported_cn": QN_RTN_BAD_CN}

_VALUE_SUFFIX = {"rtd": ("Rtd", "ZsRtd"), "minute": ("Avg", "ZsAvg"), "hour": ("Avg", "ZsAvg"), "day": ("Avg", "ZsAvg")}

_HEADER_KEYS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")
_QN = re.compile(r"^[0-9]{17}$")
_ST = re.compile(r"^[0-9]{2}$")
_CN = re.compile(r"^[0-9]{4}$")
_PW = re.compile(r"^[^;,&=]{1,9}$")
# MN becomes a topic segment and a device id: the topic grammar's id characters, ≤ 24 (HJ 212).
MN_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,23}"
_MN = re.compile(rf"^{MN_PATTERN}$")
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
# DataTime is YYYYMMDDhhmmss (HJ 212-2017); published frames also carry milliseconds, like QN.
_DATA_TIME = re.compile(r"^[0-9]{14}([0-9]{3})?$")
# HJ/T 212 dates from 2005; the collector refuses device time before 2000-01-01 UTC (ingest/decode.py,
# ts_too_old), so the codec does too: a frame it converts is a frame the collector stores.
MIN_DATA_TIME_YEAR = 2000


class Hj212Error(ValueError):
    """A frame this codec refuses; ``code`` is machine-readable (a key of ``ERROR_CODES``)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field  # the header field at fault, for bad_field (QN, ST, CN, PW, MN, Flag …)


@dataclass(frozen=True, slots=True)
class CpData:
    """The parsed CP segment: ``DataTime``, per-code fields (``{"a21002": {"Rtd": "12.3", "Flag": "N"}}``)
    and any other top-level ``Key=Value`` (e.g. ``RtdInterval``), all values as sent (strings)."""

    data_time: str | None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hj212Frame:
    """A frame whose framing, length, CRC and header fields are valid."""

    st: str
    cn: str
    mn: str
    cp: CpData
    qn: str | None = None
    pw: str | None = None
    flag: int | None = None
    pnum: int | None = None
    pno: int | None = None
    data_segment: str = ""

    @property
    def wants_ack(self) -> bool:
        return self.flag is not None and bool(self.flag & FLAG_ACK)


# --- CRC and framing --------------------------------------------------------------------------

def crc_hj212(data: bytes) -> int:
    """HJ 212-2017 CRC over the data segment (standards.md §2). Not CRC-16/MODBUS, which XORs each
    byte into the register (``crc ^= byte``): here the register is first shifted right by 8 —
    ``crc = (crc >> 8) ^ byte`` — then shifted 8 times with the 0xA001 polynomial."""
    crc = 0xFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def _crc_shift8(value: int) -> int:
    for _ in range(8):
        value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return value


# After `(crc >> 8) ^ byte` the register holds less than 256, so the 8 shifts are a function of one byte.
_CRC_TABLE = tuple(_crc_shift8(i) for i in range(256))


def wrap_segment(data_segment: str) -> bytes:
    """``##`` + length + data segment + CRC + CRLF."""
    try:
        data = data_segment.encode("ascii")
    except UnicodeEncodeError:
        raise Hj212Error("bad_encoding", "HJ 212 frames are ASCII; the data segment has other characters") from None
    if len(data) > MAX_DATA_LEN:
        raise Hj212Error("bad_length", f"data segment of {len(data)} bytes exceeds {MAX_DATA_LEN}")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc_hj212(data))


def encode_frame(st: str, cn: str, mn: str, pw: str, cp: str, qn: str | None = None,
                 flag: int | None = None) -> bytes:
    """The full frame ``##dddd…CRC\\r\\n``. ``cp`` is the CP content without its ``&&`` delimiters
    (e.g. ``"DataTime=20240501080000;a21002-Rtd=52.1,a21002-Flag=N"``, see ``encode_cp``); a value
    already wrapped in ``&&…&&`` is used as is. Fields are written in the standard's order."""
    if not (len(cp) >= 4 and cp.startswith("&&") and cp.endswith("&&")):
        cp = f"&&{cp}&&"
    parts = [f"QN={qn}"] if qn is not None else []
    parts += [f"ST={st}", f"CN={cn}", f"PW={pw}", f"MN={mn}"]
    if flag is not None:
        parts.append(f"Flag={flag}")
    parts.append(f"CP={cp}")
    return wrap_segment(";".join(parts))


def format_number(value: float, decimals: int = 3) -> str:
    """Fixed-point: HJ 212 values are plain decimals, never exponent notation."""
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def encode_cp(data_time: str | None, codes: Mapping[str, Mapping[str, str | float]],
              other: Mapping[str, str] | None = None, decimals: int = 3) -> str:
    """CP content: ``DataTime=…;`` then one group per code (``a21002-Rtd=1.2,a21002-Flag=N``).
    Numbers are written fixed-point with ``decimals``; strings (flags) as given."""
    groups = [f"DataTime={data_time}"] if data_time is not None else []
    groups += [f"{k}={v}" for k, v in (other or {}).items()]
    for code, fields in codes.items():
        items = [f"{code}-{suffix}={v if isinstance(v, str) else format_number(v, decimals)}"
                 for suffix, v in fields.items()]
        groups.append(",".join(items))
    return ";".join(groups)


def format_data_time(ts: datetime, tz: str = DEFAULT_TZ) -> str:
    """``YYYYMMDDhhmmss`` in the plant's local time (an aware datetime is converted first)."""
    return (ts.astimezone(ZoneInfo(tz)) if ts.tzinfo else ts).strftime("%Y%m%d%H%M%S")


def unwrap_frame(raw: bytes) -> str:
    """Check ``##``, length, CRC and CRLF; return the data segment (ASCII text)."""
    if not raw.startswith(b"##"):
        raise Hj212Error("bad_header", f"frame starts with {raw[:2]!r}, not '##'")
    if len(raw) < 6:
        raise Hj212Error("truncated", f"frame of {len(raw)} bytes ends inside the length field")
    length_field = raw[2:6]
    if not (length_field.isascii() and length_field.isdigit()):
        raise Hj212Error("bad_header", f"length field {length_field!r} is not 4 decimal digits")
    declared = int(length_field)
    expected_total = 6 + declared + 4 + 2
    if raw.endswith(b"\r\n"):
        actual = len(raw) - 12
        if actual != declared:
            raise Hj212Error("bad_length", f"length field says {declared} but the data segment has {actual} bytes")
    elif len(raw) < expected_total:
        raise Hj212Error("truncated", f"frame of {len(raw)} bytes is shorter than the {expected_total} "
                                      f"its length field ({declared}) implies")
    else:
        raise Hj212Error("bad_length", f"no CRLF after {declared} bytes of data segment and the CRC")
    data = raw[6:6 + declared]
    crc_text = raw[6 + declared:6 + declared + 4]
    if not re.fullmatch(rb"[0-9A-Fa-f]{4}", crc_text):
        raise Hj212Error("bad_crc", f"CRC field {crc_text!r} is not 4 hex digits")
    sent = int(crc_text, 16)  # upper or lower case: DAUs differ, the standard's example is upper
    computed = crc_hj212(data)
    if sent != computed:
        raise Hj212Error("bad_crc", f"CRC {sent:04X} sent, {computed:04X} computed over the data segment")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise Hj212Error("bad_encoding", "data segment contains non-ASCII bytes") from None


# --- data segment and CP ----------------------------------------------------------------------

def split_segment(segment: str) -> tuple[dict[str, str], str]:
    """Header ``Key=Value`` pairs and the CP content (between the ``&&``), without validating values."""
    at = segment.find("CP=&&")
    if at < 0:
        raise Hj212Error("bad_field", "CP=&&…&& is missing from the data segment")
    if at > 0 and segment[at - 1] != ";":
        raise Hj212Error("bad_field", "CP must follow a ';'")
    cp_part = segment[at + 3:]
    if len(cp_part) < 4 or not cp_part.endswith("&&"):
        raise Hj212Error("bad_field", "CP is not closed by '&&' at the end of the data segment")
    header: dict[str, str] = {}
    for item in filter(None, segment[:at].split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise Hj212Error("bad_field", f"header item {item!r} is not Key=Value")
        if key not in _HEADER_KEYS:
            raise Hj212Error("bad_field", f"unknown header field {key!r}; expected {', '.join(_HEADER_KEYS)}, CP")
        if key in header:
            raise Hj212Error("bad_field", f"header field {key} appears twice")
        header[key] = value
    return header, cp_part[2:-2]


def _header_value(header: dict[str, str], key: str, pattern: re.Pattern[str], what: str,
                  required: bool) -> str | None:
    value = header.get(key)
    if value is None:
        if required:
            raise Hj212Error("bad_field", f"{key} is missing", key)
        return None
    if not pattern.fullmatch(value):
        raise Hj212Error("bad_field", f"{key}={value!r} is not {what}", key)
    return value


def _int_field(header: dict[str, str], key: str, limit: int) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    # the length test first: int() of more than 4,300 digits raises ValueError (CPython's conversion limit)
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(limit)) or int(value) > limit:
        raise Hj212Error("bad_field", f"{key}={value!r} is not an integer 0–{limit}", key)
    return int(value)


def parse_cp(cp: str) -> CpData:
    """Parse CP content (without the ``&&``): groups by ``;``, fields by ``,``, ``code-Suffix=value``."""
    data_time: str | None = None
    codes: dict[str, dict[str, str]] = {}
    other: dict[str, str] = {}
    for group in filter(None, cp.split(";")):
        for item in group.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise Hj212Error("bad_field", f"CP item {item!r} is not Key=Value")
            code, dash, suffix = key.partition("-")
            if dash:
                fields = codes.setdefault(code, {})
                if suffix in fields:
                    raise Hj212Error("bad_field", f"CP field {key} appears twice")
                fields[suffix] = value
            elif key == "DataTime":
                if data_time is not None:
                    raise Hj212Error("bad_field", "DataTime appears twice in CP")
                data_time = value
            else:
                other[key] = value
    if data_time is not None and not _DATA_TIME.fullmatch(data_time):
        raise Hj212Error("bad_field", f"DataTime={data_time!r} is not YYYYMMDDhhmmss nor YYYYMMDDhhmmsszzz",
                         "DataTime")
    return CpData(data_time, codes, other)


def parse_frame(raw: bytes) -> Hj212Frame:
    """Validate framing, length, CRC, header fields and CP syntax. Codes and values are checked by
    ``frame_to_cems_readings`` (a heartbeat or command frame has neither)."""
    segment = unwrap_frame(raw)
    header, cp = split_segment(segment)
    return Hj212Frame(
        qn=_header_value(header, "QN", _QN, "17 digits YYYYMMDDhhmmsszzz", required=False),
        st=_header_value(header, "ST", _ST, "2 digits", required=True) or "",
        cn=_header_value(header, "CN", _CN, "4 digits", required=True) or "",
        pw=_header_value(header, "PW", _PW, "1–9 characters", required=False),
        mn=_header_value(header, "MN", _MN, f"≤ 24 characters matching {MN_PATTERN}", required=True) or "",
        flag=_int_field(header, "Flag", 255),
        pnum=_int_field(header, "PNUM", 9999),
        pno=_int_field(header, "PNO", 9999),
        cp=parse_cp(cp),
        data_segment=segment,
    )


def peek_header(raw: bytes) -> dict[str, str]:
    """Best-effort header of a frame that failed validation (no CRC/length checks), so a listener can
    address a negative reply and a dead letter. Never raises; unusable fields are simply absent."""
    try:
        text = raw.decode("ascii", "replace").strip()
        body = text[6:] if text.startswith("##") else text
        header, _ = split_segment(body if "CP=&&" in body else body + ";CP=&&&&")
    except Hj212Error:
        header = {}
        text = raw.decode("ascii", "replace")
        for key in ("QN", "MN", "PW", "Flag"):
            m = re.search(rf"(?:^|;|##\d{{4}}){key}=([^;&]*)", text)
            if m:
                header[key] = m.group(1)
    return {k: v for k, v in header.items()
            if (k != "MN" or _MN.fullmatch(v)) and (k != "QN" or _QN.fullmatch(v))}


# --- frame → CEMS readings --------------------------------------------------------------------

# Keys of a reading dict besides its columns (the collector keeps unknown keys in ``extra``).
EXTRA_RAW = "hj212"  # {code: {suffix: text}}: table codes without a column, statistics without one; "_cp": other CP keys
EXTRA_UNKNOWN = "hj212_unknown"  # {"code-Suffix": text}: codes outside the table
EXTRA_INVALID = "invalid"  # {column: {"raw": text, "reason": …}}: the column is null
EXTRA_ADJUSTED = "adjusted"  # {column: {"raw": text, "stored": value, "reason": …}}: zero drift stored as 0


@dataclass(frozen=True, slots=True)
class _Range:
    lo: float | None
    hi: float | None
    lo_open: bool
    hi_open: bool

    def __contains__(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}" \
            if self.lo is not None and self.hi is not None else f"lo={self.lo} hi={self.hi}"


def _column_ranges() -> dict[str, _Range]:
    """Every float column of ``CemsReading`` with the bounds the schema enforces, read from the schema
    itself: a value this codec passes on can never make the collector reject the reading."""
    info = msgspec.inspect.type_info(CemsReading)
    assert isinstance(info, msgspec.inspect.StructType)
    out: dict[str, _Range] = {}
    for f in info.fields:
        members = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        for member in members:
            inner = member.type if isinstance(member, msgspec.inspect.Metadata) else member
            if isinstance(inner, msgspec.inspect.FloatType):
                lo = inner.gt if inner.gt is not None else inner.ge
                hi = inner.lt if inner.lt is not None else inner.le
                out[f.name] = _Range(None if lo is None else float(lo), None if hi is None else float(hi),
                                     inner.gt is not None, inner.lt is not None)
    return out


_RANGES = _column_ranges()


@dataclass(frozen=True, slots=True)
class Hj212Conversion:
    """What ``convert_frame`` made of a data frame: the readings (dicts that pass ``CemsReading``) and, for
    metrics, the codes outside the table and the columns invalidated or adjusted (zero drift)."""

    readings: list[dict[str, object]]
    unknown_codes: tuple[str, ...] = ()
    invalid_fields: tuple[str, ...] = ()
    adjusted_fields: tuple[str, ...] = ()


class _Builder:
    """One reading being built: its columns, and what was kept aside with the reason."""

    def __init__(self, reading: dict[str, object]) -> None:
        self.reading = reading
        self.raw: dict[str, dict[str, str]] = {}
        self.unknown: dict[str, str] = {}
        self.unknown_codes: list[str] = []
        self.invalid: dict[str, dict[str, object]] = {}
        self.adjusted: dict[str, dict[str, object]] = {}

    def keep_raw(self, code: str, suffix: str, text: str) -> None:
        self.raw.setdefault(code, {})[suffix] = text

    def invalidate(self, column: str, text: str, reason: str) -> None:
        self.reading[column] = None
        self.invalid.setdefault(column, {"raw": text, "reason": reason})

    def value(self, column: str, code: str, suffix: str, text: str, scale: float = 1.0) -> None:
        """Store one number in ``column``, or invalidate/adjust it (module docstring)."""
        where = f"{code}-{suffix}={text}"
        if not _NUMBER.fullmatch(text):
            self.invalidate(column, text, f"{code}-{suffix}={text!r} is not a decimal number")
            return
        value = float(text) * scale + 0.0  # + 0.0: -0 is stored as 0
        if not math.isfinite(value):
            self.invalidate(column, text, f"{where} is not a finite number")
            return
        if column == "o2_pct" and value >= O2_AIR_PCT:
            self.invalidate(column, text, f"{where}: O2 ≥ {O2_AIR_PCT:g} %vol is not a flue-gas value (air has "
                                          "20.95 %vol; the 11 % O2 correction is undefined)")
            return
        limits = _RANGES[column]
        allowance = zero_drift_allowance(column)
        if value < 0 and limits.lo == 0:
            if value >= -allowance:
                self.reading[column] = 0.0
                self.adjusted[column] = {"raw": text, "stored": 0.0,
                                         "reason": f"zero drift: {where} is within the -{allowance:g} allowance"}
            else:
                self.invalidate(column, text, f"{where} is negative beyond the zero-drift allowance of "
                                              f"-{allowance:g}" if allowance else f"{where} is negative")
            return
        if value not in limits:
            self.invalidate(column, text, f"{where} is outside the physical range {limits} of {column}"
                                          + (f" (after x{scale:g})" if scale != 1.0 else ""))
            return
        self.reading[column] = value

    def flag(self, columns: tuple[tuple[str, str], ...], flag_column: str | None, code: str,
             fields: Mapping[str, str]) -> bool:
        """Store the data flag; False when it is not a flag of the standard (then the flag column and the
        values it qualifies are invalidated: a value whose flag is unknown cannot be counted or discarded)."""
        text = fields.get("Flag")
        if text is None or text in DATA_FLAGS:
            if text is not None and flag_column is not None:
                self.reading[flag_column] = text
            return True
        reason = f"{code}-Flag={text!r} is not a data flag of HJ 212-2017 ({' '.join(sorted(DATA_FLAGS))})"
        if flag_column is not None:
            self.invalidate(flag_column, text, reason)
        for column, suffix in columns:
            if suffix in fields:
                self.invalidate(column, fields[suffix], reason)
        return False

    def finish(self, other: Mapping[str, str]) -> Hj212Conversion:
        if self.raw or other:
            self.reading[EXTRA_RAW] = {**self.raw, **({"_cp": dict(other)} if other else {})}
        if self.unknown:
            self.reading[EXTRA_UNKNOWN] = self.unknown
        if self.invalid:
            self.reading[EXTRA_INVALID] = self.invalid
        if self.adjusted:
            self.reading[EXTRA_ADJUSTED] = self.adjusted
        return Hj212Conversion([self.reading], tuple(self.unknown_codes), tuple(self.invalid), tuple(self.adjusted))


def data_time_to_rfc3339(data_time: str, tz: str = DEFAULT_TZ) -> str:
    """``YYYYMMDDhhmmss`` or ``YYYYMMDDhhmmsszzz``, local time in ``tz`` → RFC 3339 with the zone's offset
    (milliseconds kept). ``bad_field`` unless it is a real instant from ``MIN_DATA_TIME_YEAR`` on."""
    if not _DATA_TIME.fullmatch(data_time):
        raise Hj212Error("bad_field", f"DataTime={data_time!r} is not YYYYMMDDhhmmss nor YYYYMMDDhhmmsszzz",
                         "DataTime")
    d = data_time
    try:  # fixed-width fields, read by position
        local = datetime(int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:12]), int(d[12:14]),
                         int(d[14:17] or 0) * 1000, tzinfo=ZoneInfo(tz))
    except ValueError:
        raise Hj212Error("bad_field", f"DataTime={data_time!r} is not a valid date and time", "DataTime") from None
    try:
        instant = local.astimezone(UTC)  # the collector works in UTC: the instant must exist there
    except OverflowError:
        raise Hj212Error("bad_field", f"DataTime={data_time!r} in {tz} is out of range", "DataTime") from None
    if instant.year < MIN_DATA_TIME_YEAR:
        raise Hj212Error("bad_field", f"DataTime={data_time!r} in {tz} is before {MIN_DATA_TIME_YEAR}-01-01 UTC",
                         "DataTime")
    return local.isoformat(timespec="milliseconds" if len(d) == 17 else "seconds")


def _map_pollutant(b: _Builder, code: str, fields: Mapping[str, str], value_suffix: str, zs_suffix: str) -> None:
    prefix = POLLUTANT_CODES[code]
    columns = ((f"{prefix}_mg_m3", value_suffix), (f"{prefix}_zs_mg_m3", zs_suffix))
    flag_ok = b.flag(columns, f"{prefix}_flag", code, fields)
    for suffix, text in fields.items():
        if suffix == "Flag":
            continue
        column = next((c for c, s in columns if s == suffix), None)
        if column is None:
            b.keep_raw(code, suffix, text)
        elif flag_ok:
            b.value(column, code, suffix, text)


def _map_parameter(b: _Builder, code: str, fields: Mapping[str, str], value_suffix: str) -> None:
    column, flag_column = PARAMETER_CODES[code]
    flag_ok = b.flag(((column, value_suffix),), flag_column, code, fields)
    for suffix, text in fields.items():
        if suffix == "Flag":
            if flag_column is None:
                b.keep_raw(code, suffix, text)  # alerts read it there (alerts/queries.flag_sql)
        elif suffix != value_suffix:
            b.keep_raw(code, suffix, text)
        elif flag_ok:
            b.value(column, code, suffix, text, A00000_TO_M3_H if code == "a00000" else 1.0)


def convert_frame(frame: Hj212Frame, *, device_id: str | None = None, tz: str = DEFAULT_TZ, gas_is_dry: bool = True,
                  recognised_unmapped: frozenset[str] = RECOGNISED_UNMAPPED) -> Hj212Conversion:
    """The CEMS readings of a data frame (one per frame), and what was set aside, for metrics.

    ``DataTime`` is local time in ``tz``. Raises ``Hj212Error`` only for the frame itself:
    ``unsupported_cn``, ``bad_field`` (no DataTime, or one that is not a real instant from 2000 on).
    Field problems never raise (module docstring)."""
    data_kind = CN_DATA_KIND.get(frame.cn)
    if data_kind is None:
        raise Hj212Error("unsupported_cn", f"CN={frame.cn} carries no CEMS data; expected one of "
                                           f"{', '.join(CN_DATA_KIND)}", "CN")
    if frame.cp.data_time is None:
        raise Hj212Error("bad_field", f"CN={frame.cn} data frame has no DataTime", "DataTime")
    reading: dict[str, object] = {
        "ts": data_time_to_rfc3339(frame.cp.data_time, tz),
        "data_kind": data_kind,
        "source": "hj212",
        "gas_is_dry": gas_is_dry,
    }
    if frame.flag is not None and frame.flag & FLAG_SPLIT and frame.pno is not None:
        reading["seq"] = frame.pno  # see the module docstring: split packets must not collide
    if device_id is not None:
        reading["device_id"] = device_id
    value_suffix, zs_suffix = _VALUE_SUFFIX[data_kind]
    b = _Builder(reading)
    for code, fields in frame.cp.codes.items():
        if code in POLLUTANT_CODES:
            _map_pollutant(b, code, fields, value_suffix, zs_suffix)
        elif code in PARAMETER_CODES:
            _map_parameter(b, code, fields, value_suffix)
        elif code in recognised_unmapped:
            for suffix, text in fields.items():
                b.keep_raw(code, suffix, text)
        else:
            b.unknown_codes.append(code)
            b.unknown.update({f"{code}-{suffix}": text for suffix, text in fields.items()})
    return b.finish(frame.cp.other)


def frame_to_cems_readings(frame: Hj212Frame, *, device_id: str | None = None, tz: str = DEFAULT_TZ,
                           gas_is_dry: bool = True,
                           recognised_unmapped: frozenset[str] = RECOGNISED_UNMAPPED) -> list[dict[str, object]]:
    """The readings of ``convert_frame`` (each validates as ``schemas.readings.CemsReading``; keys that
    are not columns — ``hj212``, ``hj212_unknown``, ``invalid``, ``adjusted`` — go to ``extra``)."""
    return convert_frame(frame, device_id=device_id, tz=tz, gas_is_dry=gas_is_dry,
                         recognised_unmapped=recognised_unmapped).readings


# --- replies a host sends to a DAU ------------------------------------------------------------

def encode_data_reply(frame: Hj212Frame, pw: str | None = None) -> bytes:
    """CN 9014 data reply (数据应答) to an upload whose Flag asks for one: QN echoed, empty CP."""
    return encode_frame(ST_SYSTEM, CN_DATA_REPLY, frame.mn, pw if pw is not None else (frame.pw or ""),
                        "&&&&", qn=frame.qn, flag=FLAG_V2017)


def qn_rtn_for(error: Hj212Error) -> int:
    """The 9011 QnRtn that names a rejection best (100 = other error)."""
    if error.code == "bad_field" and error.field in _FIELD_QN_RTN:
        return _FIELD_QN_RTN[error.field]
    return _CODE_QN_RTN.get(error.code, QN_RTN_UNKNOWN)


def encode_request_reply(qn: str | None, mn: str, pw: str, qn_rtn: int) -> bytes:
    """CN 9011 request reply with ``QnRtn`` — the standard's code table for a refused frame
    (3 password, 4 MN, 8 CN, 9 CRC, 100 unknown …)."""
    return encode_frame(ST_SYSTEM, CN_REQUEST_REPLY, mn, pw, f"QnRtn={qn_rtn}", qn=qn, flag=FLAG_V2017)
