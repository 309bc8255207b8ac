// Fused one-pass optimizer updates with f32 states and with block-wise 8-bit states. The
// per-element math is shared with every platform (bnb/optimizer_math.h).
#include "bnb/codebooks.h"
#include "bnb/fp_ops.h"
#include "bnb/optimizer_buffers.h"
#include "common.cuh"

namespace bnb_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kStateBlock = BNB_OPTIM_STATE_BLOCKSIZE;
static_assert(kThreads == kStateBlock, "the 8-bit kernel maps one thread to one state element");

struct Scalars {
  float gnorm_scale;
  float lr;
  float max_unorm;   // > 0: trust-ratio clip
  float param_norm;  // ||p|| for the clip
};

// kPass 0: one update pass. kPass 1: only accumulate ||u||^2 into *unorm (nothing else written).
// kPass 2: the update pass of a clipped step, reading ||u||^2 back from *unorm.
template <typename E, int kPass>
__global__ void __launch_bounds__(kThreads)
    optimizer_32bit_kernel(bnb::OptimizerConsts c, Scalars sc, const typename E::T* __restrict__ g,
                           typename E::T* __restrict__ p, float* __restrict__ s1, float* __restrict__ s2,
                           float* __restrict__ unorm, int64_t n) {
  __shared__ float scratch[kThreads / bnb::kWarpSize];
  const bool ademamix = c.optimizer == BNB_OPTIM_ADEMAMIX;
  const bool two = bnb::optimizer_two_states(c.optimizer);
  float lr = c.lr;
  if (kPass == 2) {
    const float norm = bnb::sqrt_rn(*unorm);
    const float limit = bnb::mul_rn(sc.max_unorm, sc.param_norm);
    if (norm > limit) lr = bnb::mul_rn(c.lr, bnb::div_rn(limit, norm));
  }
  float sq = 0.0f;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float gf = E::load(g[i]);
    if (sc.gnorm_scale != 1.0f) gf = bnb::mul_rn(gf, sc.gnorm_scale);
    const float pf = E::load(p[i]);
    float a = s1[i];
    float b = ademamix ? s1[n + i] : 0.0f;
    float v = two ? s2[i] : 0.0f;
    const float d = bnb::optimizer_direction(c, gf, pf, a, b, v);
    if (kPass == 1) {
      if (c.skip_zeros && gf == 0.0f) continue;  // skipped elements do not move: not in ||u||
      const float u = bnb::optimizer_unorm_component(c, d);
      sq += u * u;
      continue;
    }
    if (c.skip_zeros && gf == 0.0f) continue;
    p[i] = E::store(bnb::apply_update(c, pf, d, lr));
    s1[i] = a;
    if (ademamix) s1[n + i] = b;
    if (two) s2[i] = v;
  }
  if (kPass == 1) {
    sq = bnb::block_sum(sq, scratch);
    if (threadIdx.x == 0) atomicAdd(unorm, sq);
  }
}

__device__ __forceinline__ void load_mids(const float* __restrict__ qmap, float* mids) {
  for (int i = threadIdx.x; i < 255; i += blockDim.x) mids[i] = bnb::midpoint(qmap[i], qmap[i + 1]);
}

// Re-quantizes one state block: fresh absmax (NaN propagates), then the grid rule.
__device__ __forceinline__ void requantize(float x, bool valid, const float* mids, float* scratch, uint8_t* code_out,
                                           float* absmax_out) {
  // block_absmax reduces magnitudes (its inputs must be >= 0 or NaN): |x| first, NaN kept.
  const float amax = bnb::block_absmax(valid ? bnb::nan_max_abs(0.0f, x) : 0.0f, scratch);
  if (threadIdx.x == 0) *absmax_out = amax;
  if (valid) *code_out = bnb::quantize_state_8bit(mids, x, bnb::inverse_absmax(amax));
}

// One CTA per 256-element state block, one thread per element.
template <typename E>
__global__ void __launch_bounds__(kThreads)
    optimizer_8bit_kernel(bnb::OptimizerConsts c, Scalars sc, const typename E::T* __restrict__ g,
                          typename E::T* __restrict__ p, uint8_t* __restrict__ state1, uint8_t* __restrict__ state2,
                          const float* __restrict__ qmap1, const float* __restrict__ qmap2, float* __restrict__ absmax1,
                          float* __restrict__ absmax2, int64_t n, int64_t nblocks) {
  __shared__ float mids1[255];
  __shared__ float mids2[255];
  __shared__ float scratch[kThreads / bnb::kWarpSize];
  const bool ademamix = c.optimizer == BNB_OPTIM_ADEMAMIX;
  const bool two = bnb::optimizer_two_states(c.optimizer);
  load_mids(qmap1, mids1);
  if (two) load_mids(qmap2, mids2);
  const int64_t blk = blockIdx.x;
  const int64_t i = blk * kStateBlock + threadIdx.x;
  const bool valid = i < n;
  float a = 0.0f, b = 0.0f, v = 0.0f;
  if (valid) {
    float gf = E::load(g[i]);
    if (sc.gnorm_scale != 1.0f) gf = bnb::mul_rn(gf, sc.gnorm_scale);
    const float pf = E::load(p[i]);
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
      p[i] = E::store(bnb::apply_update(c, pf, d, sc.lr));
    }
  }
  // block_absmax's first barrier also publishes mids1/mids2.
  requantize(a, valid, mids1, scratch, state1 + i, absmax1 + blk);
  if (ademamix) requantize(b, valid, mids1, scratch, state1 + n + i, absmax1 + nblocks + blk);
  if (two) requantize(v, valid, mids2, scratch, state2 + i, absmax2 + blk);
}

int32_t check_hparams(int32_t optimizer, const bnb_optimizer_hparams* h, int64_t n) {
  BNB_REQUIRE(h != nullptr, BNB_ERR_NULL_POINTER, "hparams must not be NULL");
  BNB_REQUIRE(optimizer >= BNB_OPTIM_MOMENTUM && optimizer <= BNB_OPTIM_LARS, BNB_ERR_INVALID_ARGUMENT,
              "unknown optimizer id %d", optimizer);
  BNB_REQUIRE(n > 0, BNB_ERR_INVALID_ARGUMENT, "n must be positive, got %lld", static_cast<long long>(n));
  BNB_REQUIRE(h->step >= 1, BNB_ERR_INVALID_ARGUMENT, "step must be >= 1 (the first step is 1), got %lld",
              static_cast<long long>(h->step));
  BNB_REQUIRE(h->lr >= 0.0 && h->eps >= 0.0, BNB_ERR_INVALID_ARGUMENT, "lr and eps must be non-negative");
  return BNB_OK;
}

Scalars scalars_of(const bnb_optimizer_hparams* h) {
  return {static_cast<float>(h->gnorm_scale), static_cast<float>(h->lr), static_cast<float>(h->max_unorm),
          static_cast<float>(h->param_norm)};
}

}  // namespace
}  // namespace bnb_cuda

using namespace bnb_cuda;

extern "C" {

int32_t bnb_optimizer_update_32bit(int32_t optimizer, const void* g, void* p, int32_t dtype, float* state1,
                                   float* state2, float* unorm_vec, int64_t n, const bnb_optimizer_hparams* hparams,
                                   bnb_stream stream) {
  if (int32_t s = check_hparams(optimizer, hparams, n)) return s;
  BNB_REQUIRE(g && p && state1, BNB_ERR_NULL_POINTER, "g, p and state1 must not be NULL");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "g and p must be f32, f16 or bf16");
  BNB_REQUIRE(!bnb::optimizer_two_states(optimizer) || state2, BNB_ERR_NULL_POINTER,
              "state2 is required for this optimizer");
  const bool clip = hparams->max_unorm > 0.0f;
  BNB_REQUIRE(!clip || unorm_vec, BNB_ERR_NULL_POINTER, "unorm_vec is required when max_unorm > 0");
  BNB_REQUIRE(n <= INT64_MAX / 16, BNB_ERR_INVALID_ARGUMENT, "n is too large, got %lld", static_cast<long long>(n));
  const char *first = nullptr, *second = nullptr;  // no buffer the update writes may share memory with another
  BNB_REQUIRE(
      !bnb::optimizer_32bit_overlap(optimizer, g, p, dtype, state1, state2, unorm_vec, clip, n, &first, &second),
      BNB_ERR_INVALID_ARGUMENT, BNB_OPTIMIZER_OVERLAP_MESSAGE, first, second, first);
  DeviceGuard guard(p);
  if (guard.status()) return guard.status();
  const bnb::OptimizerConsts c = bnb::make_optimizer_consts(optimizer, *hparams);
  const Scalars sc = scalars_of(hparams);
  cudaStream_t s = as_stream(stream);
  const unsigned int grid = grid_for(n, kThreads, 8192);
  if (clip) {
    const cudaError_t err = cudaMemsetAsync(unorm_vec, 0, sizeof(float), s);
    if (err != cudaSuccess) return cuda_fail(err, "bnb_optimizer_update_32bit: cudaMemsetAsync");
  }
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    const auto* gp = static_cast<const typename E::T*>(g);
    auto* pp = static_cast<typename E::T*>(p);
    if (clip) {
      optimizer_32bit_kernel<E, 1><<<grid, kThreads, 0, s>>>(c, sc, gp, pp, state1, state2, unorm_vec, n);
      optimizer_32bit_kernel<E, 2><<<grid, kThreads, 0, s>>>(c, sc, gp, pp, state1, state2, unorm_vec, n);
    } else {
      optimizer_32bit_kernel<E, 0><<<grid, kThreads, 0, s>>>(c, sc, gp, pp, state1, state2, unorm_vec, n);
    }
  });
  return check_launch("bnb_optimizer_update_32bit");
}

int32_t bnb_optimizer_update_8bit_blockwise(int32_t optimizer, const void* g, void* p, int32_t dtype, uint8_t* state1,
                                            uint8_t* state2, const float* qmap1, const float* qmap2, float* absmax1,
                                            float* absmax2, int64_t n, const bnb_optimizer_hparams* hparams,
                                            bnb_stream stream) {
  if (int32_t s = check_hparams(optimizer, hparams, n)) return s;
  BNB_REQUIRE(g && p && state1 && qmap1 && absmax1, BNB_ERR_NULL_POINTER,
              "g, p, state1, qmap1 and absmax1 must not be NULL");
  BNB_REQUIRE(is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "g and p must be f32, f16 or bf16");
  BNB_REQUIRE(!bnb::optimizer_two_states(optimizer) || (state2 && qmap2 && absmax2), BNB_ERR_NULL_POINTER,
              "state2, qmap2 and absmax2 are required for this optimizer");
  const int64_t nblocks = (n + kStateBlock - 1) / kStateBlock;
  BNB_REQUIRE(nblocks < (1LL << 31), BNB_ERR_INVALID_ARGUMENT, "n is too large for one launch");
  const char *first = nullptr, *second = nullptr;  // no buffer the update writes may share memory with another
  BNB_REQUIRE(!bnb::optimizer_8bit_overlap(optimizer, g, p, dtype, state1, state2, qmap1, qmap2, absmax1, absmax2, n,
                                           kStateBlock, &first, &second),
              BNB_ERR_INVALID_ARGUMENT, BNB_OPTIMIZER_OVERLAP_MESSAGE, first, second, first);
  DeviceGuard guard(p);
  if (guard.status()) return guard.status();
  const bnb::OptimizerConsts c = bnb::make_optimizer_consts(optimizer, *hparams);
  const Scalars sc = scalars_of(hparams);
  dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    optimizer_8bit_kernel<E><<<static_cast<unsigned int>(nblocks), kThreads, 0, as_stream(stream)>>>(
        c, sc, static_cast<const typename E::T*>(g), static_cast<typename E::T*>(p), state1, state2, qmap1, qmap2,
        absmax1, absmax2, n, nblocks);
  });
  return check_launch("bnb_optimizer_update_8bit_blockwise");
}

}  // extern "C"
