"""Unit conversion to the stored units: eV, Å and eV/Å.

The constants are ASE's defaults (CODATA 2014), so that numbers read through ASE and numbers
converted here agree to the last digit.
"""

from __future__ import annotations

# eV per unit of energy.
HARTREE = 27.211386024367243
KCAL_PER_MOL = 0.04336410390059322
KJ_PER_MOL = 0.010364269574711572
# Å per unit of length.
BOHR = 0.5291772105638411

ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": HARTREE,
    "Ha": HARTREE,
    "kcal/mol": KCAL_PER_MOL,
    "kJ/mol": KJ_PER_MOL,
}
LENGTH_UNITS = {"Å": 1.0, "Ang": 1.0, "A": 1.0, "angstrom": 1.0, "Bohr": BOHR, "nm": 10.0}

STORED_UNITS = {"energy": "eV", "forces": "eV/Å", "positions": "Å"}


def energy_factor(unit: str, argument: str = "energy_unit") -> float:
    """EV per ``unit`` of energy.

    Args:
        unit: one of :data:`ENERGY_UNITS` (``"eV"``, ``"meV"``, ``"Hartree"``, ``"kcal/mol"``, ...).
        argument: the caller's argument name, for the error message.

    Returns:
        The factor that converts a value in ``unit`` to eV.

    Raises:
        ValueError: unknown unit.

    Example:
        >>> round(energy_factor("kcal/mol"), 6)
        0.043364
    """
    if unit not in ENERGY_UNITS:
        raise ValueError(f"{argument} must be one of {sorted(ENERGY_UNITS)}, got {unit!r}")
    return ENERGY_UNITS[unit]


def length_factor(unit: str, argument: str = "length_unit") -> float:
    """Å per ``unit`` of length.

    Args:
        unit: one of :data:`LENGTH_UNITS` (``"Å"``, ``"Bohr"``, ``"nm"``, ...).
        argument: the caller's argument name, for the error message.

    Returns:
        The factor that converts a value in ``unit`` to Å.

    Raises:
        ValueError: unknown unit.

    Example:
        >>> length_factor("nm")
        10.0
    """
    if unit not in LENGTH_UNITS:
        raise ValueError(f"{argument} must be one of {sorted(LENGTH_UNITS)}, got {unit!r}")
    return LENGTH_UNITS[unit]


def forces_factor(unit: str, argument: str = "forces_unit") -> float:
    """eV/Å per ``unit`` of force, for units written ``"<energy>/<length>"``.

    Args:
        unit: e.g. ``"eV/Å"``, ``"kcal/mol/Å"``, ``"Hartree/Bohr"``.
        argument: the caller's argument name, for the error message.

    Returns:
        The factor that converts a value in ``unit`` to eV/Å.

    Raises:
        ValueError: the unit is not an energy unit over a length unit.

    Example:
        >>> round(forces_factor("Hartree/Bohr"), 4)
        51.4221
    """
    energy, _, length = unit.rpartition("/")
    if energy not in ENERGY_UNITS or length not in LENGTH_UNITS:
        raise ValueError(
            f"{argument} must be '<energy>/<length>' with energy in {sorted(ENERGY_UNITS)} and length in "
            f"{sorted(LENGTH_UNITS)}, got {unit!r}"
        )
    return ENERGY_UNITS[energy] / LENGTH_UNITS[length]
