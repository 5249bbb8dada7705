"""Triton kernel of the radius graph (``eqscale.ops.radius_graph``): the candidate search.

:func:`radius_graph_search_kernel` finds, for every receiver, a small superset of its edges:
every (sender, periodic image) of a candidate list whose distance passes a *loose* test,
``d2 <= loose2`` in float32 on wrapped positions, where ``loose2`` exceeds ``cutoff**2`` by a
bound on the float32 and wrapping errors. The exact decision (``reference.squared_distances`` on
the caller's positions, in float64) is made afterwards on the host by the reference's own code
(:mod:`eqscale.ops.radius_graph.triton`), so the edges are the reference's bit for bit.

Inputs, prepared by the host with torch ops on any device:

- atoms sorted by (system, bin): wrapped positions relative to a per-system origin as ``(3, N)``
  float32, integer wraps as ``(3, N)`` int64 (``pos = wrapped + wrap @ cell``), atom indices;
- per bin, a candidate list: the (sender, image) pairs of the bins within reach of it, as
  ``(C,)`` int64 sorted sender indices and ``(3, C)`` int32 images. A large system is binned
  along its face normals (a cell list, bins at least a cutoff wide on periodic axes); a small
  one (``SMALL_SYSTEM_ATOMS``) is a single bin whose list is all its atoms through all the images
  within reach: a brute force. A tiny cell with hundreds of images is the same case;
- one task per block of ``BLOCK_R`` receivers of one bin: ``(system, first candidate, end of
  candidates, first receiver, receivers)``.

All systems, small and large, run in one launch; a program tests ``BLOCK_R x BLOCK_S`` tiles
of its receivers against its bin's list, so tiles are full whatever the bin occupancy.

The kernel runs twice with the same compiled code (``write`` is a run-time flag, so the float32
test cannot round differently between the passes): first counting each receiver's candidates,
then, after an exclusive scan of the counts on the host, writing them at their offsets, so the
output size is known exactly and no atomics are needed. The ``self_interaction`` and ``half``
filters depend only on integers and are applied here as in the reference, which halves the
output for ``half=True``.

Standard ``tl`` operations only, so the kernel compiles for CUDA and runs in Triton's
interpreter on CPU tensors (``TRITON_INTERPRET=1``). The tile test is written inline: the
interpreter re-patches ``triton.language`` on every call of a jit helper, milliseconds each.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCKS = (16, 32)
"""``(BLOCK_R, BLOCK_S)`` on a GPU: receivers per program (a bin holds about a cutoff cubed of
atoms), candidates per tile."""
INTERPRETER_BLOCKS = (64, 256)
"""``(BLOCK_R, BLOCK_S)`` in Triton's interpreter, which spends its time per operation rather than
per element: larger tiles mean fewer of them."""
SMALL_SYSTEM_ATOMS = 128
"""Systems of at most this many atoms are searched by brute force (a single bin). Read at call
time, so tests can lower it to exercise the cell list on small inputs."""

NUM_TASK_FIELDS = tl.constexpr(5)
"""Task row: system, first candidate, end of candidates, first receiver (sorted), receivers."""


def block_sizes(interpreted: bool) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_S)``; module globals read at call time, so tests can change them."""
    return INTERPRETER_BLOCKS if interpreted else BLOCKS


def grid(num_tasks: int) -> tuple[int]:
    """Launch grid: one program per task row."""
    return (num_tasks,)


@triton.jit
def radius_graph_search_kernel(
    task_ptr, cell_ptr, pos_ptr, wrap_ptr, atom_ptr, base_ptr, count_ptr,
    candidate_ptr, image_ptr, src_ptr, shift_ptr,
    num_atoms, num_candidates, loose2, write,
    SELF_INTERACTION: tl.constexpr, HALF: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Counts (``write == 0``) or writes the candidates of ``BLOCK_R`` receivers of one bin.

    Counts go to ``count_ptr[atom]``; candidates of a receiver are written from
    ``base_ptr[atom]`` on: the sender's atom index to ``src_ptr``, the shift to ``shift_ptr``
    (``(E, 3)`` int64). ``cell_ptr`` holds each system's float32 cell rows (zero on
    non-periodic axes, where images are 0).
    """
    task = task_ptr + tl.program_id(0) * NUM_TASK_FIELDS
    system = tl.load(task)
    candidate_start = tl.load(task + 1)
    candidate_end = tl.load(task + 2)

    # Receivers as (BLOCK_R, 1) columns; padding lanes sit at +inf, senders' at -inf, so that
    # their distances are infinite (never NaN) and never pass.
    receiver_lanes = tl.arange(0, BLOCK_R)[:, None]
    r_valid = receiver_lanes < tl.load(task + 4)
    r = tl.load(task + 3) + receiver_lanes
    r_atom = tl.load(atom_ptr + r, mask=r_valid, other=0)
    rx = tl.load(pos_ptr + r, mask=r_valid, other=float("inf"))
    ry = tl.load(pos_ptr + num_atoms + r, mask=r_valid, other=float("inf"))
    rz = tl.load(pos_ptr + 2 * num_atoms + r, mask=r_valid, other=float("inf"))
    rw0 = tl.load(wrap_ptr + r, mask=r_valid, other=0)
    rw1 = tl.load(wrap_ptr + num_atoms + r, mask=r_valid, other=0)
    rw2 = tl.load(wrap_ptr + 2 * num_atoms + r, mask=r_valid, other=0)
    base = tl.load(base_ptr + r_atom)

    cell = cell_ptr + 9 * system
    c00, c01, c02 = tl.load(cell), tl.load(cell + 1), tl.load(cell + 2)
    c10, c11, c12 = tl.load(cell + 3), tl.load(cell + 4), tl.load(cell + 5)
    c20, c21, c22 = tl.load(cell + 6), tl.load(cell + 7), tl.load(cell + 8)

    running = tl.zeros((BLOCK_R, 1), dtype=tl.int32)
    lanes = tl.arange(0, BLOCK_S)[None, :]
    for k0 in range(candidate_start, candidate_end, BLOCK_S):
        # Candidates as (1, BLOCK_S) rows.
        k = k0 + lanes
        valid = k < candidate_end
        s = tl.load(candidate_ptr + k, mask=valid, other=0)
        t0 = tl.load(image_ptr + k, mask=valid, other=0)
        t1 = tl.load(image_ptr + num_candidates + k, mask=valid, other=0)
        t2 = tl.load(image_ptr + 2 * num_candidates + k, mask=valid, other=0)
        f0, f1, f2 = t0.to(tl.float32), t1.to(tl.float32), t2.to(tl.float32)
        sx = tl.load(pos_ptr + s, mask=valid, other=float("-inf")) + ((f0 * c00 + f1 * c10) + f2 * c20)
        sy = tl.load(pos_ptr + num_atoms + s, mask=valid, other=float("-inf")) + ((f0 * c01 + f1 * c11) + f2 * c21)
        sz = tl.load(pos_ptr + 2 * num_atoms + s, mask=valid, other=float("-inf")) + ((f0 * c02 + f1 * c12) + f2 * c22)
        s_atom = tl.load(atom_ptr + s, mask=valid, other=0)

        vx = rx - sx
        vy = ry - sy
        vz = rz - sz
        hit = vx * vx + vy * vy + vz * vz <= loose2
        # Where sender and receiver are one atom, the shift is minus the image. (No `~` on
        # masks: the interpreter turns it into an integer.)
        if not SELF_INTERACTION:
            # Not the self pair: another atom, or another image.
            hit = hit & ((s_atom != r_atom) | ((t0 != 0) | (t1 != 0) | (t2 != 0)))
        if HALF:
            # reference.keep_half: sender < receiver, or an atom's own image with a positive
            # shift, or the self pair: here, an image that is not lexicographically positive.
            image_not_positive = (t0 < 0) | ((t0 == 0) & ((t1 < 0) | ((t1 == 0) & (t2 <= 0))))
            hit = hit & ((s_atom < r_atom) | ((s_atom == r_atom) & image_not_positive))
        hits = hit.to(tl.int32)
        if write != 0:
            slot = (base + running) + (tl.cumsum(hits, axis=1) - 1)
            tl.store(src_ptr + slot, tl.broadcast_to(s_atom, (BLOCK_R, BLOCK_S)), mask=hit)
            # shift = wrap[sender] - image - wrap[receiver]
            tl.store(shift_ptr + 3 * slot, tl.load(wrap_ptr + s, mask=valid, other=0) - t0 - rw0, mask=hit)
            tl.store(shift_ptr + 3 * slot + 1,
                     tl.load(wrap_ptr + num_atoms + s, mask=valid, other=0) - t1 - rw1, mask=hit)
            tl.store(shift_ptr + 3 * slot + 2,
                     tl.load(wrap_ptr + 2 * num_atoms + s, mask=valid, other=0) - t2 - rw2, mask=hit)
        running += tl.sum(hits, axis=1, keep_dims=True)
    if write == 0:
        tl.store(count_ptr + r_atom, running.to(tl.int64), mask=r_valid)
