// AVX-512 matmuls against an int8 weight kept quantized (LLM.int8()'s training path): the forward
// out[r, j] = sum_i A[r, i] * CB[j, i] * scale[j] (+ bias[j]) and the input gradient's partial
// sums acc[r, i] = sum_j A[r, j] * CB[j, i] * scale[j], A in f32.
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

void gen_weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);  // kernels_generic.inc

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

// acc[r, :] += sum over 4 weight rows q of A[r, j + q] * scale[j + q] * CB[j + q, :]: every
// 16-column slice of the 4 rows is converted once and added to each row of A's partial sums (the
// factors are broadcast from memory by the FMAs).
void add_rows4(const WeightMatmulArgs& a, int64_t j, float* acc, float* factors) {
  const int8_t* b[4];
  for (int q = 0; q < 4; ++q) b[q] = a.CB + (j + q) * a.k;
  for (int64_t r = 0; r < a.m; ++r)
    for (int q = 0; q < 4; ++q) factors[r * 4 + q] = a.A[r * a.n + j + q] * a.scale[j + q];
  for (int64_t i = 0; i < a.k; i += 16) {
    const __mmask16 mask =
        a.k - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (a.k - i)) - 1);
    __m512 w[4];
    for (int q = 0; q < 4; ++q) w[q] = weight16(b[q] + i, mask);
    for (int64_t r = 0; r < a.m; ++r) {
      float* dst = acc + r * a.k + i;
      const float* f = factors + r * 4;
      __m512 v = _mm512_maskz_loadu_ps(mask, dst);
      for (int q = 0; q < 4; ++q) v = _mm512_fmadd_ps(_mm512_set1_ps(f[q]), w[q], v);
      _mm512_mask_storeu_ps(dst, mask, v);
    }
  }
}

}  // namespace

// Partial sums over weight rows [j0, j1) (kernels.h); int8 weights with up to kMaxRows rows of A
// here (their partial sums stay in L1/L2), the rest through the portable kernel.
constexpr int64_t kMaxRows = 16;

void weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1) {
  if (!a.CB || a.m > kMaxRows) return gen_weight_matmul_t(a, acc, j0, j1);
  for (int64_t t = 0; t < a.m * a.k; ++t) acc[t] = 0.0f;
  float factors[kMaxRows * 4];
  int64_t j = j0;
  for (; j + 4 <= j1; j += 4) add_rows4(a, j, acc, factors);
  if (j < j1) {
    // The last rows through the portable kernel into a second buffer would need scratch: add them
    // one by one instead (each row's contribution, columns in order).
    for (; j < j1; ++j) {
      const int8_t* b = a.CB + j * a.k;
      for (int64_t r = 0; r < a.m; ++r) {
        const float s = a.A[r * a.n + j] * a.scale[j];
        float* dst = acc + r * a.k;
        for (int64_t i = 0; i < a.k; ++i) dst[i] += s * static_cast<float>(b[i]);
      }
    }
  }
}

void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  dispatch_float(a.out_dtype, [&](auto o) {
    dispatch_float(a.bias ? a.bias_dtype : a.out_dtype,
                   [&](auto be) { weight_matmul_ob<decltype(o), decltype(be)>(a, n0, n1); });
  });
}

}  // namespace avx512
}  // namespace bnb_cpu
