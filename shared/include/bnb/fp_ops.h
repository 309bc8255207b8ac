// f32 arithmetic with one rounding per operation on every compiler.
//
// nvcc and hipcc contract `a * b + c` into a fused multiply-add by default, which rounds once
// instead of twice and so differs from PyTorch's separate elementwise ops in the last bit. Code
// that must reproduce the reference kernels bit for bit (quantization grids, optimizer states,
// int8 rounding) spells its arithmetic with these helpers.
#pragma once

#include <math.h>

#include "portability.h"

namespace bnb {

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
BNB_HD BNB_INLINE float add_rn(float a, float b) { return __fadd_rn(a, b); }
BNB_HD BNB_INLINE float sub_rn(float a, float b) { return __fsub_rn(a, b); }
BNB_HD BNB_INLINE float mul_rn(float a, float b) { return __fmul_rn(a, b); }
BNB_HD BNB_INLINE float div_rn(float a, float b) { return __fdiv_rn(a, b); }
BNB_HD BNB_INLINE float sqrt_rn(float a) { return __fsqrt_rn(a); }
#else
// Host compilers: build with -ffp-contract=off (GCC and Clang in ISO mode, -std=c++17, already
// default to it; bnb.cmake sets it explicitly).
BNB_HD BNB_INLINE float add_rn(float a, float b) { return a + b; }
BNB_HD BNB_INLINE float sub_rn(float a, float b) { return a - b; }
BNB_HD BNB_INLINE float mul_rn(float a, float b) { return a * b; }
BNB_HD BNB_INLINE float div_rn(float a, float b) { return a / b; }
BNB_HD BNB_INLINE float sqrt_rn(float a) { return sqrtf(a); }
#endif

// Round half to even, as torch.round (the current rounding mode is round-to-nearest-even).
BNB_HD BNB_INLINE float round_half_even(float x) { return rintf(x); }

}  // namespace bnb
