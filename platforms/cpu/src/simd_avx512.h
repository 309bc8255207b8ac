// AVX-512 helpers shared by the kernels_avx512*.cpp files (each compiled with the AVX-512 flags;
// include this header from those files only).
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cpu {
namespace avx512 {

// f32 -> bf16 bits with round-to-nearest-even and every NaN -> 0xFFFF (bnb::float_to_bf16).
inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0xffff));
  return _mm512_cvtepi32_epi16(r);
}

// Loads 16 elements of dtype E as f32.
template <typename E>
inline __m512 load16(const typename E::type* p) {
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (E::kDtype == BNB_DTYPE_F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
}

// Stores the lanes of v selected by `mask` as dtype E (rounded as E::store rounds).
template <typename E>
inline void store16(typename E::type* p, __m512 v, __mmask16 mask = 0xffff) {
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    _mm512_mask_storeu_ps(p, mask, v);
  } else if constexpr (E::kDtype == BNB_DTYPE_F16) {
    _mm256_mask_storeu_epi16(p, mask, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    _mm256_mask_storeu_epi16(p, mask, to_bf16(v));
  }
}

}  // namespace avx512
}  // namespace bnb_cpu
