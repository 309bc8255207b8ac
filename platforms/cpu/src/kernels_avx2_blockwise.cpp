// AVX2 + FMA + F16C 8-bit block-wise quantizer and dequantizer; compiled with -mavx2 -mfma -mf16c
// only. Results equal the scalar table's bit for bit.
//
// Everything here has internal linkage and no standard-library template is instantiated: an
// out-of-line copy shared with a translation unit compiled without -mavx2 could carry AVX2
// instructions to a CPU without them (see bnb/portability.h).
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "fault_injection.h"
#include "kernels.h"
#include "quant_avx2.h"
#include "simd_avx2.h"

#if !defined(_WIN32)
#include <sched.h>
#endif

namespace bnb_cpu {
namespace avx2 {
namespace {

// ---- 8-bit block-wise quantization ----------------------------------------------------------------

// gen_nearest_256 of the scalar kernels, for any code book (sorted or not): a branch-free binary
// search over the 255 midpoints, NaN -> 255.
inline uint32_t nearest_256(const float* mids, float v) {
  uint32_t p = 0;
  for (uint32_t s = 128; s > 0; s >>= 1) p += (mids[p + s - 1] < v) ? s : 0u;
  return v != v ? 255u : p;
}

// The same search on 8 lanes, with gathers: bit for bit nearest_256 for any code book.
inline __m256i nearest_256_x8(const float* mids, __m256 v) {
  __m256i p = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(_mm256_set1_ps(mids[127]), v, _CMP_LT_OQ)),
                               _mm256_set1_epi32(128));
  for (int s = 64; s > 0; s >>= 1) {
    const __m256 t = _mm256_i32gather_ps(mids, _mm256_add_epi32(p, _mm256_set1_epi32(s - 1)), 4);
    p = _mm256_add_epi32(p,
                         _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(t, v, _CMP_LT_OQ)), _mm256_set1_epi32(s)));
  }
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_or_si256(p, _mm256_and_si256(nan, _mm256_set1_epi32(255)));
}

// Bucket table of a sorted code book. A bucket is the set of floats sharing the top 16 bits of
// their pattern (sign, exponent, 7 mantissa bits): an interval of values. When no bucket holds
// more than one midpoint, the code of a finite v in bucket k = bits(v) >> 16 is
//   p_k + [m_k < v],
// p_k the number of midpoints below the bucket's smallest value and m_k the one midpoint inside it
// (if any). Within a bucket, m_k < v compares the low 16 bits of the patterns (reversed for
// negative values), so one 32-bit entry per bucket answers with one add:
//   code = (F[k] + sign(bits(v), bits(v))) >> 16     (vpsignd: bits, or -bits when negative)
// with F[k] = E_k - (k << 16) for positive buckets, E_k + (k << 16) for negative ones, and E_k
// holding p_k (or p_k + 1) above a 16-bit threshold whose carry (borrow) adds the compare.
struct BucketTable {
  float code[256];
  float mids[255];
  bool ok;      // the code book allows the table (sorted midpoints, at most one per bucket)
  uint32_t* F;  // 65536 entries when ok
};

// Number of mids strictly below v, for sorted mids.
inline uint32_t count_below(const float* mids, float v) { return nearest_256(mids, v); }

bool build_buckets(const float* mids, uint32_t* F) {
  for (int j = 0; j < 255; ++j) {
    if (mids[j] != mids[j]) return false;
    if (j + 1 < 255 && !(mids[j] <= mids[j + 1])) return false;
  }
  // Buckets in increasing order of value: the negative ones from -inf up to -0, then the positive
  // ones from +0 up to +inf; p counts the midpoints below the bucket's smallest value, q those
  // below its largest (both only grow).
  uint32_t p = 0, q = 0;
  auto fill = [&](uint32_t k) {
    const bool neg = (k & 0x8000u) != 0;
    const uint32_t mag = k & 0x7fffu;
    if (mag > 0x7f80u) {  // NaN only: never looked up (NaN blocks take another path)
      F[k] = 0;
      return true;
    }
    const float near0 = bnb::bits_float(k << 16);  // the bucket's value nearest to 0
    const float far = bnb::bits_float(mag == 0x7f80u ? k << 16 : (k << 16) | 0xffffu);  // farthest
    const float lo = neg ? far : near0, hi = neg ? near0 : far;
    while (p < 255 && mids[p] < lo) ++p;
    if (q < p) q = p;
    while (q < 255 && mids[q] < hi) ++q;
    if (q > p + 1) return false;
    uint32_t e;
    if (!neg) {
      // code = p + [m < v] = (E + low(v)) >> 16 with E = p << 16 | (0xffff - low(m)); no midpoint:
      // low(m) = 0xffff. A midpoint -0.0 in bucket +0 is the value 0, low bits 0.
      const uint32_t lm = q == p ? 0xffffu : (mids[p] == 0.0f ? 0u : bnb::float_bits(mids[p]) & 0xffffu);
      e = (p << 16) + (0xffffu - lm);
      F[k] = e - (k << 16);
    } else {
      // m < v <=> low(v) < low(m): code = (E - low(v)) >> 16 with E = (p + 1) << 16 | (low(m) - 1);
      // no midpoint: E = p << 16 | 0xffff.
      const uint32_t lm = bnb::float_bits(mids[p]) & 0xffffu;
      e = (q == p || lm == 0) ? (p << 16) + 0xffffu : ((p + 1) << 16) + (lm - 1);
      F[k] = e + (k << 16);
    }
    return true;
  };
  for (uint32_t k = 0xff80u; k >= 0x8000u; --k) {
    if (!fill(k)) return false;
  }
  for (uint32_t k = 0; k <= 0x7f80u; ++k) {
    if (!fill(k)) return false;
  }
  for (uint32_t k = 0x7f81u; k < 0x8000u; ++k) F[k] = 0;
  for (uint32_t k = 0xff81u; k <= 0xffffu; ++k) F[k] = 0;
  return true;
}

// nullptr when the memory cannot be had (the caller then searches, and a later call tries again);
// a code book without the bucket structure gets a table with ok false, which is kept.
BucketTable* new_table(const float* code) {
  if (bnb_cpu::fail_allocation("bucket table")) return nullptr;
  BucketTable* t = static_cast<BucketTable*>(malloc(sizeof(BucketTable)));
  if (t == nullptr) return nullptr;
  t->F = bnb_cpu::fail_allocation("bucket table index") ? nullptr
                                                        : static_cast<uint32_t*>(malloc(65536 * sizeof(uint32_t)));
  if (t->F == nullptr) {
    free(t);
    return nullptr;
  }
  memcpy(t->code, code, sizeof(t->code));
  for (int i = 0; i < 255; ++i) t->mids[i] = bnb::midpoint(code[i], code[i + 1]);
  t->ok = build_buckets(t->mids, t->F);
  if (!t->ok) {
    free(t->F);
    t->F = nullptr;
  }
  return t;
}

void free_table(BucketTable* t) {
  if (t == nullptr) return;
  free(t->F);
  free(t);
}

// Tables of the code books seen, built once each and kept for the life of the process (at most
// kSlots; a further code book gets a table of its own per call). Slots are written once, then
// published by the release store of the count; lookups take no lock.
constexpr int kSlots = 16;
BucketTable* g_slots[kSlots];
int g_count = 0;
int g_lock = 0;

const BucketTable* find_table(const float* code) {
  const int count = __atomic_load_n(&g_count, __ATOMIC_ACQUIRE);
  for (int i = 0; i < count; ++i) {
    if (memcmp(g_slots[i]->code, code, sizeof(g_slots[i]->code)) == 0) return g_slots[i];
  }
  return nullptr;
}

// The cached table of `code`, built on first use; nullptr when the cache is full or the memory
// for a new table cannot be had.
const BucketTable* cached_table(const float* code) {
  if (const BucketTable* t = find_table(code)) return t;
  while (__atomic_exchange_n(&g_lock, 1, __ATOMIC_ACQUIRE) != 0) {
#if !defined(_WIN32)
    sched_yield();
#else
    _mm_pause();
#endif
  }
  const BucketTable* t = find_table(code);  // another thread may have built it meanwhile
  if (t == nullptr && g_count < kSlots) {
    BucketTable* fresh = new_table(code);
    if (fresh != nullptr) {
      g_slots[g_count] = fresh;
      __atomic_store_n(&g_count, g_count + 1, __ATOMIC_RELEASE);
      t = fresh;
    }
  }
  __atomic_store_n(&g_lock, 0, __ATOMIC_RELEASE);
  return t;
}

// F[key] for 8 keys (< 65536), with scalar loads assembled in a vector: about twice as fast as
// vpgatherdd on Zen 3.
inline __m256i lookup8(const uint32_t* F, __m256i key) {
  const int* t = reinterpret_cast<const int*>(F);
  const __m128i k0 = _mm256_castsi256_si128(key), k1 = _mm256_extracti128_si256(key, 1);
  const uint64_t a0 = static_cast<uint64_t>(_mm_cvtsi128_si64(k0));
  const uint64_t a1 = static_cast<uint64_t>(_mm_extract_epi64(k0, 1));
  const uint64_t a2 = static_cast<uint64_t>(_mm_cvtsi128_si64(k1));
  const uint64_t a3 = static_cast<uint64_t>(_mm_extract_epi64(k1, 1));
  __m128i lo = _mm_cvtsi32_si128(t[static_cast<uint32_t>(a0)]);
  lo = _mm_insert_epi32(lo, t[a0 >> 32], 1);
  lo = _mm_insert_epi32(lo, t[static_cast<uint32_t>(a1)], 2);
  lo = _mm_insert_epi32(lo, t[a1 >> 32], 3);
  __m128i hi = _mm_cvtsi32_si128(t[static_cast<uint32_t>(a2)]);
  hi = _mm_insert_epi32(hi, t[a2 >> 32], 1);
  hi = _mm_insert_epi32(hi, t[static_cast<uint32_t>(a3)], 2);
  hi = _mm_insert_epi32(hi, t[a3 >> 32], 3);
  return _mm256_set_m128i(hi, lo);
}

// 32 codes (4 x 8 dwords holding 0..255, in element order) as 32 bytes in element order.
inline __m256i codes32(const __m256i* r) {
  const __m256i w01 = _mm256_packus_epi32(r[0], r[1]);  // lane L: r0[4L..4L+3], r1[4L..4L+3]
  const __m256i w23 = _mm256_packus_epi32(r[2], r[3]);
  const __m256i b = _mm256_packus_epi16(w01, w23);  // lane L: r0[4L..], r1[4L..], r2[4L..], r3[4L..]
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <typename E>
void quantize_blockwise_t(const typename E::type* x, const float* code, int64_t n, int64_t blocksize, uint8_t* out,
                          float* absmax, int64_t b0, int64_t b1) {
  // The bucket table when the code book allows one and the call is worth it (built once per code
  // book and cached); otherwise the exact binary search.
  const BucketTable* table = nullptr;
  BucketTable* own = nullptr;
  if (n >= 16384) {
    table = cached_table(code);
    if (table == nullptr && (b1 - b0) * blocksize >= (int64_t(1) << 20)) table = own = new_table(code);
  }
  float mids_local[255];
  const float* mids = mids_local;
  if (table != nullptr) {
    mids = table->mids;
  } else {
    for (int i = 0; i < 255; ++i) mids_local[i] = bnb::midpoint(code[i], code[i + 1]);
  }
  const uint32_t* F = table != nullptr && table->ok ? table->F : nullptr;

  for_each_block<E>(x, n, blocksize, b0, b1, absmax,
                    [&](int64_t b, int64_t start, int64_t len, float inv_s, int64_t ahead) {
                      const typename E::type* src = x + start;
                      uint8_t* dst = out + start;
                      const float amax = absmax[b];
                      const __m256 s = _mm256_set1_ps(inv_s);
                      const int64_t full = len & ~int64_t(31);
                      if (amax != amax) {  // inv is NaN: every value is NaN -> 255
                        memset(dst, 255, static_cast<size_t>(len));
                        return;
                      }
                      if (F != nullptr && amax <= 3.4028234663852886e38f) {
                        // Finite absmax: every v = x * inv is finite, |v| <= ~1.
                        for (int64_t i = 0; i < full; i += 32) {
                          prefetch32(src + i, ahead);
                          __m256i r[4];
                          for (int q = 0; q < 4; ++q) {
                            const __m256i bits = _mm256_castps_si256(_mm256_mul_ps(load8<E>(src + i + 8 * q), s));
                            const __m256i e = lookup8(F, _mm256_srli_epi32(bits, 16));
                            r[q] = _mm256_srli_epi32(_mm256_add_epi32(e, _mm256_sign_epi32(bits, bits)), 16);
                          }
                          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), codes32(r));
                        }
                      } else {
                        for (int64_t i = 0; i < full; i += 32) {
                          __m256i r[4];
                          for (int q = 0; q < 4; ++q) {
                            r[q] = nearest_256_x8(mids, _mm256_mul_ps(load8<E>(src + i + 8 * q), s));
                          }
                          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), codes32(r));
                        }
                      }
                      for (int64_t i = full; i < len; ++i)
                        dst[i] = static_cast<uint8_t>(nearest_256(mids, E::load(src[i]) * inv_s));
                    });
  free_table(own);
}

// ---- 8-bit block-wise dequantization ----------------------------------------------------------

// The 8 table entries named by the 8 codes (bytes) of c, assembled in a vector (scalar loads:
// gathers are slower on Zen 3).
inline __m256i lookup8(const uint32_t* t, uint64_t c) {
  const int* ti = reinterpret_cast<const int*>(t);
  __m128i lo = _mm_cvtsi32_si128(ti[c & 255]);
  lo = _mm_insert_epi32(lo, ti[(c >> 8) & 255], 1);
  lo = _mm_insert_epi32(lo, ti[(c >> 16) & 255], 2);
  lo = _mm_insert_epi32(lo, ti[(c >> 24) & 255], 3);
  __m128i hi = _mm_cvtsi32_si128(ti[(c >> 32) & 255]);
  hi = _mm_insert_epi32(hi, ti[(c >> 40) & 255], 1);
  hi = _mm_insert_epi32(hi, ti[(c >> 48) & 255], 2);
  hi = _mm_insert_epi32(hi, ti[c >> 56], 3);
  return _mm256_set_m128i(hi, lo);
}

inline __m128i lookup8(const uint16_t* t, uint64_t c) {
  __m128i v = _mm_cvtsi32_si128(t[c & 255]);
  v = _mm_insert_epi16(v, t[(c >> 8) & 255], 1);
  v = _mm_insert_epi16(v, t[(c >> 16) & 255], 2);
  v = _mm_insert_epi16(v, t[(c >> 24) & 255], 3);
  v = _mm_insert_epi16(v, t[(c >> 32) & 255], 4);
  v = _mm_insert_epi16(v, t[(c >> 40) & 255], 5);
  v = _mm_insert_epi16(v, t[(c >> 48) & 255], 6);
  return _mm_insert_epi16(v, t[c >> 56], 7);
}

inline void store_out(uint32_t* p, __m256i v, bool stream) {
  if (stream) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
}

inline void store_out(uint16_t* p, __m128i v, bool stream) {
  if (stream) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), v);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
  }
}

// Outputs of more than this many bytes are written with streaming stores (they would not stay in
// the caches anyway, and streaming saves reading every line before writing it).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

template <typename E>
void dequantize_blockwise_t(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                            typename E::type* out, int64_t b0, int64_t b1) {
  using T = typename E::type;
  using U = typename std::conditional<E::kDtype == BNB_DTYPE_F32, uint32_t, uint16_t>::type;
  constexpr uintptr_t kAlign = sizeof(U) == 4 ? 32 : 16;  // of the streaming stores (8 elements)
  const bool large = n * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
  alignas(32) U table[256];  // a block's 256 outputs
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = start + blocksize <= n ? blocksize : n - start;
    const uint8_t* src = A + start;
    T* dst = out + start;
    const float sc = absmax[b];
    const __m256 s = _mm256_set1_ps(sc);
    int64_t i = 0;
    if (len >= 512) {
      // Whole blocks of at least 512: the block's 256 outputs once, then table lookups.
      for (int c = 0; c < 256; c += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(code + c), s);
        if constexpr (E::kDtype == BNB_DTYPE_F32) {
          _mm256_store_ps(reinterpret_cast<float*>(table + c), v);
        } else {
          _mm_store_si128(reinterpret_cast<__m128i*>(table + c), to_16bit<E>(v));
        }
      }
      U* d = reinterpret_cast<U*>(dst);
      const bool stream = large && (reinterpret_cast<uintptr_t>(d) & (kAlign - 1)) == 0;
      const int64_t full = len & ~int64_t(7);
      for (; i < full; i += 8) {
        uint64_t c;
        memcpy(&c, src + i, 8);
        store_out(d + i, lookup8(table, c), stream);
      }
    } else if constexpr (E::kDtype == BNB_DTYPE_F32) {
      const int64_t full = len & ~int64_t(15);
      for (; i < full; i += 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        const __m256 v0 = _mm256_i32gather_ps(code, _mm256_cvtepu8_epi32(c), 4);
        const __m256 v1 = _mm256_i32gather_ps(code, _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)), 4);
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(v0, s));
        _mm256_storeu_ps(dst + i + 8, _mm256_mul_ps(v1, s));
      }
    } else {
      const int64_t full = len & ~int64_t(15);
      for (; i < full; i += 16) {
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        const __m256 v0 = _mm256_i32gather_ps(code, _mm256_cvtepu8_epi32(c), 4);
        const __m256 v1 = _mm256_i32gather_ps(code, _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)), 4);
        const __m128i h0 = to_16bit<E>(_mm256_mul_ps(v0, s));
        const __m128i h1 = to_16bit<E>(_mm256_mul_ps(v1, s));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_set_m128i(h1, h0));
      }
    }
    for (; i < len; ++i) dst[i] = E::store(code[src[i]] * sc);
  }
  if (large) _mm_sfence();  // streaming stores are weakly ordered: make them visible before returning
}

}  // namespace

void quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize, uint8_t* out,
                        float* absmax, int64_t b0, int64_t b1) {
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_blockwise_t<E>(static_cast<const typename E::type*>(A), code, n, blocksize, out, absmax, b0, b1);
  });
}

void dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                          void* out, int32_t dtype, int64_t b0, int64_t b1) {
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_blockwise_t<E>(A, code, absmax, n, blocksize, static_cast<typename E::type*>(out), b0, b1);
  });
}

}  // namespace avx2
}  // namespace bnb_cpu
