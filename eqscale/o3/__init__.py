"""O(3) algebra: irreps, Clebsch-Gordan coefficients, spherical harmonics, Wigner-D, path plans.

Irreps, Clebsch-Gordan coefficients, spherical harmonics, Wigner-D matrices and tensor-product
path planning. Group theory comes from cuequivariance; bases and normalisations match e3nn.

Example:
    >>> from eqscale import o3
    >>> o3.Irreps("32x0e+16x1o").dim
    80
"""

from eqscale.o3._clebsch_gordan import CGEntry, cg_nonzeros, clebsch_gordan, wigner_3j
from eqscale.o3._irreps import Irrep, Irreps, MulIr
from eqscale.o3._spherical_harmonics import sh_coefficients, spherical_harmonics_flops
from eqscale.o3._tensor_product import (
    Instruction,
    TensorProductPlan,
    plan_tensor_product,
    tensor_product_reference,
    uvu_irreps_out,
)
from eqscale.o3._wigner import (
    quaternion_to_matrix,
    random_orthogonal,
    random_rotation,
    rotation_to_axis,
    wigner_D,
    wigner_D_from_quaternion,
)

__all__ = [
    "CGEntry",
    "Instruction",
    "Irrep",
    "Irreps",
    "MulIr",
    "TensorProductPlan",
    "cg_nonzeros",
    "clebsch_gordan",
    "plan_tensor_product",
    "quaternion_to_matrix",
    "random_orthogonal",
    "random_rotation",
    "rotation_to_axis",
    "sh_coefficients",
    "spherical_harmonics",
    "spherical_harmonics_flops",
    "tensor_product_reference",
    "uvu_irreps_out",
    "wigner_3j",
    "wigner_D",
    "wigner_D_from_quaternion",
]


def spherical_harmonics(vectors, lmax: int, normalize: bool = True, normalization: str = "component"):
    """Reference real spherical harmonics (plain PyTorch, differentiable to any order).

    Same as :func:`eqscale.ops.spherical_harmonics` with ``backend="reference"``.

    Example:
        >>> import torch
        >>> spherical_harmonics(torch.tensor([[0.0, 1.0, 0.0]]), 1)
        tensor([[1.0000, 0.0000, 1.7321, 0.0000]])
    """
    from eqscale.ops.spherical_harmonics import spherical_harmonics as _op  # noqa: PLC0415 - avoid cycle

    return _op(vectors, lmax, normalize, normalization, backend="reference")
