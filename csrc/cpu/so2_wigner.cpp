// CPU kernels of the packed real Wigner-D blocks of the SO(2) convolution: the operators
// so2_wigner_from_rotation (forward) and so2_wigner_from_rotation_backward (its vector-Jacobian
// product with respect to the rotations).
//
// The recursion is that of eqscale/ops/so2_conv/reference.py (Ivanic & Ruedenberg 1996, with the
// 1998 erratum and the m < 0 case of V corrected): D_0 = 1, D_1 = R (e3nn's l = 1 basis is
// (x, y, z), so R is its own block), and for l >= 2, with P = D_{l-1},
//
//   D_l[m, n] = beta_l(n) sum_t alpha_t B(i_t, a_t, n),
//
//   B(i, a, n) = R[i, 0] P[a, n]                              |n| < l
//   B(i, a, -l) = R[i, +] P[a, -(l-1)] + R[i, -] P[a, l-1]
//   B(i, a, +l) = R[i, +] P[a, l-1] - R[i, -] P[a, -(l-1)]
//
// where R[i, -], R[i, 0], R[i, +] are the columns -1, 0, +1 of D_1 and the terms (i_t, a_t,
// alpha_t) of row m, at most five, are those of reference._terms. Each entry is thus a handful of
// products of an entry of D_1 with an entry of D_{l-1}: O(l^2) per degree, O(L^3) per edge. The
// reference evaluates the same sums as dense products with the sparse matrices M_i; here only the
// non-zero terms are visited.
//
// The coefficients do not depend on the edge, so kLanes edges run together: every quantity is one
// vector of kLanes numbers (scratch layout [entry][lane]) and every step is a SIMD operation.
// Arithmetic is in double for both input dtypes. Against float arithmetic for float32 inputs it
// measured the same in the forward (bound by writing the blocks out) and about 20% slower in the
// backward, and float32 results then carry float32 rounding only (an error of 3e-8 instead of 5e-7
// at lmax 6).
//
// The backward recomputes D_0..D_{lmax-1} into scratch, then sweeps l = lmax..2, turning the
// gradient of D_l into gradients of D_{l-1} (added to the incoming one) and of R; the gradient of
// D_1 itself finally joins that of R. Nothing of size E x blocks is kept between the two passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "memory.h"
#include "parallel.h"

namespace eqscale {
namespace {

constexpr const char* kOp = "so2_wigner_from_rotation";
constexpr int64_t kMaxLmax = 64;  // as _MAX_CPU_LMAX in eqscale/ops/so2_conv/__init__.py

// kLanes edges side by side, in double for both input dtypes: a GCC/Clang vector (the build flags
// assume GCC or Clang). Four doubles fill one AVX2 register; with eight, which AVX2 must split in
// two, GCC passed the broadcast coefficients through the stack.
constexpr int64_t kLanes = 4;
typedef double Lanes __attribute__((vector_size(sizeof(double) * kLanes)));

// One term of a row of the recursion: row `row` (0..2 for i = -1..1) of D_1, row `source`
// (a + l - 1) of D_{l-1}, coefficient alpha.
struct Term {
  int64_t row, source;
  double alpha;
};

// The recursion's constants for degrees 2..lmax, and the packed layout.
struct Recursion {
  int64_t lmax;
  std::vector<int64_t> offset;      // start of D_l in the packed blocks, l = 0..lmax+1
  std::vector<int64_t> first_term;  // terms of row m of D_l: [first_term[r], first_term[r + 1]), r = l^2 + l + m
  std::vector<Term> terms;
  std::vector<double> beta;  // beta_l(n) at l^2 + l + n

  explicit Recursion(int64_t lmax_) : lmax(lmax_) {
    offset.resize(lmax + 2);
    offset[0] = 0;
    for (int64_t l = 0; l <= lmax; ++l) offset[l + 1] = offset[l] + (2 * l + 1) * (2 * l + 1);
    const int64_t rows = (lmax + 1) * (lmax + 1);
    first_term.assign(rows + 1, 0);
    beta.assign(rows, 0.0);
    for (int64_t l = 2; l <= lmax; ++l) {
      for (int64_t m = -l; m <= l; ++m) {
        first_term[l * l + l + m] = static_cast<int64_t>(terms.size());
        add_terms(l, m);
        beta[l * l + l + m] = 1.0 / std::sqrt(double(std::abs(m) == l ? 2 * l * (2 * l - 1) : (l + m) * (l - m)));
      }
    }
    // Rows of degrees 0 and 1 have no terms (first_term stays 0); the last entry closes the table.
    first_term[rows] = static_cast<int64_t>(terms.size());
  }

  // The row-m terms of degree l, ported from reference._terms; zero coefficients are dropped, and
  // a zero coefficient is what guards every row a outside D_{l-1}.
  void add_terms(int64_t l, int64_t m) {
    const int64_t am = std::abs(m);
    const double delta = m == 0 ? 1.0 : 0.0;
    const double u = std::sqrt(double((l + m) * (l - m)));
    const double v = 0.5 * std::sqrt((1 + delta) * double((l + am - 1) * (l + am))) * (1 - 2 * delta);
    const double w = -0.5 * std::sqrt(double(std::max<int64_t>(0, (l - am - 1) * (l - am)))) * (1 - delta);
    auto add = [&](int64_t i, int64_t a, double alpha) {
      if (alpha == 0.0) return;
      TORCH_INTERNAL_ASSERT(std::abs(a) <= l - 1, kOp, ": recursion term outside D_{l-1}");
      terms.push_back({i + 1, a + l - 1, alpha});
    };
    add(0, m, u);
    if (m == 0) {
      add(1, 1, v);
      add(-1, -1, v);
    } else if (m > 0) {
      const double one = m == 1 ? 1.0 : 0.0;
      add(1, m - 1, v * std::sqrt(1 + one));
      add(-1, -m + 1, -v * (1 - one));
      add(1, m + 1, w);
      add(-1, -m - 1, w);
    } else {
      const double one = m == -1 ? 1.0 : 0.0;
      add(1, m + 1, v * (1 - one));
      add(-1, -m - 1, v * std::sqrt(1 + one));
      add(1, m - 1, w);
      add(-1, -m + 1, -w);
    }
  }

  int64_t numel() const { return offset[lmax + 1]; }
};

// D_l (lanes) from P = D_{l-1} and R (lanes, row-major 3 x 3).
void degree_forward(const Recursion& rec, int64_t l, const Lanes* __restrict__ rotation,
                    const Lanes* __restrict__ prev, Lanes* __restrict__ cur) {
  const int64_t d = 2 * l + 1, p = 2 * l - 1;
  for (int64_t m = -l; m <= l; ++m) {
    const int64_t r = l * l + l + m;
    Lanes* __restrict__ row = cur + (m + l) * d;
    for (int64_t n = 0; n < d; ++n) row[n] = Lanes{};
    for (int64_t t = rec.first_term[r]; t < rec.first_term[r + 1]; ++t) {
      const Term& term = rec.terms[t];
      const Lanes* r_i = rotation + term.row * 3;
      const Lanes minus = term.alpha * r_i[0], zero = term.alpha * r_i[1], plus = term.alpha * r_i[2];
      const Lanes* __restrict__ src = prev + term.source * p;
      for (int64_t n = 0; n < p; ++n) row[n + 1] += zero * src[n];
      // The first and last columns of D_l read the first (lo) and last (hi) columns of P.
      const Lanes lo = src[0], hi = src[p - 1];
      row[0] += plus * lo + minus * hi;
      row[d - 1] += plus * hi - minus * lo;
    }
    for (int64_t n = 0; n < d; ++n) row[n] *= rec.beta[l * l + n];
  }
}

// The reverse of degree_forward: from the gradient of D_l (lanes; scaled by beta in place), adds
// the gradients of D_{l-1} into grad_prev and of R into grad_rotation.
void degree_backward(const Recursion& rec, int64_t l, const Lanes* __restrict__ rotation,
                     const Lanes* __restrict__ prev, Lanes* __restrict__ grad_cur, Lanes* __restrict__ grad_prev,
                     Lanes* __restrict__ grad_rotation) {
  const int64_t d = 2 * l + 1, p = 2 * l - 1;
  for (int64_t m = -l; m <= l; ++m) {
    const int64_t r = l * l + l + m;
    Lanes* __restrict__ g = grad_cur + (m + l) * d;
    for (int64_t n = 0; n < d; ++n) g[n] *= rec.beta[l * l + n];
    for (int64_t t = rec.first_term[r]; t < rec.first_term[r + 1]; ++t) {
      const Term& term = rec.terms[t];
      const Lanes* r_i = rotation + term.row * 3;
      const Lanes minus = term.alpha * r_i[0], zero = term.alpha * r_i[1], plus = term.alpha * r_i[2];
      const Lanes* __restrict__ src = prev + term.source * p;
      Lanes* __restrict__ grad_src = grad_prev + term.source * p;
      Lanes grad_zero{};  // of R[i, 0], divided by alpha (as are those of R[i, -+] below)
      for (int64_t n = 0; n < p; ++n) {
        grad_src[n] += zero * g[n + 1];
        grad_zero += src[n] * g[n + 1];
      }
      // The first and last columns of D_l read the first (lo) and last (hi) columns of P.
      const Lanes g_lo = g[0], g_hi = g[d - 1], lo = src[0], hi = src[p - 1];
      grad_src[0] += plus * g_lo - minus * g_hi;
      grad_src[p - 1] += minus * g_lo + plus * g_hi;
      Lanes* __restrict__ grad_r_i = grad_rotation + term.row * 3;
      grad_r_i[0] += term.alpha * (hi * g_lo - lo * g_hi);
      grad_r_i[1] += term.alpha * grad_zero;
      grad_r_i[2] += term.alpha * (lo * g_lo + hi * g_hi);
    }
  }
}

// Rotations of edges [begin, begin + count) into lanes; idle lanes repeat the first edge so that
// they stay finite.
template <class S>
void load_rotations(const S* __restrict__ rotations, int64_t begin, int64_t count, Lanes* __restrict__ out) {
  for (int64_t j = 0; j < kLanes; ++j) {
    const S* src = rotations + (begin + (j < count ? j : 0)) * 9;
    for (int64_t k = 0; k < 9; ++k) out[k][j] = double(src[k]);
  }
}

// Entries [offset, offset + size) of each edge's packed row from lanes, and back (idle lanes: 0).
template <class S>
void store_block(const Lanes* __restrict__ block, int64_t size, int64_t count, S* __restrict__ out, int64_t offset,
                 int64_t numel) {
  for (int64_t j = 0; j < count; ++j) {
    S* dst = out + j * numel + offset;
    for (int64_t k = 0; k < size; ++k) dst[k] = S(block[k][j]);
  }
}

template <class S>
void load_block(const S* __restrict__ in, int64_t offset, int64_t numel, int64_t size, int64_t count,
                Lanes* __restrict__ block) {
  for (int64_t k = 0; k < size; ++k) block[k] = Lanes{};
  for (int64_t j = 0; j < count; ++j) {
    const S* src = in + j * numel + offset;
    for (int64_t k = 0; k < size; ++k) block[k][j] = double(src[k]);
  }
}

int64_t block_size(int64_t l) { return (2 * l + 1) * (2 * l + 1); }

template <class S>
void forward(const Recursion& rec, const S* rotations, int64_t num_edges, S* out) {
  const int64_t numel = rec.numel(), groups = (num_edges + kLanes - 1) / kLanes;
  parallel_for(0, groups, 16, [&](int64_t begin, int64_t end) {
    // Two blocks of the largest degree, reused across the chunk's edges (no per-edge allocation).
    std::vector<Lanes> prev(block_size(rec.lmax)), cur(prev.size());
    Lanes rotation[9];
    for (int64_t group = begin; group < end; ++group) {
      const int64_t first = group * kLanes, count = std::min(kLanes, num_edges - first);
      S* dst = out + first * numel;
      for (int64_t j = 0; j < count; ++j) dst[j * numel] = S(1);
      if (rec.lmax == 0) continue;
      load_rotations(rotations, first, count, rotation);
      store_block(rotation, 9, count, dst, rec.offset[1], numel);
      std::copy(rotation, rotation + 9, prev.begin());
      for (int64_t l = 2; l <= rec.lmax; ++l) {
        degree_forward(rec, l, rotation, prev.data(), cur.data());
        store_block(cur.data(), block_size(l), count, dst, rec.offset[l], numel);
        std::swap(prev, cur);
      }
    }
  });
}

template <class S>
void backward(const Recursion& rec, const S* rotations, const S* grad, int64_t num_edges, S* grad_rotations) {
  const int64_t numel = rec.numel(), groups = (num_edges + kLanes - 1) / kLanes;
  parallel_for(0, groups, 16, [&](int64_t begin, int64_t end) {
    // D_0..D_{lmax-1} (D_lmax is never an input of a step) and two gradient blocks.
    std::vector<Lanes> blocks(rec.offset[rec.lmax]);
    std::vector<Lanes> grad_cur(block_size(rec.lmax)), grad_prev(grad_cur.size());
    Lanes rotation[9], grad_rotation[9];
    for (int64_t group = begin; group < end; ++group) {
      const int64_t first = group * kLanes, count = std::min(kLanes, num_edges - first);
      S* dst = grad_rotations + first * 9;
      if (rec.lmax == 0) {
        std::fill(dst, dst + count * 9, S(0));
        continue;
      }
      load_rotations(rotations, first, count, rotation);
      if (rec.lmax >= 2) std::copy(rotation, rotation + 9, blocks.data() + rec.offset[1]);
      for (int64_t l = 2; l < rec.lmax; ++l)
        degree_forward(rec, l, rotation, blocks.data() + rec.offset[l - 1], blocks.data() + rec.offset[l]);

      const S* g = grad + first * numel;
      load_block(g, rec.offset[rec.lmax], numel, block_size(rec.lmax), count, grad_cur.data());
      std::fill(grad_rotation, grad_rotation + 9, Lanes{});
      for (int64_t l = rec.lmax; l >= 2; --l) {
        load_block(g, rec.offset[l - 1], numel, block_size(l - 1), count, grad_prev.data());
        degree_backward(rec, l, rotation, blocks.data() + rec.offset[l - 1], grad_cur.data(), grad_prev.data(),
                        grad_rotation);
        std::swap(grad_cur, grad_prev);
      }
      // grad_cur now holds the gradient of D_1 = R.
      for (int64_t k = 0; k < 9; ++k) grad_rotation[k] += grad_cur[k];
      store_block(grad_rotation, 9, count, dst, 0, 9);
    }
  });
}

void check_rotations(const char* op, const at::Tensor& rotations, int64_t lmax) {
  TORCH_CHECK(lmax >= 0 && lmax <= kMaxLmax, op, ": lmax must be in [0, ", kMaxLmax, "], got ", lmax);
  TORCH_CHECK(rotations.device().is_cpu(), op, ": rotations must be a CPU tensor, got device ", rotations.device());
  TORCH_CHECK(rotations.scalar_type() == at::kFloat || rotations.scalar_type() == at::kDouble, op,
              ": rotations must be float32 or float64, got ", rotations.scalar_type());
  TORCH_CHECK(rotations.dim() == 3 && rotations.size(1) == 3 && rotations.size(2) == 3, op,
              ": rotations must have shape (E, 3, 3), got ", rotations.sizes());
  TORCH_CHECK(rotations.is_contiguous(), op, ": rotations must be contiguous");
}

at::Tensor so2_wigner_from_rotation(const at::Tensor& rotations, int64_t lmax) {
  check_rotations(kOp, rotations, lmax);
  const Recursion rec(lmax);
  const int64_t num_edges = rotations.size(0);
  at::Tensor out = empty_huge({num_edges, rec.numel()}, rotations.options());
  AT_DISPATCH_FLOATING_TYPES(rotations.scalar_type(), kOp, [&] {
    forward<scalar_t>(rec, rotations.data_ptr<scalar_t>(), num_edges, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor so2_wigner_from_rotation_backward(const at::Tensor& rotations, const at::Tensor& grad, int64_t lmax) {
  constexpr const char* op = "so2_wigner_from_rotation_backward";
  check_rotations(op, rotations, lmax);
  const Recursion rec(lmax);
  const int64_t num_edges = rotations.size(0);
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == rotations.scalar_type(), op,
              ": grad must be a CPU tensor of the rotations' dtype ", rotations.scalar_type(), ", got ",
              grad.scalar_type(), " on ", grad.device());
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == num_edges && grad.size(1) == rec.numel(), op,
              ": grad must have shape (", num_edges, ", ", rec.numel(), ") for lmax=", lmax, ", got ", grad.sizes());
  TORCH_CHECK(grad.is_contiguous(), op, ": grad must be contiguous");
  at::Tensor out = at::empty_like(rotations);
  AT_DISPATCH_FLOATING_TYPES(rotations.scalar_type(), op, [&] {
    backward<scalar_t>(rec, rotations.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), num_edges,
                       out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) {
  m.impl("so2_wigner_from_rotation", &eqscale::so2_wigner_from_rotation);
  m.impl("so2_wigner_from_rotation_backward", &eqscale::so2_wigner_from_rotation_backward);
}
