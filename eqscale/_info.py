"""``eqscale.info()``: versions and which backends are usable here."""

from __future__ import annotations

import importlib.metadata
import platform

import torch


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_dict() -> dict[str, str]:
    """The facts :func:`info` prints, as a dict."""
    from eqscale import __version__, backends  # noqa: PLC0415 - avoid import cycle

    cuda = torch.cuda.is_available()
    return {
        "eqscale": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuequivariance": _version("cuequivariance"),
        "e3nn": _version("e3nn"),
        "C++ extension (cpu backend)": "built" if backends.cpu_available() else "not built",
        "triton backend": (
            "usable on CUDA" if backends.triton_available() and cuda
            else "usable on CPU (TRITON_INTERPRET=1)" if backends.triton_available() and backends.triton_interpreted()
            else "installed, no GPU" if backends.triton_available()
            else "not installed"
        ),
        "GPU": torch.cuda.get_device_name(0) if cuda else "none",
        "CPU threads (torch)": str(torch.get_num_threads()),
        "backends for CPU tensors": ", ".join(backends.available_backends("cpu")),
        "selected backend": backends.get_backend(),
    }


def info() -> str:
    """Prints and returns versions, built backends and Triton/GPU presence.

    Example:
        >>> import eqscale
        >>> text = eqscale.info()  # doctest: +ELLIPSIS
        eqscale ...
    """
    facts = info_dict()
    width = max(map(len, facts))
    text = "\n".join(f"{key:<{width}}  {value}" for key, value in facts.items())
    print(text)
    return text
