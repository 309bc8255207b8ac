// Helpers of every CUDA kernel file: element types, the device guard, launch checks.
#pragma once

#include <stdint.h>

#include "bnb/hip_compat.h"  // the CUDA runtime headers, or their HIP mapping under hipcc
// (keep it first)
#include "bnb/bnb_c_api.h"
#include "bnb/gpu_portability.h"
#include "bnb/numeric.h"
#include "status.h"

namespace bnb_cuda {

// Loading and storing one element of a float dtype as f32. Loads are exact; stores round to
// nearest even (torch's rounding), with the bf16 bit pattern for NaN that numeric.h documents.
template <int DType>
struct Elem;

template <>
struct Elem<BNB_DTYPE_F32> {
  using T = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Elem<BNB_DTYPE_F16> {
  using T = __half;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  // NaN keeps its sign as a quiet 0x7e00 (torch's conversion; the hardware one writes 0x7fff).
  static __device__ __forceinline__ __half store(float v) {
    if (v != v) return __ushort_as_half(static_cast<unsigned short>(((__float_as_uint(v) >> 16) & 0x8000u) | 0x7e00u));
    return __float2half_rn(v);
  }
};

template <>
struct Elem<BNB_DTYPE_BF16> {
  using T = bnb::gpu::bf16;
  static __device__ __forceinline__ float load(T v) { return bnb::gpu::bf16_to_float(v); }
  static __device__ __forceinline__ T store(float v) { return bnb::gpu::bf16_from_bits(bnb::float_to_bf16(v)); }
};

// a * b with the NaN bits of the x86 CPU the reference results come from: a NaN operand
// propagates (quieted), an invalid product (0 * inf) is the default NaN 0xffc00000. The GPU would
// write its canonical 0x7fffffff; dequantized outputs are compared bit for bit.
__device__ __forceinline__ float mul_cpu_nan(float a, float b) {
  const float r = __fmul_rn(a, b);
  if (r == r) return r;
  if (a != a) return __uint_as_float(__float_as_uint(a) | 0x400000u);
  if (b != b) return __uint_as_float(__float_as_uint(b) | 0x400000u);
  return __uint_as_float(0xffc00000u);
}

// Calls fn(Elem<D>{}) for the runtime float dtype `dtype` (already checked).
template <typename Fn>
void dispatch_float(int32_t dtype, Fn&& fn) {
  switch (dtype) {
    case BNB_DTYPE_F32:
      fn(Elem<BNB_DTYPE_F32>{});
      break;
    case BNB_DTYPE_F16:
      fn(Elem<BNB_DTYPE_F16>{});
      break;
    default:
      fn(Elem<BNB_DTYPE_BF16>{});
      break;
  }
}

// Makes the device that owns `ptr` current for the guard's lifetime (not device 0): kernels
// launch on the device of their tensors and on the stream the caller passed. Host or unknown
// pointers leave the current device alone.
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* ptr);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  // BNB_OK, or BNB_ERR_DEVICE when the device could not be made current.
  int32_t status() const { return status_; }

 private:
  int previous_ = -1;
  bool switched_ = false;
  int32_t status_ = BNB_OK;
};

// The current device's warp (wavefront) size: 32 on NVIDIA GPUs, 64 or 32 on AMD GPUs. Host
// code sizes launches with it; bnb::kWarpSize is only meaningful in device code.
int device_warp_size();

// After a launch: BNB_OK, or BNB_ERR_DEVICE with cudaGetLastError()'s message.
int32_t check_launch(const char* what);
// Maps a CUDA runtime error to a status with its message.
int32_t cuda_fail(cudaError_t err, const char* what);

inline cudaStream_t as_stream(bnb_stream s) { return static_cast<cudaStream_t>(s); }

inline unsigned int grid_for(int64_t items, int threads, int64_t cap = 65535LL * 32) {
  int64_t blocks = (items + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks < cap ? blocks : cap);
}

}  // namespace bnb_cuda
