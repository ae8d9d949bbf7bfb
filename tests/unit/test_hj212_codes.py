"""The HJ 212-2017 air code table (schemas/hj212_codes.py): the codes issue 11 names, the columns they fill,
and the zero-drift allowance."""

from __future__ import annotations

import re

import msgspec
import pytest

from sanitel.schemas import hj212, hj212_codes
from sanitel.schemas.hj212_codes import AIR_CODES, PARAMETER_CODES, POLLUTANT_CODES, RECOGNISED_UNMAPPED
from sanitel.schemas.readings import CemsReading


@pytest.mark.parametrize(("code", "words"), [
    ("a21017", "cyanide"),  # issue 11 item 7: the old table called it fluoride
    ("a21018", "fluoride"),
    ("a01016", "cross-section area"),
    ("a01017", "dynamic pressure"),  # issue 11 item 7: the old table called it the flue area
    ("a01901", "furnace average temperature"),
    ("a01902", "furnace DCS temperature"),
    ("a20057", "mercury and its compounds"),
    ("a20058", "mercury"),
    ("a34013", "smoke dust"),
    ("a21026", "sulphur dioxide"),
    ("a21002", "nitrogen oxides"),
    ("a21003", "nitric oxide"),
    ("a21004", "nitrogen dioxide"),
    ("a21005", "carbon monoxide"),
    ("a21024", "hydrogen chloride"),
    ("a21001", "ammonia"),
    ("a21028", "hydrogen sulphide"),
    ("a19001", "oxygen"),
    ("a01011", "velocity"),
    ("a01012", "flue gas temperature"),
    ("a01013", "flue gas pressure"),
    ("a01014", "flue gas humidity"),
    ("a00000", "flue gas flow"),
    ("a24088", "non-methane hydrocarbons"),
])
def test_the_codes_the_issue_names_mean_what_the_standard_says(code: str, words: str) -> None:
    assert words in AIR_CODES[code].name


@pytest.mark.parametrize(("code", "unit"), [
    ("a00000", "m³/s"), ("a01013", "kPa"), ("a01017", "kPa"), ("a01016", "m²"), ("a19001", "%"),
    ("a20057", "mg/m³"), ("a20058", "ng/m³"), ("a01902", "°C"),
])
def test_units_as_the_table_gives_them(code: str, unit: str) -> None:
    assert AIR_CODES[code].unit == unit


def test_every_code_is_an_air_code_and_every_mapped_code_is_in_the_table() -> None:
    assert all(re.fullmatch(r"a[0-9]{5}", code) for code in AIR_CODES)
    assert set(POLLUTANT_CODES) | set(PARAMETER_CODES) <= set(AIR_CODES)
    assert not set(POLLUTANT_CODES) & set(PARAMETER_CODES)
    assert set(AIR_CODES) - set(POLLUTANT_CODES) - set(PARAMETER_CODES) == RECOGNISED_UNMAPPED
    assert {"a01902", "a01016", "a01017", "a20058", "a21017", "a21003", "a21004", "a24088"} <= RECOGNISED_UNMAPPED


def test_every_mapped_column_exists_in_the_schema_with_a_range() -> None:
    fields = set(CemsReading.__struct_fields__)
    for prefix in POLLUTANT_CODES.values():
        assert {f"{prefix}_mg_m3", f"{prefix}_zs_mg_m3", f"{prefix}_flag"} <= fields
        assert f"{prefix}_mg_m3" in hj212._RANGES and f"{prefix}_zs_mg_m3" in hj212._RANGES
    for column, flag_column in PARAMETER_CODES.values():
        assert column in fields and column in hj212._RANGES
        assert flag_column is None or flag_column in fields
    # the codec's ranges are the schema's own: what it passes, the schema accepts
    for column, limits in hj212._RANGES.items():
        assert limits.lo is not None and limits.hi is not None
        msgspec.convert({"ts": 0, column: limits.lo}, CemsReading)
        msgspec.convert({"ts": 0, column: limits.hi}, CemsReading)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"ts": 0, column: limits.hi + max(1.0, abs(limits.hi))}, CemsReading)


def test_the_data_flags_are_the_schemas() -> None:
    info = msgspec.inspect.type_info(CemsReading)
    assert isinstance(info, msgspec.inspect.StructType)
    [flag_field] = [f for f in info.fields if f.name == "o2_flag"]
    assert isinstance(flag_field.type, msgspec.inspect.UnionType)
    literal = flag_field.type.types[0]
    assert isinstance(literal, msgspec.inspect.LiteralType)
    assert set(literal.values) == hj212.DATA_FLAGS


def test_zero_drift_allowance() -> None:
    assert hj212_codes.zero_drift_allowance("so2_mg_m3") == hj212_codes.zero_drift_allowance("so2_zs_mg_m3") == 5.0
    assert hj212_codes.zero_drift_allowance("hg_mg_m3") == pytest.approx(0.0025)
    assert hj212_codes.zero_drift_allowance("furnace_temp_c") == 0.0  # no drift rule: the range decides
    for prefix in POLLUTANT_CODES.values():
        assert hj212_codes.zero_drift_allowance(f"{prefix}_mg_m3") > 0
