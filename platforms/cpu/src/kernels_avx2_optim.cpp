// AVX2 + FMA + F16C fused optimizer updates (32-bit and 8-bit block-wise states); compiled with
// -mavx2 -mfma -mf16c only.
//
// Both kernels run the templated math of optimizer_math.h on 8 f32 lanes (VF below: one IEEE
// rounding per operation, as the scalar kernel), so they are bit-identical to kernels_scalar.
//
// 8-bit: per 256-element block, the codes are decoded through the 256-entry qmap into an
// L1-resident buffer, the update runs with the new states going to another (their |x| maxima kept
// in registers on the way), and the states are requantized with a fresh absmax through the
// 65536-point grid table (any code book, no search). Both table lookups are scalar loads, not
// gathers: on AMD Zen 3 that took a 1 M-parameter Adam8bit step from 2.74 to 2.35 ns a parameter
// on one core (bench/RESULTS.md).
//
// 32-bit: one pass over g, p and the states; `measure` sums the squared update components in
// double in index order, exactly as the scalar loop does.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bnb/numeric.h"
#include "bnb/optimizer_math.h"
#include "element.h"
#include "kernels.h"
#include "opt8_prefetch.h"
#include "optimizer_dispatch.h"
#include "simd_avx2.h"

namespace bnb_cpu {
namespace avx2 {

namespace {

// 8 f32 lanes for the templated math of optimizer_math.h (one IEEE rounding per operation).
struct VF {
  __m256 v;
  VF(float x) : v(_mm256_set1_ps(x)) {}  // NOLINT: broadcasting, as the scalar code's constants
  explicit VF(__m256 x) : v(x) {}
};

inline VF add_rn(VF a, VF b) { return VF(_mm256_add_ps(a.v, b.v)); }
inline VF sub_rn(VF a, VF b) { return VF(_mm256_sub_ps(a.v, b.v)); }
inline VF mul_rn(VF a, VF b) { return VF(_mm256_mul_ps(a.v, b.v)); }
inline VF div_rn(VF a, VF b) { return VF(_mm256_div_ps(a.v, b.v)); }
inline VF sqrt_rn(VF a) { return VF(_mm256_sqrt_ps(a.v)); }
// x / b for a divisor fixed for the call (optimizer_math.h): x itself where b is 1, as the
// division would give it (AdEMAMix's first bias correction 1 - beta1^t rounds to 1 from step 165
// at beta1 = 0.9), so that a long run's steps spend one division a vector less.
inline VF div_const_rn(VF x, float b, float /*rb*/) { return b == 1.0f ? x : div_rn(x, VF(b)); }
inline VF fma_rn(VF a, VF b, VF c) { return VF(_mm256_fmadd_ps(a.v, b.v, c.v)); }
// torch.sign: -1 or 1 for a non-zero number (its sign bit on 1.0), x itself for zeros, 0 for NaN.
inline VF sign_of(VF x) {
  const __m256 unit = _mm256_or_ps(_mm256_and_ps(x.v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
  const __m256 x_or_zero = _mm256_and_ps(x.v, _mm256_cmp_ps(x.v, x.v, _CMP_ORD_Q));  // NaN lanes -> +0
  return VF(_mm256_blendv_ps(x_or_zero, unit, _mm256_cmp_ps(x.v, _mm256_setzero_ps(), _CMP_NEQ_OQ)));
}

// ---- stores ----------------------------------------------------------------------------------

// Stores v as dtype E; lanes set in `keep` (all-ones f32 lanes) keep the bits already in memory.
template <typename E, bool kKeep>
inline void store8(typename E::type* p, __m256 v, __m256 keep) {
  if constexpr (E::kDtype == BNB_DTYPE_F32) {
    if (kKeep) v = _mm256_blendv_ps(v, _mm256_loadu_ps(p), keep);
    _mm256_storeu_ps(p, v);
  } else {
    __m128i h = to_16bit<E>(v);
    if (kKeep) {
      const __m128i k16 = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(keep)),
                                          _mm256_extracti128_si256(_mm256_castps_si256(keep), 1));
      h = _mm_blendv_epi8(h, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), k16);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  }
}

// ---- 32-bit states ---------------------------------------------------------------------------

template <int OPT>
constexpr bool kTwoStates = OPT == BNB_OPTIM_ADAM || OPT == BNB_OPTIM_ADEMAMIX;

// Adds the squares of the first `count` lanes of u to sq in lane order, in double (exact squares,
// one rounding per addition: the scalar loop's sum).
inline double add_squares(double sq, __m256 u, int count) {
  alignas(32) double t[8];
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(u));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1));
  _mm256_store_pd(t, _mm256_mul_pd(lo, lo));
  _mm256_store_pd(t + 4, _mm256_mul_pd(hi, hi));
  for (int l = 0; l < count; ++l) sq += t[l];
  return sq;
}

// One vector of the 32-bit update at index i of the given arrays; MEASURE: returns the update
// components whose squares the trust-ratio clip sums (states and p untouched).
template <int OPT, typename E, bool MEASURE, bool SKIP>
inline __m256 opt32_step(const bnb::OptimizerConsts& c, const typename E::type* g, typename E::type* p, float* s1,
                         float* s1b, float* s2, int64_t i, bool scale_g, float gs, float lr) {
  constexpr bool kSlow = OPT == BNB_OPTIM_ADEMAMIX;
  VF gv(load8<E>(g + i));
  if (scale_g) gv = mul_rn(gv, VF(gs));
  const VF pv(load8<E>(p + i));
  const __m256 o1 = _mm256_loadu_ps(s1 + i);
  const __m256 o1b = kSlow ? _mm256_loadu_ps(s1b + i) : _mm256_setzero_ps();
  const __m256 o2 = kTwoStates<OPT> ? _mm256_loadu_ps(s2 + i) : _mm256_setzero_ps();
  VF m1(o1), m1b(o1b), m2(o2);
  VF d = bnb::optimizer_direction(c, gv, pv, m1, m1b, m2);
  const __m256 keep = SKIP ? _mm256_cmp_ps(gv.v, _mm256_setzero_ps(), _CMP_EQ_OQ) : _mm256_setzero_ps();
  if constexpr (MEASURE) {
    if (SKIP) d = VF(_mm256_andnot_ps(keep, d.v));
    if (OPT == BNB_OPTIM_ADAM) d = mul_rn(d, VF(c.c1_over_c2));  // optimizer_unorm_component
    return d.v;
  } else {
    const VF pn = bnb::apply_update(c, pv, d, lr);
    store8<E, SKIP>(p + i, pn.v, keep);
    _mm256_storeu_ps(s1 + i, SKIP ? _mm256_blendv_ps(m1.v, o1, keep) : m1.v);
    if (kSlow) _mm256_storeu_ps(s1b + i, SKIP ? _mm256_blendv_ps(m1b.v, o1b, keep) : m1b.v);
    if (kTwoStates<OPT>) _mm256_storeu_ps(s2 + i, SKIP ? _mm256_blendv_ps(m2.v, o2, keep) : m2.v);
    return _mm256_setzero_ps();
  }
}

template <int OPT, typename E, bool MEASURE, bool SKIP>
double opt32_t(const Opt32Args& a, int64_t i0, int64_t i1) {
  constexpr bool kSlow = OPT == BNB_OPTIM_ADEMAMIX;
  bnb::OptimizerConsts c = *a.c;
  c.optimizer = OPT;  // a compile-time constant: the switches of the math fold away
  using T = typename E::type;
  const T* g = static_cast<const T*>(a.g);
  T* p = static_cast<T*>(a.p);
  float* s1 = a.state1;
  float* s1b = kSlow ? a.state1 + a.n : nullptr;
  float* s2 = a.state2;
  const float gs = a.gnorm_scale;
  const bool scale_g = gs != 1.0f;
  const float lr = a.lr_scaled;
  double sq = 0.0;
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const __m256 u = opt32_step<OPT, E, MEASURE, SKIP>(c, g, p, s1, s1b, s2, i, scale_g, gs, lr);
    if (MEASURE) sq = add_squares(sq, u, 8);
  }
  if (i < i1) {  // the last < 8 elements through zero-padded copies
    const int rem = static_cast<int>(i1 - i);
    T gt[8] = {}, pt[8] = {};
    float t1[8] = {}, t1b[8] = {}, t2[8] = {};
    memcpy(gt, g + i, rem * sizeof(T));
    memcpy(pt, p + i, rem * sizeof(T));
    memcpy(t1, s1 + i, rem * 4);
    if (kSlow) memcpy(t1b, s1b + i, rem * 4);
    if (kTwoStates<OPT>) memcpy(t2, s2 + i, rem * 4);
    const __m256 u = opt32_step<OPT, E, MEASURE, SKIP>(c, gt, pt, t1, t1b, t2, 0, scale_g, gs, lr);
    if (MEASURE) {
      sq = add_squares(sq, u, rem);
    } else {
      memcpy(p + i, pt, rem * sizeof(T));
      memcpy(s1 + i, t1, rem * 4);
      if (kSlow) memcpy(s1b + i, t1b, rem * 4);
      if (kTwoStates<OPT>) memcpy(s2 + i, t2, rem * 4);
    }
  }
  return sq;
}

template <int OPT, typename E>
double opt32_m(const Opt32Args& a, int64_t i0, int64_t i1) {
  const bool skip = a.c->skip_zeros != 0;
  if (a.measure) return skip ? opt32_t<OPT, E, true, true>(a, i0, i1) : opt32_t<OPT, E, true, false>(a, i0, i1);
  return skip ? opt32_t<OPT, E, false, true>(a, i0, i1) : opt32_t<OPT, E, false, false>(a, i0, i1);
}

template <typename E>
double opt32_e(const Opt32Args& a, int64_t i0, int64_t i1) {
  return dispatch_optimizer(a.c->optimizer, [&](auto kind) { return opt32_m<decltype(kind)::value, E>(a, i0, i1); });
}

// ---- 8-bit block-wise states -----------------------------------------------------------------

constexpr int64_t kBS = BNB_OPTIM_STATE_BLOCKSIZE;

// qmap[codes[i]] for the block's 256 codes, into out (an 8-lane gather costs more on Zen 3 than 8
// scalar loads and stores).
inline void decode_block(const uint8_t* codes, const float* qmap, float* out) {
  for (int64_t j = 0; j < kBS; j += 8) {
    uint64_t w;
    memcpy(&w, codes + j, 8);
    for (int e = 0; e < 8; ++e) out[j + e] = qmap[(w >> (8 * e)) & 0xff];
  }
}

// Grid indices of the 8-bit state rule (bnb::state_grid_index) of 8 values: the clamp below -1
// is explicit, NaN and everything above the grid come out of the truncation as 0x80000000 or
// >= 65535 and the unsigned minimum makes them 65535. The index is >= 0.5 before truncation, so
// truncation is the floor.
inline __m256i grid_index8(__m256 v, __m256 inv) {
  const __m256 s = _mm256_max_ps(_mm256_set1_ps(-1.0f), _mm256_mul_ps(v, inv));  // NaN stays NaN
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_add_ps(s, _mm256_set1_ps(1.0f)), _mm256_set1_ps(32767.5f)),
                                 _mm256_set1_ps(0.5f));
  return _mm256_min_epu32(_mm256_cvttps_epi32(t), _mm256_set1_epi32(65535));
}

// New absmax and codes of a 256-value block, given the unsigned maximum of its |x| bit patterns.
inline void requantize_block(const float* v, __m256i mx, const uint8_t* grid, uint8_t* codes, float* absmax) {
  float am = bnb::bits_float(hmax_epi32(mx));
  if (am != am) am = bnb::state_absmax(v, kBS);  // which NaN: the one the portable kernel keeps
  *absmax = am;
  const __m256 inv = _mm256_set1_ps(bnb::inverse_absmax(am));
  // The grid table lookups as scalar loads (cheaper than gathers, as in decode_block), the 8 codes
  // of a vector gathered into one 64-bit store.
  for (int j = 0; j < kBS; j += 8) {
    const __m256i idx = grid_index8(_mm256_load_ps(v + j), inv);
    const __m128i lo = _mm256_castsi256_si128(idx), hi = _mm256_extracti128_si256(idx, 1);
    const uint64_t i01 = static_cast<uint64_t>(_mm_cvtsi128_si64(lo)),
                   i23 = static_cast<uint64_t>(_mm_extract_epi64(lo, 1));
    const uint64_t i45 = static_cast<uint64_t>(_mm_cvtsi128_si64(hi)),
                   i67 = static_cast<uint64_t>(_mm_extract_epi64(hi, 1));
    const uint64_t w = uint64_t{grid[i01 & 0xffffffff]} | uint64_t{grid[i01 >> 32]} << 8 |
                       uint64_t{grid[i23 & 0xffffffff]} << 16 | uint64_t{grid[i23 >> 32]} << 24 |
                       uint64_t{grid[i45 & 0xffffffff]} << 32 | uint64_t{grid[i45 >> 32]} << 40 |
                       uint64_t{grid[i67 & 0xffffffff]} << 48 | uint64_t{grid[i67 >> 32]} << 56;
    memcpy(codes + j, &w, 8);
  }
}

template <int OPT, typename E, bool SKIP>
void opt8_t(const Opt8Args& a, int64_t i0, int64_t i1) {
  constexpr bool kSlow = OPT == BNB_OPTIM_ADEMAMIX;
  constexpr bool kTwo = kTwoStates<OPT>;
  bnb::OptimizerConsts c = *a.c;
  c.optimizer = OPT;
  using T = typename E::type;
  const T* g = static_cast<const T*>(a.g);
  T* p = static_cast<T*>(a.p);
  const int64_t blocks = (a.n + kBS - 1) / kBS;
  const float gs = a.gnorm_scale;
  const bool scale_g = gs != 1.0f;
  const float* qmap1 = a.qmap1;
  const float* qmap2 = kTwo ? a.qmap2 : a.qmap1;
  alignas(32) float v1[kBS], v1b[kBS], v2[kBS];
  alignas(32) float d1[kBS], d1b[kBS], d2[kBS];  // the block's decoded codes (before the absmax)
  int64_t start = i0;
  for (; start + kBS <= i1; start += kBS) {
    const int64_t b = start / kBS;
    decode_block(a.state1 + start, qmap1, d1);
    if (kSlow) decode_block(a.state1 + a.n + start, qmap1, d1b);
    if (kTwo) decode_block(a.state2 + start, qmap2, d2);
    const __m256 am1 = _mm256_set1_ps(a.absmax1[b]);
    const __m256 am1b = _mm256_set1_ps(kSlow ? a.absmax1[blocks + b] : 0.0f);
    const __m256 am2 = _mm256_set1_ps(kTwo ? a.absmax2[b] : 0.0f);
    __m256i mx1 = _mm256_setzero_si256(), mx1b = _mm256_setzero_si256(), mx2 = _mm256_setzero_si256();
    const T* gb = g + start;
    T* pb = p + start;
    for (int j = 0; j < kBS; j += 8) {
      if (j % 64 == 0) prefetch_opt8_streams(a, g, p, start + j + kOpt8PrefetchAhead, i1, kSlow, kTwo);
      const __m256 o1 = _mm256_mul_ps(_mm256_load_ps(d1 + j), am1);
      const __m256 o1b = kSlow ? _mm256_mul_ps(_mm256_load_ps(d1b + j), am1b) : _mm256_setzero_ps();
      const __m256 o2 = kTwo ? _mm256_mul_ps(_mm256_load_ps(d2 + j), am2) : _mm256_setzero_ps();
      VF gv(load8<E>(gb + j));
      if (scale_g) gv = mul_rn(gv, VF(gs));
      const VF pv(load8<E>(pb + j));
      VF m1(o1), m1b(o1b), m2(o2);
      const VF d = bnb::optimizer_direction(c, gv, pv, m1, m1b, m2);
      const VF pn = bnb::apply_update(c, pv, d, c.lr);
      const __m256 keep = SKIP ? _mm256_cmp_ps(gv.v, _mm256_setzero_ps(), _CMP_EQ_OQ) : _mm256_setzero_ps();
      store8<E, SKIP>(pb + j, pn.v, keep);
      const __m256 n1 = SKIP ? _mm256_blendv_ps(m1.v, o1, keep) : m1.v;
      _mm256_store_ps(v1 + j, n1);
      mx1 = _mm256_max_epu32(mx1, abs_bits(n1));
      if (kSlow) {
        const __m256 n1b = SKIP ? _mm256_blendv_ps(m1b.v, o1b, keep) : m1b.v;
        _mm256_store_ps(v1b + j, n1b);
        mx1b = _mm256_max_epu32(mx1b, abs_bits(n1b));
      }
      if (kTwo) {
        const __m256 n2 = SKIP ? _mm256_blendv_ps(m2.v, o2, keep) : m2.v;
        _mm256_store_ps(v2 + j, n2);
        mx2 = _mm256_max_epu32(mx2, abs_bits(n2));
      }
    }
    requantize_block(v1, mx1, a.grid1, a.state1 + start, a.absmax1 + b);
    if (kSlow) requantize_block(v1b, mx1b, a.grid1, a.state1 + a.n + start, a.absmax1 + blocks + b);
    if (kTwo) requantize_block(v2, mx2, a.grid2, a.state2 + start, a.absmax2 + b);
  }
  if (start < i1) kernels_scalar.optimizer_8bit_blockwise(a, start, i1);  // a partial last block
}

template <int OPT, typename E>
void opt8_s(const Opt8Args& a, int64_t i0, int64_t i1) {
  if (a.c->skip_zeros) return opt8_t<OPT, E, true>(a, i0, i1);
  opt8_t<OPT, E, false>(a, i0, i1);
}

template <typename E>
void opt8_e(const Opt8Args& a, int64_t i0, int64_t i1) {
  return dispatch_optimizer(a.c->optimizer, [&](auto kind) { return opt8_s<decltype(kind)::value, E>(a, i0, i1); });
}

}  // namespace

double optimizer_32bit(const Opt32Args& a, int64_t i0, int64_t i1) {
  double r = 0.0;
  dispatch_float(a.dtype, [&](auto e) { r = opt32_e<decltype(e)>(a, i0, i1); });
  return r;
}

void optimizer_8bit_blockwise(const Opt8Args& a, int64_t i0, int64_t i1) {
  dispatch_float(a.dtype, [&](auto e) { opt8_e<decltype(e)>(a, i0, i1); });
}

}  // namespace avx2
}  // namespace bnb_cpu
