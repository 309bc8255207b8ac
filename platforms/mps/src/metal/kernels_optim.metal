// Fused optimizer updates with f32 states and with block-wise 8-bit states; the per-element
// update rules are optimizer_math.h's, the same every other platform compiles.

namespace bnb_mps {

// The scalars of one call, formed by the Python glue exactly as make_optimizer_consts() forms
// them (in double, each rounded to f32) and bound as one float array (kConsts entries).
constexpr constant uint kConsts = 23;

inline bnb::OptimizerConsts consts_from(constant float* P) {
  bnb::OptimizerConsts c;
  c.optimizer = static_cast<int32_t>(P[0]);
  c.first_step = static_cast<int32_t>(P[1]);
  c.has_wd = static_cast<int32_t>(P[2]);
  c.skip_zeros = static_cast<int32_t>(P[3]);
  c.beta1 = P[4];
  c.beta2 = P[5];
  c.beta3 = P[6];
  c.alpha = P[7];
  c.eps = P[8];
  c.wd = P[9];
  c.lr = P[10];
  c.one_minus_beta1 = P[11];
  c.one_minus_beta2 = P[12];
  c.one_minus_beta3 = P[13];
  c.c1 = P[14];
  c.c2 = P[15];
  c.eps_c2 = P[16];
  c.c2_over_c1 = P[17];
  c.c1_over_c2 = P[18];
  c.decay = P[19];
  c.inv_c1 = 0.0f;  // unused here (div_const_rn divides); set so that no field is left undefined
  c.inv_c2 = 0.0f;
  return c;
}
// P[20] gnorm_scale, P[21] max_unorm (> 0: trust-ratio clip), P[22] param_norm.

// One thread per element. pass 0: the update. pass 1: only ||u||^2, one partial sum per
// threadgroup into `partials` (the glue adds them into unorm[0]). pass 2: the update of a
// clipped step, its learning rate scaled by min(1, max_unorm * param_norm / sqrt(unorm[0])).
template <typename T, typename Scratch>
inline void optimizer_32bit_impl(device const T* g, device T* p, device float* s1, device float* s2,
                                 device float* unorm, device float* partials, constant float* P, uint n, uint pass,
                                 uint tid, uint lid, uint group, uint count, Scratch scratch) {
  const bnb::OptimizerConsts c = consts_from(P);
  const float gnorm_scale = P[20];
  const bool ademamix = c.optimizer == BNB_OPTIM_ADEMAMIX;
  const bool two = bnb::optimizer_two_states(c.optimizer);
  float sq = 0.0f;
  if (tid < n) {
    float gf = Elem<T>::load(g[tid]);
    if (gnorm_scale != 1.0f) gf = bnb::mul_rn(gf, gnorm_scale);
    const float pf = Elem<T>::load(p[tid]);
    float a = s1[tid];
    float b = ademamix ? s1[n + tid] : 0.0f;
    float v = two ? s2[tid] : 0.0f;
    const float d = bnb::optimizer_direction(c, gf, pf, a, b, v);
    const bool skip = c.skip_zeros && gf == 0.0f;  // skipped elements do not move: not in ||u||
    if (pass == 1) {
      if (!skip) {
        const float u = bnb::optimizer_unorm_component(c, d);
        sq = bnb::mul_rn(u, u);
      }
    } else if (!skip) {
      float lr = c.lr;
      if (pass == 2) {
        const float norm = bnb::sqrt_rn(unorm[0]);
        const float limit = bnb::mul_rn(P[21], P[22]);
        if (norm > limit) lr = bnb::mul_rn(c.lr, bnb::div_rn(limit, norm));
      }
      p[tid] = Elem<T>::store(bnb::apply_update(c, pf, d, lr));
      s1[tid] = a;
      if (ademamix) s1[n + tid] = b;
      if (two) s2[tid] = v;
    }
  }
  if (pass == 1) {
    const float total = group_sum(sq, scratch, lid, count);
    if (lid == 0) partials[group] = total;
  }
}

// Re-quantizes one state block: fresh absmax (NaN propagates), then the 8-bit state rule.
template <typename Mids, typename Scratch>
inline void requantize(float x, bool valid, Mids mids, Scratch scratch, uint lid, device uchar* code_out,
                       device float* absmax_out) {
  const float amax = group_absmax(valid ? x : 0.0f, scratch, lid, BNB_OPTIM_STATE_BLOCKSIZE);
  if (lid == 0) *absmax_out = amax;
  if (valid) *code_out = bnb::quantize_state_8bit(mids, x, bnb::inverse_absmax(amax));
}

// One threadgroup (256 threads) per 256-element state block, one thread per element.
template <typename T, typename Mids, typename Scratch>
inline void optimizer_8bit_impl(device const T* g, device T* p, device uchar* state1, device uchar* state2,
                                device const float* qmap1, device const float* qmap2, device float* absmax1,
                                device float* absmax2, constant float* P, uint n, uint nblocks, uint lid, uint blk,
                                Mids mids1, Mids mids2, Scratch scratch) {
  const bnb::OptimizerConsts c = consts_from(P);
  const float gnorm_scale = P[20];
  const bool ademamix = c.optimizer == BNB_OPTIM_ADEMAMIX;
  const bool two = bnb::optimizer_two_states(c.optimizer);
  for (uint i = lid; i < 255; i += BNB_OPTIM_STATE_BLOCKSIZE) mids1[i] = bnb::midpoint(qmap1[i], qmap1[i + 1]);
  if (two) {
    for (uint i = lid; i < 255; i += BNB_OPTIM_STATE_BLOCKSIZE) mids2[i] = bnb::midpoint(qmap2[i], qmap2[i + 1]);
  }
  const uint i = blk * BNB_OPTIM_STATE_BLOCKSIZE + lid;
  const bool valid = i < n;
  float a = 0.0f, b = 0.0f, v = 0.0f;
  if (valid) {
    float gf = Elem<T>::load(g[i]);
    if (gnorm_scale != 1.0f) gf = bnb::mul_rn(gf, gnorm_scale);
    const float pf = Elem<T>::load(p[i]);
    a = bnb::mul_rn(qmap1[state1[i]], absmax1[blk]);
    if (ademamix) b = bnb::mul_rn(qmap1[state1[n + i]], absmax1[nblocks + blk]);
    if (two) v = bnb::mul_rn(qmap2[state2[i]], absmax2[blk]);
    const float a0 = a, b0 = b, v0 = v;
    const float d = bnb::optimizer_direction(c, gf, pf, a, b, v);
    if (c.skip_zeros && gf == 0.0f) {
      a = a0;
      b = b0;
      v = v0;
    } else {
      p[i] = Elem<T>::store(bnb::apply_update(c, pf, d, c.lr));
    }
  }
  // group_absmax's first barrier also publishes mids1 / mids2.
  requantize(a, valid, mids1, scratch, lid, state1 + i, absmax1 + blk);
  if (ademamix) requantize(b, valid, mids1, scratch, lid, state1 + n + i, absmax1 + nblocks + blk);
  if (two) requantize(v, valid, mids2, scratch, lid, state2 + i, absmax2 + blk);
}

}  // namespace bnb_mps

// Optional buffers (state2, unorm, partials) are bound to another tensor when unused.
#define BNB_MPS_OPTIM_KERNELS(SUFFIX, T)                                                                           \
  kernel void bnb_optimizer_32bit_##SUFFIX(                                                                        \
      device const T* g [[buffer(0)]], device T* p [[buffer(1)]], device float* state1 [[buffer(2)]],              \
      device float* state2 [[buffer(3)]], device float* unorm [[buffer(4)]], device float* partials [[buffer(5)]], \
      constant float* P [[buffer(6)]], constant long& n [[buffer(7)]], constant long& pass [[buffer(8)]],          \
      uint tid [[thread_position_in_grid]], uint lid [[thread_position_in_threadgroup]],                           \
      uint group [[threadgroup_position_in_grid]], uint count [[threads_per_threadgroup]]) {                       \
    threadgroup float scratch[bnb_mps::kSimd];                                                                     \
    bnb_mps::optimizer_32bit_impl<T>(g, p, state1, state2, unorm, partials, P, static_cast<uint>(n),               \
                                     static_cast<uint>(pass), tid, lid, group, count, scratch);                    \
  }                                                                                                                \
  kernel void bnb_optimizer_8bit_blockwise_##SUFFIX(                                                               \
      device const T* g [[buffer(0)]], device T* p [[buffer(1)]], device uchar* state1 [[buffer(2)]],              \
      device uchar* state2 [[buffer(3)]], device const float* qmap1 [[buffer(4)]],                                 \
      device const float* qmap2 [[buffer(5)]], device float* absmax1 [[buffer(6)]],                                \
      device float* absmax2 [[buffer(7)]], constant float* P [[buffer(8)]], constant long& n [[buffer(9)]],        \
      constant long& nblocks [[buffer(10)]], uint lid [[thread_position_in_threadgroup]],                          \
      uint blk [[threadgroup_position_in_grid]]) {                                                                 \
    threadgroup float mids1[255];                                                                                  \
    threadgroup float mids2[255];                                                                                  \
    threadgroup float scratch[bnb_mps::kSimd];                                                                     \
    bnb_mps::optimizer_8bit_impl<T>(g, p, state1, state2, qmap1, qmap2, absmax1, absmax2, P, static_cast<uint>(n), \
                                    static_cast<uint>(nblocks), lid, blk, mids1, mids2, scratch);                  \
  }

BNB_MPS_OPTIM_KERNELS(f32, float)
BNB_MPS_OPTIM_KERNELS(f16, half)
BNB_MPS_OPTIM_KERNELS(bf16, bfloat)
