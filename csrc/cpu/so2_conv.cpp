// CPU kernels of the SO(2) convolution: the rotations (so2_rotate_contract) and the radial
// modulation of the SO(2) maps' inputs (so2_radial_scale, so2_radial_scale_backward, at the end).
//
// It evaluates the trilinear form of eqscale/ops/so2_conv/__init__.py,
//
//   F(X, D, Y) = sum_e sum_{l, |m| <= mmax, m', c} Y[e, pos(l, m), c] D_e,l[m, m'] X[index_e, l^2 + l + m', c],
//
// with one slot open, i.e. its gradient with respect to that slot:
//
//   * open 2 (edge, "rotate in"): Y[e] = D_e X[index_e], rows |m| <= mmax in the m-major order. The
//     gathered row X[index_e] is read in place; nothing of size E x (L+1)^2 x C is built.
//   * open 0 (node, "rotate back and scatter"): X[n] = sum over edges with index_e = n of D_e^T Y[e].
//     Edges are grouped by a stable counting sort (CSR); each node's row is accumulated in
//     thread-local scratch over its edges in edge order and written once, so the result is the same
//     for any number of threads and no atomics are needed.
//   * open 1 (Wigner-D): dD_e,l[m, m'] = sum_c Y[e, pos(l, m), c] X[index_e, l^2 + l + m', c]; rows
//     with |m| > mmax do not enter F and get zero.
//
// Every inner loop runs over the contiguous channel axis, in SIMD vectors (simd.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "memory.h"
#include "parallel.h"
#include "simd.h"

namespace eqscale {
namespace {

constexpr const char* kOp = "so2_rotate_contract";

enum Slot : int64_t { kNode = 0, kWigner = 1, kEdge = 2 };

// Position of (l, m) in the m-major edge layout, or -1 when |m| > mmax.
struct Layout {
  int64_t lmax, mmax, num_coefficients, num_m, wigner_numel;
  std::vector<int64_t> wigner_offset;  // per l
  std::vector<int64_t> position;       // per (l^2 + l + m)

  Layout(int64_t lmax_, int64_t mmax_) : lmax(lmax_), mmax(mmax_) {
    num_coefficients = (lmax + 1) * (lmax + 1);
    position.assign(num_coefficients, -1);
    int64_t p = 0;
    for (int64_t l = 0; l <= lmax; ++l) position[l * l + l] = p++;
    for (int64_t m = 1; m <= mmax; ++m) {
      for (int64_t l = m; l <= lmax; ++l) position[l * l + l + m] = p++;
      for (int64_t l = m; l <= lmax; ++l) position[l * l + l - m] = p++;
    }
    num_m = p;
    wigner_offset.resize(lmax + 2);
    wigner_offset[0] = 0;
    for (int64_t l = 0; l <= lmax; ++l) wigner_offset[l + 1] = wigner_offset[l] + (2 * l + 1) * (2 * l + 1);
    wigner_numel = wigner_offset[lmax + 1];
  }
};

// The channel axis is contiguous in every operand: the loops below run over it in chunks of
// kChunk vectors (accumulators in registers), then single vectors, then single channels.
constexpr int kChunk = 4;

// Calls chunk(width, c) for consecutive channel chunks covering [0, channels), width being the
// number of SIMD vectors in the chunk (0: one scalar channel).
template <class S, class F>
EQSCALE_SIMD_INLINE void over_channels(int64_t channels, F&& chunk) {
  int64_t c = 0;
#ifdef EQSCALE_SIMD
  constexpr int64_t lanes = Simd<S>::lanes;
  for (; c + kChunk * lanes <= channels; c += kChunk * lanes) chunk(std::integral_constant<int, kChunk>(), c);
  for (; c + lanes <= channels; c += lanes) chunk(std::integral_constant<int, 1>(), c);
#endif
  for (; c < channels; ++c) chunk(std::integral_constant<int, 0>(), c);
}

// y = sum_k coefficients[k] rows[k] (beginning with y when Accumulate) over U vectors of channels
// (one channel for U = 0) at channel c.
template <class S, int U, bool Accumulate, class Rows>
EQSCALE_SIMD_INLINE void combine(const S* __restrict__ coefficients, int64_t count, Rows rows, int64_t c,
                                 S* __restrict__ y) {
#ifdef EQSCALE_SIMD
  if constexpr (U > 0) {
    using T = Simd<S>;
    typename T::V acc[U];
    for (int u = 0; u < U; ++u) acc[u] = Accumulate ? T::load(y + u * T::lanes) : typename T::V{};
    for (int64_t k = 0; k < count; ++k) {
      const typename T::V coefficient = T::splat(coefficients[k]);
      const S* row = rows(k) + c;
      for (int u = 0; u < U; ++u) acc[u] += coefficient * T::load(row + u * T::lanes);
    }
    for (int u = 0; u < U; ++u) T::store(y + u * T::lanes, acc[u]);
    return;
  }
#endif
  S acc = Accumulate ? *y : S(0);
  for (int64_t k = 0; k < count; ++k) acc += coefficients[k] * rows(k)[c];
  *y = acc;
}

// Y[e] = D_e X[row] for one edge: out (num_m, C), node_row ((L+1)^2, C), wigner (packed blocks).
template <class S>
void rotate_in_edge(const Layout& lay, const S* __restrict__ wigner, const S* __restrict__ node_row,
                    S* __restrict__ out, int64_t channels) {
  for (int64_t l = 0; l <= lay.lmax; ++l) {
    const int64_t d = 2 * l + 1, top = std::min(l, lay.mmax);
    const S* block = wigner + lay.wigner_offset[l];
    const S* x = node_row + l * l * channels;
    const auto source = [x, channels](int64_t k) { return x + k * channels; };
    for (int64_t m = -top; m <= top; ++m) {
      S* y = out + lay.position[l * l + l + m] * channels;
      const S* row = block + (m + l) * d;
      over_channels<S>(channels, [&](auto width, int64_t c) {
        combine<S, decltype(width)::value, false>(row, d, source, c, y + c);
      });
    }
  }
}

// acc ((L+1)^2, C) += D_e^T Y[e] for one edge.
template <class S>
void rotate_out_edge(const Layout& lay, const S* __restrict__ wigner, const S* __restrict__ edge_row,
                     S* __restrict__ acc, int64_t channels) {
  const S* kept[2 * 64 + 1];
  S columns[2 * 64 + 1];
  for (int64_t l = 0; l <= lay.lmax; ++l) {
    const int64_t d = 2 * l + 1, top = std::min(l, lay.mmax), count = 2 * top + 1;
    for (int64_t m = -top; m <= top; ++m) kept[m + top] = edge_row + lay.position[l * l + l + m] * channels;
    const auto source = [&kept](int64_t r) { return kept[r]; };
    // Rows -top..top of D_l are the kept ones; column k of them, made contiguous.
    const S* block = wigner + lay.wigner_offset[l] + (l - top) * d;
    S* x = acc + l * l * channels;
    for (int64_t k = 0; k < d; ++k) {
      for (int64_t r = 0; r < count; ++r) columns[r] = block[r * d + k];
      S* xk = x + k * channels;
      over_channels<S>(channels, [&](auto width, int64_t c) {
        combine<S, decltype(width)::value, true>(columns, count, source, c, xk + c);
      });
    }
  }
}

// sum_c y[c] x[c].
template <class S>
inline S dot(const S* __restrict__ y, const S* __restrict__ x, int64_t channels) {
  S total = S(0);
  int64_t c = 0;
#ifdef EQSCALE_SIMD
  using T = Simd<S>;
  typename T::V part[kChunk] = {};
  for (; c + kChunk * T::lanes <= channels; c += kChunk * T::lanes)
    for (int u = 0; u < kChunk; ++u) part[u] += T::load(y + c + u * T::lanes) * T::load(x + c + u * T::lanes);
  for (; c + T::lanes <= channels; c += T::lanes) part[0] += T::load(y + c) * T::load(x + c);
  total = T::sum((part[0] + part[1]) + (part[2] + part[3]));
#endif
  for (; c < channels; ++c) total += y[c] * x[c];
  return total;
}

// out[j] = sum_c y[c] x[j * channels + c] for j < 4: four dot products that share the loads of y
// and one transposing reduction (at C = 64 a reduction per dot product cost more than its
// multiply-adds).
template <class S>
EQSCALE_SIMD_INLINE void dot4(const S* __restrict__ y, const S* __restrict__ x, int64_t channels,
                              S* __restrict__ out) {
  int64_t c = 0;
#ifdef EQSCALE_SIMD
  using T = Simd<S>;
  typename T::V acc[4] = {};
  for (; c + T::lanes <= channels; c += T::lanes) {
    const typename T::V yv = T::load(y + c);
    for (int j = 0; j < 4; ++j) acc[j] += yv * T::load(x + j * channels + c);
  }
  T::sum4(acc, out);
#else
  for (int j = 0; j < 4; ++j) out[j] = S(0);
#endif
  for (; c < channels; ++c)
    for (int j = 0; j < 4; ++j) out[j] += y[c] * x[j * channels + c];
}

// dD_e = outer products of Y[e] and X[row] over channels, for one edge.
template <class S>
void wigner_grad_edge(const Layout& lay, const S* __restrict__ edge_row, const S* __restrict__ node_row,
                      S* __restrict__ out, int64_t channels) {
  for (int64_t l = 0; l <= lay.lmax; ++l) {
    const int64_t d = 2 * l + 1, top = std::min(l, lay.mmax);
    S* block = out + lay.wigner_offset[l];
    const S* x = node_row + l * l * channels;
    for (int64_t m = -l; m <= l; ++m) {
      S* row = block + (m + l) * d;
      if (m < -top || m > top) {
        for (int64_t k = 0; k < d; ++k) row[k] = S(0);
        continue;
      }
      const S* y = edge_row + lay.position[l * l + l + m] * channels;
      int64_t k = 0;
      for (; k + 4 <= d; k += 4) dot4(y, x + k * channels, channels, row + k);
      for (; k < d; ++k) row[k] = dot(y, x + k * channels, channels);
    }
  }
}

template <class S>
at::Tensor contract(const at::Tensor& node, const at::Tensor& wigner, const at::Tensor& edge, const int64_t* index,
                    int64_t num_edges, int64_t num_nodes, int64_t open_slot, const Layout& lay, int64_t channels,
                    const at::TensorOptions& options) {
  const int64_t node_stride = lay.num_coefficients * channels, edge_stride = lay.num_m * channels;
  if (open_slot == kEdge) {
    at::Tensor out = empty_huge({num_edges, lay.num_m, channels}, options);
    const S* w = wigner.data_ptr<S>();
    const S* x = node.data_ptr<S>();
    S* y = out.data_ptr<S>();
    parallel_for(0, num_edges, 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e)
        rotate_in_edge<S>(lay, w + e * lay.wigner_numel, x + index[e] * node_stride, y + e * edge_stride, channels);
    });
    return out;
  }
  if (open_slot == kWigner) {
    at::Tensor out = empty_huge({num_edges, lay.wigner_numel}, options);
    const S* x = node.data_ptr<S>();
    const S* y = edge.data_ptr<S>();
    S* dw = out.data_ptr<S>();
    parallel_for(0, num_edges, 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e)
        wigner_grad_edge<S>(lay, y + e * edge_stride, x + index[e] * node_stride, dw + e * lay.wigner_numel, channels);
    });
    return out;
  }
  // open_slot == kNode: stable counting sort of the edges by destination row (CSR).
  std::vector<int64_t> start(num_nodes + 1, 0), order(num_edges);
  for (int64_t e = 0; e < num_edges; ++e) ++start[index[e] + 1];
  for (int64_t n = 0; n < num_nodes; ++n) start[n + 1] += start[n];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < num_edges; ++e) order[fill[index[e]]++] = e;
  }
  at::Tensor out = empty_huge({num_nodes, lay.num_coefficients, channels}, options);
  const S* w = wigner.data_ptr<S>();
  const S* y = edge.data_ptr<S>();
  S* x = out.data_ptr<S>();
  parallel_for(0, num_nodes, 8, [&](int64_t begin, int64_t end) {
    std::vector<S> acc(node_stride);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(acc.begin(), acc.end(), S(0));
      for (int64_t k = start[n]; k < start[n + 1]; ++k) {
        const int64_t e = order[k];
        rotate_out_edge<S>(lay, w + e * lay.wigner_numel, y + e * edge_stride, acc.data(), channels);
      }
      std::copy(acc.begin(), acc.end(), x + n * node_stride);
    }
  });
  return out;
}

void check_float(const char* name, const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), kOp, ": ", name, " must be contiguous");
}

at::Tensor so2_rotate_contract(const std::optional<at::Tensor>& node_in, const std::optional<at::Tensor>& wigner_in,
                               const std::optional<at::Tensor>& edge_in, const at::Tensor& index, int64_t num_nodes,
                               int64_t open_slot, int64_t lmax, int64_t mmax) {
  TORCH_CHECK(open_slot >= kNode && open_slot <= kEdge, kOp, ": open_slot must be 0, 1 or 2, got ", open_slot);
  TORCH_CHECK(lmax >= 0 && mmax >= 0 && mmax <= lmax, kOp, ": need 0 <= mmax <= lmax, got lmax=", lmax, ", mmax=", mmax);
  TORCH_CHECK(lmax <= 64, kOp, ": lmax must be <= 64, got ", lmax);
  const at::Tensor slots[3] = {node_in.value_or(at::Tensor()), wigner_in.value_or(at::Tensor()),
                               edge_in.value_or(at::Tensor())};
  for (int64_t s = 0; s < 3; ++s)
    TORCH_CHECK(slots[s].defined() == (s != open_slot), kOp, ": slot ", s,
                s == open_slot ? " is the open slot and must be None" : " must be given");
  TORCH_CHECK(index.device().is_cpu() && index.scalar_type() == at::kLong && index.dim() == 1 && index.is_contiguous(),
              kOp, ": index must be a contiguous 1D int64 CPU tensor");
  TORCH_CHECK(num_nodes >= 0, kOp, ": num_nodes must be >= 0");
  const Layout lay(lmax, mmax);
  const int64_t num_edges = index.size(0);
  const at::Tensor& any = slots[open_slot == kNode ? kWigner : kNode];
  const at::ScalarType dtype = any.scalar_type();
  const int64_t channels = (open_slot == kNode ? slots[kEdge] : slots[kNode]).size(-1);
  const int64_t node_rows = open_slot == kNode ? num_nodes : slots[kNode].size(0);
  if (slots[kNode].defined()) check_float("node", slots[kNode], dtype, {node_rows, lay.num_coefficients, channels});
  if (slots[kWigner].defined()) check_float("wigner", slots[kWigner], dtype, {num_edges, lay.wigner_numel});
  if (slots[kEdge].defined()) check_float("edge", slots[kEdge], dtype, {num_edges, lay.num_m, channels});
  const int64_t* idx = index.data_ptr<int64_t>();
  for (int64_t e = 0; e < num_edges; ++e)
    TORCH_CHECK(idx[e] >= 0 && idx[e] < node_rows, kOp, ": index[", e, "] = ", idx[e], " out of range [0, ", node_rows, ")");

  const at::TensorOptions options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(dtype, "so2_rotate_contract", [&] {
    out = contract<scalar_t>(slots[kNode], slots[kWigner], slots[kEdge], idx, num_edges, node_rows, open_slot, lay,
                             channels, options);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Radial modulation of the SO(2) maps' inputs: so2_radial_scale and its backward.
//
// scaled[e, p, c] = edge[e, p, c] * radial[e, q(p), c], where the m-major row p of (l, +-m) takes
// the radial row q of (l, |m|) (one row per m >= 0, l >= m, shared by +m and -m). The backward
// gives grad_edge = grad * radial and grad_radial[q] = sum over the (one or two) rows p of q of
// grad[p] * edge[p] in one pass over the edges, which PyTorch does in three (and a temporary).
// Outputs come from the buffer pool (memory.h): their pages are in place from the last step.
// ---------------------------------------------------------------------------------------------

constexpr const char* kRadialOp = "so2_radial_scale";

// The edge rows of each radial row: plus[q] and minus[q] (-1 for m = 0).
struct RadialRows {
  std::vector<int64_t> plus, minus;
  RadialRows(int64_t lmax, int64_t mmax) {
    for (int64_t l = 0; l <= lmax; ++l) plus.push_back(l), minus.push_back(-1);
    int64_t offset = lmax + 1;
    for (int64_t m = 1; m <= mmax; ++m) {
      const int64_t n = lmax + 1 - m;
      for (int64_t i = 0; i < n; ++i) plus.push_back(offset + i), minus.push_back(offset + n + i);
      offset += 2 * n;
    }
  }
  int64_t size() const { return static_cast<int64_t>(plus.size()); }
};

template <class S>
void scale_rows(const S* __restrict__ x, const S* __restrict__ r, S* __restrict__ y, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) y[c] = x[c] * r[c];
}

void check_radial_inputs(const at::Tensor& edge, const at::Tensor& radial, int64_t lmax, int64_t mmax,
                         const RadialRows& rows, const char* name) {
  TORCH_CHECK(lmax >= 0 && mmax >= 0 && mmax <= lmax, kRadialOp, ": need 0 <= mmax <= lmax, got lmax=", lmax,
              ", mmax=", mmax);
  TORCH_CHECK(edge.dim() == 3, kRadialOp, ": ", name, " must be (E, K, C), got ", edge.sizes());
  const Layout lay(lmax, mmax);
  TORCH_CHECK(edge.size(1) == lay.num_m, kRadialOp, ": ", name, " must have ", lay.num_m, " rows for lmax=", lmax,
              ", mmax=", mmax, ", got ", edge.size(1));
  check_float(name, edge, edge.scalar_type(), edge.sizes());
  check_float("radial", radial, edge.scalar_type(), {edge.size(0), rows.size(), edge.size(2)});
}

at::Tensor so2_radial_scale(const at::Tensor& edge, const at::Tensor& radial, int64_t lmax, int64_t mmax) {
  const RadialRows rows(lmax, mmax);
  check_radial_inputs(edge, radial, lmax, mmax, rows, "edge_feats");
  const int64_t num_edges = edge.size(0), num_m = edge.size(1), channels = edge.size(2), num_q = rows.size();
  at::Tensor out = empty_huge(edge.sizes().vec(), edge.options());
  AT_DISPATCH_FLOATING_TYPES(edge.scalar_type(), kRadialOp, [&] {
    const scalar_t* x = edge.data_ptr<scalar_t>();
    const scalar_t* r = radial.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    parallel_for(0, num_edges, 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t edge_base = e * num_m * channels, radial_base = e * num_q * channels;
        for (int64_t q = 0; q < num_q; ++q) {
          const scalar_t* rq = r + radial_base + q * channels;
          for (const int64_t p : {rows.plus[q], rows.minus[q]}) {
            if (p < 0) continue;
            scale_rows(x + edge_base + p * channels, rq, y + edge_base + p * channels, channels);
          }
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> so2_radial_scale_backward(const at::Tensor& grad, const at::Tensor& edge,
                                                             const at::Tensor& radial, int64_t lmax, int64_t mmax,
                                                             bool need_edge, bool need_radial) {
  const RadialRows rows(lmax, mmax);
  check_radial_inputs(edge, radial, lmax, mmax, rows, "edge_feats");
  check_float("grad", grad, edge.scalar_type(), edge.sizes());
  const int64_t num_edges = edge.size(0), num_m = edge.size(1), channels = edge.size(2), num_q = rows.size();
  at::Tensor grad_edge = need_edge ? empty_huge(edge.sizes().vec(), edge.options()) : edge.new_empty({0});
  at::Tensor grad_radial = need_radial ? empty_huge(radial.sizes().vec(), radial.options()) : radial.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(edge.scalar_type(), kRadialOp, [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* x = edge.data_ptr<scalar_t>();
    const scalar_t* r = radial.data_ptr<scalar_t>();
    scalar_t* gx = need_edge ? grad_edge.data_ptr<scalar_t>() : nullptr;
    scalar_t* gr = need_radial ? grad_radial.data_ptr<scalar_t>() : nullptr;
    parallel_for(0, num_edges, 16, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const int64_t edge_base = e * num_m * channels, radial_base = e * num_q * channels;
        for (int64_t q = 0; q < num_q; ++q) {
          const int64_t plus = edge_base + rows.plus[q] * channels;
          const int64_t minus = rows.minus[q] < 0 ? -1 : edge_base + rows.minus[q] * channels;
          const scalar_t* rq = r + radial_base + q * channels;
          if (gx != nullptr) {
            scale_rows(g + plus, rq, gx + plus, channels);
            if (minus >= 0) scale_rows(g + minus, rq, gx + minus, channels);
          }
          if (gr != nullptr) {
            scalar_t* out = gr + radial_base + q * channels;
            if (minus >= 0) {
              for (int64_t c = 0; c < channels; ++c) out[c] = g[plus + c] * x[plus + c] + g[minus + c] * x[minus + c];
            } else {
              for (int64_t c = 0; c < channels; ++c) out[c] = g[plus + c] * x[plus + c];
            }
          }
        }
      }
    });
  });
  return {grad_edge, grad_radial};
}

}  // namespace
}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) {
  m.impl("so2_rotate_contract", &eqscale::so2_rotate_contract);
  m.impl("so2_radial_scale", &eqscale::so2_radial_scale);
  m.impl("so2_radial_scale_backward", &eqscale::so2_radial_scale_backward);
}
