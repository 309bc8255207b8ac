// The AVX-512 table's 4-bit GEMV kernels (block size 64, k a multiple of 128): the weight streamed
// one row at a time, its 128 weights a step looked up with vpermw, then vpdpwssd (one to eight
// bf16 rows in 16-bit fixed point), vdpbf16ps (one or two bf16 rows the fixed point cannot hold)
// or FMA (one or two f32 or f16 rows).
// Included by kernels_avx512.cpp only (compiled with the AVX-512 flags).
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "bnb/numeric.h"
#include "element.h"
#include "fixed16.h"
#include "kernels.h"
#include "simd_avx512.h"

namespace bnb_cpu {
namespace avx512 {
namespace {

// bf16 activations, one or two rows, block size 64, k a multiple of 128: gemv_bf16_row below,
// whose prepared A holds, per 128 columns, the 32 values of each residue mod 4 in turn.
bool gemv_bf16_b64(const Gemm4bitArgs& a) {
  return a.dtype == BNB_DTYPE_BF16 && a.m <= 2 && a.blocksize == 64 && a.k % 128 == 0;
}

// f32 or f16 activations, one or two rows, block size 64, k a multiple of 128: gemv_f32_row, whose
// prepared A (f32) holds, per 128 columns, for q = 0..7 the 16 values at 8m + (q ^ 1), m = 0..15.
bool gemv_f32_b64(const Gemm4bitArgs& a) {
  return a.dtype != BNB_DTYPE_BF16 && a.m <= 2 && a.blocksize == 64 && a.k % 128 == 0;
}

// One to kFixedRows bf16 rows at block size 64 (k a multiple of 128) with a code book within
// [-1, 1]: the fixed-point kernel (gemv_fixed16_row) where A's groups allow it. On Intel's AMX
// Xeons vdpbf16ps issues as several operations on the two vector ports (8 independent chains:
// 0.54 ns an instruction, vpdpwssd 0.18, vfmadd 0.16; bench/RESULTS.md), so the bf16 dot products
// were the kernel's bound; vpdpwssd on 16-bit integers does the same 32 products in one.
constexpr int64_t kFixedRows = 8;
bool gemv_fixed16(const Gemm4bitArgs& a) {
  return a.dtype == BNB_DTYPE_BF16 && a.m >= 1 && a.m <= kFixedRows && a.blocksize == 64 && a.k % 128 == 0 &&
         fixed16::code_fits(a.code);
}

// 128 columns of one bf16 row in the fixed-point format (fixed16.h), with each group's scale S,
// in gemv_bf16_row's order: Q[32q + i] = column 4i + q. False where a group holds inf or NaN
// or its largest |value| is under 2^-96: then the whole call takes the other kernels (the bf16
// GEMV for one or two rows, the tiles for more).
bool fixed16_prepare128(const uint16_t* A, int16_t* Q, float* S) {
  __m512i col[4];  // the 128 columns' integers in column order, 32 a register
  for (int h = 0; h < 2; ++h) {
    const __m512i v0 = _mm512_loadu_si512(A + 64 * h), v1 = _mm512_loadu_si512(A + 64 * h + 32);
    const __m512i mag = _mm512_max_epu16(_mm512_and_si512(v0, _mm512_set1_epi16(0x7fff)),
                                         _mm512_and_si512(v1, _mm512_set1_epi16(0x7fff)));
    const uint32_t top = _mm512_reduce_max_epu32(
        _mm512_max_epu32(_mm512_and_si512(mag, _mm512_set1_epi32(0xffff)), _mm512_srli_epi32(mag, 16)));
    const int e = static_cast<int>(top >> 7) - 127;
    if (top == 0) {
      S[h] = 0.0f;
    } else if (top >= 0x7f80u || e < fixed16::kMinExponent) {
      return false;
    } else {
      S[h] = bnb::bits_float(fixed16::group_scale_bits(e));
    }
    const __m512 scale = _mm512_castsi512_ps(_mm512_set1_epi32(top == 0 ? 127 << 23 : fixed16::a_scale_bits(e)));
    for (int r = 0; r < 2; ++r) {
      const __m512i v = r == 0 ? v0 : v1;
      __m256i half[2];
      for (int t = 0; t < 2; ++t) {
        const __m256i b = t == 0 ? _mm512_castsi512_si256(v) : _mm512_extracti64x4_epi64(v, 1);
        const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
        half[t] = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(f, scale)));  // exact product
      }
      col[2 * h + r] = _mm512_inserti64x4(_mm512_castsi256_si512(half[0]), half[1], 1);
    }
  }
  // Lane i < 16 takes column 4i + q of the first 64, lane i >= 16 column 4(i - 16) + q of the rest.
  alignas(64) static constexpr uint16_t kColumn0[32] = {0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,
                                                        0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60};
  const __m512i column0 = _mm512_load_si512(kColumn0);
  for (int q = 0; q < 4; ++q) {
    const __m512i idx = _mm512_add_epi16(column0, _mm512_set1_epi16(static_cast<short>(q)));
    const __m512i lo = _mm512_permutex2var_epi16(col[0], idx, col[1]);
    const __m512i hi = _mm512_permutex2var_epi16(col[2], idx, col[3]);
    _mm512_storeu_si512(Q + 32 * q, _mm512_mask_blend_epi16(0xffff0000u, lo, hi));
  }
  return true;
}

template <typename E>
void store_out(const Gemm4bitArgs& a, int64_t r, int64_t j, float v) {
  using T = typename E::type;
  if (a.bias) v += E::load(static_cast<const T*>(a.bias)[j]);
  static_cast<T*>(a.out)[r * a.n + j] = E::store(v);
}

// Weight row j streamed against MT rows of A, block size 64, k a multiple of 128: per
// 128 weights (64 packed bytes, two blocks) `part(x, i, parts)` gives each row's partial dot
// product of those weights, lanes 0-7 from the first block and lanes 8-15 from the second, so the
// partial sums are scaled by both absmax values with one vector (with kGroupScale, times row r's
// scales of those two groups, gs[r * k / 64 + group]); sums[r] = the row's dot product.
// The weight row is one sequential stream; two accumulators alternate so that no step waits for
// the previous one's FMA.
template <int MT, bool kGroupScale = false, typename Part>
inline void gemv_row_b64(const Gemm4bitArgs& a, int64_t j, Part part, float (&sums)[MT], const float* gs = nullptr) {
  const int64_t k = a.k;
  const __m512i sel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const uint8_t* w = a.B + j * k / 2;
  const float* am = a.absmax + j * k / 64;
  // Software prefetch 16 KiB ahead in the weight (and its absmax), as long as that is inside it:
  // with the weight coming from DRAM the hardware prefetchers alone leave the kernel waiting
  // (4096x4096 bf16 on one Zen 4 core: 0.38 -> 0.27 ms, a plain sequential read of the same bytes
  // takes 0.25 ms; in cache 0.20 ms either way). The weight's prefetches go to L2 (prefetcht2):
  // they hold no L1 miss buffer, so more lines are in flight (2 threads, weight evicted before each
  // call: 0.63-0.83 -> 0.53-0.58 ms against int4pack's 0.49-0.59 ms in the same runs).
  constexpr int64_t kAhead = 16384;
  const int64_t ahead_end = (a.n - j) * k / 2 - kAhead;  // prefetch while i / 2 is below this
  __m512 acc[2][MT];
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < MT; ++r) acc[c][r] = _mm512_setzero_ps();
  auto step = [&](int64_t i, __m512(&acc_c)[MT]) BNB_INLINE_LAMBDA {
    if (i / 2 < ahead_end) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i / 2 + kAhead), _MM_HINT_T2);
      if (i % 1024 == 0) _mm_prefetch(reinterpret_cast<const char*>(am + (i + 2 * kAhead) / 64), _MM_HINT_T0);
    }
    __m512 parts[MT];
    part(_mm512_loadu_si512(w + i / 2), i, parts);
    const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(am + i / 64)));
    const __m512 scale = _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(pair));
    for (int r = 0; r < MT; ++r) {
      __m512 p = parts[r];
      if (kGroupScale) {
        // The partial sums times the groups' powers of two first (exact: S >= 2^-123 and a
        // nonzero sum >= 1), then the absmax: S * absmax as one product could fall below the
        // normal range, and lose bits, where the output itself is an ordinary number.
        const __m128 s = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(gs + r * k / 64 + i / 64)));
        p = _mm512_mul_ps(p, _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(s)));
      }
      acc_c[r] = _mm512_fmadd_ps(p, scale, acc_c[r]);
    }
  };
  int64_t i = 0;
  for (; i + 256 <= k; i += 256) {
    step(i, acc[0]);
    step(i + 128, acc[1]);
  }
  if (i < k) step(i, acc[0]);
  for (int r = 0; r < MT; ++r) sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]));
}

// The 128 weights of 64 packed bytes from a 16-bit table holding the code book in both halves:
// w[q] lane m = weight 4m + q. The 16-bit word m of the bytes holds the nibbles of weights
// 4m .. 4m + 3 at bits 4, 0, 12 and 8; vpermw reads only an index's low 5 bits, so shifting the
// words is all the unpacking the four lookups need.
inline void lookup128(const __m512i x, const __m512i tab, __m512i (&w)[4]) {
  w[0] = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 4), tab);
  w[1] = _mm512_permutexvar_epi16(x, tab);
  w[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 12), tab);
  w[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 8), tab);
}

// One weight row against MT (1 or 2) bf16 rows, block size 64 (gemv_bf16_b64): per 128 weights,
// lookup128 in the bf16 code book and four vdpbf16ps a row.
template <int MT>
void gemv_bf16_row(const Gemm4bitArgs& a, const uint16_t* P, int64_t j, const __m512 code) {
  const __m512i half = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(code));
  const __m512i tab = _mm512_inserti64x4(half, _mm512_castsi512_si256(half), 1);
  float sums[MT];
  gemv_row_b64<MT>(
      a, j,
      [&](const __m512i x, int64_t i, __m512(&parts)[MT]) BNB_INLINE_LAMBDA {
        __m512i w[4];
        lookup128(x, tab, w);
        for (int r = 0; r < MT; ++r) {
          const uint16_t* p = P + r * a.k + i;
          __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_loadu_si512(p), (__m512bh)w[0]);
          d = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 32), (__m512bh)w[1]);
          d = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 64), (__m512bh)w[2]);
          parts[r] = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 96), (__m512bh)w[3]);
        }
      },
      sums);
  for (int r = 0; r < MT; ++r) store_out<Element<BNB_DTYPE_BF16>>(a, r, j, sums[r]);
}

// One weight row against MT bf16 rows in 16-bit fixed point (gemv_fixed16; A prepared by
// fixed16_prepare128, row after row, its group scales S): the lookups of gemv_bf16_row into the
// code book as 16-bit integers (entry * 2^13), shared by the rows, vpdpwssd, whose 32-bit sums are
// exact (a lane sums 8 products under 2^28 each), then one conversion and, per step, the two
// groups' S * absmax.
template <int MT>
void gemv_fixed16_row(const Gemm4bitArgs& a, const int16_t* Q, const float* S, int64_t r0, int64_t j,
                      const __m512i tab) {
  float sums[MT];
  gemv_row_b64<MT, true>(
      a, j,
      [&](const __m512i x, int64_t i, __m512(&parts)[MT]) BNB_INLINE_LAMBDA {
        __m512i w[4];
        lookup128(x, tab, w);
        for (int r = 0; r < MT; ++r) {
          const int16_t* q = Q + (r0 + r) * a.k + i;
          __m512i d = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(q), w[0]);
          d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 32), w[1]);
          d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 64), w[2]);
          parts[r] = _mm512_cvtepi32_ps(_mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 96), w[3]));
        }
      },
      sums, S + r0 * a.k / 64);
  for (int r = 0; r < MT; ++r) store_out<Element<BNB_DTYPE_BF16>>(a, r0 + r, j, sums[r]);
}

// One weight row against MT (1 or 2) f32 rows (f32 or f16 activations), block size 64
// (gemv_f32_b64). Per 128 weights: dword m of the 64 bytes holds the nibbles of weights
// 8m .. 8m + 7, weight 8m + (q ^ 1) at bits 4q .. 4q + 3, and vpermps reads only an index's low 4
// bits, so seven shifts are all the unpacking its eight lookups need. The weight is code * absmax
// unrounded (the f16 reference rounds it to f16 first, a difference well inside the sum's
// tolerance); two partial sums per step keep the FMA chains short. 4096x4096 on 2 threads from
// DRAM: f32 0.95 -> 0.55 ms, f16 0.90 -> 0.57 ms (gemm_f32_tile reads four weight rows at once,
// without prefetch).
template <int MT>
void gemv_f32_row(const Gemm4bitArgs& a, const float* P, int64_t j, const __m512 code) {
  float sums[MT];
  gemv_row_b64<MT>(
      a, j,
      [&](const __m512i x, int64_t i, __m512(&parts)[MT]) BNB_INLINE_LAMBDA {
        __m512 wq[8];
        wq[0] = _mm512_permutexvar_ps(x, code);
        for (int q = 1; q < 8; ++q) wq[q] = _mm512_permutexvar_ps(_mm512_srli_epi32(x, 4 * q), code);
        for (int r = 0; r < MT; ++r) {
          const float* p = P + r * a.k + i;
          __m512 e = _mm512_mul_ps(_mm512_loadu_ps(p), wq[0]);
          __m512 o = _mm512_mul_ps(_mm512_loadu_ps(p + 16), wq[1]);
          for (int q = 2; q < 8; q += 2) {
            e = _mm512_fmadd_ps(_mm512_loadu_ps(p + 16 * q), wq[q], e);
            o = _mm512_fmadd_ps(_mm512_loadu_ps(p + 16 * q + 16), wq[q + 1], o);
          }
          parts[r] = _mm512_add_ps(e, o);
        }
      },
      sums);
  for (int r = 0; r < MT; ++r) {
    if (a.dtype == BNB_DTYPE_F16) {
      store_out<Element<BNB_DTYPE_F16>>(a, r, j, sums[r]);
    } else {
      store_out<Element<BNB_DTYPE_F32>>(a, r, j, sums[r]);
    }
  }
}

}  // namespace
}  // namespace avx512
}  // namespace bnb_cpu
