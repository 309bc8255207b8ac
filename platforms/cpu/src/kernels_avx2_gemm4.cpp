// The AVX2 4-bit matmul (gemm_4bit): a pshufb lookup kernel over A prepared once per call, and
// for one bf16 row of A (decoding) a 16-bit fixed-point kernel. Compiled with -mavx2 -mfma -mf16c.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/numeric.h"
#include "element.h"
#include "fixed16.h"
#include "kernels.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {

void gen_gemm_4bit(const Gemm4bitArgs& a, int64_t n0, int64_t n1);  // kernels_generic.inc

// ---- 4-bit matmul -------------------------------------------------------------------------------
// Fast path: k a multiple of 64 and of the block size, block size a multiple of 64. A is converted
// to f32 and re-laid out once per call ("prepared") so that the weights decoded from 32 packed
// bytes meet their activations without any shuffle of A.
//
// Block size a multiple of 64 ("lookup" kernel): the code book is pshufb tables of its bytes, so 32
// weights take one pshufb per byte of the value and byte/word unpacks. f16 / bf16 A: the code book
// rounded to A's dtype, two tables (low and high bytes); bf16 becomes f32 by a shift and a mask,
// f16 by vcvtph2ps (one bf16 row takes the fixed-point kernel further below). f32 A: the f32 code
// book itself, four tables (4 pshufb and 8 unpacks per 32 weights; the two 8-entry vpermps and a
// blend per 8 weights this replaces took twice the instructions: 4096x4096 batch 1 on 2 threads
// 1.49 -> 0.88-1.02 ms). Each block's partial dot products are scaled by its absmax in f32
// afterwards: no per-block table (which would cost as much as the dot product at block size 64).

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

// Weight rows [n0, n1) against all rows of A (prepared: P), one weight row at a time. (Taking A in
// column chunks that stay in the L1 cache, for several weight rows at a time, was slower: 8 rows of
// 4096 on one core 6.3 -> 6.7-9 ms; the loop is bound by its FMAs and lookups, not by re-reading A
// from L2.)
template <typename E>
void lookup_range(const Gemm4bitArgs& a, const float* P, const Table16& t, int64_t n0, int64_t n1) {
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

// ---- one bf16 row of A (decoding) in 16-bit fixed point ----------------------------------------
// The f32 lookup kernel above is bound on AVX2 by its shuffles: per 64 weights 4 pshufb, 4 unpacks
// and 4 widening shifts on the two vector pipes that take them, and 8 FMAs besides. Here the code
// book is held as 16-bit integers (entry * 2^13) and A, per 64 columns ("group"), as 16-bit
// integers under a power-of-two scale that puts the group's largest |value| in [2^14, 2^15). Per
// 64 weights: 4 pshufb, 4 unpacks and 4 vpmaddwd with exact 32-bit sums, then one conversion, the
// group's scale and the block's absmax in f32.
//
// Error, against the exact product: each value of A moves by at most half a unit, 2^-15 of its
// group's largest |value| (under the bf16 rounding of the largest product, 2^-9, that the
// reference's dequantized bf16 weight carries), so values far below their group's largest keep
// fewer bits than bf16 would; each code-book entry by at most 2^-14. 32-bit
// range: |q| <= 2^15 - 1 and |entry| <= 2^13, so a lane's 8 products per group stay under 2^31.
// A that holds inf, NaN or a group whose largest |value| is under 2^-96 takes the f32 kernel.

// The code book as 16-bit integers, split into pshufb tables of their low and high bytes.
struct Fixed16Table {
  __m256i lo, hi;
  explicit Fixed16Table(const float* code) {
    alignas(16) uint8_t b[2][16];
    for (int c = 0; c < 16; ++c) {
      const uint16_t v = static_cast<uint16_t>(fixed16::code_entry(code[c]));
      b[0][c] = static_cast<uint8_t>(v);
      b[1][c] = static_cast<uint8_t>(v >> 8);
    }
    lo = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b[0])));
    hi = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b[1])));
  }
};

// One group of A (64 bf16 values) as 64 int16 in the order group64 meets them: the even columns
// 0-14 and 32-46, the even 16-30 and 48-62, then the same of the odd columns (byte b of the
// weight's 32 packed bytes holds column 2b in its high nibble, 2b + 1 in its low one); and the
// group's scale, 2^-(14 - e) / 2^13 for its largest |value| in [2^e, 2^(e+1)). False where the
// group cannot be held so (inf, NaN, or largest |value| under 2^-96).
bool fixed16_group(const uint16_t* A, int16_t* Q, float* S) {
  __m256 f[8];
  __m256i mx = _mm256_setzero_si256();
  for (int h = 0; h < 4; ++h) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + 16 * h));
    f[2 * h] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16));
    f[2 * h + 1] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16));
    mx = _mm256_max_epi32(mx, _mm256_max_epi32(abs_bits(f[2 * h]), abs_bits(f[2 * h + 1])));
  }
  const uint32_t top = hmax_epi32(mx);
  if (top == 0) {
    memset(Q, 0, 64 * sizeof(int16_t));
    *S = 0.0f;
    return true;
  }
  const int e = static_cast<int>(top >> 23) - 127;
  if (top >= 0x7f800000u || e < fixed16::kMinExponent) return false;
  const __m256 scale = _mm256_castsi256_ps(_mm256_set1_epi32(fixed16::a_scale_bits(e)));
  *S = bnb::bits_float(fixed16::group_scale_bits(e));
  // Within each 128-bit lane: the words at even positions, then those at odd positions.
  const __m256i split = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,  //
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  __m256i n[4];  // columns 16h .. 16h + 15: the 8 even ones, then the 8 odd ones
  for (int h = 0; h < 4; ++h) {
    const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(f[2 * h], scale));
    const __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(f[2 * h + 1], scale));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xd8);  // in column order
    n[h] = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(w, split), 0xd8);
  }
  __m256i* out = reinterpret_cast<__m256i*>(Q);
  _mm256_storeu_si256(out, _mm256_permute2x128_si256(n[0], n[2], 0x20));
  _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(n[1], n[3], 0x20));
  _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(n[0], n[2], 0x31));
  _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(n[1], n[3], 0x31));
  return true;
}

// The 32-bit sums of one group's 64 products (32 packed bytes at wb, its prepared values at q).
inline __m256i group64(const uint8_t* wb, const int16_t* q, const Fixed16Table& t, __m256i mask) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb));
  const __m256i* qv = reinterpret_cast<const __m256i*>(q);
  const __m256i ih = _mm256_and_si256(_mm256_srli_epi16(x, 4), mask), il = _mm256_and_si256(x, mask);
  __m256i lb = _mm256_shuffle_epi8(t.lo, ih), hb = _mm256_shuffle_epi8(t.hi, ih);
  const __m256i m0 = _mm256_madd_epi16(_mm256_unpacklo_epi8(lb, hb), _mm256_loadu_si256(qv));
  const __m256i m1 = _mm256_madd_epi16(_mm256_unpackhi_epi8(lb, hb), _mm256_loadu_si256(qv + 1));
  lb = _mm256_shuffle_epi8(t.lo, il);
  hb = _mm256_shuffle_epi8(t.hi, il);
  const __m256i m2 = _mm256_madd_epi16(_mm256_unpacklo_epi8(lb, hb), _mm256_loadu_si256(qv + 2));
  const __m256i m3 = _mm256_madd_epi16(_mm256_unpackhi_epi8(lb, hb), _mm256_loadu_si256(qv + 3));
  return _mm256_add_epi32(_mm256_add_epi32(m0, m1), _mm256_add_epi32(m2, m3));
}

// A group's sums in f32 under its scale.
inline __m256 scaled_group(const uint8_t* wb, const int16_t* q, const float* s, const Fixed16Table& t, __m256i mask) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(group64(wb, q, t, mask)), _mm256_broadcast_ss(s));
}

// One weight row j against the prepared row of A (Q, S). Block size 64: two blocks (one cache
// line of the weight) per iteration, as in lookup_row_b64.
float fixed16_row(const Gemm4bitArgs& a, const int16_t* Q, const float* S, int64_t j, const Fixed16Table& t) {
  const int64_t k = a.k, bs = a.blocksize;
  const uint8_t* w = a.B + j * k / 2;
  const float* am = a.absmax + j * k / bs;
  const int64_t ahead_end = a.n * k / 2 - kAhead;  // prefetch while inside the weight
  const __m256i mask = _mm256_set1_epi8(15);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  if (bs == 64) {
    // Each group's sums times its power of two first, then the absmax. (Forming S * absmax first,
    // for 8 groups in one multiply, was 2-6 % faster on AMD Zen 3, but that product can fall
    // below the normal range, and lose bits, where the output itself is an ordinary number.)
    int64_t i = 0;
    for (; i + 128 <= k; i += 128, w += 64, am += 2, S += 2) {
      if (w - a.B < ahead_end) _mm_prefetch(reinterpret_cast<const char*>(w + kAhead), _MM_HINT_T0);
      acc0 = _mm256_fmadd_ps(scaled_group(w, Q + i, S, t, mask), _mm256_broadcast_ss(am), acc0);
      acc1 = _mm256_fmadd_ps(scaled_group(w + 32, Q + i + 64, S + 1, t, mask), _mm256_broadcast_ss(am + 1), acc1);
    }
    if (i < k) acc0 = _mm256_fmadd_ps(scaled_group(w, Q + i, S, t, mask), _mm256_broadcast_ss(am), acc0);
    return hsum(_mm256_add_ps(acc0, acc1));
  }
  for (int64_t b0 = 0; b0 < k; b0 += bs, ++am) {
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 128 <= b0 + bs; i += 128, w += 64, S += 2) {
      if (w - a.B < ahead_end) _mm_prefetch(reinterpret_cast<const char*>(w + kAhead), _MM_HINT_T0);
      f0 = _mm256_add_ps(f0, scaled_group(w, Q + i, S, t, mask));
      f1 = _mm256_add_ps(f1, scaled_group(w + 32, Q + i + 64, S + 1, t, mask));
    }
    if (i < b0 + bs) {  // a block size that is an odd multiple of 64
      f0 = _mm256_add_ps(f0, scaled_group(w, Q + i, S, t, mask));
      w += 32;
      ++S;
    }
    acc0 = _mm256_fmadd_ps(_mm256_add_ps(f0, f1), _mm256_broadcast_ss(am), acc0);
  }
  return hsum(acc0);
}

// The layouts the prepared buffer's header names (kernels.h: kPreparedHeader).
enum PreparedLayout : int32_t { kLookupF32 = 1, kFixed16 = 2 };

}  // namespace

int64_t gemm_4bit_prepare_bytes(const Gemm4bitArgs& a) { return gemm_fast(a) ? kPreparedHeader + a.m * a.k * 4 : 0; }

void gemm_4bit_prepare(const Gemm4bitArgs& a, void* scratch) {
  if (!gemm_fast(a)) return;
  char* body = static_cast<char*>(scratch) + kPreparedHeader;
  int32_t* layout = static_cast<int32_t*>(scratch);
  if (a.m == 1 && a.dtype == BNB_DTYPE_BF16 && fixed16::code_fits(a.code)) {
    const uint16_t* A = static_cast<const uint16_t*>(a.A);
    int16_t* Q = reinterpret_cast<int16_t*>(body);
    float* S = reinterpret_cast<float*>(body + a.k * 2);
    bool ok = true;
    for (int64_t g = 0; ok && g < a.k; g += 64) ok = fixed16_group(A + g, Q + g, S + g / 64);
    if (ok) {
      *layout = kFixed16;
      return;
    }
  }
  *layout = kLookupF32;
  const int64_t total = a.m * a.k;
  float* P = reinterpret_cast<float*>(body);
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
  const char* body = static_cast<const char*>(a.prepared) + kPreparedHeader;
  if (*static_cast<const int32_t*>(a.prepared) == kFixed16) {
    const Fixed16Table t(a.code);
    const int16_t* Q = reinterpret_cast<const int16_t*>(body);
    const float* S = reinterpret_cast<const float*>(body + a.k * 2);
    for (int64_t j = n0; j < n1; ++j) store_out<Element<BNB_DTYPE_BF16>>(a, 0, j, fixed16_row(a, Q, S, j, t));
    return;
  }
  const Table16 t(a.code, a.dtype);
  const float* P = reinterpret_cast<const float*>(body);
  dispatch_float(a.dtype, [&](auto e) { lookup_range<decltype(e)>(a, P, t, n0, n1); });
}

}  // namespace avx2
}  // namespace bnb_cpu
