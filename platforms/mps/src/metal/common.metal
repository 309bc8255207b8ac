// Helpers of every MPS kernel: element loads and stores, NaN bits, SIMD-group and threadgroup
// reductions. The per-element math comes from the shared headers (namespace bnb).

namespace bnb_mps {

constexpr constant uint kSimd = 32;  // SIMD-group width of every Apple GPU

// One element of a float dtype as f32. Loads are exact; stores round to nearest even with
// torch's NaN bits (numeric.h), the same on the GPU and in the host harness.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static inline float load(float v) { return v; }
  static inline float store(float v) { return v; }
};

template <>
struct Elem<half> {
  static inline float load(half v) { return static_cast<float>(v); }
  static inline half store(float v) { return as_type<half>(static_cast<ushort>(bnb::float_to_half(v))); }
};

template <>
struct Elem<bfloat> {
  static inline float load(bfloat v) { return bnb::bf16_to_float(as_type<ushort>(v)); }
  static inline bfloat store(float v) { return as_type<bfloat>(static_cast<ushort>(bnb::float_to_bf16(v))); }
};

// a * b with the NaN bits of the x86 CPU the reference results come from: a NaN operand
// propagates (quieted), an invalid product (0 * inf) is the default NaN 0xffc00000.
inline float mul_cpu_nan(float a, float b) {
  const float r = bnb::mul_rn(a, b);
  if (r == r) return r;
  if (a != a) return bnb::bits_float(bnb::float_bits(a) | 0x400000u);
  if (b != b) return bnb::bits_float(bnb::float_bits(b) | 0x400000u);
  return bnb::bits_float(0xffc00000u);
}

// Butterfly reductions over one SIMD group: every lane gets the result, in the same order on
// every GPU (and in the host harness).
inline float simd_group_sum(float v) {
  for (uint off = kSimd / 2; off > 0; off /= 2) v = bnb::add_rn(v, BNB_SHUFFLE_XOR(v, off));
  return v;
}

// max |x| over the SIMD group keeping NaN (numeric.h's nan_max_abs). |x| first: nan_max_abs(m, a)
// is not symmetric in a negative m, and a butterfly needs a symmetric step to give every lane the
// same result (the lanes that lose a negative maximum in the first step never see it again).
inline float simd_group_absmax(float v) {
  v = bnb::nan_max_abs(0.0f, v);
  for (uint off = kSimd / 2; off > 0; off /= 2) v = bnb::nan_max_abs(v, BNB_SHUFFLE_XOR(v, off));
  return v;
}

// Threadgroup-wide reductions: `scratch` holds 32 floats of threadgroup memory; `count` threads
// (a multiple of 32) all call it; every thread gets the result. Contains barriers.
template <typename Scratch>
inline float group_absmax(float v, Scratch scratch, uint lid, uint count) {
  v = simd_group_absmax(v);
  BNB_BARRIER();  // scratch may still be read by a previous reduction
  if (lid % kSimd == 0) scratch[lid / kSimd] = v;
  BNB_BARRIER();
  const uint lane = lid % kSimd;
  v = lane < count / kSimd ? scratch[lane] : scratch[0];  // repeats are neutral for max
  return simd_group_absmax(v);
}

template <typename Scratch>
inline float group_sum(float v, Scratch scratch, uint lid, uint count) {
  v = simd_group_sum(v);
  BNB_BARRIER();
  if (lid % kSimd == 0) scratch[lid / kSimd] = v;
  BNB_BARRIER();
  const uint lane = lid % kSimd;
  v = lane < count / kSimd ? scratch[lane] : 0.0f;
  return simd_group_sum(v);
}

}  // namespace bnb_mps
