"""Wigner-D matrices of any degree in e3nn's real basis, and rotation utilities.

``wigner_D(l, R)`` is the matrix with ``Y_l(R x) = wigner_D(l, R) @ Y_l(x)`` for the real spherical
harmonics ``Y_l`` of :mod:`eqscale.o3._spherical_harmonics` (e3nn's basis), so it equals
``e3nn.o3.Irrep(l, p).D_from_matrix(R)``.

How it is computed: ``Y_l`` spans a (2l+1)-dimensional space that rotations map onto itself, so
for a fixed set of ``K > 2l + 1`` well-spread unit vectors ``X`` (rows ``x_k``) the matrix
``A = Y_l(X)`` of shape ``(K, 2l+1)`` has full column rank and

    Y_l(X R^T) = A D(R)^T    =>    D(R)^T = pinv(A) @ Y_l(X R^T).

``pinv(A)`` is computed once per degree (cached); each rotation then costs one spherical-harmonics
evaluation at ``K = 2 (2l + 1)`` points and a ``(2l+1, K) x (K, 2l+1)`` product, ``O(l^3)``, with
no matrix exponential and no Euler angles (so no gimbal-lock singularities). The fit is exact up to
rounding: the points are chosen so that ``cond(A)`` stays below 17 for ``l <= 80``, and the
arithmetic runs in float64.
"""

# ruff: noqa: E741 - l is the physicists' name for the degree
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch

from eqscale.o3._irreps import Irrep
from eqscale.o3._spherical_harmonics import sh_coefficients, solid_harmonics_reference

_AXES = {"x": 0, "y": 1, "z": 2}


# ----------------------------------------------------------------------------------------------
# validation


def _check_l(l: Any) -> int:
    if isinstance(l, bool) or not isinstance(l, int):
        raise TypeError(f"l must be an int (or an Irrep), got {type(l).__name__}: {l!r}")
    if l < 0:
        raise ValueError(f"l must be >= 0, got {l}")
    return l


def _check_float_tensor(value: Any, name: str, trailing: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    n = len(trailing)
    if value.dim() < n or tuple(value.shape[-n:]) != trailing:
        expected = "(..., " + ", ".join(map(str, trailing)) + ")"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
    return value


def _check_dtype(dtype: Any) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (Sequence, torch.Size)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"shape must be an int or a sequence of non-negative ints, got {shape!r}")
    return tuple(shape)


def _eager() -> bool:
    # Data-dependent checks would break torch.compile graphs; they run in eager mode only.
    return not torch.compiler.is_compiling()


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps the fit accurate to ~1e-15 for every input dtype; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


# ----------------------------------------------------------------------------------------------
# rotations


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions ``q = (w, x, y, z)`` (normalised internally).

    ``q`` and ``-q`` give the same rotation; ``(cos(t/2), sin(t/2) n)`` is the rotation by angle
    ``t`` about the unit axis ``n`` (right hand rule), as in ``e3nn.o3.quaternion_to_matrix``.

    Args:
        q: ``(..., 4)`` floating tensor, non-zero along the last axis.

    Returns:
        ``(..., 3, 3)`` rotation matrices, differentiable in ``q``.

    Raises:
        TypeError: ``q`` is not a floating tensor.
        ValueError: ``q`` is not of shape ``(..., 4)``, or (eager mode) a quaternion is zero.

    Example:
        >>> import math, torch
        >>> half = math.pi / 4  # 90 degrees about z
        >>> q = torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)])
        >>> x = torch.tensor([1.0, 0.0, 0.0])
        >>> [round(float(c), 6) + 0.0 for c in quaternion_to_matrix(q) @ x]
        [0.0, 1.0, 0.0]
    """
    q = _check_float_tensor(q, "q", (4,))
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    if _eager() and bool((norm == 0).any()):
        raise ValueError("q contains a zero quaternion, which is not a rotation")
    w, x, y, z = (q / norm).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def random_rotation(
    shape: int | Sequence[int] = (),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotation matrices drawn uniformly (Haar measure) from SO(3).

    A normalised 4D Gaussian is uniform on the unit quaternions, which cover SO(3) twice and
    uniformly.

    Args:
        shape: batch shape.
        dtype: floating dtype (default: ``torch.get_default_dtype()``).
        device: device of the result.
        generator: random generator, for reproducibility.

    Returns:
        ``(*shape, 3, 3)`` proper rotation matrices.

    Example:
        >>> R = random_rotation(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> R.shape, bool(torch.allclose(torch.linalg.det(R), torch.ones(5, dtype=torch.float64)))
        (torch.Size([5, 3, 3]), True)
    """
    shape, dtype = _check_shape(shape), _check_dtype(dtype)
    q = torch.randn(*shape, 4, dtype=dtype, device=device, generator=generator)
    # A draw of exactly 0 has probability ~0; replace it rather than fail.
    q = torch.where((q == 0).all(dim=-1, keepdim=True), torch.ones_like(q), q)
    return quaternion_to_matrix(q)


def random_orthogonal(
    shape: int | Sequence[int] = (),
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Matrices drawn uniformly from O(3).

    A uniform rotation times ``+1`` or ``-1``, each sign with probability 1/2.

    Args:
        shape: batch shape.
        dtype: floating dtype (default: ``torch.get_default_dtype()``).
        device: device of the result.
        generator: random generator, for reproducibility.

    Returns:
        ``(*shape, 3, 3)`` orthogonal matrices, about half of them with determinant -1.

    Example:
        >>> generator = torch.Generator().manual_seed(1)
        >>> Q = random_orthogonal(4, dtype=torch.float64, generator=generator)
        >>> bool(torch.allclose(Q @ Q.transpose(-1, -2), torch.eye(3, dtype=torch.float64)))
        True
    """
    shape, dtype = _check_shape(shape), _check_dtype(dtype)
    rotation = random_rotation(shape, dtype=dtype, device=device, generator=generator)
    sign = torch.randint(0, 2, shape, device=device, generator=generator).to(dtype) * 2 - 1
    return rotation * sign[..., None, None]


def rotation_to_axis(vectors: torch.Tensor, axis: str = "y") -> torch.Tensor:
    """The minimal rotations ``R`` with ``R @ (v / |v|) = e_axis``.

    ``R`` rotates about ``v x e_axis`` by the angle between ``v`` and ``e_axis`` (the rotation of
    Rodrigues' formula), computed as a product of two Householder reflections so that it stays
    orthogonal to rounding and maps ``v`` onto the axis accurately even close to the singular
    direction:

    - ``v . e >= 0``: ``R = H(e) H(v + e)`` (reflect ``v`` to ``-e``, then to ``e``);
    - ``v . e < 0``: ``R = H(n) H(v - e)`` with ``n`` = ``v`` with its ``axis`` component zeroed
      (reflect ``v`` to ``e``, then reflect in a plane containing ``e``).

    Exactly antiparallel vectors (``v / |v| = -e_axis``, where the minimal rotation is not unique)
    get a fixed 180 degree rotation about the next axis in the cycle x -> y -> z -> x: about ``y``
    for ``axis="x"``, about ``z`` for ``axis="y"``, about ``x`` for ``axis="z"``. Near that
    direction the minimal rotation itself depends discontinuously on ``v``; ``R`` is still an
    exact rotation with ``R v / |v| = e``. Gradients are finite everywhere except at zero vectors.

    Args:
        vectors: ``(..., 3)`` floating tensor of non-zero vectors.
        axis: ``"x"``, ``"y"`` (e3nn's polar axis, the default) or ``"z"``.

    Returns:
        ``(..., 3, 3)`` proper rotation matrices, differentiable in ``vectors``.

    Raises:
        TypeError: ``vectors`` is not a floating tensor.
        ValueError: bad shape or ``axis``; in eager mode, a zero-length vector (under
            ``torch.compile`` the check is skipped and such a vector gives NaN).

    Example:
        >>> v = torch.tensor([[1.0, 2.0, 2.0]])
        >>> (rotation_to_axis(v) @ v[0]).round(decimals=5)
        tensor([[0., 3., 0.]])
    """
    vectors = _check_float_tensor(vectors, "vectors", (3,))
    if axis not in _AXES:
        raise ValueError(f"axis must be one of 'x', 'y', 'z', got {axis!r}")
    a = _AXES[axis]
    norm = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    if _eager() and bool((norm == 0).any()):
        raise ValueError("vectors contains a zero-length vector, which has no direction to rotate")
    u = vectors / norm
    eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device)
    e = eye[a].expand_as(u)
    fallback = eye[(a + 2) % 3].expand_as(u)  # H(f) H(e): 180 degrees about axis (a + 1) % 3
    positive = u[..., a : a + 1] >= 0

    # |v + e|, |v - e| >= sqrt(2) on the branch that uses them: no cancellation, no 0/0.
    first = torch.where(positive, u + e, u - e)
    n = u * (1 - eye[a])  # exactly orthogonal to e, so H(n) fixes e exactly
    n_norm = torch.linalg.vector_norm(n, dim=-1, keepdim=True)
    n = torch.where(n_norm > 0, n, fallback)
    second = torch.where(positive, e, n)

    first = first / torch.linalg.vector_norm(first, dim=-1, keepdim=True)
    second = second / torch.linalg.vector_norm(second, dim=-1, keepdim=True)
    # (I - 2 s s^T)(I - 2 t t^T) = I - 2 s s^T - 2 t t^T + 4 (s.t) s t^T
    dot = (first * second).sum(-1)[..., None, None]
    ss = second[..., :, None] * second[..., None, :]
    tt = first[..., :, None] * first[..., None, :]
    st = second[..., :, None] * first[..., None, :]
    return eye - 2 * ss - 2 * tt + 4 * dot * st


# ----------------------------------------------------------------------------------------------
# Wigner D


def _fibonacci_sphere(count: int) -> torch.Tensor:
    index = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - 2 * index / count
    radius = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * index
    points = torch.stack([radius * torch.cos(phi), radius * torch.sin(phi), z], dim=-1)
    # A fixed generic rotation breaks the set's symmetry about the z axis and the x-y plane.
    q = torch.tensor([0.8, 0.3, -0.4, 0.33], dtype=torch.float64)
    return points @ quaternion_to_matrix(q).T


def _build_fit_table(
    l: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points ``X`` (K, 3), ``pinv(Y_l(X))`` (2l+1, K) and the SH coefficients.

    ``K = 2 (2l + 1)`` Fibonacci points keep ``cond(Y_l(X))`` below 17 for every ``l <= 80``
    (checked in the tests), so no data-dependent choice is needed and the table can also be built
    inside a compiled graph.
    """
    coefficients = sh_coefficients(l, "integral", dtype=torch.float64, device=device)
    points = _fibonacci_sphere(2 * (2 * l + 1)).to(device)
    design = solid_harmonics_reference(points, l, coefficients)[:, l * l :]
    tables = (points, torch.linalg.pinv(design), coefficients)
    return tuple(table.to(dtype) for table in tables)  # type: ignore[return-value]


_cached_fit_table = functools.cache(_build_fit_table)


def _fit_table(
    l: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():
        # Dynamo traces through functools.cache; building the small table in the graph is cheap.
        return _build_fit_table(l, dtype, device)
    return _cached_fit_table(l, dtype, device)


def _parity_of(l: Any, p: int | None) -> tuple[int, int]:
    if isinstance(l, (Irrep, str)) or (hasattr(l, "l") and hasattr(l, "p")):
        ir = Irrep(l)
        if p is not None and p != ir.p:
            raise ValueError(f"p={p!r} contradicts the parity of l={ir!r}")
        return ir.l, ir.p
    l = _check_l(l)
    p = 1 if p is None else p
    if p not in (1, -1) or isinstance(p, bool):
        raise ValueError(f"p must be +1 or -1, got {p!r}")
    return l, p


def wigner_D(l: int | Irrep | str, R: torch.Tensor, p: int | None = None) -> torch.Tensor:
    """Real Wigner-D matrices of degree ``l`` (e3nn's basis) for orthogonal matrices ``R``.

    Equal to ``e3nn.o3.Irrep(l, p).D_from_matrix(R)``: for a proper rotation it is ``D_l(R)``,
    the matrix with ``Y_l(R x) = D_l(R) Y_l(x)`` for e3nn's real spherical harmonics; for an
    improper ``R`` (``det R = -1``) it is ``p * D_l(-R)``. Spherical harmonics therefore transform
    with ``p = (-1)^l`` (``Y_l(-x) = (-1)^l Y_l(x)``), polar vectors (``"1o"``) with ``p = -1``
    (``Y_1(x)`` is proportional to ``(x, y, z)``, so ``wigner_D("1o", R)`` is ``R`` itself) and
    pseudovectors (``"1e"``) with ``p = +1``.

    ``R`` is assumed orthogonal (not checked). Cost per matrix: one spherical-harmonics
    evaluation at ``2 (2l + 1)`` points and one small matmul (see the module docstring); computed
    in float64 and returned in ``R.dtype``.

    Args:
        l: degree ``>= 0``, or an irrep (``Irrep``, ``"2o"``...) which also sets ``p``.
        R: ``(..., 3, 3)`` orthogonal matrices, any floating dtype; differentiable.
        p: parity, ``+1`` (default for an int ``l``) or ``-1``; only matters when ``det R < 0``.

    Returns:
        ``(..., 2l + 1, 2l + 1)`` orthogonal matrices with ``D(R1 @ R2) = D(R1) @ D(R2)``.

    Raises:
        TypeError: ``R`` is not a floating tensor, or ``l`` is not an int/irrep.
        ValueError: ``R`` is not ``(..., 3, 3)``, ``l < 0``, or ``p`` is not +-1 (or contradicts
            the irrep).

    Example:
        >>> R = random_rotation(dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> D = wigner_D(2, R)
        >>> D.shape, bool(torch.allclose(D @ D.T, torch.eye(5, dtype=torch.float64)))
        (torch.Size([5, 5]), True)
        >>> bool(torch.allclose(wigner_D("1o", -R), -R))
        True
    """
    l, p = _parity_of(l, p)
    R = _check_float_tensor(R, "R", (3, 3))
    work = _compute_dtype(R.device)
    points, projector, coefficients = _fit_table(l, work, R.device)
    matrices = R.to(work)

    # det of a 3x3 as (r0 x r1) . r2; only its sign is used, so no gradient flows through it.
    rows = matrices.unbind(-2)
    det = (torch.linalg.cross(rows[0], rows[1]) * rows[2]).sum(-1)
    sign = torch.where(det < 0, -1.0, 1.0).to(work)[..., None, None]
    proper = matrices * sign

    # Rows R x_k of X R^T, then the degree-l block of the harmonics at those points.
    rotated = torch.einsum("...ij,kj->...ki", proper, points)
    values = solid_harmonics_reference(rotated, l, coefficients)[..., l * l :]  # (..., K, 2l+1)
    D = torch.einsum("...ka,bk->...ab", values, projector)  # (pinv(A) @ Y_l(X R^T))^T
    if p == -1:
        D = D * sign
    return D.to(R.dtype)


def wigner_D_from_quaternion(l: int | Irrep | str, q: torch.Tensor) -> torch.Tensor:
    """Wigner-D matrices of the rotations of quaternions ``q = (w, x, y, z)``.

    Same as ``wigner_D(l, quaternion_to_matrix(q))``; quaternions are normalised internally and
    only describe proper rotations, so parity plays no role.

    Args:
        l: degree ``>= 0`` (or an irrep).
        q: ``(..., 4)`` floating tensor of non-zero quaternions; differentiable.

    Returns:
        ``(..., 2l + 1, 2l + 1)``.

    Example:
        >>> q = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        >>> bool(torch.allclose(wigner_D_from_quaternion(3, q), torch.eye(7, dtype=torch.float64)))
        True
    """
    return wigner_D(l, quaternion_to_matrix(q))
