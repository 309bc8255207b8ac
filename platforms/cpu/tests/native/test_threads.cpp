// Multi-threaded stress driver of libbitsandbytes_cpu through its C ABI alone (no Python, no
// torch), built with ThreadSanitizer by `nox -s tests-cpu-tsan` and meaningful without it: four
// caller threads run every kernel family at once (4-bit and block-wise 8-bit (de)quantization, the
// 4-bit matmul at batch 1, 3, 16 and 64, LLM.int8()'s quantization and matmuls, the 32-bit and 8-bit
// optimizers, the weight matmuls and their AMX forms) while another thread calls the process-wide
// setters (bnb_cpu_set_isa, bnb_cpu_set_amx) and the per-thread one (bnb_cpu_set_num_threads).
// Every result must be bit-identical to the same call made with no other thread running, so the
// driver fails on wrong answers as well as on TSan's reports.
//
// Phases, each in a process of its own where it matters:
//   cold    the callers and the setter thread start at once in a fresh process, so the library's
//           one-time initialisations (instruction set, AMX, thread pool, code-book tables) race
//           each other; run in forked children (each a fresh library) and in the main process;
//   fixed   the setter thread only writes the values already in force: results must equal those
//           of that configuration exactly;
//   chaos   the setter thread switches instruction set and AMX at random: each result must equal
//           that of one of the configurations (each call reads the configuration once).
//
// Before those, many short forked children race only the first settings calls against the first
// calls that initialise them (a setting made then must stick).
//
// Usage: test_threads [iterations per phase (default 4)] [forked cold starts (default 3)]
//                     [forked settings races (default 60)]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "thread_ops.h"

namespace {

constexpr int kCallers = 4;

std::mutex g_log;
std::atomic<int> g_failures{0};

void fail(const std::string& what) {
  const int n = g_failures.fetch_add(1) + 1;
  if (n <= 20) {
    std::lock_guard<std::mutex> lock(g_log);
    fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

// ---- references: every op run on one thread alone, per configuration and kernel thread count ----

struct Config {
  std::string isa;
  int amx;
};

struct References {
  std::vector<Config> configs;
  // results[c][threads - 1][op]
  std::vector<std::vector<std::vector<Bytes>>> results;
  size_t best = 0;  // the configuration "auto" with AMX on selects

  // True when `got` equals the result of configuration `c` (or of any, c < 0).
  bool matches(const Bytes& got, int threads, size_t op, int c) const {
    for (size_t i = 0; i < configs.size(); ++i) {
      if ((c < 0 || static_cast<size_t>(c) == i) && results[i][threads - 1][op] == got) return true;
    }
    return false;
  }
};

References compute_references(const Inputs& in, const std::vector<Op>& ops) {
  References r;
  for (const auto& isa : split(bnb_cpu_usable_isas())) {
    r.configs.push_back({isa, 1});
    if (isa == "avx512") r.configs.push_back({isa, 0});  // AMX runs only under the avx512 table
  }
  bnb_cpu_set_isa("auto");
  const std::string best = bnb_cpu_get_isa();
  for (size_t c = 0; c < r.configs.size(); ++c) {
    if (r.configs[c].isa == best && r.configs[c].amx == 1) r.best = c;
    if (bnb_cpu_set_isa(r.configs[c].isa.c_str()) != BNB_OK) fail("set_isa " + r.configs[c].isa);
    bnb_cpu_set_amx(r.configs[c].amx);
    r.results.emplace_back(2);
    for (int threads = 1; threads <= 2; ++threads) {
      bnb_cpu_set_num_threads(threads);
      for (const auto& op : ops) {
        Out o;
        op.run(in, o);
        r.results[c][threads - 1].push_back(std::move(o.b));
      }
    }
  }
  bnb_cpu_set_isa("auto");
  bnb_cpu_set_amx(1);
  bnb_cpu_set_num_threads(0);
  return r;
}

// ---- the threads ----

enum class Phase { kCold, kFixed, kChaos };

// Lets the threads of a phase make their first calls together (a cold start's initialisations
// then race each other instead of running one after the other as the threads start).
class Barrier {
 public:
  explicit Barrier(int n) : left_(n) {}
  void wait() {
    left_.fetch_sub(1);
    while (left_.load() > 0) {
      // Spin: a thread that yields starts late, and the first calls no longer overlap.
    }
  }

 private:
  std::atomic<int> left_;
};

const char* phase_name(Phase p) { return p == Phase::kCold ? "cold" : p == Phase::kFixed ? "fixed" : "chaos"; }

// A caller: `iterations` passes over every op, starting at a different op per caller, its kernel
// thread count alternating between 1 and 2. Checks its results as it goes (refs given) or keeps
// them (cold start: the references are computed after). Each pass also makes a bad call whose
// error message is this thread's own (bnb_last_error is per thread).
struct Kept {
  int threads;
  size_t op;
  Bytes bytes;
};

void caller(int t, const Inputs& in, const std::vector<Op>& ops, int iterations, Phase phase, const References* refs,
            std::vector<Kept>* kept, Barrier* start) {
  start->wait();
  for (int it = 0; it < iterations; ++it) {
    // What a binding asks first (the Python glue does at import): the string getters, then the
    // thread count.
    char info[1024];
    snprintf(info, sizeof(info), "%s %s %s %d", bnb_cpu_usable_isas(), bnb_cpu_get_isa(), bnb_build_info(),
             bnb_cpu_amx_usable());
    const int threads = 1 + (t + it) % 2;
    bnb_cpu_set_num_threads(threads);
    if (bnb_cpu_get_num_threads() != threads) fail("get_num_threads after set_num_threads");
    for (size_t j = 0; j < ops.size(); ++j) {
      const size_t op = (j + static_cast<size_t>(t) * ops.size() / kCallers) % ops.size();
      Out o;
      ops[op].run(in, o);
      if (refs == nullptr) {
        kept->push_back({threads, op, std::move(o.b)});
      } else if (!refs->matches(o.b, threads, op, phase == Phase::kFixed ? static_cast<int>(refs->best) : -1)) {
        fail(std::string(phase_name(phase)) + " phase, caller " + std::to_string(t) + ", pass " + std::to_string(it) +
             ", " + std::to_string(threads) + " kernel thread(s): " + ops[op].name +
             " differs from the single-threaded run");
      }
      if (j == ops.size() / 2) {
        const int64_t bad = 1001 + 20 * t + 2 * (it % 10);  // odd: refused, its value in the message
        std::vector<uint8_t> packed(8);
        float absmax[1];
        if (bnb_quantize_4bit(in.x.data(), BNB_DTYPE_F32, 16, bad, BNB_QUANT_NF4, packed.data(), absmax, nullptr) !=
                BNB_ERR_INVALID_BLOCKSIZE ||
            strstr(bnb_last_error(), std::to_string(bad).c_str()) == nullptr) {
          fail("caller " + std::to_string(t) + ": bnb_last_error is not this thread's own: " + bnb_last_error());
        }
      }
    }
  }
}

// The setter thread: process-wide settings changed (cold, chaos) or rewritten unchanged (fixed)
// while the callers run; as the only thread that sets them, it must read back what it wrote
// ("auto" reads back as `best`).
void setter(const std::vector<std::string>& isas, const std::string& best, Phase phase, const std::atomic<bool>& stop,
            Barrier* start) {
  start->wait();
  std::mt19937 rng(99);
  char buf[512];
  for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) {
    // A cold start begins with what the library would not pick itself (the scalar table, AMX off),
    // so that a first-use initialisation overwriting it shows.
    const bool first_cold = phase == Phase::kCold && i == 0;
    const std::string isa = phase == Phase::kFixed ? best : first_cold ? isas.front() : isas[rng() % isas.size()];
    const int amx = phase == Phase::kFixed ? 1 : first_cold ? 0 : static_cast<int>(rng() % 2);
    if (bnb_cpu_set_isa(isa.c_str()) != BNB_OK) fail("set_isa " + isa);
    bnb_cpu_set_amx(amx);
    const std::string expect = isa == "auto" ? best : isa;
    if (expect != bnb_cpu_get_isa()) {
      fail(std::string(phase_name(phase)) + ": set_isa(" + isa + ") then get_isa gave " + bnb_cpu_get_isa());
    }
    if (bnb_cpu_amx_usable() && expect != "avx512") fail("AMX usable under the " + expect + " table");
    if (bnb_cpu_amx_usable() && !amx) fail("AMX usable after set_amx(0)");
    bnb_cpu_set_num_threads(1 + i % 3);
    (void)bnb_cpu_get_num_threads();
    (void)bnb_cpu_amx_int8_usable();
    // The string getters: a copy, so that TSan sees their buffers read.
    snprintf(buf, sizeof(buf), "%s %s", bnb_cpu_usable_isas(), bnb_build_info());
    std::this_thread::sleep_for(std::chrono::microseconds(phase == Phase::kCold ? 20 : 300));
  }
}

// Runs one phase: the callers and the setter thread at once.
void run_phase(Phase phase, const Inputs& in, const std::vector<Op>& ops, int iterations, const References* refs,
               const std::vector<std::string>& isas, const std::string& best, std::vector<std::vector<Kept>>* kept) {
  std::atomic<bool> stop{false};
  Barrier start(kCallers + 1);
  std::thread set(setter, std::cref(isas), std::cref(best), phase, std::cref(stop), &start);
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back(caller, t, std::cref(in), std::cref(ops), iterations, phase, refs,
                         kept ? &(*kept)[t] : nullptr, &start);
  }
  for (auto& c : callers) c.join();
  stop = true;
  set.join();
}

// A cold start: the phase first, the references after; returns its failures.
int cold_start(const Inputs& in, const std::vector<Op>& ops, References* out_refs) {
  const int before = g_failures.load();
  // The instruction sets known without asking the library (the setter's set_isa refuses the others
  // with an error that is checked, so list only what the CPU has: ask __builtin_cpu_supports).
  std::vector<std::string> isas = {"scalar"};
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    isas.push_back("avx2");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni"))
    isas.push_back("avx512");
#elif defined(__aarch64__)
  isas.push_back("neon");
#endif
  std::vector<std::vector<Kept>> kept(kCallers);
  run_phase(Phase::kCold, in, ops, 1, nullptr, isas, "", &kept);
  if (split(bnb_cpu_usable_isas()) != isas) fail("bnb_cpu_usable_isas() is not " + isas.back() + " and below");
  References refs = compute_references(in, ops);
  for (int t = 0; t < kCallers; ++t) {
    for (const Kept& k : kept[t]) {
      if (!refs.matches(k.bytes, k.threads, k.op, -1)) {
        fail("cold start, caller " + std::to_string(t) + ": " + ops[k.op].name +
             " differs from every single-threaded run");
      }
    }
  }
  if (out_refs) *out_refs = std::move(refs);
  return g_failures.load() - before;
}

// A fresh process whose first calls race each other: one thread sets the instruction set to one
// the library would not pick itself (`isa`), or turns AMX off (`isa` empty), while the others make
// the first calls that initialise that setting (and the list of usable sets). The setting must
// stick. Returns the failures.
int settings_race(const std::string& isa) {
  std::atomic<int> failures{0};
  Barrier start(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      start.wait();
      if (t == 0 && !isa.empty()) {
        bnb_cpu_set_isa(isa.c_str());
        if (isa != bnb_cpu_get_isa()) failures += 1;
      } else if (t == 0) {
        (void)bnb_cpu_get_isa();  // as long as the others take to reach the AMX setting's first use
        bnb_cpu_set_amx(0);
        if (bnb_cpu_amx_usable()) failures += 1;
      } else if (t == 1) {
        // The first use of the instruction set (and of the AMX setting, under the avx512 table).
        if (bnb_cpu_amx_usable() < 0) failures += 1;
      } else if (t == 2) {
        if (bnb_cpu_get_isa() == nullptr || bnb_cpu_amx_usable() < 0) failures += 1;
      } else {
        if (bnb_cpu_usable_isas()[0] == '\0') failures += 1;
      }
    });
  }
  for (auto& t : threads) t.join();
  if (!isa.empty() && isa != bnb_cpu_get_isa()) {
    fail("settings race: set_isa(\"" + isa + "\") was undone: the active set is " + bnb_cpu_get_isa());
    failures += 1;
  }
  if (isa.empty() && bnb_cpu_amx_usable()) {
    fail("settings race: set_amx(0) was undone");
    failures += 1;
  }
  return failures.load();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? atoi(argv[1]) : 4;
  const int forks = argc > 2 ? atoi(argv[2]) : 3;
  const int settings_forks = argc > 3 ? atoi(argv[3]) : 60;
  const auto t0 = std::chrono::steady_clock::now();
  const Inputs in;
  const std::vector<Op> ops = make_ops();
  // Fresh processes first, while this one has neither called the library nor started a thread.
  std::string other = "scalar";  // an instruction set "auto" would not pick (where there is one)
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2")) other = "";
#endif
  int lost = 0, status = 0;
  for (int f = 0; f < settings_forks; ++f) {
    const std::string isa = f % 2 ? "" : other;  // every other one races AMX off
    if ((f % 2 || !other.empty()) &&
        (status = in_child([&](std::string*) { return settings_race(isa) ? 1 : 0; }, nullptr)) != 0) {
      ++lost;
      printf("settings race %d (forked): FAILED, exit status %d\n", f + 1, status);
    }
  }
  if (lost) g_failures.fetch_add(1);
  printf("settings races (%d forked): %s (%.1f s)\n", settings_forks, lost ? "FAILED" : "ok", seconds_since(t0));
  for (int f = 0; f < forks; ++f) {
    status = in_child([&](std::string*) { return cold_start(in, ops, nullptr) ? 1 : 0; }, nullptr);
    const bool ok = status == 0;
    if (!ok) g_failures.fetch_add(1);
    printf("cold start %d (forked): %s, exit status %d (%.1f s)\n", f + 1, ok ? "ok" : "FAILED", status,
           seconds_since(t0));
  }
  References refs;
  cold_start(in, ops, &refs);
  printf("cold start: %s (%.1f s)\n%s\n", g_failures.load() ? "FAILED" : "ok", seconds_since(t0), bnb_build_info());
  std::vector<std::string> isas;
  for (const auto& c : refs.configs) {
    if (std::find(isas.begin(), isas.end(), c.isa) == isas.end()) isas.push_back(c.isa);
  }
  isas.push_back("auto");
  const std::string best = refs.configs[refs.best].isa;
  run_phase(Phase::kFixed, in, ops, iterations, &refs, isas, best, nullptr);
  printf("fixed (%s, AMX %s): %s (%.1f s)\n", best.c_str(), bnb_cpu_amx_usable() ? "on" : "off",
         g_failures.load() ? "FAILED" : "ok", seconds_since(t0));
  run_phase(Phase::kChaos, in, ops, iterations, &refs, isas, best, nullptr);
  printf("chaos (%zu configurations): %s (%.1f s)\n", refs.configs.size(), g_failures.load() ? "FAILED" : "ok",
         seconds_since(t0));
  printf("%zu ops x %d callers, %d failure(s)\n", ops.size(), kCallers, g_failures.load());
  return g_failures.load() ? 1 : 0;
}
