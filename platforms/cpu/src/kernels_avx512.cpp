// AVX-512 kernels (F, BW, VL, DQ, BF16, VNNI, VBMI): this file is compiled with those -m flags only.
// The portable kernels are compiled here too (auto-vectorized for AVX-512); the 4-bit matmul below
// is written with intrinsics, as are the quantizers (kernels_avx512_quant.cpp), the optimizers
// (kernels_avx512_optim.cpp) and the weight-only int8 matmul (kernels_avx512_wmm.cpp).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
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
// kernels instead, with layouts of their own (gemv_bf16_b64, gemv_f32_b64): the code book's values
// times each block's partial sum, the weight unrounded; one bf16 row there runs in 16-bit fixed
// point (gemv_fixed16) where A allows it. The prepared buffer starts with a header naming which.

namespace {

bool gemm_fast(const Gemm4bitArgs& a) { return a.k % 64 == 0 && a.blocksize >= 64 && a.k % a.blocksize == 0; }

// bf16 activations, one or two rows, block size 64, k a multiple of 128: the gemv kernel below,
// whose prepared A holds, per 128 columns, the 32 values of each residue mod 4 in turn.
bool gemv_bf16_b64(const Gemm4bitArgs& a) {
  return a.dtype == BNB_DTYPE_BF16 && a.m <= 2 && a.blocksize == 64 && a.k % 128 == 0;
}

// f32 or f16 activations, one or two rows, block size 64, k a multiple of 128: gemv_f32_row, whose
// prepared A (f32) holds, per 128 columns, for q = 0..7 the 16 values at 8m + (q ^ 1), m = 0..15.
bool gemv_f32_b64(const Gemm4bitArgs& a) {
  return a.dtype != BNB_DTYPE_BF16 && a.m <= 2 && a.blocksize == 64 && a.k % 128 == 0;
}

// One bf16 row at block size 64 (k a multiple of 128) with a code book within [-1, 1]: the
// fixed-point kernel (gemv_fixed16_row) where A's groups allow it. On this class vdpbf16ps issues
// as several operations on the two vector ports (8 independent chains: 0.54 ns an instruction,
// vpdpwssd 0.18, vfmadd 0.16, on the machine of bench/RESULTS.md), so the bf16 dot products were
// the kernel's bound; vpdpwssd on 16-bit integers does the same 32 products in one.
bool gemv_fixed16(const Gemm4bitArgs& a) {
  if (!(gemv_bf16_b64(a) && a.m == 1)) return false;
  for (int c = 0; c < 16; ++c)
    if (!(fabsf(a.code[c]) <= 1.0f)) return false;
  return true;
}

// The prepared buffer: a header naming its layout, then the layout.
constexpr int64_t kHeader = 64;
enum PreparedLayout : int32_t { kPlain = 1, kFixed16 = 2 };

// 128 columns of one bf16 row as the fixed-point kernel takes them, the AVX2 table's format
// (kernels_avx2_gemm4.cpp: A per 64 columns times 2^(14 - e), rounded half to even, for the
// group's largest |value| in [2^e, 2^(e+1)); its scale S = 2^(e - 27) including the code book's
// 2^13) in gemv_bf16_row's order: Q[32q + i] = column 4i + q. False where a group holds inf or NaN
// or its largest |value| is under 2^-96 (the bf16 kernel takes those).
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
    } else if (top >= 0x7f80u || e < -96) {
      return false;
    } else {
      S[h] = bnb::bits_float(static_cast<uint32_t>(e - 27 + 127) << 23);
    }
    const __m512 scale = _mm512_castsi512_ps(_mm512_set1_epi32(top == 0 ? 127 << 23 : (14 - e + 127) << 23));
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
  for (int q = 0; q < 4; ++q) {
    // Lane i < 16 takes column 4i + q of the first 64, lane i >= 16 column 4(i - 16) + q of the rest.
    alignas(64) uint16_t ix[32];
    for (int i = 0; i < 32; ++i) ix[i] = static_cast<uint16_t>(4 * (i % 16) + q);
    const __m512i idx = _mm512_load_si512(ix);
    const __m512i lo = _mm512_permutex2var_epi16(col[0], idx, col[1]);
    const __m512i hi = _mm512_permutex2var_epi16(col[2], idx, col[3]);
    _mm512_storeu_si512(Q + 32 * q, _mm512_mask_blend_epi16(0xffff0000u, lo, hi));
  }
  return true;
}

}  // namespace

int64_t gemm_4bit_prepare_bytes(const Gemm4bitArgs& a) {
  if (!gemm_fast(a)) return 0;
  const int64_t plain = a.m * a.k * (a.dtype == BNB_DTYPE_BF16 ? 2 : 4);
  const int64_t fixed = gemv_fixed16(a) ? a.k * 2 + a.k / 64 * 4 : 0;
  return kHeader + (plain > fixed ? plain : fixed);
}

void gemm_4bit_prepare(const Gemm4bitArgs& a, void* scratch) {
  if (!gemm_fast(a)) return;
  *static_cast<int32_t*>(scratch) = kPlain;
  if (gemv_fixed16(a)) {
    const uint16_t* A = static_cast<const uint16_t*>(a.A);
    int16_t* Q = reinterpret_cast<int16_t*>(static_cast<char*>(scratch) + kHeader);
    float* S = reinterpret_cast<float*>(static_cast<char*>(scratch) + kHeader + a.k * 2);
    bool ok = true;
    for (int64_t g = 0; ok && g < a.k; g += 128) ok = fixed16_prepare128(A + g, Q + g, S + g / 64);
    if (ok) {
      *static_cast<int32_t*>(scratch) = kFixed16;
      return;
    }
  }
  scratch = static_cast<char*>(scratch) + kHeader;
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

template <typename E>
void store_out(const Gemm4bitArgs& a, int64_t r, int64_t j, float v) {
  using T = typename E::type;
  if (a.bias) v += E::load(static_cast<const T*>(a.bias)[j]);
  static_cast<T*>(a.out)[r * a.n + j] = E::store(v);
}

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

// Weight row j streamed against MT (1 or 2) rows of A, block size 64, k a multiple of 128: per
// 128 weights (64 packed bytes, two blocks) `part(x, i, parts)` gives each row's partial dot
// product of those weights, lanes 0-7 from the first block and lanes 8-15 from the second, so the
// partial sums are scaled by both absmax values with one vector; sums[r] = the row's dot product.
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
    __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(am + i / 64)));
    if (kGroupScale) pair = _mm_mul_ps(pair, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(gs + i / 64))));
    const __m512 scale = _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(pair));
    for (int r = 0; r < MT; ++r) acc_c[r] = _mm512_fmadd_ps(parts[r], scale, acc_c[r]);
  };
  int64_t i = 0;
  for (; i + 256 <= k; i += 256) {
    step(i, acc[0]);
    step(i + 128, acc[1]);
  }
  if (i < k) step(i, acc[0]);
  for (int r = 0; r < MT; ++r) sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]));
}

// One weight row against MT (1 or 2) bf16 rows, block size 64 (gemv_bf16_b64). Per 128 weights:
// the 16-bit word m of the 64 bytes holds the nibbles of weights 4m .. 4m + 3 at bits 4, 0, 12
// and 8; vpermw reads only an index's low 5 bits, so with the code book repeated in both halves of
// its 32-entry table, shifting the words is all the unpacking the four lookups need.
template <int MT>
void gemv_bf16_row(const Gemm4bitArgs& a, const uint16_t* P, int64_t j, const __m512 code) {
  const __m512i half = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(code));
  const __m512i tab = _mm512_inserti64x4(half, _mm512_castsi512_si256(half), 1);
  float sums[MT];
  gemv_row_b64<MT>(
      a, j,
      [&](const __m512i x, int64_t i, __m512(&parts)[MT]) BNB_INLINE_LAMBDA {
        const __m512i w0 = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 4), tab);
        const __m512i w1 = _mm512_permutexvar_epi16(x, tab);
        const __m512i w2 = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 12), tab);
        const __m512i w3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 8), tab);
        for (int r = 0; r < MT; ++r) {
          const uint16_t* p = P + r * a.k + i;
          __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_loadu_si512(p), (__m512bh)w0);
          d = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 32), (__m512bh)w1);
          d = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 64), (__m512bh)w2);
          parts[r] = _mm512_dpbf16_ps(d, (__m512bh)_mm512_loadu_si512(p + 96), (__m512bh)w3);
        }
      },
      sums);
  for (int r = 0; r < MT; ++r) store_out<Element<BNB_DTYPE_BF16>>(a, r, j, sums[r]);
}

// One weight row against one bf16 row in 16-bit fixed point (gemv_fixed16; A prepared by
// fixed16_prepare128, its group scales S): the lookups of gemv_bf16_row into the code book as
// 16-bit integers (entry * 2^13), vpdpwssd, whose 32-bit sums are exact (a lane sums 8 products
// under 2^28 each), then one conversion and, per step, the two groups' S * absmax.
void gemv_fixed16_row(const Gemm4bitArgs& a, const int16_t* Q, const float* S, int64_t j, const __m512i tab) {
  float sums[1];
  gemv_row_b64<1, true>(
      a, j,
      [&](const __m512i x, int64_t i, __m512(&parts)[1]) BNB_INLINE_LAMBDA {
        const int16_t* q = Q + i;
        __m512i d = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(q),
                                        _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 4), tab));
        d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 32), _mm512_permutexvar_epi16(x, tab));
        d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 64), _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 12), tab));
        d = _mm512_dpwssd_epi32(d, _mm512_loadu_si512(q + 96), _mm512_permutexvar_epi16(_mm512_srli_epi16(x, 8), tab));
        parts[0] = _mm512_cvtepi32_ps(d);
      },
      sums, S);
  store_out<Element<BNB_DTYPE_BF16>>(a, 0, j, sums[0]);
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
  const char* body = static_cast<const char*>(args.prepared) + kHeader;
  if (*static_cast<const int32_t*>(args.prepared) == kFixed16) {
    alignas(64) int16_t t[32];
    for (int c = 0; c < 32; ++c) t[c] = static_cast<int16_t>(lrintf(args.code[c % 16] * 8192.0f));
    const __m512i tab = _mm512_load_si512(t);
    const int16_t* Q = reinterpret_cast<const int16_t*>(body);
    const float* S = reinterpret_cast<const float*>(body + args.k * 2);
    for (int64_t j = n0; j < n1; ++j) gemv_fixed16_row(args, Q, S, j, tab);
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
