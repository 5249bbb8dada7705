"""Dataset generation: QM9 seed molecules, rattled or MD conformers, GFN2-xTB labels from tblite.

Determinism does not depend on the number of workers or on interruptions: every random draw comes
from a generator seeded by ``(seed, purpose, QM9 id, conformer)``, each molecule is labelled by one
worker from start to end, and the plan (which molecules, in which shard) depends only on the
configuration.

Speed: each molecule's equilibrium geometry is converged once and its wavefunction restarts the SCF
of every rattled conformer (fewer SCF cycles; the converged result is the same to the SCF
tolerance, ~1e-7 eV). MD steps restart from the previous step.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import importlib.metadata
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqscale.data import _qm9
from eqscale.data._dataset import Part
from eqscale.data._progress import Progress
from eqscale.data._storage import (
    SHARDS,
    read_shard_meta,
    shard_name,
    verify_shard,
    write_json,
    write_manifest,
    write_part,
)
from eqscale.data._units import BOHR, HARTREE

# Stream tags: independent random streams for each purpose, from one user seed.
_PLAN, _SPLIT, _RATTLE, _MD = 1, 2, 3, 4
SAMPLINGS = ("rattle", "md")
METHOD = "GFN2-xTB"
# Atomic masses (amu) of the QM9 elements, ASE's values.
_MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999, 9: 18.998403163}
_BOLTZMANN = 8.617330337217213e-05  # eV/K (CODATA 2014, as ASE)
# 1 eV/(Å amu) in Å/fs².
_ACCELERATION = 1.6021766208e-19 / 1.660539040e-27 * 1e-10
GENERATION_FILE = "generation.json"


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Everything that determines a generated dataset.

    Attributes:
        structures: structures to generate (stored, unless SCF failures or outliers leave a molecule short).
        sampling: ``"rattle"`` (Gaussian displacements of the QM9 geometry) or ``"md"`` (Langevin MD
            with GFN2-xTB forces, frames kept every ``md_stride`` steps).
        seed: seed of every random draw.
        per_molecule: conformers per QM9 molecule (the last molecule may get fewer).
        shard_size: target structures per shard (shards hold whole molecules).
        sigma: range (Å) of the per-conformer rattle width, drawn uniformly.
        temperature: range (K) of the per-molecule MD temperature, drawn uniformly.
        timestep: MD time step (fs).
        friction: Langevin friction (1/fs).
        md_burn_in: MD steps before the first kept frame.
        md_stride: MD steps between kept frames.
        max_force: outlier bound (eV/Å): a structure with an atomic force norm above it is dropped.
            Rattles of up to 0.05 Å give atomic forces up to ~30 eV/Å (99th percentile ~16 eV/Å);
            beyond 50 eV/Å a structure is broken (overlapping atoms, an SCF converged to a wrong state).
        val_fraction: fraction of molecules (not structures) in the validation split.
        test_fraction: fraction of molecules in the test split.
        accuracy: tblite's SCF accuracy (1.0 is its default; smaller is tighter).

    Example:
        >>> config = GenerationConfig(structures=1000, sampling="md", seed=1)
        >>> config.per_molecule, config.temperature
        (10, (300.0, 1000.0))
    """

    structures: int
    sampling: str = "rattle"
    seed: int = 0
    per_molecule: int = 10
    shard_size: int = 1000
    sigma: tuple[float, float] = (0.01, 0.05)
    temperature: tuple[float, float] = (300.0, 1000.0)
    timestep: float = 0.5
    friction: float = 0.01
    md_burn_in: int = 20
    md_stride: int = 10
    max_force: float = 50.0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    accuracy: float = 1.0

    def __post_init__(self) -> None:
        for name in ("structures", "per_molecule", "shard_size", "md_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.md_burn_in, int) or self.md_burn_in < 0:
            raise ValueError(f"md_burn_in must be a non-negative int, got {self.md_burn_in!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        for name in ("sigma", "temperature"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high, got {(low, high)}")
            object.__setattr__(self, name, (float(low), float(high)))
        for name in ("timestep", "friction", "max_force", "accuracy"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(
                "val_fraction and test_fraction must be >= 0 with a sum below 1, "
                f"got {self.val_fraction}, {self.test_fraction}"
            )

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-compatible values."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> GenerationConfig:
        """The configuration from :meth:`to_json` output (or a manifest's ``generation``; other keys ignored).

        Example:
            >>> config = GenerationConfig(structures=10, seed=3)
            >>> GenerationConfig.from_json(config.to_json()) == config
            True
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in values.items()
                if key in fields
            }
        )


def plan_shards(config: GenerationConfig) -> list[list[tuple[int, int]]]:
    """The molecules of each shard as ``(QM9 id, conformers)`` pairs, a function of ``config`` alone.

    Molecules are the first ones of a seeded permutation of QM9, so a larger run with the same seed
    contains the molecules of a smaller one.

    Raises:
        ValueError: more molecules are needed than QM9 has.

    Example:
        >>> shards = plan_shards(GenerationConfig(structures=25, per_molecule=10))  # doctest: +SKIP
        >>> [count for shard in shards for _, count in shard]  # doctest: +SKIP
        [10, 10, 5]
    """
    ids = _qm9.qm9_ids()
    needed = math.ceil(config.structures / config.per_molecule)
    if needed > len(ids):
        raise ValueError(
            f"structures={config.structures} at per_molecule={config.per_molecule} needs {needed} molecules, but QM9 "
            f"has {len(ids)}; raise per_molecule to at least {math.ceil(config.structures / len(ids))}"
        )
    chosen = np.random.default_rng([config.seed, _PLAN]).permutation(ids)[:needed]
    counts = np.full(needed, config.per_molecule)
    counts[-1] = config.structures - config.per_molecule * (needed - 1)
    per_shard = max(1, config.shard_size // config.per_molecule)
    pairs = [(int(i), int(c)) for i, c in zip(chosen, counts, strict=True)]
    return [pairs[start : start + per_shard] for start in range(0, needed, per_shard)]


def split_of(config: GenerationConfig, molecule_id: int) -> int:
    """Split code (0 train, 1 val, 2 test) of a molecule.

    A seeded draw per molecule: splits never share a molecule and do not change with the number of
    structures.

    Example:
        >>> split_of(GenerationConfig(structures=1), 1) in (0, 1, 2)
        True
    """
    draw = np.random.default_rng([config.seed, _SPLIT, molecule_id]).random()
    if draw < config.val_fraction:
        return 1
    return 2 if draw < config.val_fraction + config.test_fraction else 0


class _Labeller:
    """GFN2-xTB energies (eV) and forces (eV/Å) through tblite."""

    def __init__(self, accuracy: float) -> None:
        try:
            from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError  # noqa: PLC0415
            from tblite.interface import Calculator  # noqa: PLC0415
        except ImportError as error:
            raise ImportError("labels come from tblite, which is not installed; pip install 'eqscale[data]'") from error
        self._calculator_class = Calculator
        self._errors = (TBLiteRuntimeError, TBLiteValueError)
        self.accuracy = accuracy

    def calculator(self, numbers: np.ndarray, positions: np.ndarray) -> Any:
        calculator = self._calculator_class(
            METHOD, np.asarray(numbers, np.int32), positions / BOHR, color=False, logger=_ignore
        )
        calculator.set("verbosity", 0)
        calculator.set("accuracy", self.accuracy)
        return calculator

    def compute(
        self, calculator: Any, positions: np.ndarray, restart: Any = None, copy: bool = True
    ) -> tuple[float, np.ndarray, Any] | None:
        """(energy, forces, result) at ``positions`` (Å), or ``None`` when the SCF fails."""
        try:
            with _one_openmp_thread():
                calculator.update(positions / BOHR)
                result = calculator.singlepoint(restart, copy=copy) if restart is not None else calculator.singlepoint()
            energy = float(result.get("energy")) * HARTREE
            forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (HARTREE / BOHR)
        except self._errors:
            return None
        if not (math.isfinite(energy) and np.all(np.isfinite(forces))):
            return None
        return energy, forces, result


def _ignore(message: str) -> None:
    """Discards tblite's log: failures are counted instead of printed over the progress bar."""


def _empty_stats() -> dict[str, int]:
    return {"attempted": 0, "stored": 0, "scf_failures": 0, "outliers": 0, "short_molecules": 0, "singlepoints": 0}


def _rattle(labeller: _Labeller, molecule: _qm9.Molecule, count: int, config: GenerationConfig, stats: dict) -> list:
    calculator = labeller.calculator(molecule.numbers, molecule.positions)
    base = labeller.compute(calculator, molecule.positions)
    stats["singlepoints"] += 1
    restart = None if base is None else base[2]
    kept = []
    # Failed or outlier conformers are replaced by further draws, up to a bound.
    for attempt in range(2 * count + 4):
        if len(kept) == count:
            break
        rng = np.random.default_rng([config.seed, _RATTLE, molecule.id, attempt])
        sigma = rng.uniform(*config.sigma)
        positions = molecule.positions + rng.normal(0.0, sigma, molecule.positions.shape)
        stats["attempted"] += 1
        stats["singlepoints"] += 1
        result = labeller.compute(calculator, positions, restart)
        if result is None:
            stats["scf_failures"] += 1
        elif np.linalg.norm(result[1], axis=1).max() > config.max_force:
            stats["outliers"] += 1
        else:
            kept.append((attempt, positions, result[0], result[1]))
    return kept


def _md(labeller: _Labeller, molecule: _qm9.Molecule, count: int, config: GenerationConfig, stats: dict) -> list:
    rng = np.random.default_rng([config.seed, _MD, molecule.id])
    temperature = rng.uniform(*config.temperature)
    masses = np.array([_MASSES[int(z)] for z in molecule.numbers])[:, None]
    thermal = np.sqrt(_BOLTZMANN * temperature * _ACCELERATION / masses)  # Å/fs per unit normal draw
    velocities = rng.normal(size=molecule.positions.shape) * thermal
    velocities -= (masses * velocities).sum(axis=0) / masses.sum()  # no drift of the centre of mass
    positions = molecule.positions.copy()
    calculator = labeller.calculator(molecule.numbers, positions)
    result = labeller.compute(calculator, positions)
    stats["singlepoints"] += 1
    if result is None:
        stats["scf_failures"] += 1
        return []
    acceleration = result[1] / masses * _ACCELERATION
    dt = config.timestep
    decay = math.exp(-config.friction * dt)
    noise = math.sqrt(1.0 - decay**2)
    kept = []
    steps = config.md_burn_in + config.md_stride * count
    for step in range(1, steps + 1):
        # BAOAB Langevin splitting: accurate configurational sampling at this time step.
        velocities += 0.5 * dt * acceleration
        positions = positions + 0.5 * dt * velocities
        velocities = decay * velocities + noise * thermal * rng.normal(size=positions.shape)
        positions = positions + 0.5 * dt * velocities
        result = labeller.compute(calculator, positions, result[2], copy=False)
        stats["singlepoints"] += 1
        if result is None:
            stats["scf_failures"] += 1
            break
        acceleration = result[1] / masses * _ACCELERATION
        velocities += 0.5 * dt * acceleration
        if step > config.md_burn_in and (step - config.md_burn_in) % config.md_stride == 0:
            stats["attempted"] += 1
            if np.linalg.norm(result[1], axis=1).max() > config.max_force:
                stats["outliers"] += 1
            else:
                kept.append((step, positions.copy(), result[0], result[1]))
    return kept


def _to_part(molecule: _qm9.Molecule, kept: list, split: int) -> Part:
    atoms = len(molecule.numbers)
    return Part(
        numbers=np.tile(molecule.numbers, len(kept)),
        positions=np.concatenate([k[1] for k in kept]) if kept else np.zeros((0, 3)),
        forces=np.concatenate([k[3] for k in kept]) if kept else np.zeros((0, 3)),
        energy=np.array([k[2] for k in kept], dtype=np.float64),
        offsets=np.arange(len(kept) + 1, dtype=np.int64) * atoms,
        columns={
            "molecule": np.full(len(kept), molecule.id, dtype=np.int32),
            "conformer": np.array([k[0] for k in kept], dtype=np.int32),
            "split": np.full(len(kept), split, dtype=np.uint8),
        },
    )


def generate_molecule(
    molecule: _qm9.Molecule | int, count: int, config: GenerationConfig, stats: dict | None = None
) -> Part:
    """Conformers of one QM9 molecule with GFN2-xTB labels, exactly as :func:`generate` stores them.

    Args:
        molecule: a :class:`~eqscale.data.Molecule` or a QM9 id.
        count: conformers wanted.
        config: the generation configuration (seed, sampling, bounds).
        stats: a dict whose counters (``attempted``, ``stored``, ``scf_failures``, ``outliers``, ...)
            are increased.

    Returns:
        A :class:`~eqscale.data.Part` with the columns ``molecule``, ``conformer`` and ``split``.

    Example:
        >>> from eqscale.data import GenerationConfig, generate_molecule
        >>> part = generate_molecule(1, 2, GenerationConfig(structures=2))  # doctest: +SKIP
        >>> part.energy.shape, part.forces.shape  # doctest: +SKIP
        ((2,), (10, 3))
    """
    if isinstance(molecule, int | np.integer):
        molecule = _qm9.load_molecules([int(molecule)])[0]
    stats = stats if stats is not None else _empty_stats()
    for key, value in _empty_stats().items():
        stats.setdefault(key, value)
    labeller = _Labeller(config.accuracy)
    sample = _rattle if config.sampling == "rattle" else _md
    kept = sample(labeller, molecule, count, config, stats)
    stats["stored"] += len(kept)
    stats["short_molecules"] += int(len(kept) < count)
    return _to_part(molecule, kept, split_of(config, molecule.id))


def _concatenate(parts: Sequence[Part]) -> Part:
    starts = np.cumsum([0] + [int(part.offsets[-1]) for part in parts])
    return Part(
        numbers=np.concatenate([part.numbers for part in parts]),
        positions=np.concatenate([part.positions for part in parts]).reshape(-1, 3),
        forces=np.concatenate([part.forces for part in parts]).reshape(-1, 3),
        energy=np.concatenate([part.energy for part in parts]),
        offsets=np.concatenate([[0]] + [part.offsets[1:] + start for part, start in zip(parts, starts, strict=False)]),
        columns={name: np.concatenate([part.columns[name] for part in parts]) for name in parts[0].columns},
    )


_progress_queue: Any = None


@functools.lru_cache(maxsize=1)
def _openmp() -> Any:
    """The GNU OpenMP runtime that tblite's Linux wheels link, or ``None``."""
    library = ctypes.util.find_library("gomp")
    try:
        runtime = ctypes.CDLL(library) if library else None
        return runtime if runtime is not None and hasattr(runtime, "omp_set_num_threads") else None
    except OSError:
        return None


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """Runs tblite on one thread, then restores the caller's OpenMP setting.

    Small molecules gain nothing from threads, and when another library (torch, eqscale's C++
    kernels) has already started the runtime, OMP_NUM_THREADS is no longer read: without this,
    tblite spins one thread per core and runs several times slower on a busy machine.
    """
    runtime = _openmp()
    if runtime is None:
        yield
        return
    previous = runtime.omp_get_max_threads()
    runtime.omp_set_num_threads(1)
    try:
        yield
    finally:
        runtime.omp_set_num_threads(previous)


def _limit_threads() -> None:
    """One thread per worker: the workers are the parallelism."""
    os.environ["OMP_NUM_THREADS"] = "1"  # read by an OpenMP runtime loaded after this point
    runtime = _openmp()
    if runtime is not None:
        runtime.omp_set_num_threads(1)


def _init_worker(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue
    _limit_threads()


def _label_shard(task: tuple) -> tuple[int, dict]:
    number, molecules, counts, config_json, root = task
    config = GenerationConfig.from_json(config_json)
    stats = _empty_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    parts = []
    for molecule, count in zip(molecules, counts, strict=True):
        parts.append(generate_molecule(molecule, count, config, stats))
        if _progress_queue is not None:
            _progress_queue.put(count)
    # Wall and CPU time apart: on a shared machine their ratio shows how much the worker waited.
    stats["seconds"] = round(time.perf_counter() - start, 3)
    stats["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
    info = {"molecules": [m.id for m in molecules], "counts": list(counts), "stats": stats}
    meta = write_part(Path(root) / SHARDS / shard_name(number), _concatenate(parts), info)
    return number, meta


def _check_spec(root: Path, spec: dict) -> None:
    path = root / GENERATION_FILE
    if path.is_file():
        import json  # noqa: PLC0415

        previous = json.loads(path.read_text())
        differing = sorted(
            key
            for key in set(previous["config"]) | set(spec["config"])
            if previous["config"].get(key) != spec["config"].get(key)
        )
        for package in ("qm9pack", "tblite"):
            if previous.get(package) != spec[package]:
                differing.append(f"{package} version")
        if differing:
            raise ValueError(
                f"out={str(root)!r} holds a generation with other settings ({', '.join(differing)}); "
                "use a new directory, or the same settings to resume it"
            )
    else:
        write_json(path, spec)


def _complete_shards(root: Path, plan: list[list[tuple[int, int]]]) -> dict[int, dict]:
    done = {}
    for number, shard in enumerate(plan):
        directory = root / SHARDS / shard_name(number)
        meta = read_shard_meta(directory)
        expected = [[i, c] for i, c in shard]
        if (
            meta is None
            or [list(p) for p in zip(meta.get("molecules", []), meta.get("counts", []), strict=False)] != expected
        ):
            continue
        if not verify_shard(directory, meta):
            done[number] = meta
    return done


def _run(tasks: list[tuple], workers: int, progress: Progress, metas: dict[int, dict]) -> None:
    methods = multiprocessing.get_all_start_methods()
    # fork starts workers instantly (no re-import of torch); the OpenMP thread count is reset in each.
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    queue = context.Queue()
    with context.Pool(workers, initializer=_init_worker, initargs=(queue,)) as pool:
        pending = [pool.apply_async(_label_shard, (task,)) for task in tasks]
        while pending:
            _drain(queue, progress, timeout=0.25)
            for result in [r for r in pending if r.ready()]:
                number, meta = result.get()
                metas[number] = meta
                pending.remove(result)
        _drain(queue, progress, timeout=0.0)


def _drain(queue: Any, progress: Progress, timeout: float) -> None:
    import queue as queues  # noqa: PLC0415

    try:
        progress.update(queue.get(timeout=timeout) if timeout else queue.get_nowait())
        while True:
            progress.update(queue.get_nowait())
    except queues.Empty:
        pass


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _provenance(command: str | None) -> dict[str, Any]:
    version = _version
    return {
        "seeds": f"QM9 equilibrium geometries (B3LYP/6-31G(2df,p)), {_qm9.QM9_REFERENCE}",
        "qm9pack": version("qm9pack"),
        "tblite": version("tblite"),
        "eqscale": version("eqscale"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
    }


def generate(
    out: str | os.PathLike,
    structures: int,
    *,
    sampling: str = "rattle",
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    check_samples: int = 4,
    command: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Generates (or resumes) a GFN2-xTB-labelled dataset of QM9 conformers in ``out``.

    A killed run continues where it stopped when called again with the same arguments: complete
    shards (checked against their sha256) are kept, unfinished ones are redone.

    Args:
        out: output directory (created).
        structures: structures to generate.
        sampling: ``"rattle"`` or ``"md"``.
        workers: worker processes, one thread each.
        seed: seed of every random draw; the same seed gives the same dataset.
        progress: print a progress line (rate, ETA) to stderr.
        check_samples: structures whose forces are checked against finite differences of the energy
            at the end (0 to skip); the result goes into the manifest.
        command: the command line that asked for this run, recorded in the manifest's provenance.
        **options: further :class:`GenerationConfig` fields (``per_molecule``, ``shard_size``,
            ``sigma``, ``temperature``, ``max_force``, ``val_fraction``, ...).

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        ValueError: bad arguments, or ``out`` holds a generation with other settings.
        ImportError: ``tblite`` or ``qm9pack`` is missing (``pip install 'eqscale[data]'``).

    Example:
        >>> from eqscale.data import generate, open_dataset
        >>> manifest = generate("qm9-xtb", 2000, workers=2, seed=0)  # doctest: +SKIP
        >>> len(open_dataset("qm9-xtb", split="train"))  # doctest: +SKIP
        1820
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    config = GenerationConfig(structures=structures, sampling=sampling, seed=seed, **options)
    _Labeller(config.accuracy)  # fails early, with an install hint, when tblite is missing
    root = Path(out)
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    spec = {
        "config": config.to_json(),
        "method": METHOD,
        "qm9pack": _qm9.qm9pack_version(),
        "tblite": _version("tblite"),
    }
    _check_spec(root, spec)
    for partial in (root / SHARDS).glob("*.partial"):
        shutil.rmtree(partial, ignore_errors=True)

    plan = plan_shards(config)
    metas = _complete_shards(root, plan)
    todo = [number for number in range(len(plan)) if number not in metas]
    done_structures = sum(count for number in metas for _, count in plan[number])
    bar = Progress(config.structures, initial=done_structures, stream=sys.stderr if progress else None)
    start = time.perf_counter()
    if todo:
        wanted = sorted({i for number in todo for i, _ in plan[number]})
        molecules = dict(zip(wanted, _qm9.load_molecules(wanted), strict=True))
        tasks = [
            (number, [molecules[i] for i, _ in plan[number]], [c for _, c in plan[number]], config.to_json(), str(root))
            for number in todo
        ]
        _run(tasks, min(workers, len(tasks)), bar, metas)
    if progress:
        bar.close()
    elapsed = time.perf_counter() - start

    shards = [{"name": shard_name(number), **metas[number]} for number in range(len(plan))]
    counts = _empty_stats()
    for shard in shards:
        for key in counts:
            counts[key] += shard["stats"][key]
    extra = {
        "complete": True,
        "method": {
            "name": METHOD,
            "code": "tblite",
            "accuracy": config.accuracy,
            "electronic_temperature_K": 300.0,
            "charge": 0,
            "spin": "closed shell (tblite default for even electron counts)",
        },
        "generation": {**config.to_json(), "seeds": "QM9 via qm9pack", "workers": workers},
        "counts": {**counts, "molecules": sum(len(shard) for shard in plan)},
        "outlier_bound": f"structures with any atomic force norm above {config.max_force} eV/Å are dropped",
        "throughput": {
            "seconds_this_run": round(elapsed, 2),
            "structures_this_run": config.structures - done_structures,
        },
        "provenance": _provenance(command),
    }
    manifest = write_manifest(root, shards, extra)
    if check_samples:
        from eqscale.data._validate import check_forces  # noqa: PLC0415

        manifest["validation"] = check_forces(root, samples=check_samples, seed=config.seed)
        write_manifest(root, shards, {**extra, "validation": manifest["validation"]})
    return manifest
