// The kernels' thread pool: see threading.h.
#include "threading.h"

#if !defined(_WIN32)
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <new>
#include <thread>

#include "bnb/bnb_c_api.h"
#include "fault_injection.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BNB_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define BNB_CPU_RELAX() asm volatile("yield")
#else
#define BNB_CPU_RELAX() ((void)0)
#endif

namespace bnb_cpu {
namespace {

// Read once: std::thread::hardware_concurrency() reads /sys on every call (glibc's get_nprocs), about
// 7 us, which was most of the cost of a small kernel call.
int hardware_threads() {
  static const int threads = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw > 256 ? 256 : hw);
  }();
  return threads;
}

thread_local int t_requested = 0;  // 0: all hardware threads

class Pool {
 public:
  // The pool, or nullptr when it cannot be had (out of memory): the caller then runs alone, and a
  // later call tries again.
  static Pool* get() {
    // Leaked on purpose: workers must never be joined during static destruction. A forked child
    // has none of the parent's worker threads: it starts a fresh pool (see after_fork_in_child).
    Pool* pool = instance().load(std::memory_order_acquire);
    if (pool == nullptr) {
      static std::mutex create;
      std::lock_guard<std::mutex> lock(create);
      pool = instance().load(std::memory_order_acquire);
      if (pool == nullptr) {
        if (fail_allocation("thread pool")) return nullptr;
        pool = new (std::nothrow) Pool(hardware_threads() - 1);
        if (pool == nullptr) return nullptr;
        instance().store(pool, std::memory_order_release);
#if !defined(_WIN32)
        static bool registered = pthread_atfork(nullptr, nullptr, after_fork_in_child) == 0;
        (void)registered;
#endif
      }
    }
    return pool;
  }

  // The pool if a call has started it, else nullptr.
  static const Pool* existing() { return instance().load(std::memory_order_acquire); }

  static std::atomic<Pool*>& instance() {
    static std::atomic<Pool*> pool{nullptr};
    return pool;
  }

  static void after_fork_in_child() { instance().store(nullptr, std::memory_order_release); }

  // Worker threads running now, and the number the pool wants (one fewer than the hardware threads).
  int workers() const { return started_.load(std::memory_order_acquire); }
  int wanted() const { return wanted_; }

  // Starts the workers the system refused before (a transient EAGAIN under a process limit, or
  // memory), at most once per kRetryNs and never while a job runs: a pool left short grows back
  // to its size instead of running short for the life of the process.
  void grow_if_short() {
    if (started_.load(std::memory_order_relaxed) >= wanted_) return;
    const int64_t now = now_ns();
    if (now - last_try_.load(std::memory_order_relaxed) < kRetryNs) return;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    // Again under the lock: another caller may have tried since this one read the time.
    if (busy.owns_lock() && now - last_try_.load(std::memory_order_relaxed) >= kRetryNs) grow(now);
  }

  // Runs job(c) for c in [0, chunks) with the caller taking chunk 0; false if the pool is busy.
  // chunks <= workers() + 1 as read before the call: a worker started since has a larger index.
  bool run(int chunks, FnRef<int> job) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      chunks_ = chunks;
      pending_.store(chunks - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    job(0);
    // The others take a few microseconds at most to finish their chunk: spin, then yield.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin > 4096) {
        std::this_thread::yield();
      } else {
        BNB_CPU_RELAX();
      }
    }
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = nullptr;
    return true;
  }

 private:
  static constexpr int64_t kRetryNs = 1000000000;  // one try a second to start missing workers

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  explicit Pool(int wanted) : wanted_(wanted > 0 ? wanted : 0) { grow(now_ns()); }

  // Starts workers started_ + 1 ... wanted_, as many as the system gives (a process limit, a
  // container's, or memory can refuse a thread), each detached at once. Called by the constructor
  // or with busy_ held: no job runs, so the generation read here stays the current one until the
  // new workers can see it, and each waits for the next.
  void grow(int64_t now) {
    last_try_.store(now, std::memory_order_relaxed);
    const uint64_t current = generation_.load(std::memory_order_acquire);
    for (int i = started_.load(std::memory_order_relaxed); i < wanted_; ++i) {
      // A test build fails the first thread (a pool of none) or the last (a pool short of one):
      // two sites whatever the machine's thread count.
      if ((i == 0 || i == wanted_ - 1) && fail_allocation("pool thread")) break;
      try {
        std::thread([this, i, current] { loop(i + 1, current); }).detach();
      } catch (const std::exception&) {
        break;
      }
      started_.store(i + 1, std::memory_order_release);
    }
  }

  void loop(int index, uint64_t seen) {
    for (;;) {
      // Spin briefly (tens of microseconds) before sleeping: long enough for back-to-back kernels,
      // short enough not to starve torch's own OpenMP threads, which spin after their ops too.
      uint64_t gen = generation_.load(std::memory_order_acquire);
      for (int spin = 0; gen == seen && spin < 2048; ++spin) {
        BNB_CPU_RELAX();
        gen = generation_.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        gen = generation_.load(std::memory_order_acquire);
      }
      const FnRef<int>* job;
      int chunks;
      {
        // The generation, job and chunk count are published together under the mutex.
        std::lock_guard<std::mutex> lock(mutex_);
        seen = generation_.load(std::memory_order_acquire);
        job = job_;
        chunks = chunks_;
      }
      if (job && index < chunks) {
        (*job)(index);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  const int wanted_;
  std::atomic<int> started_{0};
  std::atomic<int64_t> last_try_{0};
  std::mutex busy_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const FnRef<int>* job_ = nullptr;
  int chunks_ = 0;
};

// The host process's OpenMP runtime (torch's libgomp, or an LLVM/Intel runtime with the GNU entry
// points), when one is loaded in the global scope: kernels then run as OpenMP parallel regions on
// the very threads torch's own ops use, instead of a second set of threads competing with them
// for the cores (torch's OpenMP workers keep spinning for a while after each op). Not used in a
// forked child (GNU OpenMP's threads do not survive fork) or with BNB_CPU_THREADS=pool.
struct HostOmp {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  long pid = 0;
};

// Looked up again on every call until found: a C ABI user may load its OpenMP runtime (import
// torch) after the library's first call.
const HostOmp* host_omp() {
#if defined(_WIN32)
  return nullptr;
#else
  static HostOmp h;
  static std::atomic<int> state{0};  // 0: not found yet, 1: found, -1: BNB_CPU_THREADS=pool
  int st = state.load(std::memory_order_acquire);
  if (st == 0) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    st = state.load(std::memory_order_relaxed);
    if (st == 0) {
      const char* mode = getenv("BNB_CPU_THREADS");
      if (mode != nullptr && strcmp(mode, "pool") == 0) {
        st = -1;
      } else {
        void* par = dlsym(RTLD_DEFAULT, "GOMP_parallel");
        if (par != nullptr) {
          h.parallel = reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(par);
          h.pid = static_cast<long>(getpid());
          st = 1;
        }
      }
      if (st != 0) state.store(st, std::memory_order_release);
    }
  }
  if (st != 1 || static_cast<long>(getpid()) != h.pid) return nullptr;
  return &h;
#endif
}

// One parallel_for call, its ranges handed out in order to whichever thread is free: first
// `threads` long ones of `big` elements, then small ones of `per` elements. Each thread's first
// range is one long sequential stream (the weight rows of a decoding GEMV, which the prefetchers
// follow from row to row: a decoding model's token takes 1-2 % less time than with four small
// ranges per thread), and the small ones keep a thread that starts late (descheduled, or still
// finishing something else) from costing more than a fraction of the call.
struct Chunks {
  const FnRef<int64_t, int64_t>* fn;
  int64_t n, big, per, threads;
  std::atomic<int64_t> next{0};

  void work() {
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      const int64_t begin = t < threads ? t * big : threads * big + (t - threads) * per;
      if (begin >= n) return;
      const int64_t end = begin + (t < threads ? big : per);
      (*fn)(begin, end < n ? end : n);
    }
  }
  static void omp_body(void* self) { static_cast<Chunks*>(self)->work(); }
};

}  // namespace

const char* threading_name() { return host_omp() ? "openmp" : "pool"; }

int pool_workers(int* wanted) {
  const Pool* pool = Pool::existing();
  if (wanted != nullptr) *wanted = pool != nullptr ? pool->wanted() : hardware_threads() - 1;
  return pool != nullptr ? pool->workers() : -1;
}

int requested_threads() {
  const int hw = hardware_threads();
  const int req = t_requested;
  return (req <= 0 || req > hw) ? hw : req;
}

void parallel_for(int64_t n, int64_t grain, FnRef<int64_t, int64_t> fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t units = (n + grain - 1) / grain;
  int64_t threads = requested_threads();
  if (threads > units) threads = units;
  const HostOmp* omp = threads > 1 ? host_omp() : nullptr;
  Pool* pool = nullptr;
  if (threads > 1 && omp == nullptr) {
    pool = Pool::get();
    if (pool != nullptr) pool->grow_if_short();
    const int most = pool != nullptr ? pool->workers() + 1 : 1;
    if (threads > most) threads = most;
  }
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  if (omp != nullptr) {
    // Seven eighths of an even share per thread as one range, the last eighth in four ranges per
    // thread, all taken dynamically (see Chunks).
    const int64_t big_units = 7 * units / (8 * threads);
    const int64_t rest = units - big_units * threads;
    const int64_t per_units = rest > 0 ? (rest + 4 * threads - 1) / (4 * threads) : 1;
    Chunks chunks;
    chunks.fn = &fn;
    chunks.n = n;
    chunks.big = big_units * grain;
    chunks.per = per_units * grain;
    chunks.threads = big_units > 0 ? threads : 0;  // too few units for long ranges: small ones only
    omp->parallel(&Chunks::omp_body, &chunks, static_cast<unsigned>(threads), 0);
    return;
  }
  const int64_t per = (units + threads - 1) / threads * grain;
  const int chunks = static_cast<int>((n + per - 1) / per);
  const auto job = [&](int c) {
    const int64_t begin = c * per;
    const int64_t end = begin + per < n ? begin + per : n;
    if (begin < end) fn(begin, end);
  };
  if (!pool->run(chunks, job)) fn(0, n);
}

}  // namespace bnb_cpu

extern "C" {

// CPU-only extension of the C ABI: threads the calling thread's kernels may use (<= 0: all).
BNB_API void bnb_cpu_set_num_threads(int32_t n) { bnb_cpu::t_requested = n; }
BNB_API int32_t bnb_cpu_get_num_threads(void) { return bnb_cpu::requested_threads(); }

}  // extern "C"
