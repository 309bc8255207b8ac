// C ABI entry points of the 4-bit and block-wise 8-bit (de)quantization: argument checks, then
// the active kernel table over blocks split across threads.
#include <stdint.h>

#include "bnb/bnb_c_api.h"
#include "bnb/numeric.h"
#include "code_books.h"
#include "kernels.h"
#include "memory_hint.h"
#include "status.h"
#include "threading.h"

namespace {

using bnb_cpu::kernels;
using bnb_cpu::parallel_for;

int32_t check_common(int64_t n, int64_t blocksize) {
  BNB_REQUIRE(n > 0, BNB_ERR_INVALID_ARGUMENT, "n must be positive, got %lld", static_cast<long long>(n));
  BNB_REQUIRE(blocksize > 0, BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got %lld",
              static_cast<long long>(blocksize));
  return BNB_OK;
}

int32_t check_4bit(int64_t n, int64_t blocksize, int32_t quant_type) {
  if (int32_t s = check_common(n, blocksize)) return s;
  BNB_REQUIRE(bnb_cpu::is_4bit_blocksize(blocksize), BNB_ERR_INVALID_BLOCKSIZE,
              "blocksize must be a power of two in [32, 4096], got %lld", static_cast<long long>(blocksize));
  BNB_REQUIRE(quant_type == BNB_QUANT_NF4 || quant_type == BNB_QUANT_FP4, BNB_ERR_UNSUPPORTED_QUANT_TYPE,
              "quant_type must be BNB_QUANT_NF4 or BNB_QUANT_FP4, got %d", quant_type);
  return BNB_OK;
}

// Blocks per thread task: about 64 KiB of elements, at least one block.
int64_t block_grain(int64_t blocksize) {
  const int64_t g = 16384 / blocksize;
  return g < 1 ? 1 : g;
}

}  // namespace

extern "C" {

int32_t bnb_quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type,
                          uint8_t* packed, float* absmax, bnb_stream) {
  BNB_REQUIRE(A && packed && absmax, BNB_ERR_NULL_POINTER, "A, packed and absmax must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  const auto& k = kernels();
  const int nf4 = quant_type == BNB_QUANT_NF4;
  bnb_cpu::advise_output(packed, (n + 1) / 2);
  parallel_for(bnb::ceil_div(n, blocksize), block_grain(blocksize),
               [&](int64_t b0, int64_t b1) { k.quantize_4bit(A, dtype, n, blocksize, nf4, packed, absmax, b0, b1); });
  return bnb_cpu::ok();
}

int32_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            int32_t quant_type, void* out, int32_t out_dtype, bnb_stream) {
  BNB_REQUIRE(packed && absmax && out, BNB_ERR_NULL_POINTER, "packed, absmax and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  const auto& k = kernels();
  const int nf4 = quant_type == BNB_QUANT_NF4;
  bnb_cpu::advise_output(out, n * bnb_cpu::dtype_size(out_dtype));
  parallel_for(bnb::ceil_div(n, blocksize), block_grain(blocksize), [&](int64_t b0, int64_t b1) {
    k.dequantize_4bit(packed, absmax, n, blocksize, nf4, out, out_dtype, b0, b1);
  });
  return bnb_cpu::ok();
}

int32_t bnb_quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                               uint8_t* out, float* absmax, bnb_stream) {
  BNB_REQUIRE(A && code && out && absmax, BNB_ERR_NULL_POINTER, "A, code, out and absmax must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  if (int32_t s = bnb_cpu::check_code_book(code, "code")) return s;
  const auto& k = kernels();
  bnb_cpu::advise_output(out, n);
  parallel_for(bnb::ceil_div(n, blocksize), block_grain(blocksize), [&](int64_t b0, int64_t b1) {
    k.quantize_blockwise(A, dtype, code, n, blocksize, out, absmax, b0, b1);
  });
  return bnb_cpu::ok();
}

int32_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                                 void* out, int32_t out_dtype, bnb_stream) {
  BNB_REQUIRE(A && code && absmax && out, BNB_ERR_NULL_POINTER, "A, code, absmax and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  const auto& k = kernels();
  bnb_cpu::advise_output(out, n * bnb_cpu::dtype_size(out_dtype));
  parallel_for(bnb::ceil_div(n, blocksize), block_grain(blocksize), [&](int64_t b0, int64_t b1) {
    k.dequantize_blockwise(A, code, absmax, n, blocksize, out, out_dtype, b0, b1);
  });
  return bnb_cpu::ok();
}

// CPU-only extension: out [n, c1 - c0] = columns [c0, c1) of the weight W [n, k], as f32, f16 or
// bf16: int8 rows CB (exact; the row scales are not applied), or packed 4-bit B4 with absmax, k,
// c0 and c1 then multiples of blocksize (each row's range is whole blocks). The input gradients'
// dense GEMM (A @ W) multiplies the weight column panel by column panel.
BNB_API int32_t bnb_cpu_expand_columns(const int8_t* CB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                       int64_t blocksize, int64_t n, int64_t k, int64_t c0, int64_t c1, void* out,
                                       int32_t dtype) {
  BNB_REQUIRE(out && ((CB && !B4) || (B4 && absmax && !CB)), BNB_ERR_NULL_POINTER,
              "give out and either CB (int8 weight) or B4 and absmax (4-bit weight)");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(n >= 0 && k >= 0 && c0 >= 0 && c0 <= c1 && c1 <= k, BNB_ERR_INVALID_ARGUMENT,
              "need n >= 0 and 0 <= c0 <= c1 <= k, got n=%lld, k=%lld, c0=%lld, c1=%lld", static_cast<long long>(n),
              static_cast<long long>(k), static_cast<long long>(c0), static_cast<long long>(c1));
  if (B4) {
    if (int32_t s = check_4bit(1, blocksize, quant_type)) return s;
    BNB_REQUIRE(k % blocksize == 0 && c0 % blocksize == 0 && c1 % blocksize == 0, BNB_ERR_INVALID_ARGUMENT,
                "k (%lld), c0 (%lld) and c1 (%lld) must be multiples of blocksize (%lld)", static_cast<long long>(k),
                static_cast<long long>(c0), static_cast<long long>(c1), static_cast<long long>(blocksize));
  }
  const int64_t w = c1 - c0;
  if (n == 0 || w == 0) return bnb_cpu::ok();
  const auto& kt = kernels();
  const int nf4 = quant_type == BNB_QUANT_NF4;
  const int64_t row_bytes = w * bnb_cpu::dtype_size(dtype);
  parallel_for(n, bnb::ceil_div(16384, w), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      void* dst = static_cast<char*>(out) + r * row_bytes;
      const int64_t first = r * k + c0;  // the row's range in the flat weight
      if (CB) {
        kt.int8_expand(CB + first, dst, dtype, 0, w);
      } else {
        kt.dequantize_4bit(B4 + first / 2, absmax + first / blocksize, w, blocksize, nf4, dst, dtype, 0, w / blocksize);
      }
    }
  });
  return bnb_cpu::ok();
}

}  // extern "C"
