// AVX2 + F16C helpers shared by the kernels_avx2*.cpp files (each compiled with -mavx2 -mfma
// -mf16c; include this header from those files only). Everything is inline with internal use only.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cpu {
namespace avx2 {

// Loads 8 elements of dtype E as f32 (exact).
template <typename E>
inline __m256 load8(const typename E::type* p) {
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (E::kDtype == BNB_DTYPE_F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

// f32 -> bf16 bits with round-to-nearest-even and every NaN -> 0xFFFF (bnb::float_to_bf16); the
// 8 results in the low 16 bits of the dwords.
inline __m256i to_bf16_32(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0xffff), nan);
}

// f32 -> 8 f16 or bf16 bit patterns, rounded as E::store rounds. f16: F16C rounds to nearest even
// like bnb::float_to_half, but keeps a NaN's top payload bits where float_to_half gives the quiet
// NaN of its sign, so each NaN is made that quiet NaN first.
template <typename E>
inline __m128i to_16bit(__m256 v) {
  static_assert(E::kDtype != BNB_DTYPE_F32, "to_16bit converts to f16 or bf16");
  if constexpr (E::kDtype == BNB_DTYPE_F16) {
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256 quiet =
        _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
    return _mm256_cvtps_ph(_mm256_blendv_ps(v, quiet, nan), _MM_FROUND_TO_NEAREST_INT);
  } else {
    const __m256i r = to_bf16_32(v);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
}

// |x| as bit patterns: their (unsigned or signed) integer order is the order of the magnitudes,
// any NaN above infinity.
inline __m256i abs_bits(__m256 x) { return _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff)); }

// The largest of 8 non-negative int32 lanes (e.g. abs_bits).
inline uint32_t hmax_epi32(__m256i m) {
  __m128i a = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  a = _mm_max_epi32(a, _mm_shuffle_epi32(a, 0x4e));
  a = _mm_max_epi32(a, _mm_shuffle_epi32(a, 0xb1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(a));
}

// The sum of 8 f32 lanes: the two halves, then pairs, then the last two (one fixed order).
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace avx2
}  // namespace bnb_cpu
