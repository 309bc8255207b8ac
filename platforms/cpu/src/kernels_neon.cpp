// aarch64 kernels: Advanced SIMD (NEON) is the aarch64 baseline, so the portable kernels compiled
// here are vectorized for it by the compiler; the 4-bit dequantization uses NEON table lookups.
#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "kernels.h"
#include "optimizer_dispatch.h"

namespace bnb_cpu {
namespace neon {

#include "kernels_generic.inc"

// 4-bit dequantization to 16-bit outputs: the block's 16 patterns split in a low-byte and a
// high-byte table, looked up 16 at a time with vqtbl1q_u8.
void dequantize_4bit(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, int nf4, void* out,
                     int32_t dtype, int64_t b0, int64_t b1) {
  if (dtype == BNB_DTYPE_F32) return gen_dequantize_4bit(packed, absmax, n, blocksize, nf4, out, dtype, b0, b1);
  float code[16];
  for (uint32_t c = 0; c < 16; ++c) code[c] = bnb::decode_4bit(nf4, c);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = (start + blocksize <= n) ? blocksize : n - start;
    const int64_t full = len & ~int64_t(31);
    uint16_t tab[16];
    uint8_t lo[16], hi[16];
    for (int c = 0; c < 16; ++c) {
      const float v = code[c] * absmax[b];
      tab[c] = dtype == BNB_DTYPE_BF16 ? bnb::float_to_bf16(v) : bnb::float_to_half(v);
      lo[c] = static_cast<uint8_t>(tab[c] & 0xff);
      hi[c] = static_cast<uint8_t>(tab[c] >> 8);
    }
    const uint8x16_t tlo = vld1q_u8(lo), thi = vld1q_u8(hi);
    const uint8_t* src = packed + start / 2;
    uint16_t* dst = static_cast<uint16_t*>(out) + start;
    for (int64_t i = 0; i < full; i += 32) {
      const uint8x16_t v = vld1q_u8(src + i / 2);
      const uint8x16x2_t idx = vzipq_u8(vshrq_n_u8(v, 4), vandq_u8(v, vdupq_n_u8(15)));
      for (int h = 0; h < 2; ++h) {
        const uint8x16x2_t w = vzipq_u8(vqtbl1q_u8(tlo, idx.val[h]), vqtbl1q_u8(thi, idx.val[h]));
        vst1q_u16(dst + i + 16 * h, vreinterpretq_u16_u8(w.val[0]));
        vst1q_u16(dst + i + 16 * h + 8, vreinterpretq_u16_u8(w.val[1]));
      }
    }
    for (int64_t i = full; i < len; ++i) {
      const uint8_t byte = src[i / 2];
      dst[i] = tab[(i & 1) ? (byte & 15) : (byte >> 4)];
    }
  }
}

}  // namespace neon

const KernelTable kernels_neon = [] {
  using namespace neon;
  KernelTable t = BNB_GENERIC_TABLE;
  t.dequantize_4bit = dequantize_4bit;
  return t;
}();

}  // namespace bnb_cpu
