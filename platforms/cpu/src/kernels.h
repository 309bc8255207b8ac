// The kernel table: one per instruction set (kernels_<isa>.cpp), chosen at run time (isa.h).
//
// Every entry works on a sub-range of the problem so that the C ABI layer (api_*.cpp) can split
// the work across threads; arguments are already checked there.
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"
#include "bnb/optimizer_math.h"

namespace bnb_cpu {

struct Gemm4bitArgs {
  const void* A;  // [m, k] in `dtype`
  int32_t dtype;
  int64_t m, n, k;
  const uint8_t* B;  // packed [n, k] 4-bit weight
  const float* absmax;
  const float* code;  // 16 entries
  int64_t blocksize;
  const void* bias;      // [n] in `dtype`, or NULL
  void* out;             // [m, n] in `dtype`
  const void* prepared;  // A re-laid out by gemm_4bit_prepare (NULL when the kernel needs none)
};

// A gemm_4bit_prepare buffer that can hold more than one layout starts with a header of this many
// bytes (the body keeps the buffer's 64-byte alignment) whose first int32 names the layout; the
// layout ids are each instruction set's own.
constexpr int64_t kPreparedHeader = 64;

struct Opt8Args {
  const bnb::OptimizerConsts* c;
  const void* g;
  void* p;
  int32_t dtype;
  float gnorm_scale;
  uint8_t* state1;
  uint8_t* state2;
  const float* qmap1;
  const float* qmap2;
  float* absmax1;
  float* absmax2;
  const uint8_t* grid1;  // 65536-entry grid -> code tables (optimizer_math.h's state rule)
  const uint8_t* grid2;
  // bound[j] (j = 1..255): the first grid index whose code is >= j, when the grid's codes never
  // decrease (so code(k) = #{j : bound[j] <= k}); NULL when a code book does not allow that.
  const uint16_t* bound1;
  const uint16_t* bound2;
  // The same rule as a table of the scaled value's bits (s = x / absmax in f32, as the kernels
  // form it): entry bits(s) >> 15 (sign, exponent and the top 8 bits of the mantissa) holds the
  // codes at the low and the high end of those bits' bucket (bytes 0 and 1) and, in bits 17-31,
  // t - 1 for the first low 15 bits t that take the high one: code = (bits(s) << 17) > entry ?
  // byte 1 : byte 0. NULL when a bucket holds more than one change of code.
  const uint32_t* keys1;
  const uint32_t* keys2;
  int64_t n;
};

// The buckets of Opt8Args::keys1: every s with |s| < 2, which holds every s of a finite block.
constexpr uint32_t kStateKeyEnd = (1u << 16) + (128u << 8);

struct Opt32Args {
  const bnb::OptimizerConsts* c;
  const void* g;
  void* p;
  int32_t dtype;
  float gnorm_scale;
  float* state1;
  float* state2;
  int64_t n;
  float lr_scaled;
  int32_t measure;  // 1: only accumulate the squared update norm (states untouched)
};

// A matmul against a weight W [n, k] kept quantized: int8 rows CB with scale[j] = SCB[j] / 127
// (LLM.int8()'s training path), or packed 4-bit with block-wise absmax and a 16-entry code book
// (QLoRA's input gradient; B4 != NULL). A is f32 (the C ABI layer converts other dtypes).
struct WeightMatmulArgs {
  const float* A;  // [m, k] for weight_matmul, [m, n] for weight_matmul_t
  int64_t m, n, k;
  const int8_t* CB;
  const float* scale;
  const uint8_t* B4;
  const float* absmax;
  int32_t nf4;  // 1: NF4, 0: FP4
  int64_t blocksize;
  // The active instruction set's 4-bit dequantization (whole blocks of the flat weight).
  void (*dequantize_4bit)(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                          int32_t dtype, int64_t b0, int64_t b1);
  const void* bias;  // [n] in bias_dtype, or NULL (weight_matmul only)
  int32_t bias_dtype;
  void* out;  // [m, n] / [m, k] in out_dtype
  int32_t out_dtype;
  // weight_matmul_t: the stride of acc's rows (>= k). Padded past a multiple of 4 KiB: with k =
  // 4096 the rows of acc would share the L1 cache's sets and evict each other (AVX2, 12 rows of
  // A: 23.7 ms against 4.6 ms at k = 4000).
  int64_t ldacc;
};

struct KernelTable {
  // 4-bit: blocks [b0, b1) of `blocksize` elements (the last one may be partial, ending at n).
  void (*quantize_4bit)(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int nf4, uint8_t* packed,
                        float* absmax, int64_t b0, int64_t b1);
  void (*dequantize_4bit)(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                          int32_t dtype, int64_t b0, int64_t b1);
  // 8-bit block-wise: blocks [b0, b1).
  void (*quantize_blockwise)(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                             uint8_t* out, float* absmax, int64_t b0, int64_t b1);
  void (*dequantize_blockwise)(const uint8_t* A, const float* code, const float* absmax, int64_t n, int64_t blocksize,
                               void* out, int32_t dtype, int64_t b0, int64_t b1);
  // 4-bit matmul, output columns [n0, n1). prepare_bytes(m, k, dtype) bytes of scratch are
  // filled by gemm_4bit_prepare once per call (0: the kernel reads A directly).
  int64_t (*gemm_4bit_prepare_bytes)(const Gemm4bitArgs& a);
  void (*gemm_4bit_prepare)(const Gemm4bitArgs& a, void* scratch);
  void (*gemm_4bit)(const Gemm4bitArgs& a, int64_t n0, int64_t n1);
  // LLM.int8(): rows [r0, r1) / output columns [n0, n1).
  void (*int8_vectorwise_quant)(const void* A, int32_t dtype, int64_t cols, float threshold, int8_t* out,
                                float* row_stats, const uint8_t* outlier_cols, int64_t r0, int64_t r1);
  void (*int8_linear_matmul)(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C, int64_t n0,
                             int64_t n1);
  void (*int8_mm_dequant)(const int32_t* C, const float* row_stats, const float* col_stats, int64_t n, const void* bias,
                          int32_t bias_dtype, void* out, int32_t out_dtype, int64_t r0, int64_t r1);
  // flags[c] = 1 for the columns c of the rows x cols matrix A holding |v| >= threshold (flags
  // already zeroed; the others untouched).
  void (*int8_outlier_scan)(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold, uint8_t* flags);
  // out = A @ W^T (+ bias) for output columns [n0, n1) (int8 weight only).
  void (*weight_matmul)(const WeightMatmulArgs& a, int64_t n0, int64_t n1);
  // out[i] = src[i] as `dtype` (exact: int8 values are representable in f32, f16 and bf16), i in [i0, i1).
  void (*int8_expand)(const int8_t* src, void* out, int32_t dtype, int64_t i0, int64_t i1);
  // Partial sums of out = A @ W over weight rows [j0, j1) into acc (m rows of k floats, a.ldacc
  // apart; overwritten).
  void (*weight_matmul_t)(const WeightMatmulArgs& a, float* acc, int64_t j0, int64_t j1);
  // Optimizers: elements [i0, i1) (whole 256-blocks for 8-bit). 32-bit returns sum(unorm^2).
  double (*optimizer_32bit)(const Opt32Args& a, int64_t i0, int64_t i1);
  void (*optimizer_8bit_blockwise)(const Opt8Args& a, int64_t i0, int64_t i1);
};

extern const KernelTable kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const KernelTable kernels_avx2;
extern const KernelTable kernels_avx512;
#endif
#if defined(__aarch64__)
extern const KernelTable kernels_neon;
#endif

// The table of the active instruction set.
const KernelTable& kernels();

}  // namespace bnb_cpu
