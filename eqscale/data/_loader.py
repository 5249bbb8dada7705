"""Batches of structures with the radius graph built on the fly by :func:`eqscale.ops.radius_graph`.

The order of an epoch is a function of ``(seed, epoch)`` alone and batches are packed from it
deterministically, so a position in an epoch (``state_dict``) is all a trainer needs to resume:
the batches already seen are skipped without being loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from eqscale.data._dataset import Dataset, Structure


@dataclasses.dataclass
class Batch:
    """Structures concatenated PyG-style, with their radius graph.

    ``vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts @ cell[batch[edge_index[0]]]`` (see
    :func:`eqscale.ops.edge_vectors`).

    Attributes:
        pos: ``(N, 3)`` positions (Å).
        Z: ``(N,)`` int64 atomic numbers.
        batch: ``(N,)`` int64 structure of each atom.
        cell: ``(B, 3, 3)`` cell vectors as rows (zeros for molecules).
        pbc: ``(B, 3)`` bool periodicity.
        energy: ``(B,)`` float64 energies (eV): float64 because total energies are large.
        forces: ``(N, 3)`` forces (eV/Å).
        edge_index: ``(2, E)`` int64 ``(sender, receiver)``.
        shifts: ``(E, 3)`` int64 cell shifts.
        natoms: ``(B,)`` int64 atoms per structure.
        ptr: ``(B + 1,)`` int64 first atom of each structure.
        index: ``(B,)`` int64 positions of the structures in the dataset.

    Example:
        >>> import numpy as np
        >>> from eqscale.data import Structure, collate
        >>> h2 = Structure(np.array([1, 1]), np.array([[0, 0, 0], [0, 0, 0.74]]), -31.7, np.zeros((2, 3)),
        ...                np.zeros((3, 3)), np.zeros(3, bool))
        >>> batch = collate([h2], cutoff=1.0)
        >>> batch.edge_index.tolist(), batch.batch.tolist()
        ([[1, 0], [0, 1]], [0, 0])
    """

    pos: torch.Tensor
    Z: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    natoms: torch.Tensor
    ptr: torch.Tensor
    index: torch.Tensor

    @property
    def num_graphs(self) -> int:
        """Number of structures."""
        return int(self.natoms.numel())

    def _map(self, function: Any) -> Batch:
        return Batch(**{field.name: function(getattr(self, field.name)) for field in dataclasses.fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on ``device``."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """The batch in pinned memory (called by the loader when ``pin_memory=True``)."""
        return self._map(lambda tensor: tensor.pin_memory())


def collate(
    structures: Sequence[Structure],
    cutoff: float,
    dtype: torch.dtype = torch.float32,
    max_num_neighbors: int | None = None,
) -> Batch:
    """Concatenates structures into a :class:`Batch` and builds its radius graph.

    The graph is built from float64 positions, so it does not depend on ``dtype``.

    Args:
        structures: the structures.
        cutoff: radius of the graph (Å).
        dtype: floating dtype of ``pos``, ``cell`` and ``forces``.
        max_num_neighbors: passed to :func:`eqscale.ops.radius_graph`.

    Returns:
        The batch.

    Example:
        >>> import numpy as np
        >>> from eqscale.data import Structure, collate
        >>> water = Structure(np.array([8, 1, 1]), np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
        ...                   -2080.0, np.zeros((3, 3)), np.zeros((3, 3)), np.zeros(3, bool))
        >>> batch = collate([water, water], cutoff=1.2)
        >>> batch.num_graphs, batch.edge_index.shape[1]
        (2, 8)
    """
    from eqscale.ops import radius_graph  # noqa: PLC0415

    natoms = np.array([len(s.numbers) for s in structures], dtype=np.int64)
    pos = torch.from_numpy(np.concatenate([s.positions for s in structures]).reshape(-1, 3).astype(np.float64))
    batch = torch.repeat_interleave(torch.arange(len(structures)), torch.from_numpy(natoms))
    cell = torch.from_numpy(np.stack([s.cell for s in structures]).astype(np.float64).reshape(-1, 3, 3))
    pbc = torch.from_numpy(np.stack([s.pbc for s in structures]).astype(bool).reshape(-1, 3))
    periodic = bool(pbc.any())
    edge_index, shifts = radius_graph(
        pos,
        cutoff,
        batch=batch,
        cell=cell if periodic else None,
        pbc=pbc if periodic else None,
        max_num_neighbors=max_num_neighbors,
    )
    return Batch(
        pos=pos.to(dtype),
        Z=torch.from_numpy(np.concatenate([s.numbers for s in structures]).astype(np.int64)),
        batch=batch,
        cell=cell.to(dtype),
        pbc=pbc,
        energy=torch.tensor([s.energy for s in structures], dtype=torch.float64),
        forces=torch.from_numpy(np.concatenate([s.forces for s in structures]).reshape(-1, 3)).to(dtype),
        edge_index=edge_index,
        shifts=shifts,
        natoms=torch.from_numpy(natoms),
        ptr=torch.from_numpy(np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64)),
        index=torch.tensor([s.index for s in structures], dtype=torch.int64),
    )


def edge_counts(dataset: Dataset, cutoff: float, chunk: int = 2048) -> np.ndarray:
    """``(len,)`` number of edges of each structure's radius graph (for edge budgets).

    One pass over the positions, in chunks of ``chunk`` structures.

    Example:
        >>> import numpy as np
        >>> from eqscale.data import Dataset, Part, edge_counts
        >>> part = Part(numbers=np.ones(3, int), positions=np.array([[0, 0, 0], [0, 0, 0.74], [5, 5, 5.0]]),
        ...             forces=np.zeros((3, 3)), energy=np.zeros(2), offsets=np.array([0, 2, 3]))
        >>> edge_counts(Dataset([part]), cutoff=1.0).tolist()
        [2, 0]
    """
    counts = np.zeros(len(dataset), dtype=np.int64)
    for start in range(0, len(dataset), chunk):
        stop = min(start + chunk, len(dataset))
        batch = collate([dataset[i] for i in range(start, stop)], cutoff, torch.float64)
        counts[start:stop] = torch.bincount(batch.batch[batch.edge_index[1]], minlength=stop - start).numpy()
    return counts


def pack(
    order: np.ndarray,
    num_atoms: np.ndarray,
    num_edges: np.ndarray | None = None,
    batch_size: int | None = None,
    max_atoms: int | None = None,
    max_edges: int | None = None,
) -> Iterator[np.ndarray]:
    """Cuts ``order`` into consecutive batches within the limits (greedy, order kept).

    A structure that alone exceeds a budget gets a batch of its own.

    Example:
        >>> import numpy as np
        >>> [b.tolist() for b in pack(np.arange(4), np.array([3, 3, 5, 1]), max_atoms=6)]
        [[0, 1], [2, 3]]
    """
    current: list[int] = []
    atoms = edges = 0
    for index in order:
        index = int(index)
        new_atoms, new_edges = int(num_atoms[index]), int(num_edges[index]) if num_edges is not None else 0
        full = (
            (batch_size is not None and len(current) >= batch_size)
            or (max_atoms is not None and atoms + new_atoms > max_atoms)
            or (max_edges is not None and edges + new_edges > max_edges)
        )
        if current and full:
            yield np.array(current, dtype=np.int64)
            current, atoms, edges = [], 0, 0
        current.append(index)
        atoms += new_atoms
        edges += new_edges
    if current:
        yield np.array(current, dtype=np.int64)


def _positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _worker_init(worker_id: int) -> None:
    # The workers are the parallelism; one thread each for the radius graph.
    torch.set_num_threads(1)


class DataLoader:
    """Deterministic, resumable batches of a :class:`~eqscale.data.Dataset`, graphs built on the fly.

    Batches hold ``batch_size`` structures, or as many as fit a budget of atoms and/or edges. The
    order of epoch ``e`` is a function of ``(seed, e)``; ``state_dict()`` records the epoch and the
    number of batches yielded, and ``load_state_dict`` continues from there.

    ``streaming=True`` is for sets larger than memory: one epoch, read shard by shard (a seeded
    shard order, structures shuffled within windows of ``window`` shards) so that memory-mapped
    shards are read sequentially instead of at random.

    Args:
        dataset: the structures.
        cutoff: radius of the graph (Å).
        batch_size: structures per batch (maximum, when combined with budgets).
        max_atoms: atom budget per batch.
        max_edges: edge budget per batch (costs one pass over the positions to count edges).
        shuffle: shuffle (seeded); ``False`` keeps the dataset order.
        seed: seed of the order.
        streaming: single-epoch, shard-sequential mode.
        window: shards shuffled together in streaming mode.
        num_workers: worker processes building batches (``torch.utils.data.DataLoader``).
        drop_last: drop the last batch of an epoch if it has fewer than ``batch_size`` structures
            (with budgets alone: always drop the last batch, the leftover).
        dtype: floating dtype of positions, cells and forces (energies are float64).
        pin_memory: pin batches (for fast copies to a GPU).
        max_num_neighbors: passed to :func:`eqscale.ops.radius_graph`.

    Example:
        >>> from eqscale.data import DataLoader, open_dataset
        >>> train = open_dataset("qm9-xtb", split="train")  # doctest: +SKIP
        >>> loader = DataLoader(train, cutoff=5.0, max_atoms=2048, seed=0)  # doctest: +SKIP
        >>> for batch in loader:  # doctest: +SKIP
        ...     energy = model(batch.pos, batch.Z, batch.edge_index, batch.shifts, batch.batch)
        >>> state = loader.state_dict()  # saved with a checkpoint  # doctest: +SKIP
        >>> loader.load_state_dict(state)  # continues after the last batch yielded  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Dataset,
        cutoff: float,
        *,
        batch_size: int | None = None,
        max_atoms: int | None = None,
        max_edges: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        streaming: bool = False,
        window: int = 4,
        num_workers: int = 0,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        pin_memory: bool = False,
        max_num_neighbors: int | None = None,
    ) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be an eqscale.data.Dataset, got {type(dataset).__name__}")
        if not (isinstance(cutoff, int | float) and cutoff > 0):
            raise ValueError(f"cutoff must be a positive number, got {cutoff!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("max_atoms", max_atoms),
            ("max_edges", max_edges),
            ("window", window),
        ):
            _positive(name, value)
        if batch_size is None and max_atoms is None and max_edges is None:
            raise ValueError("give batch_size, max_atoms or max_edges (or several)")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.dataset, self.cutoff = dataset, float(cutoff)
        self.batch_size, self.max_atoms, self.max_edges = batch_size, max_atoms, max_edges
        self.shuffle, self.seed, self.streaming, self.window = shuffle, seed, streaming, window
        self.num_workers, self.drop_last, self.dtype, self.pin_memory = num_workers, drop_last, dtype, pin_memory
        self.max_num_neighbors = max_num_neighbors
        self._epoch, self._position, self._finished = 0, 0, False
        self._num_edges: np.ndarray | None = None
        self._lengths: dict[int, int] = {}

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its first batch."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch, self._position, self._finished = epoch, 0, False

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Dataset positions in the order of ``epoch`` (default: the current one)."""
        epoch = self._epoch if epoch is None else epoch
        size = len(self.dataset)
        if not self.shuffle:
            return np.arange(size, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        if not self.streaming:
            return rng.permutation(size)
        part_of = self.dataset.part_of
        parts = rng.permutation(np.unique(part_of))
        pieces = []
        for start in range(0, len(parts), self.window):
            members = np.flatnonzero(np.isin(part_of, parts[start : start + self.window]))
            pieces.append(rng.permutation(members))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def _edges(self) -> np.ndarray | None:
        if self.max_edges is None:
            return None
        if self._num_edges is None:
            self._num_edges = edge_counts(self.dataset, self.cutoff)
        return self._num_edges

    def _batches(self, epoch: int) -> Iterator[np.ndarray]:
        batches = pack(
            self.order(epoch), self.dataset.num_atoms, self._edges(), self.batch_size, self.max_atoms, self.max_edges
        )
        if not self.drop_last:
            yield from batches
            return
        previous = None
        for batch in batches:
            if previous is not None:
                yield previous
            previous = batch
        if previous is not None and self.batch_size is not None and len(previous) == self.batch_size:
            yield previous

    def __len__(self) -> int:
        """Batches in the current epoch (all of it, including those already yielded)."""
        if self._epoch not in self._lengths:
            self._lengths = {self._epoch: sum(1 for _ in self._batches(self._epoch))}
        return self._lengths[self._epoch]

    def __iter__(self) -> Iterator[Any]:
        if self.streaming and self._finished:
            return
        epoch = self._epoch
        batches = itertools.islice(self._batches(epoch), self._position, None)
        make = functools.partial(
            collate, cutoff=self.cutoff, dtype=self.dtype, max_num_neighbors=self.max_num_neighbors
        )
        if self.num_workers == 0:
            stream: Any = (make([self.dataset[int(i)] for i in indices]) for indices in batches)
            if self.pin_memory:
                stream = (batch.pin_memory() for batch in stream)
        else:
            stream = torch.utils.data.DataLoader(
                self.dataset,  # type: ignore[arg-type]
                batch_sampler=[indices.tolist() for indices in batches],
                collate_fn=make,
                num_workers=self.num_workers,
                worker_init_fn=_worker_init,
                pin_memory=self.pin_memory,
            )
        for batch in stream:
            self._position += 1
            yield batch
        if self.streaming:
            self._finished = True
        else:
            self._epoch, self._position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: epoch, batches yielded in it, seed (to check on resume)."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed, "finished": self._finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a :meth:`state_dict`.

        Raises:
            ValueError: the state was saved with another seed.
        """
        if state.get("seed") != self.seed:
            raise ValueError(f"state was saved with seed={state.get('seed')!r}, this loader has seed={self.seed}")
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._finished = bool(state.get("finished", False))
