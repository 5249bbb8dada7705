"""Radius graph: eqscale (C++ cell list on CPU, Triton on GPU) against vesin, matscipy and ASE.

Cases (``quick``: smaller systems):

- ``diamond``: rattled diamond supercell, 13,824 atoms (1,728), periodic, cutoff 3 and 6 Å.
- ``molecules``: 1,000 (200) QM9-sized molecules of ~18 atoms in one batch, cutoff 5 Å, no PBC.
  The anchors have no batched call, so they run once per molecule, as a user would call them.
- ``tiny cell``: 2 atoms in a skewed cell, cutoff 8 Å (hundreds of periodic images).

vesin runs with as many threads as torch (``eqscale bench --threads``); matscipy and ASE are
single-threaded. Every contestant computes ``i, j, S`` (pairs and shifts) and all must find the
same number of pairs, or the run stops. Targets from the issue: ``diamond`` no slower than vesin
at 2 threads and >= 3x matscipy; ``molecules`` >= 3x vesin called per structure. On a GPU
(``torch.cuda.is_available()``), the same cases run on CUDA tensors: eqscale-triton against
vesin's CUDA backend, through ``vesin_torch`` when it is installed, else through ``vesin``'s own
``NeighborList``, which takes torch CUDA tensors directly (vesin >= 0.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from eqscale.benchmarking._harness import Row, fused_devices, time_side_by_side
from eqscale.ops.radius_graph import radius_graph

TARGETS = {("diamond", "vesin"): 1.0, ("diamond", "matscipy"): 3.0, ("molecules", "vesin"): 3.0}


@dataclasses.dataclass
class Case:
    """One input configuration and the contestants that run on it; each returns its pair count."""

    name: str
    kind: str  # "diamond", "molecules" or "tiny cell"
    step: str
    device: torch.device
    contestants: dict[str, Callable[[], int]]  # first entry: eqscale


def diamond(repeats: int, rattle: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions and cell of a rattled cubic diamond supercell of ``8 * repeats**3`` atoms."""
    a = 3.567
    basis = np.array(
        [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0],
         [0.25, 0.25, 0.25], [0.25, 0.75, 0.75], [0.75, 0.25, 0.75], [0.75, 0.75, 0.25]]
    )
    grid = np.stack(np.meshgrid(*[np.arange(repeats)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    positions = a * (grid + basis[None]).reshape(-1, 3)
    positions += np.random.default_rng(seed).normal(scale=rattle, size=positions.shape)
    return positions, a * repeats * np.eye(3)


def molecules(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` compact random molecules of 9-29 atoms (QM9's range, ~18 on average).

    Atoms are placed one by one next to a random earlier atom (1.0-1.6 Å away), rejecting
    clashes closer than 0.9 Å: a connected, molecule-like cloud a few Å across.
    """
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        n = int(np.clip(rng.normal(18, 4), 9, 29))
        atoms = [np.zeros(3)]
        while len(atoms) < n:
            direction = rng.normal(size=3)
            candidate = atoms[rng.integers(len(atoms))] + rng.uniform(1.0, 1.6) * direction / np.linalg.norm(direction)
            if min(np.linalg.norm(candidate - a) for a in atoms) > 0.9:
                atoms.append(candidate)
        result.append(np.array(atoms))
    return result


def _ours(positions, cutoff, backend, device, **kwargs) -> Callable[[], int]:
    pos = torch.as_tensor(positions, dtype=torch.float64, device=device)
    kwargs = {key: torch.as_tensor(value, device=device) for key, value in kwargs.items()}

    def run() -> int:
        edge_index, _ = radius_graph(pos, cutoff, backend=backend, **kwargs)
        return edge_index.shape[1]

    return run


def _vesin_cuda(cutoff: float):
    """A full vesin neighbour list for torch CUDA tensors (its CUDA backend)."""
    try:
        import vesin_torch  # noqa: PLC0415 - optional, benchmark-only

        return vesin_torch.NeighborList(cutoff=cutoff, full_list=True)
    except ImportError:
        import vesin  # noqa: PLC0415

        # vesin's own NeighborList dispatches torch CUDA tensors to its CUDA backend.
        return vesin.NeighborList(cutoff=cutoff, full_list=True)


def _periodic_anchors(positions, cell, cutoff, device, threads) -> dict[str, Callable[[], int]]:
    if device.type == "cuda":
        nl = _vesin_cuda(cutoff)
        points = torch.as_tensor(positions, dtype=torch.float64, device=device)
        box = torch.as_tensor(cell, dtype=torch.float64, device=device)
        return {"vesin-cuda": lambda: len(nl.compute(points, box, True, "ijS")[0])}

    import vesin  # noqa: PLC0415 - benchmark-only dependencies
    from ase.neighborlist import primitive_neighbor_list  # noqa: PLC0415
    from matscipy.neighbours import neighbour_list  # noqa: PLC0415

    nl = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=threads)
    pbc = np.array([True, True, True])
    return {
        "vesin": lambda: len(nl.compute(positions, cell, True, "ijS")[0]),
        "matscipy": lambda: len(neighbour_list("ijS", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)[0]),
        "ase": lambda: len(primitive_neighbor_list("ijS", pbc, cell, positions, cutoff)[0]),
    }


def _molecule_anchors(mols, cutoff, device, threads) -> dict[str, Callable[[], int]]:
    # ASE and matscipy want a non-singular cell even without periodicity. vesin gets the same
    # boxes on a GPU: a zero box is only documented for its CPU path.
    boxed = [(m - m.min(0) + cutoff, np.diag(np.ptp(m, 0) + 2 * cutoff)) for m in mols]
    if device.type == "cuda":
        nl = _vesin_cuda(cutoff)
        tensors = [
            tuple(torch.as_tensor(array, dtype=torch.float64, device=device) for array in pair) for pair in boxed
        ]
        return {"vesin-cuda per molecule": lambda: sum(len(nl.compute(p, c, False, "ijS")[0]) for p, c in tensors)}

    import vesin  # noqa: PLC0415
    from ase.neighborlist import primitive_neighbor_list  # noqa: PLC0415
    from matscipy.neighbours import neighbour_list  # noqa: PLC0415

    nl = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=threads)
    zero, no_pbc = np.zeros((3, 3)), np.array([False, False, False])
    return {
        "vesin per molecule": lambda: sum(len(nl.compute(m, zero, False, "ijS")[0]) for m in mols),
        "matscipy per molecule": lambda: sum(
            len(neighbour_list("ijS", positions=p, cell=c, pbc=no_pbc, cutoff=cutoff)[0]) for p, c in boxed
        ),
        "ase per molecule": lambda: sum(len(primitive_neighbor_list("ijS", no_pbc, c, p, cutoff)[0]) for p, c in boxed),
    }


def cases(quick: bool = False) -> list[Case]:
    """The benchmark cases on every device with a fused backend here."""
    threads = torch.get_num_threads()
    repeats, num_molecules = (6, 200) if quick else (12, 1000)
    positions, cell = diamond(repeats)
    mols = molecules(num_molecules)
    batch = np.repeat(np.arange(len(mols)), [len(m) for m in mols])
    tiny_cell = np.array([[2.2, 0.0, 0.0], [1.9, 1.1, 0.0], [1.4, 0.9, 1.3]])  # strongly sheared
    tiny = np.array([[0.1, 0.2, 0.3], [1.9, 0.8, 0.9]])

    result = []
    for device, backend in fused_devices():
        for cutoff in (3.0, 6.0):
            result.append(
                Case(
                    name=f"diamond N={len(positions)}, cutoff {cutoff:g}, {device.type}",
                    kind="diamond",
                    step="i, j, S",
                    device=device,
                    contestants={
                        f"eqscale-{backend}": _ours(positions, cutoff, backend, device, cell=cell),
                        **_periodic_anchors(positions, cell, cutoff, device, threads),
                    },
                )
            )
        result.append(
            Case(
                name=f"{len(mols)} molecules (N={len(batch)}), cutoff 5, {device.type}",
                kind="molecules",
                step="i, j, S",
                device=device,
                contestants={
                    f"eqscale-{backend}": _ours(np.concatenate(mols), 5.0, backend, device, batch=batch),
                    **_molecule_anchors(mols, 5.0, device, threads),
                },
            )
        )
        result.append(
            Case(
                name=f"2 atoms, skewed cell, cutoff 8, {device.type}",
                kind="tiny cell",
                step="i, j, S",
                device=device,
                contestants={
                    f"eqscale-{backend}": _ours(tiny, 8.0, backend, device, cell=tiny_cell),
                    **_periodic_anchors(tiny, tiny_cell, 8.0, device, threads),
                },
            )
        )
    return result


def run(quick: bool = False) -> list[Row]:
    """Checks that all contestants agree on the pair count, times them side by side, returns rows."""
    rows = []
    for case in cases(quick):
        counts = {name: function() for name, function in case.contestants.items()}
        if len(set(counts.values())) != 1:
            raise AssertionError(f"radius_graph benchmark {case.name!r}: pair counts disagree: {counts}")
        names, functions = list(case.contestants), list(case.contestants.values())
        seconds = time_side_by_side(functions, repeats=3 if quick else 7, warmup=1, device=case.device)
        pairs = next(iter(counts.values()))
        for name, anchor_seconds in zip(names[1:], seconds[1:], strict=True):
            speedup = anchor_seconds / seconds[0]
            anchor = name.split(" ")[0].removesuffix("-cuda")
            target = TARGETS.get((case.kind, anchor)) if case.device.type == "cpu" else None
            note = f"{pairs} pairs, {torch.get_num_threads()} threads"
            if target is not None:
                note += f", target >= {target:g}x: {'met' if speedup >= target else 'MISSED'}"
            rows.append(
                Row(
                    suite="radius_graph",
                    case=case.name,
                    step=case.step,
                    backend=names[0],
                    anchor=name,
                    speedup=speedup,
                    note=note,
                )
            )
    return rows
