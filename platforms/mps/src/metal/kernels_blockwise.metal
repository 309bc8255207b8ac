// Block-wise 8-bit quantization against a sorted 256-entry code book (any block size).

namespace bnb_mps {

// One threadgroup per block (64..256 threads, a multiple of the SIMD width); the 255 midpoints of
// the code book in threadgroup memory; nearest code by codebooks.h's binary search.
template <typename T, typename Mids, typename Scratch>
inline void quantize_blockwise_impl(device const T* x, device const float* code, device uchar* out,
                                    device float* absmax, uint n, uint blocksize, uint lid, uint group, uint count,
                                    Mids mids, Scratch scratch) {
  for (uint i = lid; i < 255; i += count) mids[i] = bnb::midpoint(code[i], code[i + 1]);
  const uint start = group * blocksize;
  const uint end = start + blocksize < n ? start + blocksize : n;
  float m = 0.0f;
  for (uint i = start + lid; i < end; i += count) m = bnb::nan_max_abs(m, Elem<T>::load(x[i]));
  const float amax = group_absmax(m, scratch, lid, count);  // its barriers also publish mids
  if (lid == 0) absmax[group] = amax;
  const float inv = bnb::inverse_absmax(amax);
  for (uint i = start + lid; i < end; i += count) {
    out[i] = static_cast<uchar>(bnb::nearest_sorted_256(mids, bnb::mul_rn(Elem<T>::load(x[i]), inv)));
  }
}

// One thread per element: code[A[i]] * absmax[i / blocksize].
template <typename T, typename Table>
inline void dequantize_blockwise_impl(device const uchar* A, device const float* code, device const float* absmax,
                                      device T* out, uint n, uint blocksize, uint tid, uint lid, uint count,
                                      Table table) {
  for (uint i = lid; i < 256; i += count) table[i] = code[i];
  BNB_BARRIER();
  if (tid < n) out[tid] = Elem<T>::store(mul_cpu_nan(table[A[tid]], absmax[tid / blocksize]));
}

}  // namespace bnb_mps

#define BNB_MPS_BLOCKWISE_KERNELS(SUFFIX, T)                                                                           \
  kernel void bnb_quantize_blockwise_##SUFFIX(                                                                         \
      device const T* x [[buffer(0)]], device const float* code [[buffer(1)]], device uchar* out [[buffer(2)]],        \
      device float* absmax [[buffer(3)]], constant long& n [[buffer(4)]], constant long& blocksize [[buffer(5)]],      \
      uint lid [[thread_position_in_threadgroup]], uint group [[threadgroup_position_in_grid]],                        \
      uint count [[threads_per_threadgroup]]) {                                                                        \
    threadgroup float mids[255];                                                                                       \
    threadgroup float scratch[bnb_mps::kSimd];                                                                         \
    bnb_mps::quantize_blockwise_impl<T>(x, code, out, absmax, static_cast<uint>(n), static_cast<uint>(blocksize), lid, \
                                        group, count, mids, scratch);                                                  \
  }                                                                                                                    \
  kernel void bnb_dequantize_blockwise_##SUFFIX(                                                                       \
      device const uchar* A [[buffer(0)]], device const float* code [[buffer(1)]],                                     \
      device const float* absmax [[buffer(2)]], device T* out [[buffer(3)]], constant long& n [[buffer(4)]],           \
      constant long& blocksize [[buffer(5)]], uint tid [[thread_position_in_grid]],                                    \
      uint lid [[thread_position_in_threadgroup]], uint count [[threads_per_threadgroup]]) {                           \
    threadgroup float table[256];                                                                                      \
    bnb_mps::dequantize_blockwise_impl<T>(A, code, absmax, out, static_cast<uint>(n), static_cast<uint>(blocksize),    \
                                          tid, lid, count, table);                                                     \
  }

BNB_MPS_BLOCKWISE_KERNELS(f32, float)
BNB_MPS_BLOCKWISE_KERNELS(f16, half)
BNB_MPS_BLOCKWISE_KERNELS(bf16, bfloat)
