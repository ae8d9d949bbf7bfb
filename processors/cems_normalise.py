"""Reference-condition normalisation of incinerator stack concentrations (11 % O2, dry gas).

    C_ref = C_meas_dry × (21 − O2_ref) / (21 − O2_meas_dry)
    C_dry = C_wet / (1 − H2O_fraction)

Both GB 18485-2014 and EU 2010/75/EU Annex VI state their limits at 11 % O2 on dry gas.

The O2 guard: as O2 approaches the 20.9 % of ambient air (start-up, shut-down, air ingress, an idle
line) the factor explodes — at 20 % O2 it is 10, at 20.5 % it is 20 — and a trace of SO2 becomes a
false exceedance. Readings with O2 above ``O2_GUARD_PCT`` are therefore not normalised: they are
counted as discarded with reason ``o2_guard`` (and a period made mostly of them is "not operating"),
never turned into an exceedance. 19 % (factor 5) is this project's cut-off: above it a municipal
waste furnace is not burning waste in steady state. It is a parameter, not a regulatory value.
"""

from __future__ import annotations

O2_AMBIENT_PCT = 21.0  # the constant of the correction formula (both standards use 21)
O2_REF_PCT = 11.0
O2_GUARD_PCT = 19.0  # project choice, see the module docstring; override per call


class NormalisationError(ValueError):
    """Inputs outside the formula's domain; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def o2_guarded(o2_meas_dry: float, o2_max: float = O2_GUARD_PCT) -> bool:
    """True when O2 is too close to ambient for the correction to mean anything."""
    return o2_meas_dry > o2_max


def normalise_to_reference_o2(c_meas_dry: float, o2_meas_dry: float, o2_ref: float = O2_REF_PCT,
                              o2_max: float = O2_GUARD_PCT) -> float:
    """Concentration at the reference O2. Raises ``NormalisationError("o2_guard")`` above ``o2_max``
    (see the module docstring) and ``("bad_o2")`` for O2 outside 0–21 %."""
    if not 0.0 <= o2_meas_dry <= O2_AMBIENT_PCT:
        raise NormalisationError("bad_o2", f"O2 {o2_meas_dry} % is outside 0–21 %")
    if o2_guarded(o2_meas_dry, o2_max):
        raise NormalisationError("o2_guard", f"O2 {o2_meas_dry} % is above the {o2_max} % guard; "
                                             "the reading is not normalised")
    return c_meas_dry * (O2_AMBIENT_PCT - o2_ref) / (O2_AMBIENT_PCT - o2_meas_dry)


def wet_to_dry(c_wet: float, h2o_fraction: float) -> float:
    """Dry-gas value of a wet-gas measurement (concentration or O2 % alike). ``h2o_fraction`` is a
    fraction (0.18), not a percentage."""
    if not 0.0 <= h2o_fraction < 1.0:
        raise NormalisationError("bad_h2o", f"moisture fraction {h2o_fraction} is outside 0 ≤ x < 1 "
                                            "(give a fraction, not a percentage)")
    return c_wet / (1.0 - h2o_fraction)


def to_reference(c_meas: float, o2_meas: float, *, gas_is_dry: bool = True, h2o_pct: float | None = None,
                 o2_ref: float = O2_REF_PCT, o2_max: float = O2_GUARD_PCT) -> float:
    """Measured concentration and O2 (both on the same basis) → value at reference O2, dry.

    On wet gas both the concentration and O2 are dried first (the analyser measures them in the same
    wet sample); the guard applies to the dry O2."""
    if not gas_is_dry:
        if h2o_pct is None:
            raise NormalisationError("no_h2o", "wet-gas reading without moisture (a01014 / h2o_pct)")
        fraction = h2o_pct / 100.0
        c_meas, o2_meas = wet_to_dry(c_meas, fraction), wet_to_dry(o2_meas, fraction)
    return normalise_to_reference_o2(c_meas, o2_meas, o2_ref, o2_max)
