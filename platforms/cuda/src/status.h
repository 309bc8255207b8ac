// The shared status helpers (bnb/status.h) under the CUDA library's namespace.
#pragma once

#include "bnb/status.h"

namespace bnb_cuda {

using bnb::fail;
using bnb::is_4bit_blocksize;
using bnb::is_float_dtype;
using bnb::last;
using bnb::ok;

}  // namespace bnb_cuda
