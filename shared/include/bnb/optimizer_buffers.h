// The memory an optimizer update reads and writes, for the C entry points' check that no buffer
// the update writes in place shares bytes with another argument (host code: pointers are only
// compared, never dereferenced, so device pointers of one address space work the same).
//
// A state passed as the other state, as the parameter, or a view of the gradient's memory would be
// changed while the update still reads it: a meaningless step, reported as success. The read-only
// buffers (the gradient, the code books) may share memory with one another (one code book for
// both states).
#pragma once

#include <stdint.h>

#include "bnb_c_api.h"
#include "numeric.h"
#include "optimizer_math.h"

namespace bnb {

struct OptimizerBuffer {
  const char* name;
  const void* ptr;  // NULL: the optimizer does not use it
  int64_t bytes;
  bool written;
};

// Bytes of one element of g / p (the entry point has checked that dtype is f32, f16 or bf16).
inline int64_t optimizer_element_bytes(int32_t dtype) { return dtype == BNB_DTYPE_F32 ? 4 : 2; }

// The first pair (a buffer the update writes, any other buffer) whose bytes intersect: their
// names in *a (the written one) and *b; false if every pair is disjoint.
inline bool overlapping_optimizer_buffers(const OptimizerBuffer* buffers, int count, const char** a, const char** b) {
  for (int i = 0; i < count; ++i) {
    const OptimizerBuffer& w = buffers[i];
    if (!w.written || !w.ptr || w.bytes <= 0) continue;
    const uintptr_t w0 = reinterpret_cast<uintptr_t>(w.ptr), w1 = w0 + static_cast<uintptr_t>(w.bytes);
    for (int j = 0; j < count; ++j) {
      const OptimizerBuffer& o = buffers[j];
      if (j == i || !o.ptr || o.bytes <= 0 || (o.written && j < i)) continue;  // (written pairs once)
      const uintptr_t o0 = reinterpret_cast<uintptr_t>(o.ptr), o1 = o0 + static_cast<uintptr_t>(o.bytes);
      if (w0 < o1 && o0 < w1) {
        *a = w.name;
        *b = o.name;
        return true;
      }
    }
  }
  return false;
}

// The overlap check of bnb_optimizer_update_32bit's buffers (n <= INT64_MAX / 16: the byte counts
// cannot wrap), as overlapping_optimizer_buffers reports it.
inline bool optimizer_32bit_overlap(int32_t optimizer, const void* g, const void* p, int32_t dtype, const float* state1,
                                    const float* state2, const float* unorm_vec, bool clip, int64_t n, const char** a,
                                    const char** b) {
  const int64_t pg = n * optimizer_element_bytes(dtype), st = n * 4;
  const bool two = optimizer_two_states(optimizer);
  const OptimizerBuffer buffers[] = {{"p", p, pg, true},
                                     {"state1", state1, optimizer == BNB_OPTIM_ADEMAMIX ? 2 * st : st, true},
                                     {"state2", two ? state2 : nullptr, st, true},
                                     {"unorm_vec", clip ? unorm_vec : nullptr, 4, true},
                                     {"g", g, pg, false}};
  return overlapping_optimizer_buffers(buffers, 5, a, b);
}

// The same for bnb_optimizer_update_8bit_blockwise, with state blocks of `blocksize` elements.
inline bool optimizer_8bit_overlap(int32_t optimizer, const void* g, const void* p, int32_t dtype,
                                   const uint8_t* state1, const uint8_t* state2, const float* qmap1, const float* qmap2,
                                   const float* absmax1, const float* absmax2, int64_t n, int64_t blocksize,
                                   const char** a, const char** b) {
  const int64_t pg = n * optimizer_element_bytes(dtype), scales = ceil_div(n, blocksize) * 4;
  const int64_t rows = optimizer == BNB_OPTIM_ADEMAMIX ? 2 : 1;
  const bool two = optimizer_two_states(optimizer);
  const OptimizerBuffer buffers[] = {{"p", p, pg, true},
                                     {"state1", state1, rows * n, true},
                                     {"absmax1", absmax1, rows * scales, true},
                                     {"state2", two ? state2 : nullptr, n, true},
                                     {"absmax2", two ? absmax2 : nullptr, scales, true},
                                     {"g", g, pg, false},
                                     {"qmap1", qmap1, 256 * 4, false},
                                     {"qmap2", two ? qmap2 : nullptr, 256 * 4, false}};
  return overlapping_optimizer_buffers(buffers, 8, a, b);
}

// The message of the overlap error, one wording for every platform: its arguments are a, b, a.
#define BNB_OPTIMIZER_OVERLAP_MESSAGE                                                                      \
  "%s and %s share memory; the optimizer update writes %s in place, so each state, the parameter and the " \
  "gradient need memory of their own"

}  // namespace bnb
