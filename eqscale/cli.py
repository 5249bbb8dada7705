"""The ``eqscale`` command.

Example:
    $ eqscale info
    $ eqscale bench --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence


def _info(arguments: argparse.Namespace) -> int:
    from eqscale._info import info  # noqa: PLC0415 - keep `eqscale --help` fast

    info()
    return 0


def _bench(arguments: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from eqscale._info import info  # noqa: PLC0415
    from eqscale.benchmarking import format_table, run_suites  # noqa: PLC0415

    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    info()
    print()
    rows = run_suites(arguments.suites or None, quick=arguments.quick)
    if not rows:
        print("no fused backend is usable here: nothing to compare (see `eqscale info`)", file=sys.stderr)
        return 1
    print(format_table(rows))
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump({"rows": [dataclasses.asdict(row) for row in rows], "quick": arguments.quick}, handle, indent=1)
        print(f"\nwrote {arguments.json}")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``eqscale`` command."""
    arguments = build_parser().parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
