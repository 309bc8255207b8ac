// What CUDA and HIP kernels need to be written once: the warp (wavefront) size, shuffles and the
// block reductions built on them. Never write 32 for a warp: AMD GPUs run 64-wide wavefronts
// (CDNA) or 32-wide (RDNA), and a ROCm build sets BNB_WARP_SIZE accordingly.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)

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

}  // namespace bnb

#endif  // __CUDACC__ || __HIPCC__
