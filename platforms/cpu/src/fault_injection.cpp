// See fault_injection.h. Compiled into the library only with BNB_FAULT_INJECTION.
#include "fault_injection.h"

#include <atomic>

#if defined(BNB_FAULT_INJECTION)

namespace {
std::atomic<int64_t> g_left{-1};  // sites to pass before the failing one; < 0: none armed
std::atomic<const char*> g_failed{nullptr};
}  // namespace

namespace bnb_cpu {

bool fail_allocation(const char* site) {
  if (g_left.load(std::memory_order_acquire) < 0) return false;
  if (g_left.fetch_sub(1, std::memory_order_acq_rel) != 0) return false;  // exactly one caller sees 0
  g_failed.store(site, std::memory_order_release);
  return true;
}

}  // namespace bnb_cpu

extern "C" {

void bnb_cpu_test_fail_allocation(int64_t nth) {
  g_failed.store(nullptr, std::memory_order_release);
  g_left.store(nth < 0 ? -1 : nth, std::memory_order_release);
}

const char* bnb_cpu_test_failed_site(void) { return g_failed.load(std::memory_order_acquire); }

}  // extern "C"

#endif
