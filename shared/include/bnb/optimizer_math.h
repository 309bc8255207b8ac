// Per-element math of the fused optimizer updates (spec §8.5), shared by every platform.
//
// The oracle is the Python reference (backends/reference/optimizers.py). Each step is written
// with one f32 rounding per operation (fp_ops.h) in the reference's order, so a CPU, CUDA or HIP
// kernel that calls these functions computes what the reference computes. Scalars derived from
// the hyper-parameters (bias corrections, 1 - beta, ...) are formed once per call in double and
// rounded to f32, as PyTorch does with Python scalars: see make_optimizer_consts().
//
// The 8-bit state rule (quantize_state_8bit) is the reference's: scale by a fresh block absmax,
// round onto the 65536-point grid k / 32767.5 - 1 and take the code nearest that grid point.
#pragma once

#include <math.h>
#include <stdint.h>

#if !defined(__METAL_VERSION__)  // Metal source carries the optimizer ids itself (no C ABI there)
#include "bnb_c_api.h"
#endif
#include "codebooks.h"
#include "fp_ops.h"
#include "numeric.h"
#include "portability.h"

namespace bnb {

// Block size of the 8-bit optimizer states (fixed by the C ABI).
#define BNB_OPTIM_STATE_BLOCKSIZE 256

// Scalars of one optimizer call, every one already rounded to f32.
struct OptimizerConsts {
  int32_t optimizer;   // bnb_optimizer
  int32_t first_step;  // step == 1
  int32_t has_wd;      // weight_decay > 0
  int32_t skip_zeros;
  float beta1, beta2, beta3, alpha, eps, wd, lr;
  float one_minus_beta1, one_minus_beta2, one_minus_beta3;
  float c1;          // 1 - beta1^t
  float c2;          // sqrt(1 - beta2^t)
  float eps_c2;      // eps * c2
  float c2_over_c1;  // c2 / c1
  float c1_over_c2;  // c1 / c2 (the update norm of adam/lamb leaves out c2/c1)
  float decay;       // 1 - lr * wd (decoupled weight decay)
  float inv_c1;      // div_rn(1, c1) and div_rn(1, c2) for div_const_rn, or 0 where c1 or c2 lies
  float inv_c2;      // outside [2^-30, 2^30]
};

// x / b for a divisor b fixed for the call, given rb = div_rn(1, b) (or 0): div_rn(x, b) exactly.
// This version divides; a vector kernel may overload it for its F with a multiplication and a
// correction step (kernels_avx512_optim.cpp).
template <typename F>
BNB_HD BNB_INLINE F div_const_rn(F x, float b, float rb) {
  (void)rb;
  return div_rn(x, F(b));
}

// Whether `optimizer` keeps a second state (state2).
BNB_HD BNB_INLINE bool optimizer_two_states(int32_t optimizer) {
  return optimizer == BNB_OPTIM_ADAM || optimizer == BNB_OPTIM_LAMB || optimizer == BNB_OPTIM_ADEMAMIX;
}

// Whether weight decay is decoupled (p <- p * (1 - lr * wd)) rather than folded into g.
BNB_HD BNB_INLINE bool optimizer_decoupled_decay(int32_t optimizer) {
  return optimizer == BNB_OPTIM_ADAM || optimizer == BNB_OPTIM_LAMB || optimizer == BNB_OPTIM_ADEMAMIX ||
         optimizer == BNB_OPTIM_LION;
}

// Host only (double precision; Metal has none): the MPS wheel forms the same scalars in Python.
#if !defined(__METAL_VERSION__)
inline OptimizerConsts make_optimizer_consts(int32_t optimizer, const bnb_optimizer_hparams& h) {
  OptimizerConsts c;
  c.optimizer = optimizer;
  c.first_step = h.step == 1;
  c.has_wd = h.weight_decay > 0.0;
  c.skip_zeros = h.skip_zeros != 0;
  c.beta1 = static_cast<float>(h.beta1);
  c.beta2 = static_cast<float>(h.beta2);
  c.beta3 = static_cast<float>(h.beta3);
  c.alpha = static_cast<float>(h.alpha);
  c.eps = static_cast<float>(h.eps);
  c.wd = static_cast<float>(h.weight_decay);
  c.lr = static_cast<float>(h.lr);
  const double b1 = h.beta1, b2 = h.beta2, b3 = h.beta3;
  c.one_minus_beta1 = static_cast<float>(1.0 - b1);
  c.one_minus_beta2 = static_cast<float>(1.0 - b2);
  c.one_minus_beta3 = static_cast<float>(1.0 - b3);
  const double c1 = 1.0 - pow(b1, static_cast<double>(h.step));
  const double c2 = sqrt(1.0 - pow(b2, static_cast<double>(h.step)));
  c.c1 = static_cast<float>(c1);
  c.c2 = static_cast<float>(c2);
  c.eps_c2 = static_cast<float>(h.eps * c2);
  c.c2_over_c1 = static_cast<float>(c2 / c1);
  c.c1_over_c2 = static_cast<float>(c1 / c2);
  c.decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  c.inv_c1 = (c.c1 >= 0x1p-30f && c.c1 <= 0x1p30f) ? div_rn(1.0f, c.c1) : 0.0f;
  c.inv_c2 = (c.c2 >= 0x1p-30f && c.c2 <= 0x1p30f) ? div_rn(1.0f, c.c2) : 0.0f;
  return c;
}
#endif

// torch.sign: -1, 0 (of either sign) or 1, and 0 for NaN as torch.sign gives (Lion then leaves a
// NaN-gradient element where it is, as the reference and the established release do).
BNB_HD BNB_INLINE float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == x ? x : 0.0f)); }

// One element's update. In: g (already scaled by gnorm_scale, in f32), p (f32), the states
// (s1; s1b = AdEMAMix's slow EMA; s2 = second moment). Out: the new states in place, and the
// update direction d; the parameter then moves with apply_update().
//
// F is float, or a SIMD vector of f32 lanes for which a CPU kernel provides add_rn, sub_rn, mul_rn,
// div_rn, sqrt_rn, fma_rn and sign_of overloads (found by argument-dependent lookup) and a
// broadcasting constructor from float: the vector kernels then run this very code lane by lane.
template <typename F>
BNB_HD BNB_INLINE F optimizer_direction(const BNB_THREAD OptimizerConsts& c, F g, F p, BNB_THREAD F& s1,
                                        BNB_THREAD F& s1b, BNB_THREAD F& s2) {
  switch (c.optimizer) {
    case BNB_OPTIM_ADAM:
    case BNB_OPTIM_LAMB: {
      s1 = fma_rn(c.one_minus_beta1, g, mul_rn(s1, c.beta1));             // s1.mul_(b1).add_(g, alpha=1-b1)
      s2 = fma_rn(mul_rn(c.one_minus_beta2, g), g, mul_rn(s2, c.beta2));  // .addcmul_(g, g, value=1-b2)
      return mul_rn(div_rn(s1, add_rn(sqrt_rn(s2), c.eps_c2)), c.c2_over_c1);
    }
    case BNB_OPTIM_ADEMAMIX: {
      s1 = fma_rn(c.one_minus_beta1, g, mul_rn(s1, c.beta1));
      s1b = fma_rn(c.one_minus_beta3, g, mul_rn(s1b, c.beta3));
      s2 = fma_rn(mul_rn(c.one_minus_beta2, g), g, mul_rn(s2, c.beta2));
      const F num = add_rn(div_const_rn(s1, c.c1, c.inv_c1), mul_rn(F(c.alpha), s1b));
      return div_rn(num, add_rn(div_const_rn(sqrt_rn(s2), c.c2, c.inv_c2), c.eps));
    }
    case BNB_OPTIM_LION: {
      const F d = sign_of(add_rn(mul_rn(s1, F(c.beta1)), mul_rn(g, F(c.one_minus_beta1))));
      s1 = fma_rn(c.one_minus_beta2, g, mul_rn(s1, c.beta2));
      return d;
    }
    default:
      break;
  }
  if (c.has_wd) g = add_rn(g, mul_rn(F(c.wd), p));
  switch (c.optimizer) {
    case BNB_OPTIM_MOMENTUM:
    case BNB_OPTIM_LARS:
      s1 = c.first_step ? g : add_rn(mul_rn(s1, c.beta1), g);
      return s1;
    case BNB_OPTIM_RMSPROP:
      s1 = fma_rn(mul_rn(c.one_minus_beta1, g), g, mul_rn(s1, c.beta1));
      return div_rn(g, add_rn(sqrt_rn(s1), c.eps));
    default:                  // BNB_OPTIM_ADAGRAD
      s1 = fma_rn(g, g, s1);  // s1.addcmul_(g, g)
      return div_rn(g, add_rn(sqrt_rn(s1), c.eps));
  }
}

// The component of the update whose norm the trust-ratio clip (max_unorm) measures.
BNB_HD BNB_INLINE float optimizer_unorm_component(const BNB_THREAD OptimizerConsts& c, float d) {
  return (c.optimizer == BNB_OPTIM_ADAM || c.optimizer == BNB_OPTIM_LAMB) ? mul_rn(d, c.c1_over_c2) : d;
}

// The new f32 parameter: decoupled decay, then p - lr_scaled * d (lr_scaled = lr * clip scale,
// rounded to f32 by the caller). F as for optimizer_direction.
template <typename F>
BNB_HD BNB_INLINE F apply_update(const BNB_THREAD OptimizerConsts& c, F p, F d, float lr_scaled) {
  if (c.has_wd && optimizer_decoupled_decay(c.optimizer)) p = mul_rn(p, F(c.decay));
  return sub_rn(p, mul_rn(F(lr_scaled), d));
}

// The absmax of `len` new state values as the 8-bit kernels define it: 16 lane-wise maxima of |x|
// over the whole groups of 16 (a NaN sticks in its lane, so the first NaN of a lane in scan order
// is the one kept), combined in lane order, then the rest one by one (bnb::nan_max_abs). The CPU
// vector kernels compute the maximum of the |x| bit patterns and call this only for a NaN block.
template <typename Values>
BNB_HD BNB_INLINE float state_absmax(Values v, int64_t len) {
  float lanes[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    for (int l = 0; l < 16; ++l) {
      const float x = v[i + l];
      const float ax = x < 0.0f ? -x : x;
      lanes[l] = (ax > lanes[l] || ax != ax) ? ax : lanes[l];
    }
  }
  float m = 0.0f;
  for (int l = 0; l < 16; ++l) m = nan_max_abs(m, lanes[l]);
  for (; i < len; ++i) m = nan_max_abs(m, v[i]);
  return m;
}

// 8-bit state rule: index of the 65536-point grid nearest to x * inv_absmax (clamped to
// [-1, 1]; ties round up, NaN -> 65535), as the reference's floor((s + 1) * 32767.5 + 0.5).
BNB_HD BNB_INLINE uint32_t state_grid_index(float x, float inv_absmax) {
  float s = mul_rn(x, inv_absmax);
  if (s != s) return 65535u;
  s = s < -1.0f ? -1.0f : (s > 1.0f ? 1.0f : s);
  const float k = floorf(add_rn(mul_rn(add_rn(s, 1.0f), 32767.5f), 0.5f));
  return static_cast<uint32_t>(k);
}

// The value of grid point k: k / 32767.5 - 1 in f32 (true division, as the reference on the CPU).
BNB_HD BNB_INLINE float state_grid_value(uint32_t k) { return sub_rn(div_rn(static_cast<float>(k), 32767.5f), 1.0f); }

// The code of the sorted 256-entry qmap (given its 255 midpoints) for state value x.
template <typename Mids>
BNB_HD BNB_INLINE uint8_t quantize_state_8bit(Mids mids, float x, float inv_absmax) {
  return static_cast<uint8_t>(nearest_sorted_256(mids, state_grid_value(state_grid_index(x, inv_absmax))));
}

// LLM.int8() row scale: the reference's `127.0 / row_stats` is torch's `reciprocal() * 127`, two
// roundings in f32.
BNB_HD BNB_INLINE float int8_row_scale(float row_absmax) { return mul_rn(div_rn(1.0f, row_absmax), 127.0f); }

// LLM.int8() rounding: round_half_even(x * scale) clamped to [-127, 127]; NaN -> 0; a zero row
// absmax gives 0. `scale` is int8_row_scale(row_absmax).
BNB_HD BNB_INLINE int8_t int8_round(float x, float scale, float row_absmax) {
  if (row_absmax == 0.0f) return 0;
  float q = round_half_even(mul_rn(x, scale));
  if (q != q) return 0;
  q = q < -127.0f ? -127.0f : (q > 127.0f ? 127.0f : q);
  return static_cast<int8_t>(q);
}

}  // namespace bnb
