// Status codes, the thread-local last-error message and argument-check helpers, shared by every
// platform library (implemented once in shared/src/status.cpp, which also defines the C ABI's
// bnb_status_string() and bnb_last_error()).
#pragma once

#include <stdint.h>

#include "bnb_c_api.h"

namespace bnb {

// Records the formatted message as this thread's last error and returns `status`.
int32_t fail(int32_t status, const char* fmt, ...);
// Clears the last error and returns BNB_OK.
int32_t ok();
// This thread's last error message ("" if none).
const char* last();

bool is_float_dtype(int32_t dtype);
bool is_4bit_blocksize(int64_t blocksize);

}  // namespace bnb

// Returns `status` with the formatted message from the enclosing function unless `cond` holds.
#define BNB_REQUIRE(cond, status, ...)                      \
  do {                                                      \
    if (!(cond)) return ::bnb::fail((status), __VA_ARGS__); \
  } while (0)
