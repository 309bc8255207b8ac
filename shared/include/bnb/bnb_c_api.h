/* The common C ABI of every bitsandbytes platform library (libbitsandbytes_<platform>).
 *
 * Plain C types only: pointers, int64 sizes, enums, an opaque stream handle and an int status.
 * Every function checks its arguments before touching memory and returns a status code; the
 * thread-local message of the last failure is available from bnb_last_error(). A platform that
 * does not implement a function still exports it and returns BNB_ERR_NOT_IMPLEMENTED.
 *
 * Layouts (shared by every platform and by the Python op interface):
 *   4-bit: element 2i is the high nibble of byte i, element 2i+1 the low nibble; an odd count
 *          ends with the code of 0.0 in the last low nibble. absmax: one f32 per block.
 *   8-bit block-wise: one u8 code per element, indexing a sorted 256-entry f32 code book.
 */
#ifndef BNB_C_API_H
#define BNB_C_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BNB_API __declspec(dllexport)
#else
#define BNB_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a declaration below changes incompatibly or a function is added. */
#define BNB_ABI_VERSION 2

typedef enum bnb_status {
  BNB_OK = 0,
  BNB_ERR_NULL_POINTER = 1,
  BNB_ERR_INVALID_ARGUMENT = 2,
  BNB_ERR_UNSUPPORTED_DTYPE = 3,
  BNB_ERR_INVALID_BLOCKSIZE = 4,
  BNB_ERR_UNSUPPORTED_QUANT_TYPE = 5,
  BNB_ERR_NOT_IMPLEMENTED = 6,
  BNB_ERR_DEVICE = 7,
  BNB_ERR_OUT_OF_MEMORY = 8
} bnb_status;

typedef enum bnb_dtype {
  BNB_DTYPE_F32 = 0,
  BNB_DTYPE_F16 = 1,
  BNB_DTYPE_BF16 = 2,
  BNB_DTYPE_U8 = 3,
  BNB_DTYPE_I8 = 4,
  BNB_DTYPE_I32 = 5
} bnb_dtype;

typedef enum bnb_quant_type { BNB_QUANT_FP4 = 0, BNB_QUANT_NF4 = 1 } bnb_quant_type;

/* A device stream (cudaStream_t / hipStream_t); NULL on the CPU. */
typedef void* bnb_stream;

/* ABI version of the library (BNB_ABI_VERSION it was built with). */
BNB_API int32_t bnb_abi_version(void);
/* A JSON object describing the build: platform, version, compiler, ISA/arch list, ... */
BNB_API const char* bnb_build_info(void);
/* Fixed text for a status code. */
BNB_API const char* bnb_status_string(int32_t status);
/* Message of the last failing call on this thread ("" if none). */
BNB_API const char* bnb_last_error(void);

/* 4-bit quantization of n elements of `dtype` (f32/f16/bf16) in blocks of `blocksize`
 * (32..4096, a power of two). Writes (n + 1) / 2 bytes to `packed` and ceil(n / blocksize)
 * floats to `absmax`. */
BNB_API int32_t bnb_quantize_4bit(const void* A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type,
                                  uint8_t* packed, float* absmax, bnb_stream stream);

/* Inverse of bnb_quantize_4bit: writes n elements of `out_dtype` to `out`. */
BNB_API int32_t bnb_dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                                    int32_t quant_type, void* out, int32_t out_dtype, bnb_stream stream);

/* Block-wise 8-bit quantization against a sorted 256-entry f32 `code` (finite and ascending; the
 * CPU library refuses another code book with BNB_ERR_INVALID_ARGUMENT, a GPU library, whose `code`
 * lives in device memory, does not read it before the launch); any blocksize > 0. */
BNB_API int32_t bnb_quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                                       uint8_t* out, float* absmax, bnb_stream stream);

/* out[i] = code[A[i]] * absmax[i / blocksize], written as `out_dtype`. */
BNB_API int32_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n,
                                         int64_t blocksize, void* out, int32_t out_dtype, bnb_stream stream);

/* ---- 4-bit matmul --------------------------------------------------------------------------
 * out[m, N] = A[m, K] @ W^T (+ bias), W[N, K] = code[nibble] * absmax[block] read straight from
 * the packed bytes B (N*K/2 bytes, row-major W, layout above). A, bias and out have `dtype`
 * (f32/f16/bf16); bias may be NULL. `code` is the 16-entry f32 decode table. m = 1 is gemv. */
BNB_API int32_t bnb_gemm_4bit(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const uint8_t* B,
                              const float* absmax, const float* code, int64_t blocksize, const void* bias, void* out,
                              bnb_stream stream);

/* ---- LLM.int8() ----------------------------------------------------------------------------
 * Row-wise quantization of A[rows, cols] (f32/f16/bf16): row_stats[r] = max |A[r, c]| over the
 * non-outliers, out = round_half_even(A * 127 / row_stats) as int8. With threshold > 0, elements
 * with |A| >= threshold are outliers: outlier_cols[c] is set to 1 for every column holding one
 * (cols bytes, required when threshold > 0), and those columns are 0 in `out` when rows > 1 (only
 * the outlier elements when rows == 1). */
BNB_API int32_t bnb_int8_vectorwise_quant(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold,
                                          int8_t* out, float* row_stats, uint8_t* outlier_cols, bnb_stream stream);

/* C[m, n] = A[m, k] @ B[n, k]^T with exact int32 accumulation. */
BNB_API int32_t bnb_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                                       bnb_stream stream);

/* out[m, n] = C * row_stats[m] * col_stats[n] / 127^2 (+ bias[n]), written as `out_dtype`;
 * bias (may be NULL) has `bias_dtype`. */
BNB_API int32_t bnb_int8_mm_dequant(const int32_t* C, const float* row_stats, const float* col_stats, int64_t m,
                                    int64_t n, const void* bias, int32_t bias_dtype, void* out, int32_t out_dtype,
                                    bnb_stream stream);

/* ---- Optimizers ----------------------------------------------------------------------------
 * One fused pass per parameter of n elements: read g (scaled by gnorm_scale) and p (`dtype`),
 * update the state in f32 and write p back. The math of each algorithm is the Python reference's
 * (backends/reference/optimizers.py). AdEMAMix keeps two first moments: state1 holds 2 * n
 * values (fast EMA, then slow EMA) and absmax1 2 * ceil(n / 256). */
typedef enum bnb_optimizer {
  BNB_OPTIM_MOMENTUM = 0,
  BNB_OPTIM_RMSPROP = 1,
  BNB_OPTIM_ADAGRAD = 2,
  BNB_OPTIM_ADAM = 3,
  BNB_OPTIM_LION = 4,
  BNB_OPTIM_ADEMAMIX = 5,
  BNB_OPTIM_LAMB = 6,
  BNB_OPTIM_LARS = 7
} bnb_optimizer;

/* Doubles, as callers (Python) hold them: constants such as 1 - beta1 or lr * weight_decay are
 * formed in double and rounded to f32 once, exactly as the reference kernels form them. */
typedef struct bnb_optimizer_hparams {
  double beta1, beta2, beta3, alpha, eps, weight_decay, lr, gnorm_scale;
  double max_unorm;  /* > 0: scale the update by min(1, max_unorm * param_norm / ||update||) */
  double param_norm; /* ||p||_2, given by the caller when max_unorm > 0 */
  int64_t step;      /* 1 on the first update */
  int32_t skip_zeros;
} bnb_optimizer_hparams;

/* 32-bit state: state1 (and state2 for two-state algorithms, else NULL) are f32 of n values;
 * unorm_vec is one f32 that receives ||update||^2 when max_unorm > 0 (else NULL). */
BNB_API int32_t bnb_optimizer_update_32bit(int32_t optimizer, const void* g, void* p, int32_t dtype, float* state1,
                                           float* state2, float* unorm_vec, int64_t n,
                                           const bnb_optimizer_hparams* hparams, bnb_stream stream);

/* 8-bit block-wise state (blocks of 256): state1/state2 are u8 codes into the sorted 256-entry
 * qmap1/qmap2 with per-block absmax1/absmax2 (state2, qmap2 and absmax2 NULL for one-state
 * algorithms); the state is dequantized, updated and requantized with fresh absmax. The code books
 * must be finite and ascending, as `code` of bnb_quantize_blockwise, and are checked alike. */
BNB_API int32_t bnb_optimizer_update_8bit_blockwise(int32_t optimizer, const void* g, void* p, int32_t dtype,
                                                    uint8_t* state1, uint8_t* state2, const float* qmap1,
                                                    const float* qmap2, float* absmax1, float* absmax2, int64_t n,
                                                    const bnb_optimizer_hparams* hparams, bnb_stream stream);

/* ---- Paged (unified) memory: platforms with managed memory; others return NOT_IMPLEMENTED ---- */
BNB_API int32_t bnb_paged_alloc(int64_t bytes, void** out);
BNB_API int32_t bnb_paged_free(void* ptr);
/* Moves the pages of [ptr, ptr + bytes) to `device` (-1: host) asynchronously on `stream`. */
BNB_API int32_t bnb_paged_prefetch(void* ptr, int64_t bytes, int32_t device, bnb_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_C_API_H */
