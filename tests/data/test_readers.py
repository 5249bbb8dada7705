"""Readers: round trips through extxyz, ASE databases (SQLite, JSON, aselmdb), rMD17 npz and shards."""

from pathlib import Path

import ase
import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from eqscale.data import Dataset, open_dataset, read_ase, read_ase_db, read_npz, save_dataset
from eqscale.data._units import BOHR, HARTREE, KCAL_PER_MOL, forces_factor

FIXTURE = Path(__file__).parent / "fixtures" / "qm9-xtb-300"


@pytest.fixture(scope="module")
def reference() -> Dataset:
    """Ten fixture molecules plus one periodic structure."""
    dataset = open_dataset(FIXTURE).subset(range(0, 300, 30))
    return dataset


def to_atoms(dataset: Dataset, labels: str = "calculator") -> list:
    images = []
    for structure in dataset:
        atoms = ase.Atoms(structure.numbers, structure.positions, cell=structure.cell, pbc=structure.pbc)
        if labels == "calculator":
            atoms.calc = SinglePointCalculator(atoms, energy=structure.energy, forces=structure.forces)
        else:
            atoms.info["REF_energy"] = structure.energy
            atoms.arrays["REF_forces"] = structure.forces.copy()
        images.append(atoms)
    return images


def assert_same(read: Dataset, expected: Dataset, text: bool = False) -> None:
    # extxyz stores 8 decimals; binary formats are exact up to unit conversion.
    atol = 1e-7 if text else 1e-12
    assert len(read) == len(expected)
    for got, want in zip(read, expected, strict=True):
        np.testing.assert_array_equal(got.numbers, want.numbers)
        np.testing.assert_allclose(got.positions, want.positions, rtol=1e-12, atol=atol)
        np.testing.assert_allclose(got.energy, want.energy, rtol=1e-12, atol=atol)
        np.testing.assert_allclose(got.forces, want.forces, rtol=1e-12, atol=atol)
        np.testing.assert_allclose(got.cell, want.cell, atol=atol)
        np.testing.assert_array_equal(got.pbc, want.pbc)


def periodic_dataset() -> Dataset:
    atoms = ase.Atoms(
        "Si2",
        scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]],
        cell=[[0, 2.7, 2.7], [2.7, 0, 2.7], [2.7, 2.7, 0]],
        pbc=True,
    )
    atoms.calc = SinglePointCalculator(atoms, energy=-10.5, forces=np.array([[0.1, 0.0, -0.1], [-0.1, 0.0, 0.1]]))
    return read_ase([atoms])


def test_extxyz_round_trip_with_calculator_labels(tmp_path, reference):
    path = tmp_path / "data.extxyz"
    ase.io.write(path, to_atoms(reference), format="extxyz")
    assert_same(read_ase(path), reference, text=True)
    assert_same(read_ase(path, index="2:4"), reference.subset([2, 3]), text=True)


def test_extxyz_info_and_arrays_keys_and_units(tmp_path, reference):
    images = to_atoms(reference, labels="info")
    for atoms in images:  # stored in kcal/mol and Bohr
        atoms.info["REF_energy"] /= KCAL_PER_MOL
        atoms.arrays["REF_forces"] /= KCAL_PER_MOL / BOHR
        atoms.positions /= BOHR
    path = tmp_path / "kcal.extxyz"
    ase.io.write(path, images, format="extxyz")
    read = read_ase(path, energy_key="REF_energy", forces_key="REF_forces", energy_unit="kcal/mol", length_unit="Bohr")
    assert_same(read, reference, text=True)
    with pytest.raises(ValueError, match="no energy.*energy_key"):
        read_ase(path)


def test_periodic_structure_and_shards_round_trip(tmp_path, reference):
    crystal = periodic_dataset()
    assert crystal[0].pbc.all() and np.allclose(crystal[0].cell[0], [0, 2.7, 2.7])
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, to_atoms(reference) + to_atoms(crystal), format="extxyz")
    mixed = read_ase(path)
    assert_same(mixed.subset([10]), crystal, text=True)
    save_dataset(mixed, tmp_path / "shards", shard_size=4)
    stored = open_dataset(tmp_path / "shards", verify=True)
    assert len(stored.parts) == 3 and stored.metadata["structures"] == 11
    assert_same(stored, mixed)
    with pytest.raises(FileExistsError, match="out="):
        save_dataset(mixed, tmp_path / "shards")


@pytest.mark.parametrize("suffix", [".db", ".json", ".aselmdb"])
def test_ase_database_round_trip(tmp_path, reference, suffix):
    path = tmp_path / f"data{suffix}"
    with ase.db.connect(path) as database:
        for atoms in to_atoms(reference):
            database.write(atoms)
    assert_same(read_ase_db(path), reference)
    assert len(read_ase_db(path, limit=3)) == 3


def test_ase_database_labels_in_data(tmp_path, reference):
    path = tmp_path / "data.db"
    with ase.db.connect(path) as database:
        for structure in reference:
            atoms = ase.Atoms(structure.numbers, structure.positions)
            database.write(
                atoms,
                data={"dft_energy": structure.energy / HARTREE, "dft_forces": structure.forces / (HARTREE / BOHR)},
            )
    read = read_ase_db(
        path,
        energy_key="dft_energy",
        forces_key="dft_forces",
        energy_unit="Hartree",
        length_unit="Å",
        forces_unit="Hartree/Bohr",
    )
    assert_same(read, reference)
    with pytest.raises(ValueError, match="no forces"):
        read_ase_db(path, energy_key="dft_energy", energy_unit="Hartree")


def test_rmd17_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    numbers = np.array([6, 1, 1, 1, 1])
    coords = rng.normal(size=(7, 5, 3))
    energies = rng.normal(size=7) * 100
    forces = rng.normal(size=(7, 5, 3))
    path = tmp_path / "rmd17.npz"
    np.savez(path, nuclear_charges=numbers, coords=coords, energies=energies, forces=forces)
    dataset = read_npz(path)
    assert len(dataset) == 7 and dataset[3].numbers.tolist() == numbers.tolist()
    np.testing.assert_allclose(dataset[3].energy, energies[3] * KCAL_PER_MOL)
    np.testing.assert_allclose(dataset[3].forces, forces[3] * forces_factor("kcal/mol/Å"))
    np.testing.assert_allclose(read_npz(path, energy_unit="eV")[0].energy, energies[0])

    np.savez(tmp_path / "short.npz", nuclear_charges=numbers, coords=coords[:, :4], energies=energies, forces=forces)
    with pytest.raises(ValueError, match="coords must have shape"):
        read_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "nokey.npz", nuclear_charges=numbers, coords=coords, energies=energies)
    with pytest.raises(ValueError, match="missing \\['forces'\\]"):
        read_npz(tmp_path / "nokey.npz")
    bad = forces.copy()
    bad[5, 2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", nuclear_charges=numbers, coords=coords, energies=energies, forces=bad)
    with pytest.raises(ValueError, match="forces of structure 5 is not finite"):
        read_npz(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match="energy_unit must be one of"):
        read_npz(path, energy_unit="kcal")
    with pytest.raises(FileNotFoundError, match="path="):
        read_npz(tmp_path / "absent.npz")


def test_ase_errors_name_structure_and_field():
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.calc = SinglePointCalculator(atoms, energy=np.nan, forces=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="energy of structure 0 is not finite"):
        read_ase([atoms])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0)
    atoms.arrays["forces"] = np.zeros((2, 3))
    atoms.arrays.pop("forces")
    with pytest.raises(ValueError, match="structure 0 has no forces"):
        read_ase([atoms])
    atoms.calc = None
    atoms.info["energy"] = -1.0
    atoms.arrays["forces"] = np.zeros((2, 3))
    assert read_ase([atoms])[0].energy == -1.0
    with pytest.raises(ValueError, match="forces_unit must be"):
        read_ase([atoms], forces_unit="eV")


def test_cli_convert_and_clear_errors(tmp_path, capsys):
    from eqscale.cli import main

    path = tmp_path / "rmd17.npz"
    arrays = {"coords": np.zeros((2, 3, 3)), "energies": [1.0, 2.0], "forces": np.ones((2, 3, 3))}
    np.savez(path, nuclear_charges=[8, 1, 1], **arrays)
    assert main(["data", "convert", str(path), "--out", str(tmp_path / "shards"), "--energy-unit", "eV"]) == 0
    assert open_dataset(tmp_path / "shards")[1].energy == 2.0
    assert main(["data", "convert", str(tmp_path / "absent.xyz"), "--out", str(tmp_path / "x")]) == 2
    assert "source=" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not an eqscale dataset" in capsys.readouterr().err
