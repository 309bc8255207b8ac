/* Calls the CPU library through the common C ABI alone (no Python, no torch): the ABI version,
 * the build info, a 4-bit dequantize with known values and an argument error. Used by `ctest`
 * in a C-only build and compiled against an installed library by `nox -s distro-build`. */
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
  check(strstr(bnb_build_info(), "\"platform\": \"cpu\"") != NULL, "bnb_build_info() names the cpu platform");

  /* NF4 codes 15, 0, 7, 15 (high nibble first) with absmax 2: 2, -2, 0, 2. */
  const uint8_t packed[2] = {0xF0, 0x7F};
  const float absmax[1] = {2.0f};
  const float expected[4] = {2.0f, -2.0f, 0.0f, 2.0f};
  float out[4] = {0};
  int32_t status = bnb_dequantize_4bit(packed, absmax, 4, 64, BNB_QUANT_NF4, out, BNB_DTYPE_F32, NULL);
  check(status == BNB_OK, "bnb_dequantize_4bit returns BNB_OK");
  for (int i = 0; i < 4; i++) check(out[i] == expected[i], "dequantized NF4 values");

  /* A round trip through quantize_4bit and a rejected block size. */
  const float x[4] = {1.0f, -0.5f, 0.25f, 0.0f};
  uint8_t q[2];
  float qabsmax[1];
  status = bnb_quantize_4bit(x, BNB_DTYPE_F32, 4, 64, BNB_QUANT_NF4, q, qabsmax, NULL);
  check(status == BNB_OK && qabsmax[0] == 1.0f, "bnb_quantize_4bit absmax");
  status = bnb_quantize_4bit(x, BNB_DTYPE_F32, 4, 3, BNB_QUANT_NF4, q, qabsmax, NULL);
  check(status == BNB_ERR_INVALID_BLOCKSIZE, "blocksize 3 is rejected");
  check(strlen(bnb_last_error()) > 0, "bnb_last_error() explains the failure");

  if (failures) return 1;
  printf("bitsandbytes C ABI %d: ok (%s)\n", bnb_abi_version(), bnb_build_info());
  return 0;
}
