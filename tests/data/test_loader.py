"""Loader: batch contents and graphs, budgets, determinism, resumption, streaming, workers."""

from pathlib import Path

import numpy as np
import pytest
import torch

import eqscale
from eqscale.data import Batch, DataLoader, Dataset, Part, collate, edge_counts, open_dataset, pack

FIXTURE = Path(__file__).parent / "fixtures" / "qm9-xtb-300"
CUTOFF = 4.0


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return open_dataset(FIXTURE)


def indices(batches) -> list[list[int]]:
    return [batch.index.tolist() for batch in batches]


def test_batch_holds_the_structures_and_their_graph(dataset):
    batch = next(iter(DataLoader(dataset, CUTOFF, batch_size=5, seed=0)))
    assert isinstance(batch, Batch) and batch.num_graphs == 5
    assert batch.pos.dtype == torch.float32 and batch.energy.dtype == torch.float64
    assert batch.ptr.tolist() == [0, *np.cumsum(batch.natoms.tolist()).tolist()]
    for position, index in enumerate(batch.index.tolist()):
        structure = dataset[index]
        atoms = slice(int(batch.ptr[position]), int(batch.ptr[position + 1]))
        np.testing.assert_array_equal(batch.Z[atoms].numpy(), structure.numbers)
        np.testing.assert_allclose(batch.pos[atoms].numpy(), structure.positions, rtol=1e-6)
        np.testing.assert_allclose(batch.forces[atoms].numpy(), structure.forces, rtol=1e-5, atol=1e-6)
        assert batch.energy[position].item() == structure.energy
        # The batched graph restricted to this structure is the structure's own radius graph.
        alone, _ = eqscale.ops.radius_graph(torch.from_numpy(structure.positions), CUTOFF)
        mine = (batch.batch[batch.edge_index[1]] == position).nonzero().flatten()
        np.testing.assert_array_equal(batch.edge_index[:, mine].numpy() - atoms.start, alone.numpy())
    vectors, distances = eqscale.ops.edge_vectors(
        batch.pos.double(), batch.edge_index, batch.shifts, batch.cell.double(), batch.batch
    )
    assert distances.max() < CUTOFF and not batch.pbc.any()


def test_periodic_batch_uses_shifts():
    cell = np.diag([3.0, 3.0, 3.0])
    part = Part(
        numbers=np.array([14, 14, 1]),
        positions=np.array([[0.1, 0.1, 0.1], [1.5, 1.5, 1.5], [0.0, 0.0, 0.0]]),
        forces=np.zeros((3, 3)),
        energy=np.array([-1.0, -2.0]),
        offsets=np.array([0, 2, 3]),
        cell=np.stack([cell, np.zeros((3, 3))]),
        pbc=np.array([[True] * 3, [False] * 3]),
    )
    batch = collate(list(Dataset([part])), cutoff=2.9)
    assert batch.pbc[0].all() and not batch.pbc[1].any()
    assert (batch.shifts != 0).any()
    assert not (batch.batch[batch.edge_index[0]] == 1).any()  # a lone atom without periodicity has no edges
    _, distances = eqscale.ops.edge_vectors(
        batch.pos.double(), batch.edge_index, batch.shifts, batch.cell.double(), batch.batch
    )
    assert distances.max() < 2.9


def test_budgets_are_respected(dataset):
    for batch in DataLoader(dataset, CUTOFF, max_atoms=100, seed=0):
        assert batch.pos.shape[0] <= 100
    budgeted = list(DataLoader(dataset, CUTOFF, max_edges=1500, batch_size=16, seed=0))
    assert all(b.edge_index.shape[1] <= 1500 and b.num_graphs <= 16 for b in budgeted)
    assert sorted(i for b in indices(budgeted) for i in b) == list(range(len(dataset)))
    counts = edge_counts(dataset.subset(range(7)), CUTOFF)
    single = [collate([dataset[i]], CUTOFF).edge_index.shape[1] for i in range(7)]
    assert counts.tolist() == single
    assert [b.tolist() for b in pack(np.arange(3), np.array([5, 50, 5]), max_atoms=10)] == [[0], [1], [2]]


def test_order_is_deterministic_per_seed_and_epoch(dataset):
    first = indices(DataLoader(dataset, CUTOFF, batch_size=32, seed=1))
    again = DataLoader(dataset, CUTOFF, batch_size=32, seed=1)
    assert indices(again) == first
    second_epoch = indices(again)  # iterating again is the next epoch
    assert again.epoch == 2 and second_epoch != first
    assert sorted(sum(second_epoch, [])) == list(range(len(dataset)))
    assert indices(DataLoader(dataset, CUTOFF, batch_size=32, seed=2)) != first
    assert indices(DataLoader(dataset, CUTOFF, batch_size=32, shuffle=False))[0] == list(range(32))
    assert len(DataLoader(dataset, CUTOFF, batch_size=32, drop_last=True)) == 300 // 32


def test_resume_from_state_dict(dataset):
    loader = DataLoader(dataset, CUTOFF, max_atoms=256, seed=3)
    full = indices(DataLoader(dataset, CUTOFF, max_atoms=256, seed=3))
    seen = []
    for batch in loader:
        seen.append(batch.index.tolist())
        if len(seen) == 4:
            break
    state = loader.state_dict()
    assert state == {"epoch": 0, "position": 4, "seed": 3, "finished": False}
    resumed = DataLoader(dataset, CUTOFF, max_atoms=256, seed=3)
    resumed.load_state_dict(state)
    assert seen + indices(resumed) == full
    with pytest.raises(ValueError, match="seed"):
        DataLoader(dataset, CUTOFF, batch_size=4, seed=4).load_state_dict(state)


def test_streaming_reads_shard_windows_once(dataset):
    loader = DataLoader(dataset, CUTOFF, batch_size=10, seed=0, streaming=True, window=1)
    order = sum(indices(loader), [])
    assert sorted(order) == list(range(len(dataset)))
    shards = dataset.part_of[order]
    assert (np.diff(shards) != 0).sum() == len(dataset.parts) - 1  # one shard after another
    assert indices(loader) == []  # a single epoch


def test_workers_give_the_same_batches(dataset):
    train = dataset.split("train")
    serial = DataLoader(train, CUTOFF, batch_size=40, seed=5)
    parallel = DataLoader(train, CUTOFF, batch_size=40, seed=5, num_workers=2)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.pos, b.pos)
    assert parallel.state_dict()["epoch"] == 1


def test_splits_share_no_molecule(dataset):
    molecules = {name: set(dataset.split(name).column("molecule").tolist()) for name in ("train", "val", "test")}
    assert not molecules["train"] & molecules["val"] and not molecules["train"] & molecules["test"]
    assert not molecules["val"] & molecules["test"]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, ValueError, "batch_size, max_atoms or max_edges"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 4, "num_workers": -1}, ValueError, "num_workers"),
    ],
)
def test_loader_argument_errors(dataset, options, error, match):
    with pytest.raises(error, match=match):
        DataLoader(dataset, CUTOFF, **options)
    with pytest.raises(ValueError, match="cutoff"):
        DataLoader(dataset, -1.0, batch_size=4)
    with pytest.raises(TypeError, match="dataset"):
        DataLoader([1, 2], CUTOFF, batch_size=4)


def test_sharded_dataset_pickles_by_reference(dataset):
    import pickle

    train = dataset.split("train")
    payload = pickle.dumps(train)
    assert len(payload) < 50_000  # reopened from the directory, not copied
    restored = pickle.loads(payload)
    assert len(restored) == len(train)
    np.testing.assert_array_equal(restored[3].positions, train[3].positions)
