"""Irreducible representations of O(3) and their direct sums, in e3nn's notation.

An irrep is a degree ``l >= 0`` and a parity ``p = +1 ("e") or -1 ("o")``; ``Irreps`` is an
ordered list of ``(multiplicity, irrep)`` pairs such as ``"32x0e+16x1o+8x2e"``. The layout of a
feature vector is ``mul_ir`` (e3nn: for each entry, ``mul`` consecutive copies of the ``2l+1``
components) unless a function says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple

_IRREP_PATTERN = re.compile(r"^\s*(\d+)\s*([eoy])\s*$")
_TERM_PATTERN = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+\s*[eoy])\s*$")


class Irrep(tuple):
    """One irrep of O(3): degree ``l`` and parity ``p`` (+1 even, -1 odd).

    Example:
        >>> Irrep("2e").dim
        5
        >>> Irrep(1, -1)
        1o
    """

    @property
    def l(self) -> int:  # noqa: E743 - the physicists' name
        """Degree."""
        return self[0]

    @property
    def p(self) -> int:
        """Parity, +1 (even) or -1 (odd)."""
        return self[1]

    def __new__(cls, l: int | str | Irrep | Any, p: int | None = None) -> Irrep:  # noqa: E741
        if p is None:
            if isinstance(l, Irrep):
                return l
            if isinstance(l, str):
                match = _IRREP_PATTERN.match(l)
                if match is None:
                    raise ValueError(f"cannot parse irrep {l!r}: expected e.g. '0e', '1o', '2e'")
                degree, parity = int(match.group(1)), match.group(2)
                # "y" is e3nn's spherical-harmonic parity (-1)^l.
                return super().__new__(cls, (degree, {"e": 1, "o": -1, "y": (-1) ** degree}[parity]))
            if hasattr(l, "l") and hasattr(l, "p"):  # cuequivariance O3 irrep
                return cls(int(l.l), int(l.p))
            raise TypeError(f"cannot make an Irrep from {type(l).__name__}: {l!r}")
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"l must be a non-negative int, got {l!r}")
        if p not in (1, -1):
            raise ValueError(f"p must be +1 or -1, got {p!r}")
        return super().__new__(cls, (l, p))

    @property
    def dim(self) -> int:
        """Dimension ``2l + 1``."""
        return 2 * self.l + 1

    def __getnewargs__(self) -> tuple[int, int]:
        # pickle and copy.deepcopy rebuild a tuple subclass as cls(*these): (l, p), not the tuple.
        return (self.l, self.p)

    def __repr__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    def __mul__(self, other: Irrep) -> Iterator[Irrep]:
        """The irreps in the tensor product ``self x other`` (selection rule)."""
        other = Irrep(other)
        parity = self.p * other.p
        for degree in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(degree, parity)


class MulIr(NamedTuple):
    """A multiplicity and an irrep, one term of :class:`Irreps`."""

    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        """Dimension ``mul * (2l + 1)``."""
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"


class Irreps(tuple):
    """A direct sum of O(3) irreps with multiplicities, e.g. ``Irreps("32x0e+16x1o")``.

    Accepts an e3nn-style string, another :class:`Irreps`, a cuequivariance ``Irreps`` (O3), an
    e3nn ``Irreps``, or a list of ``(mul, irrep)`` pairs.

    Example:
        >>> irreps = Irreps("32x0e+16x1o+8x2e")
        >>> irreps.dim, irreps.lmax, irreps.num_irreps
        (120, 2, 56)
        >>> irreps.slices()[1]
        slice(32, 80, None)
    """

    def __new__(cls, irreps: Any = ()) -> Irreps:
        if isinstance(irreps, Irreps):
            return irreps
        return super().__new__(cls, _parse_terms(irreps))

    @property
    def dim(self) -> int:
        """Total dimension."""
        return sum(term.dim for term in self)

    @property
    def num_irreps(self) -> int:
        """Total number of irreps, counting multiplicities."""
        return sum(term.mul for term in self)

    @property
    def lmax(self) -> int:
        """Largest degree present (raises on empty irreps)."""
        if not self:
            raise ValueError("lmax of empty Irreps is undefined")
        return max(term.ir.l for term in self)

    @property
    def ls(self) -> list[int]:
        """The degree of every irrep, repeated by multiplicity (as in e3nn)."""
        return [term.ir.l for term in self for _ in range(term.mul)]

    def slices(self) -> list[slice]:
        """The slice of each term in a feature vector (same in ``mul_ir`` and ``ir_mul`` layouts)."""
        result, start = [], 0
        for term in self:
            result.append(slice(start, start + term.dim))
            start += term.dim
        return result

    def simplify(self) -> Irreps:
        """Merges consecutive terms with the same irrep and drops zero multiplicities."""
        merged: list[MulIr] = []
        for mul, ir in self:
            if mul == 0:
                continue
            if merged and merged[-1].ir == ir:
                merged[-1] = MulIr(merged[-1].mul + mul, ir)
            else:
                merged.append(MulIr(mul, ir))
        return Irreps(merged)

    def sort(self) -> Irreps:
        """Terms sorted by ``(l, p)`` (odd before even), like e3nn's ``Irreps.sort().irreps``."""
        return Irreps(sorted(self, key=lambda term: (term.ir.l, term.ir.p)))

    def count(self, ir: Any) -> int:  # type: ignore[override]
        """Total multiplicity of ``ir``."""
        ir = Irrep(ir)
        return sum(term.mul for term in self if term.ir == ir)

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> Irreps:
        """The irreps of spherical harmonics ``0e+1o+2e+...`` up to ``lmax`` (``p=-1``: parity (-1)^l).

        Example:
            >>> Irreps.spherical_harmonics(2)
            1x0e+1x1o+1x2e
        """
        if lmax < 0:
            raise ValueError(f"lmax must be >= 0, got {lmax}")
        return Irreps([(1, Irrep(degree, p**degree)) for degree in range(lmax + 1)])

    def __add__(self, other: Any) -> Irreps:
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __mul__(self, factor: int) -> Irreps:  # type: ignore[override]
        return Irreps(tuple(self) * factor)

    def __repr__(self) -> str:
        return "+".join(repr(term) for term in self)

    def __eq__(self, other: object) -> bool:
        try:
            return tuple(self) == tuple(Irreps(other))
        except (TypeError, ValueError):
            return False

    def __hash__(self) -> int:
        return hash(tuple(self))


def _parse_terms(irreps: Any) -> list[MulIr]:
    if isinstance(irreps, str):
        text = irreps.strip()
        if not text:
            return []
        terms = []
        for part in text.split("+"):
            match = _TERM_PATTERN.match(part)
            if match is None:
                raise ValueError(f"cannot parse irreps {irreps!r}: bad term {part!r}, expected e.g. '32x1o'")
            terms.append(MulIr(int(match.group(1) or 1), Irrep(match.group(2).replace(" ", ""))))
        return terms
    if hasattr(irreps, "irrep_class") or type(irreps).__module__.startswith("cuequivariance"):
        return [MulIr(int(mul), Irrep(ir)) for mul, ir in irreps]
    if isinstance(irreps, Irrep):
        return [MulIr(1, irreps)]
    terms = []
    for item in irreps:
        if isinstance(item, Irrep) or isinstance(item, str):
            terms.append(MulIr(1, Irrep(item)))
            continue
        mul, ir = item
        if not isinstance(mul, int) or mul < 0:
            raise ValueError(f"multiplicity must be a non-negative int, got {mul!r}")
        if isinstance(ir, Irrep) or hasattr(ir, "l") or isinstance(ir, str):
            terms.append(MulIr(mul, Irrep(ir)))
        else:
            terms.append(MulIr(mul, Irrep(*ir)))
    return terms
