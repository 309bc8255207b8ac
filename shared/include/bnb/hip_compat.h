// One kernel source, two toolchains: the CUDA runtime API as the CUDA sources spell it, on nvcc
// (the CUDA headers) or on hipcc (the same names mapped to HIP). platforms/rocm compiles
// platforms/cuda/src with hipcc through this header; there is no hipified copy of the sources.
//
// This is the only file of the project that looks at the HIP platform macros: everything the CUDA
// and HIP runtimes spell differently is decided here (runtime API names, the bf16/fp16 types, the
// pointer-attribute layout, the name of a device's architecture). The warp (wavefront) size, the
// shuffles and the reductions are in gpu_portability.h.
//
// A HIP build is one compiled by hipcc (__HIPCC__), or a host-only file of the ROCm library built
// with -DBNB_HIP=1 by a plain C++ compiler. ROCm 5.x, 6.x and 7.x headers are supported: the
// differences that matter are the bf16 type (hip_bfloat16 in 5.x, __hip_bfloat16 from 6.0) and
// hipPointerAttribute_t (memoryType/isManaged in 5.x, type from 6.0).
#pragma once

#if defined(__HIPCC__) && !defined(BNB_HIP)
#define BNB_HIP 1
#endif

#if defined(BNB_HIP) && BNB_HIP

// A host file compiled by g++/clang++ (not hipcc) must name the platform before including HIP.
#if !defined(__HIP_PLATFORM_AMD__) && !defined(__HIP_PLATFORM_NVIDIA__)
#define __HIP_PLATFORM_AMD__ 1
#endif

#include <hip/hip_runtime_api.h>
#include <hip/hip_version.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__HIPCC__)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#if HIP_VERSION_MAJOR >= 6
#include <hip/hip_bf16.h>
#else
#include <hip/hip_bfloat16.h>
#endif
#endif

// ---- runtime API: CUDA name -> HIP name --------------------------------------------------------
#define cudaError_t hipError_t
#define cudaStream_t hipStream_t
#define cudaPointerAttributes hipPointerAttribute_t
#define cudaFuncAttributes hipFuncAttributes
#define cudaDeviceProp hipDeviceProp_t
#define cudaSuccess hipSuccess
#define cudaErrorMemoryAllocation hipErrorMemoryAllocation
#define cudaErrorNoKernelImageForDevice hipErrorNoBinaryForGpu
#define cudaErrorInvalidDeviceFunction hipErrorInvalidDeviceFunction
#define cudaMemAttachGlobal hipMemAttachGlobal
#define cudaCpuDeviceId hipCpuDeviceId
#define cudaDevAttrWarpSize hipDeviceAttributeWarpSize
#define cudaDevAttrConcurrentManagedAccess hipDeviceAttributeConcurrentManagedAccess
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaGetErrorName hipGetErrorName
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceGetAttribute hipDeviceGetAttribute
#define cudaFuncGetAttributes hipFuncGetAttributes
#define cudaPointerGetAttributes hipPointerGetAttributes
#define cudaMallocManaged hipMallocManaged
#define cudaFree hipFree
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemPrefetchAsync hipMemPrefetchAsync

namespace bnb {
namespace gpu {

// True when the attributes describe device or managed memory (kernels may read it directly).
inline bool is_device_memory(const hipPointerAttribute_t& a) {
#if HIP_VERSION_MAJOR >= 6
  return a.type == hipMemoryTypeDevice || a.type == hipMemoryTypeManaged;
#else
  return a.memoryType == hipMemoryTypeDevice || a.isManaged != 0;
#endif
}

// The device's architecture as the compiler names it ("gfx90a"; features such as ":xnack-" cut).
inline void arch_name(int device, char* out, size_t size) {
  hipDeviceProp_t prop;
  if (size == 0) return;
  out[0] = '\0';
  if (hipGetDeviceProperties(&prop, device) != hipSuccess) {
    snprintf(out, size, "device %d (unknown architecture)", device);
    return;
  }
  size_t i = 0;
  for (; i + 1 < size && prop.gcnArchName[i] != '\0' && prop.gcnArchName[i] != ':'; ++i) out[i] = prop.gcnArchName[i];
  out[i] = '\0';
}

// How to add an architecture to the build (for error messages).
constexpr const char* kArchOption = "BNB_ROCM_ARCHS";

#if defined(__HIPCC__)
// The bf16 storage type of the HIP headers; converted by its bit pattern, which is the same in
// every ROCm (the conversion functions are not).
#if HIP_VERSION_MAJOR >= 6
using bf16 = __hip_bfloat16;
#else
using bf16 = hip_bfloat16;
#endif
static_assert(sizeof(bf16) == 2, "bf16 is 16 bits");

__device__ __forceinline__ float bf16_to_float(bf16 v) {
  unsigned short bits;
  __builtin_memcpy(&bits, &v, sizeof(bits));
  return __uint_as_float(static_cast<unsigned int>(bits) << 16);
}

__device__ __forceinline__ bf16 bf16_from_bits(unsigned short bits) {
  bf16 v;
  __builtin_memcpy(&v, &bits, sizeof(bits));
  return v;
}
#endif  // __HIPCC__

}  // namespace gpu
}  // namespace bnb

#else  // CUDA

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace bnb {
namespace gpu {

inline bool is_device_memory(const cudaPointerAttributes& a) {
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

inline void arch_name(int device, char* out, size_t size) {
  int major = 0, minor = 0;
  if (size == 0) return;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    snprintf(out, size, "device %d (unknown architecture)", device);
    return;
  }
  snprintf(out, size, "sm_%d%d", major, minor);
}

constexpr const char* kArchOption = "BNB_CUDA_ARCHS";

#if defined(__CUDACC__)
using bf16 = __nv_bfloat16;
__device__ __forceinline__ float bf16_to_float(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ bf16 bf16_from_bits(unsigned short bits) { return __ushort_as_bfloat16(bits); }
#endif

}  // namespace gpu
}  // namespace bnb

#endif  // BNB_HIP
