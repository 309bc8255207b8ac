// Device guard and launch-error helpers.
#include <atomic>

#include "common.cuh"

namespace bnb_cuda {

namespace {

constexpr int kMaxDevices = 64;

// An empty kernel: asking the runtime for its attributes tells whether this library holds code
// for the current GPU, before any real kernel is launched.
__global__ void probe_kernel() {}

int current_device() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return device;
}

// BNB_OK when the library has a code object (or PTX) for the current device; otherwise a status
// whose message names the device's architecture and the build option that adds it. Cached per device.
int32_t check_device_code() {
  static std::atomic<int> checked[kMaxDevices] = {};  // 0 unknown, 1 ok, 2 missing
  const int device = current_device();
  if (device < 0 || device >= kMaxDevices) return BNB_OK;
  const int state = checked[device].load(std::memory_order_relaxed);
  if (state == 1) return BNB_OK;
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(probe_kernel));
  if (err == cudaSuccess) {
    checked[device].store(1, std::memory_order_relaxed);
    return BNB_OK;
  }
  cudaGetLastError();
  if (err != cudaErrorNoKernelImageForDevice && err != cudaErrorInvalidDeviceFunction) return BNB_OK;
  checked[device].store(2, std::memory_order_relaxed);
  return cuda_fail(err, "device code");
}

}  // namespace

int device_warp_size() {
  static std::atomic<int> sizes[kMaxDevices] = {};
  const int device = current_device();
  if (device < 0 || device >= kMaxDevices) return 32;
  int size = sizes[device].load(std::memory_order_relaxed);
  if (size == 0) {
    if (cudaDeviceGetAttribute(&size, cudaDevAttrWarpSize, device) != cudaSuccess || size <= 0) {
      cudaGetLastError();
      size = 32;
    }
    sizes[device].store(size, std::memory_order_relaxed);
  }
  return size;
}

DeviceGuard::DeviceGuard(const void* ptr) {
  if (ptr == nullptr) return;
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // an unknown pointer is not an error here; the kernel will report it
    return;
  }
  if (!bnb::gpu::is_device_memory(attr)) return;
  if (attr.device < 0) return;
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    status_ = cuda_fail(cudaGetLastError(), "cudaGetDevice");
    return;
  }
  if (previous_ != attr.device) {
    const cudaError_t err = cudaSetDevice(attr.device);
    if (err != cudaSuccess) {
      status_ = cuda_fail(err, "cudaSetDevice");
      return;
    }
    switched_ = true;
  }
  status_ = check_device_code();
}

DeviceGuard::~DeviceGuard() {
  if (switched_) cudaSetDevice(previous_);
}

int32_t cuda_fail(cudaError_t err, const char* what) {
  const int32_t status = err == cudaErrorMemoryAllocation ? BNB_ERR_OUT_OF_MEMORY : BNB_ERR_DEVICE;
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) {
    // The library holds no code for this GPU: say which GPU, and how to build for it.
    char arch[64];
    const int device = current_device();
    bnb::gpu::arch_name(device < 0 ? 0 : device, arch, sizeof(arch));
    return fail(status, "%s: %s (%s): this library has no code for %s (GPU %d); rebuild it with %s including %s", what,
                cudaGetErrorString(err), cudaGetErrorName(err), arch, device, bnb::gpu::kArchOption, arch);
  }
  return fail(status, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

int32_t check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_fail(err, what);
  return ok();
}

}  // namespace bnb_cuda
