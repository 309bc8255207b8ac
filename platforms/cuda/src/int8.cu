// LLM.int8() kernels: row-wise quantization with outlier columns, int8 GEMM, fused dequant + bias.
#include "bnb/fp_ops.h"
#include "bnb/optimizer_math.h"
#include "common.cuh"
#include "cublaslt.h"

namespace bnb_cuda {
namespace {

constexpr int kThreads = 256;
constexpr float kInv127Sq = 6.200124e-05f;  // 1 / 127^2 as the reference uses it

__device__ __forceinline__ float abs_f(float v) { return v < 0.0f ? -v : v; }

template <typename E>
__global__ void mark_outlier_cols_kernel(const typename E::T* __restrict__ A, int64_t total, int64_t cols,
                                         float threshold, uint8_t* __restrict__ outlier_cols) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    // Threads of many blocks may set one column's flag: a relaxed store (a plain one would race).
    if (abs_f(E::load(A[i])) >= threshold) bnb::store_relaxed<uint8_t>(outlier_cols + i % cols, 1);
  }
}

// One CTA per row: the absmax over the non-outliers, then the rounded codes.
template <typename E>
__global__ void __launch_bounds__(kThreads)
    vectorwise_quant_kernel(const typename E::T* __restrict__ A, int64_t rows, int64_t cols, float threshold,
                            const uint8_t* __restrict__ outlier_cols, int8_t* __restrict__ out,
                            float* __restrict__ row_stats) {
  __shared__ float scratch[kThreads / bnb::kWarpSize];
  const int64_t r = blockIdx.x;
  const typename E::T* row = A + r * cols;
  float m = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = E::load(row[c]);
    if (threshold > 0.0f && abs_f(v) >= threshold) continue;  // outliers count as 0
    m = bnb::nan_max_abs(m, v);
  }
  m = bnb::block_absmax(m, scratch);
  if (threadIdx.x == 0) row_stats[r] = m;
  const float scale = bnb::int8_row_scale(m);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = E::load(row[c]);
    int8_t q = bnb::int8_round(v, scale, m);
    if (threshold > 0.0f && (rows > 1 ? outlier_cols[c] != 0 : abs_f(v) >= threshold)) q = 0;
    out[r * cols + c] = q;
  }
}

// The built-in int8 GEMM: 16 x 16 output tiles, K staged through shared memory, exact int32 sums.
constexpr int kTile = 16;

__global__ void int8_matmul_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t m, int64_t n,
                                   int64_t k, int32_t* __restrict__ C) {
  __shared__ int32_t As[kTile][kTile + 1];
  __shared__ int32_t Bs[kTile][kTile + 1];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + ty;  // of C (and A)
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + tx;  // of C (row of B)
  const int64_t brow = static_cast<int64_t>(blockIdx.x) * kTile + ty;
  int32_t acc = 0;
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    As[ty][tx] = (row < m && k0 + tx < k) ? A[row * k + k0 + tx] : 0;
    Bs[ty][tx] = (brow < n && k0 + tx < k) ? B[brow * k + k0 + tx] : 0;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kTile; ++i) acc += As[ty][i] * Bs[tx][i];
    __syncthreads();
  }
  if (row < m && col < n) C[row * n + col] = acc;
}

template <int D>
__device__ __forceinline__ float load_as_float(const void* p, int64_t i) {
  return Elem<D>::load(static_cast<const typename Elem<D>::T*>(p)[i]);
}

__device__ __forceinline__ float load_bias(const void* bias, int32_t dtype, int64_t i) {
  switch (dtype) {
    case BNB_DTYPE_F32:
      return load_as_float<BNB_DTYPE_F32>(bias, i);
    case BNB_DTYPE_F16:
      return load_as_float<BNB_DTYPE_F16>(bias, i);
    default:
      return load_as_float<BNB_DTYPE_BF16>(bias, i);
  }
}

template <typename E>
__global__ void mm_dequant_kernel(const int32_t* __restrict__ C, const float* __restrict__ row_stats,
                                  const float* __restrict__ col_stats, int64_t m, int64_t n, const void* bias,
                                  int32_t bias_dtype, typename E::T* __restrict__ out) {
  const int64_t total = m * n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / n, c = i % n;
    float v = bnb::mul_rn(bnb::mul_rn(static_cast<float>(C[i]), bnb::mul_rn(row_stats[r], col_stats[c])), kInv127Sq);
    if (bias != nullptr) v = bnb::add_rn(v, load_bias(bias, bias_dtype, c));
    out[i] = E::store(v);
  }
}

}  // namespace
}  // namespace bnb_cuda

using namespace bnb_cuda;

extern "C" {

int32_t bnb_int8_vectorwise_quant(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold,
                                  int8_t* out, float* row_stats, uint8_t* outlier_cols, bnb_stream stream) {
  BNB_REQUIRE(A && out && row_stats, BNB_ERR_NULL_POINTER, "A, out and row_stats must not be NULL");
  BNB_REQUIRE(!(threshold > 0.0f) || outlier_cols, BNB_ERR_NULL_POINTER, "outlier_cols is required when threshold > 0");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(rows > 0 && cols > 0, BNB_ERR_INVALID_ARGUMENT, "rows and cols must be positive, got %lld x %lld",
              static_cast<long long>(rows), static_cast<long long>(cols));
  BNB_REQUIRE(rows < (1LL << 31), BNB_ERR_INVALID_ARGUMENT, "too many rows for one launch");
  BNB_REQUIRE(threshold >= 0.0f, BNB_ERR_INVALID_ARGUMENT, "threshold must be >= 0");
  DeviceGuard guard(A);
  if (guard.status()) return guard.status();
  cudaStream_t s = as_stream(stream);
  if (threshold > 0.0f) {
    const cudaError_t err = cudaMemsetAsync(outlier_cols, 0, static_cast<size_t>(cols), s);
    if (err != cudaSuccess) return cuda_fail(err, "bnb_int8_vectorwise_quant: cudaMemsetAsync");
  }
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    const auto* a = static_cast<const typename E::T*>(A);
    if (threshold > 0.0f) {
      mark_outlier_cols_kernel<E>
          <<<grid_for(rows * cols, kThreads), kThreads, 0, s>>>(a, rows * cols, cols, threshold, outlier_cols);
    }
    vectorwise_quant_kernel<E>
        <<<static_cast<unsigned int>(rows), kThreads, 0, s>>>(a, rows, cols, threshold, outlier_cols, out, row_stats);
  });
  return check_launch("bnb_int8_vectorwise_quant");
}

int32_t bnb_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                               bnb_stream stream) {
  BNB_REQUIRE(A && B && C, BNB_ERR_NULL_POINTER, "A, B and C must not be NULL");
  BNB_REQUIRE(m > 0 && n > 0 && k > 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be positive, got %lld, %lld, %lld",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
  BNB_REQUIRE(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, BNB_ERR_INVALID_ARGUMENT,
              "m, n and k must fit in int32");
  DeviceGuard guard(A);
  if (guard.status()) return guard.status();
  cudaStream_t s = as_stream(stream);
  if (cublaslt_int8_matmul(A, B, m, n, k, C, s)) return check_launch("bnb_int8_linear_matmul (cublasLt)");
  cudaGetLastError();  // a refused cuBLASLt call leaves nothing to report
  // The built-in kernel's grid has one row of tiles per 16 rows of A (cuBLASLt has no such limit).
  BNB_REQUIRE((m + kTile - 1) / kTile < 65536, BNB_ERR_INVALID_ARGUMENT,
              "A has %lld rows, too many for the built-in int8 kernel (at most %d); cuBLASLt was not usable",
              static_cast<long long>(m), 65535 * kTile);
  const dim3 grid(static_cast<unsigned int>((n + kTile - 1) / kTile),
                  static_cast<unsigned int>((m + kTile - 1) / kTile));
  int8_matmul_kernel<<<grid, kTile * kTile, 0, s>>>(A, B, m, n, k, C);
  return check_launch("bnb_int8_linear_matmul");
}

int32_t bnb_int8_mm_dequant(const int32_t* C, const float* row_stats, const float* col_stats, int64_t m, int64_t n,
                            const void* bias, int32_t bias_dtype, void* out, int32_t out_dtype, bnb_stream stream) {
  BNB_REQUIRE(C && row_stats && col_stats && out, BNB_ERR_NULL_POINTER,
              "C, row_stats, col_stats and out must not be NULL");
  BNB_REQUIRE(is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(bias == nullptr || is_float_dtype(bias_dtype), BNB_ERR_UNSUPPORTED_DTYPE,
              "bias's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m > 0 && n > 0, BNB_ERR_INVALID_ARGUMENT, "m and n must be positive");
  DeviceGuard guard(C);
  if (guard.status()) return guard.status();
  dispatch_float(out_dtype, [&](auto e) {
    using E = decltype(e);
    mm_dequant_kernel<E><<<grid_for(m * n, kThreads), kThreads, 0, as_stream(stream)>>>(
        C, row_stats, col_stats, m, n, bias, bias_dtype, static_cast<typename E::T*>(out));
  });
  return check_launch("bnb_int8_mm_dequant");
}

}  // extern "C"
