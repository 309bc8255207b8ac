// CUDA kernels of the common C ABI: 4-bit (NF4/FP4) and block-wise 8-bit quantization.
#include "bnb/codebooks.h"
#include "bnb/fp_ops.h"
#include "bnb/numeric.h"
#include "common.cuh"

namespace bnb_cuda {
namespace {

constexpr int kThreads = 256;  // a multiple of every warp size (32, 64)
constexpr int kMaxPairs = 8;   // 4096 / 2 / 256 pairs per thread at most

// FP4 codes in ascending order of value (BNB_FP4_SORTED_CODES), nibble i = the code at sorted
// position i: a shift replaces the table lookup that would put codebooks.h's array in local memory.
constexpr uint64_t kFp4SortedCodes = 0x3254761809EFCDABull;

// encode_4bit of codebooks.h (same codes), with the FP4 position-to-code map in a register.
__device__ __forceinline__ uint32_t encode_4bit_fast(int nf4, float x) {
  if (nf4) return bnb::encode_nf4(x);
  const float fp4[16] = BNB_FP4_TABLE;
  float sorted[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) sorted[i] = fp4[(kFp4SortedCodes >> (4 * i)) & 15u];
  return static_cast<uint32_t>((kFp4SortedCodes >> (4 * bnb::nearest_sorted_16(sorted, x))) & 15u);
}

// One CTA quantizes kThreads / tpq blocks; `tpq` threads (a power of two) share a block and each
// handles `ppt` consecutive-lane pairs of elements. The block absmax is a segmented tree
// reduction in shared memory, which needs no assumption about the warp size.
template <typename E>
__global__ void __launch_bounds__(kThreads)
    quantize_4bit_kernel(const typename E::T* __restrict__ x, int64_t n, int64_t nblocks, int blocksize, int tpq,
                         int ppt, int nf4, uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  __shared__ float red[kThreads];
  const int lane = threadIdx.x % tpq;
  const int64_t qb = static_cast<int64_t>(blockIdx.x) * (kThreads / tpq) + threadIdx.x / tpq;
  const bool active = qb < nblocks;
  const int64_t start = qb * blocksize;
  float v[2 * kMaxPairs];
  float m = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxPairs; ++j) {
    v[2 * j] = 0.0f;
    v[2 * j + 1] = 0.0f;
    if (active && j < ppt) {
      const int64_t e = start + 2 * static_cast<int64_t>(lane + j * tpq);
      if (e < n) {
        v[2 * j] = E::load(x[e]);
        m = bnb::nan_max_abs(m, v[2 * j]);
      }
      if (e + 1 < n) {
        v[2 * j + 1] = E::load(x[e + 1]);
        m = bnb::nan_max_abs(m, v[2 * j + 1]);
      }
    }
  }
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = tpq / 2; s > 0; s /= 2) {
    if (lane < s) red[threadIdx.x] = bnb::nan_max_abs(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const float amax = red[threadIdx.x - lane];
  if (!active) return;
  if (lane == 0) absmax[qb] = amax;
  const float inv = bnb::inverse_absmax(amax);
  const uint32_t zero_code = encode_4bit_fast(nf4, 0.0f);
#pragma unroll
  for (int j = 0; j < kMaxPairs; ++j) {
    if (j < ppt) {
      const int64_t e = start + 2 * static_cast<int64_t>(lane + j * tpq);
      if (e < n) {
        const uint32_t hi = encode_4bit_fast(nf4, bnb::mul_rn(v[2 * j], inv));
        const uint32_t lo = e + 1 < n ? encode_4bit_fast(nf4, bnb::mul_rn(v[2 * j + 1], inv)) : zero_code;
        packed[e / 2] = static_cast<uint8_t>((hi << 4) | lo);
      }
    }
  }
}

// One thread per packed byte (two elements).
template <typename E>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, int64_t n,
                                       int64_t blocksize, int nf4, typename E::T* __restrict__ out) {
  __shared__ float table[16];
  if (threadIdx.x == 0) {
#pragma unroll
    for (uint32_t c = 0; c < 16; ++c) table[c] = bnb::decode_4bit(nf4, c);  // constant indices: no local memory
  }
  __syncthreads();
  const int64_t bytes = (n + 1) / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes; i += stride) {
    const uint8_t b = packed[i];
    const int64_t e = 2 * i;
    out[e] = E::store(mul_cpu_nan(table[b >> 4], absmax[e / blocksize]));
    if (e + 1 < n) out[e + 1] = E::store(mul_cpu_nan(table[b & 15], absmax[(e + 1) / blocksize]));
  }
}

// One CTA per block; the 255 midpoints of the code book live in shared memory.
template <typename E>
__global__ void quantize_blockwise_kernel(const typename E::T* __restrict__ x, const float* __restrict__ code,
                                          int64_t n, int64_t blocksize, uint8_t* __restrict__ out,
                                          float* __restrict__ absmax) {
  __shared__ float mids[255];
  __shared__ float scratch[kThreads / bnb::kWarpSize];
  for (int i = threadIdx.x; i < 255; i += blockDim.x) mids[i] = bnb::midpoint(code[i], code[i + 1]);
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blocksize;
  const int64_t end = start + blocksize < n ? start + blocksize : n;
  float m = 0.0f;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) m = bnb::nan_max_abs(m, E::load(x[i]));
  const float amax = bnb::block_absmax(m, scratch);  // contains the barrier that publishes mids
  if (threadIdx.x == 0) absmax[blockIdx.x] = amax;
  const float inv = bnb::inverse_absmax(amax);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    out[i] = static_cast<uint8_t>(bnb::nearest_sorted_256(mids, bnb::mul_rn(E::load(x[i]), inv)));
  }
}

template <typename E>
__global__ void dequantize_blockwise_kernel(const uint8_t* __restrict__ A, const float* __restrict__ code,
                                            const float* __restrict__ absmax, int64_t n, int64_t blocksize,
                                            typename E::T* __restrict__ out) {
  __shared__ float table[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = code[i];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = E::store(mul_cpu_nan(table[A[i]], absmax[i / blocksize]));
  }
}

int32_t check_common(int64_t n, int64_t blocksize) {
  BNB_REQUIRE(n > 0, BNB_ERR_INVALID_ARGUMENT, "n must be positive, got %lld", static_cast<long long>(n));
  BNB_REQUIRE(blocksize > 0, BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got %lld",
              static_cast<long long>(blocksize));
  return BNB_OK;
}

int32_t check_4bit(int64_t n, int64_t blocksize, int32_t quant_type) {
  if (int32_t s = check_common(n, blocksize)) return s;
  BNB_REQUIRE(is_4bit_blocksize(blocksize), BNB_ERR_INVALID_BLOCKSIZE,
              "blocksize must be a power of two in [32, 4096], got %lld", static_cast<long long>(blocksize));
  BNB_REQUIRE(quant_type == BNB_QUANT_NF4 || quant_type == BNB_QUANT_FP4, BNB_ERR_UNSUPPORTED_QUANT_TYPE,
              "quant_type must be BNB_QUANT_NF4 or BNB_QUANT_FP4, got %d", quant_type);
  return BNB_OK;
}

int blockwise_threads(int64_t blocksize) {
  int t = 64;  // a multiple of every warp size
  while (t < kThreads && t < blocksize) t *= 2;
  return t;
}

}  // namespace
}  // namespace bnb_cuda

using namespace bnb_cuda;

extern "C" {

int32_t bnb_quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type,
                          uint8_t* packed, float* absmax, bnb_stream stream) {
  BNB_REQUIRE(A && packed && absmax, BNB_ERR_NULL_POINTER, "A, packed and absmax must not be NULL");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  DeviceGuard guard(A);
  if (guard.status()) return guard.status();
  const int64_t nblocks = bnb::ceil_div(n, blocksize);
  const int tpq = static_cast<int>(blocksize / 2 < kThreads ? blocksize / 2 : kThreads);
  const int ppt = static_cast<int>(blocksize / 2 / tpq);
  const int64_t ctas = (nblocks + kThreads / tpq - 1) / (kThreads / tpq);
  BNB_REQUIRE(ctas < (1LL << 31), BNB_ERR_INVALID_ARGUMENT, "n is too large for one launch");
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_4bit_kernel<E><<<static_cast<unsigned int>(ctas), kThreads, 0, as_stream(stream)>>>(
        static_cast<const typename E::T*>(A), n, nblocks, static_cast<int>(blocksize), tpq, ppt,
        quant_type == BNB_QUANT_NF4, packed, absmax);
  });
  return check_launch("bnb_quantize_4bit");
}

int32_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            int32_t quant_type, void* out, int32_t out_dtype, bnb_stream stream) {
  BNB_REQUIRE(packed && absmax && out, BNB_ERR_NULL_POINTER, "packed, absmax and out must not be NULL");
  BNB_REQUIRE(is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  DeviceGuard guard(out);
  if (guard.status()) return guard.status();
  dispatch_float(out_dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_4bit_kernel<E><<<grid_for((n + 1) / 2, kThreads), kThreads, 0, as_stream(stream)>>>(
        packed, absmax, n, blocksize, quant_type == BNB_QUANT_NF4, static_cast<typename E::T*>(out));
  });
  return check_launch("bnb_dequantize_4bit");
}

int32_t bnb_quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                               uint8_t* out, float* absmax, bnb_stream stream) {
  BNB_REQUIRE(A && code && out && absmax, BNB_ERR_NULL_POINTER, "A, code, out and absmax must not be NULL");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  const int64_t nblocks = bnb::ceil_div(n, blocksize);
  BNB_REQUIRE(nblocks < (1LL << 31), BNB_ERR_INVALID_ARGUMENT, "too many blocks for one launch");
  DeviceGuard guard(A);
  if (guard.status()) return guard.status();
  const int threads = blockwise_threads(blocksize);
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_blockwise_kernel<E><<<static_cast<unsigned int>(nblocks), threads, 0, as_stream(stream)>>>(
        static_cast<const typename E::T*>(A), code, n, blocksize, out, absmax);
  });
  return check_launch("bnb_quantize_blockwise");
}

int32_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                                 void* out, int32_t out_dtype, bnb_stream stream) {
  BNB_REQUIRE(A && code && absmax && out, BNB_ERR_NULL_POINTER, "A, code, absmax and out must not be NULL");
  BNB_REQUIRE(is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  DeviceGuard guard(out);
  if (guard.status()) return guard.status();
  dispatch_float(out_dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_blockwise_kernel<E><<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
        A, code, absmax, n, blocksize, static_cast<typename E::T*>(out));
  });
  return check_launch("bnb_dequantize_blockwise");
}

}  // extern "C"
