// Block absmax and block grouping for the AVX2 quantizers (kernels_avx2_quant.cpp: 4-bit,
// kernels_avx2_blockwise.cpp: 8-bit), compiled with -mavx2 -mfma -mf16c; include it from those
// files only. Its functions have internal linkage on purpose: an out-of-line copy shared with a
// translation unit compiled without -mavx2 could carry AVX2 instructions to a CPU without them
// (see bnb/portability.h).
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "bnb/numeric.h"
#include "element.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {
namespace {  // NOLINT(google-build-namespaces): internal linkage per including file, see above

// ---- loads, block absmax -------------------------------------------------------------------------

inline uint32_t hmax_epi16(__m256i m) {
  __m128i a = _mm_max_epi16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  a = _mm_max_epi16(a, _mm_shuffle_epi32(a, 0x4e));
  a = _mm_max_epi16(a, _mm_shuffle_epi32(a, 0xb1));
  a = _mm_max_epi16(a, _mm_srli_epi32(a, 16));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(a)) & 0xffffu;
}

// The block's absmax exactly as gen_block_absmax computes it: max |x| over the first len & ~15
// elements, where any NaN gives the canonical NaN, then the last len % 16 one by one, where the
// first NaN met is kept as loaded (bnb::nan_max_abs). The vector part takes the maximum of the bit
// patterns with the sign cleared (their integer order is the order of the magnitudes, NaN above
// infinity), so NaN needs no separate test and f16/bf16 need no conversion.
template <typename E>
inline float block_absmax(const typename E::type* x, int64_t len) {
  const float nan = bnb::bits_float(0x7fc00000u);
  int64_t i = 0;
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    const __m256i* p = reinterpret_cast<const __m256i*>(x);
    for (; i + 16 <= len; i += 16) {
      m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_loadu_si256(p + i / 8), mask));
      m1 = _mm256_max_epi32(m1, _mm256_and_si256(_mm256_loadu_si256(p + i / 8 + 1), mask));
    }
    const uint32_t r = hmax_epi32(_mm256_max_epi32(m0, m1));
    if (r > 0x7f800000u) return nan;
    float m = as_compared(bnb::bits_float(r));
    for (; i < len; ++i) m = bnb::nan_max_abs(m, x[i]);
    return m;
  } else {
    const __m256i mask = _mm256_set1_epi16(0x7fff);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    const __m256i* p = reinterpret_cast<const __m256i*>(x);
    for (; i + 32 <= len; i += 32) {
      m0 = _mm256_max_epi16(m0, _mm256_and_si256(_mm256_loadu_si256(p + i / 16), mask));
      m1 = _mm256_max_epi16(m1, _mm256_and_si256(_mm256_loadu_si256(p + i / 16 + 1), mask));
    }
    if (i + 16 <= len) {
      m0 = _mm256_max_epi16(m0, _mm256_and_si256(_mm256_loadu_si256(p + i / 16), mask));
      i += 16;
    }
    const uint32_t r = hmax_epi16(_mm256_max_epi16(m0, m1));
    float m;
    if constexpr (E::kDtype == BNB_DTYPE_BF16) {
      if (r > 0x7f80u) return nan;
      m = as_compared(bnb::bits_float(r << 16));
    } else {
      if (r > 0x7c00u) return nan;
      m = bnb::half_to_float(static_cast<uint16_t>(r));
    }
    for (; i < len; ++i) m = bnb::nan_max_abs(m, E::load(x[i]));
    return m;
  }
}

// Blocks are handled in groups of about 4096 elements: first every absmax of the group, then the
// codes, so that a block's reduction and division do not stall its own search.
inline int64_t group_blocks(int64_t blocksize) { return blocksize < 4096 ? 4096 / blocksize : 1; }

// While a group's codes are computed, the next group is prefetched (its absmax pass would otherwise
// wait on memory with nothing to overlap): 32 elements' worth of cache lines per call, `ahead`
// bytes past `p`.
template <typename T>
inline void prefetch32(const T* p, int64_t ahead) {
  const char* a = reinterpret_cast<const char*>(p) + ahead;
  _mm_prefetch(a, _MM_HINT_T0);
  if (sizeof(T) == 4) _mm_prefetch(a + 64, _MM_HINT_T0);
}

// Lane-wise maxima of a whole block's magnitude patterns (len a multiple of 32): 8 dwords, each the
// largest |x| bit pattern of its lanes (f16/bf16: the 16-bit pattern, zero-extended).
template <typename E>
inline __m256i block_max8(const typename E::type* x, int64_t len) {
  const __m256i* p = reinterpret_cast<const __m256i*>(x);
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    __m256i m0 = _mm256_and_si256(_mm256_loadu_si256(p), mask);
    __m256i m1 = _mm256_and_si256(_mm256_loadu_si256(p + 1), mask);
    __m256i m2 = _mm256_and_si256(_mm256_loadu_si256(p + 2), mask);
    __m256i m3 = _mm256_and_si256(_mm256_loadu_si256(p + 3), mask);
    for (int64_t i = 32; i < len; i += 32) {
      m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_loadu_si256(p + i / 8), mask));
      m1 = _mm256_max_epi32(m1, _mm256_and_si256(_mm256_loadu_si256(p + i / 8 + 1), mask));
      m2 = _mm256_max_epi32(m2, _mm256_and_si256(_mm256_loadu_si256(p + i / 8 + 2), mask));
      m3 = _mm256_max_epi32(m3, _mm256_and_si256(_mm256_loadu_si256(p + i / 8 + 3), mask));
    }
    return _mm256_max_epi32(_mm256_max_epi32(m0, m1), _mm256_max_epi32(m2, m3));
  } else {
    const __m256i mask = _mm256_set1_epi16(0x7fff);
    __m256i m0 = _mm256_and_si256(_mm256_loadu_si256(p), mask);
    __m256i m1 = _mm256_and_si256(_mm256_loadu_si256(p + 1), mask);
    for (int64_t i = 32; i < len; i += 32) {
      m0 = _mm256_max_epi16(m0, _mm256_and_si256(_mm256_loadu_si256(p + i / 16), mask));
      m1 = _mm256_max_epi16(m1, _mm256_and_si256(_mm256_loadu_si256(p + i / 16 + 1), mask));
    }
    const __m256i m = _mm256_max_epi16(m0, m1);
    return _mm256_max_epi32(_mm256_and_si256(m, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(m, 16));
  }
}

// Lane j of the result: the largest of the 8 lanes of m[j].
inline __m256i transpose_max8(const __m256i* m) {
  __m256i r2[4], r4[2];
  for (int j = 0; j < 4; ++j) {  // lane L: m[2j] {0,2}|{1,3} pairs, m[2j+1] likewise
    r2[j] =
        _mm256_max_epi32(_mm256_unpacklo_epi32(m[2 * j], m[2 * j + 1]), _mm256_unpackhi_epi32(m[2 * j], m[2 * j + 1]));
  }
  for (int j = 0; j < 2; ++j) {  // lane L: the half maxima of blocks 4j .. 4j + 3
    r4[j] = _mm256_max_epi32(_mm256_unpacklo_epi64(r2[2 * j], r2[2 * j + 1]),
                             _mm256_unpackhi_epi64(r2[2 * j], r2[2 * j + 1]));
  }
  return _mm256_max_epi32(_mm256_permute2x128_si256(r4[0], r4[1], 0x20), _mm256_permute2x128_si256(r4[0], r4[1], 0x31));
}

// absmax[b] and inv[b - g0] = inverse_absmax(absmax[b]) for the blocks [g0, g1): whole blocks
// whose length is a multiple of 32 eight at a time (their maxima reduced together, one division
// for eight), the others one by one.
template <typename E>
void group_absmax(const typename E::type* x, int64_t n, int64_t blocksize, int64_t g0, int64_t g1, float* absmax,
                  float* inv) {
  int64_t b = g0;
  if (blocksize % 32 == 0) {
    for (; b + 8 <= g1 && (b + 8) * blocksize <= n; b += 8) {
      __m256i m[8];
      for (int j = 0; j < 8; ++j) m[j] = block_max8<E>(x + (b + j) * blocksize, blocksize);
      const __m256i r = transpose_max8(m);
      __m256 amax;
      __m256i nan;
      if constexpr (E::kDtype == BNB_DTYPE_F32) {
        nan = _mm256_cmpgt_epi32(r, _mm256_set1_epi32(0x7f800000));
        amax = _mm256_castsi256_ps(r);
      } else if constexpr (E::kDtype == BNB_DTYPE_BF16) {
        nan = _mm256_cmpgt_epi32(r, _mm256_set1_epi32(0x7f80));
        amax = _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));
      } else {
        nan = _mm256_cmpgt_epi32(r, _mm256_set1_epi32(0x7c00));
        amax = _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
      }
      amax = _mm256_add_ps(amax, _mm256_setzero_ps());  // as_compared, lane by lane
      amax = _mm256_blendv_ps(amax, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), _mm256_castsi256_ps(nan));
      _mm256_storeu_ps(absmax + b, amax);
      // bnb::inverse_absmax: the floor's inverse where absmax < 1e-38 or reads as 0 (NaN stays).
      const __m256 tiny = _mm256_or_ps(_mm256_cmp_ps(amax, _mm256_set1_ps(1e-38f), _CMP_LT_OQ),
                                       _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_EQ_OQ));
      _mm256_storeu_ps(inv + (b - g0), _mm256_blendv_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), amax),
                                                        _mm256_set1_ps(bnb::inverse_absmax_floor()), tiny));
    }
  }
  for (; b < g1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = start + blocksize <= n ? blocksize : n - start;
    absmax[b] = block_absmax<E>(x + start, len);
    inv[b - g0] = bnb::inverse_absmax(absmax[b]);
  }
}

// Calls body(b, start, len, inv, ahead) for the blocks [b0, b1) group by group, each group's
// absmax (written to absmax[b]) and inverse scales computed first; `ahead` is the prefetch
// distance in bytes, one group.
template <typename E, typename Body>
inline void for_each_block(const typename E::type* x, int64_t n, int64_t blocksize, int64_t b0, int64_t b1,
                           float* absmax, Body&& body) {
  const int64_t group = group_blocks(blocksize);
  const int64_t ahead = group * blocksize * static_cast<int64_t>(sizeof(typename E::type));
  float inv[4096];
  for (int64_t g0 = b0; g0 < b1; g0 += group) {
    const int64_t g1 = b1 - g0 < group ? b1 : g0 + group;
    group_absmax<E>(x, n, blocksize, g0, g1, absmax, inv);
    for (int64_t b = g0; b < g1; ++b) {
      const int64_t start = b * blocksize;
      body(b, start, start + blocksize <= n ? blocksize : n - start, inv[b - g0], ahead);
    }
  }
}

}  // namespace
}  // namespace avx2
}  // namespace bnb_cpu
