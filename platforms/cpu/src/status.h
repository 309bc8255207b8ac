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

}  // namespace bnb_cpu
