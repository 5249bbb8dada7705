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


# For scripts that trace operators as torch.compile sees them on a GPU. torch reads a kernel's
# TTIR to find which arguments it writes, which asks Triton's driver for the current target;
# with no GPU here, a stand-in answers for an H100.
_FAKE_GPU_PREAMBLE = """
import torch
import triton
from functorch.compile import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget

class _Driver:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

triton.runtime.driver.set_active(_Driver())


def trace_on_fake_gpu(function, make_inputs):
    \"\"\"Prints the output shapes and AOTAutograd's forward graph of function on fake CUDA inputs.\"\"\"
    graphs = []

    def keep(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module

    with FakeTensorMode():
        outputs = aot_function(function, fw_compiler=keep)(*make_inputs())
    print([tuple(output.shape) for output in outputs])
    print(graphs[0])
"""


@pytest.fixture
def run_compiled(tmp_path):
    """Runs a Python script in a fresh interpreter without TRITON_INTERPRET and returns its stdout.

    For tests that compile Triton kernels for a real GPU target (a cubin) without a GPU; skipped
    where this Triton build has no NVIDIA backend. The Triton cache is fresh, so the kernels really
    are compiled (and nothing lands in ~/.triton). With ``fake_gpu=True`` the script may call
    ``trace_on_fake_gpu(function, make_inputs)``, which traces with fake CUDA tensors.
    """
    try:
        from triton.backends import backends as triton_backends  # noqa: PLC0415
    except ImportError:
        pytest.skip("Triton is not installed")
    if "nvidia" not in triton_backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")

    def run(script: str, timeout: float = 600, *, fake_gpu: bool = False) -> str:
        source = (_FAKE_GPU_PREAMBLE if fake_gpu else "") + textwrap.dedent(script)
        result = subprocess.run(
            [sys.executable, "-c", source],
            cwd=_REPO,  # the working tree's eqscale when it is not installed
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
        return result.stdout

    return run
