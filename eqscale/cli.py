"""The ``eqscale`` command.

Example:
    $ eqscale info
    $ eqscale bench --quick
    $ eqscale data generate --out qm9-xtb --structures 2000 --workers 2
    $ eqscale data info qm9-xtb
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence


def _info(arguments: argparse.Namespace) -> int:
    from eqscale._info import info  # noqa: PLC0415 - keep `eqscale --help` fast

    info()
    return 0


def _bench(arguments: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from eqscale._info import info  # noqa: PLC0415
    from eqscale.benchmarking import TABLE_HEADER, format_row, run_suites  # noqa: PLC0415

    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    info()
    print()

    measured = []

    def write_json(complete: bool) -> None:
        with open(arguments.json, "w") as handle:
            json.dump({"rows": [dataclasses.asdict(row) for row in measured], "quick": arguments.quick,
                       "command": " ".join(["eqscale", *arguments.argv]), "complete": complete}, handle, indent=1)

    def print_row(row) -> None:
        # Rows as they are measured: a full run takes many minutes, and an interrupted one keeps
        # its rows in the JSON file (marked incomplete).
        if not measured:
            print(TABLE_HEADER)
        measured.append(row)
        print(format_row(row), flush=True)
        if arguments.json:
            write_json(complete=False)

    rows = run_suites(arguments.suites or None, quick=arguments.quick, on_row=print_row)
    if not rows:
        print("no fused backend is usable here: nothing to compare (see `eqscale info`)", file=sys.stderr)
        return 1
    if arguments.json:
        write_json(complete=True)
        print(f"\nwrote {arguments.json}")
    return 0


def _data_generate(arguments: argparse.Namespace) -> int:
    from eqscale.data import generate  # noqa: PLC0415 - tblite and qm9pack load only here

    options = {
        name: getattr(arguments, name)
        for name in ("per_molecule", "shard_size", "max_force", "val_fraction", "test_fraction")
        if getattr(arguments, name) is not None
    }
    manifest = generate(
        arguments.out,
        arguments.structures,
        sampling=arguments.sampling,
        workers=arguments.workers,
        seed=arguments.seed,
        progress=not arguments.quiet,
        check_samples=arguments.check,
        command="eqscale " + shlex.join(arguments.argv),
        **options,
    )
    _print_manifest(manifest)
    validation = manifest.get("validation")
    return 0 if validation is None or validation["passed"] else 1


def _print_manifest(manifest: dict) -> None:
    print(f"structures {manifest['structures']}  atoms {manifest['atoms']}  elements {manifest['elements']}")
    if "splits" in manifest:
        molecules = manifest.get("split_molecules", {})
        splits = manifest["splits"].items()
        print("splits     " + "  ".join(f"{k} {v} ({molecules.get(k, '?')} molecules)" for k, v in splits))
    if "counts" in manifest:
        print("counts     " + "  ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    if "method" in manifest:
        print(f"method     {manifest['method'].get('name')} ({manifest['method'].get('code')})")
    print(f"units      {manifest['units']}")
    print(f"shards     {len(manifest['shards'])}")
    if "validation" in manifest:
        check = manifest["validation"]
        print(
            f"validation max |F - (-dE/dx)| {check['max_force_error']:.2e} eV/Å, "
            f"max |dE| {check['max_energy_error']:.2e} eV over {check['structures']} structures: "
            + ("passed" if check["passed"] else "FAILED")
        )


def _data_info(arguments: argparse.Namespace) -> int:
    from eqscale.data import read_manifest  # noqa: PLC0415

    _print_manifest(read_manifest(arguments.directory))
    return 0


def _data_check(arguments: argparse.Namespace) -> int:
    from eqscale.data import check_forces, open_dataset  # noqa: PLC0415

    dataset = open_dataset(arguments.directory, verify=True)  # checksums first
    result = check_forces(dataset, samples=arguments.samples, seed=arguments.seed)
    print(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


def _data_convert(arguments: argparse.Namespace) -> int:
    from eqscale.data import read_ase, read_ase_db, read_npz, save_dataset  # noqa: PLC0415

    reader = arguments.reader
    if reader == "auto":
        suffix = arguments.source.rsplit(".", 1)[-1].lower()
        reader = {"npz": "npz", "db": "ase-db", "aselmdb": "ase-db"}.get(suffix, "ase")
    units = {
        name: getattr(arguments, name)
        for name in ("energy_unit", "length_unit", "forces_unit")
        if getattr(arguments, name) is not None
    }
    if reader == "npz":
        dataset = read_npz(arguments.source, **units)
    else:
        keys = {"energy_key": arguments.energy_key, "forces_key": arguments.forces_key}
        read = read_ase_db if reader == "ase-db" else read_ase
        dataset = read(arguments.source, **keys, **units)
    _print_manifest(save_dataset(dataset, arguments.out, shard_size=arguments.shard_size))
    return 0


def _friendly(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input ends with one line naming the problem instead of a traceback."""

    def run(arguments: argparse.Namespace) -> int:
        try:
            return handler(arguments)
        except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
            print(f"eqscale: error: {error}", file=sys.stderr)
            return 2

    return run


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate, inspect and check labelled datasets")
    actions = data.add_subparsers(dest="data_command", required=True)

    generate = actions.add_parser("generate", help="QM9 conformers with GFN2-xTB labels (resumable)")
    generate.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
    generate.add_argument("--structures", type=int, required=True, help="structures to generate")
    generate.add_argument("--sampling", choices=("rattle", "md"), default="rattle", help="conformer sampling")
    generate.add_argument("--workers", type=int, default=1, help="worker processes, one thread each")
    generate.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    generate.add_argument("--per-molecule", type=int, default=None, help="conformers per molecule (default 10)")
    generate.add_argument("--shard-size", type=int, default=None, help="structures per shard (default 1000)")
    generate.add_argument("--max-force", type=float, default=None, help="outlier bound in eV/Å (default 50)")
    generate.add_argument("--val-fraction", type=float, default=None, help="molecules in validation (default 0.05)")
    generate.add_argument("--test-fraction", type=float, default=None, help="molecules in test (default 0.05)")
    generate.add_argument("--check", type=int, default=4, help="structures spot-checked by finite differences")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(handler=_friendly(_data_generate))

    info = actions.add_parser("info", help="summary of a dataset directory's manifest")
    info.add_argument("directory")
    info.set_defaults(handler=_friendly(_data_info))

    check = actions.add_parser("check", help="verify checksums and forces against finite differences")
    check.add_argument("directory")
    check.add_argument("--samples", type=int, default=4, help="structures to check")
    check.add_argument("--seed", type=int, default=0, help="which structures")
    check.set_defaults(handler=_friendly(_data_check))

    convert = actions.add_parser("convert", help="store extxyz / ASE db / aselmdb / rMD17 npz data as shards")
    convert.add_argument("source", help="a file ASE reads, an ASE database (.db, .aselmdb) or an rMD17 .npz")
    convert.add_argument("--out", required=True, help="new output directory")
    convert.add_argument("--reader", choices=("auto", "ase", "ase-db", "npz"), default="auto", help="default: suffix")
    convert.add_argument("--energy-key", default="energy", help="energy key in info / calculator / row")
    convert.add_argument("--forces-key", default="forces", help="forces key in arrays / calculator / row")
    convert.add_argument("--energy-unit", default=None, help="default: eV (npz: kcal/mol)")
    convert.add_argument("--length-unit", default=None, help="default: Å")
    convert.add_argument("--forces-unit", default=None, help="default: energy unit / length unit")
    convert.add_argument("--shard-size", type=int, default=10_000, help="structures per shard")
    convert.set_defaults(handler=_friendly(_data_convert))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eqscale`` command."""
    parser = argparse.ArgumentParser(
        prog="eqscale", description="Fused kernels for E(3)-equivariant potentials and scaling studies."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info_parser = commands.add_parser("info", help="versions, built backends, Triton/GPU presence")
    info_parser.set_defaults(handler=_info)

    bench = commands.add_parser("bench", help="benchmark eqscale against e3nn/cuequivariance/... side by side")
    bench.add_argument("--quick", action="store_true", help="small inputs, few repeats")
    bench.add_argument("--suites", nargs="*", help="suites to run (default: all)")
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    bench.add_argument("--json", default=None, help="also write the rows to this JSON file")
    bench.set_defaults(handler=_bench)

    _add_data_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eqscale`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = build_parser().parse_args(argv)
    arguments.argv = argv
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
