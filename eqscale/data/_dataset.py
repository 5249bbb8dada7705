"""The one Dataset API shared by generated shards and every reader.

A dataset is a list of *parts* (a shard, or the whole of what a reader read), each a set of flat
arrays over atoms (``numbers``, ``positions``, ``forces``) and over structures (``energy``,
``offsets``, optional ``cell``/``pbc`` and per-structure columns such as ``molecule`` or ``split``).
The arrays may be memory maps: a structure is sliced out only when it is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
_ATOM_FIELDS = ("numbers", "positions", "forces")


@dataclasses.dataclass
class Structure:
    """One labelled structure, in eV, Å and eV/Å.

    Attributes:
        numbers: ``(n,)`` int64 atomic numbers.
        positions: ``(n, 3)`` float64 positions.
        energy: total energy.
        forces: ``(n, 3)`` float64 forces.
        cell: ``(3, 3)`` cell vectors as rows (zeros for a molecule).
        pbc: ``(3,)`` bool periodicity.
        index: position of the structure in its dataset.

    Example:
        >>> import numpy as np
        >>> h2 = Structure(np.array([1, 1]), np.array([[0, 0, 0], [0, 0, 0.74]]), -31.7, np.zeros((2, 3)),
        ...                np.zeros((3, 3)), np.zeros(3, bool))
        >>> h2.positions.shape
        (2, 3)
    """

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    index: int = -1


@dataclasses.dataclass
class Part:
    """Arrays of a group of structures (one shard, or one file read in full).

    Attributes:
        numbers: ``(atoms,)`` atomic numbers.
        positions: ``(atoms, 3)`` Å.
        forces: ``(atoms, 3)`` eV/Å.
        energy: ``(structures,)`` eV.
        offsets: ``(structures + 1,)`` start of each structure in the atom arrays.
        cell: ``(structures, 3, 3)`` or ``None`` (no structure periodic).
        pbc: ``(structures, 3)`` or ``None``.
        columns: further per-structure arrays (``molecule``, ``conformer``, ``split``, ...).

    Example:
        >>> import numpy as np
        >>> part = Part(numbers=np.array([1, 1]), positions=np.zeros((2, 3)), forces=np.zeros((2, 3)),
        ...             energy=np.array([-31.7]), offsets=np.array([0, 2]))
        >>> len(part), part.structure(0, index=0).numbers.tolist()
        (1, [1, 1])
    """

    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    energy: np.ndarray
    offsets: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.energy)

    def structure(self, local: int, index: int) -> Structure:
        start, stop = int(self.offsets[local]), int(self.offsets[local + 1])
        cell = np.zeros((3, 3)) if self.cell is None else np.array(self.cell[local], dtype=np.float64)
        pbc = np.zeros(3, dtype=bool) if self.pbc is None else np.array(self.pbc[local], dtype=bool)
        return Structure(
            numbers=np.array(self.numbers[start:stop], dtype=np.int64),
            positions=np.array(self.positions[start:stop], dtype=np.float64),
            energy=float(self.energy[local]),
            forces=np.array(self.forces[start:stop], dtype=np.float64),
            cell=cell,
            pbc=pbc,
            index=index,
        )


class Dataset:
    """Labelled structures: ``len``, indexing to :class:`Structure`, subsets and splits.

    Built by :func:`eqscale.data.open_dataset` (memory-mapped shards) and by the readers
    (:func:`~eqscale.data.read_ase`, :func:`~eqscale.data.read_ase_db`, :func:`~eqscale.data.read_npz`).

    Args:
        parts: the groups of arrays.
        indices: the structures of the parts that belong to this dataset, in order; ``None``: all.
        metadata: free-form description (units, source, method, ...).

    Example:
        >>> import numpy as np
        >>> from eqscale.data import Dataset, Part
        >>> part = Part(numbers=np.array([8, 1, 1]), positions=np.zeros((3, 3)), forces=np.zeros((3, 3)),
        ...             energy=np.array([-10.0]), offsets=np.array([0, 3]))
        >>> dataset = Dataset([part])
        >>> len(dataset), dataset[0].numbers.tolist(), dataset.num_atoms.tolist()
        (1, [8, 1, 1], [3])
    """

    def __init__(
        self, parts: Sequence[Part], indices: np.ndarray | None = None, metadata: Mapping | None = None
    ) -> None:
        self.parts = list(parts)
        self.metadata = dict(metadata or {})
        sizes = np.array([len(part) for part in self.parts], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])
        total = int(self._starts[-1])
        if indices is None:
            self._indices = None
        else:
            indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if len(indices) and (indices.min() < 0 or indices.max() >= total):
                raise IndexError(f"indices must lie in [0, {total}), got range [{indices.min()}, {indices.max()}]")
            self._indices = indices
        self._num_atoms: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._starts[-1]) if self._indices is None else len(self._indices)

    def _global(self, index: int) -> int:
        size = len(self)
        if not -size <= index < size:
            raise IndexError(f"index {index} out of range for a dataset of {size} structures")
        index %= size
        return index if self._indices is None else int(self._indices[index])

    def _locate(self, flat: int) -> tuple[int, int]:
        part = int(np.searchsorted(self._starts, flat, side="right")) - 1
        return part, flat - int(self._starts[part])

    def __getitem__(self, index: int) -> Structure:
        part, local = self._locate(self._global(int(index)))
        return self.parts[part].structure(local, int(index) % len(self))

    def __iter__(self) -> Iterator[Structure]:
        for index in range(len(self)):
            yield self[index]

    @property
    def num_atoms(self) -> np.ndarray:
        """``(len,)`` int64 atoms per structure, without touching positions (for atom budgets)."""
        if self._num_atoms is None:
            counts = np.concatenate([np.diff(np.asarray(part.offsets)) for part in self.parts] or [np.zeros(0)])
            counts = counts.astype(np.int64)
            self._num_atoms = counts if self._indices is None else counts[self._indices]
        return self._num_atoms

    @property
    def part_of(self) -> np.ndarray:
        """``(len,)`` part (shard) number of each structure, for block-wise streaming."""
        parts = np.repeat(np.arange(len(self.parts)), np.diff(self._starts))
        return parts if self._indices is None else parts[self._indices]

    def column(self, name: str) -> np.ndarray:
        """A per-structure column (``"energy"``, ``"molecule"``, ``"split"``, ...) for this dataset.

        Raises:
            KeyError: a part lacks the column.
        """
        values = []
        for number, part in enumerate(self.parts):
            if name == "energy":
                values.append(np.asarray(part.energy))
            elif name in part.columns:
                values.append(np.asarray(part.columns[name]))
            else:
                raise KeyError(f"part {number} has no column {name!r}; it has {sorted(part.columns)}")
        column = np.concatenate(values) if values else np.zeros(0)
        return column if self._indices is None else column[self._indices]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The structures at ``indices`` (positions in this dataset), as a dataset over the same arrays.

        Example:
            >>> import numpy as np
            >>> from eqscale.data import Dataset, Part
            >>> part = Part(numbers=np.ones(4, int), positions=np.zeros((4, 3)), forces=np.zeros((4, 3)),
            ...             energy=np.array([1.0, 2.0]), offsets=np.array([0, 1, 4]))
            >>> Dataset([part]).subset([1]).num_atoms.tolist()
            [3]
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"indices must lie in [-{len(self)}, {len(self)}) for a dataset of {len(self)} structures")
        indices = indices % max(len(self), 1)
        flat = indices if self._indices is None else self._indices[indices]
        return Dataset(self.parts, flat, self.metadata)

    def split(self, name: str) -> Dataset:
        """The structures of one split (``"train"``, ``"val"`` or ``"test"``), from the ``split`` column.

        Splits are by molecule: no molecule has structures in two splits.

        Raises:
            ValueError: unknown split name.
            KeyError: the dataset has no ``split`` column (readers' datasets: use :meth:`subset`).
        """
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        codes = self.column("split")
        return self.subset(np.flatnonzero(codes == SPLITS.index(name)))

    def __getstate__(self) -> dict:
        # Memory maps would be pickled as full in-memory copies; sharded datasets reopen instead.
        state = dict(self.__dict__)
        if "reopen" in self.metadata:
            state["parts"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.parts is None:
            from eqscale.data._storage import load_parts  # noqa: PLC0415

            self.parts = load_parts(self.metadata["reopen"])

    def __repr__(self) -> str:
        return f"Dataset({len(self)} structures, {int(self.num_atoms.sum())} atoms, {len(self.parts)} parts)"


def check_part(part: Part, source: str) -> None:
    """Validates shapes and values of a part, raising a ValueError that names ``source`` and the field."""
    structures = len(part.energy)
    offsets = np.asarray(part.offsets)
    if offsets.shape != (structures + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{source}: offsets must be ({structures + 1},), start at 0 and not decrease")
    atoms = int(offsets[-1])
    expected = {"numbers": (atoms,), "positions": (atoms, 3), "forces": (atoms, 3)}
    for name, shape in expected.items():
        value = np.asarray(getattr(part, name))
        if value.shape != shape:
            raise ValueError(f"{source}: {name} must have shape {shape}, got {value.shape}")
    if part.cell is not None and np.asarray(part.cell).shape != (structures, 3, 3):
        raise ValueError(f"{source}: cell must have shape ({structures}, 3, 3), got {np.asarray(part.cell).shape}")
    if part.pbc is not None and np.asarray(part.pbc).shape != (structures, 3):
        raise ValueError(f"{source}: pbc must have shape ({structures}, 3), got {np.asarray(part.pbc).shape}")
    for name in ("energy", "positions", "forces"):
        value = np.asarray(getattr(part, name))
        if not np.all(np.isfinite(value)):
            bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))[0]
            where = bad if name == "energy" else int(np.searchsorted(offsets, bad, side="right")) - 1
            raise ValueError(f"{source}: {name} of structure {where} is not finite (NaN or inf)")
    numbers = np.asarray(part.numbers)
    if len(numbers) and (numbers.min() < 1 or numbers.max() > 118):
        raise ValueError(
            f"{source}: numbers must be atomic numbers in [1, 118], got [{numbers.min()}, {numbers.max()}]"
        )
