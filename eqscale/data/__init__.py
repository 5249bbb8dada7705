"""Labelled structures: generation (QM9 + GFN2-xTB), readers, sharded storage and batching.

- :func:`generate` makes the embedded default dataset: QM9 molecules (H, C, N, O, F; up to 29
  atoms, from the ``qm9pack`` wheel), rattled or MD conformers, GFN2-xTB energies and forces from
  ``tblite``; parallel, resumable, deterministic, stored as memory-mappable shards with a manifest
  and splits by molecule (``eqscale data generate`` on the command line).
- :func:`read_ase`, :func:`read_ase_db`, :func:`read_npz` read users' data (extxyz and anything ASE
  reads, ASE databases including ``.aselmdb``, the rMD17 ``.npz`` layout) into the same
  :class:`Dataset` API, converting units; :func:`save_dataset` stores any dataset as shards.
- :class:`DataLoader` yields :class:`Batch` objects whose graph is built on the fly by
  :func:`eqscale.ops.radius_graph`.

Stored units: energy eV, forces eV/Å, positions Å. The generator and the readers import ``tblite``,
``qm9pack`` data and ASE only when called (``pip install 'eqscale[data]'``).

Example:
    >>> from eqscale.data import DataLoader, generate, open_dataset
    >>> generate("qm9-xtb", 2000, workers=2, seed=0)  # doctest: +SKIP
    >>> train = open_dataset("qm9-xtb", split="train")  # doctest: +SKIP
    >>> batch = next(iter(DataLoader(train, cutoff=5.0, batch_size=32, seed=0)))  # doctest: +SKIP
    >>> batch.num_graphs  # doctest: +SKIP
    32
"""

from eqscale.data._dataset import SPLITS, Dataset, Part, Structure
from eqscale.data._generate import GenerationConfig, generate, generate_molecule, plan_shards, split_of
from eqscale.data._loader import Batch, DataLoader, collate, edge_counts, pack
from eqscale.data._qm9 import Molecule, load_molecules, qm9_ids
from eqscale.data._readers import read_ase, read_ase_db, read_npz
from eqscale.data._storage import open_dataset, read_manifest, save_dataset
from eqscale.data._units import STORED_UNITS
from eqscale.data._validate import check_forces

__all__ = [
    "SPLITS",
    "STORED_UNITS",
    "Batch",
    "DataLoader",
    "Dataset",
    "GenerationConfig",
    "Molecule",
    "Part",
    "Structure",
    "check_forces",
    "collate",
    "edge_counts",
    "generate",
    "generate_molecule",
    "load_molecules",
    "open_dataset",
    "pack",
    "plan_shards",
    "qm9_ids",
    "read_ase",
    "read_ase_db",
    "read_manifest",
    "read_npz",
    "save_dataset",
    "split_of",
]
