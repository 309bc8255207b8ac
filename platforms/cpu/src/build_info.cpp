// bnb_abi_version() and bnb_build_info() of the CPU library.
#include <stdio.h>

#include "bnb/bnb_c_api.h"
#include "isa.h"
#include "threading.h"

#ifndef BNB_VERSION
#error "BNB_VERSION must be defined by the build"
#endif

#define BNB_STR2(x) #x
#define BNB_STR(x) BNB_STR2(x)

#if defined(__clang__)
#define BNB_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define BNB_COMPILER "gcc " BNB_STR(__GNUC__) "." BNB_STR(__GNUC_MINOR__) "." BNB_STR(__GNUC_PATCHLEVEL__)
#elif defined(_MSC_VER)
#define BNB_COMPILER "msvc " BNB_STR(_MSC_VER)
#else
#define BNB_COMPILER "unknown"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define BNB_ARCH "x86_64"
#define BNB_ISA_LIST "[\"scalar\", \"avx2\", \"avx512\"]"
#elif defined(__aarch64__) || defined(_M_ARM64)
#define BNB_ARCH "aarch64"
#define BNB_ISA_LIST "[\"scalar\", \"neon\"]"
#else
#define BNB_ARCH "other"
#define BNB_ISA_LIST "[\"scalar\"]"
#endif

extern "C" {

int32_t bnb_abi_version(void) { return BNB_ABI_VERSION; }

// "isa": the instruction sets compiled in; "isa_usable": those this CPU runs; "isa_selected": the
// one the kernels use now (BNB_CPU_ISA / bnb_cpu_set_isa can change it, so it is read per call);
// "threading": "openmp" when the parallel loops run on the process's OpenMP runtime, else "pool";
// "pool_workers": the library's pool's threads running now (null before a call started it; fewer
// than "pool_workers_wanted" while the system refuses some, retried once a second).
const char* bnb_build_info(void) {
  thread_local char buf[1024];  // about 300 bytes used
  char usable[64] = "";
  for (int i = 0; i < bnb_cpu::ISA_COUNT; ++i) {
    if (!bnb_cpu::isa_usable(i)) continue;
    size_t len = 0;
    while (usable[len]) ++len;
    snprintf(usable + len, sizeof(usable) - len, "%s\"%s\"", len ? ", " : "", bnb_cpu::isa_name(i));
  }
  int wanted = 0;
  const int started = bnb_cpu::pool_workers(&wanted);
  char workers[16] = "null";
  if (started >= 0) snprintf(workers, sizeof(workers), "%d", started);
  snprintf(buf, sizeof(buf),
           "{\"platform\": \"cpu\", \"version\": \"" BNB_VERSION "\", \"abi_version\": " BNB_STR(
               BNB_ABI_VERSION) ", \"compiler\": \"" BNB_COMPILER "\", \"arch\": \"" BNB_ARCH
                                "\", \"isa\": " BNB_ISA_LIST
                                ", \"isa_usable\": [%s], \"isa_selected\": \"%s\", "
                                "\"threading\": \"%s\", \"pool_workers\": %s, \"pool_workers_wanted\": %d, "
                                "\"build_type\": \"" BNB_BUILD_TYPE "\"}",
           usable, bnb_cpu::isa_name(bnb_cpu::active_isa()), bnb_cpu::threading_name(), workers, wanted);
  return buf;
}

}  // extern "C"
