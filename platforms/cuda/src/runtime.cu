// Device guard and launch-error helpers.
#include "common.cuh"

namespace bnb_cuda {

DeviceGuard::DeviceGuard(const void* ptr) {
  if (ptr == nullptr) return;
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // an unknown pointer is not an error here; the kernel will report it
    return;
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) return;
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
}

DeviceGuard::~DeviceGuard() {
  if (switched_) cudaSetDevice(previous_);
}

int32_t cuda_fail(cudaError_t err, const char* what) {
  const int32_t status = err == cudaErrorMemoryAllocation ? BNB_ERR_OUT_OF_MEMORY : BNB_ERR_DEVICE;
  return fail(status, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

int32_t check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return cuda_fail(err, what);
  return ok();
}

}  // namespace bnb_cuda
