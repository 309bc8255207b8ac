// bnb_abi_version() and bnb_build_info() of the CPU library.
#include "bnb/bnb_c_api.h"

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
#elif defined(__aarch64__) || defined(_M_ARM64)
#define BNB_ARCH "aarch64"
#else
#define BNB_ARCH "other"
#endif

extern "C" {

int32_t bnb_abi_version(void) { return BNB_ABI_VERSION; }

const char* bnb_build_info(void) {
  return "{\"platform\": \"cpu\", \"version\": \"" BNB_VERSION
         "\", \"abi_version\": " BNB_STR(BNB_ABI_VERSION) ", \"compiler\": \"" BNB_COMPILER "\", \"arch\": \"" BNB_ARCH
                                                          "\", \"isa\": [\"scalar\"], \"build_type\": \"" BNB_BUILD_TYPE
                                                          "\"}";
}

}  // extern "C"
