// Host emulation of the CUDA runtime API and of the device features the CUDA kernels use, so that
// platforms/cuda/src compiles as C++ and runs on the CPU: the CUDA host harness. A test tool of
// the repository, never part of a wheel or a GPU run (cuda_host.py builds and drives it).
//
// The stand-in headers in include/ (cuda_runtime_api.h, cuda_runtime.h, cuda_fp16.h,
// cuda_bf16.h) all lead here, so the kernel sources and the shared headers compile unchanged,
// with __CUDACC__ and __CUDA_ARCH__ defined as nvcc defines them for device code. Two changes to
// the text (cuda_host.py): the launch syntax, which is not C++, is rewritten from
// `kernel<<<grid, block, smem, stream>>>(args)` to `kernel | ::bnb_cuda_host::config(grid, block,
// smem, stream)(args)`, which runs the kernel here; and each `__shared__` array declaration is
// followed by a bnb_simt::poison call.
//
// A launch is checked as the CUDA runtime checks a launch's configuration (block size, grid
// limits; not a kernel's __launch_bounds__, which are ignored), then runs block after block; the
// threads of a block are fibers of shared/host/simt_host.h, each warp running through its
// shuffles to the next __syncthreads() in turn, last warp and lane first in blocks of even index
// and first first in the others (BNB_WARP_SIZE lanes: 32 as on NVIDIA GPUs, 64 as on AMD CDNA).
// A barrier or shuffle misused (undefined behaviour on a GPU) fails the launch:
// cudaGetLastError() returns cudaErrorLaunchFailure and cudaGetErrorString() says what happened.
// __shared__ memory is a function-local `static`, shared by the fibers of a block, filled with 0xff
// bytes at the start of each block (see bnb_simt::poison) and guarded by AddressSanitizer as a
// global; blocks from different OS threads run one at a time (bnb_simt::launch_mutex).
// Streams are accepted and ignored (every launch completes before it returns); every pointer is
// device memory of device 0.
#pragma once

#define BNB_CUDA_HOST_HARNESS 1  // what the shared headers do differently here (bnb::store_relaxed)

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "simt_host.h"

#ifndef BNB_WARP_SIZE
#define BNB_WARP_SIZE 32
#endif

#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static  // one array per declaration: see bnb_simt::launch_mutex

// ---- vector and 16-bit float types ------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
struct __half {
  unsigned short x;
};
struct __nv_bfloat16 {
  unsigned short x;
};

// ---- device intrinsics: one rounding per operation, as the _rn forms ---------------------------
inline float __uint_as_float(unsigned int u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  memcpy(&u, &f, sizeof(u));
  return u;
}
// nvcc contracts a plain `a * b + c` into one fused multiply-add (its default --fmad=true) but
// never fuses an _rn intrinsic with a neighbouring operation. The 32-lane build compiles the
// kernels with contraction on, as nvcc does (cuda_host.py), so each intrinsic hides its operands
// and its result from the compiler: only the kernels' plain expressions can fuse.
#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE__))  // a float in an SSE register
#define BNB_HOST_OPAQUE(v) __asm__("" : "+x"(v))
#elif defined(__aarch64__)
#define BNB_HOST_OPAQUE(v) __asm__("" : "+w"(v))
#else  // any other target (32-bit x86 without SSE included): through memory
#define BNB_HOST_OPAQUE(v) __asm__("" : "+m"(v))
#endif
inline float bnb_host_rounded(float v) {
  BNB_HOST_OPAQUE(v);
  return v;
}
// NVIDIA GPUs have one f32 NaN: an operation whose result is NaN writes 0x7fffffff, whatever its
// operands' payloads, where the x86 CPU propagates an operand's NaN (quieted) and makes 0xffc00000
// of an invalid operation. The 32-lane build gives the intrinsics the GPU's NaN, so that a kernel
// reproducing the CPU's NaN bits must do so itself; the 64-lane build keeps the host's. (A plain
// operator's NaN is the host's in both: only the intrinsics can be modelled.)
inline float bnb_host_gpu_nan(float r) {
#if BNB_WARP_SIZE == 32
  return r != r ? __uint_as_float(0x7fffffffu) : r;
#else
  return r;
#endif
}
inline float __fadd_rn(float a, float b) {
  return bnb_host_gpu_nan(bnb_host_rounded(bnb_host_rounded(a) + bnb_host_rounded(b)));
}
inline float __fsub_rn(float a, float b) {
  return bnb_host_gpu_nan(bnb_host_rounded(bnb_host_rounded(a) - bnb_host_rounded(b)));
}
inline float __fmul_rn(float a, float b) {
  return bnb_host_gpu_nan(bnb_host_rounded(bnb_host_rounded(a) * bnb_host_rounded(b)));
}
inline float __fdiv_rn(float a, float b) {
  return bnb_host_gpu_nan(bnb_host_rounded(bnb_host_rounded(a) / bnb_host_rounded(b)));
}
inline float __fsqrt_rn(float a) { return bnb_host_gpu_nan(bnb_host_rounded(sqrtf(bnb_host_rounded(a)))); }
inline float __fmaf_rn(float a, float b, float c) { return bnb_host_gpu_nan(bnb_host_rounded(fmaf(a, b, c))); }

// The 16-bit conversions through the compiler's own _Float16 (correctly rounded, independent of
// numeric.h's bit manipulation, which the kernels use for their stores).
inline float __half2float(__half h) {
  _Float16 v;
  memcpy(&v, &h.x, sizeof(v));
  return static_cast<float>(v);
}
inline __half __float2half_rn(float f) {
#if BNB_WARP_SIZE == 32
  if (f != f) return __half{0x7fff};  // NVIDIA's conversion writes its one f16 NaN
#endif
  const _Float16 v = static_cast<_Float16>(f);
  __half h;
  memcpy(&h.x, &v, sizeof(v));
  return h;
}
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline float __bfloat162float(__nv_bfloat16 v) { return __uint_as_float(static_cast<unsigned int>(v.x) << 16); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16{bits}; }

// ---- runtime API -------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st* cudaStream_t;

enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3,
};
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
struct cudaFuncAttributes {
  int maxThreadsPerBlock;
};
enum cudaDeviceAttr {
  cudaDevAttrWarpSize = 10,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrConcurrentManagedAccess = 89,
};
enum cudaMemLocationType { cudaMemLocationTypeDevice = 1, cudaMemLocationTypeHost = 2 };
struct cudaMemLocation {
  cudaMemLocationType type;
  int id;
};
#define cudaMemAttachGlobal 0x01
#define cudaCpuDeviceId (-1)

namespace bnb_cuda_host {

struct ErrorState {
  cudaError_t code = cudaSuccess;          // cleared by cudaGetLastError
  cudaError_t message_code = cudaSuccess;  // the code `message` belongs to
  std::string message;
};
inline thread_local ErrorState g_error;

inline cudaError_t set_error(cudaError_t code, std::string message) {
  if (g_error.code == cudaSuccess) g_error = {code, code, std::move(message)};  // kept until read
  return code;
}

inline const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoKernelImageForDevice:
      return "cudaErrorNoKernelImageForDevice";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

}  // namespace bnb_cuda_host

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = bnb_cuda_host::g_error.code;
  bnb_cuda_host::g_error.code = cudaSuccess;  // the message stays readable for cudaGetErrorString
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return bnb_cuda_host::g_error.code; }
inline const char* cudaGetErrorName(cudaError_t e) { return bnb_cuda_host::error_name(e); }
// The harness's message of the last error of this code (what a launch did wrong), else its name.
inline const char* cudaGetErrorString(cudaError_t e) {
  thread_local std::string text;
  const bnb_cuda_host::ErrorState& last = bnb_cuda_host::g_error;
  text = e != cudaSuccess && e == last.message_code ? last.message : bnb_cuda_host::error_name(e);
  return text.c_str();
}
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  if (device == 0) return cudaSuccess;
  return bnb_cuda_host::set_error(cudaErrorInvalidDevice, "invalid device ordinal " + std::to_string(device));
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return bnb_cuda_host::set_error(cudaErrorInvalidDevice, "invalid device ordinal");
  switch (attr) {
    case cudaDevAttrWarpSize:
      *value = BNB_WARP_SIZE;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrConcurrentManagedAccess:
      *value = 1;
      return cudaSuccess;
  }
  return bnb_cuda_host::set_error(cudaErrorInvalidValue, "unknown device attribute");
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* fn) {
  if (fn == nullptr) return bnb_cuda_host::set_error(cudaErrorInvalidDeviceFunction, "invalid device function");
  attr->maxThreadsPerBlock = static_cast<int>(bnb_simt::kMaxGroup);
  return cudaSuccess;
}
inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  attr->type = cudaMemoryTypeDevice;
  attr->device = 0;
  attr->devicePointer = const_cast<void*>(ptr);
  attr->hostPointer = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t = nullptr) {
  if (ptr == nullptr && count > 0) return bnb_cuda_host::set_error(cudaErrorInvalidValue, "cudaMemsetAsync of NULL");
  memset(ptr, value, count);
  return cudaSuccess;
}
inline cudaError_t cudaMallocManaged(void** ptr, size_t bytes, unsigned int = cudaMemAttachGlobal) {
  *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *ptr ? cudaSuccess : bnb_cuda_host::set_error(cudaErrorMemoryAllocation, "out of memory");
}
inline cudaError_t cudaFree(void* ptr) {
  free(ptr);
  return cudaSuccess;
}
inline cudaError_t cudaMemPrefetchAsync(const void*, size_t, cudaMemLocation, unsigned int, cudaStream_t = nullptr) {
  return cudaSuccess;
}

// ---- device: thread ids, barriers, shuffles, atomics -------------------------------------------
#ifndef BNB_HOST_BLOCKS_DESCENDING
#define BNB_HOST_BLOCKS_DESCENDING 0
#endif

namespace bnb_cuda_host {

struct Launch {
  dim3 grid, block, block_idx;
};
inline thread_local const Launch* g_launch = nullptr;

inline uint3 thread_idx() {
  const unsigned int i = bnb_simt::current_thread();
  const dim3& b = g_launch->block;
  return {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
}
inline uint3 block_idx() { return {g_launch->block_idx.x, g_launch->block_idx.y, g_launch->block_idx.z}; }
inline uint3 block_dim() { return {g_launch->block.x, g_launch->block.y, g_launch->block.z}; }
inline uint3 grid_dim() { return {g_launch->grid.x, g_launch->grid.y, g_launch->grid.z}; }

}  // namespace bnb_cuda_host

#define threadIdx (::bnb_cuda_host::thread_idx())
#define blockIdx (::bnb_cuda_host::block_idx())
#define blockDim (::bnb_cuda_host::block_dim())
#define gridDim (::bnb_cuda_host::grid_dim())

inline void __syncthreads() { bnb_simt::barrier(); }

// Every lane of the warp takes part (mask all ones) and the width is the warp's: the only form
// the kernels use, and the only one accepted here. 4-byte values go through bit for bit; other
// types do not compile (CUDA has them, the kernels do not use them, the harness does not emulate
// them).
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = BNB_WARP_SIZE) {
  static_assert(sizeof(T) == 4 && std::is_trivially_copyable<T>::value, "the harness shuffles 4-byte values only");
  if (mask != 0xffffffffu) bnb_simt::report("__shfl_xor_sync with a partial mask");
  if (width != static_cast<int>(bnb_simt::warp_width()))
    bnb_simt::report("__shfl_xor_sync width " + std::to_string(width) + " is not the warp's " +
                     std::to_string(bnb_simt::warp_width()));
  float slot;
  memcpy(&slot, &v, sizeof(slot));
  slot = bnb_simt::shuffle_xor(slot, static_cast<uint32_t>(lane_mask), "__shfl_xor_sync");
  memcpy(&v, &slot, sizeof(v));
  return v;
}

// An atomic read-modify-write, as the GPU's (relaxed): blocks run one after another here, but under
// ThreadSanitizer they are unordered, and a plain `*address += value` from two blocks is a race.
inline float atomicAdd(float* address, float value) {
  float old, sum;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  do {
    sum = old + value;
  } while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

// ---- launches ----------------------------------------------------------------------------------
namespace bnb_cuda_host {

template <typename... A>
struct Pending {
  dim3 grid, block;
  size_t smem;
  std::tuple<std::decay_t<A>...> args;
};

struct Config {
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  Pending<A...> operator()(A&&... args) const {
    return {grid, block, smem, std::tuple<std::decay_t<A>...>(std::forward<A>(args)...)};
  }
};

inline Config config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) { return {grid, block, smem}; }

// The checks cudaLaunchKernel makes (compute capability 9.0 limits).
inline std::string check_config(const dim3& grid, const dim3& block, size_t smem) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (threads == 0 || threads > bnb_simt::kMaxGroup || block.z > 64)
    return "invalid configuration argument: block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
           std::to_string(block.z) + ")";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return "invalid configuration argument: grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
           std::to_string(grid.z) + ")";
  if (smem > 48 * 1024) return "invalid configuration argument: " + std::to_string(smem) + " bytes of dynamic smem";
  return "";
}

template <typename... P, typename... A>
void launch(void (*kernel)(P...), const Pending<A...>& p) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const std::string bad = check_config(p.grid, p.block, p.smem);
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, bad);
    return;
  }
  // Arguments convert to the kernel's parameter types once, as cudaLaunchKernel copies them.
  const std::tuple<P...> params = std::apply([](const auto&... a) { return std::tuple<P...>(a...); }, p.args);
  Launch l{p.grid, p.block, dim3(0, 0, 0)};
  bnb_simt::Launch blocks_unordered;  // under TSan: no block happens before another
  const Launch* saved = g_launch;
  g_launch = &l;
  const uint32_t threads = p.block.x * p.block.y * p.block.z;
  // Blocks run one after another: in ascending order, or descending in a build for a descending
  // order (BNB_HOST_BLOCKS_DESCENDING: cuda_host.py builds the 64-lane harness so), so that a
  // kernel whose result depends on which block runs first (a race between blocks on a GPU, or a
  // test expecting one order of atomicAdds) differs between the two builds.
  const uint64_t blocks = static_cast<uint64_t>(p.grid.x) * p.grid.y * p.grid.z;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = BNB_HOST_BLOCKS_DESCENDING ? blocks - 1 - k : k;
    const unsigned int x = static_cast<unsigned int>(b % p.grid.x);
    const unsigned int y = static_cast<unsigned int>(b / p.grid.x % p.grid.y);
    const unsigned int z = static_cast<unsigned int>(b / p.grid.x / p.grid.y);
    l.block_idx = dim3(x, y, z);
    // Either order within a block, by the parity of its index (the MPS harness's rule): a read of
    // what another thread writes with no barrier between sees the fill in one of them (grids of
    // two or more blocks). A launch's result does not depend on earlier ones.
    const bool last_first = (x + y + z) % 2 == 0;
    const std::string err =
        bnb_simt::run_group(threads, BNB_WARP_SIZE, [&](uint32_t) { std::apply(kernel, params); }, last_first);
    if (!err.empty()) {
      g_launch = saved;
      set_error(cudaErrorLaunchFailure, "unspecified launch failure in block (" + std::to_string(x) + ", " +
                                            std::to_string(y) + ", " + std::to_string(z) + "): " + err);
      return;
    }
  }
  g_launch = saved;
}

template <typename... P, typename... A>
void operator|(void (*kernel)(P...), Pending<A...>&& pending) {
  launch(kernel, pending);
}

}  // namespace bnb_cuda_host
