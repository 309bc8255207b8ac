// Software prefetch of the streams of the fused 8-bit optimizer update, shared by the vector
// kernels. Internal linkage: files compiled for different instruction sets include this header.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <xmmintrin.h>

#include "bnb/portability.h"
#include "kernels.h"

namespace bnb_cpu {
namespace {

// How many elements before it is read every stream is prefetched into L1: the hardware
// prefetchers alone leave the kernels waiting on memory (Xeon, 2 threads, 16.7 M parameters
// evicted from cache, ms: AVX-512 Adam8bit 10.1-10.3 -> 8.8-9.0, SGD8bit 7.2-7.5 -> 6.1-6.3; the
// AVX2 table on the same machine Adam8bit 18.0-18.5 -> 16.4-16.6, SGD8bit 11.6-11.8 -> 9.7-9.8;
// 256-1024 elements ahead are alike, 4096 slower, and L2 as the target, or L2 far ahead plus L1
// near, no better).
constexpr int64_t kOpt8PrefetchAhead = 512;

// Prefetches the 64 elements at i of g, p and the states, when they lie before i1 (the end of the
// caller's range). Always inlined: a call would spill the caller's vector registers.
template <typename T>
BNB_INLINE void prefetch_opt8_streams(const Opt8Args& a, const T* g, const T* p, int64_t i, int64_t i1, bool slow,
                                      bool two) {
  if (i + 64 > i1) return;
  for (size_t o = 0; o < 64 * sizeof(T); o += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(g + i) + o, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i) + o, _MM_HINT_T0);
  }
  _mm_prefetch(reinterpret_cast<const char*>(a.state1 + i), _MM_HINT_T0);
  if (slow) _mm_prefetch(reinterpret_cast<const char*>(a.state1 + a.n + i), _MM_HINT_T0);
  if (two) _mm_prefetch(reinterpret_cast<const char*>(a.state2 + i), _MM_HINT_T0);
}

}  // namespace
}  // namespace bnb_cpu
