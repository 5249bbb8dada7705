"""Readers of users' data into the one :class:`~eqscale.data.Dataset` API.

Every reader declares the units of what it reads and converts to eV, Å and eV/Å; a missing label,
a non-finite value or inconsistent shapes raise a ``ValueError`` naming the structure and field.
ASE is imported only when a reader that needs it is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqscale.data._dataset import Dataset, Part, check_part
from eqscale.data._units import energy_factor, forces_factor, length_factor

_RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def _factors(energy_unit: str, length_unit: str, forces_unit: str | None) -> tuple[float, float, float]:
    energy = energy_factor(energy_unit)
    length = length_factor(length_unit)
    forces = forces_factor(forces_unit if forces_unit is not None else f"{energy_unit}/{length_unit}")
    return energy, length, forces


def _build(records: list[dict[str, Any]], source: str, metadata: dict[str, Any]) -> Dataset:
    """A one-part dataset from per-structure records (numbers, positions, energy, forces, cell, pbc)."""
    for index, record in enumerate(records):
        atoms = len(record["numbers"])
        for name in ("positions", "forces"):
            shape = np.shape(record[name])
            if shape != (atoms, 3):
                raise ValueError(f"{source}: structure {index} has {atoms} atoms but {name} of shape {shape}")
    counts = [len(record["numbers"]) for record in records]
    periodic = any(np.any(record["pbc"]) for record in records)
    part = Part(
        numbers=np.concatenate([np.asarray(r["numbers"], np.int64) for r in records])
        if records
        else np.zeros(0, np.int64),
        positions=np.concatenate([r["positions"] for r in records]).reshape(-1, 3) if records else np.zeros((0, 3)),
        forces=np.concatenate([r["forces"] for r in records]).reshape(-1, 3) if records else np.zeros((0, 3)),
        energy=np.array([r["energy"] for r in records], dtype=np.float64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        cell=np.stack([r["cell"] for r in records]).astype(np.float64) if periodic else None,
        pbc=np.stack([r["pbc"] for r in records]).astype(bool) if periodic else None,
    )
    check_part(part, source)
    return Dataset([part], metadata={"source": source, **metadata})


def _label(atoms: Any, key: str, per_atom: bool) -> Any:
    """A label from ``info``/``arrays`` or else from the attached calculator's results."""
    table = atoms.arrays if per_atom else atoms.info
    if key in table:
        return table[key]
    calculator = getattr(atoms, "calc", None)
    results = getattr(calculator, "results", None) or {}
    return results.get(key)


def _records_from_atoms(images: Sequence[Any], source: str, energy_key: str, forces_key: str, factors: tuple) -> list:
    energy_to_ev, length_to_a, forces_to_ev_a = factors
    records = []
    for index, atoms in enumerate(images):
        energy = _label(atoms, energy_key, per_atom=False)
        if energy is None:
            raise ValueError(
                f"{source}: structure {index} has no energy: looked for info[{energy_key!r}] and the calculator's "
                f"results[{energy_key!r}]; set energy_key= to the right key"
            )
        forces = _label(atoms, forces_key, per_atom=True)
        if forces is None:
            raise ValueError(
                f"{source}: structure {index} has no forces: looked for arrays[{forces_key!r}] and the calculator's "
                f"results[{forces_key!r}]; set forces_key= to the right key"
            )
        energy = np.asarray(energy, dtype=np.float64)
        if energy.size != 1:
            raise ValueError(f"{source}: structure {index} has an energy of shape {energy.shape}, expected a scalar")
        records.append(
            {
                "numbers": atoms.numbers,
                "positions": np.asarray(atoms.positions, np.float64) * length_to_a,
                "energy": float(energy.reshape(())) * energy_to_ev,
                "forces": np.asarray(forces, np.float64) * forces_to_ev_a,
                "cell": np.asarray(atoms.cell.array, np.float64) * length_to_a,
                "pbc": np.asarray(atoms.pbc, bool),
            }
        )
    return records


def _import_ase() -> Any:
    try:
        import ase.io  # noqa: PLC0415
    except ImportError as error:
        raise ImportError("this reader needs ASE; pip install 'eqscale[data]'") from error
    return ase


def read_ase(
    source: str | os.PathLike | Any | Sequence[Any],
    index: str | int | slice = ":",
    *,
    format: str | None = None,  # noqa: A002 - ASE's name
    energy_key: str = "energy",
    forces_key: str = "forces",
    energy_unit: str = "eV",
    length_unit: str = "Å",
    forces_unit: str | None = None,
) -> Dataset:
    """Reads extxyz or any file ASE reads (or ``Atoms`` objects) into a :class:`~eqscale.data.Dataset`.

    Labels come from ``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]``, or else from the
    attached calculator's results (ASE's extxyz reader puts ``energy=`` and ``forces`` there).

    Args:
        source: a file path, an ``ase.Atoms`` or a sequence of them.
        index: which frames of a file (ASE's index syntax).
        format: ASE format name; ``None`` guesses from the file name.
        energy_key: key of the energy.
        forces_key: key of the forces.
        energy_unit: unit of the energies as read (``"eV"``, ``"kcal/mol"``, ``"Hartree"``, ...).
        length_unit: unit of positions and cell as read (``"Å"``, ``"Bohr"``, ``"nm"``).
        forces_unit: unit of the forces; ``None``: ``energy_unit/length_unit``.

    Returns:
        The structures, converted to eV, Å and eV/Å.

    Raises:
        ValueError: a missing label, a non-finite value, inconsistent shapes, an unknown unit.

    Example:
        >>> from eqscale.data import read_ase
        >>> dataset = read_ase("train.extxyz", energy_key="REF_energy", forces_key="REF_forces")  # doctest: +SKIP
        >>> dataset[0].energy  # doctest: +SKIP
        -1234.5
    """
    factors = _factors(energy_unit, length_unit, forces_unit)
    ase = _import_ase()
    if isinstance(source, str | os.PathLike):
        name = str(source)
        if not Path(name).is_file():
            raise FileNotFoundError(f"source={name!r} does not exist")
        images = ase.io.read(name, index=index, format=format)
    else:
        name = "atoms"
        images = source
    if isinstance(images, ase.Atoms):
        images = [images]
    records = _records_from_atoms(list(images), name, energy_key, forces_key, factors)
    units = {"energy_unit": energy_unit, "length_unit": length_unit, "forces_unit": forces_unit}
    return _build(records, name, {"reader": "ase", "units_read": units})


def read_ase_db(
    path: str | os.PathLike,
    selection: Any = None,
    *,
    limit: int | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    energy_unit: str = "eV",
    length_unit: str = "Å",
    forces_unit: str | None = None,
) -> Dataset:
    """Reads an ASE database (``.db``, ``.json``, or ``.aselmdb`` as used by OMol25).

    Labels come from the row's calculator results, key-value pairs or ``data``.

    Args:
        path: the database file. ``.aselmdb`` needs the ``ase-db-backends`` package.
        selection: ASE's selection (e.g. ``"natoms<30"``); ``None``: all rows.
        limit: read at most this many rows.
        energy_key: key of the energy.
        forces_key: key of the forces.
        energy_unit: unit of the energies as stored.
        length_unit: unit of positions and cell as stored.
        forces_unit: unit of the forces; ``None``: ``energy_unit/length_unit``.

    Returns:
        The structures, converted to eV, Å and eV/Å.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a missing label, a non-finite value, inconsistent shapes, an unknown unit.

    Example:
        >>> from eqscale.data import read_ase_db
        >>> dataset = read_ase_db("omol25/val/data0000.aselmdb", limit=1000)  # doctest: +SKIP
    """
    factors = _factors(energy_unit, length_unit, forces_unit)
    _import_ase()
    import ase.db  # noqa: PLC0415

    name = str(path)
    if not Path(name).exists():
        raise FileNotFoundError(f"path={name!r} does not exist")
    options: dict[str, Any] = {}
    if name.endswith(".aselmdb"):
        try:
            import ase_db_backends.aselmdb  # noqa: F401, PLC0415
        except ImportError as error:
            raise ImportError(".aselmdb files need the ase-db-backends package; pip install 'eqscale[data]'") from error
        # Read-only opens no lock file and allows concurrent readers.
        options = {"readonly": True}
    images = []
    with _closing(ase.db.connect(name, **options)) as database:
        for row in database.select(selection, limit=limit):
            atoms = row.toatoms()
            data = row.get("data") or {}
            for key, per_atom in ((energy_key, False), (forces_key, True)):
                value = _label(atoms, key, per_atom)
                if value is None:
                    value = row.key_value_pairs.get(key, data.get(key))
                if value is not None:
                    (atoms.arrays if per_atom else atoms.info)[key] = np.asarray(value)
            images.append(atoms)
    records = _records_from_atoms(images, name, energy_key, forces_key, factors)
    units = {"energy_unit": energy_unit, "length_unit": length_unit, "forces_unit": forces_unit}
    return _build(records, name, {"reader": "ase.db", "units_read": units})


class _closing:
    """Closes LMDB-backed databases (SQLite and JSON ones have nothing to close)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def __enter__(self) -> Any:
        return self.database

    def __exit__(self, *exc: object) -> None:
        close = getattr(self.database, "close", None)
        if callable(close):
            close()


def read_npz(
    path: str | os.PathLike,
    *,
    energy_unit: str = "kcal/mol",
    length_unit: str = "Å",
    forces_unit: str | None = None,
) -> Dataset:
    """Reads an ``.npz`` in the rMD17 layout: ``nuclear_charges``, ``coords``, ``energies``, ``forces``.

    Args:
        path: the file.
        energy_unit: unit of ``energies`` (rMD17: kcal/mol).
        length_unit: unit of ``coords`` (rMD17: Å).
        forces_unit: unit of ``forces``; ``None``: ``energy_unit/length_unit`` (rMD17: kcal/mol/Å).

    Returns:
        The structures, converted to eV, Å and eV/Å.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a missing key, inconsistent shapes, a non-finite value, an unknown unit.

    Example:
        >>> from eqscale.data import read_npz
        >>> aspirin = read_npz("rmd17_aspirin.npz")  # doctest: +SKIP
        >>> len(aspirin), aspirin[0].numbers.shape  # doctest: +SKIP
        (100000, (21,))
    """
    energy_to_ev, length_to_a, forces_to_ev_a = _factors(energy_unit, length_unit, forces_unit)
    name = str(path)
    if not Path(name).is_file():
        raise FileNotFoundError(f"path={name!r} does not exist")
    with np.load(name, allow_pickle=False) as archive:
        missing = [key for key in _RMD17_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{name}: missing {missing} (the rMD17 layout has {list(_RMD17_KEYS)}; found {archive.files})"
            )
        numbers = np.asarray(archive["nuclear_charges"]).astype(np.int64).reshape(-1)
        coords = np.asarray(archive["coords"], dtype=np.float64)
        energies = np.asarray(archive["energies"], dtype=np.float64).reshape(-1)
        forces = np.asarray(archive["forces"], dtype=np.float64)
    structures, atoms = len(energies), len(numbers)
    for key, value in (("coords", coords), ("forces", forces)):
        if value.shape != (structures, atoms, 3):
            raise ValueError(
                f"{name}: {key} must have shape (structures, atoms, 3) = ({structures}, {atoms}, 3) to match energies "
                f"and nuclear_charges, got {value.shape}"
            )
    part = Part(
        numbers=np.tile(numbers, structures),
        positions=coords.reshape(-1, 3) * length_to_a,
        forces=forces.reshape(-1, 3) * forces_to_ev_a,
        energy=energies * energy_to_ev,
        offsets=np.arange(structures + 1, dtype=np.int64) * atoms,
    )
    check_part(part, name)
    units = {"energy_unit": energy_unit, "length_unit": length_unit, "forces_unit": forces_unit}
    return Dataset([part], metadata={"source": name, "reader": "npz (rMD17 layout)", "units_read": units})
