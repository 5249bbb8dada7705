"""Irrep / Irreps against e3nn (the oracle) and cuequivariance round trips."""

import cuequivariance as cue
import pytest
from e3nn import o3 as e3nn_o3

from eqscale.o3 import Irrep, Irreps, MulIr

STRINGS = [
    "0e",
    "1o",
    "32x0e+16x1o+8x2e",
    "2x0e+0x1o+3x0e+1x2y+4x1o+1x1o",
    " 3x1o + 2x0e ",
    "1x0o+1x1e+2x3y+5x4o",
    "10x10e+1x7o",
]


@pytest.mark.parametrize("text", STRINGS)
def test_parse_matches_e3nn(text):
    ours, theirs = Irreps(text), e3nn_o3.Irreps(text)
    assert repr(ours) == repr(theirs)
    assert ours.dim == theirs.dim
    assert ours.num_irreps == theirs.num_irreps
    assert ours.lmax == theirs.lmax
    assert ours.ls == theirs.ls
    assert ours.slices() == theirs.slices()
    assert repr(ours.simplify()) == repr(theirs.simplify())
    assert repr(ours.sort()) == repr(theirs.sort().irreps)
    for _, ir in theirs:
        assert ours.count(str(ir)) == theirs.count(ir)


@pytest.mark.parametrize("text", STRINGS)
def test_round_trips(text):
    ours = Irreps(text)
    # e3nn -> eqscale -> e3nn
    assert Irreps(e3nn_o3.Irreps(text)) == ours
    assert e3nn_o3.Irreps(repr(ours)) == e3nn_o3.Irreps(text)
    # cuequivariance -> eqscale -> cuequivariance
    cue_irreps = cue.Irreps("O3", repr(ours))
    assert Irreps(cue_irreps) == ours
    assert cue.Irreps("O3", repr(Irreps(cue_irreps))) == cue_irreps
    # list forms and idempotence
    assert Irreps(list(ours)) == ours
    assert Irreps([(mul, (ir.l, ir.p)) for mul, ir in ours]) == ours
    assert Irreps(ours) is ours


def test_irrep_basics():
    assert Irrep("2e") == Irrep(2, 1) == (2, 1)
    assert Irrep("3y") == Irrep(3, -1) and Irrep("2y") == Irrep(2, 1)
    assert Irrep(Irrep("1o")) == Irrep(1, -1)
    assert Irrep(cue.O3(2, -1)) == Irrep("2o")
    assert Irrep(e3nn_o3.Irrep("4e")) == Irrep(4, 1)
    assert Irrep("5o").dim == 11 and repr(Irrep(5, -1)) == "5o"
    assert MulIr(3, Irrep("1o")).dim == 9 and repr(MulIr(3, Irrep("1o"))) == "3x1o"


@pytest.mark.parametrize("a", ["0e", "1o", "2e", "2o", "3o"])
@pytest.mark.parametrize("b", ["0o", "1e", "1o", "3e"])
def test_product_selection_rule_matches_e3nn(a, b):
    assert [repr(ir) for ir in Irrep(a) * Irrep(b)] == [
        repr(ir) for ir in e3nn_o3.Irrep(a) * e3nn_o3.Irrep(b)
    ]


@pytest.mark.parametrize("lmax", [0, 1, 4])
@pytest.mark.parametrize("p", [1, -1])
def test_spherical_harmonics_irreps(lmax, p):
    assert repr(Irreps.spherical_harmonics(lmax, p)) == repr(
        e3nn_o3.Irreps.spherical_harmonics(lmax, p)
    )


def test_operators_and_hash():
    a, b = Irreps("2x0e"), Irreps("1x1o")
    assert a + b == "2x0e+1x1o"
    assert a + "1x1o" == Irreps("2x0e+1x1o")
    assert b * 3 == "1x1o+1x1o+1x1o"
    assert hash(Irreps("2x0e")) == hash(Irreps([(2, "0e")]))
    assert Irreps("") == Irreps() and Irreps().dim == 0
    assert Irreps("1o") != "not irreps"


@pytest.mark.parametrize("text", ["3x", "1q", "x1o", "2x1o+", "-1e", "1.5e", "2*1o", "1o 2e"])
def test_bad_strings(text):
    with pytest.raises(ValueError, match="cannot parse"):
        Irreps(text)


def test_bad_inputs():
    with pytest.raises(ValueError, match="cannot parse irrep"):
        Irrep("1")
    with pytest.raises(ValueError, match="l must be"):
        Irrep(-1, 1)
    with pytest.raises(ValueError, match="p must be"):
        Irrep(1, 0)
    with pytest.raises(TypeError, match="Irrep"):
        Irrep(3.0)
    with pytest.raises(ValueError, match="multiplicity"):
        Irreps([(-1, "0e")])
    with pytest.raises(ValueError, match="lmax"):
        _ = Irreps().lmax
    with pytest.raises(ValueError, match="lmax"):
        Irreps.spherical_harmonics(-1)
