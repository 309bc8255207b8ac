// Portability header of the Metal kernels: what the shared headers (shared/include/bnb/) and the
// kernels need from Metal, or, compiled as C++, from the host emulation (metal_host.h).
//
// The Metal source shipped in the wheel is this header, the shared headers and the kernel files
// concatenated (CMake, at build time) with their #include lines removed: torch.mps.compile_shader
// takes one string and cannot resolve includes of its own. The same text compiles as C++ in the
// host harness, where metal_host.h maps the Metal builtins onto an emulation.
#pragma once

#if defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;

// Bit-exact IEEE arithmetic: torch compiles with MTLMathModeSafe already (unless
// PYTORCH_MPS_FAST_MATH=1); these pin it for this source, and forbid fusing a * b + c.
#if __METAL_VERSION__ >= 320
#pragma METAL fp math_mode(safe)
#pragma METAL fp contract(off)
#endif

// The C library names the shared headers use.
template <typename T, typename U>
inline void memcpy(thread T* dst, const thread U* src, size_t) {
  *dst = as_type<T>(*src);
}
inline float sqrtf(float x) { return precise::sqrt(x); }
inline float fmaf(float a, float b, float c) { return metal::fma(a, b, c); }
inline float rintf(float x) { return metal::rint(x); }
inline float floorf(float x) { return metal::floor(x); }

#define BNB_BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)
#define BNB_SHUFFLE_XOR(v, mask) simd_shuffle_xor((v), static_cast<ushort>(mask))

#else
#include "metal_host.h"
#define BNB_BARRIER() bnbh::barrier()
#define BNB_SHUFFLE_XOR(v, mask) bnbh::shuffle_xor((v), (mask))
#endif

// The C ABI's optimizer ids (bnb_c_api.h, which Metal cannot include; the host harness includes it
// instead); a test compares the two lists.
#if !defined(BNB_C_API_H)
enum bnb_optimizer {
  BNB_OPTIM_MOMENTUM = 0,
  BNB_OPTIM_RMSPROP = 1,
  BNB_OPTIM_ADAGRAD = 2,
  BNB_OPTIM_ADAM = 3,
  BNB_OPTIM_LION = 4,
  BNB_OPTIM_ADEMAMIX = 5,
  BNB_OPTIM_LAMB = 6,
  BNB_OPTIM_LARS = 7
};
#endif
