// Host build of the shared per-element math (bnb/optimizer_math.h) for tests/test_shared_math.py:
// the same functions the CUDA kernels (and later the CPU library) call, looped over arrays.
#include "bnb/optimizer_math.h"
extern "C" {
void upd32(int opt, const float* g, float* p, float* s1, float* s2, long n, const bnb_optimizer_hparams* h) {
  bnb::OptimizerConsts c = bnb::make_optimizer_consts(opt, *h);
  bool adem = opt == BNB_OPTIM_ADEMAMIX, two = bnb::optimizer_two_states(opt);
  for (long i = 0; i < n; ++i) {
    float gf = g[i];
    if (h->gnorm_scale != 1.0f) gf = bnb::mul_rn(gf, h->gnorm_scale);
    float a = s1[i], b = adem ? s1[n + i] : 0.f, v = two ? s2[i] : 0.f;
    float d = bnb::optimizer_direction(c, gf, p[i], a, b, v);
    if (c.skip_zeros && gf == 0.0f) continue;
    p[i] = bnb::apply_update(c, p[i], d, c.lr);
    s1[i] = a;
    if (adem) s1[n + i] = b;
    if (two) s2[i] = v;
  }
}
void quant8(const float* x, long n, const float* qmap, unsigned char* out, float* absmax) {
  float mids[255];
  for (int i = 0; i < 255; ++i) mids[i] = bnb::midpoint(qmap[i], qmap[i + 1]);
  for (long b = 0; b * 256 < n; ++b) {
    float m = 0;
    long e = (b + 1) * 256 < n ? (b + 1) * 256 : n;
    for (long i = b * 256; i < e; ++i) m = bnb::nan_max_abs(m, x[i]);
    absmax[b] = m;
    float inv = bnb::inverse_absmax(m);
    for (long i = b * 256; i < e; ++i) out[i] = bnb::quantize_state_8bit(mids, x[i], inv);
  }
}
void i8(const float* x, long rows, long cols, signed char* out, float* stats) {
  for (long r = 0; r < rows; ++r) {
    float m = 0;
    for (long c = 0; c < cols; ++c) m = bnb::nan_max_abs(m, x[r * cols + c]);
    stats[r] = m;
    float s = bnb::int8_row_scale(m);
    for (long c = 0; c < cols; ++c) out[r * cols + c] = bnb::int8_round(x[r * cols + c], s, m);
  }
}
}
