// AVX2 matmuls against a weight kept quantized (weight_matmul_simd.h): 4 int8 weight rows by 2
// rows of A in registers for the forward, 4 weight rows (int8 or 4-bit)
// at a time for the input gradient.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "element.h"
#include "kernels.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {

#include "weight_matmul_simd.h"

void gen_weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);      // kernels_generic.inc
void gen_weight_row(const WeightMatmulArgs& a, int64_t j, int64_t k0, int64_t k1, float* w);  // kernels_generic.inc

namespace {

struct Simd {
  using V = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kRows = 2;  // 8 accumulators + 4 weight slices + 1 input slice of 16 ymm
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  struct Table4 {
    __m256 lo, hi;
  };
  static Table4 table4(const float* code16) { return {_mm256_loadu_ps(code16), _mm256_loadu_ps(code16 + 8)}; }
  // 8 values from 4 bytes: byte i into dwords 2i and 2i + 1, the even ones shifted to the high
  // nibble; each half of the table looked up by the low 3 bits, bit 3 picking the half.
  static V load_4bit(const uint8_t* p, Table4 t) {
    int32_t word;
    memcpy(&word, p, 4);
    const __m128i b = _mm_cvtsi32_si128(word);
    const __m256i x = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    const __m256i nib =
        _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_set_epi32(0, 4, 0, 4, 0, 4, 0, 4)), _mm256_set1_epi32(15));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, nib), _mm256_permutevar8x32_ps(t.hi, nib),
                            _mm256_castsi256_ps(_mm256_slli_epi32(nib, 28)));
  }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static float sum(V v) { return hsum(v); }
};

}  // namespace

void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1) { wmm_forward<Simd>(a, n0, n1); }

void weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1) {
  if (!wmm_transposed<Simd>(a, acc, j0, j1, gen_weight_row)) gen_weight_matmul_t(a, acc, j0, j1);
}

}  // namespace avx2
}  // namespace bnb_cpu
