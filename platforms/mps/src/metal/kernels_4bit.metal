// 4-bit (NF4 / FP4) kernels: quantize, dequantize, and the fused matrix-vector product that
// reads the packed weights directly. Layout (bnb_c_api.h): element 2i is the high nibble of
// byte i; one f32 absmax per block. Element indices are 32-bit: the glue sends tensors of 2^31
// elements or more to the reference.

namespace bnb_mps {

constexpr constant uint kQuantThreads = 256;
constexpr constant uint kMaxPairs = 8;  // 4096 / 2 / 256 pairs per thread at most

// Threadgroup memory is declared by the entry points (Metal allows it only there) and passed in.
//
// One threadgroup of 256 threads quantizes 256 / tpq blocks; `tpq` threads (a power of two)
// share a block, each with `ppt` pairs of elements. The block absmax is a segmented tree
// reduction in threadgroup memory.
template <typename T, typename Shared>
inline void quantize_4bit_impl(device const T* x, device uchar* packed, device float* absmax, uint n, uint blocksize,
                               int nf4, uint lid, uint group, Shared red) {
  const uint tpq = blocksize / 2 < kQuantThreads ? blocksize / 2 : kQuantThreads;
  const uint ppt = blocksize / 2 / tpq;
  const uint nblocks = (n + blocksize - 1) / blocksize;
  const uint lane = lid % tpq;
  const uint qb = group * (kQuantThreads / tpq) + lid / tpq;
  const bool active = qb < nblocks;
  const uint start = qb * blocksize;
  float v[2 * kMaxPairs];
  float m = 0.0f;
  for (uint j = 0; j < kMaxPairs; ++j) {
    v[2 * j] = 0.0f;
    v[2 * j + 1] = 0.0f;
    if (active && j < ppt) {
      const uint e = start + 2 * (lane + j * tpq);
      if (e < n) {
        v[2 * j] = Elem<T>::load(x[e]);
        m = bnb::nan_max_abs(m, v[2 * j]);
      }
      if (e + 1 < n) {
        v[2 * j + 1] = Elem<T>::load(x[e + 1]);
        m = bnb::nan_max_abs(m, v[2 * j + 1]);
      }
    }
  }
  red[lid] = m;
  BNB_BARRIER();
  for (uint s = tpq / 2; s > 0; s /= 2) {
    if (lane < s) red[lid] = bnb::nan_max_abs(red[lid], red[lid + s]);
    BNB_BARRIER();
  }
  const float amax = red[lid - lane];
  if (!active) return;
  if (lane == 0) absmax[qb] = amax;
  const float inv = bnb::inverse_absmax(amax);
  const uint zero_code = bnb::encode_4bit(nf4, 0.0f);
  for (uint j = 0; j < ppt; ++j) {
    const uint e = start + 2 * (lane + j * tpq);
    if (e < n) {
      const uint hi = bnb::encode_4bit(nf4, bnb::mul_rn(v[2 * j], inv));
      const uint lo = e + 1 < n ? bnb::encode_4bit(nf4, bnb::mul_rn(v[2 * j + 1], inv)) : zero_code;
      packed[e / 2] = static_cast<uchar>((hi << 4) | lo);
    }
  }
}

// The decode table in threadgroup memory. words != 0 (n % 8 == 0, packed 4-byte aligned): one
// thread per 32-bit word of packed codes, eight elements of one block (block sizes are multiples
// of 8); otherwise one thread per packed byte (two elements).
template <typename T, typename Shared>
inline void dequantize_4bit_impl(device const uchar* packed, device const float* absmax, device T* out, uint n,
                                 uint shift, int nf4, int words, uint tid, uint lid, Shared table) {
  if (lid < 16) table[lid] = bnb::decode_4bit(nf4, lid);
  BNB_BARRIER();
  if (words) {
    if (tid >= n / 8) return;
    const uint word = reinterpret_cast<device const uint*>(packed)[tid];
    const uint e = 8 * tid;
    const float scale = absmax[e >> shift];
    for (uint t = 0; t < 4; ++t) {
      const uint b = (word >> (8 * t)) & 0xffu;
      out[e + 2 * t] = Elem<T>::store(mul_cpu_nan(table[b >> 4], scale));
      out[e + 2 * t + 1] = Elem<T>::store(mul_cpu_nan(table[b & 15u], scale));
    }
    return;
  }
  if (tid >= (n + 1) / 2) return;
  const uint b = packed[tid];
  const uint e = 2 * tid;
  out[e] = Elem<T>::store(mul_cpu_nan(table[b >> 4], absmax[e >> shift]));
  if (e + 1 < n) out[e + 1] = Elem<T>::store(mul_cpu_nan(table[b & 15u], absmax[(e + 1) >> shift]));
}

constexpr constant uint kGemvSimdGroups = 4;  // output columns per threadgroup
constexpr constant uint kGemvMaxRows = 8;

// out[r, col] = sum_k A[r, k] * W[col, k] for r < m <= 8, W[col, k] = code[nibble] * absmax
// rounded to A's dtype (as the reference multiplies by the dequantized weight). One SIMD group
// per output column; each lane takes 8 weights (one 32-bit word) at a time when K % 8 == 0.
template <typename T, typename Shared>
inline void gemv_4bit_impl(device const T* A, device const uchar* B, device const float* absmax,
                           device const float* code, device T* out, uint m, uint N, uint K, uint shift, uint lid,
                           uint group, Shared table) {
  if (lid < 16) table[lid] = code[lid];
  BNB_BARRIER();
  const uint lane = lid % kSimd;
  const uint col = group * kGemvSimdGroups + lid / kSimd;
  if (col >= N) return;  // the whole SIMD group leaves together
  float acc[kGemvMaxRows];
  for (uint r = 0; r < kGemvMaxRows; ++r) acc[r] = 0.0f;
  if (K % 8 == 0) {
    device const uint* words = reinterpret_cast<device const uint*>(B);
    const uint per_row = K / 8;
    for (uint j = lane; j < per_row; j += kSimd) {
      const uint word = words[col * per_row + j];
      const uint k0 = 8 * j;
      const float scale = absmax[(col * K + k0) >> shift];
      float w[8];
      for (uint t = 0; t < 4; ++t) {
        const uint byte = (word >> (8 * t)) & 0xffu;
        w[2 * t] = Elem<T>::load(Elem<T>::store(bnb::mul_rn(table[byte >> 4], scale)));
        w[2 * t + 1] = Elem<T>::load(Elem<T>::store(bnb::mul_rn(table[byte & 15u], scale)));
      }
      for (uint r = 0; r < m; ++r) {
        device const T* a = A + r * K + k0;
        float s = acc[r];
        for (uint t = 0; t < 8; ++t) s = bnb::add_rn(s, bnb::mul_rn(Elem<T>::load(a[t]), w[t]));
        acc[r] = s;
      }
    }
  } else {
    for (uint k = lane; k < K; k += kSimd) {
      const uint idx = col * K + k;
      const uint byte = B[idx / 2];
      const uint c = (idx & 1u) ? (byte & 15u) : (byte >> 4);
      const float w = Elem<T>::load(Elem<T>::store(bnb::mul_rn(table[c], absmax[idx >> shift])));
      for (uint r = 0; r < m; ++r) acc[r] = bnb::add_rn(acc[r], bnb::mul_rn(Elem<T>::load(A[r * K + k]), w));
    }
  }
  for (uint r = 0; r < m; ++r) {
    const float total = simd_group_sum(acc[r]);
    if (lane == 0) out[r * N + col] = Elem<T>::store(total);
  }
}

}  // namespace bnb_mps

// Entry points, one per dtype (f32, f16, bf16). Scalars are bound as torch.mps.compile_shader
// binds a Python int: a 64-bit `long`.
#define BNB_MPS_4BIT_KERNELS(SUFFIX, T)                                                                                \
  kernel void bnb_quantize_4bit_##SUFFIX(                                                                              \
      device const T* x [[buffer(0)]], device uchar* packed [[buffer(1)]], device float* absmax [[buffer(2)]],         \
      constant long& n [[buffer(3)]], constant long& blocksize [[buffer(4)]], constant long& nf4 [[buffer(5)]],        \
      uint lid [[thread_position_in_threadgroup]], uint group [[threadgroup_position_in_grid]]) {                      \
    threadgroup float red[bnb_mps::kQuantThreads];                                                                     \
    bnb_mps::quantize_4bit_impl<T>(x, packed, absmax, static_cast<uint>(n), static_cast<uint>(blocksize),              \
                                   static_cast<int>(nf4), lid, group, red);                                            \
  }                                                                                                                    \
  kernel void bnb_dequantize_4bit_##SUFFIX(                                                                            \
      device const uchar* packed [[buffer(0)]], device const float* absmax [[buffer(1)]], device T* out [[buffer(2)]], \
      constant long& n [[buffer(3)]], constant long& shift [[buffer(4)]], constant long& nf4 [[buffer(5)]],            \
      constant long& words [[buffer(6)]], uint tid [[thread_position_in_grid]],                                        \
      uint lid [[thread_position_in_threadgroup]]) {                                                                   \
    threadgroup float table[16];                                                                                       \
    bnb_mps::dequantize_4bit_impl<T>(packed, absmax, out, static_cast<uint>(n), static_cast<uint>(shift),              \
                                     static_cast<int>(nf4), static_cast<int>(words), tid, lid, table);                 \
  }                                                                                                                    \
  kernel void bnb_gemv_4bit_##SUFFIX(                                                                                  \
      device const T* A [[buffer(0)]], device const uchar* B [[buffer(1)]], device const float* absmax [[buffer(2)]],  \
      device const float* code [[buffer(3)]], device T* out [[buffer(4)]], constant long& m [[buffer(5)]],             \
      constant long& N [[buffer(6)]], constant long& K [[buffer(7)]], constant long& shift [[buffer(8)]],              \
      uint lid [[thread_position_in_threadgroup]], uint group [[threadgroup_position_in_grid]]) {                      \
    threadgroup float table[16];                                                                                       \
    bnb_mps::gemv_4bit_impl<T>(A, B, absmax, code, out, static_cast<uint>(m), static_cast<uint>(N),                    \
                               static_cast<uint>(K), static_cast<uint>(shift), lid, group, table);                     \
  }

BNB_MPS_4BIT_KERNELS(f32, float)
BNB_MPS_4BIT_KERNELS(f16, half)
BNB_MPS_4BIT_KERNELS(bf16, bfloat)
