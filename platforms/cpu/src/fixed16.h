// The 16-bit fixed-point format of the bf16 4-bit GEMVs (kernels_avx2_gemm4.cpp for one row,
// gemv_avx512.h for one to eight): the code book times 2^13 as int16; A per 64 columns (a
// "group") as int16, times 2^(14 - e) for the group's largest |value| in [2^e, 2^(e+1)) and
// rounded half to even; a group's integer sums times S = 2^(e - 27) are values again. Both kernels
// must produce these same integers and scales (tests/test_cpu_gemv_bf16.py holds them to one
// model). The functions have internal linkage: files compiled for different instruction sets
// include this header, and must not share one compiled copy.
#pragma once

#include <math.h>
#include <stdint.h>

namespace bnb_cpu {
namespace fixed16 {
namespace {

constexpr float kCodeScale = 8192.0f;  // 2^13

// Groups whose largest |value| is under 2^kMinExponent take the float kernels: their scale
// 2^(14 - e) would leave the f32 range.
constexpr int kMinExponent = -96;

// The f32 bits of 2^(14 - e), which puts a group's largest |value| (in [2^e, 2^(e+1))) into
// [2^14, 2^15).
constexpr int32_t a_scale_bits(int e) { return (14 - e + 127) << 23; }

// The f32 bits of S = 2^(e - 27) = 2^-(14 - e) / 2^13: the group's integer sums back to values.
constexpr uint32_t group_scale_bits(int e) { return static_cast<uint32_t>(e - 27 + 127) << 23; }

// Whether the 16-entry code book fits the format: every entry within [-1, 1], so |entry * 2^13|
// <= 2^13 and a 32-bit lane's 8 products of |q| < 2^15 stay under 2^31.
inline bool code_fits(const float* code) {
  for (int c = 0; c < 16; ++c)
    if (!(fabsf(code[c]) <= 1.0f)) return false;
  return true;
}

// A code-book entry as the format's int16.
inline int16_t code_entry(float c) { return static_cast<int16_t>(lrintf(c * kCodeScale)); }

}  // namespace
}  // namespace fixed16
}  // namespace bnb_cpu
