// CPU kernel of the fused tensor-product convolution: the operator tp_conv_contract.
//
// It evaluates the 4-linear form of eqscale/ops/tp_conv/__init__.py,
//
//   F(x, Y, W, G) = sum_e sum_paths sum_{C_ijk != 0} c x[s_e]_{u,i} Y_e,{v,j} W_e,{u,v,w} G[r_e]_{w,k},
//
// with one slot open, i.e. its gradient with respect to that slot. Outline:
//
//   * Node tensors (x, G, the node outputs) are handled in the ir_mul order internally ("canonical"),
//     so that the channel index u is contiguous and the inner loops are SIMD over channels. mul_ir
//     input is permuted once per call (O(N dim)); node outputs are permuted while being written.
//   * Edges are grouped by a stable counting sort (CSR, O(E + N)): by receiver for the output and for
//     the per-edge slots (so that consecutive edges reuse a receiver's row of G from cache), by sender
//     for the node-feature gradient. Node slots are parallel over destination nodes: each node's row
//     is accumulated in thread-local scratch over its edges, in edge order, and written once. Per-edge
//     slots are parallel over fixed chunks of the sorted edges; shared weights sum one partial row per
//     chunk and add the partials in chunk order. The chunking never depends on the thread count, so
//     results are bitwise identical for any number of threads and any schedule.
//   * The hot case (uvu with one edge channel, i.e. spherical harmonics; l <= 4; channel count a
//     multiple of the SIMD width) runs templated kernels with the degrees as compile-time constants,
//     so that accumulators live in registers across a node's edges. They use the factorisation of
//     TensorProductPlan.flops: y_ik = sum_j c C_ijk Y_j is formed per edge (SIMD across a block of
//     edges), then out_k[u] += sum_i y_ik (W[u] x_i[u]) is SIMD across channels. Everything else
//     (uvw, uuu, several edge channels, odd channel counts) runs a generic loop kernel.
//   * The per-edge weights (E x weight_numel, the largest operand by far) and the node rows are read
//     in scattered slices; they are software-prefetched a block ahead, spread over the path loop.
//     With them the kernels run at about memory speed; without, they were several times slower.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <array>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "memory.h"
#include "parallel.h"
#include "simd.h"

namespace eqscale {
namespace {

#if defined(__GNUC__) || defined(__clang__)
#define EQSCALE_TP_INLINE inline __attribute__((always_inline))
#define EQSCALE_TP_SIMD 1
#define EQSCALE_TP_UNROLL _Pragma("GCC unroll 16")
#else
#define EQSCALE_TP_INLINE inline
#define EQSCALE_TP_UNROLL
#endif

constexpr const char* kOp = "tp_conv_contract";

enum Slot : int64_t { kNodeFeats = 0, kEdgeAttrs = 1, kEdgeWeights = 2, kOutput = 3 };
enum Mode : int64_t { kUVW = 0, kUVU = 1, kUUU = 2 };
// Columns of the paths table (eqscale/ops/tp_conv/_tables.py).
enum PathField : int64_t {
  kMode, kHasWeight, kIn1Offset, kIn1Mul, kIn1Dim, kIn2Offset, kIn2Mul, kIn2Dim,
  kOutOffset, kOutMul, kOutDim, kWeightOffset, kCgStart, kCgCount, kNumPathFields
};

// Edges per block: the unit over which per-edge CG scalars are formed (SIMD across edges).
constexpr int64_t kBlock = 32;
// Sorted edges per task of the per-edge slots; fixed, so shared-weight partial sums do not depend on
// the number of threads.
constexpr int64_t kEdgeChunk = 256;
// Target work (edges + nodes) per task of the node slots: only load balance depends on it.
constexpr int64_t kNodeTaskWork = 512;
// The templated kernels cover degrees l <= kMaxFastL.
constexpr int64_t kMaxFastL = 4;

struct Path {
  int64_t mode, has_weight, off1, mul1, d1, off2, mul2, d2, offo, mulo, dout, woff, cg_start, cg_count;
  bool fast;
};

template <class S>
struct Entry {
  int64_t i, j, k;
  S c;
};

// A range [first, first + count) of Problem::cell_entries.
struct Cell {
  int64_t first, count;
};

template <class S>
struct Problem {
  int64_t num_edges, sender_rows, num_nodes, dim1, dim2, weight_numel, dimo, layout;
  bool shared;
  const S* x = nullptr;  // (sender_rows, dim1), canonical
  const S* y = nullptr;  // (E, dim2), caller's layout
  const S* w = nullptr;  // (E, weight_numel) or (weight_numel,)
  const S* g = nullptr;  // (num_nodes, dimo), canonical
  const int64_t* senders = nullptr;
  const int64_t* receivers = nullptr;
  std::vector<Path> paths;
  std::vector<Entry<S>> entries;
  // Fast paths, per path: the CG entries grouped by the cell they feed. Slots 0, 2, 3: the DA * DB
  // cells of y_ab = sum_j c Y_j, (a, b) = (i, k), or (k, i) for the node-feature gradient, entries
  // (j, c). Slot 1: one cell per component j of the edge attributes, entries (i dout + k, c).
  std::vector<std::vector<Cell>> cells;
  std::vector<std::vector<std::pair<int64_t, S>>> cell_entries;
  // The fused backward (backward_fused) reads the cells of slot 3 above and, for the products
  // P_jk = sum_i c x_i of the sender, the (j, k) cells here, entries (i, c).
  std::vector<std::vector<Cell>> sender_cells;
  std::vector<std::vector<std::pair<int64_t, S>>> sender_cell_entries;

  const S* weights_of(int64_t edge) const { return w == nullptr ? nullptr : (shared ? w : w + edge * weight_numel); }
};

// ---------------------------------------------------------------------------------------------
// Prefetching
// ---------------------------------------------------------------------------------------------

// Requests rows[e][offset, offset + len) of a block's edges into cache (null rows are skipped). The
// rows (per-edge weights, node features) are scattered in memory, since edges are visited sorted by
// node, and each (edge, path) touches only a short slice of its row: without prefetching, every
// slice is a cache miss waited on in turn, which measured slower than the arithmetic itself. The
// requests are spread over the path loop, and within a path over the kernel's edge loop
// (NextSlices): a burst of a whole block's rows stalls on the few outstanding misses the core
// allows, and the arithmetic queues behind the stalled requests (edge by edge instead of one burst
// per path: forward 1.07x at L = 2, 1.15x at L = 3). Reads are requested into L2 (prefetcht1), not
// L1: a block's weight slices and node rows together overflow the L1 (61 KB of weights alone at
// L = 2, mul 32, against 48 KiB per core on the machine measured), so prefetcht0 evicted operands
// the block was still using; measured side by side (2 threads, mul 32), prefetcht1 made the forward
// 1.5-2x and forward+backward 1.3-1.9x faster at L = 1-3.
template <bool Write>
EQSCALE_TP_INLINE void prefetch_line(const char* address) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  // GCC's dead-code elimination deletes loops whose only statement is __builtin_prefetch (the loop
  // "has no side effects"); a volatile asm survives.
  if (Write) {
    asm volatile("prefetchw %0" : : "m"(*address));
  } else {
    asm volatile("prefetcht1 %0" : : "m"(*address));
  }
#elif defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(address, Write ? 1 : 0, 2);
#else
  (void)address;
#endif
}

// Requests every cache line of [data, data + len).
template <bool Write, class S>
EQSCALE_TP_INLINE void prefetch_span(const S* data, int64_t len) {
  const char* base = reinterpret_cast<const char*>(data);
  const int64_t bytes = len * static_cast<int64_t>(sizeof(S));
  for (int64_t b = 0; b < bytes; b += 64) prefetch_line<Write>(base + b);
}

template <bool Write, class S>
EQSCALE_TP_INLINE void prefetch_slices(const S* const* rows, int64_t n, int64_t offset, int64_t len) {
  for (int64_t e = 0; e < n; ++e)
    if (rows[e] != nullptr) prefetch_span<Write>(rows[e] + offset, len);
}

// One path's slices of the next block's rows (rows[e][offset, offset + len), e < count; null rows
// skipped), requested edge by edge from inside a kernel's edge loop instead of in a burst before it.
template <class S>
struct NextSlices {
  const S* const* rows = nullptr;
  int64_t count = 0, offset = 0, len = 0;

  EQSCALE_TP_INLINE void request(int64_t e) const {
    if (e < count && rows[e] != nullptr) prefetch_span<false>(rows[e] + offset, len);
  }
  // The slices of the edges from `first` on, once the kernel's loop over its own edges is done.
  void request_from(int64_t first) const {
    for (int64_t e = first; e < count; ++e) request(e);
  }
};

// ---------------------------------------------------------------------------------------------
// Templated kernels (uvu, one edge channel)
// ---------------------------------------------------------------------------------------------

#ifdef EQSCALE_TP_SIMD
// How the per-edge weight W[u] enters dst_b += sum_a y_ab W src_a: on the a side (z_a = W src_a,
// DA multiplies) or, when DB < DA, on the b side (t_b = sum_a y_ab src_a, then dst_b += W t_b, DB
// multiplies). The b-side form also starts a fresh chain t_b per edge, so consecutive edges overlap
// instead of queueing on the accumulators' FMA latency.
template <int DA, int DB>
constexpr bool weight_after() {
  return DB < DA;
}

// Vectors of channels per chunk: as many as the 32 vector registers hold (accumulators, the b-side
// temporaries, the source and weight vectors), because each chunk re-reads the block's y_ab and the
// accumulators are the only independent FMA chains of the a-side form.
template <int DA, int DB>
constexpr int64_t node_unroll() {
  constexpr int64_t per_vector = (weight_after<DA, DB>() ? 2 * DB : DB) + 2;
  return per_vector * 4 <= 30 ? 4 : (per_vector * 2 <= 30 ? 2 : 1);
}

// dst_b[u] += sum_e sum_a y_ab(e) W_e[u] src_a(e)[u] over the n edges of a block, where src_a is
// channel block a of the path in the source node's row. Forward: a = i (x of the sender), b = k;
// node-feature gradient: a = k (G of the receiver), b = i. prefetch_src requests the source slices
// two edges ahead: it pays for the G rows of the node-feature gradient (17% faster at L = 3), which
// hold both output parities and mostly come from L3, not for the x rows of the forward.
template <class S, int DA, int DB, int64_t U, bool Weighted>
EQSCALE_TP_INLINE void node_chunk(const S* __restrict yd, int64_t n, const S* const* src, int64_t src_off,
                                  const S* const* wts, int64_t woff, S* __restrict dst, int64_t mul, int64_t c,
                                  bool prefetch_src, const NextSlices<S>& next) {
  using T = Simd<S>;
  using V = typename T::V;
  constexpr int64_t L = T::lanes;
  V acc[U][DB];
  EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) {
    EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) acc[q][b] = T::load(dst + b * mul + c + q * L);
  }
  for (int64_t e = 0; e < n; ++e) {
    const S* s = src[e] + src_off + c;
    const S* ye = yd + e;
    if (c == 0) {
      next.request(e);
      if (prefetch_src && e + 2 < n) {
        prefetch_span<false>(src[e + 2] + src_off, DA * mul);
      }
    }
    V wv[U];
    if constexpr (Weighted) {
      EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) wv[q] = T::load(wts[e] + woff + c + q * L);
    }
    if constexpr (weight_after<DA, DB>()) {
      V t[U][DB];
      EQSCALE_TP_UNROLL for (int a = 0; a < DA; ++a) {
        V xa[U];
        EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) xa[q] = T::load(s + a * mul + q * L);
        EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) {
          const V yab = T::splat(ye[(a * DB + b) * kBlock]);
          EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) t[q][b] = a == 0 ? yab * xa[q] : t[q][b] + yab * xa[q];
        }
      }
      EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) {
        EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) {
          if constexpr (Weighted) {
            acc[q][b] += wv[q] * t[q][b];
          } else {
            acc[q][b] += t[q][b];
          }
        }
      }
    } else {
      EQSCALE_TP_UNROLL for (int a = 0; a < DA; ++a) {
        V xa[U];
        EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) {
          xa[q] = T::load(s + a * mul + q * L);
          if constexpr (Weighted) xa[q] *= wv[q];
        }
        EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) {
          const V yab = T::splat(ye[(a * DB + b) * kBlock]);
          EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) acc[q][b] += yab * xa[q];
        }
      }
    }
  }
  EQSCALE_TP_UNROLL for (int64_t q = 0; q < U; ++q) {
    EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) T::store(dst + b * mul + c + q * L, acc[q][b]);
  }
}

template <class S, int DA, int DB, bool Weighted>
void node_kernel_of(const S* yd, int64_t n, const S* const* src, int64_t src_off, const S* const* wts, int64_t woff,
                    S* dst, int64_t mul, bool prefetch_src, const NextSlices<S>& next) {
  constexpr int64_t L = Simd<S>::lanes;
  constexpr int64_t U = node_unroll<DA, DB>();
  int64_t c = 0;
  for (; c + U * L <= mul; c += U * L)
    node_chunk<S, DA, DB, U, Weighted>(yd, n, src, src_off, wts, woff, dst, mul, c, prefetch_src, next);
  if constexpr (U > 2) {
    for (; c + 2 * L <= mul; c += 2 * L)
      node_chunk<S, DA, DB, 2, Weighted>(yd, n, src, src_off, wts, woff, dst, mul, c, prefetch_src, next);
  }
  for (; c < mul; c += L)
    node_chunk<S, DA, DB, 1, Weighted>(yd, n, src, src_off, wts, woff, dst, mul, c, prefetch_src, next);
  next.request_from(n);
}

template <class S, int DA, int DB>
void node_kernel(const S* yd, int64_t n, const S* const* src, int64_t src_off, const S* const* wts, int64_t woff,
                 bool weighted, S* dst, int64_t mul, bool prefetch_src, const NextSlices<S>& next) {
  if (weighted) {
    node_kernel_of<S, DA, DB, true>(yd, n, src, src_off, wts, woff, dst, mul, prefetch_src, next);
  } else {
    node_kernel_of<S, DA, DB, false>(yd, n, src, src_off, wts, woff, dst, mul, prefetch_src, next);
  }
}

// gW[u] (+)= sum_a x_a[u] sum_b y_ab G_b[u] for one edge (a = i, b = k); y_ab at yd[ab * kBlock].
// Per-edge rows are written, not accumulated: each weight belongs to one path, and skipping the
// zero fill and the read back matters for an output as large as the per-edge weights.
template <class S, int DA, int DB>
void weight_kernel(const S* __restrict yd, const S* __restrict x, const S* __restrict g, S* __restrict out,
                   int64_t mul, bool accumulate) {
  using T = Simd<S>;
  using V = typename T::V;
  for (int64_t c = 0; c < mul; c += T::lanes) {
    V gb[DB];
    EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) gb[b] = T::load(g + b * mul + c);
    V o = accumulate ? T::load(out + c) : T::splat(S(0));
    EQSCALE_TP_UNROLL for (int a = 0; a < DA; ++a) {
      V z = T::splat(S(0));
      EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) z += T::splat(yd[(a * DB + b) * kBlock]) * gb[b];
      o += T::load(x + a * mul + c) * z;
    }
    T::store(out + c, o);
  }
}

// q_ab = sum_u W[u] x_a[u] G_b[u] for one edge (a = i, b = k), the contraction left over by the
// edge-attribute gradient before the CG. Left as SIMD partial sums q[ab][lane]: the CG combination
// is linear, so the caller combines vectors and reduces only one per output component j.
template <class S, int DA, int DB>
void attr_kernel(const S* __restrict x, const S* __restrict w, const S* __restrict g, S* __restrict q, int64_t mul) {
  using T = Simd<S>;
  using V = typename T::V;
  EQSCALE_TP_UNROLL for (int a = 0; a < DA; ++a) {
    V acc[DB];
    EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) acc[b] = T::splat(S(0));
    for (int64_t c = 0; c < mul; c += T::lanes) {
      V xw = T::load(x + a * mul + c);
      if (w != nullptr) xw *= T::load(w + c);
      EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) acc[b] += xw * T::load(g + b * mul + c);
    }
    EQSCALE_TP_UNROLL for (int b = 0; b < DB; ++b) T::store(q + (a * DB + b) * T::lanes, acc[b]);
  }
}

// The fused backward (backward_fused) of one path for one edge and a chunk of U channel vectors.
// ye[ik * kBlock] holds y_ik = sum_j c Y_j, x the sender's row, g the receiver's, w the edge's
// weights (a row of ones when the path has none). Both variants accumulate the sender's gradient row
//   gx_i += W z_i,  z_i = sum_k y_ik G_k,
// and differ in how they get the weight gradient gW = sum_ik y_ik x_i G_k (written once, when gw is
// not null) and the edge-attribute gradient gY_j = sum_ik C_ijk <W x_i, G_k>:
//   * without the latter, gW = sum_i x_i z_i reuses z;
//   * with it, both come from R_j = sum_k P_jk G_k, where P_jk = sum_i C_ijk x_i depends on the
//     sender only (sender_products, once per block): gW = sum_j Y_j R_j and gY_j = <W, R_j>, whose
//     SIMD partial sums are added to gy (one vector per component j; reduced once per edge, not once
//     per path). G_k stays in registers for both.
template <class S, int D1, int DO>
constexpr int64_t backward_unroll() {
  return DO <= 3 ? 4 : (DO <= 9 ? 2 : 1);
}

template <class S, int D1, int DO, bool WantAttrs, int64_t U>
EQSCALE_TP_INLINE void backward_chunk(const S* __restrict ye, const S* __restrict x, const S* __restrict g,
                                      const S* __restrict w, S* __restrict gx, S* __restrict gw,
                                      const S* __restrict products, const S* __restrict yj, int64_t d2,
                                      S* __restrict gy, int64_t mul, int64_t c) {
  using T = Simd<S>;
  using V = typename T::V;
  constexpr int64_t L = T::lanes;
  V wv[U], gk[DO][U], gw_acc[U];
  EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
    wv[u] = T::load(w + c + u * L);
    gw_acc[u] = T::splat(S(0));
  }
  EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) gk[k][u] = T::load(g + k * mul + c + u * L);
  }
  EQSCALE_TP_UNROLL for (int i = 0; i < D1; ++i) {
    V z[U];
    EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
      const V yik = T::splat(ye[(i * DO + k) * kBlock]);
      EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) z[u] = k == 0 ? yik * gk[k][u] : z[u] + yik * gk[k][u];
    }
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
      S* gxi = gx + i * mul + c + u * L;
      T::store(gxi, T::load(gxi) + wv[u] * z[u]);
      if constexpr (!WantAttrs) gw_acc[u] += T::load(x + i * mul + c + u * L) * z[u];
    }
  }
  if constexpr (WantAttrs) {
    for (int64_t j = 0; j < d2; ++j) {
      const S* pj = products + j * DO * mul + c;
      V r[U];
      EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
        EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
          const V pjk = T::load(pj + k * mul + u * L);
          r[u] = k == 0 ? pjk * gk[k][u] : r[u] + pjk * gk[k][u];
        }
      }
      const V y = T::splat(yj[j * kBlock]);
      V part = wv[0] * r[0];
      gw_acc[0] += y * r[0];
      EQSCALE_TP_UNROLL for (int64_t u = 1; u < U; ++u) {
        part += wv[u] * r[u];
        gw_acc[u] += y * r[u];
      }
      T::store(gy + j * L, T::load(gy + j * L) + part);
    }
  }
  // gw is the block's scratch row (in L2, streamed out once the block is done): plain stores. Non-
  // temporal ones here evicted the row just before stream_row read it back (measured 10-25% slower
  // forward+backward at L = 1).
  if (gw != nullptr) {
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) T::store(gw + c + u * L, gw_acc[u]);
  }
}

// backward_chunk over all channels of the n edges of a block from one sender. yt: the block's
// transposed edge attributes at the path's first component; gy: the block's per-edge partial sums
// (e * gy_stride + j) * lanes at the path's first component.
template <class S, int D1, int DO, bool WantAttrs>
void backward_block(const S* yd, int64_t n, const S* x, const S* const* gs, int64_t goff, const S* const* ws,
                    int64_t woff, S* gx, S* const* gws, int64_t gwoff, const S* products, const S* yt, int64_t d2,
                    S* gy, int64_t gy_stride, int64_t mul, const NextSlices<S>& next) {
  constexpr int64_t L = Simd<S>::lanes;
  constexpr int64_t U = backward_unroll<S, D1, DO>();
  for (int64_t e = 0; e < n; ++e) {
    const S* g = gs[e] + goff;
    const S* w = ws[e] + woff;
    S* gw = gws[e] == nullptr ? nullptr : gws[e] + gwoff;
    S* gye = gy + e * gy_stride * L;
    // The receiver rows (G) are the largest node operand and mostly come from L3: requested two
    // edges ahead (the same at one or three), this took the backward from 170 to 130 ms single-threaded.
    if (e + 2 < n) prefetch_span<false>(gs[e + 2] + goff, DO * mul);
    next.request(e);
    int64_t c = 0;
    if constexpr (U >= 4) {
      for (; c + 4 * L <= mul; c += 4 * L)
        backward_chunk<S, D1, DO, WantAttrs, 4>(yd + e, x, g, w, gx, gw, products, yt + e, d2, gye, mul, c);
    }
    if constexpr (U >= 2) {
      for (; c + 2 * L <= mul; c += 2 * L)
        backward_chunk<S, D1, DO, WantAttrs, 2>(yd + e, x, g, w, gx, gw, products, yt + e, d2, gye, mul, c);
    }
    for (; c < mul; c += L)
      backward_chunk<S, D1, DO, WantAttrs, 1>(yd + e, x, g, w, gx, gw, products, yt + e, d2, gye, mul, c);
  }
  next.request_from(n);
}

// The double backward (backward_fused with cotangents) of one path for one edge and a chunk of U channel
// vectors: the gradients of <hx, gx> + <hy, gy> + <hw, gw>, where gx, gy and gw are the first-order
// gradients of <forward, G> and hx, hy, hw their cotangents. Each gradient gets two terms, one per
// cotangent in the other two slots:
//   gx_i += hw z_i + W zb_i,             z_i = sum_k y_ik G_k,  zb_i = sum_k yb_ik G_k,
//   gW    = sum_j (Y_j Ra_j + hy_j Rx_j),  gY_j = <W, Ra_j> + <hw, Rx_j>,
// with y / yb the cells of Y / hy (ye, yb), and Rx_j = sum_k Px_jk G_k, Ra_j = sum_k Pa_jk G_k from
// the sender products of x and hx (px, pa). G_k, W and hw are loaded once for all six terms, which is
// where this beats one backward_chunk pass per cotangent (each of which loaded them again).
template <int DO>
constexpr int64_t double_backward_unroll() {
  // Vector registers per channel vector: G_k (DO), W, hw, the gW accumulator, and z, zb, Rx, Ra.
  return 4 * (DO + 7) <= 32 ? 4 : (2 * (DO + 7) <= 32 ? 2 : 1);
}

template <class S, int D1, int DO, int64_t U>
EQSCALE_TP_INLINE void double_backward_chunk(const S* __restrict ye, const S* __restrict yb, const S* __restrict g,
                                             const S* __restrict w, const S* __restrict hw, S* __restrict gx,
                                             S* __restrict gw, const S* __restrict px, const S* __restrict pa,
                                             const S* __restrict yj, const S* __restrict bj, int64_t d2,
                                             S* __restrict gy, int64_t mul, int64_t c) {
  using T = Simd<S>;
  using V = typename T::V;
  constexpr int64_t L = T::lanes;
  V wv[U], hv[U], gk[DO][U], gw_acc[U];
  EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
    wv[u] = T::load(w + c + u * L);
    hv[u] = T::load(hw + c + u * L);
    gw_acc[u] = T::splat(S(0));
  }
  EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) gk[k][u] = T::load(g + k * mul + c + u * L);
  }
  EQSCALE_TP_UNROLL for (int i = 0; i < D1; ++i) {
    V z[U], zb[U];
    EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
      const V yik = T::splat(ye[(i * DO + k) * kBlock]);
      const V bik = T::splat(yb[(i * DO + k) * kBlock]);
      EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
        z[u] = k == 0 ? yik * gk[k][u] : z[u] + yik * gk[k][u];
        zb[u] = k == 0 ? bik * gk[k][u] : zb[u] + bik * gk[k][u];
      }
    }
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
      S* gxi = gx + i * mul + c + u * L;
      T::store(gxi, T::load(gxi) + hv[u] * z[u] + wv[u] * zb[u]);
    }
  }
  for (int64_t j = 0; j < d2; ++j) {
    const S* pxj = px + j * DO * mul + c;
    const S* paj = pa + j * DO * mul + c;
    V rx[U], ra[U];
    EQSCALE_TP_UNROLL for (int k = 0; k < DO; ++k) {
      EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) {
        const V x_jk = T::load(pxj + k * mul + u * L);
        const V a_jk = T::load(paj + k * mul + u * L);
        rx[u] = k == 0 ? x_jk * gk[k][u] : rx[u] + x_jk * gk[k][u];
        ra[u] = k == 0 ? a_jk * gk[k][u] : ra[u] + a_jk * gk[k][u];
      }
    }
    const V y = T::splat(yj[j * kBlock]);
    const V b = T::splat(bj[j * kBlock]);
    V part = wv[0] * ra[0] + hv[0] * rx[0];
    gw_acc[0] += y * ra[0] + b * rx[0];
    EQSCALE_TP_UNROLL for (int64_t u = 1; u < U; ++u) {
      part += wv[u] * ra[u] + hv[u] * rx[u];
      gw_acc[u] += y * ra[u] + b * rx[u];
    }
    T::store(gy + j * L, T::load(gy + j * L) + part);
  }
  if (gw != nullptr) {
    EQSCALE_TP_UNROLL for (int64_t u = 0; u < U; ++u) T::store(gw + c + u * L, gw_acc[u]);
  }
}

// double_backward_chunk over all channels of the n edges of a block from one sender; the arguments
// as in backward_block, with the cotangents' cells (ybd), weight rows (hws), sender products (pa)
// and transposed edge rows (bt) next to those of the primal inputs.
template <class S, int D1, int DO>
void double_backward_block(const S* yd, const S* ybd, int64_t n, const S* const* gs, int64_t goff,
                           const S* const* ws, const S* const* hws, int64_t woff, S* gx, S* const* gws,
                           int64_t gwoff, const S* px, const S* pa, const S* yt, const S* bt, int64_t d2, S* gy,
                           int64_t gy_stride, int64_t mul, const NextSlices<S>& next_w, const NextSlices<S>& next_hw) {
  constexpr int64_t L = Simd<S>::lanes;
  constexpr int64_t U = double_backward_unroll<DO>();
  for (int64_t e = 0; e < n; ++e) {
    const S* g = gs[e] + goff;
    const S* w = ws[e] + woff;
    const S* hw = hws[e] + woff;
    S* gw = gws[e] == nullptr ? nullptr : gws[e] + gwoff;
    S* gye = gy + e * gy_stride * L;
    if (e + 2 < n) prefetch_span<false>(gs[e + 2] + goff, DO * mul);  // as in backward_block
    next_w.request(e);
    next_hw.request(e);
    int64_t c = 0;
    if constexpr (U >= 4) {
      for (; c + 4 * L <= mul; c += 4 * L)
        double_backward_chunk<S, D1, DO, 4>(yd + e, ybd + e, g, w, hw, gx, gw, px, pa, yt + e, bt + e, d2, gye, mul, c);
    }
    if constexpr (U >= 2) {
      for (; c + 2 * L <= mul; c += 2 * L)
        double_backward_chunk<S, D1, DO, 2>(yd + e, ybd + e, g, w, hw, gx, gw, px, pa, yt + e, bt + e, d2, gye, mul, c);
    }
    for (; c < mul; c += L)
      double_backward_chunk<S, D1, DO, 1>(yd + e, ybd + e, g, w, hw, gx, gw, px, pa, yt + e, bt + e, d2, gye, mul, c);
  }
  next_w.request_from(n);
  next_hw.request_from(n);
}

template <class S>
using NodeFn = void (*)(const S*, int64_t, const S* const*, int64_t, const S* const*, int64_t, bool, S*, int64_t,
                        bool, const NextSlices<S>&);
template <class S>
using WeightFn = void (*)(const S*, const S*, const S*, S*, int64_t, bool);
template <class S>
using AttrFn = void (*)(const S*, const S*, const S*, S*, int64_t);
template <class S>
using BackwardFn = void (*)(const S*, int64_t, const S*, const S* const*, int64_t, const S* const*, int64_t, S*,
                            S* const*, int64_t, const S*, const S*, int64_t, S*, int64_t, int64_t,
                            const NextSlices<S>&);
template <class S>
using DoubleBackwardFn = void (*)(const S*, const S*, int64_t, const S* const*, int64_t, const S* const*,
                                  const S* const*, int64_t, S*, S* const*, int64_t, const S*, const S*, const S*,
                                  const S*, int64_t, S*, int64_t, int64_t, const NextSlices<S>&,
                                  const NextSlices<S>&);
// The two variants of backward_block under names that fit EQSCALE_TP_TABLE.
template <class S, int DA, int DB>
void backward_kernel_with_attrs(const S* yd, int64_t n, const S* x, const S* const* gs, int64_t goff,
                                const S* const* ws, int64_t woff, S* gx, S* const* gws, int64_t gwoff,
                                const S* products, const S* yt, int64_t d2, S* gy, int64_t gy_stride, int64_t mul,
                                const NextSlices<S>& next) {
  backward_block<S, DA, DB, true>(yd, n, x, gs, goff, ws, woff, gx, gws, gwoff, products, yt, d2, gy, gy_stride, mul,
                                  next);
}
template <class S, int DA, int DB>
void backward_kernel_without_attrs(const S* yd, int64_t n, const S* x, const S* const* gs, int64_t goff,
                                   const S* const* ws, int64_t woff, S* gx, S* const* gws, int64_t gwoff,
                                   const S* products, const S* yt, int64_t d2, S* gy, int64_t gy_stride, int64_t mul,
                                   const NextSlices<S>& next) {
  backward_block<S, DA, DB, false>(yd, n, x, gs, goff, ws, woff, gx, gws, gwoff, products, yt, d2, gy, gy_stride, mul,
                                   next);
}

#define EQSCALE_TP_CASES(KERNEL, A)                                                                            \
  case A * 16 + 1: return &KERNEL<S, A, 1>;                                                                    \
  case A * 16 + 3: return &KERNEL<S, A, 3>;                                                                    \
  case A * 16 + 5: return &KERNEL<S, A, 5>;                                                                    \
  case A * 16 + 7: return &KERNEL<S, A, 7>;                                                                    \
  case A * 16 + 9: return &KERNEL<S, A, 9>;
#define EQSCALE_TP_TABLE(KERNEL)                                                                               \
  switch (da * 16 + db) {                                                                                      \
    EQSCALE_TP_CASES(KERNEL, 1)                                                                                \
    EQSCALE_TP_CASES(KERNEL, 3)                                                                                \
    EQSCALE_TP_CASES(KERNEL, 5)                                                                                \
    EQSCALE_TP_CASES(KERNEL, 7)                                                                                \
    EQSCALE_TP_CASES(KERNEL, 9)                                                                                \
    default: return nullptr;                                                                                   \
  }

template <class S>
NodeFn<S> node_fn(int64_t da, int64_t db) { EQSCALE_TP_TABLE(node_kernel) }
template <class S>
WeightFn<S> weight_fn(int64_t da, int64_t db) { EQSCALE_TP_TABLE(weight_kernel) }
template <class S>
AttrFn<S> attr_fn(int64_t da, int64_t db) { EQSCALE_TP_TABLE(attr_kernel) }
template <class S>
BackwardFn<S> backward_fn(int64_t da, int64_t db, bool with_attrs) {
  if (with_attrs) {
    EQSCALE_TP_TABLE(backward_kernel_with_attrs)
  }
  EQSCALE_TP_TABLE(backward_kernel_without_attrs)
}

template <class S>
DoubleBackwardFn<S> double_backward_fn(int64_t da, int64_t db) { EQSCALE_TP_TABLE(double_backward_block) }

template <class S>
constexpr int64_t simd_lanes() { return Simd<S>::lanes; }
#else
template <class S>
constexpr int64_t simd_lanes() { return 0; }
#endif

// ---------------------------------------------------------------------------------------------
// Generic kernel: any mode, any multiplicities, one edge and one path at a time
// ---------------------------------------------------------------------------------------------

// Accumulates the open slot's contribution of one (edge, path) into `out`: the destination node's
// canonical row (slots 0 and 3), the edge's row of edge_attrs' gradient in the caller's layout
// (slot 1) or the edge's (or the shared partial) weight row (slot 2). x and g are canonical rows.
template <class S>
void generic_path(int64_t slot, const Path& p, const Entry<S>* ent, int64_t layout, const S* x, const S* yrow,
                  const S* w, const S* g, S* out, S* scratch) {
  const int64_t m1 = p.mul1, m2 = p.mul2, mo = p.mulo;
  auto yidx = [&](int64_t j, int64_t v) { return p.off2 + (layout == 1 ? j * m2 + v : v * p.d2 + j); };
  const S* xa = x == nullptr ? nullptr : x + p.off1;
  const S* ga = g == nullptr ? nullptr : g + p.offo;
  // W = 1 without weights; for slot 2 W is the open slot (only its offsets matter).
  const S* wa = p.has_weight && w != nullptr && slot != kEdgeWeights ? w + p.woff : nullptr;
  const int64_t nnz = p.cg_count;
  if (slot == kEdgeWeights && !p.has_weight) return;
  if (p.mode == kUVU) {
    S* wv = scratch;       // column v of W, (m1,)
    S* buf = scratch + m1;  // W-scaled channel blocks, (max(d1, dout), m1)
    for (int64_t v = 0; v < m2; ++v) {
      if (slot != kEdgeWeights)
        for (int64_t u = 0; u < m1; ++u) wv[u] = wa == nullptr ? S(1) : wa[u * m2 + v];
      if (slot == kOutput || slot == kEdgeAttrs) {
        for (int64_t i = 0; i < p.d1; ++i)
          for (int64_t u = 0; u < m1; ++u) buf[i * m1 + u] = wv[u] * xa[i * m1 + u];
      } else if (slot == kNodeFeats) {
        for (int64_t k = 0; k < p.dout; ++k)
          for (int64_t u = 0; u < m1; ++u) buf[k * m1 + u] = wv[u] * ga[k * m1 + u];
      }
      for (int64_t t = 0; t < nnz; ++t) {
        const Entry<S>& en = ent[t];
        if (slot == kOutput) {
          const S s = en.c * yrow[yidx(en.j, v)];
          S* o = out + p.offo + en.k * m1;
          const S* b = buf + en.i * m1;
          for (int64_t u = 0; u < m1; ++u) o[u] += s * b[u];
        } else if (slot == kNodeFeats) {
          const S s = en.c * yrow[yidx(en.j, v)];
          S* o = out + p.off1 + en.i * m1;
          const S* b = buf + en.k * m1;
          for (int64_t u = 0; u < m1; ++u) o[u] += s * b[u];
        } else if (slot == kEdgeAttrs) {
          const S* b = buf + en.i * m1;
          const S* gk = ga + en.k * m1;
          S q = 0;
          for (int64_t u = 0; u < m1; ++u) q += b[u] * gk[u];
          out[yidx(en.j, v)] += en.c * q;
        } else {
          const S s = en.c * yrow[yidx(en.j, v)];
          const S* xi = xa + en.i * m1;
          const S* gk = ga + en.k * m1;
          S* o = out + p.woff + v;
          for (int64_t u = 0; u < m1; ++u) o[u * m2] += s * xi[u] * gk[u];
        }
      }
    }
  } else if (p.mode == kUUU) {
    const int64_t m = m1;
    S* yw = scratch;  // Y_j[u] W[u], (d2, m)
    if (slot == kOutput || slot == kNodeFeats) {
      for (int64_t j = 0; j < p.d2; ++j)
        for (int64_t u = 0; u < m; ++u) yw[j * m + u] = yrow[yidx(j, u)] * (wa == nullptr ? S(1) : wa[u]);
    }
    for (int64_t t = 0; t < nnz; ++t) {
      const Entry<S>& en = ent[t];
      if (slot == kOutput) {
        S* o = out + p.offo + en.k * m;
        for (int64_t u = 0; u < m; ++u) o[u] += en.c * yw[en.j * m + u] * xa[en.i * m + u];
      } else if (slot == kNodeFeats) {
        S* o = out + p.off1 + en.i * m;
        for (int64_t u = 0; u < m; ++u) o[u] += en.c * yw[en.j * m + u] * ga[en.k * m + u];
      } else if (slot == kEdgeAttrs) {
        for (int64_t u = 0; u < m; ++u)
          out[yidx(en.j, u)] += en.c * xa[en.i * m + u] * ga[en.k * m + u] * (wa == nullptr ? S(1) : wa[u]);
      } else {
        S* o = out + p.woff;
        for (int64_t u = 0; u < m; ++u) o[u] += en.c * yrow[yidx(en.j, u)] * xa[en.i * m + u] * ga[en.k * m + u];
      }
    }
  } else {  // uvw: W[(u m2 + v) mo + w]
    const int64_t uv = m1 * m2;
    S* t = scratch;  // (dout, m1 m2): t_k[u, v] (slots 3, 2) or h_k[u, v] = sum_w W[u, v, w] G_k[w] (0, 1)
    std::fill(t, t + p.dout * uv, S(0));
    if (slot == kOutput || slot == kEdgeWeights) {
      for (int64_t n = 0; n < nnz; ++n) {
        const Entry<S>& en = ent[n];
        for (int64_t u = 0; u < m1; ++u) {
          const S s = en.c * xa[en.i * m1 + u];
          S* tk = t + en.k * uv + u * m2;
          for (int64_t v = 0; v < m2; ++v) tk[v] += s * yrow[yidx(en.j, v)];
        }
      }
      for (int64_t k = 0; k < p.dout; ++k) {
        for (int64_t r = 0; r < uv; ++r) {
          const S s = t[k * uv + r];
          if (slot == kOutput) {
            S* o = out + p.offo + k * mo;
            const S* wr = wa + r * mo;
            for (int64_t c = 0; c < mo; ++c) o[c] += s * wr[c];
          } else {
            S* o = out + p.woff + r * mo;
            const S* gk = ga + k * mo;
            for (int64_t c = 0; c < mo; ++c) o[c] += s * gk[c];
          }
        }
      }
    } else {
      for (int64_t k = 0; k < p.dout; ++k) {
        const S* gk = ga + k * mo;
        for (int64_t r = 0; r < uv; ++r) {
          const S* wr = wa + r * mo;
          S h = 0;
          for (int64_t c = 0; c < mo; ++c) h += wr[c] * gk[c];
          t[k * uv + r] = h;
        }
      }
      for (int64_t n = 0; n < nnz; ++n) {
        const Entry<S>& en = ent[n];
        const S* hk = t + en.k * uv;
        if (slot == kNodeFeats) {
          S* o = out + p.off1 + en.i * m1;
          for (int64_t u = 0; u < m1; ++u) {
            S acc = 0;
            for (int64_t v = 0; v < m2; ++v) acc += yrow[yidx(en.j, v)] * hk[u * m2 + v];
            o[u] += en.c * acc;
          }
        } else {
          const S* xi = xa + en.i * m1;
          for (int64_t v = 0; v < m2; ++v) {
            S acc = 0;
            for (int64_t u = 0; u < m1; ++u) acc += xi[u] * hk[u * m2 + v];
            out[yidx(en.j, v)] += en.c * acc;
          }
        }
      }
    }
  }
}

template <class S>
int64_t generic_scratch_size(const std::vector<Path>& paths) {
  int64_t size = 1;
  for (const Path& p : paths) {
    if (p.mode == kUVU) size = std::max(size, p.mul1 * (1 + std::max(p.d1, p.dout)));
    if (p.mode == kUUU) size = std::max(size, p.d2 * p.mul1);
    if (p.mode == kUVW) size = std::max(size, p.dout * p.mul1 * p.mul2);
  }
  return size;
}

// ---------------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------------

// An irreps block [off, off + mul d) of a node row: the caller's mul_ir layout stores component (u, i)
// at off + u d + i, the kernels' canonical ir_mul layout at off + i mul + u.
struct Block {
  int64_t off, mul, d;
};

// The blocks of a node tensor that the paths reference and that the two layouts order differently
// (d > 1), after checking that they do not overlap. Columns outside them are copied unchanged.
std::vector<Block> layout_blocks(const std::vector<Path>& paths, bool in1, int64_t dim, const char* name) {
  std::vector<int64_t> owner(dim, -1), block_mul(dim, -1), block_dim(dim, -1);
  std::vector<Block> blocks;
  for (const Path& p : paths) {
    const int64_t off = in1 ? p.off1 : p.offo, mul = in1 ? p.mul1 : p.mulo, d = in1 ? p.d1 : p.dout;
    if (owner[off] == off && block_mul[off] == mul && block_dim[off] == d) continue;  // listed already
    for (int64_t c = off; c < off + mul * d; ++c) {
      TORCH_CHECK(owner[c] == -1 || (owner[c] == off && block_mul[c] == mul && block_dim[c] == d), kOp,
                  ": paths reference overlapping or inconsistent blocks of ", name, " (offsets ", owner[c], " and ",
                  off, ")");
      owner[c] = off;
      block_mul[c] = mul;
      block_dim[c] = d;
    }
    if (d > 1 && mul > 1) blocks.push_back({off, mul, d});
  }
  // In column order, so that permute_row can copy the columns between them in one pass.
  std::sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.off < b.off; });
  return blocks;
}

// One block of a node row between the layouts: (mul, D) -> (D, mul) when ToCanonical, else back.
// D is a compile-time constant so that the inner loop is unrolled (d <= 9 covers the templated
// kernels; other degrees take the loop with a runtime d).
template <bool ToCanonical, int D, class S>
void permute_block(const S* __restrict s, S* __restrict o, int64_t mul, int64_t d) {
  const int64_t dim = D > 0 ? D : d;
  if (ToCanonical) {
    for (int64_t u = 0; u < mul; ++u)
      EQSCALE_TP_UNROLL for (int64_t i = 0; i < dim; ++i) o[i * mul + u] = s[u * dim + i];
  } else {
    for (int64_t u = 0; u < mul; ++u)
      EQSCALE_TP_UNROLL for (int64_t i = 0; i < dim; ++i) o[u * dim + i] = s[i * mul + u];
  }
}

// One node row from the caller's layout to the canonical one (ToCanonical) or back. The strided
// side stays within one row (in L1); a per-column index table measured as the costliest part of
// writing the forward's output rows. Blocks are in column order (layout_blocks) and only the
// columns between them are copied: every destination column is written once.
template <bool ToCanonical, class S>
void permute_row(const S* __restrict src, S* __restrict dst, int64_t dim, const std::vector<Block>& blocks) {
  int64_t copied = 0;
  for (const Block& b : blocks) {
    std::memcpy(dst + copied, src + copied, (b.off - copied) * sizeof(S));
    copied = b.off + b.mul * b.d;
    const S* s = src + b.off;
    S* o = dst + b.off;
    switch (b.d) {
      case 3: permute_block<ToCanonical, 3>(s, o, b.mul, 3); break;
      case 5: permute_block<ToCanonical, 5>(s, o, b.mul, 5); break;
      case 7: permute_block<ToCanonical, 7>(s, o, b.mul, 7); break;
      case 9: permute_block<ToCanonical, 9>(s, o, b.mul, 9); break;
      default: permute_block<ToCanonical, 0>(s, o, b.mul, b.d); break;
    }
  }
  std::memcpy(dst + copied, src + copied, (dim - copied) * sizeof(S));
}

// A finished canonical row written to its place in the caller's tensor: as is in the ir_mul layout
// (mul_ir_blocks null), else permuted back to mul_ir.
template <class S>
void store_row(const S* row, S* dst, int64_t dim, const std::vector<Block>* mul_ir_blocks) {
  if (mul_ir_blocks == nullptr) {
    std::copy(row, row + dim, dst);
  } else {
    permute_row<false>(row, dst, dim, *mul_ir_blocks);
  }
}

template <class S>
void canonicalize(const S* raw, int64_t rows, int64_t dim, const std::vector<Block>& blocks, S* canon) {
  parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) permute_row<true>(raw + r * dim, canon + r * dim, dim, blocks);
  });
}

// ---------------------------------------------------------------------------------------------
// Block helpers of the fast paths
// ---------------------------------------------------------------------------------------------

// Yt[j][e] = Y_e[j] for the n edges of a block: the edge attributes (E, dim2), rows row_stride apart,
// transposed so that the per-edge CG scalars below are SIMD across edges.
template <class S>
void gather_attrs(const S* attrs, int64_t row_stride, int64_t dim2, const int64_t* edges, int64_t n, S* yt) {
  for (int64_t e = 0; e < n; ++e) {
    const S* row = attrs + edges[e] * row_stride;
    for (int64_t j = 0; j < dim2; ++j) yt[j * kBlock + e] = row[j];
  }
}

// Requests the edge-attribute rows of the next block: read in edge-sorted order they are scattered
// and each is a cache miss that gather_attrs would wait on (12% of the forward's driver time).
template <class S>
void prefetch_attrs(const S* attrs, int64_t dim2, const int64_t* edges, int64_t n) {
  for (int64_t e = 0; e < n; ++e) prefetch_span<false>(attrs + edges[e] * dim2, dim2);
}

#ifdef EQSCALE_TP_SIMD
// yd[ab][e] = sum over the cell's entries of c Y_e[off2 + j], every cell written (zeros included).
// Always the whole block width: fixed-size vector code instead of a loop over n per CG entry (the
// columns of edges past n hold finite leftovers that nobody reads).
template <class S>
void form_cells(const Problem<S>& pr, int64_t path, const S* yt, S* yd) {
  using T = Simd<S>;
  using V = typename T::V;
  constexpr int64_t R = kBlock / T::lanes;
  const Path& p = pr.paths[path];
  const auto& cells = pr.cells[path];
  const auto* list = pr.cell_entries[path].data();
  const S* base = yt + p.off2 * kBlock;
  for (size_t ab = 0; ab < cells.size(); ++ab) {
    const Cell cell = cells[ab];
    V r[R];
    EQSCALE_TP_UNROLL for (int64_t q = 0; q < R; ++q) r[q] = T::splat(S(0));
    for (int64_t t = cell.first; t < cell.first + cell.count; ++t) {
      const V c = T::splat(list[t].second);
      const S* col = base + list[t].first * kBlock;
      EQSCALE_TP_UNROLL for (int64_t q = 0; q < R; ++q) r[q] += c * T::load(col + q * T::lanes);
    }
    EQSCALE_TP_UNROLL for (int64_t q = 0; q < R; ++q) T::store(yd + ab * kBlock + q * T::lanes, r[q]);
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

// Number of weights of one path.
int64_t path_weight_numel(const Path& p) {
  if (!p.has_weight) return 0;
  return p.mode == kUVW ? p.mul1 * p.mul2 * p.mulo : (p.mode == kUVU ? p.mul1 * p.mul2 : p.mul1);
}

// Stable counting sort of the edges by key: offsets (rows + 1) and the sorted edge ids.
void group_edges(const int64_t* keys, int64_t num_edges, int64_t rows, std::vector<int64_t>& offsets,
                 std::vector<int64_t>& order) {
  offsets.assign(rows + 1, 0);
  for (int64_t e = 0; e < num_edges; ++e) ++offsets[keys[e] + 1];
  for (int64_t r = 0; r < rows; ++r) offsets[r + 1] += offsets[r];
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  order.resize(num_edges);
  for (int64_t e = 0; e < num_edges; ++e) order[cursor[keys[e]]++] = e;
}

// Row ranges [bounds[t], bounds[t + 1]) of the node-slot tasks, of about kNodeTaskWork edges and
// rows each; offsets are the CSR offsets of the rows' edges.
std::vector<int64_t> node_tasks(const std::vector<int64_t>& offsets, int64_t rows) {
  std::vector<int64_t> bounds{0};
  int64_t work = 0;
  for (int64_t r = 0; r < rows; ++r) {
    work += 1 + offsets[r + 1] - offsets[r];
    if (work >= kNodeTaskWork) {
      bounds.push_back(r + 1);
      work = 0;
    }
  }
  if (bounds.back() != rows) bounds.push_back(rows);
  return bounds;
}

// Columns [begin, end) of a per-edge output row that need zeros first: all of them, except, for a
// weight gradient, the weight slices that the templated kernels write outright.
template <class S>
std::vector<std::pair<int64_t, int64_t>> unwritten_columns(const Problem<S>& pr, bool weights, int64_t out_dim) {
  std::vector<char> written(out_dim, 0);
  if (weights)
    for (const Path& p : pr.paths)
      if (p.fast && p.has_weight) std::fill(written.begin() + p.woff, written.begin() + p.woff + p.mul1, 1);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int64_t c = 0; c < out_dim;) {
    if (written[c]) {
      ++c;
      continue;
    }
    const int64_t start = c;
    while (c < out_dim && !written[c]) ++c;
    ranges.push_back({start, c});
  }
  return ranges;
}

// Slots 3 (by receiver) and 0 (by sender): every destination row is summed over its edges in edge
// order into thread-local scratch and written once.
template <class S>
void node_slot(const Problem<S>& pr, int64_t slot, const std::vector<Block>* mul_ir_blocks, S* out) {
  const bool forward = slot == kOutput;
  const int64_t rows = forward ? pr.num_nodes : pr.sender_rows;
  const int64_t dst_dim = forward ? pr.dimo : pr.dim1;
  const int64_t src_dim = forward ? pr.dim1 : pr.dimo;
  const S* src_base = forward ? pr.x : pr.g;
  const int64_t* keys = forward ? pr.receivers : pr.senders;
  const int64_t* other = forward ? pr.senders : pr.receivers;
  std::vector<int64_t> offsets, order;
  group_edges(keys, pr.num_edges, rows, offsets, order);

  const std::vector<int64_t> bounds = node_tasks(offsets, rows);

  bool any_fast = false;
  int64_t cells_max = 1;
  for (size_t t = 0; t < pr.paths.size(); ++t) {
    any_fast |= pr.paths[t].fast;
    cells_max = std::max<int64_t>(cells_max, pr.cells[t].size());
  }
  const int64_t scratch_size = generic_scratch_size<S>(pr.paths);

  // Prefetching (see prefetch_slices): while path t of a block computes, path t's slices of the next
  // block's weight rows are requested, one edge's slice per edge the kernel does (NextSlices). The
  // source rows (x or G) are not: they come from a node tensor that mostly stays in L2, and
  // requesting them measured slower (more instructions, no fewer stalls) for the forward and the
  // node-feature gradient alike.
  parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<S> row(dst_dim), scratch(scratch_size), yt(any_fast ? pr.dim2 * kBlock : 0),
        yd(any_fast ? cells_max * kBlock : 0);
    const S* src[kBlock];
    const S* wts[kBlock];
    const S* next_wts[kBlock];
    for (int64_t task = task_begin; task < task_end; ++task) {
      for (int64_t r = bounds[task]; r < bounds[task + 1]; ++r) {
        std::fill(row.begin(), row.end(), S(0));
        for (int64_t pos = offsets[r]; pos < offsets[r + 1]; pos += kBlock) {
          const int64_t n = std::min(kBlock, offsets[r + 1] - pos);
          const int64_t* edges = order.data() + pos;
          for (int64_t e = 0; e < n; ++e) {
            src[e] = src_base + other[edges[e]] * src_dim;
            wts[e] = pr.weights_of(edges[e]);
          }
          const int64_t next_n = std::min(kBlock, pr.num_edges - (pos + n));
          for (int64_t e = 0; e < next_n; ++e) next_wts[e] = pr.shared ? nullptr : pr.weights_of(order[pos + n + e]);
          if (any_fast) {
            gather_attrs(pr.y, pr.dim2, pr.dim2, edges, n, yt.data());
            prefetch_attrs(pr.y, pr.dim2, order.data() + pos + n, next_n);
          }
          for (size_t t = 0; t < pr.paths.size(); ++t) {
            const Path& p = pr.paths[t];
#ifdef EQSCALE_TP_SIMD
            if (p.fast) {
              const NextSlices<S> next{next_wts, next_n, p.woff, path_weight_numel(p)};
              form_cells(pr, t, yt.data(), yd.data());
              const int64_t da = forward ? p.d1 : p.dout, db = forward ? p.dout : p.d1;
              node_fn<S>(da, db)(yd.data(), n, src, forward ? p.off1 : p.offo, wts, p.woff, p.has_weight != 0,
                                 row.data() + (forward ? p.offo : p.off1), p.mul1, !forward, next);
              continue;
            }
#endif
            prefetch_slices<false>(next_wts, next_n, p.woff, path_weight_numel(p));
            for (int64_t e = 0; e < n; ++e) {
              generic_path<S>(slot, p, pr.entries.data() + p.cg_start, pr.layout, forward ? src[e] : nullptr,
                              pr.y + edges[e] * pr.dim2, wts[e], forward ? nullptr : src[e], row.data(),
                              scratch.data());
            }
          }
        }
        store_row(row.data(), out + r * dst_dim, dst_dim, mul_ir_blocks);
      }
    }
  });
}

// Slots 1 and 2: one output row per edge (or shared-weight partial rows), over fixed chunks of the
// receiver-sorted edges, so that a receiver's row of G stays in cache across its edges.
template <class S>
void edge_slot(const Problem<S>& pr, int64_t slot, S* out) {
  std::vector<int64_t> offsets, order;
  group_edges(pr.receivers, pr.num_edges, pr.num_nodes, offsets, order);
  const int64_t out_dim = slot == kEdgeAttrs ? pr.dim2 : pr.weight_numel;
  const bool shared = slot == kEdgeWeights && pr.shared;
  const int64_t chunks = (pr.num_edges + kEdgeChunk - 1) / kEdgeChunk;
  std::vector<S> partials(shared ? chunks * out_dim : 0, S(0));

  bool any_fast = false;
  int64_t cells_max = 1;
  for (size_t t = 0; t < pr.paths.size(); ++t) {
    any_fast |= pr.paths[t].fast;
    cells_max = std::max<int64_t>(cells_max, pr.cells[t].size());
  }
  const int64_t scratch_size = generic_scratch_size<S>(pr.paths);
  int64_t pair_max = 1;
  for (const Path& p : pr.paths) pair_max = std::max(pair_max, p.d1 * p.dout);

  const std::vector<std::pair<int64_t, int64_t>> zero_ranges = unwritten_columns(pr, slot == kEdgeWeights, out_dim);

  parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<S> scratch(scratch_size), yt(any_fast && slot == kEdgeWeights ? pr.dim2 * kBlock : 0),
        yd(any_fast && slot == kEdgeWeights ? cells_max * kBlock : 0), q(pair_max * std::max<int64_t>(1, simd_lanes<S>()));
    const S* xs[kBlock];
    const S* gs[kBlock];
    const S* ws[kBlock];
    S* outs[kBlock];
    // The next block's rows, requested path slice by path slice while this block computes (see
    // node_slot); rows of G repeat along the receiver-sorted edges, so only new ones are requested.
    const S* next_xs[kBlock];
    const S* next_gs[kBlock];
    const S* next_ws[kBlock];
    const S* next_outs[kBlock];
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t chunk_end_pos = std::min(pr.num_edges, (chunk + 1) * kEdgeChunk);
      for (int64_t pos = chunk * kEdgeChunk; pos < chunk_end_pos; pos += kBlock) {
        const int64_t n = std::min(kBlock, chunk_end_pos - pos);
        const int64_t* edges = order.data() + pos;
        const int64_t next_n = std::min(kBlock, pr.num_edges - (pos + n));
        for (int64_t e = 0; e < next_n; ++e) {
          const int64_t edge = order[pos + n + e];
          next_xs[e] = pr.x + pr.senders[edge] * pr.dim1;
          next_gs[e] = pr.g + pr.receivers[edge] * pr.dimo;
          if (e > 0 && next_gs[e] == next_gs[e - 1]) next_gs[e] = nullptr;
          next_ws[e] = slot == kEdgeAttrs && !pr.shared ? pr.weights_of(edge) : nullptr;
          next_outs[e] = slot == kEdgeWeights && !shared ? out + edge * out_dim : nullptr;
        }
        for (int64_t e = 0; e < n; ++e) {
          xs[e] = pr.x + pr.senders[edges[e]] * pr.dim1;
          gs[e] = pr.g + pr.receivers[edges[e]] * pr.dimo;
          ws[e] = pr.weights_of(edges[e]);
          outs[e] = shared ? partials.data() + chunk * out_dim : out + edges[e] * out_dim;
          if (!shared)
            for (const auto& range : zero_ranges) std::fill(outs[e] + range.first, outs[e] + range.second, S(0));
        }
        if (any_fast && slot == kEdgeWeights) gather_attrs(pr.y, pr.dim2, pr.dim2, edges, n, yt.data());
        for (size_t t = 0; t < pr.paths.size(); ++t) {
          const Path& p = pr.paths[t];
          if (t == 0 || p.off1 != pr.paths[t - 1].off1) prefetch_slices<false>(next_xs, next_n, p.off1, p.d1 * p.mul1);
          prefetch_slices<false>(next_gs, next_n, p.offo, p.dout * p.mulo);
          prefetch_slices<false>(next_ws, next_n, p.woff, path_weight_numel(p));
          prefetch_slices<true>(next_outs, next_n, p.woff, path_weight_numel(p));
          if (slot == kEdgeWeights && !p.has_weight) continue;
#ifdef EQSCALE_TP_SIMD
          if (p.fast && slot == kEdgeWeights) {
            form_cells(pr, t, yt.data(), yd.data());
            const WeightFn<S> fn = weight_fn<S>(p.d1, p.dout);
            for (int64_t e = 0; e < n; ++e)
              fn(yd.data() + e, xs[e] + p.off1, gs[e] + p.offo, outs[e] + p.woff, p.mul1, shared);
            continue;
          }
          if (p.fast) {
            using T = Simd<S>;
            const AttrFn<S> fn = attr_fn<S>(p.d1, p.dout);
            const auto& by_j = pr.cells[t];
            const auto& list = pr.cell_entries[t];
            for (int64_t e = 0; e < n; ++e) {
              const S* w = p.has_weight ? ws[e] + p.woff : nullptr;
              fn(xs[e] + p.off1, w, gs[e] + p.offo, q.data(), p.mul1);
              S* o = outs[e] + p.off2;
              for (int64_t j = 0; j < p.d2; ++j) {
                const Cell cell = by_j[j];
                if (cell.count == 0) continue;
                typename T::V acc = T::splat(S(0));
                for (int64_t m = cell.first; m < cell.first + cell.count; ++m)
                  acc += T::splat(list[m].second) * T::load(q.data() + list[m].first * T::lanes);
                o[j] += T::sum(acc);
              }
            }
            continue;
          }
#endif
          for (int64_t e = 0; e < n; ++e) {
            generic_path<S>(slot, p, pr.entries.data() + p.cg_start, pr.layout, xs[e], pr.y + edges[e] * pr.dim2, ws[e],
                            gs[e], outs[e], scratch.data());
          }
        }
      }
    }
  });
  if (shared) {
    std::fill(out, out + out_dim, S(0));
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      for (int64_t c = 0; c < out_dim; ++c) out[c] += partials[chunk * out_dim + c];
  }
}

// ---------------------------------------------------------------------------------------------
// Validation and set-up
// ---------------------------------------------------------------------------------------------

// expanded_rows: also accept one row expanded along dim 0 (stride 0, unit stride along dim 1).
void check_float(const char* name, const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape,
                 const char* shape_text, bool expanded_rows = false) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must have dtype ", dtype, " (that of the other inputs), got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must have shape ", shape_text, " = ", shape, ", got ", t.sizes());
  const bool expanded = expanded_rows && t.dim() == 2 && t.stride(0) == 0 && t.stride(1) == 1;
  TORCH_CHECK(t.is_contiguous() || expanded, kOp, ": ", name, " must be contiguous",
              expanded_rows ? " (or one row expanded along dim 0)" : "");
}

std::vector<Path> read_paths(const at::Tensor& paths, const at::Tensor& cg_index, int64_t dim1, int64_t dim2,
                             int64_t weight_numel, int64_t dimo) {
  TORCH_CHECK(paths.device().is_cpu() && paths.scalar_type() == at::kLong && paths.dim() == 2 &&
                  paths.size(1) == kNumPathFields && paths.is_contiguous(),
              kOp, ": paths must be a contiguous CPU int64 tensor of shape (P, ", kNumPathFields, "), got ",
              paths.scalar_type(), " ", paths.sizes());
  const int64_t nnz = cg_index.size(0);
  const int64_t* table = paths.data_ptr<int64_t>();
  std::vector<Path> out;
  for (int64_t t = 0; t < paths.size(0); ++t) {
    const int64_t* f = table + t * kNumPathFields;
    Path p{f[kMode], f[kHasWeight], f[kIn1Offset], f[kIn1Mul], f[kIn1Dim], f[kIn2Offset], f[kIn2Mul], f[kIn2Dim],
           f[kOutOffset], f[kOutMul], f[kOutDim], f[kWeightOffset], f[kCgStart], f[kCgCount], false};
    TORCH_CHECK(p.mode >= kUVW && p.mode <= kUUU, kOp, ": paths[", t, "]: mode must be 0 (uvw), 1 (uvu) or 2 (uuu), got ",
                p.mode);
    TORCH_CHECK(p.has_weight == 0 || p.has_weight == 1, kOp, ": paths[", t, "]: has_weight must be 0 or 1");
    TORCH_CHECK(p.mode != kUVW || p.has_weight, kOp, ": paths[", t, "]: uvw paths need weights");
    for (int64_t v : {p.mul1, p.d1, p.mul2, p.d2, p.mulo, p.dout, p.off1, p.off2, p.offo, p.woff, p.cg_start, p.cg_count})
      TORCH_CHECK(v >= 0, kOp, ": paths[", t, "] has a negative field");
    TORCH_CHECK(p.off1 + p.mul1 * p.d1 <= dim1, kOp, ": paths[", t, "]: block of node_feats beyond dim_in1=", dim1);
    TORCH_CHECK(p.off2 + p.mul2 * p.d2 <= dim2, kOp, ": paths[", t, "]: block of edge_attrs beyond dim_in2=", dim2);
    TORCH_CHECK(p.offo + p.mulo * p.dout <= dimo, kOp, ": paths[", t, "]: block of grad_out beyond dim_out=", dimo);
    TORCH_CHECK(p.cg_start + p.cg_count <= nnz, kOp, ": paths[", t, "]: CG entries beyond cg_index (", nnz, " rows)");
    if (p.mode == kUVU)
      TORCH_CHECK(p.mulo == p.mul1, kOp, ": paths[", t, "]: uvu needs out mul == in1 mul");
    if (p.mode == kUUU)
      TORCH_CHECK(p.mul1 == p.mul2 && p.mul2 == p.mulo, kOp, ": paths[", t, "]: uuu needs equal multiplicities");
    if (p.has_weight) {
      const int64_t numel = path_weight_numel(p);
      TORCH_CHECK(p.woff + numel <= weight_numel, kOp, ": paths[", t, "]: weights beyond weight_numel=", weight_numel);
    }
    if (p.mul1 == 0 || p.mul2 == 0 || p.mulo == 0 || p.cg_count == 0) continue;  // contributes nothing
    out.push_back(p);
  }
  return out;
}

// How the CG entries of a fast path are grouped into cells (see Problem::cells).
enum class Cells {
  kIK,  // cells (i, k), entries (j, c): y_ik = sum_j c Y_j (forward, weight gradient)
  kKI,  // cells (k, i), entries (j, c): the node-feature gradient sums over k into i
  kJ,   // cells j, entries (i dout + k, c): the edge-attribute gradient combines q_ik per component j
  kJK,  // cells (j, k), entries (i, c): P_jk = sum_i c x_i of the fused backward
};

template <class S>
void group_cells(const std::vector<Entry<S>>& entries, const Path& p, Cells kind, std::vector<Cell>& cells,
                 std::vector<std::pair<int64_t, S>>& cell_entries) {
  const int64_t count = kind == Cells::kJ ? p.d2 : (kind == Cells::kJK ? p.d2 * p.dout : p.d1 * p.dout);
  std::vector<std::vector<std::pair<int64_t, S>>> lists(count);
  for (int64_t m = p.cg_start; m < p.cg_start + p.cg_count; ++m) {
    const Entry<S>& en = entries[m];
    switch (kind) {
      case Cells::kIK: lists[en.i * p.dout + en.k].push_back({en.j, en.c}); break;
      case Cells::kKI: lists[en.k * p.d1 + en.i].push_back({en.j, en.c}); break;
      case Cells::kJ: lists[en.j].push_back({en.i * p.dout + en.k, en.c}); break;
      case Cells::kJK: lists[en.j * p.dout + en.k].push_back({en.i, en.c}); break;
    }
  }
  for (const auto& list : lists) {
    cells.push_back({static_cast<int64_t>(cell_entries.size()), static_cast<int64_t>(list.size())});
    cell_entries.insert(cell_entries.end(), list.begin(), list.end());
  }
}

// A node tensor (rows, dim) in canonical order: itself in the ir_mul layout, else a permuted copy
// kept alive by `keep`; null when undefined.
template <class S>
const S* node_operand(const at::Tensor& t, int64_t rows, int64_t dim, const std::vector<Block>& blocks,
                      int64_t layout, const at::TensorOptions& options, at::Tensor& keep) {
  if (!t.defined()) return nullptr;
  if (layout == 1) return t.data_ptr<S>();
  keep = empty_huge({rows, dim}, options);
  canonicalize<S>(t.data_ptr<S>(), rows, dim, blocks, keep.data_ptr<S>());
  return keep.data_ptr<S>();
}

// A Problem with its node operands in canonical order, and the tensors that keep those copies alive.
template <class S>
struct Setup {
  Problem<S> pr;
  std::vector<Block> blocks1, blockso;  // mul_ir blocks of node_feats and of the output
  at::Tensor x_canon, g_canon;
};

// Everything but the cells, which depend on the open slot.
template <class S>
void set_up(Setup<S>& su, const at::Tensor* slots, const at::Tensor& edge_index, int64_t num_nodes,
            const std::vector<Path>& paths, const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t layout,
            const std::vector<int64_t>& sizes, const at::TensorOptions& options) {
  Problem<S>& pr = su.pr;
  pr.num_edges = edge_index.size(1);
  pr.sender_rows = sizes[0];
  pr.dim1 = sizes[1];
  pr.dim2 = sizes[2];
  pr.weight_numel = sizes[3];
  pr.shared = sizes[4] == 1;
  pr.dimo = sizes[5];
  pr.num_nodes = num_nodes;
  pr.layout = layout;
  pr.senders = edge_index.data_ptr<int64_t>();
  pr.receivers = pr.senders + pr.num_edges;
  pr.paths = paths;

  const int64_t* idx = cg_index.data_ptr<int64_t>();
  const double* val = cg_value.data_ptr<double>();
  pr.entries.resize(cg_index.size(0));
  for (int64_t t = 0; t < cg_index.size(0); ++t) pr.entries[t] = {idx[3 * t], idx[3 * t + 1], idx[3 * t + 2], S(val[t])};
  const int64_t lanes = simd_lanes<S>();
  for (Path& p : pr.paths) {
    for (int64_t t = p.cg_start; t < p.cg_start + p.cg_count; ++t) {
      const Entry<S>& en = pr.entries[t];
      TORCH_CHECK(en.i >= 0 && en.i < p.d1 && en.j >= 0 && en.j < p.d2 && en.k >= 0 && en.k < p.dout, kOp,
                  ": cg_index[", t, "] = (", en.i, ", ", en.j, ", ", en.k, ") out of range for its path's dims (", p.d1,
                  ", ", p.d2, ", ", p.dout, ")");
    }
    p.fast = lanes > 0 && p.mode == kUVU && p.mul2 == 1 && p.mul1 % lanes == 0 && p.d1 <= 2 * kMaxFastL + 1 &&
             p.dout <= 2 * kMaxFastL + 1;
  }

  // Canonical (ir_mul) copies of the node operands when the caller's layout is mul_ir.
  if (layout == 0) {
    su.blocks1 = layout_blocks(pr.paths, true, pr.dim1, "node_feats");
    su.blockso = layout_blocks(pr.paths, false, pr.dimo, "grad_out");
  }
  pr.x = node_operand<S>(slots[kNodeFeats], pr.sender_rows, pr.dim1, su.blocks1, layout, options, su.x_canon);
  pr.g = node_operand<S>(slots[kOutput], num_nodes, pr.dimo, su.blockso, layout, options, su.g_canon);
  pr.y = slots[kEdgeAttrs].defined() ? slots[kEdgeAttrs].data_ptr<S>() : nullptr;
  pr.w = slots[kEdgeWeights].defined() && pr.weight_numel > 0 ? slots[kEdgeWeights].data_ptr<S>() : nullptr;
}

template <class S>
void build_cells(Problem<S>& pr, int64_t slot) {
  pr.cells.assign(pr.paths.size(), {});
  pr.cell_entries.assign(pr.paths.size(), {});
  for (size_t t = 0; t < pr.paths.size(); ++t) {
    if (!pr.paths[t].fast) continue;
    const Cells kind = slot == kEdgeAttrs ? Cells::kJ : (slot == kNodeFeats ? Cells::kKI : Cells::kIK);
    group_cells(pr.entries, pr.paths[t], kind, pr.cells[t], pr.cell_entries[t]);
  }
}

template <class S>
at::Tensor contract(const at::Tensor* slots, const at::Tensor& edge_index, int64_t num_nodes, int64_t slot,
                    const std::vector<Path>& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                    int64_t layout, const std::vector<int64_t>& sizes, const at::TensorOptions& options) {
  Setup<S> su;
  set_up(su, slots, edge_index, num_nodes, paths, cg_index, cg_value, layout, sizes, options);
  Problem<S>& pr = su.pr;
  build_cells(pr, slot);
  at::Tensor out;
  if (slot == kOutput || slot == kNodeFeats) {
    const bool forward = slot == kOutput;
    // Pooled: at L = 4, N = 1000 the output is 48-96 MB, a fresh mapping faulted in on every call
    // otherwise (measured side by side, 2 threads: the forward 1.3x faster at L = 4, mul 32 and 64).
    out = empty_huge({forward ? num_nodes : pr.sender_rows, forward ? pr.dimo : pr.dim1}, options);
    node_slot<S>(pr, slot, layout == 0 ? (forward ? &su.blockso : &su.blocks1) : nullptr, out.data_ptr<S>());
  } else if (slot == kEdgeAttrs) {
    out = empty_huge({pr.num_edges, pr.dim2}, options);
    edge_slot<S>(pr, slot, out.data_ptr<S>());
  } else {
    out = pr.shared ? at::empty({pr.weight_numel}, options) : empty_huge({pr.num_edges, pr.weight_numel}, options);
    edge_slot<S>(pr, slot, out.data_ptr<S>());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Fused backward: slots 0, 1 and 2 in one pass over the edges
// ---------------------------------------------------------------------------------------------

// Whether backward_fused covers the problem: every path templated, per-edge weights.
template <class S>
bool fused_backward_applies(const Problem<S>& pr) {
  if (pr.shared && pr.w != nullptr) return false;  // a shared weight gradient sums over all edges
  for (const Path& p : pr.paths)
    if (!p.fast) return false;
  return simd_lanes<S>() > 0;
}

#ifdef EQSCALE_TP_SIMD
// dst[0, len) = src[0, len) (src aligned to the vector size), bypassing the caches where dst is aligned.
template <class S>
void stream_row(const S* src, int64_t len, S* dst) {
  using T = Simd<S>;
  if (!T::aligned(dst)) {
    std::memcpy(dst, src, len * sizeof(S));
    return;
  }
  int64_t c = 0;
  for (; c + T::lanes <= len; c += T::lanes) T::stream(dst + c, T::load(src + c));
  for (; c < len; ++c) dst[c] = src[c];
}

// P_jk = sum_i c x_i of one path for the sender row x (canonical), (d2 dout, mul), from the (j, k)
// cells: the sender-side half of the edge-attribute and weight gradients in backward_chunk.
template <class S>
void sender_products(const Problem<S>& pr, int64_t path, const S* x, S* products) {
  using T = Simd<S>;
  using V = typename T::V;
  const Path& p = pr.paths[path];
  const auto& cells = pr.sender_cells[path];
  const auto* list = pr.sender_cell_entries[path].data();
  const S* xa = x + p.off1;
  for (size_t jk = 0; jk < cells.size(); ++jk) {
    S* out = products + jk * p.mul1;
    for (int64_t c = 0; c < p.mul1; c += T::lanes) {
      V acc = T::splat(S(0));
      for (int64_t t = cells[jk].first; t < cells[jk].first + cells[jk].count; ++t)
        acc += T::splat(list[t].second) * T::load(xa + list[t].first * p.mul1 + c);
      T::store(out + c, acc);
    }
  }
}

// The cotangents of the first-order gradients in the double backward: hx (canonical sender rows, like
// x), hy (E, dim2) and hw (E, weight_numel). The per-edge ones may repeat one row (stride 0): the
// backward of a sum expands a single row, and materialising it would write an E x weight_numel
// tensor only to read it back.
template <class S>
struct Cotangents {
  const S* hx;
  const S* hy;
  const S* hw;
  int64_t hy_stride, hw_stride;
};

// The gradients of <forward, G> with respect to the node features (gx, canonical rows written in the
// caller's layout), the edge attributes (gy) and the weights (gw), each computed when not null. Edges
// are grouped by sender: each sender's gradient row is summed over its edges in edge order in
// thread-local scratch and written once, and the per-edge rows belong to exactly one sender, so the
// result is deterministic whatever the threads do. Per edge and path, z_i = sum_k y_ik G_k serves both
// the node-feature and the weight gradient (backward_chunk), which is where this beats three separate
// passes; it also reads G, W and the edge attributes once instead of two or three times.
//
// With cotangents h (not null), the same sweep gives the double backward instead: the gradients of
// <hx, gx> + <hy, gy> + <hw, gw> (double_backward_chunk), all three of them, in one pass instead of
// one per cotangent.
template <class S>
void backward_fused(const Problem<S>& pr, const Cotangents<S>* h, const std::vector<Block>* mul_ir_blocks, S* gx,
                    S* gy, S* gw) {
  using T = Simd<S>;
  std::vector<int64_t> offsets, order;
  group_edges(pr.senders, pr.num_edges, pr.sender_rows, offsets, order);
  const std::vector<int64_t> bounds = node_tasks(offsets, pr.sender_rows);
  const std::vector<std::pair<int64_t, int64_t>> gw_zero = unwritten_columns(pr, true, pr.weight_numel);
  int64_t cells_max = 1, products_max = 1, mul_max = 1;
  for (size_t t = 0; t < pr.paths.size(); ++t) {
    const Path& p = pr.paths[t];
    cells_max = std::max<int64_t>(cells_max, pr.cells[t].size());
    products_max = std::max(products_max, p.d2 * p.dout * p.mul1);
    mul_max = std::max(mul_max, p.mul1);
  }
  // Paths without weights read a row of ones instead (the same kernels, W = 1), and a row of zeros
  // for the cotangent of their (nonexistent) weight gradient.
  const std::vector<S> ones(mul_max, S(1)), zeros(mul_max, S(0));
  const bool twice = h != nullptr;
  const bool want_attrs = gy != nullptr || twice;

  parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<S> row(pr.dim1), yt(pr.dim2 * kBlock), yd(cells_max * kBlock), bt(twice ? pr.dim2 * kBlock : 0),
        ybd(twice ? cells_max * kBlock : 0), products(want_attrs ? products_max : 0),
        cotangent_products(twice ? products_max : 0), attrs(want_attrs ? kBlock * pr.dim2 * T::lanes : 0);
    // The block's weight-gradient rows are formed here (in L2) and then streamed out row by row:
    // written in place, path slice by path slice into rows scattered over memory, they cost about
    // as much as all the arithmetic of the backward.
    const int64_t gw_stride = (pr.weight_numel + T::lanes - 1) / T::lanes * T::lanes;
    std::vector<S> gw_rows(gw == nullptr ? 0 : kBlock * gw_stride + T::lanes);
    S* gw_block = gw_rows.data();
    while (gw != nullptr && !T::aligned(gw_block)) ++gw_block;
    const S* gs[kBlock];
    const S* ws[kBlock];
    const S* hws[kBlock];
    const S* ones_rows[kBlock];
    const S* zeros_rows[kBlock];
    S* gws[kBlock];
    S* no_rows[kBlock];
    const S* next_ws[kBlock];
    const S* next_hws[kBlock];
    for (int64_t e = 0; e < kBlock; ++e) {
      ones_rows[e] = ones.data();
      zeros_rows[e] = zeros.data();
      no_rows[e] = nullptr;
      next_hws[e] = nullptr;
      gws[e] = gw == nullptr ? nullptr : gw_block + e * gw_stride;
      if (gws[e] != nullptr)
        for (const auto& range : gw_zero) std::fill(gws[e] + range.first, gws[e] + range.second, S(0));
    }
    for (int64_t task = task_begin; task < task_end; ++task) {
      for (int64_t s = bounds[task]; s < bounds[task + 1]; ++s) {
        std::fill(row.begin(), row.end(), S(0));
        const S* x = pr.x + s * pr.dim1;
        const S* hx = twice ? h->hx + s * pr.dim1 : nullptr;
        for (int64_t pos = offsets[s]; pos < offsets[s + 1]; pos += kBlock) {
          const int64_t n = std::min(kBlock, offsets[s + 1] - pos);
          const int64_t* edges = order.data() + pos;
          for (int64_t e = 0; e < n; ++e) {
            gs[e] = pr.g + pr.receivers[edges[e]] * pr.dimo;
            ws[e] = pr.w == nullptr ? ones.data() : pr.w + edges[e] * pr.weight_numel;
            if (twice) hws[e] = h->hw + edges[e] * h->hw_stride;
          }
          // The next block's weight rows, requested path slice by path slice while this block
          // computes (see node_slot).
          const int64_t next_n = std::min(kBlock, pr.num_edges - (pos + n));
          for (int64_t e = 0; e < next_n; ++e) {
            next_ws[e] = pr.w == nullptr ? nullptr : pr.w + order[pos + n + e] * pr.weight_numel;
            if (twice && h->hw_stride != 0) next_hws[e] = h->hw + order[pos + n + e] * h->hw_stride;
          }
          gather_attrs(pr.y, pr.dim2, pr.dim2, edges, n, yt.data());
          prefetch_attrs(pr.y, pr.dim2, order.data() + pos + n, next_n);
          if (twice) {
            gather_attrs(h->hy, h->hy_stride, pr.dim2, edges, n, bt.data());
          }
          if (want_attrs) std::fill(attrs.begin(), attrs.begin() + n * pr.dim2 * T::lanes, S(0));
          for (size_t t = 0; t < pr.paths.size(); ++t) {
            const Path& p = pr.paths[t];
            const int64_t numel = path_weight_numel(p);
            // Requested edge by edge from the kernels' loops (see node_slot).
            const NextSlices<S> next_w{next_ws, next_n, p.woff, numel};
            form_cells(pr, t, yt.data(), yd.data());
            if (want_attrs) sender_products(pr, t, x, products.data());
            const S* const* path_ws = p.has_weight ? ws : ones_rows;
            const int64_t path_woff = p.has_weight ? p.woff : 0;
            S* const* path_gws = p.has_weight ? gws : no_rows;
            if (twice) {
              const NextSlices<S> next_hw{next_hws, next_n, p.woff, numel};
              form_cells(pr, t, bt.data(), ybd.data());
              sender_products(pr, t, hx, cotangent_products.data());
              double_backward_fn<S>(p.d1, p.dout)(
                  yd.data(), ybd.data(), n, gs, p.offo, path_ws, p.has_weight ? hws : zeros_rows, path_woff,
                  row.data() + p.off1, path_gws, p.woff, products.data(), cotangent_products.data(),
                  yt.data() + p.off2 * kBlock, bt.data() + p.off2 * kBlock, p.d2, attrs.data() + p.off2 * T::lanes,
                  pr.dim2, p.mul1, next_w, next_hw);
              continue;
            }
            backward_fn<S>(p.d1, p.dout, want_attrs)(
                yd.data(), n, x + p.off1, gs, p.offo, path_ws, path_woff, row.data() + p.off1, path_gws, p.woff,
                products.data(), yt.data() + p.off2 * kBlock, p.d2, attrs.data() + p.off2 * T::lanes, pr.dim2,
                p.mul1, next_w);
          }
          if (gw != nullptr)
            for (int64_t e = 0; e < n; ++e) stream_row(gws[e], pr.weight_numel, gw + edges[e] * pr.weight_numel);
          if (gy != nullptr) {
            for (int64_t e = 0; e < n; ++e) {
              S* out = gy + edges[e] * pr.dim2;
              for (int64_t j = 0; j < pr.dim2; ++j) out[j] = T::sum(T::load(attrs.data() + (e * pr.dim2 + j) * T::lanes));
            }
          }
        }
        if (gx != nullptr) store_row(row.data(), gx + s * pr.dim1, pr.dim1, mul_ir_blocks);
      }
    }
    T::fence();  // the streamed weight-gradient rows are complete before the caller reads them
  });
}
#endif

// The checked inputs of either operator: the four slots (undefined where open or absent), edge_index
// as int64, the paths that contribute, and the dtype.
struct Inputs {
  at::Tensor slots[4];
  at::Tensor index;
  std::vector<Path> paths;
  std::vector<int64_t> sizes;
  at::TensorOptions options;
};

// open_slot: the slot that must be None, or -1 for the backward (every slot given). edge_weights
// may be None when weight_numel == 0.
Inputs check_inputs(const c10::optional<at::Tensor>* given, const at::Tensor& edge_index, int64_t num_nodes,
                    int64_t open_slot, const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value,
                    int64_t layout, at::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() == 6, kOp,
              ": sizes must be [sender_rows, dim_in1, dim_in2, weight_numel, weights_shared, dim_out], got ", sizes);
  for (int64_t v : sizes) TORCH_CHECK(v >= 0, kOp, ": sizes must be non-negative, got ", sizes);
  TORCH_CHECK(sizes[4] == 0 || sizes[4] == 1, kOp, ": sizes[4] (weights_shared) must be 0 or 1, got ", sizes[4]);
  Inputs in;
  in.sizes.assign(sizes.begin(), sizes.end());
  const int64_t sender_rows = in.sizes[0], dim1 = in.sizes[1], dim2 = in.sizes[2], weight_numel = in.sizes[3],
                dimo = in.sizes[5];
  const bool shared = in.sizes[4] == 1;
  TORCH_CHECK(num_nodes >= 0, kOp, ": num_nodes must be >= 0, got ", num_nodes);
  TORCH_CHECK(layout == 0 || layout == 1, kOp, ": layout must be 0 (mul_ir) or 1 (ir_mul), got ", layout);

  const char* names[4] = {"node_feats", "edge_attrs", "edge_weights", "grad_out"};
  at::Tensor* slots = in.slots;
  for (int s = 0; s < 4; ++s) {
    const bool present = given[s].has_value() && given[s]->defined();
    if (s == open_slot) {
      TORCH_CHECK(!present, kOp, ": ", names[s], " must be None: it is the open slot (open_slot=", open_slot, ")");
    } else if (present) {
      slots[s] = *given[s];
    } else {
      TORCH_CHECK(s == kEdgeWeights && weight_numel == 0, kOp, ": ", names[s],
                  " is required (only the open slot, and edge_weights when weight_numel == 0, may be None)");
    }
  }

  TORCH_CHECK(edge_index.device().is_cpu(), kOp, ": edge_index must be a CPU tensor, got device ", edge_index.device());
  TORCH_CHECK(edge_index.scalar_type() == at::kLong || edge_index.scalar_type() == at::kInt, kOp,
              ": edge_index must be int64 (or int32), got ", edge_index.scalar_type());
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2, kOp, ": edge_index must have shape (2, E), got ",
              edge_index.sizes());
  in.index = edge_index.to(at::kLong).contiguous();
  const int64_t num_edges = in.index.size(1);

  TORCH_CHECK(cg_index.device().is_cpu() && cg_index.scalar_type() == at::kLong && cg_index.dim() == 2 &&
                  cg_index.size(1) == 3 && cg_index.is_contiguous(),
              kOp, ": cg_index must be a contiguous CPU int64 tensor of shape (NNZ, 3), got ", cg_index.scalar_type(), " ",
              cg_index.sizes());
  TORCH_CHECK(cg_value.device().is_cpu() && cg_value.scalar_type() == at::kDouble && cg_value.dim() == 1 &&
                  cg_value.size(0) == cg_index.size(0) && cg_value.is_contiguous(),
              kOp, ": cg_value must be a contiguous CPU float64 tensor of shape (NNZ,) = (", cg_index.size(0), ",), got ",
              cg_value.scalar_type(), " ", cg_value.sizes());
  in.paths = read_paths(paths, cg_index, dim1, dim2, weight_numel, dimo);

  at::ScalarType dtype = at::kFloat;
  bool have_dtype = false;
  for (int s = 0; s < 4; ++s) {
    if (!slots[s].defined()) continue;
    if (!have_dtype) {
      dtype = slots[s].scalar_type();
      have_dtype = true;
      TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, kOp, ": ", names[s], " must be float32 or float64, got ",
                  dtype);
    }
  }
  TORCH_CHECK(have_dtype, kOp, ": no input tensor given");
  if (slots[kNodeFeats].defined())
    check_float("node_feats", slots[kNodeFeats], dtype, {sender_rows, dim1}, "(sizes[0], sizes[1])");
  if (slots[kEdgeAttrs].defined()) check_float("edge_attrs", slots[kEdgeAttrs], dtype, {num_edges, dim2}, "(E, sizes[2])");
  if (slots[kEdgeWeights].defined()) {
    if (shared) {
      check_float("edge_weights", slots[kEdgeWeights], dtype, {weight_numel}, "(sizes[3],) (shared weights)");
    } else {
      check_float("edge_weights", slots[kEdgeWeights], dtype, {num_edges, weight_numel}, "(E, sizes[3])");
    }
  }
  if (slots[kOutput].defined()) check_float("grad_out", slots[kOutput], dtype, {num_nodes, dimo}, "(num_nodes, sizes[5])");

  const int64_t* senders = in.index.data_ptr<int64_t>();
  const int64_t* receivers = senders + num_edges;
  for (int64_t e = 0; e < num_edges; ++e) {
    // The only range check on the cpu backend's path (eqscale.ops.tp_conv leaves it to this pass).
    TORCH_CHECK_VALUE(senders[e] >= 0 && senders[e] < sender_rows, kOp, ": edge_index out of range: edge_index[0, ", e,
                      "] = ", senders[e], " is not in [0, ", sender_rows, ") (sender_rows = sizes[0])");
    TORCH_CHECK_VALUE(receivers[e] >= 0 && receivers[e] < num_nodes, kOp, ": edge_index out of range: edge_index[1, ",
                      e, "] = ", receivers[e], " is not in [0, ", num_nodes, ") (num_nodes)");
  }
  in.options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  return in;
}

#ifdef EQSCALE_TP_SIMD
// The cells that backward_fused reads: (i, k) cells of the edge rows, (j, k) cells of the senders.
template <class S>
void build_backward_cells(Problem<S>& pr) {
  build_cells(pr, kOutput);
  pr.sender_cells.assign(pr.paths.size(), {});
  pr.sender_cell_entries.assign(pr.paths.size(), {});
  for (size_t t = 0; t < pr.paths.size(); ++t)
    group_cells(pr.entries, pr.paths[t], Cells::kJK, pr.sender_cells[t], pr.sender_cell_entries[t]);
}
#endif

// Slots 0, 1, 2 (bits 1, 2, 4 of wanted) of <forward, G>: fused where backward_fused applies and
// more than one is wanted, else one contract per slot. Unwanted gradients are empty (0,) tensors.
template <class S>
std::array<at::Tensor, 3> backward(const Inputs& in, int64_t num_nodes, int64_t wanted, const at::Tensor& cg_index,
                                   const at::Tensor& cg_value, int64_t layout) {
  std::array<at::Tensor, 3> grads;
  Setup<S> su;
  set_up(su, in.slots, in.index, num_nodes, in.paths, cg_index, cg_value, layout, in.sizes, in.options);
  Problem<S>& pr = su.pr;
  const int count = (wanted & 1) + ((wanted >> 1) & 1) + ((wanted >> 2) & 1);
#ifdef EQSCALE_TP_SIMD
  if (count > 1 && fused_backward_applies(pr)) {
    build_backward_cells(pr);
    if (wanted & 1) grads[0] = empty_huge({pr.sender_rows, pr.dim1}, in.options);
    if (wanted & 2) grads[1] = empty_huge({pr.num_edges, pr.dim2}, in.options);
    if (wanted & 4) grads[2] = empty_huge({pr.num_edges, pr.weight_numel}, in.options);
    auto data = [](at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; };
    backward_fused<S>(pr, nullptr, layout == 0 ? &su.blocks1 : nullptr, data(grads[0]), data(grads[1]),
                      data(grads[2]));
  } else
#endif
  {
    (void)count;
    for (int64_t slot = 0; slot < 3; ++slot) {
      if (!(wanted & (int64_t{1} << slot))) continue;
      at::Tensor slots[4] = {in.slots[0], in.slots[1], in.slots[2], in.slots[3]};
      slots[slot] = at::Tensor();
      grads[slot] = contract<S>(slots, in.index, num_nodes, slot, in.paths, cg_index, cg_value, layout, in.sizes,
                                in.options);
    }
  }
  for (auto& grad : grads)
    if (!grad.defined()) grad = at::empty({0}, in.options);
  return grads;
}

// The gradients of <hx, gx> + <hy, gy> + <hw, gw> with respect to slots 0, 1, 2, where (gx, gy, gw) is
// the backward of <forward, G>: one backward_fused sweep where it applies to per-edge weights, else
// one backward per cotangent (each cotangent in its slot reaches the other two) and their sums.
template <class S>
std::array<at::Tensor, 3> double_backward(const Inputs& in, const at::Tensor cotangents[3], int64_t num_nodes,
                                          const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t layout) {
#ifdef EQSCALE_TP_SIMD
  {
    Setup<S> su;
    set_up(su, in.slots, in.index, num_nodes, in.paths, cg_index, cg_value, layout, in.sizes, in.options);
    Problem<S>& pr = su.pr;
    if (fused_backward_applies(pr) && pr.w != nullptr) {
      build_backward_cells(pr);
      at::Tensor hx_canon;
      const Cotangents<S> h{
          node_operand<S>(cotangents[0], pr.sender_rows, pr.dim1, su.blocks1, layout, in.options, hx_canon),
          cotangents[1].data_ptr<S>(), cotangents[2].data_ptr<S>(), cotangents[1].stride(0), cotangents[2].stride(0)};
      std::array<at::Tensor, 3> grads{empty_huge({pr.sender_rows, pr.dim1}, in.options),
                                      empty_huge({pr.num_edges, pr.dim2}, in.options),
                                      empty_huge({pr.num_edges, pr.weight_numel}, in.options)};
      backward_fused<S>(pr, &h, layout == 0 ? &su.blocks1 : nullptr, grads[0].data_ptr<S>(), grads[1].data_ptr<S>(),
                        grads[2].data_ptr<S>());
      return grads;
    }
  }
#endif
  std::array<at::Tensor, 3> grads;
  for (int64_t source = 0; source < 3; ++source) {
    Inputs shifted = in;
    shifted.slots[source] = cotangents[source].contiguous();
    const int64_t wanted = 7 & ~(int64_t{1} << source);
    const std::array<at::Tensor, 3> terms = backward<S>(shifted, num_nodes, wanted, cg_index, cg_value, layout);
    for (int64_t target = 0; target < 3; ++target) {
      if (target == source) continue;
      if (grads[target].defined()) {
        grads[target].add_(terms[target]);
      } else {
        grads[target] = terms[target];
      }
    }
  }
  return grads;
}

at::Tensor tp_conv_contract(const c10::optional<at::Tensor>& node_feats, const c10::optional<at::Tensor>& edge_attrs,
                            const c10::optional<at::Tensor>& edge_weights, const c10::optional<at::Tensor>& grad_out,
                            const at::Tensor& edge_index, int64_t num_nodes, int64_t open_slot, const at::Tensor& paths,
                            const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t layout,
                            at::IntArrayRef sizes, bool deterministic, int64_t flops_per_edge) {
  (void)deterministic;  // always deterministic: receiver-sorted sums, fixed chunking
  (void)flops_per_edge;  // read by the FLOP formula only
  TORCH_CHECK(open_slot >= 0 && open_slot <= 3, kOp,
              ": open_slot must be 0 (node_feats), 1 (edge_attrs), 2 (edge_weights) or 3 (grad_out), got ", open_slot);
  const c10::optional<at::Tensor> given[4] = {node_feats, edge_attrs, edge_weights, grad_out};
  const Inputs in = check_inputs(given, edge_index, num_nodes, open_slot, paths, cg_index, cg_value, layout, sizes);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(in.options.dtype().toScalarType(), "tp_conv_contract", [&] {
    out = contract<scalar_t>(in.slots, in.index, num_nodes, open_slot, in.paths, cg_index, cg_value, layout, in.sizes,
                             in.options);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_conv_backward(
    const at::Tensor& node_feats, const at::Tensor& edge_attrs, const c10::optional<at::Tensor>& edge_weights,
    const at::Tensor& grad_out, const at::Tensor& edge_index, int64_t num_nodes, int64_t wanted,
    const at::Tensor& paths, const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t layout,
    at::IntArrayRef sizes, bool deterministic, int64_t flops_per_edge) {
  (void)deterministic;
  (void)flops_per_edge;
  TORCH_CHECK(wanted >= 0 && wanted <= 7, kOp,
              ": wanted must be a bit mask of the gradients to compute (1 node_feats, 2 edge_attrs, 4 edge_weights), "
              "got ", wanted);
  const c10::optional<at::Tensor> given[4] = {node_feats, edge_attrs, edge_weights, grad_out};
  const Inputs in = check_inputs(given, edge_index, num_nodes, -1, paths, cg_index, cg_value, layout, sizes);
  std::array<at::Tensor, 3> grads;
  AT_DISPATCH_FLOATING_TYPES(in.options.dtype().toScalarType(), "tp_conv_backward", [&] {
    grads = backward<scalar_t>(in, num_nodes, wanted, cg_index, cg_value, layout);
  });
  return {grads[0], grads[1], grads[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tp_conv_double_backward(
    const at::Tensor& node_feats, const at::Tensor& edge_attrs, const at::Tensor& edge_weights,
    const at::Tensor& grad_out, const at::Tensor& cot_node_feats, const at::Tensor& cot_edge_attrs,
    const at::Tensor& cot_edge_weights, const at::Tensor& edge_index, int64_t num_nodes, const at::Tensor& paths,
    const at::Tensor& cg_index, const at::Tensor& cg_value, int64_t layout, at::IntArrayRef sizes, bool deterministic,
    int64_t flops_per_edge) {
  (void)deterministic;
  (void)flops_per_edge;
  const c10::optional<at::Tensor> given[4] = {node_feats, edge_attrs, edge_weights, grad_out};
  const Inputs in = check_inputs(given, edge_index, num_nodes, -1, paths, cg_index, cg_value, layout, sizes);
  // The cotangent of each first-order gradient has that gradient's shape: the shape of its slot.
  const at::Tensor cotangents[3] = {cot_node_feats, cot_edge_attrs, cot_edge_weights};
  const char* names[3] = {"cot_node_feats", "cot_edge_attrs", "cot_edge_weights"};
  const at::ScalarType dtype = in.options.dtype().toScalarType();
  const char* shapes[3] = {"node_feats.shape", "edge_attrs.shape", "edge_weights.shape"};
  check_float(names[0], cotangents[0], dtype, in.slots[0].sizes(), shapes[0]);
  // Per-edge cotangents may also be one row expanded over the edges (see Cotangents).
  for (int s = 1; s < 3; ++s) check_float(names[s], cotangents[s], dtype, in.slots[s].sizes(), shapes[s], true);
  std::array<at::Tensor, 3> grads;
  AT_DISPATCH_FLOATING_TYPES(dtype, "tp_conv_double_backward", [&] {
    grads = double_backward<scalar_t>(in, cotangents, num_nodes, cg_index, cg_value, layout);
  });
  return {grads[0], grads[1], grads[2]};
}

}  // namespace
}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) {
  m.impl("tp_conv_contract", &eqscale::tp_conv_contract);
  m.impl("tp_conv_backward", &eqscale::tp_conv_backward);
  m.impl("tp_conv_double_backward", &eqscale::tp_conv_double_backward);
}
