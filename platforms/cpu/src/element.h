// Loading and storing one element of a float dtype (f32, f16, bf16) as f32. Always inlined: the
// kernels_<isa>.cpp files are compiled with different instruction sets (see bnb/portability.h).
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"
#include "bnb/numeric.h"

namespace bnb_cpu {

template <int DType>
struct Element;

template <>
struct Element<BNB_DTYPE_F32> {
  using type = float;
  static constexpr int kDtype = BNB_DTYPE_F32;
  BNB_INLINE static float load(float v) { return v; }
  BNB_INLINE static float store(float v) { return v; }
};

template <>
struct Element<BNB_DTYPE_F16> {
  using type = uint16_t;
  static constexpr int kDtype = BNB_DTYPE_F16;
  BNB_INLINE static float load(uint16_t v) { return bnb::half_to_float(v); }
  BNB_INLINE static uint16_t store(float v) { return bnb::float_to_half(v); }
};

template <>
struct Element<BNB_DTYPE_BF16> {
  using type = uint16_t;
  static constexpr int kDtype = BNB_DTYPE_BF16;
  BNB_INLINE static float load(uint16_t v) { return bnb::bf16_to_float(v); }
  BNB_INLINE static uint16_t store(float v) { return bnb::float_to_bf16(v); }
};

// A maximum taken over bit patterns (a non-negative number, not NaN) as float compares would have
// found it: under denormals-are-zero (torch.set_flush_denormal(True)) a subnormal reads as 0, so
// the portable kernel's maximum of a block of subnormals is 0. Otherwise x + 0 is x.
BNB_INLINE float as_compared(float max_bits) { return max_bits + 0.0f; }

// Calls fn(Element<D>{}) for the runtime dtype `dtype` (one of the float dtypes).
template <typename Fn>
void dispatch_float(int32_t dtype, Fn&& fn) {
  switch (dtype) {
    case BNB_DTYPE_F32:
      fn(Element<BNB_DTYPE_F32>{});
      break;
    case BNB_DTYPE_F16:
      fn(Element<BNB_DTYPE_F16>{});
      break;
    default:
      fn(Element<BNB_DTYPE_BF16>{});
      break;
  }
}

}  // namespace bnb_cpu
