// Status codes, the thread-local last-error message and argument-check helpers.
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cpu {

// Records `message` as this thread's last error and returns `status`.
int32_t fail(int32_t status, const char* fmt, ...);
// Clears the last error and returns BNB_OK.
int32_t ok();

bool is_float_dtype(int32_t dtype);
// Bytes per element of a float dtype (f32: 4, f16/bf16: 2).
inline int64_t dtype_size(int32_t dtype) { return dtype == BNB_DTYPE_F32 ? 4 : 2; }
bool is_4bit_blocksize(int64_t blocksize);
const char* last();

}  // namespace bnb_cpu

#define BNB_REQUIRE(cond, status, ...)                          \
  do {                                                          \
    if (!(cond)) return ::bnb_cpu::fail((status), __VA_ARGS__); \
  } while (0)
