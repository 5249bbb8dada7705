"""QM9 seed geometries, read from the data files that the ``qm9pack`` wheel ships.

``qm9pack``'s own ``import`` needs setuptools' ``pkg_resources`` (gone from recent setuptools) and
loads 230 MB of CSV through pandas, so its files are read directly: one quick pass records where
each molecule's line starts, and only the molecules asked for are parsed.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

QM9_REFERENCE = "Ramakrishnan et al., Sci. Data 1, 140022 (2014), doi:10.1038/sdata.2014.22"
SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
_COLUMNS = ("Index", "SMILES", "Elements", "XYZ_Ang")


@dataclasses.dataclass(frozen=True)
class Molecule:
    """One QM9 molecule at its B3LYP/6-31G(2df,p) equilibrium geometry.

    Attributes:
        id: QM9 index (1 to 133885; ``dsgdb9nsd_<id>.xyz`` in the original release).
        numbers: ``(n,)`` atomic numbers (H, C, N, O, F).
        positions: ``(n, 3)`` positions in Å.
        smiles: SMILES string from QM9.

    Example:
        >>> import numpy as np
        >>> water = Molecule(3, np.array([8, 1, 1]), np.zeros((3, 3)), "O")
        >>> water.numbers.tolist()
        [8, 1, 1]
    """

    id: int
    numbers: np.ndarray
    positions: np.ndarray
    smiles: str


def _install_hint() -> str:
    return "install the data extra: pip install 'eqscale[data]'"


def qm9_files() -> list[Path]:
    """The ``qm9pack`` CSV files holding QM9, in index order.

    Returns:
        Paths of ``qm9_part1.csv``, ``qm9_part2.csv``, ``qm9_part3.csv``.

    Raises:
        ImportError: ``qm9pack`` is not installed or ships no data files.

    Example:
        >>> [path.name for path in qm9_files()]  # doctest: +SKIP
        ['qm9_part1.csv', 'qm9_part2.csv', 'qm9_part3.csv']
    """
    # find_spec locates the package without executing its __init__ (which fails without pkg_resources).
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the QM9 seeds come from the qm9pack package, which is not installed; {_install_hint()}")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("data/qm9_part*.csv"))
    if not files:
        raise ImportError(
            f"qm9pack is installed but ships no data/qm9_part*.csv files; reinstall it ({_install_hint()})"
        )
    return files


def qm9pack_version() -> str:
    """The installed ``qm9pack`` version (provenance of the seeds)."""
    return importlib.metadata.version("qm9pack")


@functools.lru_cache(maxsize=1)
def _line_index() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(QM9 ids, file number, byte offset) of every molecule line, sorted by id."""
    ids, files, offsets = [], [], []
    for number, path in enumerate(qm9_files()):
        with open(path, "rb") as handle:
            header = handle.readline()
            if not header.startswith(b"XYZ_file,Index,"):
                raise ValueError(f"{path} is not a qm9pack QM9 table (unexpected header {header[:40]!r})")
            offset = len(header)
            for line in handle:
                # The id is the second field; the first (a quoted file name) has no comma.
                ids.append(int(line.split(b",", 2)[1]))
                files.append(number)
                offsets.append(offset)
                offset += len(line)
    order = np.argsort(ids, kind="stable")
    return np.asarray(ids, np.int64)[order], np.asarray(files, np.int16)[order], np.asarray(offsets, np.int64)[order]


def qm9_ids() -> np.ndarray:
    """The QM9 indices available in ``qm9pack`` (130,831 molecules), sorted.

    Example:
        >>> ids = qm9_ids()  # doctest: +SKIP
        >>> len(ids), int(ids[0])  # doctest: +SKIP
        (130831, 1)
    """
    return _line_index()[0]


def _parse_line(line: str, header: list[str]) -> Molecule:
    row = dict(zip(header, next(csv.reader([line])), strict=True))
    symbols = [symbol.strip().strip("'\"") for symbol in row["Elements"].strip("[]").split(",")]
    numbers = np.array([SYMBOLS[symbol] for symbol in symbols], dtype=np.int64)
    positions = np.array(json.loads(row["XYZ_Ang"]), dtype=np.float64).reshape(len(numbers), 3)
    return Molecule(int(row["Index"]), numbers, positions, row["SMILES"])


def load_molecules(ids: Sequence[int] | np.ndarray) -> list[Molecule]:
    """QM9 molecules by index, in the order asked for.

    Args:
        ids: QM9 indices (see :func:`qm9_ids`).

    Returns:
        One :class:`Molecule` per id.

    Raises:
        KeyError: an id is not in ``qm9pack``'s QM9 (ids of molecules that QM9 left out, for example).

    Example:
        >>> methane = load_molecules([1])[0]  # doctest: +SKIP
        >>> methane.smiles, methane.numbers.tolist()  # doctest: +SKIP
        ('C', [6, 1, 1, 1, 1])
    """
    all_ids, files, offsets = _line_index()
    wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
    rows = np.searchsorted(all_ids, wanted)
    missing = [int(i) for i, row in zip(wanted, rows, strict=True) if row >= len(all_ids) or all_ids[row] != i]
    if missing:
        raise KeyError(f"QM9 ids not in qm9pack: {missing[:10]}")
    paths = qm9_files()
    headers = {}
    molecules = []
    handles = {}
    try:
        for row in rows:
            number = int(files[row])
            if number not in handles:
                handles[number] = open(paths[number], "rb")  # noqa: SIM115
                headers[number] = next(csv.reader([handles[number].readline().decode("utf-8")]))
            handle = handles[number]
            handle.seek(int(offsets[row]))
            molecules.append(_parse_line(handle.readline().decode("utf-8"), headers[number]))
    finally:
        for handle in handles.values():
            handle.close()
    return molecules
