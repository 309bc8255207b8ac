// Status codes, the thread-local last-error message and argument-check helpers.
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cuda {

// Records the formatted message as this thread's last error and returns `status`.
int32_t fail(int32_t status, const char* fmt, ...);
// Clears the last error and returns BNB_OK.
int32_t ok();

bool is_float_dtype(int32_t dtype);
bool is_4bit_blocksize(int64_t blocksize);
const char* last();

}  // namespace bnb_cuda

#define BNB_REQUIRE(cond, status, ...)                           \
  do {                                                           \
    if (!(cond)) return ::bnb_cuda::fail((status), __VA_ARGS__); \
  } while (0)
