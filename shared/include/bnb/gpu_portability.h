// What CUDA and HIP kernels need to be written once: the warp (wavefront) size, shuffles and the
// block reductions built on them. Never write 32 for a warp: AMD GPUs run 64-wide wavefronts
// (CDNA) or 32-wide (RDNA), and a ROCm build sets BNB_WARP_SIZE accordingly.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)

#include "hip_compat.h"  // the runtime headers: threadIdx, __syncthreads, shuffles
#include "numeric.h"

#ifndef BNB_WARP_SIZE
#if defined(__HIPCC__)
#if defined(__GFX9__)
#define BNB_WARP_SIZE 64
#else
#define BNB_WARP_SIZE 32
#endif
#else
#define BNB_WARP_SIZE 32
#endif
#endif

// Where the compiler still reports its wavefront size (clang < 20 deprecates the macro), the
// rule above must agree with it: a wave64 build of an RDNA target (-mwavefrontsize64) stops here.
#if defined(__HIP_DEVICE_COMPILE__) && defined(__AMDGCN_WAVEFRONT_SIZE) && defined(__clang_major__) && \
    __clang_major__ < 20
static_assert(BNB_WARP_SIZE == __AMDGCN_WAVEFRONT_SIZE, "BNB_WARP_SIZE disagrees with the target's wavefront size");
#endif

namespace bnb {

constexpr int kWarpSize = BNB_WARP_SIZE;

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
#if defined(__HIPCC__)
  return __shfl_xor(v, lane_mask, kWarpSize);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, kWarpSize);
#endif
}

// Reductions over the whole warp: every lane gets the result. Works for 32 and 64 lanes.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off /= 2) v += shfl_xor(v, off);
  return v;
}

// max |x| that keeps NaN (numeric.h's nan_max_abs); inputs are already >= 0 or NaN.
__device__ __forceinline__ float warp_absmax(float v) {
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off /= 2) v = nan_max_abs(v, shfl_xor(v, off));
  return v;
}

// Block-wide reductions: `scratch` holds at least blockDim.x / kWarpSize floats in shared memory;
// every thread gets the result. blockDim.x must be a multiple of kWarpSize. Contains barriers.
template <typename WarpOp>
__device__ __forceinline__ float block_reduce(float v, float* scratch, WarpOp op) {
  const int warps = blockDim.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = op(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : scratch[0];
  return op(v);  // lanes >= warps repeat scratch[0]: neutral for max, so only sums need care
}

__device__ __forceinline__ float block_absmax(float v, float* scratch) {
  return block_reduce(v, scratch, [](float x) { return warp_absmax(x); });
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int warps = blockDim.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// Stores v where other threads may store the same value at once (a flag that every writer sets):
// a relaxed store, which the memory model does not count as a data race between them, as it counts
// a plain one. On the GPUs a volatile store is one (PTX counts st.volatile as relaxed at system
// scope); the CUDA host harness makes it an atomic store, which ThreadSanitizer knows.
template <typename T>
__device__ __forceinline__ void store_relaxed(T* p, T v) {
#if defined(BNB_CUDA_HOST_HARNESS)
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
#else
  *static_cast<volatile T*>(p) = v;
#endif
}

}  // namespace bnb

#endif  // __CUDACC__ || __HIPCC__
