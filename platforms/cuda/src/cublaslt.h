// cuBLASLt int8 GEMM, opened at run time (see cublaslt.cpp).
#pragma once

#include <stdint.h>

#include "bnb/hip_compat.h"

namespace bnb_cuda {

// C[m, n] = A[m, k] @ B[n, k]^T in int32 with cublasLtMatmul on `stream` of the current device.
// Returns true when cuBLASLt ran it; false (nothing launched) when the library is not available
// or refuses the problem, and the caller uses the built-in kernel.
bool cublaslt_int8_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                          cudaStream_t stream);

}  // namespace bnb_cuda
