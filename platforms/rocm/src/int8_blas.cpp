// The ROCm library's answer to cublaslt.cpp (which is CUDA-only): no BLAS library is opened here,
// so bnb_int8_linear_matmul always runs the built-in int8 kernel of int8.cu. The Python glue
// (bitsandbytes_rocm) calls torch._int_mm, which torch runs with hipBLASLt, where the shapes fit;
// the C ABI stays free of any BLAS dependency.
#include "cublaslt.h"

namespace bnb_cuda {

bool cublaslt_int8_matmul(const int8_t*, const int8_t*, int64_t, int64_t, int64_t, int32_t*, cudaStream_t) {
  return false;
}

}  // namespace bnb_cuda
