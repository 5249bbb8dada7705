"""radius_graph, edge_vectors, edge_triplets, edge_quadruplets.

Oracles: ASE's ``primitive_neighbor_list`` and an independent brute force over every periodic
image within a bound from the cell's smallest singular value (numpy, float64). Fused backends
must also equal the reference bit for bit (edges, order and shifts).
"""

import warnings

import numpy as np
import pytest
import torch

from eqscale.ops import edge_quadruplets, edge_triplets, edge_vectors, radius_graph
from eqscale.ops.radius_graph import TruncatedNeighborsWarning

ase_neighborlist = pytest.importorskip("ase.neighborlist")


def _run(backend, *args, **kwargs):
    return radius_graph(*args, backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Oracles and random systems
# ---------------------------------------------------------------------------------------------


def _oracle(pos, cutoff, cell=None, pbc=(False, False, False), self_interaction=False):
    """Set of (src, dst, S) with |pos[dst] - pos[src] + S @ cell| < cutoff, by brute force."""
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    pbc = np.asarray(pbc, dtype=bool)
    if n == 0:
        return set()
    if pbc.any():
        periodic = np.asarray(cell, dtype=np.float64)[pbc]
        sigma = np.linalg.svd(periodic, compute_uv=False).min()
        spread = np.linalg.norm(pos.max(0) - pos.min(0))
        reach = int(np.floor((cutoff + spread) / sigma)) + 1
    else:
        reach = 0
    ranges = [np.arange(-reach, reach + 1) if p else np.zeros(1, dtype=int) for p in pbc]
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
    offsets = images @ np.asarray(cell if cell is not None else np.zeros((3, 3)), dtype=np.float64)
    vec = pos[None, :, None, :] - pos[:, None, None, :] + offsets[None, None]  # (src, dst, image, 3)
    dist = np.linalg.norm(vec, axis=-1)
    src, dst, img = np.nonzero(dist < cutoff)
    edges = {(int(s), int(d), tuple(int(v) for v in images[k])) for s, d, k in zip(src, dst, img, strict=True)}
    if not self_interaction:
        edges = {e for e in edges if not (e[0] == e[1] and e[2] == (0, 0, 0))}
    else:
        edges |= {(i, i, (0, 0, 0)) for i in range(n)}
    return edges


def _ase(pos, cutoff, cell, pbc, self_interaction=False):
    i, j, shifts = ase_neighborlist.primitive_neighbor_list(
        "ijS", np.asarray(pbc), np.asarray(cell), np.asarray(pos), cutoff, self_interaction=self_interaction
    )
    return {(int(a), int(b), tuple(int(v) for v in s)) for a, b, s in zip(i, j, shifts, strict=True)}


def _edges(edge_index, shifts, offset=0):
    return {
        (s - offset, d - offset, tuple(v))
        for s, d, v in zip(edge_index[0].tolist(), edge_index[1].tolist(), shifts.tolist(), strict=True)
    }


def _random_system(rng, kind):
    """(pos, cell, pbc, cutoff): triclinic and skewed, tiny, mixed PBC, positions unwrapped."""
    n = int(rng.integers(1, 9 if kind == "tiny" else 13))
    if kind == "tiny":
        lengths = rng.uniform(0.8, 1.6, 3)
        cutoff = float(rng.uniform(2.2, 3.5))  # more than twice the cell
    else:
        lengths = rng.uniform(2.0, 5.0, 3)
        cutoff = float(rng.uniform(1.0, 4.0))
    while True:
        cell = np.diag(lengths) + np.triu(rng.uniform(-0.6, 0.6, (3, 3)), 1) * lengths[:, None]
        cell = cell @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # rotated: not upper triangular
        if np.linalg.cond(cell) < 6:
            break
    pbc = np.ones(3, dtype=bool) if kind in ("tiny", "periodic") else rng.random(3) < 0.5
    frac = rng.uniform(-1.0, 2.0, (n, 3))  # unwrapped, up to a cell outside
    return frac @ cell, cell, pbc, cutoff


SYSTEMS = [(seed, kind) for seed in range(4) for kind in ("periodic", "tiny", "mixed")]


# ---------------------------------------------------------------------------------------------
# Against the oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "kind"), SYSTEMS)
def test_matches_ase_and_brute_force(backend, seed, kind):
    rng = np.random.default_rng(seed)
    pos, cell, pbc, cutoff = _random_system(rng, kind)
    edge_index, shifts = _run(backend, torch.tensor(pos), cutoff, cell=torch.tensor(cell), pbc=torch.tensor(pbc))
    ours = _edges(edge_index, shifts)
    assert ours == _oracle(pos, cutoff, cell, pbc)
    assert ours == _ase(pos, cutoff, cell, pbc)
    assert len(ours) == edge_index.shape[1]

    # Vectors: the documented formula, equal to ASE's D.
    vectors, distances = edge_vectors(torch.tensor(pos), edge_index, shifts, torch.tensor(cell))
    i, j, shift_ase, d_ase = ase_neighborlist.primitive_neighbor_list("ijSD", pbc, cell, pos, cutoff)
    order = np.lexsort((shift_ase[:, 2], shift_ase[:, 1], shift_ase[:, 0], i, j))
    ours_order = np.lexsort(
        (shifts[:, 2].numpy(), shifts[:, 1].numpy(), shifts[:, 0].numpy(), edge_index[0].numpy(), edge_index[1].numpy())
    )
    np.testing.assert_allclose(vectors.numpy()[ours_order], d_ase[order], atol=1e-10)
    assert bool((distances < cutoff).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_reference_bitwise(fused_backend, dtype):
    rng = np.random.default_rng(7)
    cell = np.array([[6.0, 0.4, -0.3], [1.1, 5.5, 0.2], [-0.8, 0.9, 5.8]])
    pos = torch.tensor(rng.uniform(-0.5, 1.5, (150, 3)) @ cell, dtype=dtype)
    batch = torch.tensor(np.sort(rng.integers(0, 3, 150)))
    cells = torch.tensor(np.stack([cell, 0.7 * cell, 1.3 * cell]))
    pbc = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    for options in ({}, {"self_interaction": True}, {"half": True}, {"max_num_neighbors": 9}):
        kwargs = dict(batch=batch, cell=cells, pbc=pbc, return_num_neighbors=True, **options)
        expected = radius_graph(pos, 3.1, backend="reference", **kwargs)
        actual = _run(fused_backend, pos, 3.1, **kwargs)
        for a, e in zip(actual, expected, strict=True):
            assert a.dtype == torch.int64
            assert torch.equal(a, e), options


def test_batched_molecules_match_per_system(backend):
    rng = np.random.default_rng(3)
    sizes = [int(rng.integers(0, 15)) for _ in range(40)] + [0, 1, 0]  # empty systems and a single atom
    pos = np.concatenate([rng.normal(scale=1.5, size=(n, 3)) + 100 * k for k, n in enumerate(sizes)])
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    edge_index, shifts = _run(backend, torch.tensor(pos), 2.5, batch=batch)
    assert not shifts.any()
    expected, start = set(), 0
    for n in sizes:
        expected |= {(s + start, d + start, S) for s, d, S in _oracle(pos[start : start + n], 2.5)}
        start += n
    assert _edges(edge_index, shifts) == expected
    assert bool((batch[edge_index[0]] == batch[edge_index[1]]).all())


def test_batched_periodic_per_system_cells(backend):
    rng = np.random.default_rng(11)
    systems = [_random_system(rng, kind) for kind in ("periodic", "tiny", "mixed", "mixed", "periodic")]
    cutoff = 2.4
    pos = np.concatenate([s[0] for s in systems])
    batch = torch.repeat_interleave(torch.arange(len(systems)), torch.tensor([len(s[0]) for s in systems]))
    cells = torch.tensor(np.stack([s[1] for s in systems]))
    pbc = torch.tensor(np.stack([s[2] for s in systems]))
    edge_index, shifts = _run(backend, torch.tensor(pos), cutoff, batch=batch, cell=cells, pbc=pbc)
    expected, start = set(), 0
    for p, c, b, _ in systems:
        expected |= {(s + start, d + start, S) for s, d, S in _ase(p, cutoff, c, b)}
        start += len(p)
    assert _edges(edge_index, shifts) == expected
    vectors, distances = edge_vectors(torch.tensor(pos), edge_index, shifts, cells, batch)
    assert bool((distances < cutoff).all())


# ---------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------


def _key(edge_index, shifts):
    return list(zip(edge_index[1].tolist(), edge_index[0].tolist(), map(tuple, shifts.tolist()), strict=True))


def test_sorted_unique_int64(backend):
    rng = np.random.default_rng(5)
    pos, cell, pbc, cutoff = _random_system(rng, "tiny")
    edge_index, shifts = _run(backend, torch.tensor(pos), cutoff, cell=torch.tensor(cell))
    assert edge_index.dtype == shifts.dtype == torch.int64
    assert edge_index.shape == (2, shifts.shape[0]) and shifts.shape[1] == 3
    keys = _key(edge_index, shifts)
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_direction_and_strict_cutoff(backend):
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    edge_index, shifts = _run(backend, pos, 2.0)  # 1 -> 2 is exactly 2.0: excluded
    assert edge_index.tolist() == [[1, 0], [0, 1]]
    vectors, _ = edge_vectors(pos, edge_index, shifts)
    # vec = pos[receiver] - pos[sender]: from the sender to the receiver.
    assert vectors.tolist() == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_self_interaction(backend):
    pos = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    edge_index, shifts = _run(backend, pos, 1.0, self_interaction=True)
    assert edge_index.tolist() == [[0, 1], [0, 1]]
    cell = 0.9 * torch.eye(3)  # one atom: its own images are ordinary edges
    edge_index, shifts = _run(backend, pos[:1], 1.0, cell=cell)
    assert sorted(map(tuple, shifts.tolist())) == [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    edge_index, shifts = _run(backend, pos[:1], 1.0, cell=cell, self_interaction=True)
    assert shifts.shape[0] == 7 and (0, 0, 0) in map(tuple, shifts.tolist())


def test_half(backend):
    rng = np.random.default_rng(2)
    pos, cell, pbc, cutoff = _random_system(rng, "tiny")
    full = set(_key(*_run(backend, torch.tensor(pos), cutoff, cell=torch.tensor(cell))))
    edge_index, shifts = _run(backend, torch.tensor(pos), cutoff, cell=torch.tensor(cell), half=True)
    half = _key(edge_index, shifts)
    assert half == sorted(half)
    reverse = {(s, r, tuple(-v for v in S)) for r, s, S in half}
    assert set(half) | reverse == full and not set(half) & reverse
    for receiver, sender, shift in half:
        assert sender < receiver or (sender == receiver and shift > (0, 0, 0))


def test_max_num_neighbors_nearest_with_tie_rule(backend):
    # Simple cubic, spacing 2: six neighbours at exactly 2.0 and twelve at 2.83.
    grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos, cell = 2.0 * grid, 6.0 * torch.eye(3, dtype=torch.float64)
    pos = pos.double()
    full, full_shifts, counts = _run(backend, pos, 2.9, cell=cell, return_num_neighbors=True)
    assert bool((counts == 18).all())
    with pytest.warns(TruncatedNeighborsWarning, match="dropped"):
        edge_index, shifts = _run(backend, pos, 2.9, cell=cell, max_num_neighbors=4)
    # Expected: per receiver, the 4 nearest by (distance, sender, shift), then sorted.
    _, distances = edge_vectors(pos, full, full_shifts, cell)
    expected = []
    for receiver in range(27):
        mine = [
            (round(float(d), 9), int(s), tuple(S))
            for r, s, S, d in zip(full[1].tolist(), full[0].tolist(), full_shifts.tolist(), distances, strict=True)
            if r == receiver
        ]
        expected += sorted((receiver, s, S) for _, s, S in sorted(mine)[:4])
    assert _key(edge_index, shifts) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        *_, counts = _run(backend, pos, 2.9, cell=cell, max_num_neighbors=4, return_num_neighbors=True)
    assert bool((counts == 18).all())


def test_unwrapped_positions_shift_the_shifts(backend):
    rng = np.random.default_rng(4)
    pos, cell, pbc, cutoff = _random_system(rng, "periodic")
    pos, cell = torch.tensor(pos), torch.tensor(cell)
    edge_index, shifts = _run(backend, pos, cutoff, cell=cell)
    moved = pos.clone()
    moved[0] += torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64) @ cell
    edge_index2, shifts2 = _run(backend, moved, cutoff, cell=cell)
    assert torch.equal(edge_index, edge_index2)
    v1, _ = edge_vectors(pos, edge_index, shifts, cell)
    v2, _ = edge_vectors(moved, edge_index2, shifts2, cell)
    torch.testing.assert_close(v1, v2, rtol=0, atol=1e-10)


def test_positions_far_outside_the_cell(backend):
    # Wraps of 10^6 cells: shifts no longer pack into 63 bits, the C++ takes its general path.
    rng = np.random.default_rng(6)
    pos, cell, pbc, cutoff = _random_system(rng, "periodic")
    wraps = rng.integers(-(10**6), 10**6, size=(len(pos), 3))
    near = radius_graph(torch.tensor(pos), cutoff, cell=torch.tensor(cell), backend="reference")
    edge_index, shifts = _run(backend, torch.tensor(pos + wraps @ cell), cutoff, cell=torch.tensor(cell))
    assert torch.equal(edge_index, near[0])
    wraps = torch.tensor(wraps)
    assert torch.equal(shifts, near[1] - (wraps[edge_index[1]] - wraps[edge_index[0]]))


def test_vacuum_box_and_spread_out_atoms(backend):
    # Atoms 10^4 A apart in a 10^4 A non-periodic box, and a slab periodic along x only.
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [9999.0, 5000.0, 1.0], [9999.5, 5000.0, 1.0]])
    cell = 1e4 * torch.eye(3, dtype=torch.float64)
    edge_index, _ = _run(backend, pos.double(), 1.5, cell=cell, pbc=False)
    assert edge_index.tolist() == [[1, 0, 3, 2], [0, 1, 2, 3]]
    cell = torch.tensor([[2.5, 0.0, 0.0], [0.0, 1e4, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    pbc = torch.tensor([True, False, False])
    edge_index, shifts = _run(backend, pos.double(), 1.5, cell=cell, pbc=pbc)
    assert _edges(edge_index, shifts) == _oracle(pos.numpy(), 1.5, cell.numpy(), pbc.numpy())


def test_empty_and_single_atom(backend):
    for n in (0, 1):
        edge_index, shifts = _run(backend, torch.zeros(n, 3), 2.0)
        assert edge_index.shape == (2, 0) and shifts.shape == (0, 3)
    edge_index, shifts, counts = _run(backend, torch.zeros(0, 3), 2.0, cell=torch.eye(3), return_num_neighbors=True)
    assert counts.shape == (0,)


def test_float32_matches_float64_sets(backend):
    rng = np.random.default_rng(9)
    pos, cell, pbc, cutoff = _random_system(rng, "mixed")
    e64 = _edges(*_run(backend, torch.tensor(pos), cutoff, cell=torch.tensor(cell), pbc=torch.tensor(pbc)))
    pos32 = torch.tensor(pos, dtype=torch.float32)
    e32 = _edges(*_run(backend, pos32, cutoff, cell=torch.tensor(cell), pbc=torch.tensor(pbc)))
    assert e32 == e64


def test_thread_count_does_not_change_output(cpu_extension):
    rng = np.random.default_rng(1)
    pos = torch.tensor(rng.uniform(0, 12, (600, 3)))
    cell = 12.0 * torch.eye(3, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = radius_graph(pos, 3.0, cell=cell, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = radius_graph(pos, 3.0, cell=cell, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


# ---------------------------------------------------------------------------------------------
# Differentiable vectors
# ---------------------------------------------------------------------------------------------


def test_edge_vectors_gradcheck():
    cell = torch.tensor([[2.0, 0.3, -0.2], [0.1, 2.2, 0.3], [0.2, -0.1, 2.4]], dtype=torch.float64)
    pos = torch.tensor([[0.1, 0.2, 0.3], [1.2, 0.9, 1.1], [0.5, 1.7, 2.0], [1.8, 1.9, 0.4]], dtype=torch.float64)
    cutoff = 1.6
    edge_index, shifts = radius_graph(pos, cutoff, cell=cell, backend="reference")
    assert 10 < edge_index.shape[1] < 60 and shifts.any()
    pos.requires_grad_(True)
    cell.requires_grad_(True)

    def distances(p, c):
        return edge_vectors(p, edge_index, shifts, c)[1]

    assert torch.autograd.gradcheck(distances, (pos, cell))
    assert torch.autograd.gradgradcheck(distances, (pos, cell))

    # Batched cells.
    batch = torch.tensor([0, 0, 1, 1])
    cells = torch.stack([cell.detach(), 1.1 * cell.detach()]).requires_grad_(True)
    edge_index, shifts = radius_graph(pos.detach(), cutoff, batch=batch, cell=cells.detach(), backend="reference")
    assert torch.autograd.gradcheck(lambda p, c: edge_vectors(p, edge_index, shifts, c, batch)[1], (pos, cells))


def test_edge_vectors_self_edge_has_zero_gradient():
    pos = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    edge_index, shifts = radius_graph(pos.detach(), 1.0, self_interaction=True)
    _, distances = edge_vectors(pos, edge_index, shifts)
    (grad,) = torch.autograd.grad(distances.sum(), pos)
    assert torch.equal(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cutoff": -1.0}, ValueError, "cutoff"),
        ({"cutoff": 0.0}, ValueError, "cutoff"),
        ({"cutoff": float("nan")}, ValueError, "cutoff"),
        ({"cutoff": "3"}, TypeError, "cutoff"),
        ({"pos": torch.tensor([[0.0, float("nan"), 0.0]])}, ValueError, "NaN"),
        ({"pos": torch.zeros(4, 2)}, ValueError, r"pos must have shape \(N, 3\)"),
        ({"pos": torch.zeros(4, 3, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"pos": [[0.0, 0.0, 0.0]]}, TypeError, "pos"),
        ({"batch": torch.tensor([1, 0, 0, 1])}, ValueError, "sorted"),
        ({"batch": torch.tensor([0, 0, 1])}, ValueError, "batch must have shape"),
        ({"batch": torch.tensor([-1, 0, 0, 0])}, ValueError, "non-negative"),
        ({"batch": torch.zeros(4)}, TypeError, "batch"),
        ({"cell": torch.zeros(3, 3)}, ValueError, "singular"),
        ({"cell": torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])}, ValueError, "singular"),
        ({"cell": torch.eye(2)}, ValueError, "cell must have shape"),
        ({"cell": torch.eye(3).expand(2, 3, 3), "batch": torch.tensor([0, 1, 2, 2])}, ValueError, "3 systems"),
        ({"cell": torch.eye(3) * float("inf")}, ValueError, "cell contains"),
        ({"pbc": True}, ValueError, "no cell"),
        ({"cell": torch.eye(3), "pbc": torch.ones(2, 3, dtype=torch.bool)}, ValueError, "pbc must"),
        ({"half": True, "max_num_neighbors": 3}, ValueError, "half"),
        ({"max_num_neighbors": -1}, ValueError, "max_num_neighbors"),
        ({"max_num_neighbors": 2.5}, TypeError, "max_num_neighbors"),
        ({"self_interaction": 1}, TypeError, "self_interaction"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, error, match):
    arguments = {"pos": torch.rand(4, 3), "cutoff": 1.0, **kwargs}
    pos, cutoff = arguments.pop("pos"), arguments.pop("cutoff")
    with pytest.raises(error, match=match):
        radius_graph(pos, cutoff, **arguments)


def test_singular_along_non_periodic_axis_is_fine(backend):
    # A zero (or any) cell vector on a non-periodic axis is ignored.
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    edge_index, shifts = _run(backend, pos, 1.5, cell=cell, pbc=[True, True, False])
    assert edge_index.tolist() == [[1, 0], [0, 1]]


def test_edge_vectors_bad_input():
    pos = torch.rand(3, 3)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="cell is required"):
        edge_vectors(pos, edge_index, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="shifts must have shape"):
        edge_vectors(pos, edge_index, torch.zeros(3, 3), torch.eye(3))
    with pytest.raises(ValueError, match="batch is required"):
        edge_vectors(pos, edge_index, torch.zeros(2, 3), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(TypeError, match="edge_index"):
        edge_vectors(pos, edge_index.float())


# ---------------------------------------------------------------------------------------------
# Triplets and quadruplets
# ---------------------------------------------------------------------------------------------


def _small_periodic_graph():
    rng = np.random.default_rng(8)
    cell = np.array([[2.2, 0.3, 0.0], [0.0, 2.4, 0.2], [0.1, 0.0, 2.6]])
    pos = rng.uniform(0, 1, (3, 3)) @ cell
    return radius_graph(torch.tensor(pos), 2.6, cell=torch.tensor(cell), backend="reference"), 3


def test_edge_triplets_brute_force():
    (edge_index, shifts), n = _small_periodic_graph()
    e_in, e_out = edge_triplets(edge_index, n, shifts)
    src, dst, S = edge_index[0].tolist(), edge_index[1].tolist(), [tuple(s) for s in shifts.tolist()]
    expected = [
        (a, b)
        for b in range(len(src))
        for a in range(len(src))
        if dst[a] == src[b] and not (src[a] == dst[b] and S[a] == tuple(-v for v in S[b]))
    ]
    assert list(zip(e_in.tolist(), e_out.tolist(), strict=True)) == expected
    # Without shifts, every k == i is dropped.
    e_in, e_out = edge_triplets(edge_index, n)
    assert all(src[a] != dst[b] and dst[a] == src[b] for a, b in zip(e_in.tolist(), e_out.tolist(), strict=True))


def test_edge_quadruplets_brute_force():
    (edge_index, shifts), n = _small_periodic_graph()
    src, dst, S = edge_index[0].tolist(), edge_index[1].tolist(), [tuple(s) for s in shifts.tolist()]
    E = len(src)

    def back(a, b):
        return src[a] == dst[b] and S[a] == tuple(-v for v in S[b])

    expected = [
        (a, b, c)
        for c in range(E)
        for b in range(E)
        if dst[b] == src[c] and not back(b, c)
        for a in range(E)
        if dst[a] == src[b]
        and not back(a, b)
        and not (src[a] == dst[c] and all(S[a][k] + S[b][k] + S[c][k] == 0 for k in range(3)))
    ]
    e_lk, e_kj, e_ji = edge_quadruplets(edge_index, n, shifts)
    assert list(zip(e_lk.tolist(), e_kj.tolist(), e_ji.tolist(), strict=True)) == expected


def test_triplets_bad_input():
    with pytest.raises(ValueError, match="num_nodes"):
        edge_triplets(torch.tensor([[0], [5]]), 3)
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        edge_triplets(torch.tensor([0, 1]), 3)


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


def test_cpu_op_registration(cpu_extension):
    pos = torch.rand(20, 3, dtype=torch.float64) * 4
    args = (pos, torch.zeros(20, dtype=torch.int64), 4 * torch.eye(3, dtype=torch.float64)[None],
            torch.ones(1, 3, dtype=torch.bool), 1.5, False, -1, False)
    torch.library.opcheck(
        torch.ops.eqscale.radius_graph.default, args, test_utils=("test_schema", "test_faketensor")
    )


# ---------------------------------------------------------------------------------------------
# Triton backend: brute force for small systems, cell list for large ones, in one launch
# ---------------------------------------------------------------------------------------------


# The conftest's backend fixture, on Triton only: skips (or fails, when CI requires Triton) where
# it cannot run.
triton_only = pytest.mark.parametrize("backend", ["triton"], indirect=True)


def _triton_modules():
    from eqscale._kernels import import_kernels  # noqa: PLC0415 - needs Triton
    from eqscale.ops.radius_graph import triton as triton_backend  # noqa: PLC0415

    return import_kernels("radius_graph"), triton_backend


def _mixed_batch(rng):
    """Empty systems, single atoms, a tiny skewed cell, a molecule, a periodic box and a slab."""
    skewed = np.array([[1.1, 0.0, 0.0], [0.9, 0.6, 0.0], [0.7, 0.4, 0.8]])
    box = np.array([[7.0, 0.5, -0.3], [0.6, 6.5, 0.4], [-0.5, 0.3, 7.2]])
    slab = np.array([[5.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.0, 0.0, 0.0]])
    slab_frac = np.concatenate([rng.uniform(0, 1, (30, 2)), rng.normal(scale=1.0, size=(30, 1))], 1)
    systems = [
        (np.zeros((0, 3)), np.eye(3), [True, True, True]),  # empty
        (np.array([[0.2, 0.1, 0.3]]), skewed, [True, True, True]),  # one atom, many images
        (np.array([[5.0, 5.0, 5.0]]), np.zeros((3, 3)), [False, False, False]),  # one atom, alone
        (rng.normal(scale=2.0, size=(14, 3)), np.zeros((3, 3)), [False, False, False]),  # molecule
        (rng.uniform(-0.5, 1.5, (40, 3)) @ box, box, [True, True, True]),  # unwrapped positions
        (slab_frac @ (slab + np.diag([0, 0, 1.0])), slab, [True, True, False]),  # slab
        (np.zeros((0, 3)), np.eye(3), [False, True, False]),  # empty
    ]
    pos = torch.tensor(np.concatenate([p for p, _, _ in systems]))
    batch = torch.repeat_interleave(torch.arange(len(systems)), torch.tensor([len(p) for p, _, _ in systems]))
    cells = torch.tensor(np.stack([c for _, c, _ in systems]))
    pbc = torch.tensor([b for _, _, b in systems])
    return pos, batch, cells, pbc


def _spy_on_binning(monkeypatch, triton_backend) -> list:
    """Records the binning of every Triton radius_graph call."""
    binnings = []
    original = triton_backend._bin

    def spy(*args):
        binnings.append(original(*args))
        return binnings[-1]

    monkeypatch.setattr(triton_backend, "_bin", spy)
    return binnings


@triton_only
@pytest.mark.parametrize("small_system_atoms", [0, 10**9], ids=["cell-lists", "brute-force"])
def test_triton_search_paths_equal_reference(backend, monkeypatch, small_system_atoms):
    kernels, triton_backend = _triton_modules()
    monkeypatch.setattr(kernels, "SMALL_SYSTEM_ATOMS", small_system_atoms)
    binnings = _spy_on_binning(monkeypatch, triton_backend)
    pos, batch, cells, pbc = _mixed_batch(np.random.default_rng(12))
    for options in ({}, {"self_interaction": True}, {"half": True}, {"max_num_neighbors": 5}):
        kwargs = dict(batch=batch, cell=cells, pbc=pbc, return_num_neighbors=True, **options)
        expected = radius_graph(pos, 2.3, backend="reference", **kwargs)
        actual = radius_graph(pos, 2.3, backend=backend, **kwargs)
        for a, e in zip(actual, expected, strict=True):
            assert torch.equal(a, e), options
    bins_per_system = binnings[-1].bins.prod(dim=1).tolist()
    if small_system_atoms == 0:
        # The molecule, the box and the slab are binned; one atom or a tiny cell is one bin.
        assert bins_per_system[1] == bins_per_system[2] == 1
        assert all(count > 1 for count in bins_per_system[3:6]), bins_per_system
    else:
        assert set(bins_per_system) == {1}


@triton_only
def test_triton_large_system_takes_the_cell_list(backend, monkeypatch):
    # Above SMALL_SYSTEM_ATOMS at the default threshold: a real cell list with many bins, next
    # to a batch of small molecules searched by brute force in the same launch.
    kernels, triton_backend = _triton_modules()
    binnings = _spy_on_binning(monkeypatch, triton_backend)
    rng = np.random.default_rng(13)
    count = kernels.SMALL_SYSTEM_ATOMS + 72
    big = torch.tensor(rng.uniform(0, 12.0, (count, 3)))
    molecules = torch.tensor(rng.normal(scale=1.5, size=(30, 3)))
    pos = torch.cat([big, molecules])
    batch = torch.cat([torch.zeros(count, dtype=torch.int64), torch.repeat_interleave(torch.arange(1, 4), 10)])
    cells = torch.stack([12.0 * torch.eye(3, dtype=torch.float64)] + [torch.zeros(3, 3, dtype=torch.float64)] * 3)
    pbc = torch.tensor([[True, True, True]] + [[False, False, False]] * 3)
    kwargs = dict(batch=batch, cell=cells, pbc=pbc, return_num_neighbors=True)
    expected = radius_graph(pos, 3.0, backend="reference", **kwargs)
    actual = radius_graph(pos, 3.0, backend=backend, **kwargs)
    assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))
    bins = binnings[-1].bins
    assert bins[0].tolist() == [3, 3, 3] and bins[1:].prod(dim=1).tolist() == [1, 1, 1]


@triton_only
def test_triton_empty_systems_and_single_atoms(backend):
    cells = torch.stack([torch.eye(3, dtype=torch.float64)] * 3)
    pbc = torch.tensor([[True, True, True], [False, True, False], [False, False, False]])
    # No atoms at all, in three systems.
    edge_index, shifts, counts = radius_graph(
        torch.zeros(0, 3), 1.5, batch=torch.zeros(0, dtype=torch.int64), cell=cells, pbc=pbc,
        backend=backend, return_num_neighbors=True,
    )
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3) and counts.shape == (0,)
    with pytest.raises(ValueError, match="singular"):
        radius_graph(torch.zeros(0, 3), 1.5, cell=torch.zeros(3, 3), backend=backend)
    # One atom per system (the middle one empty), each alone with its images.
    pos = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    batch = torch.tensor([0, 2])
    for options in ({}, {"self_interaction": True}, {"half": True}):
        kwargs = dict(batch=batch, cell=cells, pbc=pbc, return_num_neighbors=True, **options)
        expected = radius_graph(pos, 1.5, backend="reference", **kwargs)
        actual = radius_graph(pos, 1.5, backend=backend, **kwargs)
        assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True)), options
    assert actual[2].tolist() == [9, 0]  # with half: 18 images of atom 0 in 1.5, one per pair


@triton_only
def test_triton_exact_at_the_cutoff(backend):
    # Pairs at the cutoff and one rounding either side of it, far from the origin and unwrapped
    # by many cells: the float32 search must keep every candidate the float64 test decides.
    cutoff = 1.7
    cell = torch.tensor([[3.4, 0.0, 0.0], [0.0, 3.4, 0.0], [0.0, 0.0, 3.4]], dtype=torch.float64)
    along = torch.tensor([cutoff, np.nextafter(cutoff, 0), np.nextafter(cutoff, 4)], dtype=torch.float64)
    pairs = []
    for k, d in enumerate(along.tolist()):
        start = torch.tensor([0.3 + 0.9 * k, 0.2, 0.1], dtype=torch.float64)
        pairs += [start, start + torch.tensor([d, 0.0, 0.0], dtype=torch.float64)]
    pos = torch.stack(pairs) + torch.tensor([1e4, -3e3, 7e3], dtype=torch.float64) @ cell
    for kwargs in ({"cell": cell}, {}):
        expected = radius_graph(pos, cutoff, backend="reference", return_num_neighbors=True, **kwargs)
        actual = radius_graph(pos, cutoff, backend=backend, return_num_neighbors=True, **kwargs)
        assert all(torch.equal(a, e) for a, e in zip(actual, expected, strict=True))


@triton_only
def test_triton_op_registration(backend):
    pos = torch.rand(12, 3, dtype=torch.float64) * 4
    args = (pos, torch.zeros(12, dtype=torch.int64), 4 * torch.eye(3, dtype=torch.float64)[None],
            torch.ones(1, 3, dtype=torch.bool), 1.5, False, -1, False)
    torch.library.opcheck(
        torch.ops.eqscale.radius_graph_triton.default, args, test_utils=("test_schema", "test_faketensor")
    )
