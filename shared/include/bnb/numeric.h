// Float conversions and reductions with exactly the rounding torch uses, for every platform, and
// the integer helpers the kernels' entry points share.
#pragma once

#include <stdint.h>
#include <string.h>

#include "portability.h"

namespace bnb {

// ceil(a / b) for a >= 0 and b > 0, without forming a + b - 1, which wraps for a b near INT64_MAX
// (the 8-bit block-wise ops take any blocksize > 0): a block count of 0 or less would leave every
// output unwritten, or launch an empty grid, and still report success.
BNB_HD BNB_INLINE int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

BNB_HD BNB_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

BNB_HD BNB_INLINE float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

BNB_HD BNB_INLINE float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; every NaN becomes 0xFFFF, as torch's vectorized conversion writes it.
BNB_HD BNB_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffff;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

BNB_HD BNB_INLINE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal half: value = mant * 2^-24, exact in f32.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
  return sign ? -v : v;
}

// Round to nearest even, overflow to inf, NaN to a quiet NaN keeping the sign (as torch does).
BNB_HD BNB_INLINE uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
  if (ax < 0x38800000u) {                        // below the smallest normal half, 2^-14
    if (ax < 0x33000000u) return sign;           // below 2^-25: rounds to zero
    const uint32_t exp = ax >> 23;
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// max(|a|, m) that keeps a NaN once seen (torch's amax propagates NaN).
BNB_HD BNB_INLINE float nan_max_abs(float m, float a) {
  const float v = a < 0.0f ? -a : a;
  return (v > m || v != v) && m == m ? v : m;
}

// 1 / 1e-38f, written out: where subnormals read as zero (denormals-are-zero, as under
// torch.set_flush_denormal(True), or a GPU's flush-to-zero mode) the subnormal 1e-38f is 0 at run
// time, and so would be the divisor.
BNB_HD BNB_INLINE float inverse_absmax_floor() { return 1.0000001e38f; }

// Scale that maps a block's absmax onto [-1, 1]: 1 / max(absmax, 1e-38), NaN stays NaN. A zero
// absmax is tested as such: under denormals-are-zero `absmax < 1e-38f` is false for 0 (1e-38f
// reads as 0), and 1 / 0 would turn a zero block into NaN codes.
BNB_HD BNB_INLINE float inverse_absmax(float absmax) {
  return (absmax < 1e-38f || absmax == 0.0f) ? inverse_absmax_floor() : 1.0f / absmax;
}

}  // namespace bnb
