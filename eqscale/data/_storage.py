"""Sharded storage: one directory of ``.npy`` files per shard, and a JSON manifest.

Layout of a dataset directory::

    manifest.json          counts, elements, units, method, seeds, provenance, checksums
    shards/00000/          numbers.npy (uint8, atoms), positions.npy, forces.npy (float64, atoms x 3),
                           energy.npy (float64), offsets.npy (int64, structures + 1),
                           optional cell.npy, pbc.npy and per-structure columns (molecule.npy, split.npy, ...),
                           shard.json (counts and sha256 of every file)

Plain ``.npy`` files are memory-mapped with ``np.load(mmap_mode="r")``, so opening a dataset
reads only the manifest and the headers. A shard is written into ``<name>.partial`` and renamed
into place when complete, so a killed writer never leaves a half shard under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from eqscale.data._dataset import SPLITS, Dataset, Part, check_part
from eqscale.data._units import STORED_UNITS

FORMAT = "eqscale-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
_CORE = ("numbers", "positions", "forces", "energy", "offsets")


def shard_name(number: int) -> str:
    """Directory name of shard ``number``."""
    return f"{number:05d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=False) + "\n")
    os.replace(temporary, path)


def write_part(directory: Path, part: Part, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes one shard atomically and returns its description (counts, checksums, ``info``).

    Args:
        directory: the shard's final directory (replaced if it exists).
        part: the arrays; checked first.
        info: extra entries for ``shard.json`` (generation statistics, source molecules, ...).

    Returns:
        The content of ``shard.json``.
    """
    check_part(part, f"shard {directory.name}")
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arrays = {
        # H to F (and anything up to Z=118) fit a byte; the atom arrays dominate the size.
        "numbers": np.asarray(part.numbers, dtype=np.uint8),
        "positions": np.asarray(part.positions, dtype=np.float64),
        "forces": np.asarray(part.forces, dtype=np.float64),
        "energy": np.asarray(part.energy, dtype=np.float64),
        "offsets": np.asarray(part.offsets, dtype=np.int64),
    }
    if part.cell is not None:
        arrays["cell"] = np.asarray(part.cell, dtype=np.float64)
        arrays["pbc"] = np.asarray(part.pbc if part.pbc is not None else np.ones((len(part), 3), bool), dtype=bool)
    for name, column in part.columns.items():
        if len(column) != len(part):
            raise ValueError(f"column {name!r} has {len(column)} entries for {len(part)} structures")
        arrays[name] = np.asarray(column)
    files = {}
    for name, array in arrays.items():
        path = partial / f"{name}.npy"
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    meta = {"structures": len(part), "atoms": int(arrays["offsets"][-1]), "files": files, **dict(info or {})}
    write_json(partial / "shard.json", meta)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return meta


def read_shard_meta(directory: Path) -> dict[str, Any] | None:
    """The ``shard.json`` of a complete shard, or ``None`` when the shard is absent or unreadable."""
    try:
        return json.loads((Path(directory) / "shard.json").read_text())
    except (OSError, ValueError):
        return None


def verify_shard(directory: Path, meta: Mapping[str, Any]) -> list[str]:
    """Files of a shard whose sha256 differs from ``meta`` (empty when the shard is intact)."""
    bad = []
    for name, entry in meta["files"].items():
        path = Path(directory) / name
        if not path.is_file() or path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            bad.append(name)
    return bad


def load_part(directory: Path, mmap: bool = True) -> Part:
    """One shard's arrays, memory-mapped by default."""
    directory = Path(directory)
    mode = "r" if mmap else None
    arrays = {path.stem: np.load(path, mmap_mode=mode, allow_pickle=False) for path in sorted(directory.glob("*.npy"))}
    missing = [name for name in _CORE if name not in arrays]
    if missing:
        raise ValueError(f"shard {directory} lacks {', '.join(f'{name}.npy' for name in missing)}")
    core = {name: arrays.pop(name) for name in _CORE}
    cell, pbc = arrays.pop("cell", None), arrays.pop("pbc", None)
    return Part(**core, cell=cell, pbc=pbc, columns=arrays)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a dataset directory.

    Raises:
        FileNotFoundError: no manifest (not a dataset, or a generation that has not finished).

    Example:
        >>> from eqscale.data import read_manifest
        >>> read_manifest("qm9-xtb")["units"]  # doctest: +SKIP
        {'energy': 'eV', 'forces': 'eV/Å', 'positions': 'Å'}
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        hint = (
            " (an unfinished generation: run the same command again to complete it)"
            if (Path(root) / SHARDS).is_dir()
            else ""
        )
        raise FileNotFoundError(f"{path} does not exist: not an eqscale dataset directory{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest['version']}; this eqscale reads <= {FORMAT_VERSION}")
    return manifest


def load_parts(root: str | os.PathLike) -> list[Part]:
    """The memory-mapped shards listed in a dataset's manifest, in order."""
    manifest = read_manifest(root)
    return [load_part(Path(root) / SHARDS / shard["name"]) for shard in manifest["shards"]]


def open_dataset(root: str | os.PathLike, split: str | None = None, verify: bool = False) -> Dataset:
    """Opens a sharded dataset directory (generated or converted) with memory-mapped arrays.

    Args:
        root: the directory holding ``manifest.json``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for all structures.
        verify: check every file's sha256 against the manifest first.

    Returns:
        The :class:`Dataset`; its ``metadata`` is the manifest.

    Raises:
        FileNotFoundError: ``root`` holds no manifest.
        ValueError: a checksum differs (with ``verify``), or a shard is malformed.

    Example:
        >>> from eqscale.data import open_dataset
        >>> dataset = open_dataset("qm9-xtb", split="train")  # doctest: +SKIP
        >>> dataset[0].forces.shape  # doctest: +SKIP
        (18, 3)
    """
    root = Path(root)
    manifest = read_manifest(root)
    if verify:
        for shard in manifest["shards"]:
            bad = verify_shard(root / SHARDS / shard["name"], shard)
            if bad:
                raise ValueError(f"shard {shard['name']} of {root}: checksum mismatch in {', '.join(bad)}")
    metadata = {**manifest, "reopen": str(root.resolve())}
    dataset = Dataset(load_parts(root), metadata=metadata)
    return dataset if split is None else dataset.split(split)


def summarize(shards: list[dict[str, Any]], parts: list[Part]) -> dict[str, Any]:
    """Counts over shards: structures, atoms, elements and, with a split column, per-split numbers."""
    elements: set[int] = set()
    for part in parts:
        elements.update(int(z) for z in np.unique(np.asarray(part.numbers)))
    summary: dict[str, Any] = {
        "structures": sum(shard["structures"] for shard in shards),
        "atoms": sum(shard["atoms"] for shard in shards),
        "elements": sorted(elements),
    }
    if parts and all("split" in part.columns for part in parts):
        codes = np.concatenate([np.asarray(part.columns["split"]) for part in parts])
        summary["splits"] = {name: int(np.sum(codes == code)) for code, name in enumerate(SPLITS)}
        if all("molecule" in part.columns for part in parts):
            molecules = np.concatenate([np.asarray(part.columns["molecule"]) for part in parts])
            summary["split_molecules"] = {
                name: len(np.unique(molecules[codes == code])) for code, name in enumerate(SPLITS)
            }
    return summary


def write_manifest(root: Path, shards: list[dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Writes ``manifest.json`` for complete shards; returns it."""
    parts = [load_part(root / SHARDS / shard["name"]) for shard in shards]
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **summarize(shards, parts),
        "units": dict(STORED_UNITS),
        **dict(extra),
        "shards": shards,
    }
    write_json(root / MANIFEST, manifest)
    return manifest


def _gather(dataset: Dataset, indices: range) -> Part:
    structures = [dataset[i] for i in indices]
    counts = [len(s.numbers) for s in structures]
    periodic = any(s.pbc.any() for s in structures)
    return Part(
        numbers=np.concatenate([s.numbers for s in structures]),
        positions=np.concatenate([s.positions for s in structures]).reshape(-1, 3),
        forces=np.concatenate([s.forces for s in structures]).reshape(-1, 3),
        energy=np.array([s.energy for s in structures], dtype=np.float64),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        cell=np.stack([s.cell for s in structures]) if periodic else None,
        pbc=np.stack([s.pbc for s in structures]) if periodic else None,
    )


def save_dataset(
    dataset: Dataset, out: str | os.PathLike, shard_size: int = 10_000, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Writes any dataset (a reader's, a subset) as memory-mappable shards with a manifest.

    Args:
        dataset: the structures to store.
        out: a new or empty directory.
        shard_size: structures per shard.
        metadata: extra manifest entries (source, method, ...).

    Returns:
        The manifest.

    Raises:
        FileExistsError: ``out`` already holds a dataset.

    Example:
        >>> from eqscale.data import read_npz, save_dataset, open_dataset
        >>> save_dataset(read_npz("rmd17_aspirin.npz"), "aspirin")  # doctest: +SKIP
        >>> len(open_dataset("aspirin"))  # doctest: +SKIP
        100000
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    root = Path(out)
    if (root / MANIFEST).exists() or (root / SHARDS).exists():
        raise FileExistsError(f"out={str(root)!r} already holds a dataset; choose a new directory")
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(dataset), shard_size)):
        part = _gather(dataset, range(start, min(start + shard_size, len(dataset))))
        meta = write_part(root / SHARDS / shard_name(number), part)
        shards.append({"name": shard_name(number), **meta})
    source = {key: value for key, value in dataset.metadata.items() if key not in ("reopen", "shards")}
    return write_manifest(root, shards, {"complete": True, "source": source, **dict(metadata or {})})
