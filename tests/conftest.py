"""Shared fixtures. Triton kernels run on CPU tensors through its interpreter when there is no GPU.

``EQSCALE_REQUIRE_BACKENDS=cpu,triton`` (set by CI) turns a backend that is not usable into a test
failure instead of a skip, so a broken build cannot pass as skipped tests.
"""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before Triton is first imported (eqscale imports it when installed).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from eqscale import backends  # noqa: E402

FUSED_BACKENDS = ("cpu", "triton")
ALL_BACKENDS = ("reference", *FUSED_BACKENDS)


def _required_backends() -> set[str]:
    return {name.strip() for name in os.environ.get("EQSCALE_REQUIRE_BACKENDS", "").split(",") if name.strip()}


def require_backend(name: str, device: torch.device | str = "cpu") -> None:
    """Skips (or fails, when CI requires the backend) a test whose backend cannot run here."""
    device = torch.device(device)
    if backends.usable(name, device):
        return
    message = f"backend {name!r} is not usable on {device.type} here"
    if name in _required_backends():
        pytest.fail(message + " but EQSCALE_REQUIRE_BACKENDS requires it")
    pytest.skip(message)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request) -> str:
    """Every backend, on CPU tensors (Triton through its interpreter)."""
    require_backend(request.param)
    return request.param


@pytest.fixture(params=FUSED_BACKENDS)
def fused_backend(request) -> str:
    """The fused backends, on CPU tensors (Triton through its interpreter)."""
    require_backend(request.param)
    return request.param


@pytest.fixture
def cpu_extension() -> None:
    """Requires the C++ extension (the ``cpu`` backend)."""
    require_backend("cpu")
