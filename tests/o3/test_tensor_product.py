"""Tensor-product planning and the dense reference against e3nn (the numerical spec) and
cuequivariance-torch; FLOP counts against an independent count from e3nn's dense CG tensors."""

import itertools
import math
import random
import re

import numpy as np
import pytest
import torch
from e3nn import o3 as e3o3

from eqscale.o3 import (
    Instruction,
    Irreps,
    TensorProductPlan,
    plan_tensor_product,
    tensor_product_reference,
    uvu_irreps_out,
)

NORMALIZATIONS = list(itertools.product(("component", "norm", "none"), ("element", "path", "none")))
RTOL = 1e-10


def _random_irreps(rng: random.Random, n_terms: int, lmax: int, max_mul: int) -> str:
    return "+".join(
        f"{rng.randint(1, max_mul)}x{rng.randint(0, lmax)}{rng.choice('eo')}"
        for _ in range(n_terms)
    )


def _family() -> dict[str, tuple[str, str, str]]:
    """(irreps_in1, irreps_in2, irreps_out for uvw) per case; seeded."""
    rng = random.Random(1234)
    cases = {}
    for index in range(3):
        cases[f"random{index}"] = (
            _random_irreps(rng, 4, 4, 4),
            _random_irreps(rng, 3, 4, 2),
            _random_irreps(rng, 5, 4, 3),
        )
    cases["scalars"] = ("3x0e+2x0e", "2x0e+1x0e", "4x0e+1x0e")
    cases["zero_mul"] = ("2x0e+0x1o+3x1o", "1x1o+1x0e", "2x1o+0x0e+1x1e+2x0e")
    cases["l6"] = ("2x6e+1x2o", "1x0e+1x3o+1x2e", "2x0e+1x6o+2x4e+1x3o+1x6e+1x5o")
    return cases


CASES = _family()
MACE = ("4x0e+4x1o+4x2e", "0e+1o+2e+3o", "4x0e+4x1o+4x2e+4x3o")  # shared uvu outputs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny einsums: intra-op threads only add sync cost (10-100x on a busy box)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class _Float64Default:
    """e3nn bakes its CG buffers in the default dtype at construction: build them in float64."""

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def _e3nn_tp(in1, in2, out, instructions, *, compile=True, **kwargs):
    with _Float64Default():
        return e3o3.TensorProduct(
            in1,
            in2,
            out,
            instructions,
            internal_weights=False,
            compile_left_right=compile,
            _optimize_einsums=False,  # same numbers, much faster construction
            **kwargs,
        )


def _uvw_instructions(in1, in2, out):
    """e3nn FullyConnectedTensorProduct's instruction loop, written independently."""
    in1, in2, out = e3o3.Irreps(in1), e3o3.Irreps(in2), e3o3.Irreps(out)
    return [
        (i1, i2, io, "uvw", True)
        for i1, (_, ir1) in enumerate(in1)
        for i2, (_, ir2) in enumerate(in2)
        for io, (_, ir_out) in enumerate(out)
        if ir_out in ir1 * ir2
    ]


def _mace_uvu(in1, in2, target=None):
    """MACE's tp_out_irreps_with_instructions (e3nn objects), as reference for uvu_irreps_out."""
    in1, in2 = e3o3.Irreps(in1), e3o3.Irreps(in2)
    terms, instructions = [], []
    for i, (mul, ir_in) in enumerate(in1):
        for j, (_, ir_edge) in enumerate(in2):
            for ir_out in ir_in * ir_edge:
                if target is None or ir_out in target:
                    instructions.append((i, j, len(terms), "uvu", True))
                    terms.append((mul, ir_out))
    irreps_out, permut, _ = e3o3.Irreps(terms).sort()
    instructions = sorted(
        ((a, b, permut[k], m, t) for a, b, k, m, t in instructions), key=lambda x: x[2]
    )
    return irreps_out, instructions


def _to_ir_mul(x: torch.Tensor, irreps) -> torch.Tensor:
    blocks = [
        x[:, s].reshape(x.shape[0], mul, ir.dim).transpose(1, 2).reshape(x.shape[0], -1)
        for (mul, ir), s in zip(Irreps(irreps), Irreps(irreps).slices(), strict=True)
    ]
    return torch.cat(blocks, dim=1) if blocks else x


def _assert_instructions_match(plan: TensorProductPlan, tp) -> None:
    assert plan.weight_numel == tp.weight_numel
    assert len(plan.instructions) == len(tp.instructions)
    offset = 0
    for ours, theirs in zip(plan.instructions, tp.instructions, strict=True):
        assert (ours.i_in1, ours.i_in2, ours.i_out) == (theirs.i_in1, theirs.i_in2, theirs.i_out)
        assert ours.connection_mode == theirs.connection_mode
        assert ours.has_weight == theirs.has_weight
        assert tuple(ours.path_shape) == tuple(theirs.path_shape)
        # e3nn stores its normalisation coefficient sqrt(alpha) in Instruction.path_weight.
        assert ours.coefficient == pytest.approx(theirs.path_weight, rel=1e-12, abs=1e-300)
        assert ours.weight_offset == offset
        assert ours.weight_numel == (math.prod(theirs.path_shape) if theirs.has_weight else 0)
        offset += ours.weight_numel


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _compare_outputs(
    in1,
    in2,
    out,
    instructions,
    *,
    shared,
    irrep_norm="component",
    path_norm="element",
    seed=0,
    **plan_kwargs,
) -> float:
    tp = _e3nn_tp(
        in1,
        in2,
        out,
        instructions,
        shared_weights=shared,
        irrep_normalization=irrep_norm,
        path_normalization=path_norm,
        **plan_kwargs,
    )
    plan = plan_tensor_product(
        in1,
        in2,
        out,
        instructions,
        irrep_normalization=irrep_norm,
        path_normalization=path_norm,
        **plan_kwargs,
    )
    _assert_instructions_match(plan, tp)
    gen = torch.Generator().manual_seed(seed)
    num = 7
    x1 = torch.randn(num, plan.irreps_in1.dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(num, plan.irreps_in2.dim, generator=gen, dtype=torch.float64)
    w_shape = (plan.weight_numel,) if shared else (num, plan.weight_numel)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64)
    expected = tp(x1, x2, w)
    worst = _max_rel(tensor_product_reference(plan, x1, x2, w), expected)
    plan_t = plan_tensor_product(
        in1,
        in2,
        out,
        instructions,
        irrep_normalization=irrep_norm,
        path_normalization=path_norm,
        layout="ir_mul",
        **plan_kwargs,
    )
    got_t = tensor_product_reference(plan_t, _to_ir_mul(x1, in1), _to_ir_mul(x2, in2), w)
    worst = max(worst, _max_rel(got_t, _to_ir_mul(expected, out)))
    assert worst < RTOL, worst
    return worst


# ---------------------------------------------------------------------------------------------
# (a) instructions, weight layout and normalisation coefficients


@pytest.mark.parametrize("name", sorted(CASES))
def test_uvw_instructions_match_e3nn_fully_connected(name):
    in1, in2, out = CASES[name]
    for irrep_norm, path_norm in NORMALIZATIONS:
        with _Float64Default():
            tp = e3o3.FullyConnectedTensorProduct(
                in1,
                in2,
                out,
                irrep_normalization=irrep_norm,
                path_normalization=path_norm,
                internal_weights=False,
                compile_left_right=False,
            )
        plan = plan_tensor_product(
            in1, in2, out, mode="uvw", irrep_normalization=irrep_norm, path_normalization=path_norm
        )
        _assert_instructions_match(plan, tp)


@pytest.mark.parametrize("name", sorted(CASES))
def test_uvu_instructions_match_e3nn(name):
    in1, in2, _ = CASES[name]
    for sort in (False, True):
        irreps_out, instructions = uvu_irreps_out(in1, in2, sort=sort)
        if sort:  # exactly MACE's construction
            mace_out, mace_instructions = _mace_uvu(in1, in2)
            assert str(irreps_out) == str(mace_out)
            assert instructions == mace_instructions
        for irrep_norm, path_norm in NORMALIZATIONS:
            tp = _e3nn_tp(
                in1,
                in2,
                irreps_out,
                instructions,
                compile=False,
                irrep_normalization=irrep_norm,
                path_normalization=path_norm,
            )
            plan = plan_tensor_product(
                in1,
                in2,
                irreps_out,
                instructions,
                irrep_normalization=irrep_norm,
                path_normalization=path_norm,
            )
            _assert_instructions_match(plan, tp)


def test_uvu_irreps_out_filter_matches_mace():
    target = e3o3.Irreps("0e+1o+2e")
    ours = uvu_irreps_out(MACE[0], MACE[1], ["0e", "1o", "2e"], sort=True)
    theirs = _mace_uvu(MACE[0], MACE[1], target)
    assert str(ours[0]) == str(theirs[0]) and ours[1] == theirs[1]
    assert uvu_irreps_out(MACE[0], MACE[1], "0e+1o+2e", sort=True) == ours


def test_auto_uvu_with_shared_outputs_matches_e3nn():
    in1, in2, out = MACE
    instructions = [
        (i1, i2, io, "uvu", True)
        for i1, (_, ir1) in enumerate(e3o3.Irreps(in1))
        for i2, (_, ir2) in enumerate(e3o3.Irreps(in2))
        for io, (_, ir_out) in enumerate(e3o3.Irreps(out))
        if ir_out in ir1 * ir2
    ]
    for irrep_norm, path_norm in NORMALIZATIONS:
        tp = _e3nn_tp(
            in1,
            in2,
            out,
            instructions,
            compile=False,
            irrep_normalization=irrep_norm,
            path_normalization=path_norm,
        )
        plan = plan_tensor_product(
            in1, in2, out, irrep_normalization=irrep_norm, path_normalization=path_norm
        )
        _assert_instructions_match(plan, tp)
    # filter_ir_out keeps the e3nn order of the remaining paths.
    plan = plan_tensor_product(in1, in2, out, filter_ir_out=["1o", "2e"])
    kept = [ins[:3] for ins in instructions if str(e3o3.Irreps(out)[ins[2]].ir) in ("1o", "2e")]
    assert [(i.i_in1, i.i_in2, i.i_out) for i in plan.instructions] == kept


def test_variances_path_weights_and_instruction_objects_match_e3nn():
    in1, in2, out = "3x0e+2x1o", "1x0e+2x1o", "2x0e+3x1o+1x1e"
    instructions = [
        (0, 0, 0, "uvw", True, 0.5),
        (1, 1, 0, "uvw", True),
        (0, 1, 1, "uvw", True, 2.0),
        (1, 0, 1, "uvw", True),
        (1, 1, 2, "uvw", True, 0.0),
    ]
    variances = dict(in1_var=[0.5, 2.0], in2_var=[1.5, 0.25], out_var=[3.0, 1.0, 0.5])
    for irrep_norm, path_norm in NORMALIZATIONS:
        _compare_outputs(
            in1,
            in2,
            out,
            instructions,
            shared=False,
            irrep_norm=irrep_norm,
            path_norm=path_norm,
            **variances,
        )
    as_objects = [Instruction(*ins) for ins in instructions]
    assert plan_tensor_product(in1, in2, out, as_objects, **variances) == plan_tensor_product(
        in1, in2, out, instructions, **variances
    )


def test_accepts_cuequivariance_and_eqscale_irreps():
    import cuequivariance as cue

    plan = plan_tensor_product(cue.Irreps("O3", "4x0e+4x1o"), Irreps("0e+1o"), "4x0e+4x1o+4x1e")
    assert plan == plan_tensor_product("4x0e+4x1o", "0e+1o", "4x0e+4x1o+4x1e")
    assert hash(plan) == hash(plan_tensor_product("4x0e+4x1o", "0e+1o", "4x0e+4x1o+4x1e"))
    text = repr(plan)
    assert "5 paths" in text and "20 weights" in text and "uvu" in text


# ---------------------------------------------------------------------------------------------
# (b) reference output vs e3nn, fp64, both layouts


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_e3nn(name):
    in1, in2, out = CASES[name]
    # l=6 CG tensors are slow to build in e3nn: keep only the output irreps of the uvw case there.
    keep = [ir for _, ir in Irreps(out)] if name == "l6" else None
    irreps_out, uvu = uvu_irreps_out(in1, in2, keep, sort=True)
    _compare_outputs(in1, in2, irreps_out, uvu, shared=False)
    uvw = _uvw_instructions(in1, in2, out)
    _compare_outputs(in1, in2, out, uvw, shared=True, seed=1)
    _compare_outputs(in1, in2, out, uvw, shared=False, seed=2)


@pytest.mark.parametrize("irrep_norm,path_norm", NORMALIZATIONS)
def test_reference_matches_e3nn_all_normalizations(irrep_norm, path_norm):
    in1, in2, out = MACE
    plan = plan_tensor_product(in1, in2, out)
    uvu = [(i.i_in1, i.i_in2, i.i_out, "uvu", True) for i in plan.instructions]
    _compare_outputs(in1, in2, out, uvu, shared=False, irrep_norm=irrep_norm, path_norm=path_norm)
    in1, in2, out = CASES["random0"]
    _compare_outputs(
        in1,
        in2,
        out,
        _uvw_instructions(in1, in2, out),
        shared=True,
        irrep_norm=irrep_norm,
        path_norm=path_norm,
    )


def test_reference_unweighted_and_uuu_match_e3nn():
    in1, in2, out = "3x0e+3x1o", "3x1o+3x0e+2x1e", "3x1e+3x0e+3x1o"
    instructions = [
        (1, 0, 0, "uuu", True),
        (1, 0, 1, "uuu", False),
        (0, 0, 2, "uuu", True, 0.3),
        (1, 2, 2, "uvu", False),
        (1, 1, 2, "uvu", True),
        (0, 2, 0, "uvu", False),
    ]
    for shared in (True, False):
        _compare_outputs(in1, in2, out, instructions, shared=shared)


# ---------------------------------------------------------------------------------------------
# (c) FLOP counts


def _independent_path_products(in1, in2, out, ins) -> int:
    (m1, ir1), (m2, ir2), (mo, ir_out) = (
        e3o3.Irreps(in1)[ins.i_in1],
        e3o3.Irreps(in2)[ins.i_in2],
        e3o3.Irreps(out)[ins.i_out],
    )
    if 0 in (m1, m2, mo):
        return 0
    cg = e3o3.wigner_3j(ir1.l, ir2.l, ir_out.l, dtype=torch.float64).numpy()
    nnz = np.count_nonzero(np.abs(cg) > 1e-12)
    nnz_ik = np.count_nonzero(np.any(np.abs(cg) > 1e-12, axis=1))
    d_out = ir_out.dim
    if ins.connection_mode == "uvw":
        return m2 * nnz + m1 * m2 * nnz_ik + m1 * m2 * mo * d_out
    if ins.connection_mode == "uvu":
        return m2 * nnz + m1 * m2 * nnz_ik + (m1 * m2 * d_out if ins.has_weight else 0)
    return m1 * nnz + m1 * nnz_ik + (m1 * d_out if ins.has_weight else 0)


@pytest.mark.parametrize("name", sorted(CASES) + ["mace"])
def test_flops_match_independent_count(name):
    in1, in2, out = MACE if name == "mace" else CASES[name]
    plans = [plan_tensor_product(in1, in2, out, _uvw_instructions(in1, in2, out))]
    irreps_out, uvu = uvu_irreps_out(in1, in2)
    plans.append(plan_tensor_product(in1, in2, irreps_out, uvu))
    for plan in plans:
        expected = sum(
            _independent_path_products(plan.irreps_in1, plan.irreps_in2, plan.irreps_out, ins)
            for ins in plan.instructions
        )
        for ins in plan.instructions:
            assert ins.cg_nnz == np.count_nonzero(plan.dense_cg(ins).numpy())
        assert plan.flops(1) == 2 * expected
        assert (
            plan.flops(13, shared_weights=True)
            == plan.flops(13, shared_weights=False)
            == 26 * expected
        )
        assert plan.flops(0) == 0


def test_flops_hand_count():
    # 1o x 1o -> 1e is the cross product: 6 CG nonzeros, 6 (i, k) pairs, d_out = 3.
    plan = plan_tensor_product("1x1o", "1x1o", "1x1e", mode="uvu")
    assert plan.flops(1) == 2 * (6 + 6 + 3)
    # uvw 2x0e x 3x0e -> 4x0e: 3 + 2*3 + 2*3*4 products.
    plan = plan_tensor_product("2x0e", "3x0e", "4x0e", mode="uvw")
    assert plan.flops(5) == 5 * 2 * (3 + 6 + 24)


@pytest.mark.parametrize("mode", ["uvw", "uvu", "uuu"])
def test_flop_factorisation_is_exact(mode):
    """Runs the documented three-stage factorisation with explicit loops, counting every product."""
    in1, in2 = ("2x1o+2x2e", "2x1o+2x2e") if mode == "uuu" else ("3x1o+2x2e", "2x1o+1x2e")
    out = (
        "2x1e+2x2e+2x3o"
        if mode == "uuu"
        else ("3x1e+3x2o+2x3o+2x1e" if mode == "uvu" else "2x1e+1x2o+2x3o")
    )
    if mode == "uvu":
        plan = plan_tensor_product(
            in1, in2, out, [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 1, 3, "uvu", False)]
        )
    elif mode == "uuu":
        plan = plan_tensor_product(
            in1, in2, out, [(0, 0, 0, "uuu", True), (1, 1, 1, "uuu", False), (0, 1, 2, "uuu", True)]
        )
    else:
        plan = plan_tensor_product(in1, in2, out, mode="uvw")
    gen = torch.Generator().manual_seed(3)
    x1 = torch.randn(1, plan.irreps_in1.dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(1, plan.irreps_in2.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(plan.weight_numel, generator=gen, dtype=torch.float64)
    out_blocks = [np.zeros((mul, ir.dim)) for mul, ir in plan.irreps_out]
    products = 0
    for ins in plan.instructions:
        (m1, ir1), (m2, ir2), (mo, _) = (
            plan.irreps_in1[ins.i_in1],
            plan.irreps_in2[ins.i_in2],
            plan.irreps_out[ins.i_out],
        )
        a = x1[0, plan.irreps_in1.slices()[ins.i_in1]].reshape(m1, ir1.dim).numpy()
        b = x2[0, plan.irreps_in2.slices()[ins.i_in2]].reshape(m2, ir2.dim).numpy()
        if ins.has_weight:
            weights = (
                w[ins.weight_offset : ins.weight_offset + ins.weight_numel]
                .reshape(ins.path_shape)
                .numpy()
            )
        vs = range(m2) if mode != "uuu" else range(m1)
        y = {}  # stage 1: y[v, i, k] = sum_j (c C_ijk) x2[v, j]
        for v in vs:
            for i, j, k, value in ins.cg_nonzeros:
                y[v, i, k] = y.get((v, i, k), 0.0) + value * ins.coefficient * b[v, j]
                products += 1
        t = {}  # stage 2: t[u, v, k] = sum_i x1[u, i] y[v, i, k]
        for u in range(m1):
            for (v, i, k), value in y.items():
                if mode == "uuu" and v != u:
                    continue
                t[u, v, k] = t.get((u, v, k), 0.0) + a[u, i] * value
                products += 1
        for (u, v, k), value in t.items():  # stage 3: weights on the output side
            if mode == "uvw":
                for wo in range(mo):
                    out_blocks[ins.i_out][wo, k] += weights[u, v, wo] * value
                    products += 1
            elif ins.has_weight:
                out_blocks[ins.i_out][u, k] += (
                    weights[u, v] if mode == "uvu" else weights[u]
                ) * value
                products += 1
            else:
                out_blocks[ins.i_out][u, k] += value
    expected = tensor_product_reference(plan, x1, x2, w)[0].numpy()
    np.testing.assert_allclose(
        np.concatenate([blk.ravel() for blk in out_blocks]), expected, rtol=1e-12, atol=1e-12
    )
    assert plan.flops(1) == 2 * products


# ---------------------------------------------------------------------------------------------
# (d) cuequivariance-torch channelwise tensor product (pure-torch "naive" method on CPU)


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
def test_matches_cuequivariance_channelwise(layout):
    cue = pytest.importorskip("cuequivariance")
    cuet = pytest.importorskip("cuequivariance_torch")
    in1, in2 = cue.Irreps("O3", "4x0e+3x1o+2x2e+1x1e"), cue.Irreps("O3", "0e+1o+2e")
    module = cuet.ChannelWiseTensorProduct(
        in1,
        in2,
        layout=getattr(cue, layout),
        shared_weights=False,
        internal_weights=False,
        method="naive",
        dtype=torch.float64,
    )
    # cuequivariance loops (i1, i2, ir_out) like uvu_irreps_out, then stably sorts the outputs in
    # its own irrep order, carrying the weight segments along; rebuild that permutation here.
    unsorted, instructions = uvu_irreps_out(in1, in2)
    sorted_irreps, perm, _ = cue.Irreps("O3", [(mul, f"{ir}") for mul, ir in unsorted]).sort()
    assert Irreps(sorted_irreps) == Irreps(module.irreps_out)
    instructions = sorted(
        ((a, b, perm[k], m, t) for a, b, k, m, t in instructions), key=lambda ins: ins[2]
    )
    plan = plan_tensor_product(in1, in2, module.irreps_out, instructions, layout=layout)
    assert plan.weight_numel == module.weight_numel
    gen = torch.Generator().manual_seed(4)
    x1 = torch.randn(6, in1.dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(6, in2.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(6, plan.weight_numel, generator=gen, dtype=torch.float64)
    expected = module(x1, x2, w)
    assert _max_rel(tensor_product_reference(plan, x1, x2, w), expected) < RTOL


# ---------------------------------------------------------------------------------------------
# (e) bad input


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            dict(instructions=[(0, 5, 0, "uvw", True)]),
            ValueError,
            r"instructions\[0\]: i_in2=5 out of range",
        ),
        (dict(instructions=[(0, 0, 3, "uvw", True)]), ValueError, r"i_out=3 out of range"),
        (
            dict(instructions=[(0, 1, 0, "uvw", True)]),
            ValueError,
            r"forbidden path 0e x 1o -> 0e \(parity",
        ),
        (
            dict(instructions=[(1, 1, 2, "uvw", True)], irreps_out="4x0e+4x1o+4x3e"),
            ValueError,
            r"triangle",
        ),
        (
            dict(instructions=[(0, 0, 0, "uvu", True)], irreps_out="2x0e"),
            ValueError,
            r"'uvu' needs mul_out == mul1",
        ),
        (
            dict(instructions=[(0, 0, 0, "uuu", True)]),
            ValueError,
            r"'uuu' needs mul1 == mul2 == mul_out",
        ),
        (
            dict(instructions=[(0, 0, 0, "uvw", False)]),
            ValueError,
            r"'uvw' requires has_weight=True",
        ),
        (
            dict(instructions=[(0, 0, 0, "uvx", True)]),
            ValueError,
            r"connection_mode must be one of",
        ),
        (dict(instructions=[(0, 0, 0, "uvw")]), ValueError, r"instructions\[0\] must be \(i_in1"),
        (
            dict(instructions=[(0, 0, 0, "uvw", True, -1.0)]),
            ValueError,
            r"path_weight must be >= 0",
        ),
        (dict(instructions=[(0.0, 0, 0, "uvw", True)]), TypeError, r"i_in1 must be an int"),
        (
            dict(instructions=[(0, 0, 0, "uvw", True)], filter_ir_out=["0e"]),
            ValueError,
            r"filter_ir_out only",
        ),
        (
            dict(irreps_out="2x0e+4x1o"),
            ValueError,
            r"mode='uvu' needs irreps_out entries .* uvu_irreps_out",
        ),
        (dict(mode="vvv"), ValueError, r"mode must be one of"),
        (dict(irrep_normalization="unit"), ValueError, r"irrep_normalization must be one of"),
        (dict(path_normalization="elem"), ValueError, r"path_normalization must be one of"),
        (dict(layout="ir-mul"), ValueError, r"layout must be one of"),
        (dict(irreps_out="4x0e+4xq"), ValueError, r"irreps_out: cannot parse"),
        (dict(in1_var=[1.0]), ValueError, r"in1_var must have one entry per irreps entry \(2\)"),
    ],
)
def test_bad_plan_arguments(kwargs, error, match):
    args = dict(irreps_in1="4x0e+4x1o", irreps_in2="0e+1o", irreps_out="4x0e+4x1o")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        plan_tensor_product(**args)


def test_bad_reference_arguments():
    plan = plan_tensor_product("4x0e+4x1o", "0e+1o", "4x0e+4x1o")
    x1, x2, w = torch.randn(3, 16), torch.randn(3, 4), torch.randn(3, plan.weight_numel)
    cases = [
        ((x1[:, :-1], x2, w), ValueError, r"x1 must have shape \(Z, 16\)"),
        ((x1, x2[None], w), ValueError, r"x2 must have shape \(Z, 4\)"),
        ((x1, x2[:2], w), ValueError, r"same number of rows"),
        ((x1, x2, w[:, :-1]), ValueError, r"weights must have shape \(16,\) or \(3, 16\)"),
        ((x1, x2, w.double()), TypeError, r"weights must match x1's dtype"),
        ((x1, x2.double(), w), TypeError, r"x2 must match x1's dtype"),
        ((x1.long(), x2, w), TypeError, r"x1 must be floating point"),
        ((x1, x2, None), ValueError, r"weights are required"),
        ((x1.numpy(), x2, w), TypeError, r"x1 must be a torch.Tensor"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            tensor_product_reference(plan, *args)
    with pytest.raises(TypeError, match="plan must be a TensorProductPlan"):
        tensor_product_reference("plan", x1, x2, w)
    with pytest.raises(ValueError, match="num_edges must be a non-negative int"):
        plan.flops(-1)
    with pytest.raises(ValueError, match=re.escape("instruction index 9 out of range")):
        plan.dense_cg(9)


def test_plan_survives_pickle_and_deepcopy_in_another_process():
    import copy
    import os
    import pickle
    import subprocess
    import sys

    plan = plan_tensor_product("8x0e+8x1o+4x2e", "0e+1o+2e", "8x0e+8x1o+4x2e", mode="uvw")
    assert hash(plan) == hash(plan_tensor_product("8x0e+8x1o+4x2e", "0e+1o+2e", "8x0e+8x1o+4x2e", mode="uvw"))
    expected_flops = plan.flops(7)  # fills the cached per-edge count before copying
    for copied in (pickle.loads(pickle.dumps(plan)), copy.deepcopy(plan)):
        assert copied == plan and hash(copied) == hash(plan) and copied.flops(7) == expected_flops
    # String hashes differ between processes: a hash cached in one must not travel to another.
    script = (
        "import pickle, sys\n"
        "from eqscale.o3 import plan_tensor_product\n"
        "loaded = pickle.loads(sys.stdin.buffer.read())\n"
        "fresh = plan_tensor_product('8x0e+8x1o+4x2e', '0e+1o+2e', '8x0e+8x1o+4x2e', mode='uvw')\n"
        "print(loaded == fresh and hash(loaded) == hash(fresh) and {fresh: 1}[loaded] == 1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=pickle.dumps(plan), capture_output=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert result.stdout.strip() == b"True"
