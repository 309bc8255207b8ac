// Host emulation of the Metal features the MPS kernels use, so that their source compiles as C++
// and runs on the CPU (the test harness; never part of a GPU run).
//
// A threadgroup runs as one fiber (ucontext) per thread. Every barrier and every SIMD-group
// shuffle is a synchronisation point: the scheduler runs each thread, lane by lane, up to its next
// point, and releases a barrier only when every thread of the group waits at one, a shuffle only
// when every lane of its SIMD group (32 threads) waits at one. A thread that returns while others
// wait at a barrier, lanes of one SIMD group at different points, or a shuffle with a lane that
// does not exist are errors reported to Python (they are undefined behaviour on the GPU).
// Threadgroup memory is a function-local `static thread_local` shared by the group's fibers.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <string>
#include <vector>

#include "bnb/bnb_c_api.h"  // the optimizer ids, and what optimizer_math.h's host-only part needs

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
#define threadgroup static thread_local

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
constexpr uint32_t kMaxGroup = 1024;
constexpr size_t kStackBytes = 128 * 1024;

enum State { kReady = 0, kBarrier = 1, kShuffle = 2, kDone = 3 };

struct Fiber {
  ucontext_t ctx;
  State state;
  uint32_t shuffles;  // shuffles this thread has completed
  uint32_t barriers;  // barriers this thread has passed
};

struct Group {
  uint32_t size = 0;
  uint32_t current = 0;
  ucontext_t sched;
  std::vector<Fiber> fibers;
  const std::function<void(uint32_t)>* body = nullptr;
  float slots[2][kMaxGroup];
  std::string error;
};

inline thread_local Group* g_group = nullptr;

inline std::vector<char*>& stacks() {
  static thread_local std::vector<char*> pool;
  return pool;
}

inline void fiber_entry() {
  Group* g = g_group;
  const uint32_t i = g->current;
  (*g->body)(i);
  g->fibers[i].state = kDone;  // uc_link returns to the scheduler
}

// Other threads run while this one is suspended and write threadgroup memory: the compiler must
// neither keep such values in registers across the switch nor sink stores below it (it cannot
// see that swapcontext runs code of this file that reads and writes those statics).
inline void suspend(State s) {
  Group* g = g_group;
  Fiber& f = g->fibers[g->current];
  f.state = s;
  asm volatile("" ::: "memory");
  swapcontext(&f.ctx, &g->sched);
  asm volatile("" ::: "memory");
}

// threadgroup_barrier(mem_flags::mem_threadgroup)
inline void barrier() {
  suspend(kBarrier);
  g_group->fibers[g_group->current].barriers++;
}

// simd_shuffle_xor: the value of lane (this lane ^ mask) of the same SIMD group.
inline float shuffle_xor(float v, uint32_t mask) {
  Group* g = g_group;
  const uint32_t i = g->current;
  const uint32_t k = g->fibers[i].shuffles & 1u;
  g->slots[k][i] = v;
  suspend(kShuffle);
  const uint32_t partner = i ^ (mask % kSimdWidth);
  g = g_group;
  g->fibers[i].shuffles++;
  if (partner >= g->size) {
    if (g->error.empty())
      g->error = "simd_shuffle_xor reads lane " + std::to_string(partner) + " of a group of " +
                 std::to_string(g->size) + " threads";
    return 0.0f;
  }
  return g->slots[k][partner];
}

// Runs one threadgroup of `size` threads; body(i) is thread i. Returns "" or what went wrong.
inline std::string run_group(uint32_t size, const std::function<void(uint32_t)>& body) {
  if (size == 0 || size > kMaxGroup) return "threadgroup size must be in [1, 1024], got " + std::to_string(size);
  Group g;
  g.size = size;
  g.body = &body;
  g.fibers.resize(size);
  std::vector<char*>& pool = stacks();
  while (pool.size() < size) pool.push_back(new char[kStackBytes]);
  Group* saved = g_group;
  g_group = &g;
  for (uint32_t i = 0; i < size; ++i) {
    Fiber& f = g.fibers[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = pool[i];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g.sched;
    makecontext(&f.ctx, fiber_entry, 0);
    f.state = kReady;
    f.shuffles = 0;
    f.barriers = 0;
  }
  for (;;) {
    for (uint32_t i = 0; i < size; ++i) {
      if (g.fibers[i].state != kReady) continue;
      g.current = i;
      swapcontext(&g.sched, &g.fibers[i].ctx);
    }
    if (!g.error.empty()) break;
    uint32_t done = 0, at_barrier = 0;
    for (const Fiber& f : g.fibers) {
      done += f.state == kDone;
      at_barrier += f.state == kBarrier;
    }
    if (done == size) break;
    bool released = false;
    // SIMD groups whose lanes all wait at a shuffle go on.
    for (uint32_t s = 0; s < size; s += kSimdWidth) {
      const uint32_t end = s + kSimdWidth < size ? s + kSimdWidth : size;
      bool all = true, any = false;
      for (uint32_t i = s; i < end; ++i) {
        all = all && g.fibers[i].state == kShuffle && g.fibers[i].shuffles == g.fibers[s].shuffles;
        any = any || g.fibers[i].state == kShuffle;
      }
      if (all) {
        for (uint32_t i = s; i < end; ++i) g.fibers[i].state = kReady;
        released = true;
      } else if (any) {
        bool others_stuck = true;  // lanes elsewhere can never join: divergent SIMD group
        for (uint32_t i = s; i < end; ++i) others_stuck = others_stuck && g.fibers[i].state != kReady;
        if (others_stuck && g.error.empty()) {
          g.error = "lanes of SIMD group " + std::to_string(s / kSimdWidth) +
                    " reach different points (a shuffle in divergent control flow)";
        }
      }
    }
    if (!released && at_barrier == size) {
      for (const Fiber& f : g.fibers) {
        if (f.barriers != g.fibers[0].barriers && g.error.empty()) {
          g.error = "threads wait at different barriers (" + std::to_string(f.barriers) + " and " +
                    std::to_string(g.fibers[0].barriers) + " passed)";
        }
      }
      if (!g.error.empty()) break;
      for (Fiber& f : g.fibers) f.state = kReady;
      released = true;
    }
    if (!released) {
      if (g.error.empty()) {
        g.error = done ? std::to_string(done) + " of " + std::to_string(size) +
                             " threads returned while others wait at a barrier"
                       : "threads of the group wait at different barriers or shuffles";
      }
      break;
    }
  }
  g_group = saved;
  return g.error;
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
  for (uint64_t gi = 0; gi < groups; ++gi) {
    const uint32_t size = static_cast<uint32_t>(gi + 1 < groups ? group : threads - gi * group);
    std::string err = run_group(size, [&](uint32_t i) {
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
    });
    if (!err.empty()) return "threadgroup " + std::to_string(gi) + ": " + err;
  }
  return "";
}

}  // namespace bnbh
