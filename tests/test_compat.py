"""Drop-ins: torch_cluster.radius_graph and ASE/matscipy neighbour_list."""

import numpy as np
import pytest
import torch

from eqscale import compat
from eqscale.backends import use_backend

ase = pytest.importorskip("ase")
from ase.neighborlist import neighbor_list as ase_neighbor_list  # noqa: E402

# ---------------------------------------------------------------------------------------------
# torch_cluster.radius_graph
# ---------------------------------------------------------------------------------------------


def _torch_cluster_oracle(x, r, batch, loop, max_num_neighbors):
    """torch_cluster's convention (row = neighbour, col = centre), nearest neighbours kept."""
    n = x.shape[0]
    batch = torch.zeros(n, dtype=torch.long) if batch is None else batch
    dist = torch.cdist(x.double(), x.double())
    rows, cols = [], []
    for centre in range(n):
        candidates = [
            (float(dist[centre, j]), j)
            for j in range(n)
            if batch[j] == batch[centre] and dist[centre, j] < r and (loop or j != centre)
        ]
        kept = sorted(j for _, j in sorted(candidates)[:max_num_neighbors])
        rows += kept
        cols += [centre] * len(kept)
    return torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("max_num_neighbors", [32, 3])
def test_radius_graph_torch_cluster_convention(backend, loop, max_num_neighbors):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=generator) * 3
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([15, 20, 5]))
    with use_backend(backend):
        edge_index = compat.radius_graph(x, 1.2, batch, loop=loop, max_num_neighbors=max_num_neighbors)
        flipped = compat.radius_graph(x, 1.2, batch, loop, max_num_neighbors, flow="target_to_source")
    assert torch.equal(edge_index, _torch_cluster_oracle(x, 1.2, batch, loop, max_num_neighbors))
    assert torch.equal(flipped, edge_index.flip(0))


def test_radius_graph_low_dimensional_points():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    assert compat.radius_graph(x, 1.5).tolist() == [[1, 0], [0, 1]]
    assert compat.radius_graph(torch.tensor([0.0, 1.0, 3.0]), 1.5).tolist() == [[1, 0], [0, 1]]


def test_radius_graph_bad_input():
    with pytest.raises(ValueError, match="flow"):
        compat.radius_graph(torch.rand(3, 3), 1.0, flow="sideways")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        compat.radius_graph(torch.rand(3, 4), 1.0)


# ---------------------------------------------------------------------------------------------
# ASE / matscipy neighbour_list
# ---------------------------------------------------------------------------------------------


def _atoms(seed):
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(2.0, 4.0, 3)) + rng.uniform(-0.8, 0.8, (3, 3))
    pbc = [True, True, True] if seed % 3 == 0 else list(rng.random(3) < 0.5)
    frac = rng.uniform(-0.5, 1.5, (int(rng.integers(1, 12)), 3))
    return ase.Atoms("H" * len(frac), positions=frac @ cell, cell=cell, pbc=pbc)


def _sorted(i, j, S, *rest):
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    return (i[order], j[order], S[order], *(r[order] for r in rest))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("self_interaction", [False, True])
def test_neighbour_list_matches_ase(seed, self_interaction):
    atoms = _atoms(seed)
    cutoff = 2.0 + 0.3 * seed
    ours = compat.neighbour_list("ijSdD", atoms, cutoff, self_interaction=self_interaction)
    theirs = ase_neighbor_list("ijSdD", atoms, cutoff, self_interaction=self_interaction)
    ours, theirs = _sorted(*ours), _sorted(*theirs)
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours[3], theirs[3], atol=1e-10)
    np.testing.assert_allclose(ours[4], theirs[4], atol=1e-10)
    i = compat.neighbour_list("ijSdD", atoms, cutoff, self_interaction=self_interaction)[0]
    assert np.all(np.diff(i) >= 0), "sorted by i"
    assert ours[0].dtype == np.int64 and ours[2].dtype == np.int64 and ours[3].dtype == np.float64


@pytest.mark.parametrize("seed", range(4))
def test_neighbour_list_matches_matscipy(seed):
    matscipy_neighbours = pytest.importorskip("matscipy.neighbours")
    atoms = _atoms(seed)
    atoms.pbc = True  # matscipy wants a periodic or large enough cell
    ours = _sorted(*compat.neighbour_list("ijSd", atoms, 2.5))
    theirs = _sorted(*matscipy_neighbours.neighbour_list("ijSd", atoms, 2.5))
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours[3], theirs[3], atol=1e-10)


def test_neighbour_list_single_quantity_and_errors():
    atoms = _atoms(0)
    d = compat.neighbor_list("d", atoms, 2.0)
    assert isinstance(d, np.ndarray) and d.ndim == 1
    with pytest.raises(TypeError, match="single number"):
        compat.neighbour_list("ij", atoms, {("H", "H"): 1.0})
    with pytest.raises(ValueError, match="quantities"):
        compat.neighbour_list("ijx", atoms, 2.0)
    with pytest.raises(TypeError, match="positions"):
        compat.neighbour_list("ij", object(), 2.0)
