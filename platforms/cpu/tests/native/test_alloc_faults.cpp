// Allocation failures, one site at a time, through the C ABI alone. Needs a library built with
// BNB_FAULT_INJECTION (the native test drivers' builds, src/fault_injection.h): it can make the
// nth allocation site reached fail as if the memory could not be had.
//
// For every op of thread_ops.h and a few larger ones that reach the library's code-book indexes,
// on each instruction set the CPU runs, each run in a freshly forked process (cold caches, no thread
// pool yet):
//   reference  the op with nothing armed;
//   nth = 0, 1, ...  the op with its nth allocation site made to fail, until it reaches fewer than
//              nth + 1 sites. Every call must then give the reference's status or
//              BNB_ERR_OUT_OF_MEMORY with a "cannot allocate" message; where none failed, the
//              reference's bytes (the site had a fallback: fewer threads, no index). Run again in
//              the same process with nothing armed, the op must give the reference's bytes: no
//              cache may keep a failed state. A crash, an exception or a leak (under ASan) fails.
// Every site the library lists (bnb_cpu_test_allocation_sites) that this machine reaches must have
// failed at least once (reachable: per instruction set and thread count), or the sweep fails.
//
// Usage: test_alloc_faults
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "cpu_extras.h"
#include "fault_injection.h"
#include "thread_ops.h"

namespace {

int g_failures = 0;

void fail(const std::string& what) {
  if (++g_failures <= 30) fprintf(stderr, "FAIL: %s\n", what.c_str());
}

// ---- a forked child's result, carried back through in_child's pipe ----

void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), sizeof(v)); }

uint32_t get_u32(const std::string& s, size_t& at) {
  uint32_t v = 0;
  if (at + sizeof(v) <= s.size()) memcpy(&v, s.data() + at, sizeof(v));
  at += sizeof(v);
  return v;
}

// ---- the ops: thread_ops.h's, and larger ones over the code-book indexes ----

std::vector<Op> all_ops() {
  std::vector<Op> ops = make_ops();
  // 2^16 + 33 elements: past the size from which the AVX2 block-wise quantizer builds (and caches)
  // its bucket index of the code book.
  ops.push_back({"quantize_blockwise f32 n=65569", [](const Inputs& in, Out& o) {
                   std::vector<float> x(65569);
                   for (size_t i = 0; i < x.size(); ++i) x[i] = in.x[i % in.x.size()] * (1.0f + (i % 7) * 0.01f);
                   std::vector<uint8_t> q(x.size());
                   std::vector<float> absmax(x.size() / 256 + 1);
                   o.status(bnb_quantize_blockwise(x.data(), BNB_DTYPE_F32, in.code.data(),
                                                   static_cast<int64_t>(x.size()), 256, q.data(), absmax.data(),
                                                   nullptr));
                   o.put(q);
                   o.put(absmax);
                 }});
  return ops;
}

// Whether the ops reach `site` (a name of bnb_cpu_test_allocation_sites) on instruction set `isa`
// of this machine; *known false for a site this driver does not know.
bool reachable(const std::string& site, const std::string& isa, bool* known) {
  *known = true;
  if (site == "scratch" || site == "optimizer code table" || site == "trust-ratio sums") return true;
  if (site == "thread pool" || site == "pool thread") return std::thread::hardware_concurrency() > 1;
  if (site == "bucket table" || site == "bucket table index") return isa == "avx2";  // the AVX2 quantizer's
  if (site == "optimizer key table") return isa == "avx512";  // the AVX-512 optimizer's state codes
  *known = false;
  return false;
}

std::string encode(const Out& o) {
  std::string s;
  put_u32(s, static_cast<uint32_t>(o.statuses.size()));
  for (const int32_t st : o.statuses) put_u32(s, static_cast<uint32_t>(st));
  s.append(reinterpret_cast<const char*>(o.b.data()), o.b.size());
  return s;
}

Out decode(const std::string& s) {
  Out o;
  size_t at = 0;
  const uint32_t count = get_u32(s, at);
  for (uint32_t i = 0; i < count; ++i) o.statuses.push_back(static_cast<int32_t>(get_u32(s, at)));
  if (at <= s.size()) o.b.assign(s.begin() + static_cast<std::ptrdiff_t>(at), s.end());
  return o;
}

// What a run with its nth site failing gave, checked against the reference: "" (no site reached),
// or the failed site's name, then a tab and every problem found.
std::string faulted_run(const Op& op, const Inputs& in, const Out& ref, int64_t nth) {
  bnb_cpu_test_fail_allocation(nth);
  Out o;
  op.run(in, o);
  const char* site = bnb_cpu_test_failed_site();
  bnb_cpu_test_fail_allocation(-1);
  if (site == nullptr) return "";
  std::string problems;
  bool refused = false;
  if (o.statuses.size() != ref.statuses.size()) problems += " [the calls' count differs]";
  for (size_t i = 0; i < o.statuses.size() && i < ref.statuses.size(); ++i) {
    if (o.statuses[i] == BNB_ERR_OUT_OF_MEMORY && ref.statuses[i] == BNB_OK) {
      refused = true;
    } else if (o.statuses[i] != ref.statuses[i]) {
      problems += " [call " + std::to_string(i) + " gave status " + std::to_string(o.statuses[i]) + "]";
    }
  }
  for (size_t i = 0; i < o.statuses.size() && i < ref.statuses.size(); ++i) {
    if (o.statuses[i] == BNB_ERR_OUT_OF_MEMORY && ref.statuses[i] == BNB_OK &&
        o.errors[i].find("cannot allocate") == std::string::npos) {
      problems += " [call " + std::to_string(i) + "'s out-of-memory message '" + o.errors[i] + "']";
    }
  }
  if (!refused && o.b != ref.b) problems += " [no call refused, but the outputs differ from the reference]";
  Out again;
  op.run(in, again);
  if (again.b != ref.b) problems += " [run again with nothing armed, the outputs differ from the reference]";
  return std::string(site) + "\t" + problems;
}

}  // namespace

// The library's pool threads running now (-1: no pool yet) and wanted, from bnb_build_info.
int pool_field(const char* name) {
  const std::string info = bnb_build_info(), key = std::string("\"") + name + "\": ";
  const size_t at = info.find(key);
  if (at == std::string::npos) return -2;
  return info.compare(at + key.size(), 4, "null") == 0 ? -1 : atoi(info.c_str() + at + key.size());
}

// A pool whose first thread the system refused runs short (the loops on the caller), is not
// retried within the second, and grows back to its size on a call after it; the results are the
// same bits throughout. In a forked child: no pool yet, and no OpenMP runtime in this driver.
void pool_grows_back() {
  if (std::thread::hardware_concurrency() < 2) return;
  std::string report;
  const int status = in_child(
      [](std::string* out) {
        std::vector<float> code(256), absmax(1024, 0.5f);
        for (int i = 0; i < 256; ++i) code[i] = (i - 127.5f) / 128.0f;
        std::vector<uint8_t> q(1 << 18);
        for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>(i * 2654435761u >> 24);
        const auto run = [&] {
          std::vector<float> y(q.size());
          const int32_t st = bnb_dequantize_blockwise(q.data(), code.data(), absmax.data(),
                                                      static_cast<int64_t>(q.size()), 256, y.data(), 0, nullptr);
          return st == BNB_OK ? y : std::vector<float>();
        };
        bnb_cpu_set_num_threads(1);
        const std::vector<float> ref = run();
        bnb_cpu_set_num_threads(2);
        const int wanted = pool_field("pool_workers_wanted");
        std::string& r = *out;
        if (pool_field("pool_workers") != -1) r += " [a pool before the first parallel call]";
        bnb_cpu_test_fail_allocation(1);  // 0: the pool, 1: its first thread
        const auto t0 = std::chrono::steady_clock::now();
        const bool first = run() == ref;
        const char* site = bnb_cpu_test_failed_site();
        bnb_cpu_test_fail_allocation(-1);
        if (site == nullptr || strcmp(site, "pool thread") != 0) r += " [the first thread's start did not fail]";
        if (!first) r += " [the short pool's call differs]";
        if (pool_field("pool_workers") != 0)
          r += " [the short pool holds " + std::to_string(pool_field("pool_workers")) + " threads]";
        const bool again = run() == ref;
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!again) r += " [a second call differs]";
        if (waited < 0.5 && pool_field("pool_workers") != 0) r += " [the pool grew within the retry interval]";
        std::this_thread::sleep_for(std::chrono::milliseconds(1100));
        const bool grown = run() == ref;
        if (!grown) r += " [the call that grows the pool differs]";
        if (pool_field("pool_workers") != wanted)
          r += " [after the interval the pool holds " + std::to_string(pool_field("pool_workers")) + " of " +
               std::to_string(wanted) + " threads]";
        if (run() != ref) r += " [a call on the grown pool differs]";
        return 0;
      },
      &report);
  if (status != 0) fail("pool_grows_back: the child crashed or leaked (exit status " + std::to_string(status) + ")");
  if (!report.empty()) fail("pool_grows_back:" + report);
}

int main() {
  printf("%s\nusable: %s\n", bnb_build_info(), bnb_cpu_usable_isas());
  const Inputs in;
  const std::vector<Op> ops = all_ops();
  std::vector<std::string> isas = split(bnb_cpu_usable_isas());
  const std::vector<std::string> sites = split(bnb_cpu_test_allocation_sites());
  std::set<std::string> expected, failed;
  int runs = 0;
  for (const std::string& isa : isas) {
    for (const std::string& s : sites) {
      bool known = false;
      if (reachable(s, isa, &known)) expected.insert(s);
      if (!known) fail("the allocation site '" + s + "' is not known to this driver (reachable)");
    }
    for (const Op& op : ops) {
      const std::string where = "[" + isa + "] " + op.name;
      std::string bytes;
      const bool ok = in_child(
                          [&](std::string* out) {
                            Out o;
                            if (bnb_cpu_set_isa(isa.c_str()) == BNB_OK) op.run(in, o);
                            *out = encode(o);
                            return 0;
                          },
                          &bytes) == 0;
      const Out ref = decode(bytes);
      if (!ok || ref.statuses.empty()) {
        fail(where + ": the reference run did not complete");
        continue;
      }
      for (int64_t nth = 0;; ++nth) {
        if (nth == 64) {
          fail(where + ": more than 64 allocation sites reached");
          break;
        }
        std::string got;
        const int status = in_child(
            [&](std::string* out) {
              bnb_cpu_set_isa(isa.c_str());
              *out = faulted_run(op, in, ref, nth);
              return 0;
            },
            &got);
        ++runs;
        if (status != 0) {
          fail(where + ", allocation " + std::to_string(nth) + " failing: the process crashed or leaked (exit status " +
               std::to_string(status) + ")");
          break;
        }
        if (got.empty()) break;
        const size_t tab = got.find('\t');
        const std::string site = got.substr(0, tab), problems = got.substr(tab + 1);
        failed.insert(site);
        if (!problems.empty())
          fail(where + ", site '" + site + "' (allocation " + std::to_string(nth) + ")" + problems);
      }
    }
  }
  pool_grows_back();
  for (const std::string& s : expected) {
    if (!failed.count(s)) fail("the allocation site '" + s + "' was never reached: no op tests its failure");
  }
  for (const std::string& s : failed) {
    if (!expected.count(s)) fail("the allocation site '" + s + "' failed where this driver holds it unreachable");
  }
  for (const std::string& s : sites) {
    if (!expected.count(s)) printf("not reachable on this machine: %s\n", s.c_str());
  }
  printf("%d faulted runs over %zu ops on %zu instruction sets, %zu sites failed: %d failures\n", runs, ops.size(),
         isas.size(), failed.size(), g_failures);
  return g_failures == 0 ? 0 : 1;
}
