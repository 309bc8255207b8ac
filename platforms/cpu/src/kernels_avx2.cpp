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
    w = _mm256_cvtps_ph(t0, _MM_FROUND_TO_NEAREST_INT);
    w1 = _mm256_cvtps_ph(t1, _MM_FROUND_TO_NEAREST_INT);
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

// ---- 4-bit matmul -------------------------------------------------------------------------------
// Fast path: k a multiple of 64 and of the block size, block size a multiple of 64. A is converted
// to f32 and re-laid out once per call ("prepared") so that the weights decoded from 32 packed
// bytes meet their activations without any shuffle of A.
//
// Block size a multiple of 64 ("lookup" kernel): the code book is pshufb tables of its bytes, so
// 32 weights take one pshufb per byte of the value and byte/word unpacks. f16 / bf16 A: the code
// book rounded to A's dtype, two tables (low and high bytes); bf16 becomes f32 by unpacking its
// words against zero, f16 by vcvtph2ps. f32 A: the f32 code book itself, four tables (4 pshufb and
// 8 unpacks per 32 weights; the two 8-entry vpermps and a blend per 8 weights this replaces took
// twice the instructions: 4096x4096 batch 1 on 2 threads 1.49 -> 0.88-1.02 ms). Each
// block's partial dot products are scaled by its absmax in f32 afterwards: no per-block table
// (which would cost as much as the dot product at block size 64).

namespace {

bool gemm_fast(const Gemm4bitArgs& a) { return a.k % 64 == 0 && a.blocksize % 64 == 0 && a.k % a.blocksize == 0; }

// Within a 64-column group of the lookup kernel's prepared A: the column of lane e of register q
// (q = 0..7, four registers from the high nibbles, then four from the low nibbles). Byte b of the
// group's 32 packed bytes holds columns 2b (high nibble) and 2b + 1 (low nibble).
int lookup_column(int32_t dtype, int q, int e) {
  const int nib = q / 4, u = (q / 2) % 2, v = q % 2;  // u: unpacklo/hi_epi8; v: the second step
  // f32: unpacklo/hi_epi16 take words 0-3 / 4-7 of each 128-bit lane; bf16: a shift takes the even
  // words (v = 0), a mask the odd ones (v = 1); f16: vcvtph2ps takes one whole 128-bit lane (v).
  const int byte = dtype == BNB_DTYPE_F32    ? (e / 4) * 16 + u * 8 + v * 4 + e % 4
                   : dtype == BNB_DTYPE_BF16 ? (e / 4) * 16 + u * 8 + 2 * (e % 4) + v
                                             : v * 16 + u * 8 + e;
  return 2 * byte + nib;
}

// The 16 code-book entries as pshufb tables of their bytes, each repeated in both 128-bit lanes:
// rounded to bf16 / f16 two tables (low, high byte), f32 four (byte 0 .. 3).
struct Table16 {
  __m256i plane[4];
  Table16(const float* code, int32_t dtype) {
    alignas(16) uint8_t b[4][16];
    for (int c = 0; c < 16; ++c) {
      const uint32_t w = dtype == BNB_DTYPE_F32    ? bnb::float_bits(code[c])
                         : dtype == BNB_DTYPE_BF16 ? bnb::float_to_bf16(code[c])
                                                   : bnb::float_to_half(code[c]);
      for (int q = 0; q < 4; ++q) b[q][c] = static_cast<uint8_t>(w >> (8 * q));
    }
    for (int q = 0; q < 4; ++q)
      plane[q] = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b[q])));
  }
};

// 32 weights (code indices in the bytes of idx) as four vectors of 8 f32, in lookup_column order.
template <int32_t DT>
inline void decode32(__m256i idx, const Table16& t, __m256* w) {
  const __m256i lo = _mm256_shuffle_epi8(t.plane[0], idx);
  const __m256i hi = _mm256_shuffle_epi8(t.plane[1], idx);
  const __m256i u0 = _mm256_unpacklo_epi8(lo, hi);
  const __m256i u1 = _mm256_unpackhi_epi8(lo, hi);
  if constexpr (DT == BNB_DTYPE_F32) {
    const __m256i b2 = _mm256_shuffle_epi8(t.plane[2], idx);
    const __m256i b3 = _mm256_shuffle_epi8(t.plane[3], idx);
    const __m256i v0 = _mm256_unpacklo_epi8(b2, b3);
    const __m256i v1 = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(u0, v0));
    w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(u0, v0));
    w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(u1, v1));
    w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(u1, v1));
  } else if constexpr (DT == BNB_DTYPE_BF16) {
    // Widened without more shuffles (pshufb and unpacks share two of Zen 3's four vector pipes):
    // the even words shifted up, the odd ones masked in place.
    const __m256i odd = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    w[0] = _mm256_castsi256_ps(_mm256_slli_epi32(u0, 16));
    w[1] = _mm256_castsi256_ps(_mm256_and_si256(u0, odd));
    w[2] = _mm256_castsi256_ps(_mm256_slli_epi32(u1, 16));
    w[3] = _mm256_castsi256_ps(_mm256_and_si256(u1, odd));
  } else {
    w[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(u0));
    w[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(u0, 1));
    w[2] = _mm256_cvtph_ps(_mm256_castsi256_si128(u1));
    w[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(u1, 1));
  }
}

template <typename E>
void store_out(const Gemm4bitArgs& a, int64_t r, int64_t j, float v) {
  using T = typename E::type;
  if (a.bias) v += E::load(static_cast<const T*>(a.bias)[j]);
  static_cast<T*>(a.out)[r * a.n + j] = E::store(v);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// How far ahead of the loads the batch-1 loops prefetch the weight stream.
constexpr int64_t kAhead = 8192;

// One weight row j, columns [i0, i1) (whole blocks), against MT rows of A (lookup kernel); adds
// the MT dot products to sums[0..MT). A single row keeps four partial sums so that no FMA waits
// for the previous one. kPrefetch: the weight row is one sequential stream (the whole of k), read
// with a software prefetch 8 KiB ahead (the hardware prefetchers alone leave the loop waiting on
// DRAM).
template <typename E, int MT, bool kPrefetch>
void lookup_rows(const Gemm4bitArgs& a, const float* P, int64_t r0, int64_t j, const Table16& t, int64_t i0, int64_t i1,
                 float* sums) {
  constexpr int NP = MT == 1 ? 4 : 2;
  const int64_t k = a.k, bs = a.blocksize;
  const uint8_t* wrow = a.B + j * k / 2;
  const float* am = a.absmax + j * k / bs;
  const int64_t ahead_end = (a.n - j) * k / 2 - kAhead;  // prefetch while inside the weight
  const __m256i mask = _mm256_set1_epi8(15);
  __m256 acc[MT];
  for (int r = 0; r < MT; ++r) acc[r] = _mm256_setzero_ps();
  const float* am_b = am + i0 / bs;  // the absmax of block b0 (a pointer step: no division per block)
  for (int64_t b0 = i0; b0 < i1; b0 += bs, ++am_b) {
    __m256 part[MT][NP];
    for (int r = 0; r < MT; ++r)
      for (int q = 0; q < NP; ++q) part[r][q] = _mm256_setzero_ps();
    for (int64_t i = b0; i < b0 + bs; i += 64) {
      if (kPrefetch && i / 2 < ahead_end) {
        _mm_prefetch(reinterpret_cast<const char*>(wrow + i / 2 + kAhead), _MM_HINT_T0);
      }
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + i / 2));
      for (int nib = 0; nib < 2; ++nib) {
        const __m256i idx = nib == 0 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), mask) : _mm256_and_si256(x, mask);
        __m256 w[4];
        decode32<E::kDtype>(idx, t, w);
        for (int r = 0; r < MT; ++r) {
          const float* ap = P + (r0 + r) * k + i + 32 * nib;
          for (int q = 0; q < 4; ++q) {
            part[r][q % NP] = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 8 * q), w[q], part[r][q % NP]);
          }
        }
      }
    }
    const __m256 s = _mm256_broadcast_ss(am_b);
    for (int r = 0; r < MT; ++r) {
      __m256 sum = part[r][0];
      for (int q = 1; q < NP; ++q) sum = _mm256_add_ps(sum, part[r][q]);
      acc[r] = _mm256_fmadd_ps(sum, s, acc[r]);
    }
  }
  for (int r = 0; r < MT; ++r) sums[r] += hsum(acc[r]);
}

// The sum of one 64-weight block's products (32 packed bytes at wb, its 64 prepared values of A at
// ap), unscaled: two chains of one multiply and three FMAs.
template <int32_t DT>
inline __m256 block64(const uint8_t* wb, const float* ap, const Table16& t, __m256i mask) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
  __m256 hi[4], lo[4];
  decode32<DT>(_mm256_and_si256(_mm256_srli_epi16(x, 4), mask), t, hi);
  decode32<DT>(_mm256_and_si256(x, mask), t, lo);
  __m256 s0 = _mm256_mul_ps(_mm256_loadu_ps(ap), hi[0]);
  __m256 s1 = _mm256_mul_ps(_mm256_loadu_ps(ap + 8), hi[1]);
  s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 16), hi[2], s0);
  s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 24), hi[3], s1);
  s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 32), lo[0], s0);
  s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 40), lo[1], s1);
  s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 48), lo[2], s0);
  s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ap + 56), lo[3], s1);
  return _mm256_add_ps(s0, s1);
}

// One weight row j against one row of A at block size 64: the decoding case. lookup_rows' general
// loop spends ~60 instructions a block (its per-block bookkeeping and the prefetch test as much as
// the arithmetic), which bound it on AMD Zen 3 at ~10 cycles a block; here two blocks (one cache
// line of the weight) go straight through per iteration, each scaled into its own accumulator.
template <typename E>
float lookup_row_b64(const Gemm4bitArgs& a, const float* P, int64_t j, const Table16& t) {
  const int64_t k = a.k;
  const uint8_t* w = a.B + j * k / 2;
  const float* am = a.absmax + j * k / 64;
  const int64_t ahead_end = a.n * k / 2 - kAhead;  // prefetch while inside the weight
  const __m256i mask = _mm256_set1_epi8(15);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 128 <= k; i += 128, w += 64, am += 2) {
    if (w - a.B < ahead_end) _mm_prefetch(reinterpret_cast<const char*>(w + kAhead), _MM_HINT_T0);
    acc0 = _mm256_fmadd_ps(block64<E::kDtype>(w, P + i, t, mask), _mm256_broadcast_ss(am), acc0);
    acc1 = _mm256_fmadd_ps(block64<E::kDtype>(w + 32, P + i + 64, t, mask), _mm256_broadcast_ss(am + 1), acc1);
  }
  if (i < k) acc0 = _mm256_fmadd_ps(block64<E::kDtype>(w, P + i, t, mask), _mm256_broadcast_ss(am), acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

// Weight rows [n0, n1) against all rows of A, one weight row at a time. (Taking A in column chunks
// that stay in the L1 cache, for several weight rows at a time, was slower: 8 rows of 4096 on one
// core 6.3 -> 6.7-9 ms; the loop is bound by its FMAs and lookups, not by re-reading A from L2.)
template <typename E>
void lookup_range(const Gemm4bitArgs& a, const Table16& t, int64_t n0, int64_t n1) {
  const float* P = static_cast<const float*>(a.prepared);
  const int64_t m = a.m, k = a.k;
  float sums[4];
  for (int64_t j = n0; j < n1; ++j) {
    if (m == 1) {
      if (a.blocksize == 64) {
        store_out<E>(a, 0, j, lookup_row_b64<E>(a, P, j, t));
        continue;
      }
      sums[0] = 0.0f;
      lookup_rows<E, 1, true>(a, P, 0, j, t, 0, k, sums);
      store_out<E>(a, 0, j, sums[0]);
      continue;
    }
    for (int64_t r = 0; r < m;) {
      const int mt = m - r >= 4 ? 4 : (m - r >= 2 ? 2 : 1);
      sums[0] = sums[1] = sums[2] = sums[3] = 0.0f;
      if (mt == 4) {
        lookup_rows<E, 4, false>(a, P, r, j, t, 0, k, sums);
      } else if (mt == 2) {
        lookup_rows<E, 2, false>(a, P, r, j, t, 0, k, sums);
      } else {
        lookup_rows<E, 1, false>(a, P, r, j, t, 0, k, sums);
      }
      for (int q = 0; q < mt; ++q) store_out<E>(a, r + q, j, sums[q]);
      r += mt;
    }
  }
}

}  // namespace

int64_t gemm_4bit_prepare_bytes(const Gemm4bitArgs& a) { return gemm_fast(a) ? a.m * a.k * 4 : 0; }

void gemm_4bit_prepare(const Gemm4bitArgs& a, void* scratch) {
  if (!gemm_fast(a)) return;
  const int64_t total = a.m * a.k;
  float* P = static_cast<float*>(scratch);
  int col[64];  // the column of A that goes to each slot of a 64-column group
  for (int s = 0; s < 64; ++s) col[s] = lookup_column(a.dtype, s / 8, s % 8);
  dispatch_float(a.dtype, [&](auto e) {
    using E = decltype(e);
    const typename E::type* A = static_cast<const typename E::type*>(a.A);
    for (int64_t g = 0; g < total; g += 64) {
      for (int s = 0; s < 64; ++s) P[g + s] = E::load(A[g + col[s]]);
    }
  });
}

void gemm_4bit(const Gemm4bitArgs& a, int64_t n0, int64_t n1) {
  if (!gemm_fast(a) || a.prepared == nullptr) return gen_gemm_4bit(a, n0, n1);
  const Table16 t(a.code, a.dtype);
  dispatch_float(a.dtype, [&](auto e) { lookup_range<decltype(e)>(a, t, n0, n1); });
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
