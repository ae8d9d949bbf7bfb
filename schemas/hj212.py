"""HJ 212-2017 codec: frames of China's online-monitoring transmission protocol ↔ CEMS readings.

Pure: no I/O. Used by the collector (frames arriving on ``sanitation/{city}/cems/{mn}/hj212``), by the
TCP listener for data acquisition units (DAUs), and by the simulators (``encode_frame``).

Frame::

    ## dddd  QN=…;ST=…;CN=…;PW=…;MN=…;Flag=…;CP=&&DataTime=…;a21002-Rtd=…,a21002-Flag=N&&  XXXX \\r\\n
       len   data segment (len ASCII characters)                                          CRC

Every rejection is an ``Hj212Error`` whose ``code`` becomes the dead-letter reason
(``hj212_<code>``): see ``ERROR_CODES``.

Pollutant codes: the ones with a column in ``cems_readings`` are mapped (``CODE_FIELDS``); codes that
HJ 212 defines but that have no column (``RECOGNISED_UNMAPPED``) are kept under the reading's
``hj212`` key, which the collector stores in ``extra``; any other code is ``unknown_code`` — a DAU
configured with codes we do not know is a commissioning error that should be seen, not silently half
stored. Interval statistics without a column (``-Min``, ``-Max``, ``-Cou``, …) also go under ``hj212``.

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
from datetime import datetime
from zoneinfo import ZoneInfo

ERROR_CODES: dict[str, str] = {
    "bad_header": "the frame does not start with '##' and a 4-digit decimal length",
    "truncated": "the frame ends before the length it declares (plus CRC and CRLF)",
    "bad_length": "the declared length differs from the data segment's actual length",
    "bad_crc": "the CRC is not 4 hex digits or does not match the data segment",
    "bad_encoding": "the data segment is not ASCII",
    "bad_field": "a header field (QN, ST, CN, PW, MN, Flag, PNUM, PNO, CP, DataTime) is missing or malformed",
    "bad_value": "a CP value is not a finite number or a flag is not one of N F M S D C T B",
    "unknown_code": "a pollutant/parameter code this system does not know",
    "unsupported_cn": "the command code carries no CEMS data (only 2011, 2051, 2061, 2031 are stored)",
    "wrong_password": "PW does not match the password registered for this MN",
}

MAX_DATA_LEN = 9999  # the length field has 4 decimal digits
MAX_FRAME_BYTES = 2 + 4 + MAX_DATA_LEN + 4 + 2
DEFAULT_TZ = "Asia/Shanghai"  # HJ 212 DataTime and QN are the DAU's local time

# CN → data_kind of cems_readings, and which suffix carries the value for that kind.
CN_DATA_KIND: dict[str, str] = {"2011": "rtd", "2051": "minute", "2061": "hour", "2031": "day"}
CN_DATA_REPLY = "9014"  # 数据应答: the host's acknowledgement of an upload whose Flag asks for one
CN_REQUEST_REPLY = "9011"  # 请求应答 with QnRtn: the standard's only reply code table for a refused frame
ST_SYSTEM = "91"  # system interaction (replies)

FLAG_ACK = 1  # Flag bit A: the sender wants an acknowledgement
FLAG_SPLIT = 2  # Flag bit D: split packet, PNUM/PNO present
FLAG_V2017 = 4  # protocol-version bits for HJ 212-2017

DATA_FLAGS = frozenset("NFMSDCTB")

# QnRtn values of the 9011 request reply (HJ 212-2017 table of request-reply codes).
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

# Pollutant codes with a concentration column: code → prefix of <prefix>_mg_m3 / _zs_mg_m3 / _flag.
POLLUTANT_CODES: dict[str, str] = {
    "a34013": "dust", "a21026": "so2", "a21002": "nox", "a21005": "co", "a21024": "hcl",
    "a21001": "nh3", "a20057": "hg",
}
# Flue-gas parameters with a column: code → (column, its flag column or None).
PARAMETER_CODES: dict[str, tuple[str, str | None]] = {
    "a19001": ("o2_pct", "o2_flag"),
    "a01014": ("h2o_pct", "h2o_flag"),
    "a01012": ("flue_temp_c", None),
    "a01013": ("flue_pressure_kpa", None),
    "a01011": ("flue_velocity_m_s", None),
    "a00000": ("flue_flow_m3_h", None),
    "a01901": ("furnace_temp_c", None),
}
# a00000 (flue-gas flow) is sent in m³/s by HJ 212-2017 DAUs; the column is m³/h. (unverified: the
# unit comes from the standard's code table as quoted by vendors; change here if a DAU sends m³/h.)
A00000_TO_M3_H = 3600.0
# Codes HJ 212-2017 defines that have no column here: kept under the reading's "hj212" key.
RECOGNISED_UNMAPPED: frozenset[str] = frozenset({
    "a21028",  # H2S
    "a21017",  # fluoride (HF is not separately coded in the 2017 table)
    "a24088",  # non-methane hydrocarbons
    "a05002",  # methane
    "a24087",  # total hydrocarbons
    "a21003",  # NO
    "a21004",  # NO2
    "a01017",  # flue cross-section area
    "a05001",  # CO2
})
_CODE = re.compile(r"^[a-z][0-9]{5}$")
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
    if not (value.isascii() and value.isdigit()) or int(value) > limit:
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
    if data_time is not None and not re.fullmatch(r"[0-9]{14}", data_time):
        raise Hj212Error("bad_field", f"DataTime={data_time!r} is not YYYYMMDDhhmmss")
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

def _number(code: str, suffix: str, text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise Hj212Error("bad_value", f"{code}-{suffix}={text!r} is not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise Hj212Error("bad_value", f"{code}-{suffix}={text!r} is not finite")
    return value


def _flag(code: str, text: str) -> str:
    if text not in DATA_FLAGS:
        raise Hj212Error("bad_value", f"{code}-Flag={text!r} is not one of {' '.join(sorted(DATA_FLAGS))}")
    return text


def data_time_to_rfc3339(data_time: str, tz: str = DEFAULT_TZ) -> str:
    """``YYYYMMDDhhmmss`` local time → RFC 3339 with the zone's offset."""
    try:
        local = datetime.strptime(data_time, "%Y%m%d%H%M%S").replace(tzinfo=ZoneInfo(tz))
    except ValueError:
        raise Hj212Error("bad_field", f"DataTime={data_time!r} is not a valid date and time") from None
    return local.isoformat()


def _map_code(code: str, fields: dict[str, str], data_kind: str, out: dict[str, object],
              unmapped: dict[str, dict[str, object]]) -> None:
    value_suffix, zs_suffix = _VALUE_SUFFIX[data_kind]
    rest: dict[str, object] = {}
    if code in POLLUTANT_CODES:
        prefix = POLLUTANT_CODES[code]
        for suffix, text in fields.items():
            if suffix == "Flag":
                out[f"{prefix}_flag"] = _flag(code, text)
            elif suffix == value_suffix:
                out[f"{prefix}_mg_m3"] = _number(code, suffix, text)
            elif suffix == zs_suffix:
                out[f"{prefix}_zs_mg_m3"] = _number(code, suffix, text)
            else:
                rest[suffix] = text
    else:
        column, flag_column = PARAMETER_CODES[code]
        scale = A00000_TO_M3_H if code == "a00000" else 1.0
        for suffix, text in fields.items():
            if suffix == "Flag":
                flag = _flag(code, text)
                if flag_column:
                    out[flag_column] = flag
                else:
                    rest[suffix] = flag
            elif suffix == value_suffix:
                out[column] = _number(code, suffix, text) * scale
            else:
                rest[suffix] = text
    if rest:
        unmapped[code] = rest


def frame_to_cems_readings(frame: Hj212Frame, *, device_id: str | None = None, tz: str = DEFAULT_TZ,
                           gas_is_dry: bool = True,
                           recognised_unmapped: frozenset[str] = RECOGNISED_UNMAPPED) -> list[dict[str, object]]:
    """One CEMS reading dict (validates as ``schemas.readings.CemsReading``) per data frame.

    ``DataTime`` is local time in ``tz``. Values of known codes without a column, and interval
    statistics other than the average, are kept under ``"hj212"`` (the collector stores unknown keys
    in ``extra``). Raises ``unsupported_cn``, ``bad_field`` (no DataTime), ``bad_value``, ``unknown_code``.
    """
    data_kind = CN_DATA_KIND.get(frame.cn)
    if data_kind is None:
        raise Hj212Error("unsupported_cn", f"CN={frame.cn} carries no CEMS data; expected one of "
                                           f"{', '.join(CN_DATA_KIND)}")
    if frame.cp.data_time is None:
        raise Hj212Error("bad_field", f"CN={frame.cn} data frame has no DataTime")
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
    unmapped: dict[str, dict[str, object]] = {}
    for code, fields in frame.cp.codes.items():
        if code in POLLUTANT_CODES or code in PARAMETER_CODES:
            _map_code(code, fields, data_kind, reading, unmapped)
        elif code in recognised_unmapped:
            unmapped[code] = dict(fields)
        else:
            hint = " (HJ 212-2005 style code?)" if not _CODE.match(code) else ""
            raise Hj212Error("unknown_code", f"unknown code {code!r}{hint} in CN={frame.cn} frame from MN {frame.mn}")
    if unmapped or frame.cp.other:
        reading["hj212"] = {**unmapped, **({"_cp": frame.cp.other} if frame.cp.other else {})}
    return [reading]


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
