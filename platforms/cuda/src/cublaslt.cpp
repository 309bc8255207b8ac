// cuBLASLt, opened with dlopen at first use instead of linked.
//
// The CUDA toolkit does not always carry cuBLAS (pip's nvidia-cublas-cu12 / nvidia-cublas hold it
// for torch), so the library neither needs its headers to build nor a link-time dependency: the
// first int8 matmul opens libcublasLt.so.<major> (already loaded by a CUDA build of torch, else
// found through the RPATH or the system loader path). The few declarations below are the
// documented cuBLASLt C API; when the library is missing or refuses a problem, the caller runs
// the built-in int8 kernel, so results never depend on it.
#include "cublaslt.h"

#include <dlfcn.h>
#include <library_types.h>

#include <mutex>

#define BNB_STR2(x) #x
#define BNB_STR(x) BNB_STR2(x)

namespace bnb_cuda {
namespace {

// From cublasLt.h / cublas_api.h (stable since CUDA 11).
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
constexpr int kComputeType32I = 72;  // CUBLAS_COMPUTE_32I
constexpr int kDescTransA = 3;       // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;       // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kOpN = 0, kOpT = 1;    // CUBLAS_OP_N, CUBLAS_OP_T
constexpr int kMaxDevices = 64;

struct Api {
  int (*create)(LtHandle*) = nullptr;
  int (*desc_create)(LtDesc*, int, int) = nullptr;
  int (*desc_destroy)(LtDesc) = nullptr;
  int (*desc_set)(LtDesc, int, const void*, size_t) = nullptr;
  int (*layout_create)(LtLayout*, int, uint64_t, uint64_t, int64_t) = nullptr;
  int (*layout_destroy)(LtLayout) = nullptr;
  int (*matmul)(LtHandle, LtDesc, const void*, const void*, LtLayout, const void*, LtLayout, const void*, const void*,
                LtLayout, void*, LtLayout, const void*, void*, size_t, cudaStream_t) = nullptr;
  bool ok = false;
};

template <typename F>
bool bind(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

const Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcublasLt.so." BNB_STR(BNB_CUBLASLT_MAJOR), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return;
    a.ok = bind(lib, "cublasLtCreate", a.create) && bind(lib, "cublasLtMatmulDescCreate", a.desc_create) &&
           bind(lib, "cublasLtMatmulDescDestroy", a.desc_destroy) &&
           bind(lib, "cublasLtMatmulDescSetAttribute", a.desc_set) &&
           bind(lib, "cublasLtMatrixLayoutCreate", a.layout_create) &&
           bind(lib, "cublasLtMatrixLayoutDestroy", a.layout_destroy) && bind(lib, "cublasLtMatmul", a.matmul);
  });
  return a;
}

// One handle per device, created on first use and kept for the life of the process.
LtHandle handle_for_current_device() {
  static std::mutex mu;
  static LtHandle handles[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (handles[device] == nullptr && api().create(&handles[device]) != 0) handles[device] = nullptr;
  return handles[device];
}

}  // namespace

bool cublaslt_int8_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                          cudaStream_t stream) {
  // The int8 tensor-core path needs leading dimensions that are multiples of 4 and aligned
  // pointers; anything else goes to the built-in kernel.
  if (k % 4 != 0 || n % 4 != 0) return false;
  if ((reinterpret_cast<uintptr_t>(A) | reinterpret_cast<uintptr_t>(B)) % 16 != 0) return false;
  if (reinterpret_cast<uintptr_t>(C) % 16 != 0) return false;
  const Api& lt = api();
  if (!lt.ok) return false;
  LtHandle handle = handle_for_current_device();
  if (handle == nullptr) return false;
  // Column-major view of the row-major problem: C^T[n, m] = B[n, k] . A^T[k, m], i.e. op(A') = T
  // on B stored as a k x n column-major matrix, op(B') = N on A stored as k x m.
  LtDesc desc = nullptr;
  LtLayout la = nullptr, lb = nullptr, lc = nullptr;
  bool done = false;
  const int trans_a = kOpT, trans_b = kOpN;
  const int32_t alpha = 1, beta = 0;
  if (lt.desc_create(&desc, kComputeType32I, CUDA_R_32I) == 0 &&
      lt.desc_set(desc, kDescTransA, &trans_a, sizeof(trans_a)) == 0 &&
      lt.desc_set(desc, kDescTransB, &trans_b, sizeof(trans_b)) == 0 &&
      lt.layout_create(&la, CUDA_R_8I, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k) == 0 &&
      lt.layout_create(&lb, CUDA_R_8I, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k) == 0 &&
      lt.layout_create(&lc, CUDA_R_32I, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n) == 0) {
    done = lt.matmul(handle, desc, &alpha, B, la, A, lb, &beta, C, lc, C, lc, nullptr, nullptr, 0, stream) == 0;
  }
  if (lc) lt.layout_destroy(lc);
  if (lb) lt.layout_destroy(lb);
  if (la) lt.layout_destroy(la);
  if (desc) lt.desc_destroy(desc);
  return done;
}

}  // namespace bnb_cuda
