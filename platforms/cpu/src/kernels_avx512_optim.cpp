// AVX-512 (+VBMI) fused 8-bit block-wise optimizer update: per 256-element block, dequantize the
// states, run the update of optimizer_math.h on 16 lanes at a time, requantize with a fresh
// absmax; the states never leave registers and the L1-resident block buffer.
//
// The work is spread over the shuffle port and the load ports. The 256-entry code books are looked
// up one byte plane at a time with vpermi2b (64 codes per instruction) for the first state, and
// gathered for the others. The 8-bit state rule's nearest code comes from a table of the scaled
// value's bits (Opt8Args::keys1: one gather and one compare per 16 values); blocks with inf or NaN,
// and code books without that table, take a binary search on 16-bit lanes over the grid indices
// at which the code changes (vpermw / vpermi2w). Both give exactly the code of the 65536-point
// grid table: bit-identical to the portable kernel.
#include <float.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/numeric.h"
#include "bnb/optimizer_math.h"
#include "element.h"
#include "isa.h"
#include "kernels.h"
#include "opt8_prefetch.h"
#include "optimizer_dispatch.h"
#include "simd_avx512.h"

namespace bnb_cpu {
namespace avx512 {

namespace {

// 16 f32 lanes for the templated math of optimizer_math.h (one IEEE rounding per operation).
struct VF {
  __m512 v;
  VF(float x) : v(_mm512_set1_ps(x)) {}  // NOLINT: broadcasting, as the scalar code's constants
  explicit VF(__m512 x) : v(x) {}
};

inline VF add_rn(VF a, VF b) { return VF(_mm512_add_ps(a.v, b.v)); }
inline VF sub_rn(VF a, VF b) { return VF(_mm512_sub_ps(a.v, b.v)); }
inline VF mul_rn(VF a, VF b) { return VF(_mm512_mul_ps(a.v, b.v)); }
inline VF div_rn(VF a, VF b) { return VF(_mm512_div_ps(a.v, b.v)); }
inline VF sqrt_rn(VF a) { return VF(_mm512_sqrt_ps(a.v)); }
inline VF fma_rn(VF a, VF b, VF c) { return VF(_mm512_fmadd_ps(a.v, b.v, c.v)); }
// x / b without the divider, for AdEMAMix's two per-call divisors: q = x * rb, then Markstein's
// correction q + (x - q b) rb, with x - q b exact (one FMA). The sum rounds to div_rn(x, b)
// whenever rb = div_rn(1, b) and nothing under- or overflows, which |x| within [2^-60, 2^60] and b
// within [2^-30, 2^30] (else rb = 0) ensure; a zero x is its own quotient (b > 0). A vector with
// any other lane divides. Where b is 1 the quotient is x itself, as the division would give it
// (AdEMAMix's first bias correction 1 - beta1^t rounds to 1 from step 165 at beta1 = 0.9).
inline VF div_const_rn(VF x, float b, float rb) {
  if (b == 1.0f) return x;
  const __m512 vb = _mm512_set1_ps(b);
  if (rb != 0.0f) {
    const __m512 vr = _mm512_set1_ps(rb);
    const __m512 q = _mm512_mul_ps(x.v, vr);
    const __m512 q1 = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, vb, x.v), vr, q);
    const __m512i ax = _mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(0x7fffffff));
    const __m512i lo = _mm512_set1_epi32(0x21800000);  // 2^-60; 2^60 is 0x5d800000
    const __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(ax, lo), _mm512_set1_epi32(0x5d800000 - 0x21800000));
    const __mmask16 zero = _mm512_testn_epi32_mask(ax, ax);
    if (static_cast<__mmask16>(in | zero) == 0xffff) return VF(_mm512_mask_mov_ps(x.v, in, q1));
  }
  return VF(_mm512_div_ps(x.v, vb));
}

// torch.sign: -1, 0 (of either sign) or 1, and 0 for NaN.
inline VF sign_of(VF x) {
  const __m512 x_or_zero = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v, x.v, _CMP_ORD_Q), x.v);  // NaN -> +0
  __m512 r =
      _mm512_mask_mov_ps(x_or_zero, _mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f));
  r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
  return VF(r);
}

// The 8-bit state rule's code as a search over `bound` (bound[j] = first grid index whose code is
// >= j, non-decreasing; code(k) = #{j >= 1 : bound[j] <= k}): an 8-level binary search on 32 u16
// lanes. The decisions collect in r bit-reversed (level l sets bit l, i.e. bit 7 - l of the code),
// so r itself indexes each level's table (vpermw reads the low 5 bits, vpermi2w 6) without a shift;
// the codes are bit-reversed back once, as bytes.
struct BoundSearch {
  uint16_t first;                   // level 0: bound[128]
  alignas(64) uint16_t lvl[5][32];  // levels 1..5 (entries < 2^l used)
  alignas(64) uint16_t lvl6[64];
  alignas(64) uint16_t lvl7[128];
  ByteReverse reverse;

  // Entry r of level l: bound[code prefix decided by r + step], step = 128 >> l.
  static uint16_t entry(const uint16_t* bound, int l, int r) {
    int prefix = 0;
    for (int i = 0; i < l; ++i) prefix |= ((r >> i) & 1) << (7 - i);
    return bound[prefix + (128 >> l)];
  }

  explicit BoundSearch(const uint16_t* bound) {
    memset(lvl, 0, sizeof(lvl));
    first = bound[128];
    for (int l = 1; l <= 5; ++l)
      for (int r = 0; r < (1 << l); ++r) lvl[l - 1][r] = entry(bound, l, r);
    for (int r = 0; r < 64; ++r) lvl6[r] = entry(bound, 6, r);
    for (int r = 0; r < 128; ++r) lvl7[r] = entry(bound, 7, r);
  }

  // Bit-reversed codes of N * 32 grid indices, the N searches interleaved level by level: each
  // level waits on the one before (permute, compare, masked add), so one search alone would leave
  // the core idle most of the time.
  template <int N>
  void find(const __m512i* k, __m512i* r) const {
    const __m512i t0 = _mm512_set1_epi16(static_cast<short>(first));
    for (int v = 0; v < N; ++v) r[v] = _mm512_maskz_mov_epi16(_mm512_cmple_epu16_mask(t0, k[v]), _mm512_set1_epi16(1));
    for (int l = 1; l <= 5; ++l) {
      const __m512i tab = _mm512_load_si512(lvl[l - 1]);
      const __m512i bit = _mm512_set1_epi16(static_cast<short>(1 << l));
      for (int v = 0; v < N; ++v) {
        const __m512i t = _mm512_permutexvar_epi16(r[v], tab);
        r[v] = _mm512_mask_add_epi16(r[v], _mm512_cmple_epu16_mask(t, k[v]), r[v], bit);
      }
    }
    const __m512i t6a = _mm512_load_si512(lvl6), t6b = _mm512_load_si512(lvl6 + 32);
    for (int v = 0; v < N; ++v) {
      const __m512i t = _mm512_permutex2var_epi16(t6a, r[v], t6b);
      r[v] = _mm512_mask_add_epi16(r[v], _mm512_cmple_epu16_mask(t, k[v]), r[v], _mm512_set1_epi16(64));
    }
    const __m512i t7a = _mm512_load_si512(lvl7), t7b = _mm512_load_si512(lvl7 + 32);
    const __m512i t7c = _mm512_load_si512(lvl7 + 64), t7d = _mm512_load_si512(lvl7 + 96);
    for (int v = 0; v < N; ++v) {
      const __m512i lo = _mm512_permutex2var_epi16(t7a, r[v], t7b);
      const __m512i hi = _mm512_permutex2var_epi16(t7c, r[v], t7d);
      const __m512i t = _mm512_mask_mov_epi16(lo, _mm512_test_epi16_mask(r[v], _mm512_set1_epi16(64)), hi);
      r[v] = _mm512_mask_add_epi16(r[v], _mm512_cmple_epu16_mask(t, k[v]), r[v], _mm512_set1_epi16(128));
    }
  }

  // 64 codes in value order from two vectors of bit-reversed codes in grid_index32's lane order
  // (values 0-31, then 32-63): their low bytes gathered by one vpermt2b, then bit-reversed.
  __m512i codes64(__m512i r0, __m512i r1, __m512i packed_order) const {
    return reverse(_mm512_permutex2var_epi8(r0, packed_order, r1));
  }
};

// Grid indices floor((clamp(v * inv, -1, 1) + 1) * 32767.5 + 0.5) of the 32 values at v as u16,
// NaN -> 65535: cvtt gives 0x80000000 for NaN and at most 65536 otherwise, the unsigned minimum
// with 65535 clamps both, and vpackusdw then packs exactly. The clamp of s is implicit: |v| <=
// absmax, so |v * inv| <= 1 + 2^-23, whose index is the clamped one (0 or 65535). One pack for 32
// values leaves them in its in-lane order, u16 lane 8i + 4h + t holding value 16h + 4i + t; the
// search is lane-wise, and kPackedOrder puts the codes back in order.
inline __m512i grid_index32(const float* v, __m512 inv) {
  __m512i w[2];
  for (int h = 0; h < 2; ++h) {
    const __m512 s = _mm512_mul_ps(_mm512_load_ps(v + 16 * h), inv);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_add_ps(s, _mm512_set1_ps(1.0f)), _mm512_set1_ps(32767.5f)),
                                   _mm512_set1_ps(0.5f));
    w[h] = _mm512_min_epu32(_mm512_cvttps_epi32(t), _mm512_set1_epi32(65535));
  }
  return _mm512_packus_epi32(w[0], w[1]);
}

// The vpermt2b index taking the low bytes of two vectors of 32 u16 lanes in grid_index32's order
// (values 0-31, then 32-63) to 64 bytes in value order.
struct PackedOrder {
  alignas(64) uint8_t index[64];
  constexpr PackedOrder() : index() {
    for (int j = 0; j < 64; ++j) {
      const int x = j % 32, lane = 8 * ((x % 16) / 4) + 4 * (x / 16) + x % 4;
      index[j] = static_cast<uint8_t>(64 * (j / 32) + 2 * lane);
    }
  }
};
constexpr PackedOrder kPackedOrder;

// |x| as bit patterns: their unsigned maximum is the largest |x|, or a NaN's (above inf's).
inline __m512i abs_bits(__m512 x) { return _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)); }

// qmap[codes[i]] * scale for 64 codes by gathers from the f32 code book, in order: the load ports'
// share of the decoding, which lookup64 does on the shuffle port (see opt8_t).
inline void gather64(const uint8_t* codes, const float* qmap, float scale, __m512 out[4]) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int r = 0; r < 4; ++r) {
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * r)));
    out[r] = _mm512_mul_ps(_mm512_i32gather_ps(idx, qmap, 4), s);
  }
}

// The vpermt2b index of the low bytes of 32 dwords, in both halves.
struct LowBytes {
  alignas(64) uint8_t index[64];
  constexpr LowBytes() : index() {
    for (int i = 0; i < 64; ++i) index[i] = static_cast<uint8_t>(4 * (i % 32));
  }
};
constexpr LowBytes kLowBytes;

// Codes of 64 scaled values s from the table of their bits (Opt8Args::keys1): one gather a 16,
// one compare, and the low bytes of the 64 entries gathered into one vector.
inline __m512i key_codes64(const float* v, __m512 inv, const uint32_t* keys) {
  __m512i c[4];
  for (int r = 0; r < 4; ++r) {
    const __m512i b = _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(v + 16 * r), inv));
    const __m512i e = _mm512_i32gather_epi32(_mm512_srli_epi32(b, 15), keys, 4);
    c[r] = _mm512_mask_srli_epi32(e, _mm512_cmpgt_epu32_mask(_mm512_slli_epi32(b, 17), e), e, 8);
  }
  const __m512i low = _mm512_load_si512(kLowBytes.index);
  return _mm512_mask_blend_epi8(0xffffffff00000000ull, _mm512_permutex2var_epi8(c[0], low, c[1]),
                                _mm512_permutex2var_epi8(c[2], low, c[3]));
}

// A block whose codes are still to be written from the table of s's bits: they are written 64
// at a time while the next block's update runs (opt8_t), so that the gathers of the one overlap
// the lookups and the divisions of the other.
struct PendingCodes {
  const float* v = nullptr;  // the block's new state values; nullptr: nothing pending
  uint8_t* codes = nullptr;
  const uint32_t* keys = nullptr;
  __m512 inv = _mm512_setzero_ps();

  void write64(int64_t q) const {
    if (v != nullptr) _mm512_storeu_si512(codes + q, key_codes64(v + q, inv, keys));
  }
};

// New absmax of a 256-value block (NaN sticks, as nan_max_abs), given the lane-wise unsigned
// maximum of the block's abs_bits (kept while the values were computed), and its codes: pending
// for the table of s's bits when there is one (`keys`) and the block is finite; otherwise, and for
// a block with inf or NaN (whose s are 0 or NaN, outside the table), written at once by the
// search over the grid.
inline PendingCodes requantize_block(const float* v, __m512i mb, const BoundSearch& search, const uint32_t* keys,
                                     uint8_t* codes, float* absmax) {
  float am = bnb::bits_float(_mm512_reduce_max_epu32(mb));
  if (am != am) am = bnb::state_absmax(v, 256);  // which NaN: the one the portable kernel keeps
  *absmax = am;
  PendingCodes pending;
  pending.inv = _mm512_set1_ps(bnb::inverse_absmax(am));
  if (keys != nullptr && am <= FLT_MAX) {
    pending.v = v;
    pending.codes = codes;
    pending.keys = keys;
    return pending;
  }
  __m512i k[8], r[8];
  for (int j = 0; j < 8; ++j) k[j] = grid_index32(v + 32 * j, pending.inv);
  search.find<8>(k, r);
  const __m512i order = _mm512_load_si512(kPackedOrder.index);
  for (int j = 0; j < 8; j += 2) _mm512_storeu_si512(codes + 32 * j, search.codes64(r[j], r[j + 1], order));
  return PendingCodes();
}

template <int OPT, typename E>
void opt8_t(const Opt8Args& a, int64_t i0, int64_t i1) {
  constexpr int64_t BS = BNB_OPTIM_STATE_BLOCKSIZE;
  constexpr bool kSlow = OPT == BNB_OPTIM_ADEMAMIX;
  bnb::OptimizerConsts c = *a.c;
  c.optimizer = OPT;  // a compile-time constant: the switches of the math fold away
  using T = typename E::type;
  const T* g = static_cast<const T*>(a.g);
  T* p = static_cast<T*>(a.p);
  const bool two = a.state2 != nullptr;
  const int64_t blocks = (a.n + BS - 1) / BS;
  const bool scale_g = a.gnorm_scale != 1.0f;
  const bool skip = c.skip_zeros != 0;
  const BytePlanes planes1(a.qmap1);
  // Where gathers are slow (optimizer_gathers()), the second moment is looked up on the byte
  // planes as the first, and the codes come from the search over the grid instead of the table of
  // s's bits: the same values and codes without a gather.
  const bool gathers = optimizer_gathers();
  const BytePlanes planes2(two ? a.qmap2 : a.qmap1);
  const uint32_t* keys1 = gathers ? a.keys1 : nullptr;
  const uint32_t* keys2 = gathers ? a.keys2 : nullptr;
  const BoundSearch search1(a.bound1);
  const BoundSearch search2(two ? a.bound2 : a.bound1);
  const __m512i order = unpack_order();
  // The new state values of the block being updated and of the one whose codes are pending.
  alignas(64) float buf[2][3][BS];
  PendingCodes pend1, pend1b, pend2;
  const auto write_pending = [&](int64_t q) BNB_INLINE_LAMBDA {
    pend1.write64(q);
    if (kSlow) pend1b.write64(q);
    if (two) pend2.write64(q);
  };
  int cur = 0;
  int64_t start = i0;
  for (; start + BS <= i1; start += BS, cur ^= 1) {
    const int64_t b = start / BS;
    float* v1 = buf[cur][0];
    float* v1b = buf[cur][1];
    float* v2 = buf[cur][2];
    __m512i mx1 = _mm512_setzero_si512(), mx1b = _mm512_setzero_si512(), mx2 = _mm512_setzero_si512();
    for (int64_t q = 0; q < BS; q += 64) {
      __m512 m1v[4], m1bv[4], m2v[4];
      prefetch_opt8_streams(a, g, p, start + q + kOpt8PrefetchAhead, i1, kSlow, two);
      // The first moments' codes are looked up on the shuffle port, the second moment's
      // gathered: with the requantization's gathers that balances the two (1 thread in cache, ns
      // a parameter: Adam8bit 0.88 -> 0.85; gathering the first moments as well is slower).
      lookup64(a.state1 + start + q, planes1, order, a.absmax1[b], m1v);
      if (kSlow) lookup64(a.state1 + a.n + start + q, planes1, order, a.absmax1[blocks + b], m1bv);
      if (two) {
        if (gathers) {
          gather64(a.state2 + start + q, a.qmap2, a.absmax2[b], m2v);
        } else {
          lookup64(a.state2 + start + q, planes2, order, a.absmax2[b], m2v);
        }
      }
      for (int r = 0; r < 4; ++r) {
        const int64_t i = start + q + 16 * r;
        VF gv(load16<E>(g + i));
        if (scale_g) gv = mul_rn(gv, VF(a.gnorm_scale));
        const VF pv(load16<E>(p + i));
        VF m1(m1v[r]), m1b(kSlow ? m1bv[r] : _mm512_setzero_ps()), m2(two ? m2v[r] : _mm512_setzero_ps());
        const VF d = bnb::optimizer_direction(c, gv, pv, m1, m1b, m2);
        const VF pn = bnb::apply_update(c, pv, d, c.lr);
        __mmask16 upd = 0xffff;
        if (skip) upd = _mm512_cmp_ps_mask(gv.v, _mm512_setzero_ps(), _CMP_NEQ_UQ);  // g == 0: keep p and states
        store16<E>(p + i, pn.v, upd);
        const __m512 n1 = _mm512_mask_mov_ps(m1v[r], upd, m1.v);
        _mm512_store_ps(v1 + q + 16 * r, n1);
        mx1 = _mm512_max_epu32(mx1, abs_bits(n1));
        if (kSlow) {
          const __m512 n1b = _mm512_mask_mov_ps(m1bv[r], upd, m1b.v);
          _mm512_store_ps(v1b + q + 16 * r, n1b);
          mx1b = _mm512_max_epu32(mx1b, abs_bits(n1b));
        }
        if (two) {
          const __m512 n2 = _mm512_mask_mov_ps(m2v[r], upd, m2.v);
          _mm512_store_ps(v2 + q + 16 * r, n2);
          mx2 = _mm512_max_epu32(mx2, abs_bits(n2));
        }
      }
      write_pending(q);
    }
    pend1 = requantize_block(v1, mx1, search1, keys1, a.state1 + start, a.absmax1 + b);
    if (kSlow) pend1b = requantize_block(v1b, mx1b, search1, keys1, a.state1 + a.n + start, a.absmax1 + blocks + b);
    if (two) pend2 = requantize_block(v2, mx2, search2, keys2, a.state2 + start, a.absmax2 + b);
  }
  for (int64_t q = 0; q < BS; q += 64) write_pending(q);
  if (start < i1) kernels_scalar.optimizer_8bit_blockwise(a, start, i1);  // a partial last block
}

template <typename E>
void opt8_e(const Opt8Args& a, int64_t i0, int64_t i1) {
  return dispatch_optimizer(a.c->optimizer, [&](auto kind) { return opt8_t<decltype(kind)::value, E>(a, i0, i1); });
}

}  // namespace

void optimizer_8bit_blockwise(const Opt8Args& a, int64_t i0, int64_t i1) {
  if (a.bound1 == nullptr || (a.state2 != nullptr && a.bound2 == nullptr)) {
    return kernels_scalar.optimizer_8bit_blockwise(a, i0, i1);  // a code book the search cannot take
  }
  dispatch_float(a.dtype, [&](auto e) { opt8_e<decltype(e)>(a, i0, i1); });
}

}  // namespace avx512
}  // namespace bnb_cpu
