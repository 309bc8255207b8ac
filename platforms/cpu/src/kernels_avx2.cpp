// AVX2 + FMA + F16C kernels: this file is compiled with -mavx2 -mfma -mf16c only. The portable
// kernels are compiled here too (auto-vectorized for AVX2); the hot ones below use intrinsics.
#include "kernels_avx2.h"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "kernels.h"
#include "optimizer_dispatch.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {

#include "kernels_generic.inc"

namespace {

// 16-entry f32 lookup: two 8-entry permutes, chosen by bit 3 of the index.
inline __m256 lut16(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), sel);
}

// The 16 16-bit patterns of a block's table, split into a low-byte and a high-byte pshufb table
// (each repeated in both 128-bit lanes).
inline void table16(const float* code, float absmax, int32_t dtype, __m256i* tlo, __m256i* thi) {
  const __m256 s = _mm256_set1_ps(absmax);
  const __m256 t0 = _mm256_mul_ps(_mm256_loadu_ps(code), s);
  const __m256 t1 = _mm256_mul_ps(_mm256_loadu_ps(code + 8), s);
  __m128i w;  // 16 words, lanes 0..7 then 8..15, as two halves
  __m128i w1;
  if (dtype == BNB_DTYPE_BF16) {
    const __m256i p = _mm256_packus_epi32(to_bf16_32(t0), to_bf16_32(t1));  // per lane: t0 4, t1 4
    const __m256i q = _mm256_permute4x64_epi64(p, 0xd8);
    w = _mm256_castsi256_si128(q);
    w1 = _mm256_extracti128_si256(q, 1);
  } else {
    w = to_16bit<Element<BNB_DTYPE_F16>>(t0);  // NaN: the quiet NaN of its sign, as float_to_half
    w1 = to_16bit<Element<BNB_DTYPE_F16>>(t1);
  }
  const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m128i a = _mm_shuffle_epi8(w, split);   // lo bytes of 0..7 | hi bytes of 0..7
  const __m128i b = _mm_shuffle_epi8(w1, split);  // lo bytes of 8..15 | hi bytes of 8..15
  *tlo = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(a, b));
  *thi = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(a, b));
}

}  // namespace

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                     int32_t dtype, int64_t b0, int64_t b1) {
  float code[16];
  for (uint32_t c = 0; c < 16; ++c) code[c] = bnb::decode_4bit(nf4, c);
  const __m128i mask = _mm_set1_epi8(15);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const int64_t full = len & ~int64_t(31);
    const uint8_t* src = packed + start / 2;
    if (dtype == BNB_DTYPE_F32) {
      const __m256 s = _mm256_set1_ps(absmax[b]);
      const __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(code), s);
      const __m256 hi = _mm256_mul_ps(_mm256_loadu_ps(code + 8), s);
      float* dst = static_cast<float*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2));
        const __m128i h = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        const __m128i l = _mm_and_si128(v, mask);
        const __m128i e0 = _mm_unpacklo_epi8(h, l);  // indices of elements 0..15
        const __m128i e1 = _mm_unpackhi_epi8(h, l);  // 16..31
        _mm256_storeu_ps(dst + i, lut16(_mm256_cvtepu8_epi32(e0), lo, hi));
        _mm256_storeu_ps(dst + i + 8, lut16(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8)), lo, hi));
        _mm256_storeu_ps(dst + i + 16, lut16(_mm256_cvtepu8_epi32(e1), lo, hi));
        _mm256_storeu_ps(dst + i + 24, lut16(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8)), lo, hi));
      }
      for (int64_t i = full; i < len; ++i) {
        const uint8_t byte = src[i / 2];
        dst[i] = code[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[b];
      }
    } else {
      __m256i tlo, thi;
      table16(code, absmax[b], dtype, &tlo, &thi);
      uint16_t* dst = static_cast<uint16_t*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2));
        const __m128i h = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        const __m128i l = _mm_and_si128(v, mask);
        const __m256i idx = _mm256_set_m128i(_mm_unpackhi_epi8(h, l), _mm_unpacklo_epi8(h, l));
        const __m256i lb = _mm256_shuffle_epi8(tlo, idx);
        const __m256i hb = _mm256_shuffle_epi8(thi, idx);
        const __m256i w0 = _mm256_unpacklo_epi8(lb, hb);  // lane 0: 0..7, lane 1: 16..23
        const __m256i w1 = _mm256_unpackhi_epi8(lb, hb);  // lane 0: 8..15, lane 1: 24..31
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_permute2x128_si256(w0, w1, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 16), _mm256_permute2x128_si256(w0, w1, 0x31));
      }
      if (full < len) {
        typename Element<BNB_DTYPE_BF16>::type tab[16];
        for (int c = 0; c < 16; ++c) {
          const float v = code[c] * absmax[b];
          tab[c] = dtype == BNB_DTYPE_BF16 ? bnb::float_to_bf16(v) : bnb::float_to_half(v);
        }
        for (int64_t i = full; i < len; ++i) {
          const uint8_t byte = src[i / 2];
          dst[i] = tab[(i & 1) ? (byte & 15) : (byte >> 4)];
        }
      }
    }
  }
}

// ---- int8 matmul: sign-extend to 16 bits and vpmaddwd (exact for every int8 value) ----------

void int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C, int64_t n0,
                        int64_t n1) {
  const int64_t k32 = k & ~int64_t(31);
  for (int64_t j = n0; j < n1; ++j) {
    const int8_t* b = B + j * k;
    for (int64_t r = 0; r < m; ++r) {
      const int8_t* x = A + r * k;
      __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
      for (int64_t i = 0; i < k32; i += 32) {
        const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
        const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 16)));
        const __m256i a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        const __m256i a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i + 16)));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
      }
      __m256i s8 = _mm256_add_epi32(acc0, acc1);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      int32_t s = _mm_cvtsi128_si32(s4);
      for (int64_t i = k32; i < k; ++i) s += static_cast<int32_t>(x[i]) * static_cast<int32_t>(b[i]);
      C[r * n + j] = s;
    }
  }
}

// kernels_avx2_gemm4.cpp
int64_t gemm_4bit_prepare_bytes(const Gemm4bitArgs& a);
void gemm_4bit_prepare(const Gemm4bitArgs& a, void* scratch);
void gemm_4bit(const Gemm4bitArgs& a, int64_t n0, int64_t n1);

// kernels_avx2_wmm.cpp
void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1);
void weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);

}  // namespace avx2

const KernelTable kernels_avx2 = [] {
  using namespace avx2;
  KernelTable t = BNB_GENERIC_TABLE;
  t.quantize_4bit = quantize_4bit;
  t.quantize_blockwise = quantize_blockwise;
  t.dequantize_blockwise = dequantize_blockwise;
  t.optimizer_32bit = optimizer_32bit;
  t.optimizer_8bit_blockwise = optimizer_8bit_blockwise;
  t.dequantize_4bit = dequantize_4bit;
  t.gemm_4bit_prepare_bytes = gemm_4bit_prepare_bytes;
  t.gemm_4bit_prepare = gemm_4bit_prepare;
  t.gemm_4bit = gemm_4bit;
  t.int8_linear_matmul = int8_linear_matmul;
  t.int8_vectorwise_quant = int8_vectorwise_quant;
  t.int8_outlier_scan = int8_outlier_scan;
  t.weight_matmul = weight_matmul;
  t.weight_matmul_t = weight_matmul_t;
  return t;
}();

}  // namespace bnb_cpu
