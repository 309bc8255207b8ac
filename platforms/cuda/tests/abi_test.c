/* Calls the CUDA library through the common C ABI alone (no Python, no torch, no GPU needed): the
 * ABI version, the build info, and the argument checks that run before any device is touched.
 * Used by `ctest` in a C-only build (tools/build_kernel_library.sh runs it on release machines,
 * which have no GPU). */
#include <bnb/bnb_c_api.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    failures++;
  }
}

int main(void) {
  check(bnb_abi_version() == BNB_ABI_VERSION, "bnb_abi_version() == BNB_ABI_VERSION");
  check(strstr(bnb_build_info(), "\"platform\": \"cuda") != NULL, "bnb_build_info() names a cuda platform");

  const float x[4] = {1.0f, -0.5f, 0.25f, 0.0f};
  uint8_t q[2];
  float absmax[1];
  int32_t status = bnb_quantize_4bit(NULL, BNB_DTYPE_F32, 4, 64, BNB_QUANT_NF4, q, absmax, NULL);
  check(status == BNB_ERR_NULL_POINTER, "a NULL input is rejected");
  check(strstr(bnb_last_error(), "must not be NULL") != NULL, "bnb_last_error() names the NULL argument");
  status = bnb_quantize_4bit(x, BNB_DTYPE_F32, 4, 3, BNB_QUANT_NF4, q, absmax, NULL);
  check(status == BNB_ERR_INVALID_BLOCKSIZE, "blocksize 3 is rejected");
  check(strlen(bnb_last_error()) > 0, "bnb_last_error() explains the failure");

  if (failures) return 1;
  printf("bitsandbytes C ABI %d: ok (%s)\n", bnb_abi_version(), bnb_build_info());
  return 0;
}
