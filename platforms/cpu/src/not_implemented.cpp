// Entry points of the common C ABI that the CPU library does not implement: each is exported and
// answers BNB_ERR_NOT_IMPLEMENTED, so the symbol set is the same on every platform.
#include "bnb/bnb_c_api.h"
#include "status.h"

#define BNB_CPU_NOT_IMPLEMENTED(name) \
  return ::bnb_cpu::fail(BNB_ERR_NOT_IMPLEMENTED, "%s is not implemented by the CPU library", name)

extern "C" {

// The CPU has no managed memory: paged optimizers keep ordinary host tensors.
int32_t bnb_paged_alloc(int64_t, void**) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_alloc"); }

int32_t bnb_paged_free(void*) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_free"); }

int32_t bnb_paged_prefetch(void*, int64_t, int32_t, bnb_stream) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_prefetch"); }

}  // extern "C"
