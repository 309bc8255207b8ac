// Status codes and the thread-local last-error message, shared by every platform library.
#include "bnb/status.h"

#include <stdarg.h>
#include <stdio.h>

namespace bnb {

namespace {
thread_local char last_error[512] = "";
}

int32_t fail(int32_t status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(last_error, sizeof(last_error), fmt, args);
  va_end(args);
  return status;
}

int32_t ok() {
  last_error[0] = '\0';
  return BNB_OK;
}

bool is_float_dtype(int32_t dtype) {
  return dtype == BNB_DTYPE_F32 || dtype == BNB_DTYPE_F16 || dtype == BNB_DTYPE_BF16;
}

bool is_4bit_blocksize(int64_t blocksize) {
  return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

const char* last() { return last_error; }

}  // namespace bnb

extern "C" {

const char* bnb_status_string(int32_t status) {
  switch (status) {
    case BNB_OK:
      return "ok";
    case BNB_ERR_NULL_POINTER:
      return "null pointer";
    case BNB_ERR_INVALID_ARGUMENT:
      return "invalid argument";
    case BNB_ERR_UNSUPPORTED_DTYPE:
      return "unsupported dtype";
    case BNB_ERR_INVALID_BLOCKSIZE:
      return "invalid blocksize";
    case BNB_ERR_UNSUPPORTED_QUANT_TYPE:
      return "unsupported quant type";
    case BNB_ERR_NOT_IMPLEMENTED:
      return "not implemented";
    case BNB_ERR_DEVICE:
      return "device error";
    case BNB_ERR_OUT_OF_MEMORY:
      return "out of memory";
    default:
      return "unknown status";
  }
}

const char* bnb_last_error(void) { return bnb::last(); }

}  // extern "C"
