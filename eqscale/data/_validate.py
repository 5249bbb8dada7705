"""Spot check of stored labels: forces against central finite differences of the GFN2-xTB energy."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from eqscale.data._dataset import Dataset

# Central differences with a 1e-3 Å step: truncation error ~1e-5 eV/Å, SCF noise (~1e-7 eV / 2e-3 Å)
# ~1e-4 eV/Å at worst. Stored energies were converged from a restart, recomputed ones from scratch.
FORCE_TOLERANCE = 5e-3  # eV/Å
ENERGY_TOLERANCE = 1e-4  # eV


def check_forces(
    dataset: Dataset | str | os.PathLike,
    samples: int = 4,
    components: int = 3,
    step: float = 1e-3,
    seed: int = 0,
    accuracy: float | None = None,
) -> dict[str, Any]:
    """Recomputes the energy of sampled structures and compares stored forces with ``-dE/dx``.

    Each sampled structure's energy is recomputed at the stored positions, and ``components``
    random force components are compared with central differences of the energy.

    Args:
        dataset: a generated dataset, or its directory.
        samples: structures to check.
        components: force components per structure.
        step: finite-difference displacement (Å).
        seed: which structures and components.
        accuracy: tblite SCF accuracy; ``None``: the one the dataset was generated with.

    Returns:
        ``{"structures", "components", "step", "max_force_error", "max_energy_error", "passed"}``
        (errors in eV/Å and eV; tolerances :data:`FORCE_TOLERANCE`, :data:`ENERGY_TOLERANCE`).

    Example:
        >>> from eqscale.data import check_forces
        >>> check_forces("qm9-xtb", samples=2)["passed"]  # doctest: +SKIP
        True
    """
    from eqscale.data._generate import _Labeller  # noqa: PLC0415
    from eqscale.data._storage import open_dataset  # noqa: PLC0415

    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset)
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step!r}")
    if accuracy is None:
        accuracy = dataset.metadata.get("method", {}).get("accuracy", 1.0)
    labeller = _Labeller(accuracy)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset), size=min(samples, len(dataset)), replace=False) if len(dataset) else []
    force_error = energy_error = 0.0
    checked = 0
    for index in chosen:
        structure = dataset[int(index)]
        calculator = labeller.calculator(structure.numbers, structure.positions)
        reference = labeller.compute(calculator, structure.positions)
        if reference is None:
            raise RuntimeError(f"the SCF failed when recomputing structure {index}")
        energy_error = max(energy_error, abs(reference[0] - structure.energy))
        for flat in rng.choice(structure.positions.size, size=min(components, structure.positions.size), replace=False):
            atom, axis = divmod(int(flat), 3)
            energies = []
            for sign in (1.0, -1.0):
                displaced = structure.positions.copy()
                displaced[atom, axis] += sign * step
                result = labeller.compute(calculator, displaced)
                if result is None:
                    raise RuntimeError(f"the SCF failed at a displaced geometry of structure {index}")
                energies.append(result[0])
            numeric = -(energies[0] - energies[1]) / (2 * step)
            force_error = max(force_error, abs(numeric - structure.forces[atom, axis]))
            checked += 1
    return {
        "structures": len(chosen),
        "components": checked,
        "step": step,
        "max_force_error": float(force_error),
        "max_energy_error": float(energy_error),
        "force_tolerance": FORCE_TOLERANCE,
        "energy_tolerance": ENERGY_TOLERANCE,
        "passed": bool(force_error <= FORCE_TOLERANCE and energy_error <= ENERGY_TOLERANCE),
    }
