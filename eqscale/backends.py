"""Backend choice for eqscale ops: ``"auto" | "reference" | "cpu" | "triton"``.

``auto`` picks ``triton`` for CUDA tensors (when Triton is installed), ``cpu`` (the C++ extension)
for CPU tensors, and ``reference`` where neither is usable. The choice comes, in order of
precedence, from the innermost :func:`use_backend` context, then the ``EQSCALE_BACKEND``
environment variable, then ``auto``.

The Triton backend also runs on CPU tensors when ``TRITON_INTERPRET=1`` is set before Triton is
imported; that is how its kernels are tested on machines without a GPU. It is never chosen
automatically for CPU tensors.

Example:
    >>> import torch, eqscale
    >>> with eqscale.backends.use_backend("reference"):
    ...     y = eqscale.ops.spherical_harmonics(torch.randn(4, 3), lmax=2)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

from eqscale import _extension

BACKENDS = ("auto", "reference", "cpu", "triton")

# A plain list (not a ContextVar) so that torch.compile can read it and guard on it.
_override_stack: list[str] = []


def _check_name(name: str, argument: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The requested backend name (before resolution), e.g. ``"auto"``."""
    if _override_stack:
        return _override_stack[-1]
    return _check_name(os.environ.get("EQSCALE_BACKEND", "auto"), "EQSCALE_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that selects the backend for eqscale ops called inside it.

    Args:
        name: one of ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``.

    Example:
        >>> import torch, eqscale
        >>> with eqscale.backends.use_backend("reference"):
        ...     eqscale.ops.spherical_harmonics(torch.randn(2, 3), lmax=1).shape
        torch.Size([2, 4])
    """
    _override_stack.append(_check_name(name, "name"))
    try:
        yield
    finally:
        _override_stack.pop()


# Looked up once at import: torch.compile traces backend resolution and cannot trace importlib.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether Triton is installed (it may still lack a GPU; see :func:`triton_interpreted`)."""
    return _TRITON_INSTALLED


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (``TRITON_INTERPRET=1``), i.e. on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cpu_available() -> bool:
    """Whether the C++ extension (the ``cpu`` backend) is built and importable."""
    return _extension.available()


def usable(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` can run on tensors living on ``device``."""
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu" and cpu_available()
    if name == "triton":
        if not triton_available():
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    return False


def resolve(device: torch.device, backend: str | None = None) -> str:
    """The concrete backend to run on ``device``.

    Args:
        device: where the op's inputs live.
        backend: an explicit choice, or ``None`` for the current one (:func:`get_backend`).

    Returns:
        ``"reference"``, ``"cpu"`` or ``"triton"``.

    Raises:
        ValueError: if an explicitly requested backend cannot run on ``device``.
    """
    name = _check_name(backend, "backend") if backend is not None else get_backend()
    if name == "auto":
        if device.type == "cuda" and usable("triton", device):
            return "triton"
        if device.type == "cpu" and usable("cpu", device):
            return "cpu"
        return "reference"
    if not usable(name, device):
        raise ValueError(f"backend {name!r} cannot run on {device.type} tensors here: {_why_not(name, device)}")
    return name


def _why_not(name: str, device: torch.device) -> str:
    if name == "cpu":
        if device.type != "cpu":
            return "the C++ backend only takes CPU tensors"
        return "the C++ extension eqscale._C is not built"
    if not triton_available():
        return "Triton is not installed (pip install 'eqscale[triton]')"
    return "Triton needs CUDA tensors, or TRITON_INTERPRET=1 set before import to run on CPU tensors"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` in this process."""
    device = torch.device(device)
    return [name for name in BACKENDS[1:] if usable(name, device)]
