// The 4-bit code books (NF4, FP4) and the nearest-code rules shared by every platform.
//
// Encoding is "nearest entry of the sorted table": a value is compared with the f32 midpoints
// of consecutive sorted entries; a value exactly on a midpoint takes the lower entry and NaN
// takes the top entry. The Python reference (backends/reference/codebooks.py) is the oracle.
#pragma once

#include <stdint.h>

#include "portability.h"

namespace bnb {

// NF4 in code order (ascending, so code order == sorted order).
#define BNB_NF4_TABLE     \
  {-1.0f,                 \
   -0.6961928009986877f,  \
   -0.5250730514526367f,  \
   -0.39491748809814453f, \
   -0.28444138169288635f, \
   -0.18477343022823334f, \
   -0.09105003625154495f, \
   0.0f,                  \
   0.07958029955625534f,  \
   0.16093020141124725f,  \
   0.24611230194568634f,  \
   0.33791524171829224f,  \
   0.44070982933044434f,  \
   0.5626170039176941f,   \
   0.7229568362236023f,   \
   1.0f}

// FP4 (sign, 2 exponent bits, 1 mantissa bit) normalised by 12, in code order, as decoded by
// the kernels: code 8 keeps its sign bit (-0.0).
#define BNB_FP4_TABLE       \
  {0.0f,                    \
   0.0052083334885537624f,  \
   0.6666666865348816f,     \
   1.0f,                    \
   0.3333333432674408f,     \
   0.5f,                    \
   0.1666666716337204f,     \
   0.25f,                   \
   -0.0f,                   \
   -0.0052083334885537624f, \
   -0.6666666865348816f,    \
   -1.0f,                   \
   -0.3333333432674408f,    \
   -0.5f,                   \
   -0.1666666716337204f,    \
   -0.25f}

// FP4 codes in ascending order of value; the two zeros keep code 0 before code 8.
#define BNB_FP4_SORTED_CODES {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3}

BNB_HD BNB_INLINE float decode_4bit(int quant_type_nf4, uint32_t code) {
  const float nf4[16] = BNB_NF4_TABLE;
  const float fp4[16] = BNB_FP4_TABLE;
  return quant_type_nf4 ? nf4[code & 15u] : fp4[code & 15u];
}

BNB_HD BNB_INLINE float midpoint(float a, float b) { return (a + b) / 2.0f; }

// Position in the sorted 16-entry table of the entry nearest to x (x already scaled).
// `sorted` holds the table ascending.
BNB_HD BNB_INLINE uint32_t nearest_sorted_16(const BNB_THREAD float* sorted, float x) {
  if (x != x) return 15u;
  uint32_t pos = 0;
  for (int i = 0; i < 15; ++i) pos += (x > midpoint(sorted[i], sorted[i + 1])) ? 1u : 0u;
  return pos;
}

BNB_HD BNB_INLINE uint32_t encode_nf4(float x) {
  const float nf4[16] = BNB_NF4_TABLE;
  return nearest_sorted_16(nf4, x);
}

BNB_HD BNB_INLINE uint32_t encode_fp4(float x) {
  const float fp4[16] = BNB_FP4_TABLE;
  const uint8_t order[16] = BNB_FP4_SORTED_CODES;
  float sorted[16];
  for (int i = 0; i < 16; ++i) sorted[i] = fp4[order[i]];
  return order[nearest_sorted_16(sorted, x)];
}

// A 4-bit code book in ascending order of value, for the searching quantizers: sorted[i] is the
// value of code order[i], mids[i] the midpoint of sorted[i] and sorted[i + 1].
struct Sorted4bit {
  float sorted[16];
  float mids[15];
  uint8_t order[16];
};

BNB_HD BNB_INLINE Sorted4bit sorted_4bit(int quant_type_nf4) {
  const float nf4[16] = BNB_NF4_TABLE;
  const float fp4[16] = BNB_FP4_TABLE;
  const uint8_t fp4_order[16] = BNB_FP4_SORTED_CODES;
  Sorted4bit t;
  for (int i = 0; i < 16; ++i) {
    t.order[i] = quant_type_nf4 ? static_cast<uint8_t>(i) : fp4_order[i];
    t.sorted[i] = quant_type_nf4 ? nf4[i] : fp4[t.order[i]];
  }
  for (int i = 0; i < 15; ++i) t.mids[i] = midpoint(t.sorted[i], t.sorted[i + 1]);
  return t;
}

BNB_HD BNB_INLINE uint32_t encode_4bit(int quant_type_nf4, float x) {
  return quant_type_nf4 ? encode_nf4(x) : encode_fp4(x);
}

// Position of the entry of a sorted 256-entry code book nearest to x, given its 255 f32
// midpoints: the number of midpoints strictly below x (binary search), NaN -> 255. `mids` is any
// pointer to f32 (a GPU kernel's may live in shared memory).
template <typename Mids>
BNB_HD BNB_INLINE uint32_t nearest_sorted_256(Mids mids, float x) {
  if (x != x) return 255u;
  uint32_t lo = 0, count = 255;
  while (count > 0) {
    const uint32_t step = count / 2;
    if (mids[lo + step] < x) {
      lo += step + 1;
      count -= step + 1;
    } else {
      count = step;
    }
  }
  return lo;
}

}  // namespace bnb
