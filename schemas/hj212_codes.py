"""HJ 212-2017 air-pollutant and flue-gas parameter codes (the standard's appendix table of gaseous
pollutant codes, "气体污染物" / air codes ``aNNNNN``), and which of them have a ``cems_readings`` column.

Pure data: no I/O, no imports from the rest of sanitel.

Checked against (read, not copied; names and units below are written here):

- [T1] lingkejia/bocon-operation-app ``src/lib/polcodeList17.js`` — a vendor's HJ 212-2017 code list
  (code, Chinese name, units);
- [T2] a public Go HJ 212 implementation (file ``HJ_524``, ``package protocol``, ``type Body``) whose field
  comments transcribe the standard's air table: code, name, HJ/T 212-2005 code, unit, data format;
- [T3] a public Java enum of HJ 212 air codes (``A01017("a01017","烟气动压")``, ``A01902(…"DCS温度")``).

Every entry below is in both [T1] and [T2] (same code, same meaning, same unit) unless its comment says
"(unverified)". The appendix/table number of HJ 212-2017 that holds this table is
itself (unverified) here: the sources quote the table, not its number.

Corrections against the earlier table in schemas/hj212.py (issue 11 item 7): ``a21017`` is cyanide (氰化物)
and ``a21018`` fluoride (氟化物) [T1][T2]; ``a01016`` is the flue cross-section area (烟道截面积, m²) and
``a01017`` the flue-gas dynamic pressure (烟气动压, kPa) [T1][T2][T3]; ``a01902`` is the furnace DCS
temperature of an MSW incinerator (垃圾焚烧炉膛内DCS温度) [T1][T2][T3]; ``a20058`` is mercury (汞, table
unit ng/m³) beside ``a20057`` mercury and its compounds (汞及其化合物, mg/m³) [T1][T2].
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AirCode:
    """One code of the standard's air table: an English name and the unit the table gives."""

    name: str
    unit: str


_MG = "mg/m³"
_NG = "ng/m³"

AIR_CODES: dict[str, AirCode] = {
    # --- flue gas and meteorological parameters ---------------------------------------------------
    "a00000": AirCode("flue gas flow (废气)", "m³/s"),
    "a01001": AirCode("temperature (ambient)", "°C"),
    "a01002": AirCode("humidity (ambient)", "%"),
    "a01006": AirCode("atmospheric pressure", "kPa"),
    "a01007": AirCode("wind speed", "m/s"),
    "a01008": AirCode("wind direction", "°"),
    "a01010": AirCode("Ringelmann blackness", "dimensionless"),
    "a01011": AirCode("flue gas velocity", "m/s"),
    "a01012": AirCode("flue gas temperature", "°C"),
    "a01013": AirCode("flue gas pressure (static)", "kPa"),
    "a01014": AirCode("flue gas humidity", "%"),
    "a01015": AirCode("cooler temperature of the sampling system (制冷温度)", "°C"),
    "a01016": AirCode("flue cross-section area", "m²"),
    "a01017": AirCode("flue gas dynamic pressure", "kPa"),
    "a01901": AirCode("MSW incinerator furnace average temperature", "°C"),
    "a01902": AirCode("MSW incinerator furnace DCS temperature", "°C"),
    "a19001": AirCode("oxygen", "%"),
    # --- inorganic gases ---------------------------------------------------------------------------
    "a05001": AirCode("carbon dioxide", _MG),
    "a05002": AirCode("methane", _NG),  # the table's unit; analysers often report mg/m³
    "a05008": AirCode("trichlorofluoromethane (CFC-11)", _MG),
    "a05009": AirCode("dichlorodifluoromethane (CFC-12)", _MG),
    "a05013": AirCode("trichlorotrifluoroethane (CFC-113)", _MG),
    "a05024": AirCode("ozone", _MG),  # (unverified): listed by [T3] only
    "a21001": AirCode("ammonia", _NG),  # the table's unit; CEMS ammonia-slip analysers report mg/m³
    "a21002": AirCode("nitrogen oxides (as NO2)", _MG),
    "a21003": AirCode("nitric oxide", _MG),
    "a21004": AirCode("nitrogen dioxide", _MG),
    "a21005": AirCode("carbon monoxide", _MG),
    "a21017": AirCode("cyanide", _MG),
    "a21018": AirCode("fluoride (gaseous; measured as HF)", _MG),
    "a21022": AirCode("chlorine", _MG),
    "a21024": AirCode("hydrogen chloride", _MG),
    "a21026": AirCode("sulphur dioxide", _MG),
    "a21028": AirCode("hydrogen sulphide", _MG),
    # --- metals --------------------------------------------------------------------------------------
    "a20007": AirCode("arsenic", _NG),
    "a20016": AirCode("beryllium and its compounds", _MG),
    "a20025": AirCode("cadmium and its compounds", _MG),
    "a20026": AirCode("cadmium", _NG),
    "a20043": AirCode("lead and its compounds", _MG),
    "a20044": AirCode("lead", _NG),
    "a20057": AirCode("mercury and its compounds", _MG),
    "a20058": AirCode("mercury", _NG),
    "a20063": AirCode("nickel and its compounds", _MG),
    "a20091": AirCode("tin and its compounds", _MG),
    # --- organic compounds ---------------------------------------------------------------------------
    "a23001": AirCode("phenols", _MG),
    "a24003": AirCode("dichloromethane", _MG),
    "a24004": AirCode("trichloromethane", _MG),
    "a24005": AirCode("tetrachloromethane", _MG),
    "a24006": AirCode("dibromochloromethane", _MG),
    "a24007": AirCode("bromodichloromethane", _MG),
    "a24008": AirCode("bromomethane", _MG),
    "a24009": AirCode("tribromomethane", _MG),
    "a24015": AirCode("chloroethane", _MG),
    "a24016": AirCode("1,1-dichloroethane", _MG),
    "a24017": AirCode("1,2-dichloroethane", _MG),
    "a24018": AirCode("1,1,1-trichloroethane", _MG),
    "a24019": AirCode("1,1,2-trichloroethane", _MG),
    "a24020": AirCode("1,1,2,2-tetrachloroethane", _MG),
    "a24027": AirCode("1,2-dichloropropane", _MG),
    "a24034": AirCode("1,2-dibromoethane", _MG),
    "a24036": AirCode("cyclohexane", _MG),
    "a24042": AirCode("n-hexane", _MG),
    "a24043": AirCode("n-heptane", _MG),
    "a24046": AirCode("vinyl chloride", _MG),
    "a24047": AirCode("1,1-dichloroethene", _MG),
    "a24049": AirCode("trichloroethene", _MG),
    "a24050": AirCode("tetrachloroethene", _MG),
    "a24053": AirCode("propene", _MG),
    "a24054": AirCode("1,3-dichloropropene", _MG),
    "a24072": AirCode("1,4-dioxane", _MG),
    "a24078": AirCode("1,3-butadiene", _MG),
    "a24087": AirCode("hydrocarbons (碳氢化合物)", _MG),
    "a24088": AirCode("non-methane hydrocarbons (NMHC, 非甲烷总烃)", _MG),
    "a24099": AirCode("chloromethane", _MG),
    "a24110": AirCode("trans-1,2-dichloroethene", _MG),
    "a24111": AirCode("cis-1,2-dichloroethene", _MG),
    "a24112": AirCode("trans-1,3-dichloropropene", _MG),
    "a24113": AirCode("hexachloro-1,3-butadiene", _MG),
    "a25002": AirCode("benzene", _MG),
    "a25003": AirCode("toluene", _MG),
    "a25004": AirCode("ethylbenzene", _MG),
    "a25005": AirCode("xylenes", _MG),
    "a25006": AirCode("1,2-dimethylbenzene", _MG),
    "a25007": AirCode("1,3-dimethylbenzene", _MG),
    "a25008": AirCode("1,4-dimethylbenzene", _MG),
    "a25010": AirCode("chlorobenzene", _MG),
    "a25011": AirCode("1,2-dichlorobenzene", _MG),
    "a25012": AirCode("1,3-dichlorobenzene", _MG),
    "a25013": AirCode("1,4-dichlorobenzene", _MG),
    "a25014": AirCode("1-ethyl-4-methylbenzene", _MG),
    "a25015": AirCode("1,2,4-trichlorobenzene", _MG),
    "a25019": AirCode("1,2,4-trimethylbenzene", _MG),
    "a25020": AirCode("1,2,3-trimethylbenzene", _MG),
    "a25021": AirCode("1,3,5-trimethylbenzene", _MG),
    "a25023": AirCode("nitrobenzene", _MG),
    "a25038": AirCode("styrene (vinylbenzene)", _MG),
    "a25044": AirCode("benzo[a]pyrene", _MG),
    "a25072": AirCode("tetrahydrofuran", _MG),
    "a26001": AirCode("anilines", _MG),
    "a29017": AirCode("ethyl acetate", _MG),
    "a29026": AirCode("vinyl acetate", _MG),
    "a30001": AirCode("methanol", _MG),
    "a30008": AirCode("isopropanol", _MG),
    "a30022": AirCode("mercaptans", _MG),
    "a31001": AirCode("formaldehyde", _MG),
    "a31002": AirCode("acetaldehyde", _MG),
    "a31024": AirCode("acetone", _MG),
    "a31025": AirCode("2-butanone", _MG),
    "a31030": AirCode("methyl isobutyl ketone", _MG),
    "a99010": AirCode("acrylonitrile", _MG),
    "a99049": AirCode("phosgene", _MG),
    "a99051": AirCode("carbon disulphide", _MG),
    # --- particulates -------------------------------------------------------------------------------
    "a34001": AirCode("total suspended particulates (TSP)", _NG),
    "a34002": AirCode("PM10", _NG),
    "a34004": AirCode("PM2.5", _NG),
    "a34005": AirCode("PM1.0", _NG),
    "a34011": AirCode("dustfall", "t/(km²·month)"),
    "a34013": AirCode("smoke dust (烟尘, particulate matter in flue gas)", _MG),
    "a34017": AirCode("carbon black dust", _MG),
    "a34038": AirCode("asphalt fume", _MG),
    "a34039": AirCode("sulphuric acid mist", _MG),
    "a34040": AirCode("chromic acid mist", _MG),
}

# Pollutants with a concentration column: code → prefix of <prefix>_mg_m3 / _zs_mg_m3 / _flag.
POLLUTANT_CODES: dict[str, str] = {
    "a34013": "dust",
    "a21026": "so2",
    "a21002": "nox",
    "a21005": "co",
    "a21024": "hcl",
    # 氟化物 (fluoride), the code CEMS HF analysers report on; EU IED Annex VI limits "HF" as gaseous
    # inorganic fluorine compounds expressed as HF, the hf_* columns.
    "a21018": "hf",
    # The table's unit for a21001 is ng/m³ (an ambient-air unit); CEMS ammonia-slip analysers at
    # incinerators report mg/m³, which is what the nh3_mg_m3 column assumes (unverified).
    "a21001": "nh3",
    "a20057": "hg",  # mercury and its compounds, mg/m³ [T1][T2]
}
# TOC (toc_* columns) has no HJ 212-2017 code of its own: a24087 is "hydrocarbons" and a24088 NMHC,
# neither is TOC as EU IED limits it; both stay in the reading's raw HJ 212 data.

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
# a00000 (flue-gas flow) is in m³/s in the standard's table [T1][T2]; the column is m³/h.
A00000_TO_M3_H = 3600.0

# Codes of the table without a column: kept as sent under the reading's "hj212" key. a20058 (mercury,
# table unit ng/m³) is deliberately not converted into hg_mg_m3: a DAU configured in mg/m³ would be
# stored a million times too small, and a wrong mercury value is worse than a raw one.
RECOGNISED_UNMAPPED: frozenset[str] = frozenset(AIR_CODES) - frozenset(POLLUTANT_CODES) - frozenset(PARAMETER_CODES)

# Zero drift. An analyser at zero reads a little below it; the concentration columns cannot hold a
# negative value (schemas/readings.py, ge=0), so a value between −allowance and 0 is stored as 0 with the
# measured value kept in the reading's extra ("adjusted"); further below is not drift but a fault and
# the field is invalidated. Allowance = 2.5 % of a typical incinerator CEMS measuring range, the order of
# the 24-h zero drift the CEMS specifications (HJ 76-2017) accept for gas analysers (unverified: the
# percentage and the ranges are typical values, not read from the standard). In column units.
ZERO_DRIFT_FRACTION = 0.025
TYPICAL_RANGE: dict[str, float] = {
    "dust": 40.0, "so2": 200.0, "nox": 300.0, "co": 150.0, "hcl": 80.0, "hf": 20.0, "nh3": 20.0,
    "hg": 0.1, "toc": 30.0,
    "o2_pct": 25.0, "h2o_pct": 40.0, "flue_velocity_m_s": 30.0, "flue_flow_m3_h": 100.0 * A00000_TO_M3_H,
}
# O2 at or above 21 %vol is above the oxygen content of air (20.95 %vol): not a flue-gas measurement,
# and the 11 % O2 correction (21 − 11)/(21 − O2) is undefined there (standards.md §1). Invalidated.
O2_AIR_PCT = 21.0


def zero_drift_allowance(column: str) -> float:
    """How far below 0 a value of ``column`` may read and still be zero drift (0: no allowance)."""
    key = column.removesuffix("_zs_mg_m3").removesuffix("_mg_m3")
    return TYPICAL_RANGE.get(key, 0.0) * ZERO_DRIFT_FRACTION
