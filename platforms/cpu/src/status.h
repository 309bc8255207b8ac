// The shared status helpers (bnb/status.h) under the CPU library's namespace.
#pragma once

#include <stdint.h>

#include "bnb/status.h"

namespace bnb_cpu {

using bnb::fail;
using bnb::is_4bit_blocksize;
using bnb::is_float_dtype;
using bnb::last;
using bnb::ok;

// Bytes per element of a float dtype (f32: 4, f16/bf16: 2).
inline int64_t dtype_size(int32_t dtype) { return dtype == BNB_DTYPE_F32 ? 4 : 2; }

// BNB_OK when the n-entry code book `arg` is finite and ascending, as the searching quantizers need
// it (otherwise their codes are far from the nearest entry, without an error); else
// BNB_ERR_INVALID_ARGUMENT naming the first entry that breaks it.
inline int32_t check_code_book(const float* code, int n, const char* arg) {
  int i = 0;  // the first entry that is not finite or is below the one before it
  while (i < n && code[i] - code[i] == 0.0f && (i == 0 || code[i - 1] <= code[i])) ++i;
  if (i == n) return BNB_OK;
  if (!(code[i] - code[i] == 0.0f)) {  // NaN or an infinity
    return fail(BNB_ERR_INVALID_ARGUMENT, "%s must hold finite values, got %s[%d] = %g", arg, arg, i,
                static_cast<double>(code[i]));
  }
  return fail(BNB_ERR_INVALID_ARGUMENT, "%s must be in ascending order, got %s[%d] = %g after %s[%d] = %g", arg, arg, i,
              static_cast<double>(code[i]), arg, i - 1, static_cast<double>(code[i - 1]));
}

}  // namespace bnb_cpu
