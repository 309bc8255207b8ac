// CPU kernels of the common C ABI: 4-bit and block-wise 8-bit quantization.
#include <stdint.h>

#include "bnb/bnb_c_api.h"
#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "status.h"

namespace {

using bnb_cpu::dispatch_float;

template <typename E>
float block_absmax(const typename E::type* x, int64_t len) {
  float m = 0.0f;
  for (int64_t i = 0; i < len; ++i) m = bnb::nan_max_abs(m, E::load(x[i]));
  return m;
}

template <typename E>
void quantize_4bit_impl(const typename E::type* x, int64_t n, int64_t blocksize, int nf4, uint8_t* packed,
                        float* absmax) {
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const uint32_t zero_code = bnb::encode_4bit(nf4, 0.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const float amax = block_absmax<E>(x + start, len);
    absmax[b] = amax;
    const float inv = bnb::inverse_absmax(amax);
    // blocksize is even, so a block never splits a byte.
    for (int64_t i = 0; i < len; i += 2) {
      const uint32_t hi = bnb::encode_4bit(nf4, E::load(x[start + i]) * inv);
      const uint32_t lo = (i + 1 < len) ? bnb::encode_4bit(nf4, E::load(x[start + i + 1]) * inv) : zero_code;
      packed[(start + i) / 2] = static_cast<uint8_t>((hi << 4) | lo);
    }
  }
}

template <typename E>
void dequantize_4bit_impl(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4,
                          typename E::type* out) {
  float table[16];
  for (uint32_t c = 0; c < 16; ++c) table[c] = bnb::decode_4bit(nf4, c);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = packed[i / 2];
    const uint32_t code = (i & 1) ? (byte & 0x0fu) : (byte >> 4);
    out[i] = E::store(table[code] * absmax[i / blocksize]);
  }
}

template <typename E>
void quantize_blockwise_impl(const typename E::type* x, const float* code, int64_t n, int64_t blocksize, uint8_t* out,
                             float* absmax) {
  float mids[255];
  for (int i = 0; i < 255; ++i) mids[i] = bnb::midpoint(code[i], code[i + 1]);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const float amax = block_absmax<E>(x + start, len);
    absmax[b] = amax;
    const float inv = bnb::inverse_absmax(amax);
    for (int64_t i = 0; i < len; ++i) {
      out[start + i] = static_cast<uint8_t>(bnb::nearest_sorted_256(mids, E::load(x[start + i]) * inv));
    }
  }
}

template <typename E>
void dequantize_blockwise_impl(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                               typename E::type* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = E::store(code[A[i]] * absmax[i / blocksize]);
}

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

}  // namespace

extern "C" {

int32_t bnb_quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type,
                          uint8_t* packed, float* absmax, bnb_stream) {
  BNB_REQUIRE(A && packed && absmax, BNB_ERR_NULL_POINTER, "A, packed and absmax must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_4bit_impl<E>(static_cast<const typename E::type*>(A), n, blocksize, quant_type == BNB_QUANT_NF4, packed,
                          absmax);
  });
  return bnb_cpu::ok();
}

int32_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            int32_t quant_type, void* out, int32_t out_dtype, bnb_stream) {
  BNB_REQUIRE(packed && absmax && out, BNB_ERR_NULL_POINTER, "packed, absmax and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_4bit(n, blocksize, quant_type)) return s;
  dispatch_float(out_dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_4bit_impl<E>(packed, absmax, n, blocksize, quant_type == BNB_QUANT_NF4,
                            static_cast<typename E::type*>(out));
  });
  return bnb_cpu::ok();
}

int32_t bnb_quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                               uint8_t* out, float* absmax, bnb_stream) {
  BNB_REQUIRE(A && code && out && absmax, BNB_ERR_NULL_POINTER, "A, code, out and absmax must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    quantize_blockwise_impl<E>(static_cast<const typename E::type*>(A), code, n, blocksize, out, absmax);
  });
  return bnb_cpu::ok();
}

int32_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                                 void* out, int32_t out_dtype, bnb_stream) {
  BNB_REQUIRE(A && code && absmax && out, BNB_ERR_NULL_POINTER, "A, code, absmax and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  if (int32_t s = check_common(n, blocksize)) return s;
  dispatch_float(out_dtype, [&](auto e) {
    using E = decltype(e);
    dequantize_blockwise_impl<E>(A, code, absmax, n, blocksize, static_cast<typename E::type*>(out));
  });
  return bnb_cpu::ok();
}

}  // extern "C"
