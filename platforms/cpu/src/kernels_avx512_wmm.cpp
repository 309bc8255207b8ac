// AVX-512 matmuls against a weight kept quantized (weight_matmul_simd.h): 4 int8 weight rows by
// 4 rows of A in registers for the forward, 4 weight rows (int8 or 4-bit)
// at a time for the input gradient.
#include <immintrin.h>
#include <stdint.h>

#include "element.h"
#include "kernels.h"

namespace bnb_cpu {
namespace avx2 {
void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1);  // kernels_avx2_wmm.cpp
}  // namespace avx2

namespace avx512 {

#include "weight_matmul_simd.h"

void gen_weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);      // kernels_generic.inc
void gen_weight_row(const WeightMatmulArgs& a, int64_t j, int64_t k0, int64_t k1, float* w);  // kernels_generic.inc

namespace {

struct Simd {
  using V = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kRows = 4;  // 16 accumulators + 4 weight slices + 1 input slice of 32 zmm
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  using Table4 = __m512;
  static Table4 table4(const float* code16) { return _mm512_loadu_ps(code16); }
  // 16 values from 8 bytes: byte i into dwords 2i and 2i + 1, the even ones shifted to the high
  // nibble; vpermps reads the low 4 bits of each index.
  static V load_4bit(const uint8_t* p, Table4 t) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m512i x = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(x, _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4)),
                                 t);
  }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

// Below 4 rows of A the AVX2 kernel streams the weight faster (4096x4096 from memory, 2 threads,
// same process: 1 row 0.62 vs 0.91 ms, 2 rows 0.74 vs 0.87); from 4 rows the 4x4 tiles win (4: 0.85
// vs 1.34, 8: 1.40 vs 2.22, 16: 2.60 vs 4.16).
void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  if (a.m < 4) return avx2::weight_matmul(a, n0, n1);
  wmm_forward<Simd>(a, n0, n1);
}

void weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1) {
  if (!wmm_transposed<Simd>(a, acc, j0, j1, gen_weight_row)) gen_weight_matmul_t(a, acc, j0, j1);
}

}  // namespace avx512
}  // namespace bnb_cpu
