"""Shared fixtures. Triton kernels run on CPU tensors through its interpreter when there is no GPU.

``EQSCALE_REQUIRE_BACKENDS=cpu,triton`` (set by CI) turns a backend that is not usable into a test
failure instead of a skip, so a broken build cannot pass as skipped tests.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Must be set before Triton is first imported (eqscale imports it when installed).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from eqscale import backends  # noqa: E402

_REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def run_compiled(tmp_path):
    """Runs a Python script in a fresh interpreter without TRITON_INTERPRET and returns its stdout.

    For tests that compile Triton kernels for a real GPU target (a cubin) without a GPU; skipped
    where this Triton build has no NVIDIA backend. The Triton cache is fresh, so the kernels really
    are compiled (and nothing lands in ~/.triton).
    """
    try:
        from triton.backends import backends as triton_backends  # noqa: PLC0415
    except ImportError:
        pytest.skip("Triton is not installed")
    if "nvidia" not in triton_backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")

    def run(script: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=_REPO,  # the working tree's eqscale when it is not installed
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
        return result.stdout

    return run
