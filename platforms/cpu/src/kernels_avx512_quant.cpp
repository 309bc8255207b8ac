// AVX-512 (F, BW, VL, BF16, VBMI) quantizers and dequantizers: 4-bit dequantization, NF4
// quantization and 8-bit block-wise dequantization; compiled with the flags of kernels_avx512.cpp.
// Results equal the scalar kernels' bit for bit.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "kernels.h"
#include "kernels_avx2.h"
#include "simd_avx512.h"

namespace bnb_cpu {
namespace avx512 {

namespace {

// The 16 decoded values of a block scaled by its absmax, as 16-bit patterns of `dtype`.
inline __m512i table16(const __m512 code, float absmax, int32_t dtype) {
  const __m512 t = _mm512_mul_ps(code, _mm512_set1_ps(absmax));
  const __m256i h = dtype == BNB_DTYPE_BF16 ? to_bf16(t) : to_f16(t);
  return _mm512_castsi256_si512(h);
}

// 32 nibble indices of 16 packed bytes, in element order, as 16-bit lanes.
inline __m512i nibbles32(const uint8_t* src) {
  const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m512i hi = _mm512_srli_epi32(d, 4);
  const __m512i lo = _mm512_slli_epi32(d, 16);
  // hi | (lo & 0x000f0000): element 2i in the low half of dword i, 2i+1 in the high half.
  return _mm512_ternarylogic_epi32(hi, lo, _mm512_set1_epi32(0x000f0000), 0xf8);
}

}  // namespace

void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                     int32_t dtype, int64_t b0, int64_t b1) {
  float code_arr[16];
  for (uint32_t c = 0; c < 16; ++c) code_arr[c] = bnb::decode_4bit(nf4, c);
  const __m512 code = _mm512_loadu_ps(code_arr);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const int64_t full = len & ~int64_t(31);
    const uint8_t* src = packed + start / 2;
    if (dtype == BNB_DTYPE_F32) {
      const __m512 t = _mm512_mul_ps(code, _mm512_set1_ps(absmax[b]));
      float* dst = static_cast<float*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        // 16 bytes -> 32 indices; each half of them widened to 16 dwords.
        const __m512i idx = nibbles32(src + i / 2);
        const __m512i i0 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(idx));
        const __m512i i1 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(idx, 1));
        _mm512_storeu_ps(dst + i, _mm512_permutexvar_ps(i0, t));
        _mm512_storeu_ps(dst + i + 16, _mm512_permutexvar_ps(i1, t));
      }
      for (int64_t i = full; i < len; ++i) {
        const uint8_t byte = src[i / 2];
        dst[i] = code_arr[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[b];
      }
    } else {
      const __m512i t = table16(code, absmax[b], dtype);
      uint16_t* dst = static_cast<uint16_t*>(out) + start;
      for (int64_t i = 0; i < full; i += 32) {
        _mm512_storeu_si512(dst + i, _mm512_permutexvar_epi16(nibbles32(src + i / 2), t));
      }
      if (full < len) {
        alignas(64) uint16_t tab[32];
        _mm512_store_si512(tab, t);
        for (int64_t i = full; i < len; ++i) {
          const uint8_t byte = src[i / 2];
          dst[i] = tab[(i & 1) ? (byte & 15) : (byte >> 4)];
        }
      }
    }
  }
}

// ---- 4-bit quantization (NF4) -------------------------------------------------------------------
// NF4's 15 midpoints are at least 0.08 apart, so the buckets k = floor((v + 1) * 16) (width 1/16)
// hold at most one each: the sorted position of v is base[k] + [v > mid[k]], two 32-entry permutes
// and one compare per 16 values, with a dependency chain of 7 instructions (the 4-level search
// it replaces waited on 4 permute-compare steps in a row). Exact: the bucket index is a
// non-decreasing function of v computed by the same f32 operations for the table (on the
// midpoints) as for the data, so v's bucket below (above) a midpoint's bucket means v below
// (above) that midpoint, and only a shared bucket needs the compare. FP4 (midpoints 0.0026 apart
// around zero) runs the AVX2 kernel.

namespace {

struct Nf4Buckets {
  __m512 mid_lo, mid_hi;     // mid[k]: the bucket's midpoint; -inf (with base[k] - 1) if none
  __m512i base_lo, base_hi;  // base[k]: the midpoints in lower buckets
  bool ok = false;

  // The bucket of v: floor((v + 1) * 16), 0..31; every v here has |v| <= 1 + 2^-22 (x times the
  // inverse of its block's absmax), and NaN (cvtt: 0x80000000) goes to bucket 31.
  static uint32_t bucket(float v) {
    const float t = (v + 1.0f) * 16.0f;
    const uint32_t k = static_cast<uint32_t>(static_cast<int32_t>(t));
    return k < 31u ? k : 31u;
  }
  static __m512i bucket16(__m512 v) {
    const __m512 t = _mm512_mul_ps(_mm512_add_ps(v, _mm512_set1_ps(1.0f)), _mm512_set1_ps(16.0f));
    return _mm512_min_epu32(_mm512_cvttps_epi32(t), _mm512_set1_epi32(31));
  }

  explicit Nf4Buckets(const bnb::Sorted4bit& book) {
    alignas(64) float mid[32];
    alignas(64) int32_t base[32];
    int owner[32];
    for (int k = 0; k < 32; ++k) owner[k] = -1;
    for (int j = 0; j < 15; ++j) {
      const uint32_t k = bucket(book.mids[j]);
      if (owner[k] >= 0 || k == 31) return;  // two midpoints in a bucket, or one in NaN's bucket
      owner[k] = j;
    }
    for (int k = 0; k < 32; ++k) {
      int below = 0;
      for (int j = 0; j < 15; ++j) below += bucket(book.mids[j]) < static_cast<uint32_t>(k) ? 1 : 0;
      // No midpoint: base - 1 and a compare that every v (NaN included) passes.
      mid[k] = owner[k] >= 0 ? book.mids[owner[k]] : -__builtin_inff();
      base[k] = owner[k] >= 0 ? below : below - 1;
    }
    mid_lo = _mm512_load_ps(mid);
    mid_hi = _mm512_load_ps(mid + 16);
    base_lo = _mm512_load_si512(base);
    base_hi = _mm512_load_si512(base + 16);
    ok = true;
  }

  // Sorted positions (= NF4 codes) of 16 scaled values; "not less or equal": NaN -> 15.
  __m512i operator()(__m512 v) const {
    const __m512i k = bucket16(v);
    const __m512 m = _mm512_permutex2var_ps(mid_lo, k, mid_hi);
    const __m512i b = _mm512_permutex2var_epi32(base_lo, k, base_hi);
    return _mm512_mask_add_epi32(b, _mm512_cmp_ps_mask(v, m, _CMP_NLE_UQ), b, _mm512_set1_epi32(1));
  }
};

// The block's absmax as torch's amax of |x| computes it (NaN propagates).
template <typename E>
inline float block_absmax(const typename E::type* x, int64_t len) {
  __m512 m = _mm512_setzero_ps();
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512 v = load16<E>(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, _mm512_abs_ps(v));
  }
  float r = _mm512_reduce_max_ps(m);
  for (; i < len; ++i) r = bnb::nan_max_abs(r, E::load(x[i]));
  return nan ? bnb::bits_float(0x7fc00000u) : r;
}

// Lane j of the result: the largest of the 16 lanes of m[j] (unsigned).
inline __m512i transpose_max16(const __m512i* m) {
  __m512i t1[8], t2[4];
  for (int i = 0; i < 8; ++i) {  // 128-bit lane L: 2 partial maxima of m[2i]'s and m[2i+1]'s lane L
    t1[i] =
        _mm512_max_epu32(_mm512_unpacklo_epi32(m[2 * i], m[2 * i + 1]), _mm512_unpackhi_epi32(m[2 * i], m[2 * i + 1]));
  }
  for (int i = 0; i < 4; ++i) {  // lane L: the maxima of lane L of m[4i .. 4i + 3], in order
    t2[i] = _mm512_max_epu32(_mm512_unpacklo_epi64(t1[2 * i], t1[2 * i + 1]),
                             _mm512_unpackhi_epi64(t1[2 * i], t1[2 * i + 1]));
  }
  const __m512i v01 =
      _mm512_max_epu32(_mm512_shuffle_i32x4(t2[0], t2[1], 0x44), _mm512_shuffle_i32x4(t2[0], t2[1], 0xee));
  const __m512i v23 =
      _mm512_max_epu32(_mm512_shuffle_i32x4(t2[2], t2[3], 0x44), _mm512_shuffle_i32x4(t2[2], t2[3], 0xee));
  return _mm512_max_epu32(_mm512_shuffle_i32x4(v01, v23, 0x88), _mm512_shuffle_i32x4(v01, v23, 0xdd));
}

// 64 4-bit codes (4 x 16 dwords, in element order) packed into 32 bytes, two per byte, the even
// element in the high nibble: dwords -> bytes with two saturating packs (lane-interleaved), each
// byte pair combined by vpmaddubsw (16 * even + odd), packed again, and the lanes put back in order.
inline __m256i pack_nibbles64(const __m512i c[4]) {
  const __m512i w01 = _mm512_packus_epi32(c[0], c[1]);  // words; 128-bit lane L: c0[4L..4L+3], c1[4L..4L+3]
  const __m512i w23 = _mm512_packus_epi32(c[2], c[3]);
  const __m512i b = _mm512_packus_epi16(w01, w23);  // lane L: c0[4L..], c1[4L..], c2[4L..], c3[4L..]
  const __m512i pairs = _mm512_maddubs_epi16(b, _mm512_set1_epi16(0x0110));  // 16 * b[2i] + b[2i + 1]
  const __m512i packed = _mm512_packus_epi16(pairs, pairs);                  // lane L: 8 bytes (twice)
  // Lane L's 8 bytes hold the pairs of c0[4L..4L+3], c1[..], c2[..], c3[..] (2 bytes each): gather
  // c0's pairs of every lane first, then c1's, c2's, c3's.
  const __m512i q = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 0, 0, 0, 0), packed);
  const __m256i order = _mm256_setr_epi8(0, 1, 8, 9, 16, 17, 24, 25, 2, 3, 10, 11, 18, 19, 26, 27, 4, 5, 12, 13, 20, 21,
                                         28, 29, 6, 7, 14, 15, 22, 23, 30, 31);
  return _mm256_permutexvar_epi8(order, _mm512_castsi512_si256(q));
}

// Blocks are taken in groups of up to 4096 values converted to f32 once: first every block's
// absmax, then every block's codes (a block's reduction and division do not stall its own codes).
template <typename E>
void quantize_nf4_t(const typename E::type* x, int64_t n, int64_t blocksize, const Nf4Buckets& nearest, uint8_t* packed,
                    float* absmax, int64_t b0, int64_t b1) {
  alignas(64) float vals[4096];
  alignas(64) float inv[4096];
  const bool buffered = blocksize <= 4096;
  const int64_t group = buffered ? 4096 / blocksize : 1;
  const int64_t ahead = group * blocksize * static_cast<int64_t>(sizeof(typename E::type));  // bytes
  for (int64_t g0 = b0; g0 < b1; g0 += group) {
    const int64_t g1 = (b1 - g0) < group ? b1 : g0 + group;
    int64_t b = g0;
    // 16 whole blocks at a time: their lane-wise maxima of the |x| bit patterns (a NaN's above
    // inf's), reduced together by one transpose, one division for 16 inverses.
    if (buffered && blocksize % 16 == 0) {
      const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
      for (; b + 16 <= g1 && (b + 16) * blocksize <= n; b += 16) {
        __m512i m[16];
        for (int j = 0; j < 16; ++j) {
          const typename E::type* src = x + (b + j) * blocksize;
          float* vb = vals + (b + j - g0) * blocksize;
          __m512i mv = _mm512_setzero_si512();
          for (int64_t i = 0; i < blocksize; i += 16) {
            const __m512 v = load16<E>(src + i);
            _mm512_store_ps(vb + i, v);
            mv = _mm512_max_epu32(mv, _mm512_and_si512(_mm512_castps_si512(v), abs_mask));
          }
          m[j] = mv;
        }
        const __m512i r = transpose_max16(m);
        const __m512 amax =
            _mm512_mask_mov_ps(_mm512_add_ps(_mm512_castsi512_ps(r), _mm512_setzero_ps()),  // as_compared
                               _mm512_cmpgt_epu32_mask(r, _mm512_set1_epi32(0x7f800000)),
                               _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
        _mm512_storeu_ps(absmax + b, amax);
        // bnb::inverse_absmax: the floor's inverse where absmax < 1e-38 or reads as 0 (NaN stays).
        const __mmask16 tiny = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-38f), _CMP_LT_OQ) |
                               _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_EQ_OQ);
        _mm512_store_ps(inv + (b - g0), _mm512_mask_mov_ps(_mm512_div_ps(_mm512_set1_ps(1.0f), amax), tiny,
                                                           _mm512_set1_ps(bnb::inverse_absmax_floor())));
      }
    }
    for (; b < g1; ++b) {
      const int64_t start = b * blocksize;
      const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
      const typename E::type* src = x + start;
      if (!buffered) {
        absmax[b] = block_absmax<E>(src, len);
        inv[0] = bnb::inverse_absmax(absmax[b]);
        continue;
      }
      float* vb = vals + (b - g0) * blocksize;
      const int64_t full = len & ~int64_t(15);
      __m512 m = _mm512_setzero_ps();
      __mmask16 nan = 0;
      for (int64_t i = 0; i < full; i += 16) {
        const __m512 v = load16<E>(src + i);
        _mm512_store_ps(vb + i, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
      }
      float amax = _mm512_reduce_max_ps(m);
      for (int64_t i = full; i < len; ++i) amax = bnb::nan_max_abs(amax, E::load(src[i]));
      absmax[b] = nan ? bnb::bits_float(0x7fc00000u) : amax;
      inv[b - g0] = bnb::inverse_absmax(absmax[b]);
    }
    for (b = g0; b < g1; ++b) {
      const int64_t start = b * blocksize;
      const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
      const typename E::type* src = x + start;
      const float* vb = vals + (b - g0) * blocksize;
      const float inv_s = inv[b - g0];
      const __m512 scale = _mm512_set1_ps(inv_s);
      uint8_t* dst = packed + start / 2;
      const int64_t full64 = len & ~int64_t(63);
      for (int64_t i = 0; i < full64; i += 64) {
        if (buffered) {  // the same values of the next group, which the absmax pass will read
          const char* next = reinterpret_cast<const char*>(src + i) + ahead;
          for (int64_t l = 0; l < 64 * static_cast<int64_t>(sizeof(typename E::type)); l += 64) {
            _mm_prefetch(next + l, _MM_HINT_T0);
          }
        }
        __m512i c[4];
        for (int q = 0; q < 4; ++q) {
          const __m512 v = buffered ? _mm512_load_ps(vb + i + 16 * q) : load16<E>(src + i + 16 * q);
          c[q] = nearest(_mm512_mul_ps(v, scale));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2), pack_nibbles64(c));
      }
      for (int64_t i = full64; i < len; i += 2) {  // the scalar kernel's rule for the last < 64
        const uint8_t hi = static_cast<uint8_t>(bnb::encode_nf4(E::load(src[i]) * inv_s));
        const uint8_t lo = i + 1 < len ? static_cast<uint8_t>(bnb::encode_nf4(E::load(src[i + 1]) * inv_s))
                                       : static_cast<uint8_t>(bnb::encode_nf4(0.0f));
        dst[i / 2] = static_cast<uint8_t>((hi << 4) | lo);
      }
    }
  }
}

}  // namespace

void quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                   int64_t b0, int64_t b1) {
  static const Nf4Buckets buckets(bnb::sorted_4bit(1));
  if (!nf4 || !buckets.ok || (blocksize & 1)) {
    avx2::quantize_4bit(A, dtype, n, blocksize, nf4, packed, absmax, b0, b1);
    return;
  }
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_nf4_t<E>(static_cast<const typename E::type*>(A), n, blocksize, buckets, packed, absmax, b0, b1);
  });
}

// ---- 8-bit block-wise dequantization --------------------------------------------------------------

namespace {

// Block-wise 8-bit dequantization: 64 codes at a time through the code book's byte planes
// (vpermi2b, no gathers), times the block's absmax; gathers for a block's last < 64 values.
template <typename E>
void dequantize_blockwise_t(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                            typename E::type* out, int64_t b0, int64_t b1) {
  const BytePlanes planes(code);
  const __m512i order = unpack_order();
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const uint8_t* src = A + start;
    typename E::type* dst = out + start;
    const int64_t full64 = len & ~int64_t(63);
    for (int64_t i = 0; i < full64; i += 64) {
      __m512 v[4];
      lookup64(src + i, planes, order, absmax[b], v);
      for (int r = 0; r < 4; ++r) store16<E>(dst + i + 16 * r, v[r]);
    }
    const __m512 s = _mm512_set1_ps(absmax[b]);
    const int64_t full = len & ~int64_t(15);
    for (int64_t i = full64; i < full; i += 16) {
      const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      store16<E>(dst + i, _mm512_mul_ps(_mm512_i32gather_ps(idx, code, 4), s));
    }
    for (int64_t i = full; i < len; ++i) dst[i] = E::store(code[src[i]] * absmax[b]);
  }
}

}  // namespace

void dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                          void* out, int32_t dtype, int64_t b0, int64_t b1) {
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_blockwise_t<E>(A, code, absmax, n, blocksize, static_cast<typename E::type*>(out), b0, b1);
  });
}

}  // namespace avx512
}  // namespace bnb_cpu
