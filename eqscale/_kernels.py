"""The Triton kernel modules (``kernels/``, installed as ``eqscale.kernels``) and their operators.

:func:`import_kernels` finds the modules; :func:`kernel_operator` and :func:`should_launch` are
the pattern every operator that launches them follows.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from eqscale import backends

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


def kernel_operator(name: str) -> Callable[[Callable[..., object]], object]:
    """Registers a function that launches Triton kernels as the operator ``name``.

    ``triton_op`` on real GPUs, so ``torch.compile`` captures the launches; an opaque
    ``custom_op`` in Triton's interpreter, because ``torch.compile`` cannot capture interpreted
    kernels. Either way the body doubles as the fake implementation: it validates, allocates, and
    launches only when :func:`should_launch` says so.

    Args:
        name: qualified operator name, e.g. ``"eqscale::tp_conv_contract_triton"``.

    Example:
        >>> @kernel_operator("eqscale_examples::copy_triton")
        ... def copy(x: torch.Tensor) -> torch.Tensor:
        ...     return x.clone()  # a real body validates, allocates, then launches
        >>> torch.ops.eqscale_examples.copy_triton(torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    if not backends.triton_interpreted():
        return triton_op(name, mutates_args=())

    # Under TRITON_INTERPRET=1 wrap_triton hands back the bare interpreted kernel, so the graph
    # torch.compile traces from a triton_op body would lack the kernel (silently wrong outputs).
    def register(fn: Callable[..., object]) -> object:
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fn)
        return op

    return register


def should_launch(num_items: int, *tensors: torch.Tensor | None) -> bool:
    """Whether a :func:`kernel_operator` body launches its kernels on these inputs.

    Not on empty work, and not on the fake tensors that ``torch.compile``, ``torch.export`` and
    ``opcheck`` trace with in the interpreter, where kernels are not wrapped and would run on
    them; allocating the outputs is all a trace needs. On GPUs the launches are wrapped and traced.

    Args:
        num_items: how many items (edges, vectors) the kernels would process.
        *tensors: the inputs (None entries are ignored).

    Example:
        >>> should_launch(0, torch.ones(3)), should_launch(3, torch.ones(3), None)
        (False, True)
    """
    if num_items == 0:
        return False
    return not (backends.triton_interpreted() and any(t is not None and is_fake(t) for t in tensors))
