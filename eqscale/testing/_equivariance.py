"""Equivariance checks under O(3) (rotations and reflections), translations and permutations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from eqscale.o3._irreps import Irreps
from eqscale.testing._tolerances import assert_close

CARTESIAN_POINTS = "cartesian_points"


def irreps_matrix(irreps: Any, rotation: torch.Tensor, layout: str = "mul_ir") -> torch.Tensor:
    """The representation matrix of ``rotation`` (proper or improper) on a feature vector.

    Irrep ``(l, p)`` transforms with ``p^k D_l(det(R) R)``, ``k = 1`` for an improper ``R`` (as e3nn).

    Args:
        irreps: the irreps of the features.
        rotation: ``(3, 3)`` orthogonal matrix.
        layout: ``"mul_ir"`` (e3nn) or ``"ir_mul"`` (cuequivariance).

    Returns:
        ``(irreps.dim, irreps.dim)`` block-diagonal matrix.

    Example:
        >>> import torch
        >>> irreps_matrix("2x0e+1o", -torch.eye(3)).diagonal()
        tensor([ 1.,  1., -1., -1., -1.])
    """
    from eqscale.o3 import wigner_D  # noqa: PLC0415 - o3 imports testing-free modules only

    irreps = Irreps(irreps)
    if layout not in ("mul_ir", "ir_mul"):
        raise ValueError(f"layout must be 'mul_ir' or 'ir_mul', got {layout!r}")
    determinant = torch.linalg.det(rotation)
    improper = bool(determinant < 0)
    proper = rotation * determinant.sign()
    blocks = []
    for mul, ir in irreps:
        block = wigner_D(ir.l, proper) * (ir.p if improper else 1)
        identity = torch.eye(mul, dtype=rotation.dtype, device=rotation.device)
        blocks.append(torch.kron(identity, block) if layout == "mul_ir" else torch.kron(block, identity))
    if not blocks:
        return rotation.new_zeros(0, 0)
    return torch.block_diag(*blocks)


def _transform(value: torch.Tensor, kind: Any, rotation: torch.Tensor, translation: torch.Tensor, layout: str):
    if kind is None:
        return value
    if kind == CARTESIAN_POINTS:
        return value @ rotation.T.to(value.dtype) + translation.to(value.dtype)
    matrix = irreps_matrix(kind, rotation.to(value.dtype), layout)
    return value @ matrix.T


def assert_equivariant(
    function: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    irreps_in: Sequence[Any],
    irreps_out: Any,
    *,
    permuted_in: Sequence[bool] | None = None,
    permuted_out: Sequence[bool] | bool | None = None,
    reflections: bool = True,
    translations: bool = True,
    trials: int = 3,
    layout: str = "mul_ir",
    generator: torch.Generator | None = None,
) -> None:
    """Asserts ``function(g . inputs) == g . function(inputs)`` for random group elements ``g``.

    ``g`` combines a random orthogonal matrix (a reflection in every other trial when
    ``reflections``), a random translation (applied to ``"cartesian_points"`` inputs only) and,
    where asked, a random permutation of the first axis (atoms).

    Args:
        function: maps the inputs to one tensor or a tuple of tensors.
        inputs: the input tensors.
        irreps_in: per input, its irreps (last axis, e3nn string or Irreps), ``"cartesian_points"``
            (positions: rotated and translated), or ``None`` (invariant, e.g. atomic numbers).
        irreps_out: the same for each output (a single entry when ``function`` returns a tensor).
        permuted_in: per input, whether its first axis is permuted with the atoms.
        permuted_out: per output, whether its first axis is permuted with the atoms.
        reflections: also test improper rotations.
        translations: translate ``"cartesian_points"`` inputs.
        trials: number of random group elements.
        layout: ``"mul_ir"`` or ``"ir_mul"`` for irreps features.
        generator: seeds the random group elements.

    Raises:
        AssertionError: with the failing trial and output when equivariance is broken beyond the
            tolerance table (:func:`eqscale.testing.tolerance`).

    Example:
        >>> import torch, eqscale
        >>> from eqscale.testing import assert_equivariant
        >>> sh = lambda v: eqscale.ops.spherical_harmonics(v, lmax=3)
        >>> assert_equivariant(sh, [torch.randn(10, 3)], ["1o"], "0e+1o+2e+3o")
    """
    from eqscale.o3 import random_rotation  # noqa: PLC0415

    if len(irreps_in) != len(inputs):
        raise ValueError(f"irreps_in must have one entry per input ({len(inputs)}), got {len(irreps_in)}")
    single_output = not isinstance(irreps_out, (list, tuple))
    irreps_out = [irreps_out] if single_output else list(irreps_out)
    permuted_in = list(permuted_in) if permuted_in is not None else [False] * len(inputs)
    if isinstance(permuted_out, bool) or permuted_out is None:
        permuted_out = [bool(permuted_out)] * len(irreps_out)
    reference_dtype = next((x.dtype for x in inputs if x.is_floating_point()), torch.float64)

    outputs = _as_tuple(function(*inputs))
    for trial in range(trials):
        rotation = random_rotation(dtype=torch.float64, generator=generator)
        if reflections and trial % 2 == 1:
            rotation = -rotation
        translation = torch.randn(3, dtype=torch.float64, generator=generator) if translations else torch.zeros(3)
        num_atoms = next((x.shape[0] for x, flag in zip(inputs, permuted_in, strict=True) if flag), 0)
        permutation = torch.randperm(num_atoms, generator=generator)

        moved_inputs = []
        for value, kind, flag in zip(inputs, irreps_in, permuted_in, strict=True):
            value = _transform(value, kind, rotation.to(value.device), translation.to(value.device), layout)
            moved_inputs.append(value[permutation] if flag else value)
        moved_outputs = _as_tuple(function(*moved_inputs))

        pairs = zip(outputs, moved_outputs, irreps_out, permuted_out, strict=True)
        for index, (before, after, kind, flag) in enumerate(pairs):
            expected = _transform(before, kind, rotation.to(before.device), torch.zeros(3), layout)
            expected = expected[permutation] if flag else expected
            assert_close(
                after, expected, message=f"equivariance broken for output {index} in trial {trial} "
                f"({'improper' if bool(torch.linalg.det(rotation) < 0) else 'proper'} rotation, {reference_dtype})"
            )


def _as_tuple(value: Any) -> tuple[torch.Tensor, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
