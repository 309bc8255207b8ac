// Matmuls against a weight kept quantized, written once over a
// SIMD traits type S and compiled per instruction set (kernels_avx2_wmm.cpp, kernels_avx512_wmm.cpp;
// include from those files only, inside their namespace):
//   forward          out[r, j] = sum_i A[r, i] * CB[j, i] * scale[j] (+ bias[j])   (int8, LLM.int8())
//   input gradient   acc[r, i] = sum_j A[r, j] * W[j, i]   (partial sums over rows j; W int8 rows
//                    CB[j, :] * scale[j] for LLM.int8(), or packed 4-bit for QLoRA)
// A is f32. S provides: V (vector of S::kWidth f32), kRows (rows of A per register tile), zero,
// load (f32), load_i8 (kWidth int8 -> f32), fma(a, b, c) = a * b + c, mul, set1, store, sum
// (horizontal), and for 4-bit weights Table4 / table4(16 floats) / load_4bit(kWidth / 2 packed
// bytes, high nibble first, as table entries).
// Sums are f32 in another order than the portable kernels': results agree within rounding.
#pragma once

#include <stdint.h>

#include "bnb/codebooks.h"
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

// acc[r, c0 + i] += sum over q < 4 of factors[r * 4 + q] * W_q[i] for i in [0, len): the four
// weight rows' slices (w(q, i): S::kWidth values from column c0 + i; at(q, i): one) are loaded once
// and added to every row of A's sums, which stay in L1/L2.
template <class S, class Slice, class At>
inline void wmm_add_span(const bnb_cpu::WeightMatmulArgs& a, int64_t c0, int64_t len, float* acc, const float* factors,
                         Slice w_slice, At w_at) {
  int64_t i = 0;
  for (; i + S::kWidth <= len; i += S::kWidth) {
    typename S::V w[4];
    for (int q = 0; q < 4; ++q) w[q] = w_slice(q, i);
    for (int64_t r = 0; r < a.m; ++r) {
      float* dst = acc + r * a.ldacc + c0 + i;
      const float* f = factors + r * 4;
      typename S::V v = S::load(dst);
      for (int q = 0; q < 4; ++q) v = S::fma(S::set1(f[q]), w[q], v);
      S::store(dst, v);
    }
  }
  for (; i < len; ++i)
    for (int64_t r = 0; r < a.m; ++r)
      for (int q = 0; q < 4; ++q) acc[r * a.ldacc + c0 + i] += factors[r * 4 + q] * w_at(q, i);
}

// Columns of 4-bit weight rows decoded at a time (4 rows x 512 f32: 8 KiB of L1).
constexpr int64_t kWmmSpan = 512;

// acc[r, :] += sum over weight rows j..j+3 of A[r, j + q] * W[j + q, :] (count rows: 1 to 4; the
// others add nothing: int8 repeats row j with a factor of 0, 4-bit adds zeros). int8 rows are converted in registers
// (scale[j + q] folded into A's factor); 4-bit rows are decoded span by span into w (4 x kWmmSpan floats) by `row` (the
// portable kernels' row expansion, through the ISA's dequantization: the exact values dequantize_4bit gives).
template <class S, class Row>
inline void wmm_add_rows(const bnb_cpu::WeightMatmulArgs& a, int64_t j, int count, float* acc, float* factors, float* w,
                         const float* code16, Row row) {
  for (int64_t r = 0; r < a.m; ++r)
    for (int q = 0; q < 4; ++q)
      factors[r * 4 + q] = q < count ? a.A[r * a.n + j + q] * (a.CB ? a.scale[j + q] : 1.0f) : 0.0f;
  if (a.CB) {
    const int8_t* b[4];
    for (int q = 0; q < 4; ++q) b[q] = a.CB + (j + (q < count ? q : 0)) * a.k;
    wmm_add_span<S>(
        a, 0, a.k, acc, factors, [&](int q, int64_t i) { return S::load_i8(b[q] + i); },
        [&](int q, int64_t i) { return static_cast<float>(b[q][i]); });
    return;
  }
  const int64_t bs = a.blocksize;
  if (count == 4 && a.k % bs == 0 && bs % S::kWidth == 0 && (bs & (bs - 1)) == 0) {
    // Rows of whole blocks (a power of two, of whole vectors): decoded in registers, code times
    // the block's absmax as dequantize_4bit computes it, without the detour through w.
    const int shift = __builtin_ctzll(static_cast<unsigned long long>(bs));
    const typename S::Table4 t = S::table4(code16);
    const uint8_t* b[4];
    const float* am[4];
    for (int q = 0; q < 4; ++q) {
      b[q] = a.B4 + (j + q) * a.k / 2;
      am[q] = a.absmax + (j + q) * a.k / bs;
    }
    wmm_add_span<S>(
        a, 0, a.k, acc, factors,
        [&](int q, int64_t i) { return S::mul(S::load_4bit(b[q] + i / 2, t), S::set1(am[q][i >> shift])); },
        [&](int q, int64_t i) { return code16[(b[q][i / 2] >> ((i & 1) ? 0 : 4)) & 15] * am[q][i >> shift]; });
    return;
  }
  for (int64_t c0 = 0; c0 < a.k; c0 += kWmmSpan) {
    const int64_t len = a.k - c0 < kWmmSpan ? a.k - c0 : kWmmSpan;
    for (int q = 0; q < 4; ++q) {
      if (q < count) {
        row(a, j + q, c0, c0 + len, w + q * kWmmSpan);
      } else {  // zeros, not a repeated row: 0 times an infinite weight would make a NaN
        for (int64_t i = 0; i < len; ++i) w[q * kWmmSpan + i] = 0.0f;
      }
    }
    wmm_add_span<S>(
        a, c0, len, acc, factors, [&](int q, int64_t i) { return S::load(w + q * kWmmSpan + i); },
        [&](int q, int64_t i) { return w[q * kWmmSpan + i]; });
  }
}

// Partial sums over weight rows [j0, j1) for up to kWmmMaxRows rows of A (their sums stay in
// L1/L2); returns false (nothing done) otherwise, for the caller's portable kernel. `row(a, j, c0,
// c1, dst)` writes columns [c0, c1) of 4-bit weight row j as floats.
constexpr int64_t kWmmMaxRows = 16;

template <class S, class Row>
bool wmm_transposed(const bnb_cpu::WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1, Row row) {
  if (a.m > kWmmMaxRows) return false;
  for (int64_t r = 0; r < a.m; ++r)
    for (int64_t i = 0; i < a.k; ++i) acc[r * a.ldacc + i] = 0.0f;
  float factors[kWmmMaxRows * 4];
  alignas(64) float w[4 * kWmmSpan];
  alignas(64) float code16[16];  // the 4-bit code book
  for (int c = 0; c < 16; ++c) code16[c] = bnb::decode_4bit(a.nf4, static_cast<uint32_t>(c));
  for (int64_t j = j0; j < j1; j += 4)
    wmm_add_rows<S>(a, j, j1 - j < 4 ? static_cast<int>(j1 - j) : 4, acc, factors, w, code16, row);
  return true;
}
