import subprocess
import sys

import pytest
import torch

import eqscale
from eqscale import backends


def test_use_backend_nests_and_restores():
    assert backends.get_backend() == "auto"
    with backends.use_backend("reference"):
        assert backends.get_backend() == "reference"
        with backends.use_backend("auto"):
            assert backends.get_backend() == "auto"
        assert backends.get_backend() == "reference"
    assert backends.get_backend() == "auto"


def test_use_backend_restores_after_error():
    with pytest.raises(RuntimeError), backends.use_backend("reference"):
        raise RuntimeError("boom")
    assert backends.get_backend() == "auto"


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("EQSCALE_BACKEND", "reference")
    assert backends.get_backend() == "reference"
    assert backends.resolve(torch.device("cpu")) == "reference"
    monkeypatch.setenv("EQSCALE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="EQSCALE_BACKEND must be one of"):
        backends.get_backend()


def test_auto_prefers_cpu_extension_on_cpu_tensors():
    expected = "cpu" if backends.cpu_available() else "reference"
    assert backends.resolve(torch.device("cpu"), "auto") == expected


def test_bad_names_and_unusable_backends():
    with pytest.raises(ValueError, match="name must be one of"), backends.use_backend("gpu"):
        pass
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve(torch.device("cpu"), "cuda")
    with pytest.raises(ValueError, match="only takes CPU tensors"):
        backends.resolve(torch.device("cuda"), "cpu")


def test_triton_never_auto_on_cpu():
    assert backends.resolve(torch.device("cpu"), "auto") != "triton"


def test_available_backends_lists_reference():
    assert backends.available_backends("cpu")[0] == "reference"


def test_info_reports_backends(capsys):
    text = eqscale.info()
    assert "torch" in text and "C++ extension" in text
    assert capsys.readouterr().out.strip() == text


def test_compile_before_any_eager_call():
    # A fresh process whose first call of a cpu-backend op is inside torch.compile: choosing the
    # backend must not import the extension there (dynamo cannot trace an import).
    code = (
        "import torch, eqscale\n"
        "f = torch.compile(lambda v: eqscale.ops.spherical_harmonics(v, 2), fullgraph=True)\n"
        "v = torch.randn(5, 3)\n"
        "assert torch.allclose(f(v), eqscale.ops.spherical_harmonics(v, 2, backend='reference'), atol=1e-6)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
