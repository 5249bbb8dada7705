"""Imports the Triton kernel modules (``kernels/``), which install as ``eqscale.kernels``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PACKAGE = "eqscale.kernels"


def import_kernels(module: str) -> ModuleType:
    """Returns ``eqscale.kernels.<module>``, also when eqscale runs from an unmapped source tree.

    ``kernels/`` sits beside ``eqscale/`` in the repository and becomes ``eqscale.kernels`` through
    the install's package-dir mapping. A checkout used straight from ``sys.path`` has no such
    mapping, so the folder is attached under the same name (never as a top-level ``kernels``).

    Args:
        module: the kernel module's name, e.g. ``"tp_conv"``.

    Raises:
        ImportError: neither an installed ``eqscale.kernels`` nor a ``kernels/`` folder exists.

    Example:
        >>> import_kernels("spherical_harmonics").__name__
        'eqscale.kernels.spherical_harmonics'
    """
    name = f"{_PACKAGE}.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name not in (_PACKAGE, name):
            raise
    folder = Path(__file__).resolve().parents[1] / "kernels"
    if not (folder / "__init__.py").is_file():
        raise ImportError(f"{name} is not installed and no kernels/ folder was found at {folder}")
    if _PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            _PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PACKAGE] = package
        spec.loader.exec_module(package)
        sys.modules["eqscale"].kernels = package
    return importlib.import_module(name)
