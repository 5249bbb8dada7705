"""Binds the Triton spherical-harmonics kernels (``kernels/spherical_harmonics.py``) as operators.

Three operators under ``torch.ops.eqscale``, with the argument lists of the C++ schemas in
``csrc/ops.cpp``:

- ``spherical_harmonics_triton_fwd(vectors, coefficients, lmax) -> sh``
- ``spherical_harmonics_triton_bwd(vectors, grad_sh, coefficients, lmax) -> grad_vectors``
- ``spherical_harmonics_triton_bwd_bwd(vectors, grad_sh, grad_grad_vectors, coefficients, lmax)
  -> (grad_grad_sh, grad_vectors)``

``vectors`` is ``(N, 3)`` contiguous float32/float64 and is not normalised by the kernels;
``coefficients`` is the ``((lmax + 1)^2,)`` float64 table of
:func:`eqscale.o3.sh_coefficients`, applied inside the kernels. Outputs have the vectors' dtype.

Design: each kernel runs the recursion of :mod:`eqscale.o3._spherical_harmonics` once per block
of vectors, unrolled for the compile-time ``lmax``, carrying forward-mode jets (value, gradient,
and for the double backward the derivative along ``grad_grad_vectors``), and writes or contracts
every output column as soon as it is computed: nothing of size ``N x 3 x K`` is materialised. The
backward and double backward are the same recursion at a higher jet order, not autograd through
the forward. The operators are ``torch.library.triton_op`` operators, which let
``torch.compile`` see and schedule the kernels; their bodies only validate, allocate and launch,
so they double as the fake implementations. Autograd and FLOP formulas are registered in
:mod:`eqscale.ops.spherical_harmonics`.

On CPU tensors the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton
is imported); that is how they are tested without a GPU. There the operators are opaque
``custom_op`` operators instead, because ``torch.compile`` cannot capture interpreted kernels.
"""

from __future__ import annotations

import torch
from torch.library import wrap_triton

from eqscale import backends
from eqscale._kernels import import_kernels, kernel_operator, should_launch
from eqscale.o3._spherical_harmonics import check_lmax, num_sh_components

OP_NAMES = (
    "spherical_harmonics_triton_fwd",
    "spherical_harmonics_triton_bwd",
    "spherical_harmonics_triton_bwd_bwd",
)

_DTYPES = (torch.float32, torch.float64)


_kernels = import_kernels("spherical_harmonics")
# Bare module-level names: triton_op finds the kernels an operator launches by reading its source
# for wrap_triton(<name>), and hashes them into AOTAutograd's cache key; an attribute access
# (_kernels.x) would hide them, and an edited kernel would then not invalidate that cache.
_fwd_kernel = _kernels.spherical_harmonics_fwd_kernel
_bwd_kernel = _kernels.spherical_harmonics_bwd_kernel
_bwd_bwd_kernel = _kernels.spherical_harmonics_bwd_bwd_kernel


def _check_vectors(vectors: object) -> int:
    """Validates ``vectors`` and returns ``N``."""
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.dtype not in _DTYPES:
        raise TypeError(f"vectors must be float32 or float64, got {vectors.dtype}")
    if vectors.dim() != 2 or vectors.shape[1] != 3:
        raise ValueError(f"vectors must have shape (N, 3), got {tuple(vectors.shape)}")
    if not vectors.is_contiguous():
        raise ValueError("vectors must be contiguous")
    device = vectors.device
    if not (device.type == "cuda" or (device.type == "cpu" and backends.triton_interpreted())):
        raise ValueError(
            f"vectors is on {device}: the Triton kernels need CUDA tensors, or CPU tensors with "
            "TRITON_INTERPRET=1 set before Triton is imported"
        )
    return vectors.shape[0]


def _check_coefficients(coefficients: object, lmax: int, vectors: torch.Tensor) -> None:
    check_lmax(lmax)
    if not isinstance(coefficients, torch.Tensor):
        raise TypeError(f"coefficients must be a torch.Tensor, got {type(coefficients).__name__}")
    if coefficients.dtype != torch.float64:
        raise TypeError(f"coefficients must be float64, got {coefficients.dtype}")
    expected = (num_sh_components(lmax),)
    shape = tuple(coefficients.shape)
    if shape != expected:
        raise ValueError(f"coefficients must have shape {expected} for lmax={lmax}, got {shape}")
    if coefficients.device != vectors.device:
        raise ValueError(
            f"coefficients must be on {vectors.device} like vectors, got {coefficients.device}"
        )
    if not coefficients.is_contiguous():
        raise ValueError("coefficients must be contiguous")


def _check_like_vectors(
    name: str, tensor: object, shape: tuple[int, ...], vectors: torch.Tensor
) -> None:
    """Validates an input that must have ``shape`` and the dtype and device of ``vectors``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != vectors.dtype:
        raise TypeError(
            f"{name} must have the dtype of vectors ({vectors.dtype}), got {tensor.dtype}"
        )
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if tensor.device != vectors.device:
        raise ValueError(f"{name} must be on {vectors.device} like vectors, got {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


@kernel_operator("eqscale::spherical_harmonics_triton_fwd")
def spherical_harmonics_triton_fwd(
    vectors: torch.Tensor, coefficients: torch.Tensor, lmax: int
) -> torch.Tensor:
    """Solid harmonics ``(N, (lmax + 1)^2)`` of ``(N, 3)`` vectors, times ``coefficients``.

    Args:
        vectors: ``(N, 3)`` contiguous float32/float64 (not normalised here).
        coefficients: ``((lmax + 1)^2,)`` float64, from :func:`eqscale.o3.sh_coefficients`.
        lmax: maximum degree.

    Returns:
        ``(N, (lmax + 1)^2)`` in the dtype of ``vectors``.

    Example:
        >>> import torch, eqscale
        >>> c = eqscale.o3.sh_coefficients(1, device="cuda")
        >>> v = torch.randn(5, 3, device="cuda")
        >>> torch.ops.eqscale.spherical_harmonics_triton_fwd(v, c, 1).shape
        torch.Size([5, 4])
    """
    num_vectors = _check_vectors(vectors)
    _check_coefficients(coefficients, lmax, vectors)
    sh = vectors.new_empty((num_vectors, num_sh_components(lmax)))
    if should_launch(num_vectors, vectors):
        wrap_triton(_fwd_kernel)[_kernels.grid(num_vectors)](
            vectors, coefficients, sh, num_vectors, LMAX=lmax, BLOCK_N=_kernels.BLOCK_N
        )
    return sh


@kernel_operator("eqscale::spherical_harmonics_triton_bwd")
def spherical_harmonics_triton_bwd(
    vectors: torch.Tensor, grad_sh: torch.Tensor, coefficients: torch.Tensor, lmax: int
) -> torch.Tensor:
    """Backward of :func:`spherical_harmonics_triton_fwd`: ``grad_sh`` contracted with ``dY/dv``.

    Args:
        vectors: ``(N, 3)`` as in the forward.
        grad_sh: ``(N, (lmax + 1)^2)`` contiguous, dtype of ``vectors``.
        coefficients: as in the forward.
        lmax: maximum degree.

    Returns:
        ``grad_vectors`` of shape ``(N, 3)``.
    """
    num_vectors = _check_vectors(vectors)
    _check_coefficients(coefficients, lmax, vectors)
    _check_like_vectors("grad_sh", grad_sh, (num_vectors, num_sh_components(lmax)), vectors)
    grad_vectors = torch.empty_like(vectors)
    if should_launch(num_vectors, vectors, grad_sh):
        wrap_triton(_bwd_kernel)[_kernels.grid(num_vectors)](
            vectors,
            grad_sh,
            coefficients,
            grad_vectors,
            num_vectors,
            LMAX=lmax,
            BLOCK_N=_kernels.BLOCK_N,
        )
    return grad_vectors


@kernel_operator("eqscale::spherical_harmonics_triton_bwd_bwd")
def spherical_harmonics_triton_bwd_bwd(
    vectors: torch.Tensor,
    grad_sh: torch.Tensor,
    grad_grad_vectors: torch.Tensor,
    coefficients: torch.Tensor,
    lmax: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of :func:`spherical_harmonics_triton_bwd` (what training on forces needs).

    Args:
        vectors: ``(N, 3)`` as in the forward.
        grad_sh: ``(N, (lmax + 1)^2)``, as in the backward.
        grad_grad_vectors: ``(N, 3)`` contiguous, dtype of ``vectors``: the gradient flowing into
            the backward's output.
        coefficients: as in the forward.
        lmax: maximum degree.

    Returns:
        ``(grad_grad_sh, grad_vectors)``: ``dY/dv`` applied to ``grad_grad_vectors``, shape
        ``(N, (lmax + 1)^2)``; and ``grad_sh`` contracted with the Hessian of ``Y`` applied to
        ``grad_grad_vectors``, shape ``(N, 3)``.
    """
    num_vectors = _check_vectors(vectors)
    _check_coefficients(coefficients, lmax, vectors)
    _check_like_vectors("grad_sh", grad_sh, (num_vectors, num_sh_components(lmax)), vectors)
    _check_like_vectors("grad_grad_vectors", grad_grad_vectors, (num_vectors, 3), vectors)
    grad_grad_sh = torch.empty_like(grad_sh)
    grad_vectors = torch.empty_like(vectors)
    if should_launch(num_vectors, vectors, grad_sh, grad_grad_vectors):
        wrap_triton(_bwd_bwd_kernel)[_kernels.grid(num_vectors)](
            vectors,
            grad_sh,
            grad_grad_vectors,
            coefficients,
            grad_grad_sh,
            grad_vectors,
            num_vectors,
            LMAX=lmax,
            BLOCK_N=_kernels.BLOCK_N,
        )
    return grad_grad_sh, grad_vectors
