// One GPU thread group run on the CPU: the scheduler the host harnesses of the MPS (Metal) and
// CUDA/ROCm kernels share. A test tool of the repository, never part of a wheel or a GPU run.
//
// Every thread of a group (a Metal threadgroup, a CUDA block) runs as one fiber (ucontext). Every
// barrier and every warp (SIMD-group) shuffle is a synchronisation point. Between two barriers the
// warps run one after another (the last first, or the first first), each through its shuffles
// until all its lanes wait at the barrier: a shuffle goes on when every lane of its warp waits at
// it, a barrier when every thread of the group does. A warp thus runs ahead of the others as far
// as a GPU lets it, so a read of shared memory that another warp writes, with no barrier between,
// sees the write in one order and not in the other, however many shuffles lie between. What is undefined
// behaviour on a GPU is an error reported to the caller: a thread that returns while others wait
// at a barrier, lanes of one warp at different points, threads at different barrier instances, a
// shuffle that reads a lane that does not exist. The warp width is a parameter (32 for NVIDIA and
// Metal, 64 for AMD CDNA wavefronts). Group-shared memory starts each group filled with 0xff bytes
// (`poison`). Under AddressSanitizer the fibers' stack frames are checked as a thread's are: every
// switch is announced through ASan's fiber-switch interface, and no context names its stack, so
// ASan's swapcontext does not clear a resumed fiber's red zones (tests/test_cuda_host_harness.py).
//
// Under ThreadSanitizer the groups of one launch (`Launch`) are unordered, as on a GPU, where they
// run at once. Groups take turns over kTsanContexts TSan fibers (contexts), which nothing
// synchronises until the launch returns, so device memory that a group writes and one of the next
// kTsanContexts - 1 groups in the run reads or writes, other than through an atomic, is reported as a
// data race: a lost update (`*sum += x` from every block) that a run of one group after another
// cannot show by its values. The threads of a group share their group's context (their order is
// the scheduler's, above); the harness's bookkeeping is not tracked (`Untracked`); the host's
// writes before a launch happen before every group, and every group before the launch returns.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define BNB_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BNB_SIMT_ASAN 1
#endif
#endif
#if defined(BNB_SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#define BNB_SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BNB_SIMT_TSAN 1
#endif
#endif
#if defined(BNB_SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" {  // ThreadSanitizer's dynamic annotations (exported by its runtime, declared by no header)
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
void AnnotateBenignRaceSized(const char* file, int line, const volatile void* mem, unsigned long size,
                             const char* description);
}
#endif

namespace bnb_simt {

// ---- ThreadSanitizer: launches whose groups are unordered (see the top) -------------------------

#if defined(BNB_SIMT_TSAN)
constexpr uint32_t kTsanContexts = 4;
#else
constexpr uint32_t kTsanContexts = 1;  // one order: the OS thread's
#endif

// While one lives, the running context's loads and stores are not tracked: the harness's own
// bookkeeping, which every group's threads and the scheduler share (a group's order with the
// scheduler is the harness's business, not the kernel's). Empty without TSan.
struct Untracked {
#if defined(BNB_SIMT_TSAN)
  Untracked() {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~Untracked() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
#else
  Untracked() {}  // user-provided: a guard variable is not "unused"
#endif
  Untracked(const Untracked&) = delete;
  Untracked& operator=(const Untracked&) = delete;
};

// An OS thread's TSan contexts: the groups' (created once), the launch's turn, and the two
// synchronisation tokens: the host's writes before each group (`start`), each group's before the
// launch returns (`end`).
struct TsanState {
  void* contexts[kTsanContexts] = {};
  uint64_t turn = 0;
  int depth = 0;  // Launch scopes open
  char start = 0, end = 0;
};
inline TsanState& tsan_state() {
  static thread_local TsanState t;
  return t;
}

// Switches TSan to `context` just before a swapcontext to the fiber that runs in it, without
// ordering the two (no-op without TSan). Inlined: a call of its own would enter in one context
// and leave in the other, unbalancing both shadow call stacks.
__attribute__((always_inline)) inline void tsan_switch(void* context) {
#if defined(BNB_SIMT_TSAN)
  __tsan_switch_to_fiber(context, __tsan_switch_to_fiber_no_sync);
#else
  (void)context;
#endif
}
// The helpers below change TSan's context midway: not instrumented by TSan (what runs after the
// change runs in the other context: a spilled local read there would be that context's read).
// Without TSan they are inlined, as the calls they replace.
#if defined(BNB_SIMT_TSAN)
#define BNB_SIMT_SWITCHES_CONTEXT __attribute__((no_sanitize("thread"), noinline))
#else
#define BNB_SIMT_SWITCHES_CONTEXT __attribute__((always_inline))
#endif

// tsan_switch, then swapcontext(save, to).
BNB_SIMT_SWITCHES_CONTEXT inline void switch_to(void* context, ucontext_t* save, const ucontext_t* to) {
  tsan_switch(context);
  swapcontext(save, to);
}

inline void tsan_acquire(void* token) {
#if defined(BNB_SIMT_TSAN)
  __tsan_acquire(token);
#else
  (void)token;
#endif
}

// From the scheduler (running in TSan context `here`), on behalf of a group's context, which all
// its threads share: `hand_to` makes everything the scheduler did so far happen before what the
// group does next (`token` released here, acquired there); `release_as` makes everything the
// group did happen before a later acquire of `token`. No-ops without TSan.
BNB_SIMT_SWITCHES_CONTEXT inline void hand_to(void* context, void* here, void* token) {
#if defined(BNB_SIMT_TSAN)
  __tsan_release(token);
  __tsan_switch_to_fiber(context, __tsan_switch_to_fiber_no_sync);
  __tsan_acquire(token);
  __tsan_switch_to_fiber(here, __tsan_switch_to_fiber_no_sync);
#else
  (void)context, (void)here, (void)token;
#endif
}
BNB_SIMT_SWITCHES_CONTEXT inline void release_as(void* context, void* here, void* token) {
#if defined(BNB_SIMT_TSAN)
  __tsan_switch_to_fiber(context, __tsan_switch_to_fiber_no_sync);
  __tsan_release(token);
  __tsan_switch_to_fiber(here, __tsan_switch_to_fiber_no_sync);
#else
  (void)context, (void)here, (void)token;
#endif
}

// One launch (a CUDA kernel launch, a Metal dispatch): every group that run_group runs while it
// lives belongs to it. The harness's work between its groups is untracked (so the groups' reads of
// the launch's bookkeeping, which it rewrites for each group, race with nothing); once it ends, everything
// its groups did happens before what the host does next. A group run outside one is a launch of its
// own. Nothing without TSan.
class Launch {
 public:
  Launch() {
    TsanState& t = tsan_state();
    if (t.depth++ == 0) t.turn = 0;
  }
  ~Launch() {
    TsanState& t = tsan_state();
    if (--t.depth == 0) tsan_acquire(&t.end);
  }
  Launch(const Launch&) = delete;
  Launch& operator=(const Launch&) = delete;

 private:
  Untracked untracked_;
};

constexpr uint32_t kMaxGroup = 1024;
constexpr uint32_t kMaxWarp = 64;
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
  uint32_t warp = 32;
  uint32_t current = 0;
  ucontext_t sched;
  std::vector<Fiber> fibers;
  const std::function<void(uint32_t)>* body = nullptr;
  float slots[2][kMaxGroup];
  std::string error;
  void* tsan_os = nullptr;             // the scheduler's TSan context
  void* tsan_group = nullptr;          // the group's
  const void* sched_bottom = nullptr;  // the scheduler's stack, as ASan reports it to a fiber
  size_t sched_size = 0;
  void* sched_fake = nullptr;  // ASan's fake stack of the scheduler while a fiber runs
};

// Group-shared memory (a `__shared__` or `threadgroup` array) is a function-local `static`, one per
// declaration: AddressSanitizer guards it as a global, where it guards no `thread_local` variable,
// so an index past the array stops the run. run_group therefore holds this lock while a group
// runs: groups from different OS threads run one at a time.
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline thread_local Group* g_group = nullptr;
// Counts the groups an OS thread has started: `poison` fills an array once per group.
inline thread_local uint64_t g_group_serial = 0;

// Group-shared memory (a `__shared__` or `threadgroup` array, a function-local static here) is
// undefined when a group starts on a GPU; here it would keep the previous group's values and hide
// a read before the first write. The harnesses follow each such declaration with this call: the
// first thread of each group to pass it fills the array with 0xff bytes (NaN as f32, -1 as an
// integer).
// Under TSan, the array is shared by every group of a launch, as a GPU gives each its own: not a
// race between groups.
inline void poison(void* p, size_t bytes) {
  Untracked untracked;
  thread_local std::unordered_map<void*, uint64_t> filled;  // address -> group serial
  const auto [it, first] = filled.try_emplace(p, 0);
#if defined(BNB_SIMT_TSAN)
  if (first) AnnotateBenignRaceSized(__FILE__, __LINE__, p, bytes, "group-shared array, one per group on a GPU");
#else
  (void)first;
#endif
  if (it->second != g_group_serial) {
    memset(p, 0xff, bytes);
    it->second = g_group_serial;
  }
}

// AddressSanitizer's fiber-switch interface: each swapcontext is announced before (`leave`, with
// the stack being entered) and completed after (`arrive`). A fiber that ends passes a null save
// slot, so ASan frees its fake stack. Without ASan these are empty.
inline void leave(void** save, const void* bottom, size_t size) {
#if defined(BNB_SIMT_ASAN)
  __sanitizer_start_switch_fiber(save, bottom, size);
#else
  (void)save, (void)bottom, (void)size;
#endif
}
inline void unpoison(void* p, size_t size) {
#if defined(BNB_SIMT_ASAN)
  __asan_unpoison_memory_region(p, size);
#else
  (void)p, (void)size;
#endif
}
inline void arrive(void* save, const void** bottom = nullptr, size_t* size = nullptr) {
#if defined(BNB_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(save, bottom, size);
#else
  (void)save, (void)bottom, (void)size;
#endif
}

// Fiber stacks, reused by the groups an OS thread runs (under TSan, by those of one context):
// mapped with an inaccessible page below each, so a kernel that overflows its stack faults
// instead of writing over other memory.
struct Stacks {
  std::vector<char*> tops;  // usable area of each stack (kStackBytes)
  ~Stacks() {
    for (char* s : tops) munmap(s - guard(), kStackBytes + guard());
  }
  static size_t guard() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
  bool grow(size_t n) {
    while (tops.size() < n) {
      void* m = mmap(nullptr, kStackBytes + guard(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) return false;
      mprotect(m, guard(), PROT_NONE);
      tops.push_back(static_cast<char*>(m) + guard());
    }
    return true;
  }
};

// One pool per TSan context: a stack that groups in two contexts used would be a race between them.
inline Stacks& stacks(uint32_t context) {
  static thread_local Stacks pools[kTsanContexts];
  return pools[context];
}

// Not instrumented by TSan: it enters in the group's context and leaves in the scheduler's.
#if defined(BNB_SIMT_TSAN)
__attribute__((no_sanitize("thread")))
#endif
inline void fiber_entry() {
  Group* g;
  uint32_t i;
  {
    Untracked untracked;
    g = g_group;
    arrive(nullptr, &g->sched_bottom, &g->sched_size);
    i = g->current;
  }
  (*g->body)(i);
  {
    Untracked untracked;  // ends before the switch: it counts in the group's context
    g->fibers[i].state = kDone;
    leave(nullptr, g->sched_bottom, g->sched_size);
  }
  tsan_switch(g->tsan_os);  // uc_link returns to the scheduler
}

// The index of the running thread in its group.
inline uint32_t current_thread() {
  Untracked untracked;
  return g_group->current;
}

// The running group's warp width.
inline uint32_t warp_width() {
  Untracked untracked;
  return g_group->warp;
}

// Records the first error of the running group (a kernel's own misuse, e.g. a bad shuffle width).
inline void report(const std::string& what) {
  Untracked untracked;
  if (g_group->error.empty()) g_group->error = what;
}

// Other threads run while this one is suspended and write the group's shared memory: the
// compiler must neither keep such values in registers across the switch nor sink stores below it
// (it cannot see that swapcontext runs code that reads and writes those statics).
// (Under TSan the threads of a group share one context, so no ignore spans the switch.)
inline void suspend(State s) {
  Group* g;
  Fiber* f;
  void* os;
  void* fake = nullptr;
  {
    Untracked untracked;
    g = g_group;
    f = &g->fibers[g->current];
    f->state = s;
    os = g->tsan_os;
    asm volatile("" ::: "memory");
    leave(&fake, g->sched_bottom, g->sched_size);
  }
  switch_to(os, &f->ctx, &g->sched);
  Untracked untracked;
  arrive(fake);
  asm volatile("" ::: "memory");
}

// A barrier over the whole group (threadgroup_barrier, __syncthreads).
inline void barrier() {
  suspend(kBarrier);
  Untracked untracked;
  g_group->fibers[g_group->current].barriers++;
}

// The value of lane (this lane ^ mask) of the same warp. `what` names the shuffle in errors.
inline float shuffle_xor(float v, uint32_t mask, const char* what) {
  uint32_t i, k;
  {
    Untracked untracked;
    Group* g = g_group;
    i = g->current;
    k = g->fibers[i].shuffles & 1u;
    g->slots[k][i] = v;
  }
  suspend(kShuffle);
  Untracked untracked;
  Group* g = g_group;
  const uint32_t partner = i ^ (mask % g->warp);
  g->fibers[i].shuffles++;
  if (partner >= g->size) {
    report(std::string(what) + " reads lane " + std::to_string(partner) + " of a group of " + std::to_string(g->size) +
           " threads");
    return 0.0f;
  }
  return g->slots[k][partner];
}

// Runs one group of `size` threads in warps of `warp` lanes; body(i) is thread i. Warps, and the
// lanes within a warp up to each shuffle, run last first (`last_first`) or first first: a thread
// that reads what a thread on the other side of it writes, with no barrier between, reads too
// early in one of the two orders, and a thread that reads what another warp overwrites reads too
// late in the other. Returns "" or what went wrong.
inline std::string run_group(uint32_t size, uint32_t warp, const std::function<void(uint32_t)>& body,
                             bool last_first = true) {
  if (size == 0 || size > kMaxGroup) return "group size must be in [1, 1024], got " + std::to_string(size);
  if (warp == 0 || warp > kMaxWarp || (warp & (warp - 1)) != 0)
    return "warp width must be a power of two in [1, 64], got " + std::to_string(warp);
  std::lock_guard<std::mutex> hold(launch_mutex());  // group-shared arrays are statics
  Launch launch;  // a group outside a launch is a launch of one (an inner scope does nothing)
  TsanState& tsan = tsan_state();
  const uint32_t context = static_cast<uint32_t>(tsan.turn++ % kTsanContexts);
  Group g;
#if defined(BNB_SIMT_TSAN)
  if (!tsan.contexts[context]) tsan.contexts[context] = __tsan_create_fiber(0);
  g.tsan_os = __tsan_get_current_fiber();
  g.tsan_group = tsan.contexts[context];
#endif
  ++g_group_serial;
  memset(&g.sched, 0, sizeof(g.sched));  // names no stack (see below)
  g.size = size;
  g.warp = warp;
  g.body = &body;
  g.fibers.resize(size);
  Stacks& pool = stacks(context);
  if (!pool.grow(size)) return "could not map " + std::to_string(size) + " fiber stacks";
  Group* saved = g_group;
  g_group = &g;
  for (uint32_t i = 0; i < size; ++i) {
    Fiber& f = g.fibers[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = pool.tops[i];
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g.sched;
    makecontext(&f.ctx, fiber_entry, 0);
    // ASan's swapcontext clears the shadow of the stack the context names, which would erase the
    // red zones of a suspended fiber's frames each time it resumes: once made, the contexts name
    // none, and the stack starts clean instead (an earlier group may have stopped mid-kernel).
    f.ctx.uc_stack.ss_sp = nullptr;
    f.ctx.uc_stack.ss_size = 0;
    unpoison(pool.tops[i], kStackBytes);
    f.state = kReady;
    f.shuffles = 0;
    f.barriers = 0;
  }
  // The host's writes (and the context's past launches) happen before the group.
  hand_to(g.tsan_group, g.tsan_os, &tsan.start);
  const uint32_t warps = (size + warp - 1) / warp;
  for (;;) {
    // Each warp runs ahead on its own, through its shuffles, until every lane waits at a barrier
    // or has returned; then the next warp does.
    for (uint32_t wn = 0; wn < warps && g.error.empty(); ++wn) {
      const uint32_t s = (last_first ? warps - 1 - wn : wn) * warp;
      const uint32_t end = s + warp < size ? s + warp : size;
      for (;;) {
        for (uint32_t n = 0; n < end - s; ++n) {
          const uint32_t i = last_first ? end - 1 - n : s + n;
          if (g.fibers[i].state != kReady) continue;
          g.current = i;
          leave(&g.sched_fake, pool.tops[i], kStackBytes);
          switch_to(g.tsan_group, &g.sched, &g.fibers[i].ctx);
          arrive(g.sched_fake);
        }
        if (!g.error.empty()) break;
        // The warp goes on when all its lanes wait at the same shuffle.
        bool all = true;
        for (uint32_t i = s; i < end; ++i)
          all = all && g.fibers[i].state == kShuffle && g.fibers[i].shuffles == g.fibers[s].shuffles;
        if (!all) break;
        for (uint32_t i = s; i < end; ++i) g.fibers[i].state = kReady;
      }
    }
    if (!g.error.empty()) break;
    uint32_t done = 0, at_barrier = 0;
    for (const Fiber& f : g.fibers) {
      done += f.state == kDone;
      at_barrier += f.state == kBarrier;
    }
    if (done == size) break;
    // No lane is ready now: a lane still at a shuffle is one its warp's other lanes never join.
    for (uint32_t i = 0; i < size && g.error.empty(); ++i) {
      if (g.fibers[i].state == kShuffle) {
        g.error = "lanes of SIMD group " + std::to_string(i / warp) +
                  " reach different points (a shuffle in divergent control flow)";
      }
    }
    if (!g.error.empty()) break;
    // Every thread waits at a barrier or has returned: the barrier is released when all wait at it.
    if (at_barrier != size) {
      g.error =
          std::to_string(done) + " of " + std::to_string(size) + " threads returned while others wait at a barrier";
      break;
    }
    for (const Fiber& f : g.fibers) {
      if (f.barriers != g.fibers[0].barriers && g.error.empty()) {
        g.error = "threads wait at different barriers (" + std::to_string(f.barriers) + " and " +
                  std::to_string(g.fibers[0].barriers) + " passed)";
      }
    }
    if (!g.error.empty()) break;
    for (Fiber& f : g.fibers) f.state = kReady;
  }
  // Everything the group did, finished or stopped by an error, happens before the launch returns.
  release_as(g.tsan_group, g.tsan_os, &tsan.end);
  g_group = saved;
  return g.error;
}

}  // namespace bnb_simt
