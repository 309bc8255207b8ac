// AVX-512 forward of the matmul against an int8 weight kept quantized (LLM.int8()'s training
// path): out[r, j] = sum_i A[r, i] * CB[j, i] * scale[j] (+ bias[j]), A in f32.
//
// Tiles of 4 weight rows by up to 4 rows of A: each 16-wide slice of A is loaded once for 4
// weight rows and each slice of the weight (sign-extended and converted to f32 in registers)
// once for every row of A, 16 f32 accumulators in registers. Tails are masked loads. The sums are
// f32 in a different order from the portable kernel's, so results agree within rounding.
#include <immintrin.h>
#include <stdint.h>

#include "element.h"
#include "kernels.h"

namespace bnb_cpu {
namespace avx512 {
namespace {

inline __m512 weight16(const int8_t* b, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, b)));
}

// Sums of R rows of A (stride k) against weight rows b[0..3] (stride k), k elements each.
template <int R>
void tile(const float* A, int64_t k, const int8_t* const b[4], float sums[R][4]) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (k - i)) - 1);
    __m512 w[4];
    for (int q = 0; q < 4; ++q) w[q] = weight16(b[q] + i, mask);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_maskz_loadu_ps(mask, A + r * k + i);
      for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_fmadd_ps(x, w[q], acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) sums[r][q] = _mm512_reduce_add_ps(acc[r][q]);
}

template <typename O, typename BE, int R>
void rows_block(const WeightMatmulArgs& a, int64_t r0, int64_t n0, int64_t n1) {
  const auto* bias = static_cast<const typename BE::type*>(a.bias);
  auto* out = static_cast<typename O::type*>(a.out);
  for (int64_t j = n0; j < n1; j += 4) {
    const int nj = n1 - j < 4 ? static_cast<int>(n1 - j) : 4;
    const int8_t* b[4];
    for (int q = 0; q < 4; ++q) b[q] = a.CB + (j + (q < nj ? q : 0)) * a.k;  // a short tile repeats row j
    float sums[R][4];
    tile<R>(a.A + r0 * a.k, a.k, b, sums);
    for (int q = 0; q < nj; ++q) {
      const float sc = a.scale[j + q];
      const float bj = bias ? BE::load(bias[j + q]) : 0.0f;
      for (int r = 0; r < R; ++r) out[(r0 + r) * a.n + j + q] = O::store(sums[r][q] * sc + bj);
    }
  }
}

template <typename O, typename BE>
void weight_matmul_ob(const WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  int64_t r = 0;
  for (; r + 4 <= a.m; r += 4) rows_block<O, BE, 4>(a, r, n0, n1);
  switch (a.m - r) {
    case 3:
      rows_block<O, BE, 3>(a, r, n0, n1);
      break;
    case 2:
      rows_block<O, BE, 2>(a, r, n0, n1);
      break;
    case 1:
      rows_block<O, BE, 1>(a, r, n0, n1);
      break;
    default:
      break;
  }
}

}  // namespace

void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  dispatch_float(a.out_dtype, [&](auto o) {
    dispatch_float(a.bias ? a.bias_dtype : a.out_dtype,
                   [&](auto be) { weight_matmul_ob<decltype(o), decltype(be)>(a, n0, n1); });
  });
}

}  // namespace avx512
}  // namespace bnb_cpu
