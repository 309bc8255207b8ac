// See fault_injection.h. Compiled into the library only with BNB_FAULT_INJECTION.
#include "fault_injection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#if defined(BNB_FAULT_INJECTION)

namespace {
// Every site that asks fail_allocation, by the name it passes.
constexpr const char* kAllocationSites =
    "scratch,optimizer code table,optimizer key table,trust-ratio sums,bucket table,bucket table index,"
    "thread pool,pool thread";

bool listed(const char* site) {
  const size_t len = strlen(site);
  for (const char* at = kAllocationSites; (at = strstr(at, site)) != nullptr; at += len) {
    if ((at == kAllocationSites || at[-1] == ',') && (at[len] == ',' || at[len] == '\0')) return true;
  }
  return false;
}

std::atomic<int64_t> g_left{-1};  // sites to pass before the failing one; < 0: none armed
std::atomic<const char*> g_failed{nullptr};
}  // namespace

namespace bnb_cpu {

bool fail_allocation(const char* site) {
  if (!listed(site)) {
    fprintf(stderr, "fail_allocation: the site '%s' is not in kAllocationSites\n", site);
    abort();
  }
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

const char* bnb_cpu_test_allocation_sites(void) { return kAllocationSites; }

}  // extern "C"

#endif
