// Output buffers: a hint that lets the kernel back a large fresh output with huge pages.
#pragma once

#include <stdint.h>

namespace bnb_cpu {

// Large outputs of a new tensor are usually fresh mmap'd memory: touching them costs one page
// fault per 4 KiB, which takes longer than the kernel itself (dequantizing 16.7 M weights writes
// 32 MiB: 8192 faults, ~12 ms, for ~1.5 ms of work). On Linux, advise MADV_HUGEPAGE on the
// 2 MiB-aligned interior of outputs of 4 MiB or more, so that first touches fault 2 MiB at a time.
// Advice only: no effect on results, and nothing happens on other systems.
void advise_output(void* ptr, int64_t bytes);

}  // namespace bnb_cpu
