// Parallel loops of the kernels: on the host process's OpenMP runtime when one is loaded (torch's),
// so that the kernels share torch's threads instead of competing with them; otherwise on a small
// persistent thread pool of the library's own (the library does not link an OpenMP runtime).
//
// The number of threads a call may use is per calling thread (bnb_cpu_set_num_threads, which the
// Python glue sets from torch.get_num_threads() before each kernel). A call made while the pool is
// busy (from another thread, or nested) runs on the calling thread alone: never oversubscribed.
#pragma once

#include <stdint.h>

namespace bnb_cpu {

// A callable taken by reference for the length of one call: never copied, never allocating. (A
// std::function allocates for a lambda of more than two captures, and a failed allocation would
// then leave a C entry point as an exception.)
template <typename... Args>
class FnRef {
 public:
  template <typename F>
  FnRef(const F& f)  // NOLINT(google-explicit-constructor): lambdas convert where a FnRef is taken
      : obj_(&f), call_([](const void* o, Args... a) { (*static_cast<const F*>(o))(a...); }) {}
  void operator()(Args... a) const { call_(obj_, a...); }

 private:
  const void* obj_;
  void (*call_)(const void*, Args...);
};

// "openmp" (the host runtime runs the parallel loops) or "pool" (the library's own threads).
const char* threading_name();

// Worker threads of the library's pool running now, or -1 before a call has started the pool;
// *wanted (if not NULL) gets the number it starts (one fewer than the hardware threads). A pool
// the system refused some threads grows back at most once a second, on a parallel call.
int pool_workers(int* wanted);

// Threads the calling thread's kernels may use (>= 1).
int requested_threads();

// Calls fn(begin, end) on disjoint ranges covering [0, n); every range except the last starts and
// ends on a multiple of `grain`. Runs inline when one thread suffices. Which thread runs which
// range varies from call to call; the ranges themselves depend only on n, grain and the thread
// count. Never throws, and allocates nothing but the thread pool and its threads: on first use,
// and, where some threads could not be started, again at most once a second until they are.
// Meanwhile the loop runs on the threads that could start, or on the caller alone.
void parallel_for(int64_t n, int64_t grain, FnRef<int64_t, int64_t> fn);

}  // namespace bnb_cpu
