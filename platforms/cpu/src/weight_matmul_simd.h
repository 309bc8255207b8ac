// Matmuls against an int8 weight kept quantized (LLM.int8()'s training path), written once over a
// SIMD traits type S and compiled per instruction set (kernels_avx2_wmm.cpp, kernels_avx512_wmm.cpp;
// include from those files only, inside their namespace):
//   forward          out[r, j] = sum_i A[r, i] * CB[j, i] * scale[j] (+ bias[j])
//   input gradient   acc[r, i] = sum_j A[r, j] * CB[j, i] * scale[j]   (partial sums over rows j)
// A is f32. S provides: V (vector of S::kWidth f32), kRows (rows of A per register tile), zero,
// load (f32), load_i8 (kWidth int8 -> f32), fma(a, b, c) = a * b + c, set1, store, sum (horizontal).
// Sums are f32 in another order than the portable kernels': results agree within rounding.
#pragma once

#include <stdint.h>

#include "element.h"
#include "kernels.h"

// Sums of R rows of A (stride k) against 4 weight rows b[q] (stride k): each slice of A is loaded
// once for the 4 weight rows, each slice of the weight (converted in registers) once for R rows.
template <class S, int R>
inline void wmm_tile(const float* A, int64_t k, const int8_t* const b[4], float sums[R][4]) {
  typename S::V acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = S::zero();
  int64_t i = 0;
  for (; i + S::kWidth <= k; i += S::kWidth) {
    typename S::V w[4];
    for (int q = 0; q < 4; ++q) w[q] = S::load_i8(b[q] + i);
    for (int r = 0; r < R; ++r) {
      const typename S::V x = S::load(A + r * k + i);
      for (int q = 0; q < 4; ++q) acc[r][q] = S::fma(x, w[q], acc[r][q]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < 4; ++q) {
      float s = S::sum(acc[r][q]);
      for (int64_t t = i; t < k; ++t) s += A[r * k + t] * static_cast<float>(b[q][t]);
      sums[r][q] = s;
    }
  }
}

template <class S, typename O, typename BE, int R>
void wmm_rows(const bnb_cpu::WeightMatmulArgs& a, int64_t r0, int64_t n0, int64_t n1) {
  const auto* bias = static_cast<const typename BE::type*>(a.bias);
  auto* out = static_cast<typename O::type*>(a.out);
  for (int64_t j = n0; j < n1; j += 4) {
    const int nj = n1 - j < 4 ? static_cast<int>(n1 - j) : 4;
    const int8_t* b[4];
    for (int q = 0; q < 4; ++q) b[q] = a.CB + (j + (q < nj ? q : 0)) * a.k;  // a short tile repeats row j
    float sums[R][4];
    wmm_tile<S, R>(a.A + r0 * a.k, a.k, b, sums);
    for (int q = 0; q < nj; ++q) {
      const float sc = a.scale[j + q];
      const float bj = bias ? BE::load(bias[j + q]) : 0.0f;
      for (int r = 0; r < R; ++r) out[(r0 + r) * a.n + j + q] = O::store(sums[r][q] * sc + bj);
    }
  }
}

// Rows of A in tiles of S::kRows, the remainder one row at a time.
template <class S, typename O, typename BE>
void wmm_forward_ob(const bnb_cpu::WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  int64_t r = 0;
  for (; r + S::kRows <= a.m; r += S::kRows) wmm_rows<S, O, BE, S::kRows>(a, r, n0, n1);
  for (; r < a.m; ++r) wmm_rows<S, O, BE, 1>(a, r, n0, n1);
}

template <class S>
void wmm_forward(const bnb_cpu::WeightMatmulArgs& a, int64_t n0, int64_t n1) {
  bnb_cpu::dispatch_float(a.out_dtype, [&](auto o) {
    bnb_cpu::dispatch_float(a.bias ? a.bias_dtype : a.out_dtype,
                            [&](auto be) { wmm_forward_ob<S, decltype(o), decltype(be)>(a, n0, n1); });
  });
}

// acc[r, :] += sum over weight rows j..j+3 of A[r, j + q] * scale[j + q] * CB[j + q, :] (count
// rows: 1 to 4): each slice of the rows is converted once and added to every row of A's sums.
template <class S>
inline void wmm_add_rows(const bnb_cpu::WeightMatmulArgs& a, int64_t j, int count, float* acc, float* factors) {
  const int8_t* b[4];
  for (int q = 0; q < 4; ++q) b[q] = a.CB + (j + (q < count ? q : 0)) * a.k;
  for (int64_t r = 0; r < a.m; ++r)
    for (int q = 0; q < 4; ++q) factors[r * 4 + q] = q < count ? a.A[r * a.n + j + q] * a.scale[j + q] : 0.0f;
  int64_t i = 0;
  for (; i + S::kWidth <= a.k; i += S::kWidth) {
    typename S::V w[4];
    for (int q = 0; q < 4; ++q) w[q] = S::load_i8(b[q] + i);
    for (int64_t r = 0; r < a.m; ++r) {
      float* dst = acc + r * a.ldacc + i;
      const float* f = factors + r * 4;
      typename S::V v = S::load(dst);
      for (int q = 0; q < 4; ++q) v = S::fma(S::set1(f[q]), w[q], v);
      S::store(dst, v);
    }
  }
  for (; i < a.k; ++i)
    for (int64_t r = 0; r < a.m; ++r)
      for (int q = 0; q < 4; ++q) acc[r * a.ldacc + i] += factors[r * 4 + q] * static_cast<float>(b[q][i]);
}

// Partial sums over weight rows [j0, j1) for up to kMaxRows rows of A (their sums stay in L1/L2);
// returns false (nothing done) otherwise, for the caller's portable kernel.
constexpr int64_t kWmmMaxRows = 16;

template <class S>
bool wmm_transposed(const bnb_cpu::WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1) {
  if (!a.CB || a.m > kWmmMaxRows) return false;
  for (int64_t r = 0; r < a.m; ++r)
    for (int64_t i = 0; i < a.k; ++i) acc[r * a.ldacc + i] = 0.0f;
  float factors[kWmmMaxRows * 4];
  for (int64_t j = j0; j < j1; j += 4) wmm_add_rows<S>(a, j, j1 - j < 4 ? static_cast<int>(j1 - j) : 4, acc, factors);
  return true;
}
