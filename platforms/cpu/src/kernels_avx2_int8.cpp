// AVX2 + F16C LLM.int8() row quantization (int8_vectorwise_quant) and outlier-column scan, for the
// avx2 and avx512 tables; compiled with -mavx2 -mfma -mf16c only. Bit for bit the portable kernels
// (gen_int8_vectorwise_quant, gen_int8_outlier_scan): the same f32 operations, 8 lanes at a time.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/numeric.h"
#include "bnb/optimizer_math.h"
#include "element.h"
#include "kernels.h"
#include "kernels_avx2.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {

namespace {

// 8 int32 lanes within [-128, 127] (or 0 / -1 masks) as 8 bytes, in the low half.
inline __m128i to_bytes(__m256i i) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  return _mm_packs_epi16(w, w);
}

template <typename E>
void quant_rows(const typename E::type* A, int64_t cols, float threshold, int8_t* out, float* row_stats,
                const uint8_t* outlier_cols, int64_t r0, int64_t r1) {
  const bool thr = threshold > 0.0f;
  const __m256 vthr = _mm256_set1_ps(threshold);
  const int64_t c8 = cols & ~int64_t(7);
  for (int64_t r = r0; r < r1; ++r) {
    const typename E::type* x = A + r * cols;
    int8_t* q = out + r * cols;
    // The row's absmax: the largest |v| below the threshold (all when it is 0); NaN if any NaN.
    __m256i mb = _mm256_setzero_si256();
    for (int64_t c = 0; c < c8; c += 8) {
      __m256i a = abs_bits(load8<E>(x + c));
      if (thr) {
        a = _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(_mm256_castsi256_ps(a), vthr, _CMP_GE_OQ)), a);
      }
      mb = _mm256_max_epu32(mb, a);
    }
    uint32_t mbits = hmax_epi32(mb);
    for (int64_t c = c8; c < cols; ++c) {
      uint32_t a = bnb::float_bits(E::load(x[c])) & 0x7fffffffu;
      if (thr && bnb::bits_float(a) >= threshold) a = 0;
      mbits = a > mbits ? a : mbits;
    }
    const float m = mbits > 0x7f800000u ? bnb::bits_float(0x7fc00000u) : as_compared(bnb::bits_float(mbits));
    row_stats[r] = m;
    if (m == 0.0f || m != m) {  // every code 0 (int8_round)
      memset(q, 0, static_cast<size_t>(cols));
      continue;
    }
    const float scale = bnb::int8_row_scale(m);
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t c = 0; c < c8; c += 8) {
      const __m256 v = load8<E>(x + c);
      const __m256 y = _mm256_mul_ps(v, vs);
      __m256 rq = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      // max/min return their second operand for NaN; NaN lanes are then cleared to 0.
      rq = _mm256_min_ps(_mm256_max_ps(rq, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
      rq = _mm256_andnot_ps(_mm256_cmp_ps(y, y, _CMP_UNORD_Q), rq);
      __m128i b = to_bytes(_mm256_cvtps_epi32(rq));
      if (thr && outlier_cols) {
        const __m128i flags = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(outlier_cols + c));
        b = _mm_and_si128(b, _mm_cmpeq_epi8(flags, _mm_setzero_si128()));
      } else if (thr) {
        const __m256 big = _mm256_cmp_ps(_mm256_castsi256_ps(abs_bits(v)), vthr, _CMP_GE_OQ);
        b = _mm_andnot_si128(to_bytes(_mm256_castps_si256(big)), b);
      }
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + c), b);
    }
    for (int64_t c = c8; c < cols; ++c) {
      const float v = E::load(x[c]);
      int8_t code = bnb::int8_round(v, scale, m);
      if (thr && (outlier_cols ? outlier_cols[c] != 0 : (v < 0.0f ? -v : v) >= threshold)) code = 0;
      q[c] = code;
    }
  }
}

template <typename E>
void outlier_scan_t(const typename E::type* A, int64_t rows, int64_t cols, float threshold, uint8_t* flags) {
  const __m256 vthr = _mm256_set1_ps(threshold);
  for (int64_t r = 0; r < rows; ++r) {
    const typename E::type* x = A + r * cols;
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      const __m256 a = _mm256_castsi256_ps(abs_bits(load8<E>(x + c)));
      const int k = _mm256_movemask_ps(_mm256_cmp_ps(a, vthr, _CMP_GE_OQ));
      if (k) {  // rare: outliers are a few columns
        for (int l = 0; l < 8; ++l) flags[c + l] |= static_cast<uint8_t>((k >> l) & 1);
      }
    }
    for (; c < cols; ++c) {
      const float v = E::load(x[c]);
      if ((v < 0.0f ? -v : v) >= threshold) flags[c] = 1;
    }
  }
}

}  // namespace

void int8_vectorwise_quant(const void* A, int32_t dtype, int64_t cols, float threshold, int8_t* out, float* row_stats,
                           const uint8_t* outlier_cols, int64_t r0, int64_t r1) {
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quant_rows<E>(static_cast<const typename E::type*>(A), cols, threshold, out, row_stats, outlier_cols, r0, r1);
  });
}

void int8_outlier_scan(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold, uint8_t* flags) {
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    outlier_scan_t<E>(static_cast<const typename E::type*>(A), rows, cols, threshold, flags);
  });
}

}  // namespace avx2
}  // namespace bnb_cpu
