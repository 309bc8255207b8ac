// AVX-512 helpers shared by the kernels_avx512*.cpp files (each compiled with the AVX-512 flags;
// include this header from those files only).
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/bnb_c_api.h"

// Forces a lambda inline (GCC and Clang): a hot loop body written as a lambda that is called from
// two places may otherwise become a call, with its accumulators passed through memory.
#define BNB_INLINE_LAMBDA __attribute__((always_inline))

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

// f32 -> f16 bits rounded to nearest even, every NaN the quiet NaN of its sign (bnb::float_to_half):
// vcvtps2ph alone keeps a NaN's top payload bits (0x7fc02000 -> 0x7e01 where the scalar kernels
// give 0x7e00).
inline __m256i to_f16(__m512 v) {
  const __m512 quiet = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN)), _mm512_set1_epi32(0x7fc00000)));
  return _mm512_cvtps_ph(_mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), quiet),
                         _MM_FROUND_TO_NEAREST_INT);
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
    _mm256_mask_storeu_epi16(p, mask, to_f16(v));
  } else {
    _mm256_mask_storeu_epi16(p, mask, to_bf16(v));
  }
}

// A 256-entry f32 code book as four byte planes, for 64 lookups at a time.
struct BytePlanes {
  alignas(64) uint8_t plane[4][256];
  explicit BytePlanes(const float* qmap) {
    for (int i = 0; i < 256; ++i) {
      uint32_t u;
      memcpy(&u, qmap + i, 4);
      for (int j = 0; j < 4; ++j) plane[j][i] = static_cast<uint8_t>(u >> (8 * j));
    }
  }
};

// Codes in the order that makes the unpacks of lookup64 return elements in order: plane position
// 16L + 4r + t holds element 16r + 4L + t.
inline __m512i unpack_order() {
  alignas(64) uint8_t idx[64];
  for (int p = 0; p < 64; ++p) idx[p] = static_cast<uint8_t>(16 * ((p >> 2) & 3) + 4 * (p >> 4) + (p & 3));
  return _mm512_load_si512(idx);
}

// qmap[codes[i]] * scale for 64 codes: out[r] holds elements 16r .. 16r + 15.
inline void lookup64(const uint8_t* codes, const BytePlanes& t, __m512i order, float scale, __m512 out[4]) {
  const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(codes));
  const __mmask64 high = _mm512_movepi8_mask(c);  // code >= 128
  __m512i b[4];
  for (int j = 0; j < 4; ++j) {
    const uint8_t* pl = t.plane[j];
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(pl), c, _mm512_load_si512(pl + 64));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(pl + 128), c, _mm512_load_si512(pl + 192));
    b[j] = _mm512_mask_mov_epi8(lo, high, hi);
  }
  const __m512i w01l = _mm512_unpacklo_epi8(b[0], b[1]), w01h = _mm512_unpackhi_epi8(b[0], b[1]);
  const __m512i w23l = _mm512_unpacklo_epi8(b[2], b[3]), w23h = _mm512_unpackhi_epi8(b[2], b[3]);
  const __m512 s = _mm512_set1_ps(scale);
  out[0] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(w01l, w23l)), s);
  out[1] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(w01l, w23l)), s);
  out[2] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(w01h, w23h)), s);
  out[3] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(w01h, w23h)), s);
}

// Bit reversal of each of 64 bytes: a 256-entry table looked up with two vpermi2b and a blend on
// bit 7. The binary searches that collect their decisions bit-reversed undo that with it.
struct ByteReverse {
  alignas(64) uint8_t table[256];
  ByteReverse() {
    for (int x = 0; x < 256; ++x) {
      int y = 0;
      for (int i = 0; i < 8; ++i) y |= ((x >> i) & 1) << (7 - i);
      table[x] = static_cast<uint8_t>(y);
    }
  }
  __m512i operator()(__m512i b) const {
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(table), b, _mm512_load_si512(table + 64));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(table + 128), b, _mm512_load_si512(table + 192));
    return _mm512_mask_mov_epi8(lo, _mm512_movepi8_mask(b), hi);
  }
};

}  // namespace avx512
}  // namespace bnb_cpu
