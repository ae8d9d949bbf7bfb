"""Normalisation to 11 % O2 dry, checked against values computed by hand."""

from __future__ import annotations

import pytest

from sanitel.processors.cems_normalise import (
    NormalisationError,
    normalise_to_reference_o2,
    o2_guarded,
    to_reference,
    wet_to_dry,
)


def test_reference_o2_by_hand() -> None:
    # 100 mg/m³ at 8 % O2 → 100 × (21 − 11) / (21 − 8) = 76.923
    assert normalise_to_reference_o2(100, 8) == pytest.approx(76.923, abs=1e-3)
    # at the reference O2 nothing changes; above it the value rises: 100 × 10 / 6 = 166.667 at 15 %
    assert normalise_to_reference_o2(100, 11) == 100
    assert normalise_to_reference_o2(100, 15) == pytest.approx(166.667, abs=1e-3)
    # another reference (e.g. 6 % for co-firing permits): 100 × 15 / 13 = 115.385
    assert normalise_to_reference_o2(100, 8, o2_ref=6) == pytest.approx(115.385, abs=1e-3)


def test_wet_to_dry_by_hand() -> None:
    # 80 mg/m³ wet in gas with 20 % water: 80 / 0.8 = 100 dry
    assert wet_to_dry(80, 0.20) == pytest.approx(100)
    with pytest.raises(NormalisationError) as err:
        wet_to_dry(80, 20)  # a percentage given where a fraction is expected
    assert err.value.reason == "bad_h2o"


def test_wet_gas_is_dried_before_normalising() -> None:
    # wet: 60 mg/m³, O2 6.4 %, H2O 20 % → dry 75 mg/m³, O2 8 % → 75 × 10 / 13 = 57.692
    assert to_reference(60, 6.4, gas_is_dry=False, h2o_pct=20) == pytest.approx(57.692, abs=1e-3)
    with pytest.raises(NormalisationError) as err:
        to_reference(60, 6.4, gas_is_dry=False)
    assert err.value.reason == "no_h2o"


def test_o2_guard_flags_instead_of_exploding() -> None:
    assert normalise_to_reference_o2(5, 19.0) == pytest.approx(25)  # factor 5 at the cut-off itself
    assert o2_guarded(19.5) and not o2_guarded(19.0)
    with pytest.raises(NormalisationError) as err:
        normalise_to_reference_o2(5, 20.5)  # would be ×20: a trace of SO2 → a false exceedance
    assert err.value.reason == "o2_guard"
    with pytest.raises(NormalisationError) as err:
        normalise_to_reference_o2(5, 22)
    assert err.value.reason == "bad_o2"
    assert normalise_to_reference_o2(5, 20.5, o2_max=20.8) == pytest.approx(100)  # the cut-off is a parameter
