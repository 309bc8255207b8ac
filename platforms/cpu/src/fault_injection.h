// Allocation failures on demand, for tests/native/test_alloc_faults.cpp. The library's allocation
// sites (scratch buffers, code-book tables, the thread pool and its threads) ask
// bnb_cpu::fail_allocation(site) before allocating and act as if the allocation failed when it
// says so. Only a build with BNB_FAULT_INJECTION defined (the native test drivers' builds) can ever
// say so; in the wheel the call is a constant false and compiles away.
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cpu {

#if defined(BNB_FAULT_INJECTION)
// True when this site's allocation is the armed one (see bnb_cpu_test_fail_allocation). `site`
// must be one of kAllocationSites (fault_injection.cpp): any other name aborts the test build.
bool fail_allocation(const char* site);
#else
constexpr bool fail_allocation(const char*) { return false; }
#endif

}  // namespace bnb_cpu

#if defined(BNB_FAULT_INJECTION)
#ifdef __cplusplus
extern "C" {
#endif
// Arms the failure of the nth allocation site reached from now on, counting from 0 over all
// threads (a negative nth disarms) and forgets the last failed site.
BNB_API void bnb_cpu_test_fail_allocation(int64_t nth);
// The site whose allocation was made to fail since the last arming, or NULL.
BNB_API const char* bnb_cpu_test_failed_site(void);
// The names of every allocation site of the library, comma-separated.
BNB_API const char* bnb_cpu_test_allocation_sites(void);
#ifdef __cplusplus
}
#endif
#endif
