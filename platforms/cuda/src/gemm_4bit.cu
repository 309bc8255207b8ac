// 4-bit matmul straight from the packed weights: out[m, N] = A[m, K] @ W^T (+ bias), where
// W[N, K] = code[nibble] * absmax[block] is decoded on the fly and never written to memory.
//
// One warp computes one output column for up to kRows rows of A (m = 1 is the batch-1 gemv
// that dominates LLM decoding; small batches reuse each decoded weight kRows times). Each weight
// is rounded to A's dtype before use, as the reference multiplies by the dequantized weight.
// Every product is added by one explicit fused multiply-add (fma_rn): a plain `acc += a * w` is
// contracted where the compiler chooses (nvcc's default --fmad=true), which could differ between
// the aligned and unaligned paths and make a result depend on where the tensors start.
#include "bnb/fp_ops.h"
#include "common.cuh"

namespace bnb_cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kChunk = 32;  // elements per 16-byte load of packed weights

template <typename E, int kRows>
__global__ void gemm_4bit_kernel(const typename E::T* __restrict__ A, int64_t m, int64_t N, int64_t K,
                                 const uint8_t* __restrict__ B, const float* __restrict__ absmax,
                                 const float* __restrict__ code, int64_t blocksize, const typename E::T* bias,
                                 typename E::T* __restrict__ out, bool vectorized) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % bnb::kWarpSize;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / bnb::kWarpSize;
  if (col >= N) return;
  const int64_t wbase = col * K;  // flat index of W[col, 0]
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * kRows; r0 < m; r0 += static_cast<int64_t>(gridDim.y) * kRows) {
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    if (vectorized) {
      // K % 32 == 0, B and A 16-byte aligned: 32 weights per 16-byte load (one absmax), A in
      // 16-byte loads, everything in registers (all indices are compile-time after unrolling).
      using T = typename E::T;
      constexpr int kVecA = kChunk * static_cast<int>(sizeof(T)) / 16;
      const uint4* wrow = reinterpret_cast<const uint4*>(B + wbase / 2);
      for (int64_t ch = lane; ch < K / kChunk; ch += bnb::kWarpSize) {
        const uint4 raw = wrow[ch];
        const float scale = absmax[(wbase + ch * kChunk) / blocksize];
        const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
        float w[kChunk];
#pragma unroll
        for (int j = 0; j < kChunk / 2; ++j) {
          const uint32_t byte = (words[j / 4] >> (8 * (j % 4))) & 0xffu;
          w[2 * j] = E::load(E::store(bnb::mul_rn(table[byte >> 4], scale)));
          w[2 * j + 1] = E::load(E::store(bnb::mul_rn(table[byte & 15u], scale)));
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r < m) {
            alignas(16) T a[kChunk];
            const uint4* src = reinterpret_cast<const uint4*>(A + (r0 + r) * K + ch * kChunk);
            uint4* dst = reinterpret_cast<uint4*>(a);
#pragma unroll
            for (int q = 0; q < kVecA; ++q) dst[q] = src[q];
#pragma unroll
            for (int j = 0; j < kChunk; ++j) acc[r] = bnb::fma_rn(E::load(a[j]), w[j], acc[r]);
          }
        }
      }
    } else if (K % kChunk == 0) {
      // A or B not 16-byte aligned: the vectorized path's order, element by element, so that the
      // result does not depend on where the tensors start (a checkpoint loaded at another offset
      // must give the same logits).
      for (int64_t ch = lane; ch < K / kChunk; ch += bnb::kWarpSize) {
        const float scale = absmax[(wbase + ch * kChunk) / blocksize];
        for (int j = 0; j < kChunk; ++j) {
          const int64_t kk = ch * kChunk + j;
          const uint8_t byte = B[(wbase + kk) / 2];
          const float w = E::load(E::store(bnb::mul_rn(table[(j & 1) ? (byte & 15u) : (byte >> 4)], scale)));
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            if (r0 + r < m) acc[r] = bnb::fma_rn(E::load(A[(r0 + r) * K + kk]), w, acc[r]);
          }
        }
      }
    } else {
      for (int64_t kk = lane; kk < K; kk += bnb::kWarpSize) {
        const int64_t idx = wbase + kk;
        const uint8_t byte = B[idx / 2];
        const uint32_t c = (idx & 1) ? (byte & 15u) : (byte >> 4);
        const float w = E::load(E::store(bnb::mul_rn(table[c], absmax[idx / blocksize])));
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r < m) acc[r] = bnb::fma_rn(E::load(A[(r0 + r) * K + kk]), w, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float total = bnb::warp_sum(acc[r]);
      if (lane == 0 && r0 + r < m) {
        const float b = bias != nullptr ? E::load(bias[col]) : 0.0f;
        out[(r0 + r) * N + col] = E::store(total + b);
      }
    }
  }
}

template <typename E, int kRows>
void launch(const void* A, int64_t m, int64_t n, int64_t k, const uint8_t* B, const float* absmax, const float* code,
            int64_t blocksize, const void* bias, void* out, bool vectorized, cudaStream_t s) {
  const int64_t groups = (m + kRows - 1) / kRows;
  const dim3 grid(static_cast<unsigned int>((n + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned int>(groups < 65535 ? groups : 65535));
  // The device's warp size, not bnb::kWarpSize: host code does not know the target's wavefront.
  gemm_4bit_kernel<E, kRows><<<grid, kWarpsPerBlock * device_warp_size(), 0, s>>>(
      static_cast<const typename E::T*>(A), m, n, k, B, absmax, code, blocksize,
      static_cast<const typename E::T*>(bias), static_cast<typename E::T*>(out), vectorized);
}

}  // namespace
}  // namespace bnb_cuda

using namespace bnb_cuda;

extern "C" {

int32_t bnb_gemm_4bit(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const uint8_t* B,
                      const float* absmax, const float* code, int64_t blocksize, const void* bias, void* out,
                      bnb_stream stream) {
  BNB_REQUIRE(A && B && absmax && code && out, BNB_ERR_NULL_POINTER, "A, B, absmax, code and out must not be NULL");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m > 0 && n > 0 && k > 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be positive, got %lld, %lld, %lld",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
  BNB_REQUIRE(is_4bit_blocksize(blocksize), BNB_ERR_INVALID_BLOCKSIZE,
              "blocksize must be a power of two in [32, 4096], got %lld", static_cast<long long>(blocksize));
  BNB_REQUIRE((n + kWarpsPerBlock - 1) / kWarpsPerBlock < (1LL << 31), BNB_ERR_INVALID_ARGUMENT, "n is too large");
  DeviceGuard guard(out);
  if (guard.status()) return guard.status();
  const bool vectorized =
      k % kChunk == 0 && reinterpret_cast<uintptr_t>(B) % 16 == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  cudaStream_t s = as_stream(stream);
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    if (m == 1) {
      launch<E, 1>(A, m, n, k, B, absmax, code, blocksize, bias, out, vectorized, s);
    } else {
      launch<E, 4>(A, m, n, k, B, absmax, code, blocksize, bias, out, vectorized, s);
    }
  });
  return check_launch("bnb_gemm_4bit");
}

}  // extern "C"
