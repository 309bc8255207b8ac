// Paged (unified) memory for paged optimizers: cudaMallocManaged, prefetch and free.
#include "common.cuh"

using namespace bnb_cuda;

extern "C" {

int32_t bnb_paged_alloc(int64_t bytes, void** out) {
  BNB_REQUIRE(out != nullptr, BNB_ERR_NULL_POINTER, "out must not be NULL");
  BNB_REQUIRE(bytes > 0, BNB_ERR_INVALID_ARGUMENT, "bytes must be positive, got %lld", static_cast<long long>(bytes));
  *out = nullptr;
  const cudaError_t err = cudaMallocManaged(out, static_cast<size_t>(bytes), cudaMemAttachGlobal);
  if (err != cudaSuccess) {
    *out = nullptr;
    return cuda_fail(err, "bnb_paged_alloc: cudaMallocManaged");
  }
  return ok();
}

int32_t bnb_paged_free(void* ptr) {
  BNB_REQUIRE(ptr != nullptr, BNB_ERR_NULL_POINTER, "ptr must not be NULL");
  const cudaError_t err = cudaFree(ptr);
  if (err != cudaSuccess) return cuda_fail(err, "bnb_paged_free: cudaFree");
  return ok();
}

int32_t bnb_paged_prefetch(void* ptr, int64_t bytes, int32_t device, bnb_stream stream) {
  BNB_REQUIRE(ptr != nullptr, BNB_ERR_NULL_POINTER, "ptr must not be NULL");
  BNB_REQUIRE(bytes > 0, BNB_ERR_INVALID_ARGUMENT, "bytes must be positive, got %lld", static_cast<long long>(bytes));
  BNB_REQUIRE(device >= -1, BNB_ERR_INVALID_ARGUMENT, "device must be >= -1 (host), got %d", device);
  // Without concurrent managed access (Windows, WSL, Jetson, some ROCm setups) the driver refuses
  // prefetches and migrates pages on access instead: a prefetch is then only a hint not taken.
  int gpu = device;
  if (gpu < 0) {
    const cudaError_t current = cudaGetDevice(&gpu);
    if (current != cudaSuccess) return cuda_fail(current, "bnb_paged_prefetch: cudaGetDevice");
  }
  int concurrent = 0;
  const cudaError_t attr = cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, gpu);
  if (attr != cudaSuccess) return cuda_fail(attr, "bnb_paged_prefetch: cudaDeviceGetAttribute");
  if (!concurrent) return ok();
#if CUDART_VERSION >= 13000
  cudaMemLocation location = {};
  location.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  location.id = device < 0 ? 0 : device;
  const cudaError_t err = cudaMemPrefetchAsync(ptr, static_cast<size_t>(bytes), location, 0, as_stream(stream));
#else
  const cudaError_t err =
      cudaMemPrefetchAsync(ptr, static_cast<size_t>(bytes), device < 0 ? cudaCpuDeviceId : device, as_stream(stream));
#endif
  if (err != cudaSuccess) return cuda_fail(err, "bnb_paged_prefetch: cudaMemPrefetchAsync");
  return ok();
}

}  // extern "C"
