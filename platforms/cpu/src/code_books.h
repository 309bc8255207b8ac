// The check of a code book that the quantizers search (bnb_quantize_blockwise's `code`, the 8-bit
// optimizers' qmap1/qmap2).
#pragma once

#include <stdint.h>

namespace bnb_cpu {

// BNB_OK when the 256-entry code book `arg` is finite and ascending (equal neighbours allowed), as
// the searching quantizers need it: in another order their codes are far from the nearest entry,
// without an error. Else BNB_ERR_INVALID_ARGUMENT naming the first entry that breaks it.
int32_t check_code_book(const float* code, const char* arg);

}  // namespace bnb_cpu
