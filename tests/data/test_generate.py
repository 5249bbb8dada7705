"""Generation: the committed fixture, regeneration, resumption, determinism, validation, CLI.

The fixture was made by this pipeline with:

    eqscale data generate --out tests/data/fixtures/qm9-xtb-300 --structures 300 --per-molecule 4 \
        --shard-size 100 --seed 0 --workers 2
"""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eqscale.cli import main
from eqscale.data import (
    SPLITS,
    GenerationConfig,
    check_forces,
    generate,
    generate_molecule,
    load_molecules,
    open_dataset,
    plan_shards,
    qm9_ids,
    read_manifest,
)

FIXTURE = Path(__file__).parent / "fixtures" / "qm9-xtb-300"


def fixture_config() -> GenerationConfig:
    return GenerationConfig.from_json(read_manifest(FIXTURE)["generation"])


def test_fixture_manifest_and_checksums():
    dataset = open_dataset(FIXTURE, verify=True)
    manifest = dataset.metadata
    assert len(dataset) == manifest["structures"] == 300
    assert manifest["units"] == {"energy": "eV", "forces": "eV/Å", "positions": "Å"}
    assert manifest["method"]["name"] == "GFN2-xTB"
    assert set(manifest["elements"]) <= {1, 6, 7, 8, 9}
    assert manifest["counts"]["stored"] == 300
    assert manifest["validation"]["passed"]
    assert sum(manifest["splits"].values()) == 300
    assert int(dataset.num_atoms.max()) <= 29
    # No molecule in two splits.
    molecules = dataset.column("molecule")
    splits = dataset.column("split")
    for molecule in np.unique(molecules):
        assert len(np.unique(splits[molecules == molecule])) == 1
    assert sum(len(dataset.split(name)) for name in SPLITS) == 300
    forces = np.linalg.norm(np.concatenate([part.forces for part in dataset.parts]), axis=1)
    assert forces.max() <= manifest["generation"]["max_force"]


def test_regenerates_fixture_structures():
    dataset = open_dataset(FIXTURE)
    config = fixture_config()
    molecules, conformers = dataset.column("molecule"), dataset.column("conformer")
    for molecule_id in np.unique(molecules)[:2]:
        rows = np.flatnonzero(molecules == molecule_id)
        part = generate_molecule(int(molecule_id), len(rows), config)
        np.testing.assert_array_equal(part.columns["conformer"], conformers[rows])
        stored = [dataset[int(row)] for row in rows]
        np.testing.assert_array_equal(part.numbers, np.concatenate([s.numbers for s in stored]))
        np.testing.assert_allclose(part.positions, np.concatenate([s.positions for s in stored]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(part.energy, [s.energy for s in stored], rtol=0, atol=1e-5)
        np.testing.assert_allclose(part.forces, np.concatenate([s.forces for s in stored]), rtol=0, atol=1e-4)


def test_fixture_forces_match_finite_differences():
    result = check_forces(FIXTURE, samples=2, components=2, seed=1)
    assert result["passed"], result
    assert result["components"] == 4


def test_plan_is_a_prefix_and_splits_do_not_depend_on_size():
    small = [pair for shard in plan_shards(GenerationConfig(structures=30, per_molecule=4)) for pair in shard]
    large = [pair for shard in plan_shards(GenerationConfig(structures=300, per_molecule=4)) for pair in shard]
    assert [i for i, _ in small] == [i for i, _ in large[: len(small)]]
    assert [c for _, c in small] == [4] * 7 + [2]
    assert len(set(qm9_ids())) == len(qm9_ids()) == 130831
    methane = load_molecules([1])[0]
    assert methane.smiles == "C" and methane.numbers.tolist() == [6, 1, 1, 1, 1]


def test_resume_keeps_finished_shards_and_redoes_the_rest(tmp_path):
    options = dict(structures=12, per_molecule=3, shard_size=6, seed=3, check_samples=0, progress=False)
    first = generate(tmp_path / "a", workers=2, **options)
    assert first["structures"] == 12 and len(first["shards"]) == 2
    shards = tmp_path / "a" / "shards"
    # A killed run: shard 1 never finished (only a partial directory), shard 0 is intact.
    shutil.rmtree(shards / "00001")
    (shards / "00001.partial").mkdir()
    (tmp_path / "a" / "manifest.json").unlink()
    before = (shards / "00000" / "energy.npy").stat().st_mtime_ns
    resumed = generate(tmp_path / "a", workers=1, **options)
    assert (shards / "00000" / "energy.npy").stat().st_mtime_ns == before  # not recomputed
    assert not (shards / "00001.partial").exists()
    assert resumed["throughput"]["structures_this_run"] == 6
    assert [s["files"] for s in resumed["shards"]] == [s["files"] for s in first["shards"]]
    # A corrupted shard fails its checksum and is recomputed, identically.
    with open(shards / "00000" / "forces.npy", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\0" * 8)
    repaired = generate(tmp_path / "a", workers=1, **options)
    assert [s["files"] for s in repaired["shards"]] == [s["files"] for s in first["shards"]]


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    options = dict(structures=4, per_molecule=2, check_samples=0, progress=False)
    a = generate(tmp_path / "a", seed=5, **options)
    b = generate(tmp_path / "b", seed=5, **options)
    c = generate(tmp_path / "c", seed=6, **options)
    assert [s["files"] for s in a["shards"]] == [s["files"] for s in b["shards"]]
    assert [s["files"] for s in a["shards"]] != [s["files"] for s in c["shards"]]
    with pytest.raises(ValueError, match="other settings.*seed"):
        generate(tmp_path / "a", seed=6, **options)


def test_md_sampling_is_deterministic_and_labelled():
    config = GenerationConfig(structures=2, sampling="md", md_burn_in=2, md_stride=2, seed=1)
    stats = {}
    first = generate_molecule(3, 2, config, stats)  # water
    second = generate_molecule(3, 2, config)
    assert stats["stored"] == 2 and stats["singlepoints"] == 1 + 2 + 2 * 2
    assert first.columns["conformer"].tolist() == [4, 6]
    np.testing.assert_array_equal(first.positions, second.positions)
    np.testing.assert_array_equal(first.energy, second.energy)
    assert np.all(np.isfinite(first.forces)) and first.energy[0] != first.energy[1]
    # Atoms move at thermal speeds (~0.02 Å/fs for H at 300-1000 K): 3 fs in, not still at the seed.
    seed = load_molecules([3])[0].positions
    assert np.sqrt(np.mean((first.positions[:3] - seed) ** 2)) > 0.005


def test_md_units_match_ase():
    from ase import units

    from eqscale.data._generate import _ACCELERATION, _BOLTZMANN

    assert _ACCELERATION == pytest.approx(units.fs**2, rel=1e-9)  # 1 eV/(Å amu) in Å/fs²
    assert _BOLTZMANN == pytest.approx(units.kB, rel=1e-9)


def test_outlier_bound_filters_and_counts():
    stats = {}
    part = generate_molecule(1, 2, GenerationConfig(structures=2, max_force=1e-3), stats)
    assert len(part) == 0 and stats["outliers"] == stats["attempted"] == 8 and stats["short_molecules"] == 1


def test_scf_failures_are_skipped_counted_and_replaced(monkeypatch):
    from eqscale.data import _generate

    compute = _generate._Labeller.compute
    calls = []

    def failing_every_other(self, calculator, positions, restart=None, copy=True):
        calls.append(1)
        return None if len(calls) % 2 == 0 else compute(self, calculator, positions, restart, copy)

    monkeypatch.setattr(_generate._Labeller, "compute", failing_every_other)
    stats = {}
    part = generate_molecule(1, 2, GenerationConfig(structures=2), stats)
    # Calls: base ok, attempt 0 fails, 1 ok, 2 fails, 3 ok.
    assert part.columns["conformer"].tolist() == [1, 3]
    assert stats["scf_failures"] == 2 and stats["attempted"] == 4 and stats["stored"] == 2


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"structures": 0}, "structures"),
        ({"structures": 5, "sampling": "dft"}, "sampling"),
        ({"structures": 5, "sigma": (0.05, 0.01)}, "sigma"),
        ({"structures": 5, "val_fraction": 0.6, "test_fraction": 0.5}, "val_fraction"),
        ({"structures": 5, "max_force": 0}, "max_force"),
    ],
)
def test_config_errors_name_the_argument(options, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**options)


def test_too_many_structures_for_qm9():
    with pytest.raises(ValueError, match="raise per_molecule"):
        plan_shards(GenerationConfig(structures=2_000_000, per_molecule=10))


def test_cli_generate_info_check(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "data",
        "generate",
        "--out",
        str(out),
        "--structures",
        "3",
        "--per-molecule",
        "3",
        "--quiet",
        "--check",
        "1",
    ]
    assert main(argv) == 0
    assert "structures 3" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["provenance"]["command"].startswith("eqscale data generate")
    assert main(["data", "info", str(out)]) == 0
    assert "GFN2-xTB" in capsys.readouterr().out
    assert main(["data", "check", str(out), "--samples", "1"]) == 0


def test_data_modules_import_heavy_dependencies_lazily():
    # `import eqscale.data` must work without ase, tblite or qm9pack installed.
    heavy = {"ase", "tblite", "qm9pack", "lmdb", "ase_db_backends"}
    for path in (Path(__file__).parents[2] / "eqscale" / "data").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {name.split(".")[0] for name in names} & heavy, f"{path.name} imports {names} at module level"
