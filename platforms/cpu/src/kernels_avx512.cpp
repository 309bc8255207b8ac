// AVX-512 kernels (F, BW, VL, DQ, BF16, VNNI, VBMI): this file is compiled with those -m flags only.
// The portable kernels are compiled here too (auto-vectorized for AVX-512); the 4-bit matmul below
// is written with intrinsics, as are the quantizers (kernels_avx512_quant.cpp), the optimizers
// (kernels_avx512_optim.cpp) and the weight-only int8 matmul (kernels_avx512_wmm.cpp).
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "gemv_avx512.h"
#include "kernels.h"
#include "kernels_avx2.h"
#include "optimizer_dispatch.h"
#include "simd_avx512.h"

namespace bnb_cpu {
namespace avx512 {

#include "kernels_generic.inc"

// ---- 4-bit matmul ------------------------------------------------------------------------------
// Fast path: k a multiple of 64 and of the block size, block size >= 64. A is re-laid out once per
// call ("prepared"): per 64 columns, the 32 even-indexed then the 32 odd-indexed values, so that
// the high nibbles (even elements) and low nibbles (odd elements) of 32 packed bytes meet their
// activations without any shuffle. bf16 A stays bf16 and runs on vdpbf16ps with the weight
// rounded to bf16 exactly as the reference rounds it; f16/f32 A run in f32 FMA with the weight
// rounded to A's dtype. One or two rows at block size 64 (k a multiple of 128) take the gemv
// kernels of gemv_avx512.h instead, with layouts of their own (gemv_bf16_b64, gemv_f32_b64): the
// code book's values times each block's partial sum, the weight unrounded; one to eight bf16 rows
// run there in 16-bit fixed point (gemv_fixed16) where A allows it. The prepared buffer starts
// with a header naming its layout.

namespace {

bool gemm_fast(const Gemm4bitArgs& a) { return a.k % 64 == 0 && a.blocksize >= 64 && a.k % a.blocksize == 0; }

// The layouts the prepared buffer's header names (kernels.h: kPreparedHeader).
enum PreparedLayout : int32_t { kPlain = 1, kFixed16 = 2 };

}  // namespace

int64_t gemm_4bit_prepare_bytes(const Gemm4bitArgs& a) {
  if (!gemm_fast(a)) return 0;
  const int64_t plain = a.m * a.k * (a.dtype == BNB_DTYPE_BF16 ? 2 : 4);
  const int64_t fixed = gemv_fixed16(a) ? a.m * (a.k * 2 + a.k / 64 * 4) : 0;
  return kPreparedHeader + (plain > fixed ? plain : fixed);
}

void gemm_4bit_prepare(const Gemm4bitArgs& a, void* scratch) {
  if (!gemm_fast(a)) return;
  *static_cast<int32_t*>(scratch) = kPlain;
  if (gemv_fixed16(a)) {
    const uint16_t* A = static_cast<const uint16_t*>(a.A);
    int16_t* Q = reinterpret_cast<int16_t*>(static_cast<char*>(scratch) + kPreparedHeader);
    float* S = reinterpret_cast<float*>(static_cast<char*>(scratch) + kPreparedHeader + a.m * a.k * 2);
    bool ok = true;
    for (int64_t g = 0; ok && g < a.m * a.k; g += 128) ok = fixed16_prepare128(A + g, Q + g, S + g / 64);
    if (ok) {
      *static_cast<int32_t*>(scratch) = kFixed16;
      return;
    }
  }
  scratch = static_cast<char*>(scratch) + kPreparedHeader;
  const int64_t total = a.m * a.k;
  if (gemv_bf16_b64(a)) {
    const uint16_t* A = static_cast<const uint16_t*>(a.A);
    uint16_t* P = static_cast<uint16_t*>(scratch);
    for (int64_t g = 0; g < total; g += 128) {
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 32; ++i) P[g + 32 * q + i] = A[g + 4 * i + q];
    }
  } else if (gemv_f32_b64(a)) {
    float* P = static_cast<float*>(scratch);
    dispatch_float(a.dtype, [&](auto e) {
      using E = decltype(e);
      const typename E::type* A = static_cast<const typename E::type*>(a.A);
      for (int64_t g = 0; g < total; g += 128) {
        for (int q = 0; q < 8; ++q)
          for (int m = 0; m < 16; ++m) P[g + 16 * q + m] = E::load(A[g + 8 * m + (q ^ 1)]);
      }
    });
  } else if (a.dtype == BNB_DTYPE_BF16) {
    const uint16_t* A = static_cast<const uint16_t*>(a.A);
    uint16_t* P = static_cast<uint16_t*>(scratch);
    for (int64_t g = 0; g < total; g += 64) {
      for (int i = 0; i < 32; ++i) {
        P[g + i] = A[g + 2 * i];
        P[g + 32 + i] = A[g + 2 * i + 1];
      }
    }
  } else {
    float* P = static_cast<float*>(scratch);
    dispatch_float(a.dtype, [&](auto e) {
      using E = decltype(e);
      const typename E::type* A = static_cast<const typename E::type*>(a.A);
      for (int64_t g = 0; g < total; g += 64) {
        for (int i = 0; i < 32; ++i) {
          P[g + i] = E::load(A[g + 2 * i]);
          P[g + 32 + i] = E::load(A[g + 2 * i + 1]);
        }
      }
    });
  }
}

namespace {

// MT activation rows x NT weight rows; bf16 path. For one or two rows with block size 64 (one
// block per 64-column group) the weight is looked up in the bf16-rounded code book and each block's
// partial dot product is scaled by its absmax in f32: no per-block table, which would cost as much
// as the dot product itself. Otherwise each block's table is rounded to bf16 exactly as the
// reference rounds the weight, and amortized over the rows.
template <int MT, int NT>
void gemm_bf16_tile(const Gemm4bitArgs& a, const uint16_t* P, int64_t r0, int64_t j0, const __m512 code) {
  const int64_t k = a.k;
  // A single weight row (NT == 1) alternates two accumulators: one would make every step wait
  // for the previous step's FMA.
  constexpr int ACC = NT == 1 && MT <= 2 ? 2 : 1;
  __m512 acc[ACC][MT][NT];
  for (int c = 0; c < ACC; ++c)
    for (int r = 0; r < MT; ++r)
      for (int t = 0; t < NT; ++t) acc[c][r][t] = _mm512_setzero_ps();
  const bool post_scale = a.blocksize == 64 && MT <= 2;
  const __m512i code_bf16 = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(code));
  __m512i tab[NT];
  for (int t = 0; t < NT; ++t) tab[t] = code_bf16;
  auto step = [&](int64_t i, __m512(&acc_c)[MT][NT]) BNB_INLINE_LAMBDA {
    if (!post_scale && i % a.blocksize == 0) {
      for (int t = 0; t < NT; ++t) {
        // vcvtneps2bf16 rounds to nearest even like the reference (only a NaN's payload differs).
        const __m512 s = _mm512_mul_ps(code, _mm512_set1_ps(a.absmax[((j0 + t) * k + i) / a.blocksize]));
        tab[t] = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(s));
      }
    }
    __m512i we[NT], wo[NT];
    __m512 scale[NT];
    for (int t = 0; t < NT; ++t) {
      if (post_scale) scale[t] = _mm512_set1_ps(a.absmax[((j0 + t) * k + i) / 64]);
      const __m512i w =
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.B + ((j0 + t) * k + i) / 2)));
      we[t] = _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), tab[t]);
      wo[t] = _mm512_permutexvar_epi16(_mm512_and_si512(w, _mm512_set1_epi16(15)), tab[t]);
    }
    for (int r = 0; r < MT; ++r) {
      const uint16_t* p = P + (r0 + r) * k + i;
      const __m512bh ae = (__m512bh)_mm512_loadu_si512(p);
      const __m512bh ao = (__m512bh)_mm512_loadu_si512(p + 32);
      for (int t = 0; t < NT; ++t) {
        if (post_scale) {
          const __m512 part =
              _mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), ae, (__m512bh)we[t]), ao, (__m512bh)wo[t]);
          acc_c[r][t] = _mm512_fmadd_ps(part, scale[t], acc_c[r][t]);
        } else {
          acc_c[r][t] = _mm512_dpbf16_ps(acc_c[r][t], ae, (__m512bh)we[t]);
          acc_c[r][t] = _mm512_dpbf16_ps(acc_c[r][t], ao, (__m512bh)wo[t]);
        }
      }
    }
  };
  int64_t i = 0;
  for (; i + 64 * ACC <= k; i += 64 * ACC) {
    for (int c = 0; c < ACC; ++c) step(i + 64 * c, acc[c]);
  }
  if (i < k) step(i, acc[0]);
  for (int r = 0; r < MT; ++r)
    for (int t = 0; t < NT; ++t) {
      const __m512 sum = ACC == 1 ? acc[0][r][t] : _mm512_add_ps(acc[0][r][t], acc[ACC - 1][r][t]);
      store_out<Element<BNB_DTYPE_BF16>>(a, r0 + r, j0 + t, _mm512_reduce_add_ps(sum));
    }
}

// f32 path (f32 and f16 activations).
template <typename E, int MT, int NT>
void gemm_f32_tile(const Gemm4bitArgs& a, const float* P, int64_t r0, int64_t j0, const __m512 code) {
  const int64_t k = a.k;
  __m512 acc[MT][NT];
  for (int r = 0; r < MT; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  __m512 tab[NT];
  for (int64_t i = 0; i < k; i += 64) {
    if (i % a.blocksize == 0) {
      for (int t = 0; t < NT; ++t) {
        const __m512 s = _mm512_mul_ps(code, _mm512_set1_ps(a.absmax[((j0 + t) * k + i) / a.blocksize]));
        // f16 activations: the reference multiplies by the weight rounded to f16.
        tab[t] = E::kDtype == BNB_DTYPE_F16 ? _mm512_cvtph_ps(_mm512_cvtps_ph(s, _MM_FROUND_TO_NEAREST_INT)) : s;
      }
    }
    for (int h = 0; h < 2; ++h) {
      __m512 we[NT], wo[NT];
      for (int t = 0; t < NT; ++t) {
        const __m512i d = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.B + ((j0 + t) * k + i) / 2 + 16 * h)));
        we[t] = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), tab[t]);
        wo[t] = _mm512_permutexvar_ps(_mm512_and_si512(d, _mm512_set1_epi32(15)), tab[t]);
      }
      for (int r = 0; r < MT; ++r) {
        const float* p = P + (r0 + r) * k + i + 16 * h;
        const __m512 ae = _mm512_loadu_ps(p);
        const __m512 ao = _mm512_loadu_ps(p + 32);
        for (int t = 0; t < NT; ++t) {
          acc[r][t] = _mm512_fmadd_ps(ae, we[t], acc[r][t]);
          acc[r][t] = _mm512_fmadd_ps(ao, wo[t], acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < MT; ++r)
    for (int t = 0; t < NT; ++t) store_out<E>(a, r0 + r, j0 + t, _mm512_reduce_add_ps(acc[r][t]));
}

template <int MT, int NT>
void gemm_tile(const Gemm4bitArgs& a, int64_t r0, int64_t j0, const __m512 code) {
  if (a.dtype == BNB_DTYPE_BF16) {
    gemm_bf16_tile<MT, NT>(a, static_cast<const uint16_t*>(a.prepared), r0, j0, code);
  } else if (a.dtype == BNB_DTYPE_F16) {
    gemm_f32_tile<Element<BNB_DTYPE_F16>, MT, NT>(a, static_cast<const float*>(a.prepared), r0, j0, code);
  } else {
    gemm_f32_tile<Element<BNB_DTYPE_F32>, MT, NT>(a, static_cast<const float*>(a.prepared), r0, j0, code);
  }
}

// All rows of A against weight rows [j0, j0 + NT).
template <int NT>
void gemm_rows(const Gemm4bitArgs& a, int64_t j0, const __m512 code) {
  int64_t r = 0;
  for (; r + 8 <= a.m; r += 8) gemm_tile<8, NT>(a, r, j0, code);
  if (a.m - r >= 4) {
    gemm_tile<4, NT>(a, r, j0, code);
    r += 4;
  }
  if (a.m - r >= 2) {
    gemm_tile<2, NT>(a, r, j0, code);
    r += 2;
  }
  if (a.m - r >= 1) gemm_tile<1, NT>(a, r, j0, code);
}

}  // namespace

void gemm_4bit(const Gemm4bitArgs& args, int64_t n0, int64_t n1) {
  if (!gemm_fast(args) || args.prepared == nullptr) return gen_gemm_4bit(args, n0, n1);
  const char* body = static_cast<const char*>(args.prepared) + kPreparedHeader;
  if (*static_cast<const int32_t*>(args.prepared) == kFixed16) {
    alignas(64) int16_t t[32];
    for (int c = 0; c < 32; ++c) t[c] = fixed16::code_entry(args.code[c % 16]);
    const __m512i tab = _mm512_load_si512(t);
    const int16_t* Q = reinterpret_cast<const int16_t*>(body);
    const float* S = reinterpret_cast<const float*>(body + args.m * args.k * 2);
    // Up to 4 rows a pass over the weight row, which stays in L1 for the next pass.
    for (int64_t j = n0; j < n1; ++j) {
      for (int64_t r0 = 0; r0 < args.m; r0 += 4) {
        switch (args.m - r0) {
          case 1:
            gemv_fixed16_row<1>(args, Q, S, r0, j, tab);
            break;
          case 2:
            gemv_fixed16_row<2>(args, Q, S, r0, j, tab);
            break;
          case 3:
            gemv_fixed16_row<3>(args, Q, S, r0, j, tab);
            break;
          default:
            gemv_fixed16_row<4>(args, Q, S, r0, j, tab);
        }
      }
    }
    return;
  }
  Gemm4bitArgs a = args;
  a.prepared = body;
  const __m512 code = _mm512_loadu_ps(a.code);
  int64_t j = n0;
  // bf16, one or two rows: one weight row at a time, so that each thread reads the weight as one
  // sequential stream. Interleaving 4 rows (4 streams 2 KiB apart) costs nothing when the weight is
  // in cache but ~40 % more when it comes from DRAM, as in a decoding model (4096x4096: 0.60 ->
  // 0.42 ms on one Zen 4 core; the hardware prefetchers follow one stream, not four short ones).
  if (gemv_bf16_b64(a)) {
    const uint16_t* P = static_cast<const uint16_t*>(a.prepared);
    for (; j < n1; ++j) a.m == 1 ? gemv_bf16_row<1>(a, P, j, code) : gemv_bf16_row<2>(a, P, j, code);
    return;
  }
  if (gemv_f32_b64(a)) {
    const float* P = static_cast<const float*>(a.prepared);
    for (; j < n1; ++j) a.m == 1 ? gemv_f32_row<1>(a, P, j, code) : gemv_f32_row<2>(a, P, j, code);
    return;
  }
  if (a.m <= 2 && a.dtype == BNB_DTYPE_BF16) {
    for (; j < n1; ++j) gemm_rows<1>(a, j, code);
  } else if (a.m <= 2) {
    for (; j + 4 <= n1; j += 4) gemm_rows<4>(a, j, code);
  } else {
    // Three rows or more: tiles of up to 8 rows x 2 weight rows (16 accumulators), so that each
    // load of A feeds two weight rows; with one weight row per tile the loads of A, one per
    // dot-product instruction, were the bound (4096x4096 batch 8 on 2 threads: 2.21 -> 1.53 ms,
    // batch 32: 7.6 -> 4.9 ms).
    for (; j + 2 <= n1; j += 2) gemm_rows<2>(a, j, code);
  }
  for (; j < n1; ++j) gemm_rows<1>(a, j, code);
}

// ---- int8 matmul: vpdpbusd with A + 128 as the unsigned operand ---------------------------------
// sum((a + 128) * b) = sum(a * b) + 128 * sum(b); sum(b) comes from a second vpdpbusd with ones.
// Exact for every int8 input (vpdpbusd does not saturate).

void int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C, int64_t n0,
                        int64_t n1) {
  const int64_t k64 = k & ~int64_t(63);
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i ones = _mm512_set1_epi8(1);
  constexpr int MT = 4;
  for (int64_t r0 = 0; r0 < m; r0 += MT) {
    const int rm = static_cast<int>((m - r0) < MT ? (m - r0) : MT);
    for (int64_t j = n0; j < n1; ++j) {
      const int8_t* b = B + j * k;
      __m512i acc[MT], bsum = _mm512_setzero_si512();
      for (int r = 0; r < MT; ++r) acc[r] = _mm512_setzero_si512();
      // 16 KiB software prefetch ahead in the weight stream, as in gemv_bf16_row.
      const int64_t ahead_end = (n - j) * k - 16384;
      for (int64_t i = 0; i < k64; i += 64) {
        if (i < ahead_end) _mm_prefetch(reinterpret_cast<const char*>(b + i + 16384), _MM_HINT_T0);
        const __m512i bv = _mm512_loadu_si512(b + i);
        bsum = _mm512_dpbusd_epi32(bsum, ones, bv);
        for (int r = 0; r < rm; ++r) {
          const __m512i av = _mm512_xor_si512(_mm512_loadu_si512(A + (r0 + r) * k + i), bias);
          acc[r] = _mm512_dpbusd_epi32(acc[r], av, bv);
        }
      }
      const int32_t sb = _mm512_reduce_add_epi32(bsum);
      for (int r = 0; r < rm; ++r) {
        const int8_t* x = A + (r0 + r) * k;
        int32_t s = _mm512_reduce_add_epi32(acc[r]) - 128 * sb;
        for (int64_t i = k64; i < k; ++i) s += static_cast<int32_t>(x[i]) * static_cast<int32_t>(b[i]);
        C[(r0 + r) * n + j] = s;
      }
    }
  }
}

// kernels_avx512_quant.cpp
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                     int32_t dtype, int64_t b0, int64_t b1);
void quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                   int64_t b0, int64_t b1);
void dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                          void* out, int32_t dtype, int64_t b0, int64_t b1);
// kernels_avx512_optim.cpp
void optimizer_8bit_blockwise(const Opt8Args& a, int64_t i0, int64_t i1);
// kernels_avx512_wmm.cpp
void weight_matmul(const WeightMatmulArgs& a, int64_t n0, int64_t n1);
void weight_matmul_t(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);

}  // namespace avx512

const KernelTable kernels_avx512 = [] {
  using namespace avx512;
  KernelTable t = BNB_GENERIC_TABLE;
  // The AVX2 block-wise quantizer and 32-bit optimizer outrun their AVX-512 counterparts on Zen 4
  // (4096x4096 on 2 threads, same process: quantize_blockwise x1.87 / x1.74 for bf16 / f32, its
  // bucket table being load-bound, not vector-bound; Adam 32-bit x1.29 in cache).
  t.quantize_4bit = quantize_4bit;  // NF4; FP4 through avx2::quantize_4bit
  t.quantize_blockwise = avx2::quantize_blockwise;
  t.optimizer_32bit = avx2::optimizer_32bit;
  t.dequantize_4bit = dequantize_4bit;
  t.dequantize_blockwise = dequantize_blockwise;
  t.gemm_4bit_prepare_bytes = gemm_4bit_prepare_bytes;
  t.gemm_4bit_prepare = gemm_4bit_prepare;
  t.gemm_4bit = gemm_4bit;
  t.int8_linear_matmul = int8_linear_matmul;
  t.int8_vectorwise_quant = avx2::int8_vectorwise_quant;
  t.int8_outlier_scan = avx2::int8_outlier_scan;
  t.optimizer_8bit_blockwise = optimizer_8bit_blockwise;
  t.weight_matmul = weight_matmul;
  t.weight_matmul_t = weight_matmul_t;
  return t;
}();

}  // namespace bnb_cpu
