// CPU kernels of the spherical-harmonics op: forward, backward and double backward.
//
// The recursion of eqscale/o3/_spherical_harmonics.py is written once, in solid_harmonics(), as a
// template over a number type, and instantiated three times:
//
//   forward          Lane                    W points at once, one SIMD value per quantity
//   backward         Jet<Lane, 3>            value and the 3 partials d/dv_i
//   double backward  Jet<Jet<Lane, 3>, 1>    the same, and its derivative along grad_grad_vectors
//
// The double backward only needs Hessian-vector products H_k G, so a first-order jet nested in a
// one-direction jet (8 numbers) replaces a full second-order jet (10 numbers, dearer products):
// the outer tangent of Y_k is dY_k/dv . G (= grad_grad_sh) and its 3 inner partials are H_k G.
//
// The derivatives are contracted with grad_sh while the recursion runs, so nothing of size
// N x 3 x K exists; the only scratch is one block of W x K values per thread. The contraction is
// done per order m, before multiplying by T[m]: sum_l g[l, m] Q[l, m] T[m] costs one jet product
// per order instead of one per component (the backward's main saving).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "memory.h"
#include "parallel.h"

#if defined(__GNUC__) && !defined(__clang__)
// Vector types wider than the target's registers change the calling convention; they never cross
// a call boundary here (everything is inlined), so the warning is noise.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace eqscale {
namespace {

#if defined(__GNUC__) || defined(__clang__)
#define EQSCALE_INLINE inline __attribute__((always_inline))
#define EQSCALE_VECTOR_EXTENSIONS 1
#else
#define EQSCALE_INLINE inline
#endif

// ---------------------------------------------------------------------------------------------
// Number types
// ---------------------------------------------------------------------------------------------

// W points evaluated together. The GCC/Clang vector extension keeps a lane in SIMD registers
// whatever the -march; elsewhere a plain array leaves vectorisation to the compiler.
template <class S, int W>
struct Lane {
  using Scalar = S;
  using Base = Lane;
#ifdef EQSCALE_VECTOR_EXTENSIONS
  typedef S Vec __attribute__((vector_size(sizeof(S) * W)));
  Vec v;
  EQSCALE_INLINE static Lane constant(S s) {
    Lane r;
    r.v = Vec{} + s;
    return r;
  }
  EQSCALE_INLINE S get(int i) const { return v[i]; }
  EQSCALE_INLINE void set(int i, S s) { v[i] = s; }
  EQSCALE_INLINE friend Lane operator+(const Lane& a, const Lane& b) { return {a.v + b.v}; }
  EQSCALE_INLINE friend Lane operator-(const Lane& a, const Lane& b) { return {a.v - b.v}; }
  EQSCALE_INLINE friend Lane operator*(const Lane& a, const Lane& b) { return {a.v * b.v}; }
  EQSCALE_INLINE friend Lane operator*(S s, const Lane& a) { return {s * a.v}; }
#else
  S v[W];
  static Lane constant(S s) {
    Lane r;
    for (int i = 0; i < W; ++i) r.v[i] = s;
    return r;
  }
  S get(int i) const { return v[i]; }
  void set(int i, S s) { v[i] = s; }
  friend Lane operator+(const Lane& a, const Lane& b) {
    Lane r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  friend Lane operator-(const Lane& a, const Lane& b) {
    Lane r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] - b.v[i];
    return r;
  }
  friend Lane operator*(const Lane& a, const Lane& b) {
    Lane r;
    for (int i = 0; i < W; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  friend Lane operator*(S s, const Lane& a) {
    Lane r;
    for (int i = 0; i < W; ++i) r.v[i] = s * a.v[i];
    return r;
  }
#endif
};

// Truncated Taylor number: a value and its derivatives along D directions. Nesting two of them
// gives mixed second derivatives without any separate second-order code.
template <class T, int D>
struct Jet {
  using Scalar = typename T::Scalar;
  using Base = typename T::Base;  // the Lane at the bottom of a nest of jets
  T v;
  T d[D];

  EQSCALE_INLINE static Jet constant(Scalar s) {
    Jet r;
    r.v = T::constant(s);
    for (int i = 0; i < D; ++i) r.d[i] = T::constant(Scalar(0));
    return r;
  }
  EQSCALE_INLINE friend Jet operator+(const Jet& a, const Jet& b) {
    Jet r;
    r.v = a.v + b.v;
    for (int i = 0; i < D; ++i) r.d[i] = a.d[i] + b.d[i];
    return r;
  }
  EQSCALE_INLINE friend Jet operator-(const Jet& a, const Jet& b) {
    Jet r;
    r.v = a.v - b.v;
    for (int i = 0; i < D; ++i) r.d[i] = a.d[i] - b.d[i];
    return r;
  }
  EQSCALE_INLINE friend Jet operator*(const Jet& a, const Jet& b) {
    Jet r;
    r.v = a.v * b.v;
    for (int i = 0; i < D; ++i) r.d[i] = a.v * b.d[i] + a.d[i] * b.v;
    return r;
  }
  EQSCALE_INLINE friend Jet operator*(Scalar s, const Jet& a) {
    Jet r;
    r.v = s * a.v;
    for (int i = 0; i < D; ++i) r.d[i] = s * a.d[i];
    return r;
  }
  // A per-point constant (such as grad_sh) times a jet: no product rule needed.
  EQSCALE_INLINE friend Jet operator*(const Base& g, const Jet& a) {
    Jet r;
    r.v = g * a.v;
    for (int i = 0; i < D; ++i) r.d[i] = g * a.d[i];
    return r;
  }
};

// ---------------------------------------------------------------------------------------------
// The recursion
// ---------------------------------------------------------------------------------------------

// Constants of the recursion for one lmax, in the compute dtype, built once per call so that the
// per-point loop has no divisions and no integer-to-float conversions.
template <class S>
struct Recurrence {
  int64_t lmax;
  std::vector<S> coefficients;  // (lmax + 1)^2 prefactors
  std::vector<S> diagonal;      // Q[m, m] = (2m - 1)!!
  std::vector<S> first;         // Q[m+1, m] / z' = (2m + 1) (2m - 1)!!
  std::vector<S> a, b;          // Q[l, m] = a z' Q[l-1, m] - b r^2 Q[l-2, m], index l (lmax+1) + m

  Recurrence(int64_t lmax_, const double* coeff) : lmax(lmax_) {
    const int64_t K = (lmax + 1) * (lmax + 1);
    coefficients.assign(coeff, coeff + K);
    diagonal.resize(lmax + 1);
    first.resize(lmax + 1);
    a.assign((lmax + 1) * (lmax + 1), S(0));
    b.assign((lmax + 1) * (lmax + 1), S(0));
    // Products in double, rounded once to S, so that float keeps the reference's values.
    double dfact = 1.0;
    for (int64_t m = 0; m <= lmax; ++m) {
      if (m > 0) dfact *= double(2 * m - 1);
      diagonal[m] = S(dfact);
      first[m] = S(double(2 * m + 1) * dfact);
      for (int64_t l = m + 2; l <= lmax; ++l) {
        a[l * (lmax + 1) + m] = S(double(2 * l - 1) / double(l - m));
        b[l * (lmax + 1) + m] = S(double(l + m - 1) / double(l - m));
      }
    }
  }
};

// Runs the recursion on one block and hands its pieces to a sink, order by order (m = 0..lmax):
//
//   sink.template diagonal<zonal>(m, Q[m, m], c_m, s_m)   Q[m, m] = (2m - 1)!! is a plain number
//   sink.template term<zonal>(l, m, Q[l, m], c_m, s_m)    for l = m + 1..lmax
//   sink.template order<zonal>(m, c_m, s_m)               after the terms of order m
//
// with zonal = (m == 0), where T[0] = 1 and c_m, s_m are unused placeholders. The component of
// Q[l, m] c_m is l^2 + l + m, that of Q[l, m] s_m is l^2 + l - m. Orders run in the outer loop,
// so only (c_m, s_m) and the last two Q of the column are alive: no per-point arrays.
template <bool kZonal, class T, class S, class Sink>
EQSCALE_INLINE void solid_harmonics_order(int64_t m, const T& z, const T& r2, const T& c, const T& s,
                                          const Recurrence<S>& rec, Sink& sink) {
  const int64_t lmax = rec.lmax;
  const int64_t stride = lmax + 1;
  sink.template diagonal<kZonal>(m, rec.diagonal[m], c, s);
  if (m + 1 <= lmax) {
    T q1 = rec.first[m] * z;
    sink.template term<kZonal>(m + 1, m, q1, c, s);
    if (m + 2 <= lmax) {
      // Q[m, m] is a plain number, so the first three-term step scales r^2 instead of
      // multiplying two jets.
      T q2 = q1;
      const int64_t l = m + 2;
      q1 = rec.a[l * stride + m] * (z * q1) - (rec.b[l * stride + m] * rec.diagonal[m]) * r2;
      sink.template term<kZonal>(l, m, q1, c, s);
      for (int64_t l = m + 3; l <= lmax; ++l) {
        const T q = rec.a[l * stride + m] * (z * q1) - rec.b[l * stride + m] * (r2 * q2);
        sink.template term<kZonal>(l, m, q, c, s);
        q2 = q1;
        q1 = q;
      }
    }
  }
  sink.template order<kZonal>(m, c, s);
}

template <class T, class S, class Sink>
EQSCALE_INLINE void solid_harmonics(const T& x, const T& y, const T& z, const Recurrence<S>& rec, Sink& sink) {
  const T r2 = x * x + y * y + z * z;
  solid_harmonics_order<true>(0, z, r2, x, y, rec, sink);
  T c = x;
  T s = y;
  for (int64_t m = 1; m <= rec.lmax; ++m) {
    if (m > 1) {
      const T c_next = x * c - y * s;
      s = x * s + y * c;
      c = c_next;
    }
    solid_harmonics_order<false>(m, z, r2, c, s, rec, sink);
  }
}

// ---------------------------------------------------------------------------------------------
// Block drivers
// ---------------------------------------------------------------------------------------------

// Points per block: one 32-byte SIMD register per quantity where there is AVX. Wider lanes give
// the forward more independent chains but make the jets (4 and 8 lanes per number) spill:
// measured on AVX2, 64-byte lanes made the backward 3x slower. AVX-512 machines also get 32 bytes
// (the register count, not the width, is what the jets run out of).
#if defined(__AVX__) && defined(EQSCALE_VECTOR_EXTENSIONS)
#define EQSCALE_AVX_TILES 1
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

template <class S>
struct Width {
  static constexpr int value = kVectorBytes / sizeof(S);
};

// Smallest number of points per thread-pool task; large enough to amortise the
// per-task scratch allocation and the table lookups.
constexpr int64_t kGrainPoints = 1024;

template <class S, int W>
EQSCALE_INLINE void load_coordinates(const S* __restrict vectors, int64_t n0, int64_t count, Lane<S, W>* xyz) {
  // Permuted coordinates x' = v_2, y' = v_0, z' = v_1 (e3nn's y is the polar axis).
  for (int i = 0; i < 3; ++i) xyz[i] = Lane<S, W>::constant(S(0));
  for (int64_t p = 0; p < count; ++p) {
    xyz[0].set(p, vectors[(n0 + p) * 3 + 2]);
    xyz[1].set(p, vectors[(n0 + p) * 3 + 0]);
    xyz[2].set(p, vectors[(n0 + p) * 3 + 1]);
  }
}

// Original component of each permuted coordinate, for seeding derivatives.
constexpr int kSource[3] = {2, 0, 1};

// Writes coefficient * Q T into a block buffer of one lane per component.
template <class S, int W>
struct ForwardSink {
  using L = Lane<S, W>;
  const S* coefficients;
  L* out;

  template <bool kZonal>
  EQSCALE_INLINE void diagonal(int64_t m, S q, const L& c, const L& s) {
    const int64_t center = m * m + m;
    if (kZonal) {
      out[center] = L::constant(coefficients[center] * q);
    } else {
      out[center + m] = (coefficients[center + m] * q) * c;
      out[center - m] = (coefficients[center - m] * q) * s;
    }
  }
  template <bool kZonal>
  EQSCALE_INLINE void term(int64_t l, int64_t m, const L& q, const L& c, const L& s) {
    const int64_t center = l * l + l;
    if (kZonal) {
      out[center] = coefficients[center] * q;
    } else {
      const L cq = q * c;
      const L sq = q * s;
      out[center + m] = coefficients[center + m] * cq;
      out[center - m] = coefficients[center - m] * sq;
    }
  }
  template <bool kZonal>
  EQSCALE_INLINE void order(int64_t, const L&, const L&) {}
};

// Accumulates the jets A = sum_l g[l, +m] Q[l, m] and B = sum_l g[l, -m] Q[l, m] of one order,
// then adds the derivative part of A c_m + B s_m (or of A alone when m = 0). The grad lanes are
// pre-multiplied by the prefactors.
template <class S, int W>
struct BackwardSink {
  using L = Lane<S, W>;
  using J = Jet<L, 3>;
  const L* g;
  J a, b;
  L acc[3];

  template <bool kZonal>
  EQSCALE_INLINE void diagonal(int64_t m, S q, const J&, const J&) {
    const int64_t center = m * m + m;
    a = J::constant(S(0));
    a.v = q * g[center + m];
    if (!kZonal) {
      b = J::constant(S(0));
      b.v = q * g[center - m];
    }
  }
  template <bool kZonal>
  EQSCALE_INLINE void term(int64_t l, int64_t m, const J& q, const J&, const J&) {
    const int64_t center = l * l + l;
    a = a + g[center + m] * q;
    if (!kZonal) b = b + g[center - m] * q;
  }
  template <bool kZonal>
  EQSCALE_INLINE void order(int64_t, const J& c, const J& s) {
    if (kZonal) {
      for (int i = 0; i < 3; ++i) acc[i] = acc[i] + a.d[i];
    } else {
      const J f = a * c + b * s;
      for (int i = 0; i < 3; ++i) acc[i] = acc[i] + f.d[i];
    }
  }
};

// As the backward, one derivative order up: the outer tangent of each component is its
// derivative along grad_grad_vectors (written out as grad_grad_sh), and the inner partials of the
// contracted A c_m + B s_m along it are H G contracted with grad_sh.
template <class S, int W>
struct DoubleBackwardSink {
  using L = Lane<S, W>;
  using J = Jet<L, 3>;
  using H = Jet<J, 1>;
  const S* coefficients;
  const L* g;
  L* directional;
  H a, b;
  L acc[3];

  template <bool kZonal>
  EQSCALE_INLINE void diagonal(int64_t m, S q, const H& c, const H& s) {
    const int64_t center = m * m + m;
    a = H::constant(S(0));
    a.v.v = q * g[center + m];
    if (kZonal) {
      directional[center] = L::constant(S(0));
    } else {
      b = H::constant(S(0));
      b.v.v = q * g[center - m];
      directional[center + m] = (coefficients[center + m] * q) * c.d[0].v;
      directional[center - m] = (coefficients[center - m] * q) * s.d[0].v;
    }
  }
  template <bool kZonal>
  EQSCALE_INLINE void term(int64_t l, int64_t m, const H& q, const H& c, const H& s) {
    const int64_t center = l * l + l;
    a = a + g[center + m] * q;
    if (kZonal) {
      directional[center] = coefficients[center] * q.d[0].v;
    } else {
      b = b + g[center - m] * q;
      // Only the directional value of Q T is needed here, not the whole product of two jets.
      directional[center + m] = coefficients[center + m] * (q.v.v * c.d[0].v + q.d[0].v * c.v.v);
      directional[center - m] = coefficients[center - m] * (q.v.v * s.d[0].v + q.d[0].v * s.v.v);
    }
  }
  template <bool kZonal>
  EQSCALE_INLINE void order(int64_t, const H& c, const H& s) {
    if (kZonal) {
      for (int i = 0; i < 3; ++i) acc[i] = acc[i] + a.d[0].d[i];
    } else {
      const H f = a * c + b * s;
      for (int i = 0; i < 3; ++i) acc[i] = acc[i] + f.d[0].d[i];
    }
  }
};

// Moving a block between lanes (one per component, W points each) and rows (one per point, K
// components each) is a transposition. Done element by element it costs more than the recursion
// itself (GCC builds each vector from a serial chain of lane permutes), so with AVX it goes by
// W x W tiles in registers; the fallback is plain element moves.
template <class S, int W>
struct Tiles {
  static constexpr bool kAvailable = false;
};

#ifdef EQSCALE_AVX_TILES
template <>
struct Tiles<float, 8> {
  static constexpr bool kAvailable = true;
  using V = __m256;
  EQSCALE_INLINE static V load(const float* p) { return _mm256_loadu_ps(p); }
  EQSCALE_INLINE static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  EQSCALE_INLINE static void transpose(V* r) {
    const V t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const V t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const V t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const V t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const V u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const V u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const V u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const V u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
  }
};

template <>
struct Tiles<double, 4> {
  static constexpr bool kAvailable = true;
  using V = __m256d;
  EQSCALE_INLINE static V load(const double* p) { return _mm256_loadu_pd(p); }
  EQSCALE_INLINE static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  EQSCALE_INLINE static void transpose(V* r) {
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};
#endif

// Writes a block buffer (one lane per component) to `count` consecutive rows of length K.
template <class S, int W>
EQSCALE_INLINE void store_block(const Lane<S, W>* buffer, int64_t K, int64_t count, S* __restrict out) {
  int64_t k0 = 0;
  if constexpr (Tiles<S, W>::kAvailable) {
    using T = Tiles<S, W>;
    if (count == W) {
      for (; k0 + W <= K; k0 += W) {
        typename T::V r[W];
        for (int j = 0; j < W; ++j) r[j] = (typename T::V)buffer[k0 + j].v;
        T::transpose(r);
        for (int p = 0; p < W; ++p) T::store(out + p * K + k0, r[p]);
      }
    }
  }
  for (int64_t k = k0; k < K; ++k)
    for (int64_t p = 0; p < count; ++p) out[p * K + k] = buffer[k].get(int(p));
}

template <class S>
void forward_kernel(const S* vectors, S* out, int64_t N, const Recurrence<S>& rec) {
  constexpr int W = Width<S>::value;
  using L = Lane<S, W>;
  const int64_t K = (rec.lmax + 1) * (rec.lmax + 1);
  const int64_t blocks = (N + W - 1) / W;
  parallel_for(0, blocks, (kGrainPoints + W - 1) / W, [&](int64_t begin, int64_t end) {
    std::vector<L> buffer(K);
    ForwardSink<S, W> sink{rec.coefficients.data(), buffer.data()};
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * W;
      const int64_t count = std::min<int64_t>(W, N - n0);
      L xyz[3];
      load_coordinates<S, W>(vectors, n0, count, xyz);
      solid_harmonics(xyz[0], xyz[1], xyz[2], rec, sink);
      store_block<S, W>(buffer.data(), K, count, out + n0 * K);
    }
  });
}

// Loads grad_sh for one block, transposed to one lane per component and pre-multiplied by the
// prefactors, so that the sinks contract with the bare solid harmonics. Missing points of a last,
// partial block get zeros, so they add nothing.
template <class S, int W>
EQSCALE_INLINE void load_grad(const S* __restrict grad_sh, int64_t n0, int64_t count, int64_t K,
                              const Recurrence<S>& rec, Lane<S, W>* __restrict g) {
  using L = Lane<S, W>;
  const S* __restrict rows = grad_sh + n0 * K;
  const S* __restrict coefficients = rec.coefficients.data();
  int64_t k0 = 0;
  if constexpr (Tiles<S, W>::kAvailable) {
    using T = Tiles<S, W>;
    if (count == W) {
      for (; k0 + W <= K; k0 += W) {
        typename T::V r[W];
        for (int p = 0; p < W; ++p) r[p] = T::load(rows + p * K + k0);
        T::transpose(r);
        for (int j = 0; j < W; ++j) g[k0 + j].v = coefficients[k0 + j] * (typename L::Vec)r[j];
      }
    }
  }
  for (int64_t k = k0; k < K; ++k) {
    L lane = L::constant(S(0));
    for (int64_t p = 0; p < count; ++p) lane.set(int(p), rows[p * K + k]);
    g[k] = coefficients[k] * lane;
  }
}

template <class S>
void backward_kernel(const S* vectors, const S* grad_sh, S* grad_vectors, int64_t N, const Recurrence<S>& rec) {
  constexpr int W = Width<S>::value;
  using L = Lane<S, W>;
  using J = Jet<L, 3>;
  const int64_t K = (rec.lmax + 1) * (rec.lmax + 1);
  const int64_t blocks = (N + W - 1) / W;
  parallel_for(0, blocks, (kGrainPoints + W - 1) / W, [&](int64_t begin, int64_t end) {
    std::vector<L> g(K);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * W;
      const int64_t count = std::min<int64_t>(W, N - n0);
      L xyz[3];
      load_coordinates<S, W>(vectors, n0, count, xyz);
      load_grad<S, W>(grad_sh, n0, count, K, rec, g.data());
      J coord[3];
      for (int c = 0; c < 3; ++c) {
        coord[c] = J::constant(S(0));
        coord[c].v = xyz[c];
        coord[c].d[kSource[c]] = L::constant(S(1));
      }
      BackwardSink<S, W> sink;
      sink.g = g.data();
      for (int i = 0; i < 3; ++i) sink.acc[i] = L::constant(S(0));
      solid_harmonics(coord[0], coord[1], coord[2], rec, sink);
      for (int64_t p = 0; p < count; ++p)
        for (int i = 0; i < 3; ++i) grad_vectors[(n0 + p) * 3 + i] = sink.acc[i].get(p);
    }
  });
}

template <class S>
void double_backward_kernel(const S* vectors, const S* grad_sh, const S* grad_grad_vectors, S* grad_grad_sh,
                            S* grad_vectors, int64_t N, const Recurrence<S>& rec) {
  constexpr int W = Width<S>::value;
  using L = Lane<S, W>;
  using J = Jet<L, 3>;
  using H = Jet<J, 1>;
  const int64_t K = (rec.lmax + 1) * (rec.lmax + 1);
  const int64_t blocks = (N + W - 1) / W;
  parallel_for(0, blocks, (kGrainPoints + W - 1) / W, [&](int64_t begin, int64_t end) {
    std::vector<L> g(K);
    std::vector<L> directional(K);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * W;
      const int64_t count = std::min<int64_t>(W, N - n0);
      L xyz[3];
      L tangent[3];
      load_coordinates<S, W>(vectors, n0, count, xyz);
      load_coordinates<S, W>(grad_grad_vectors, n0, count, tangent);
      load_grad<S, W>(grad_sh, n0, count, K, rec, g.data());
      H coord[3];
      for (int c = 0; c < 3; ++c) {
        coord[c] = H::constant(S(0));
        coord[c].v.v = xyz[c];
        coord[c].v.d[kSource[c]] = L::constant(S(1));
        coord[c].d[0].v = tangent[c];
      }
      DoubleBackwardSink<S, W> sink;
      sink.coefficients = rec.coefficients.data();
      sink.g = g.data();
      sink.directional = directional.data();
      for (int i = 0; i < 3; ++i) sink.acc[i] = L::constant(S(0));
      solid_harmonics(coord[0], coord[1], coord[2], rec, sink);
      store_block<S, W>(directional.data(), K, count, grad_grad_sh + n0 * K);
      for (int64_t p = 0; p < count; ++p) {
        for (int i = 0; i < 3; ++i) grad_vectors[(n0 + p) * 3 + i] = sink.acc[i].get(p);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

constexpr int64_t kMaxFloat32Degree = 28;

int64_t check_common(const char* op, const at::Tensor& vectors, const at::Tensor& coefficients, int64_t lmax) {
  TORCH_CHECK(lmax >= 0, op, ": lmax must be >= 0, got ", lmax);
  TORCH_CHECK(vectors.device().is_cpu(), op, ": vectors must be a CPU tensor, got device ", vectors.device());
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3, op, ": vectors must have shape (N, 3), got ",
              vectors.sizes());
  TORCH_CHECK(vectors.scalar_type() == at::kFloat || vectors.scalar_type() == at::kDouble, op,
              ": vectors must be float32 or float64, got ", vectors.scalar_type());
  TORCH_CHECK(vectors.is_contiguous(), op, ": vectors must be contiguous");
  // (2 lmax - 1)!! = Q[lmax, lmax] exceeds the float32 range from lmax = 29 on; the prefactor that
  // would bring it back is applied after, so the result would be inf/nan rather than inexact.
  TORCH_CHECK_VALUE(vectors.scalar_type() != at::kFloat || lmax <= kMaxFloat32Degree, op, ": lmax must be <= ",
              kMaxFloat32Degree, " for float32 vectors (the recursion overflows float32 beyond), got ", lmax,
              "; use float64 vectors");
  const int64_t K = (lmax + 1) * (lmax + 1);
  TORCH_CHECK(coefficients.device().is_cpu(), op, ": coefficients must be a CPU tensor, got device ",
              coefficients.device());
  TORCH_CHECK(coefficients.dim() == 1 && coefficients.size(0) == K, op,
              ": coefficients must have shape ((lmax + 1)^2,) = (", K, ",), got ", coefficients.sizes());
  TORCH_CHECK(coefficients.scalar_type() == at::kDouble, op, ": coefficients must be float64, got ",
              coefficients.scalar_type());
  return K;
}

void check_like(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& vectors, int64_t rows,
                int64_t cols) {
  TORCH_CHECK(tensor.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got device ", tensor.device());
  TORCH_CHECK(tensor.dim() == 2 && tensor.size(0) == rows && tensor.size(1) == cols, op, ": ", name,
              " must have shape (", rows, ", ", cols, "), got ", tensor.sizes());
  TORCH_CHECK(tensor.scalar_type() == vectors.scalar_type(), op, ": ", name, " must have the dtype of vectors (",
              vectors.scalar_type(), "), got ", tensor.scalar_type());
  TORCH_CHECK(tensor.is_contiguous(), op, ": ", name, " must be contiguous");
}

at::Tensor spherical_harmonics_fwd(const at::Tensor& vectors, const at::Tensor& coefficients, int64_t lmax) {
  const char* op = "spherical_harmonics_fwd";
  const int64_t K = check_common(op, vectors, coefficients, lmax);
  const at::Tensor coeff = coefficients.contiguous();
  const int64_t N = vectors.size(0);
  at::Tensor out = empty_huge({N, K}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const Recurrence<scalar_t> rec(lmax, coeff.data_ptr<double>());
    forward_kernel<scalar_t>(vectors.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, rec);
  });
  return out;
}

at::Tensor spherical_harmonics_bwd(const at::Tensor& vectors, const at::Tensor& grad_sh, const at::Tensor& coefficients,
                                   int64_t lmax) {
  const char* op = "spherical_harmonics_bwd";
  const int64_t K = check_common(op, vectors, coefficients, lmax);
  const int64_t N = vectors.size(0);
  check_like(op, "grad_sh", grad_sh, vectors, N, K);
  const at::Tensor coeff = coefficients.contiguous();
  at::Tensor grad_vectors = at::empty({N, 3}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const Recurrence<scalar_t> rec(lmax, coeff.data_ptr<double>());
    backward_kernel<scalar_t>(vectors.data_ptr<scalar_t>(), grad_sh.data_ptr<scalar_t>(),
                              grad_vectors.data_ptr<scalar_t>(), N, rec);
  });
  return grad_vectors;
}

std::tuple<at::Tensor, at::Tensor> spherical_harmonics_bwd_bwd(const at::Tensor& vectors, const at::Tensor& grad_sh,
                                                               const at::Tensor& grad_grad_vectors,
                                                               const at::Tensor& coefficients, int64_t lmax) {
  const char* op = "spherical_harmonics_bwd_bwd";
  const int64_t K = check_common(op, vectors, coefficients, lmax);
  const int64_t N = vectors.size(0);
  check_like(op, "grad_sh", grad_sh, vectors, N, K);
  check_like(op, "grad_grad_vectors", grad_grad_vectors, vectors, N, 3);
  const at::Tensor coeff = coefficients.contiguous();
  at::Tensor grad_grad_sh = empty_huge({N, K}, vectors.options());
  at::Tensor grad_vectors = at::empty({N, 3}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "spherical_harmonics", [&] {
    const Recurrence<scalar_t> rec(lmax, coeff.data_ptr<double>());
    double_backward_kernel<scalar_t>(vectors.data_ptr<scalar_t>(), grad_sh.data_ptr<scalar_t>(),
                                     grad_grad_vectors.data_ptr<scalar_t>(), grad_grad_sh.data_ptr<scalar_t>(),
                                     grad_vectors.data_ptr<scalar_t>(), N, rec);
  });
  return {grad_grad_sh, grad_vectors};
}

}  // namespace
}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) {
  m.impl("spherical_harmonics_fwd", &eqscale::spherical_harmonics_fwd);
  m.impl("spherical_harmonics_bwd", &eqscale::spherical_harmonics_bwd);
  m.impl("spherical_harmonics_bwd_bwd", &eqscale::spherical_harmonics_bwd_bwd);
}
