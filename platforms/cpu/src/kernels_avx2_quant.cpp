// AVX2 + FMA + F16C 4-bit quantizer (NF4 and FP4); compiled with -mavx2 -mfma -mf16c only.
// Results equal the scalar table's bit for bit. The 8-bit block-wise quantizer and dequantizer are
// in kernels_avx2_blockwise.cpp, the block absmax both use in quant_avx2.h.
//
// Everything here has internal linkage and no standard-library template is instantiated: an
// out-of-line copy shared with a translation unit compiled without -mavx2 could carry AVX2
// instructions to a CPU without them (see bnb/portability.h).
#include <immintrin.h>
#include <stdint.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "kernels.h"
#include "quant_avx2.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {
namespace {

// ---- 4-bit quantization ------------------------------------------------------------------------

// Sorted position (0..15) of the nearest of 16 sorted entries, from their 15 midpoints, in two
// steps with short dependency chains (vpermps is slow on Zen; in-lane vpermilps is not): the group
// g = [v > mids[3]] + [v > mids[7]] + [v > mids[11]], then k = the number of mids[4g .. 4g + 2]
// below v, read from three 4-entry tables; position = 4g + k. The compare masks (0 or -1) are
// summed, so the state is the negated position, and vpermilps reads the low 2 bits of -g: table
// entry (-g) & 3 holds group g's threshold. The compares are "not less or equal", true for NaN:
// NaN -> position 15, as the scalar kernel gives it.
struct Search16 {
  __m256 m3, m7, m11, ta, tb, tc;
  __m256i code_of;  // pshufb table: (-position) & 15 -> 4-bit code, in both lanes

  explicit Search16(const bnb::Sorted4bit& book) {
    const float* mids = book.mids;
    const uint8_t* order = book.order;
    alignas(32) float a[8], b[8], c[8];
    alignas(32) uint8_t fin[32];
    for (int g = 0; g < 4; ++g) {
      for (int lane = 0; lane < 2; ++lane) {
        a[4 * lane + ((4 - g) & 3)] = mids[4 * g];
        b[4 * lane + ((4 - g) & 3)] = mids[4 * g + 1];
        c[4 * lane + ((4 - g) & 3)] = mids[4 * g + 2];
      }
    }
    for (int r = 0; r < 16; ++r) fin[(16 - r) & 15] = fin[16 + ((16 - r) & 15)] = order[r];
    m3 = _mm256_set1_ps(mids[3]);
    m7 = _mm256_set1_ps(mids[7]);
    m11 = _mm256_set1_ps(mids[11]);
    ta = _mm256_load_ps(a);
    tb = _mm256_load_ps(b);
    tc = _mm256_load_ps(c);
    code_of = _mm256_load_si256(reinterpret_cast<const __m256i*>(fin));
  }

  // -position of 8 values, as dwords.
  inline __m256i operator()(__m256 v) const {
    auto gt = [&](__m256 t) { return _mm256_castps_si256(_mm256_cmp_ps(v, t, _CMP_NLE_UQ)); };
    const __m256i g = _mm256_add_epi32(_mm256_add_epi32(gt(m3), gt(m7)), gt(m11));  // -group
    const __m256i k =
        _mm256_add_epi32(_mm256_add_epi32(gt(_mm256_permutevar_ps(ta, g)), gt(_mm256_permutevar_ps(tb, g))),
                         gt(_mm256_permutevar_ps(tc, g)));
    return _mm256_add_epi32(_mm256_slli_epi32(g, 2), k);
  }

  // 32 values' -positions (4 x 8 dwords, in element order) -> 16 bytes of codes, two per byte with
  // the even element in the high nibble.
  inline __m128i pack32(const __m256i* s) const {
    const __m256i w01 = _mm256_packs_epi32(s[0], s[1]);  // lane L: s0[4L..4L+3], s1[4L..4L+3]
    const __m256i w23 = _mm256_packs_epi32(s[2], s[3]);
    __m256i b = _mm256_packs_epi16(w01, w23);  // lane L: s0[4L..], s1[4L..], s2[4L..], s3[4L..]
    b = _mm256_shuffle_epi8(code_of, _mm256_and_si256(b, _mm256_set1_epi8(15)));
    const __m256i pairs = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0110));  // 16 * even + odd
    const __m256i bytes = _mm256_packus_epi16(pairs, pairs);                   // lane L: 2-byte units of s0, s1, s2, s3
    return _mm_unpacklo_epi16(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
  }
};

template <typename E>
void quantize_4bit_t(const typename E::type* x, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                     int64_t b0, int64_t b1) {
  const bnb::Sorted4bit book = bnb::sorted_4bit(nf4);
  const float* mids = book.mids;
  const uint8_t* order = book.order;
  const Search16 search(book);
  auto code_of = [&](float v) {  // the scalar kernel's rule, for the last < 32 values of a block
    uint32_t p = 0;
    for (int j = 0; j < 15; ++j) p += v > mids[j] ? 1u : 0u;
    return order[v != v ? 15u : p];
  };

  for_each_block<E>(x, n, blocksize, b0, b1, absmax,
                    [&](int64_t, int64_t start, int64_t len, float inv_s, int64_t ahead) {
                      const typename E::type* src = x + start;
                      uint8_t* dst = packed + start / 2;
                      const __m256 s = _mm256_set1_ps(inv_s);
                      const int64_t full = len & ~int64_t(31);
                      for (int64_t i = 0; i < full; i += 32) {
                        prefetch32(src + i, ahead);
                        __m256i r[4];
                        for (int q = 0; q < 4; ++q) r[q] = search(_mm256_mul_ps(load8<E>(src + i + 8 * q), s));
                        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i / 2), search.pack32(r));
                      }
                      for (int64_t i = full; i < len; i += 2) {
                        const uint8_t hi = code_of(E::load(src[i]) * inv_s);
                        const uint8_t lo = i + 1 < len ? code_of(E::load(src[i + 1]) * inv_s) : order[7];
                        dst[i / 2] = static_cast<uint8_t>((hi << 4) | lo);
                      }
                    });
}

}  // namespace

void quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                   int64_t b0, int64_t b1) {
  if (blocksize & 1) {  // never from the C ABI (powers of two); blocks would share bytes
    kernels_scalar.quantize_4bit(A, dtype, n, blocksize, nf4, packed, absmax, b0, b1);
    return;
  }
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_4bit_t<E>(static_cast<const typename E::type*>(A), n, blocksize, nf4, packed, absmax, b0, b1);
  });
}

}  // namespace avx2
}  // namespace bnb_cpu
