// Host/device annotations so the same header compiles with a C++ compiler, nvcc and hipcc.
#pragma once

// nvcc pre-includes the CUDA runtime; hipcc does not, and the shared math needs it (the device
// memcpy, __host__/__device__) before its first function: hip_compat.h includes it.
#if defined(__HIPCC__)
#include "hip_compat.h"
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BNB_HD __host__ __device__
#else
#define BNB_HD
#endif

// Host builds force inlining: the CPU library compiles these helpers into several translation units
// with different instruction-set flags (run-time dispatch), and an out-of-line copy shared between
// them could carry instructions the running CPU lacks.
#if !defined(__CUDACC__) && !defined(__HIPCC__) && !defined(__METAL_VERSION__) && \
    (defined(__GNUC__) || defined(__clang__))
#define BNB_INLINE inline __attribute__((always_inline))
#else
#define BNB_INLINE inline
#endif

// Metal (the MPS wheel compiles these headers as Metal source at run time) wants an address space
// on every pointer and reference: BNB_THREAD marks the per-thread ones (function arguments that
// refer to a caller's locals). Functions that may receive a caller's shared (threadgroup) memory
// take the pointer as a template parameter instead. Empty everywhere else.
#if defined(__METAL_VERSION__)
#define BNB_THREAD thread
#else
#define BNB_THREAD
#endif
