// The AVX2 kernels defined outside kernels_avx2.cpp (kernels_avx2_quant.cpp,
// kernels_avx2_blockwise.cpp, kernels_avx2_int8.cpp, kernels_avx2_optim.cpp), for the avx2 table
// and for the avx512 table, which reuses those that are faster than its own.
// Call them only where the avx2 instruction set is usable (every avx512 CPU qualifies).
#pragma once

#include <stdint.h>

#include "kernels.h"

namespace bnb_cpu {
namespace avx2 {

// kernels_avx2_quant.cpp
void quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed, float* absmax,
                   int64_t b0, int64_t b1);
// kernels_avx2_blockwise.cpp
void quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize, uint8_t* out,
                        float* absmax, int64_t b0, int64_t b1);
void dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                          void* out, int32_t dtype, int64_t b0, int64_t b1);
// kernels_avx2_int8.cpp
void int8_vectorwise_quant(const void* A, int32_t dtype, int64_t cols, float threshold, int8_t* out, float* row_stats,
                           const uint8_t* outlier_cols, int64_t r0, int64_t r1);
void int8_outlier_scan(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold, uint8_t* flags);
// kernels_avx2_optim.cpp
double optimizer_32bit(const Opt32Args& a, int64_t i0, int64_t i1);
void optimizer_8bit_blockwise(const Opt8Args& a, int64_t i0, int64_t i1);

}  // namespace avx2
}  // namespace bnb_cpu
