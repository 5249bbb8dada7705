// One SIMD vector of channels for the CPU kernels, with the GCC/Clang vector extension.
//
// The kernels keep their accumulators in explicit vector registers instead of leaving the channel
// loops to the auto-vectoriser, which picks the wrong loop in places (it vectorised the SO(2)
// rotations over the rows being summed, with gathers and accumulators spilled to the stack, five
// times slower). EQSCALE_SIMD is defined where the extension exists; elsewhere the kernels keep
// their plain loops.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
// 32/64-byte vector types change the calling convention on targets without AVX; they never cross
// a call boundary here (everything is inlined), so the warning is noise.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define EQSCALE_SIMD 1
#define EQSCALE_SIMD_INLINE inline __attribute__((always_inline))
#else
#define EQSCALE_SIMD_INLINE inline
#endif

namespace eqscale {

#ifdef EQSCALE_SIMD
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <class S>
struct Simd {
  static constexpr int64_t lanes = kVectorBytes / sizeof(S);
  typedef S V __attribute__((vector_size(kVectorBytes)));
  EQSCALE_SIMD_INLINE static V load(const S* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  EQSCALE_SIMD_INLINE static void store(S* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  // A store that bypasses the caches (p aligned to the vector size) for large outputs written once:
  // it saves reading each line in before overwriting it. Needs fence() before others read them.
  EQSCALE_SIMD_INLINE static void stream(S* p, const V& v) {
#if defined(__AVX512F__)
    if constexpr (sizeof(S) == 4) {
      _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<const __m512&>(v));
    } else {
      _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<const __m512d&>(v));
    }
#elif defined(__AVX__)
    if constexpr (sizeof(S) == 4) {
      _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<const __m256&>(v));
    } else {
      _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<const __m256d&>(v));
    }
#else
    store(p, v);
#endif
  }
#if defined(__AVX512F__)
  EQSCALE_SIMD_INLINE static __m512 as_m512(const V& v) {
    __m512 r;
    std::memcpy(&r, &v, sizeof(r));
    return r;
  }
  EQSCALE_SIMD_INLINE static __m512d as_m512d(const V& v) {
    __m512d r;
    std::memcpy(&r, &v, sizeof(r));
    return r;
  }
#endif
  EQSCALE_SIMD_INLINE static bool aligned(const S* p) { return reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0; }
  EQSCALE_SIMD_INLINE static void fence() {
#if defined(__AVX__)
    _mm_sfence();
#endif
  }
  // A braced list of copies compiles to one broadcast from memory; V{} + s costs an add (0 + s is
  // no identity for -0) and an element loop may be vectorised into a wide load.
  template <size_t... I>
  EQSCALE_SIMD_INLINE static V splat(S s, std::index_sequence<I...>) {
    return V{((void)I, s)...};
  }
  EQSCALE_SIMD_INLINE static V splat(S s) { return splat(s, std::make_index_sequence<lanes>()); }
  EQSCALE_SIMD_INLINE static S sum(const V& v) { return Halves<kVectorBytes>::sum(v); }
  // out[j] = sum(v[j]) for four vectors. With AVX-512 one transposing reduction (six shuffles, five
  // adds) serves all four where four separate reductions take about thirty instructions.
  EQSCALE_SIMD_INLINE static void sum4(const V* v, S* out) {
#if defined(__AVX512F__)
    if constexpr (sizeof(S) == 4) {
      const auto a = as_m512(v[0]), b = as_m512(v[1]), c = as_m512(v[2]), d = as_m512(v[3]);
      // 128-bit blocks [a0+a2, a1+a3, b0+b2, b1+b3], then one block per vector.
      const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
      const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
      __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
      x = _mm512_add_ps(x, _mm512_permute_ps(x, 0x4E));  // + the other 64-bit half of each block
      x = _mm512_add_ps(x, _mm512_permute_ps(x, 0xB1));  // + the neighbouring lane
      _mm_storeu_ps(reinterpret_cast<float*>(out), _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, x)));
      return;
    } else {
      const auto a = as_m512d(v[0]), b = as_m512d(v[1]), c = as_m512d(v[2]), d = as_m512d(v[3]);
      const __m512d ab = _mm512_add_pd(_mm512_shuffle_f64x2(a, b, 0x44), _mm512_shuffle_f64x2(a, b, 0xEE));
      const __m512d cd = _mm512_add_pd(_mm512_shuffle_f64x2(c, d, 0x44), _mm512_shuffle_f64x2(c, d, 0xEE));
      __m512d x = _mm512_add_pd(_mm512_shuffle_f64x2(ab, cd, 0x88), _mm512_shuffle_f64x2(ab, cd, 0xDD));
      x = _mm512_add_pd(x, _mm512_permute_pd(x, 0x55));
      _mm256_storeu_pd(reinterpret_cast<double*>(out), _mm512_castpd512_pd256(_mm512_maskz_compress_pd(0x55, x)));
      return;
    }
#endif
    for (int j = 0; j < 4; ++j) out[j] = sum(v[j]);
  }

  // Horizontal sum by halving (log2(lanes) adds); a loop over lanes costs a shuffle per lane.
  template <int Bytes, bool Last = (Bytes == 2 * sizeof(S))>
  struct Halves {
    typedef S W __attribute__((vector_size(Bytes)));
    typedef S H __attribute__((vector_size(Bytes / 2)));
    EQSCALE_SIMD_INLINE static S sum(const W& v) {
      H lo, hi;
      std::memcpy(&lo, &v, Bytes / 2);
      std::memcpy(&hi, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
      return Halves<Bytes / 2>::sum(lo + hi);
    }
  };
  template <int Bytes>
  struct Halves<Bytes, true> {
    typedef S W __attribute__((vector_size(Bytes)));
    EQSCALE_SIMD_INLINE static S sum(const W& v) { return v[0] + v[1]; }
  };
};

#endif  // EQSCALE_SIMD

}  // namespace eqscale
