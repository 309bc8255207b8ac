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
#define BNB_ABI_VERSION 1

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

/* Block-wise 8-bit quantization against a sorted 256-entry f32 `code`; any blocksize > 0. */
BNB_API int32_t bnb_quantize_blockwise(const void* A, int32_t dtype, const float* code, int64_t n, int64_t blocksize,
                                       uint8_t* out, float* absmax, bnb_stream stream);

/* out[i] = code[A[i]] * absmax[i / blocksize], written as `out_dtype`. */
BNB_API int32_t bnb_dequantize_blockwise(const uint8_t* A, const float* code, const float* absmax, int64_t n,
                                         int64_t blocksize, void* out, int32_t out_dtype, bnb_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* BNB_C_API_H */
