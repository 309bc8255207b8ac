// Host emulation of the Metal features the MPS kernels use, so that their source compiles as C++
// and runs on the CPU (the test harness; never part of a GPU run).
//
// A threadgroup runs on the scheduler of shared/host/simt_host.h (shared with the CUDA harness):
// one fiber per thread, each SIMD group (32 lanes) running through its shuffles to the next barrier in turn,
// with what is undefined on the GPU reported to Python as an error. Threadgroup memory is a
// function-local `static` shared by the group's fibers (AddressSanitizer guards its bounds), and
// threadgroups from different OS threads run one at a time (bnb_simt::launch_mutex).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <string>

#include "bnb/bnb_c_api.h"  // the optimizer ids, and what optimizer_math.h's host-only part needs
#include "simt_host.h"      // the thread-group scheduler (shared/host), shared with the CUDA harness

// Metal keywords and attributes that mean nothing on the host. BNB_HOST_SCAN (preprocessing
// only) marks them instead, for the harness to read each kernel's parameters.
#if defined(BNB_HOST_SCAN)
#define kernel __bnb_kernel__
#define device __bnb_device__
#define constant __bnb_constant__
#else
#define kernel
#define device
#define constant const
#endif
#define thread
#define threadgroup static  // one array per declaration: see bnb_simt::launch_mutex

typedef unsigned int uint;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned long ulong;

template <typename T, typename U>
inline T as_type(U u) {
  static_assert(sizeof(T) == sizeof(U), "as_type between types of different sizes");
  T t;
  memcpy(&t, &u, sizeof(T));
  return t;
}

// Metal's 16-bit float types as storage. The conversions (round to nearest even) are numeric.h's,
// which the Metal source itself carries: metal_host_tail.h defines them after it.
struct half {
  uint16_t bits;
  half() = default;
  explicit half(float f);
  explicit operator float() const;
};
struct bfloat {
  uint16_t bits;
  bfloat() = default;
  explicit bfloat(float f);
  explicit operator float() const;
};

namespace metal {
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
}  // namespace metal

namespace bnbh {

constexpr uint32_t kSimdWidth = 32;
constexpr uint32_t kMaxGroup = bnb_simt::kMaxGroup;

// threadgroup_barrier(mem_flags::mem_threadgroup)
inline void barrier() { bnb_simt::barrier(); }

// simd_shuffle_xor: the value of lane (this lane ^ mask) of the same SIMD group.
inline float shuffle_xor(float v, uint32_t mask) { return bnb_simt::shuffle_xor(v, mask, "simd_shuffle_xor"); }

// Runs one threadgroup of `size` threads; body(i) is thread i, the threads of each phase last
// first or first first. Returns "" or what went wrong.
inline std::string run_group(uint32_t size, const std::function<void(uint32_t)>& body, bool last_first = true) {
  return bnb_simt::run_group(size, kSimdWidth, body, last_first);
}

// The thread ids of one kernel invocation (one-dimensional grids).
struct Ids {
  uint thread_position_in_grid;
  uint thread_position_in_threadgroup;
  uint threadgroup_position_in_grid;
  uint threads_per_threadgroup;
  uint threads_per_grid;
  uint threadgroups_per_grid;
  uint thread_index_in_simdgroup;
  uint simdgroup_index_in_threadgroup;
};

// dispatchThreads(threads, group): ceil(threads / group) groups, the last one possibly partial.
inline std::string dispatch(uint64_t threads, uint64_t group, const std::function<void(const Ids&)>& fn) {
  if (group == 0 || group > kMaxGroup) return "group_size must be in [1, 1024], got " + std::to_string(group);
  if (threads > 0xffffffffull) return "threads must fit in 32 bits, got " + std::to_string(threads);
  const uint64_t groups = (threads + group - 1) / group;
  bnb_simt::Launch groups_unordered;  // under TSan: no threadgroup happens before another
  for (uint64_t gi = 0; gi < groups; ++gi) {
    const uint32_t size = static_cast<uint32_t>(gi + 1 < groups ? group : threads - gi * group);
    // Threadgroups alternate the order of their threads (see bnb_simt::run_group).
    std::string err = run_group(
        size,
        [&](uint32_t i) {
          Ids ids;
          ids.thread_position_in_grid = static_cast<uint>(gi * group + i);
          ids.thread_position_in_threadgroup = i;
          ids.threadgroup_position_in_grid = static_cast<uint>(gi);
          ids.threads_per_threadgroup = size;
          ids.threads_per_grid = static_cast<uint>(threads);
          ids.threadgroups_per_grid = static_cast<uint>(groups);
          ids.thread_index_in_simdgroup = i % kSimdWidth;
          ids.simdgroup_index_in_threadgroup = i / kSimdWidth;
          fn(ids);
        },
        gi % 2 == 0);
    if (!err.empty()) return "threadgroup " + std::to_string(gi) + ": " + err;
  }
  return "";
}

}  // namespace bnbh
