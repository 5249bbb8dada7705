"""Loading of the compiled C++ extension ``eqscale._C``.

The extension registers its operators with ``TORCH_LIBRARY(eqscale, ...)`` at import, so after a
successful :func:`load` they are reachable as ``torch.ops.eqscale.<name>``. When the extension is
missing (a build failed, or ``EQSCALE_NO_EXTENSION=1`` at install), eqscale still imports; the
``cpu`` backend is then unavailable and ``auto`` falls back to ``reference`` with one warning.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

_loaded: list[bool] = []  # filled by the first load(); a plain global so torch.compile can read it


@functools.cache
def load() -> ModuleType | None:
    """Imports ``eqscale._C`` once; returns it, or ``None`` (after one warning) if it is missing."""
    try:
        # import_module, not "from eqscale import _C": this runs while eqscale is half-imported.
        module = importlib.import_module("eqscale._C")
    except ImportError as error:
        warnings.warn(
            f"eqscale: the C++ extension eqscale._C is not available ({error}); the 'cpu' backend "
            "is disabled and 'auto' uses the reference PyTorch implementation on CPU tensors. "
            "Reinstall with `pip install --no-build-isolation -e .` to build it.",
            RuntimeWarning,
            stacklevel=2,
        )
        module = None
    _loaded.append(module is not None)
    return module


def available() -> bool:
    """Whether the C++ extension is built and importable.

    The ops modules call :func:`load` when ``eqscale`` is imported, so under ``torch.compile`` this
    only reads ``_loaded``: dynamo cannot trace an import.
    """
    if not _loaded:
        load()
    return _loaded[0]
