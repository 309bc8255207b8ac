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
#include <sys/wait.h>
#include <unistd.h>

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

extern "C" {
const char* bnb_cpu_get_isa(void);
int32_t bnb_cpu_set_isa(const char* name);
const char* bnb_cpu_usable_isas(void);
void bnb_cpu_set_num_threads(int32_t n);
int32_t bnb_cpu_get_num_threads(void);
int32_t bnb_cpu_amx_usable(void);
int32_t bnb_cpu_amx_int8_usable(void);
void bnb_cpu_set_amx(int32_t on);
int32_t bnb_cpu_int8_weight_matmul(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                   const float* SCB, const void* bias, int32_t bias_dtype, void* out);
int32_t bnb_cpu_int8_expand(const int8_t* src, int64_t n, void* out, int32_t dtype);
int32_t bnb_cpu_weight_matmul_t(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                int64_t blocksize, void* out);
int32_t bnb_cpu_int8_linear_matmul_gather(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                                          const int64_t* cols, int64_t ncols, int8_t* Bcols);
int32_t bnb_cpu_weight_matmul_amx(const void* A, int64_t m, int64_t n, int64_t k, const int8_t* CB, const float* SCB,
                                  const uint8_t* B4, const float* absmax, int32_t quant_type, int64_t blocksize,
                                  const void* bias, int32_t bias_dtype, void* out);
int32_t bnb_cpu_weight_matmul_t_amx(const void* G, int64_t m, int64_t n, int64_t k, const int8_t* CB, const float* SCB,
                                    const uint8_t* B4, const float* absmax, int32_t quant_type, int64_t blocksize,
                                    void* out);
}

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

// ---- inputs: made without calling the library, so that a cold start's first calls are the callers' ----

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  for (size_t i = 3; i < n; i += 17) v[i] = 0.0f;
  return v;
}

std::vector<uint16_t> to16(const std::vector<float>& v, int32_t dtype) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    o[i] = dtype == BNB_DTYPE_BF16 ? bnb::float_to_bf16(v[i]) : bnb::float_to_half(v[i]);
  return o;
}

template <typename T>
std::vector<T> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(rng() & 0xff);
  return v;
}

std::vector<float> positive(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(0.05f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A sorted 256-entry code book; `shape` varies the curve (distinct shapes: distinct cached tables).
std::vector<float> code_book(int shape) {
  std::vector<float> c(256);
  for (int i = 0; i < 256; ++i) {
    const float t = (i - 127.5f) / 127.5f;
    c[i] = shape == 0 ? t * t * t : (shape % 2 ? t : t * (1.0f + 0.1f * shape * t * t) / (1.0f + 0.1f * shape));
  }
  return c;
}

struct Inputs {
  // (De)quantization: n elements, a partial last block.
  int64_t n = 2 * 4096 + 77;
  std::vector<float> x = randn(n, 1, 2.0f);
  std::vector<uint16_t> xb = to16(x, BNB_DTYPE_BF16), xh = to16(x, BNB_DTYPE_F16);
  std::vector<float> code = code_book(0), code_lin = code_book(1);
  std::vector<uint8_t> packed = random_bytes<uint8_t>((n + 1) / 2, 2), q8 = random_bytes<uint8_t>(n, 3);
  std::vector<float> absmax = positive(n / 32 + 1, 4);
  // The 4-bit matmul and the weight matmuls: W [wn, wk] (4-bit or int8), A up to 64 rows.
  int64_t wn = 512, wk = 256, bs = 64;
  std::vector<uint8_t> W4 = random_bytes<uint8_t>(wn * wk / 2, 5);
  std::vector<float> W4absmax = positive(wn * wk / bs, 6);
  std::vector<float> nf4 = BNB_NF4_TABLE;
  std::vector<float> A = randn(64 * wk, 7), G = randn(64 * wn, 8, 0.5f), bias = randn(wn, 9);
  std::vector<uint16_t> Ab = to16(A, BNB_DTYPE_BF16), Ah = to16(A, BNB_DTYPE_F16), Gb = to16(G, BNB_DTYPE_BF16);
  std::vector<int8_t> CB = random_bytes<int8_t>(wn * wk, 10), I8 = random_bytes<int8_t>(64 * wk, 11);
  std::vector<float> SCB = positive(wn, 12), row_stats = positive(64, 13), col_stats = positive(wn, 14);
  std::vector<int32_t> C32;
  std::vector<int64_t> cols = {0, 5, 77, 255};
  // Optimizers: past one 32-bit range (65536) and several 8-bit ones (64 blocks of 256).
  int64_t on32 = 140000, on8 = 40000;
  std::vector<float> p = randn(on32, 15), g = randn(on32, 16, 0.1f);
  std::vector<uint16_t> pb = to16(p, BNB_DTYPE_BF16), gb = to16(g, BNB_DTYPE_BF16);
  std::vector<float> s1 = positive(on32, 17), s2 = positive(on32, 18);
  std::vector<uint8_t> q1 = random_bytes<uint8_t>(on8, 19), q2 = random_bytes<uint8_t>(on8, 20);
  std::vector<float> a1 = positive(on8 / 256 + 1, 21), a2 = positive(on8 / 256 + 1, 22);
  // Three pairs of state code books: six tables, more than the optimizer's cache holds (4).
  std::vector<std::vector<float>> qmaps = {code_book(0), code_book(2), code_book(3),
                                           code_book(4), code_book(5), code_book(6)};

  Inputs() {
    std::mt19937 rng(23);
    C32.resize(64 * wn);
    for (auto& v : C32) v = static_cast<int32_t>(rng() % 200001) - 100000;
    for (auto& v : qmaps[1]) v = v < 0 ? -v * v : v * v;                    // still sorted (odd map of a sorted one)
    for (size_t i = 0; i < qmaps[3].size(); ++i) qmaps[3][i] = i / 255.0f;  // unsigned state
  }
};

// ---- the calls: each returns every status and output byte it produced ----

using Bytes = std::vector<uint8_t>;

struct Out {
  Bytes b;
  void put(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  template <typename T>
  void put(const std::vector<T>& v) {
    put(v.data(), v.size() * sizeof(T));
  }
  void status(int32_t s) { put(&s, sizeof(s)); }
};

struct Op {
  std::string name;
  std::function<void(const Inputs&, Out&)> run;
};

// One library call per op: a call reads the process-wide configuration once, so in the chaos phase
// its result is that of one configuration (two calls could each see another one).
std::vector<Op> make_ops() {
  std::vector<Op> ops;
  auto add = [&](std::string name, std::function<void(const Inputs&, Out&)> run) {
    ops.push_back({std::move(name), std::move(run)});
  };
  // 4-bit and block-wise 8-bit (de)quantization.
  add("quantize_4bit nf4 f32", [](const Inputs& in, Out& o) {
    std::vector<uint8_t> packed((in.n + 1) / 2);
    std::vector<float> absmax(in.n / 64 + 1);
    o.status(
        bnb_quantize_4bit(in.x.data(), BNB_DTYPE_F32, in.n, 64, BNB_QUANT_NF4, packed.data(), absmax.data(), nullptr));
    o.put(packed);
    o.put(absmax);
  });
  add("quantize_4bit fp4 bf16", [](const Inputs& in, Out& o) {
    std::vector<uint8_t> packed((in.n + 1) / 2);
    std::vector<float> absmax(in.n / 128 + 1);
    o.status(bnb_quantize_4bit(in.xb.data(), BNB_DTYPE_BF16, in.n, 128, BNB_QUANT_FP4, packed.data(), absmax.data(),
                               nullptr));
    o.put(packed);
    o.put(absmax);
  });
  add("dequantize_4bit nf4 f32", [](const Inputs& in, Out& o) {
    std::vector<float> out(in.n);
    o.status(bnb_dequantize_4bit(in.packed.data(), in.absmax.data(), in.n, 64, BNB_QUANT_NF4, out.data(), BNB_DTYPE_F32,
                                 nullptr));
    o.put(out);
  });
  add("dequantize_4bit fp4 bf16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(in.n);
    o.status(bnb_dequantize_4bit(in.packed.data(), in.absmax.data(), in.n, 256, BNB_QUANT_FP4, out.data(),
                                 BNB_DTYPE_BF16, nullptr));
    o.put(out);
  });
  add("quantize_blockwise f32", [](const Inputs& in, Out& o) {
    std::vector<uint8_t> q(in.n);
    std::vector<float> absmax(in.n / 256 + 1);
    o.status(bnb_quantize_blockwise(in.x.data(), BNB_DTYPE_F32, in.code.data(), in.n, 256, q.data(), absmax.data(),
                                    nullptr));
    o.put(q);
    o.put(absmax);
  });
  add("quantize_blockwise f16 blocksize 100", [](const Inputs& in, Out& o) {
    std::vector<uint8_t> q(in.n);
    std::vector<float> absmax(in.n / 100 + 1);
    o.status(bnb_quantize_blockwise(in.xh.data(), BNB_DTYPE_F16, in.code_lin.data(), in.n, 100, q.data(), absmax.data(),
                                    nullptr));
    o.put(q);
    o.put(absmax);
  });
  add("dequantize_blockwise f32", [](const Inputs& in, Out& o) {
    std::vector<float> out(in.n);
    o.status(bnb_dequantize_blockwise(in.q8.data(), in.code.data(), in.absmax.data(), in.n, 256, out.data(),
                                      BNB_DTYPE_F32, nullptr));
    o.put(out);
  });
  add("dequantize_blockwise bf16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(in.n);
    o.status(bnb_dequantize_blockwise(in.q8.data(), in.code.data(), in.absmax.data(), in.n, 64, out.data(),
                                      BNB_DTYPE_BF16, nullptr));
    o.put(out);
  });
  // The 4-bit matmul: batch 1 (GEMV: fixed-point and bf16 paths), 3, 16 and 64 (tiled paths over A
  // prepared once per call).
  struct GemmCase {
    int64_t m;
    int32_t dtype;
    bool bias;
  };
  for (const GemmCase c :
       {GemmCase{1, BNB_DTYPE_F32, false}, GemmCase{1, BNB_DTYPE_BF16, true}, GemmCase{3, BNB_DTYPE_F16, false},
        GemmCase{16, BNB_DTYPE_BF16, false}, GemmCase{64, BNB_DTYPE_F32, true}}) {
    add("gemm_4bit m=" + std::to_string(c.m) + " dtype " + std::to_string(c.dtype), [c](const Inputs& in, Out& o) {
      const void* A = c.dtype == BNB_DTYPE_F32    ? static_cast<const void*>(in.A.data())
                      : c.dtype == BNB_DTYPE_BF16 ? static_cast<const void*>(in.Ab.data())
                                                  : static_cast<const void*>(in.Ah.data());
      const std::vector<uint16_t> bias16 = to16(in.bias, c.dtype == BNB_DTYPE_F32 ? BNB_DTYPE_BF16 : c.dtype);
      const void* bias = !c.bias                    ? nullptr
                         : c.dtype == BNB_DTYPE_F32 ? static_cast<const void*>(in.bias.data())
                                                    : static_cast<const void*>(bias16.data());
      Bytes out(c.m * in.wn * (c.dtype == BNB_DTYPE_F32 ? 4 : 2));
      o.status(bnb_gemm_4bit(A, c.dtype, c.m, in.wn, in.wk, in.W4.data(), in.W4absmax.data(), in.nf4.data(), in.bs,
                             bias, out.data(), nullptr));
      o.put(out);
    });
  }
  // LLM.int8(): quantization (with and without outlier columns), the int8 GEMM (VNNI at 3 rows, the
  // AMX-INT8 tile path from 8 rows with k a multiple of 64) with its column gather, and dequant.
  add("int8_vectorwise_quant bf16", [](const Inputs& in, Out& o) {
    std::vector<int8_t> q(32 * 256);
    std::vector<float> stats(32);
    o.status(bnb_int8_vectorwise_quant(in.Ab.data(), BNB_DTYPE_BF16, 32, 256, 0.0f, q.data(), stats.data(), nullptr,
                                       nullptr));
    o.put(q);
    o.put(stats);
  });
  add("int8_vectorwise_quant f32 outliers", [](const Inputs& in, Out& o) {
    std::vector<int8_t> q(32 * 256);
    std::vector<float> stats(32);
    std::vector<uint8_t> ocols(256);
    o.status(bnb_int8_vectorwise_quant(in.A.data(), BNB_DTYPE_F32, 32, 256, 2.5f, q.data(), stats.data(), ocols.data(),
                                       nullptr));
    o.put(q);
    o.put(stats);
    o.put(ocols);
  });
  add("int8_linear_matmul m=3", [](const Inputs& in, Out& o) {
    std::vector<int32_t> C(3 * in.wn);
    o.status(bnb_int8_linear_matmul(in.I8.data(), in.CB.data(), 3, in.wn, in.wk, C.data(), nullptr));
    o.put(C);
  });
  add("int8_linear_matmul_gather m=16", [](const Inputs& in, Out& o) {
    std::vector<int32_t> C(16 * in.wn);
    std::vector<int8_t> Bcols(in.wn * in.cols.size());
    o.status(bnb_cpu_int8_linear_matmul_gather(in.I8.data(), in.CB.data(), 16, in.wn, in.wk, C.data(), in.cols.data(),
                                               static_cast<int64_t>(in.cols.size()), Bcols.data()));
    o.put(C);
    o.put(Bcols);
  });
  add("int8_mm_dequant", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(64 * in.wn);
    const std::vector<uint16_t> bias16 = to16(in.bias, BNB_DTYPE_BF16);
    o.status(bnb_int8_mm_dequant(in.C32.data(), in.row_stats.data(), in.col_stats.data(), 64, in.wn, bias16.data(),
                                 BNB_DTYPE_BF16, out.data(), BNB_DTYPE_BF16, nullptr));
    o.put(out);
  });
  // Optimizers, each call on buffers of its own (copies of the shared initial state).
  add("optimizer_32bit adam f32", [](const Inputs& in, Out& o) {
    std::vector<float> p = in.p, s1 = in.s1, s2 = in.s2;
    const bnb_optimizer_hparams h = {0.9, 0.99, 0.999, 2.0, 1e-6, 0.01, 1e-3, 1.0, 0.0, 0.0, 3, 0};
    o.status(bnb_optimizer_update_32bit(BNB_OPTIM_ADAM, in.g.data(), p.data(), BNB_DTYPE_F32, s1.data(), s2.data(),
                                        nullptr, in.on32, &h, nullptr));
    o.put(p);
    o.put(s1);
    o.put(s2);
  });
  add("optimizer_32bit lamb bf16 clipped", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> p = in.pb;
    std::vector<float> s1 = in.s1, s2 = in.s2;
    float unorm = 0.0f;
    const bnb_optimizer_hparams h = {0.9, 0.99, 0.999, 2.0, 1e-6, 0.01, 1e-3, 1.0, 1.0, 10.0, 2, 0};
    o.status(bnb_optimizer_update_32bit(BNB_OPTIM_LAMB, in.gb.data(), p.data(), BNB_DTYPE_BF16, s1.data(), s2.data(),
                                        &unorm, in.on32, &h, nullptr));
    o.put(p);
    o.put(s1);
    o.put(s2);
    o.put(&unorm, sizeof(unorm));
  });
  for (int pair = 0; pair < 3; ++pair) {
    add("optimizer_8bit_blockwise adam bf16 qmaps " + std::to_string(pair), [pair](const Inputs& in, Out& o) {
      std::vector<uint16_t> p(in.pb.begin(), in.pb.begin() + in.on8);
      std::vector<uint8_t> q1 = in.q1, q2 = in.q2;
      std::vector<float> a1 = in.a1, a2 = in.a2;
      const bnb_optimizer_hparams h = {0.9, 0.99, 0.999, 2.0, 1e-6, 0.01, 1e-3, 1.0, 0.0, 0.0, 4, 1};
      o.status(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_ADAM, in.gb.data(), p.data(), BNB_DTYPE_BF16, q1.data(),
                                                   q2.data(), in.qmaps[2 * pair].data(), in.qmaps[2 * pair + 1].data(),
                                                   a1.data(), a2.data(), in.on8, &h, nullptr));
      o.put(p);
      o.put(q1);
      o.put(q2);
      o.put(a1);
      o.put(a2);
    });
  }
  add("optimizer_8bit_blockwise momentum f32", [](const Inputs& in, Out& o) {
    std::vector<float> p(in.p.begin(), in.p.begin() + in.on8);
    std::vector<uint8_t> q1 = in.q1;
    std::vector<float> a1 = in.a1;
    const bnb_optimizer_hparams h = {0.9, 0.0, 0.0, 0.0, 1e-8, 0.0, 1e-2, 1.0, 0.0, 0.0, 5, 0};
    o.status(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, in.g.data(), p.data(), BNB_DTYPE_F32, q1.data(),
                                                 nullptr, in.code.data(), nullptr, a1.data(), nullptr, in.on8, &h,
                                                 nullptr));
    o.put(p);
    o.put(q1);
    o.put(a1);
  });
  // The weight matmuls (bnb_cpu_*): int8 forward, the transposed products (int8 and 4-bit), the
  // int8 expansion, and the AMX forms (BNB_ERR_NOT_IMPLEMENTED while AMX is off or not usable).
  add("int8_weight_matmul f32 m=3", [](const Inputs& in, Out& o) {
    std::vector<float> out(3 * in.wn);
    o.status(bnb_cpu_int8_weight_matmul(in.A.data(), BNB_DTYPE_F32, 3, in.wn, in.wk, in.CB.data(), in.SCB.data(),
                                        in.bias.data(), BNB_DTYPE_F32, out.data()));
    o.put(out);
  });
  add("int8_weight_matmul bf16 m=16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(16 * in.wn);
    o.status(bnb_cpu_int8_weight_matmul(in.Ab.data(), BNB_DTYPE_BF16, 16, in.wn, in.wk, in.CB.data(), in.SCB.data(),
                                        nullptr, 0, out.data()));
    o.put(out);
  });
  add("weight_matmul_t int8 f32 m=4", [](const Inputs& in, Out& o) {
    std::vector<float> out(4 * in.wk);
    o.status(bnb_cpu_weight_matmul_t(in.G.data(), BNB_DTYPE_F32, 4, in.wn, in.wk, in.CB.data(), in.SCB.data(), nullptr,
                                     nullptr, 0, 0, out.data()));
    o.put(out);
  });
  add("weight_matmul_t 4-bit bf16 m=2", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(2 * in.wk);
    o.status(bnb_cpu_weight_matmul_t(in.Gb.data(), BNB_DTYPE_BF16, 2, in.wn, in.wk, nullptr, nullptr, in.W4.data(),
                                     in.W4absmax.data(), BNB_QUANT_NF4, in.bs, out.data()));
    o.put(out);
  });
  add("int8_expand bf16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(in.CB.size());
    o.status(bnb_cpu_int8_expand(in.CB.data(), static_cast<int64_t>(in.CB.size()), out.data(), BNB_DTYPE_BF16));
    o.put(out);
  });
  add("weight_matmul_amx int8 m=16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(16 * in.wn);
    o.status(bnb_cpu_weight_matmul_amx(in.Ab.data(), 16, in.wn, in.wk, in.CB.data(), in.SCB.data(), nullptr, nullptr, 0,
                                       0, in.bias.data(), BNB_DTYPE_F32, out.data()));
    o.put(out);
  });
  add("weight_matmul_amx 4-bit m=3", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(3 * in.wn);
    o.status(bnb_cpu_weight_matmul_amx(in.Ab.data(), 3, in.wn, in.wk, nullptr, nullptr, in.W4.data(),
                                       in.W4absmax.data(), BNB_QUANT_NF4, in.bs, nullptr, 0, out.data()));
    o.put(out);
  });
  add("weight_matmul_t_amx int8 m=16", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(16 * in.wk);
    o.status(bnb_cpu_weight_matmul_t_amx(in.Gb.data(), 16, in.wn, in.wk, in.CB.data(), in.SCB.data(), nullptr, nullptr,
                                         0, 0, out.data()));
    o.put(out);
  });
  add("weight_matmul_t_amx 4-bit m=40", [](const Inputs& in, Out& o) {
    std::vector<uint16_t> out(40 * in.wk);
    o.status(bnb_cpu_weight_matmul_t_amx(in.Gb.data(), 40, in.wn, in.wk, nullptr, nullptr, in.W4.data(),
                                         in.W4absmax.data(), BNB_QUANT_FP4, in.bs, out.data()));
    o.put(out);
  });
  return ops;
}

// ---- references: every op run on one thread alone, per configuration and kernel thread count ----

struct Config {
  std::string isa;
  int amx;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  for (size_t pos = 0; pos <= s.size();) {
    const size_t comma = s.find(',', pos);
    parts.push_back(s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return parts;
}

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

// Runs fn() in a forked child (a fresh library: nothing initialised, no thread started); true when
// it exits with 0 (TSan's reports make it exit with 66).
template <typename Fn>
bool in_child(Fn fn, int* exit_status) {
  fflush(stdout);
  fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) exit(fn() ? 1 : 0);  // exit, not _exit: TSan reports at exit
  int status = 0;
  waitpid(pid, &status, 0);
  *exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
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
    if ((f % 2 || !other.empty()) && !in_child([&] { return settings_race(isa); }, &status)) {
      ++lost;
      printf("settings race %d (forked): FAILED, exit status %d\n", f + 1, status);
    }
  }
  if (lost) g_failures.fetch_add(1);
  printf("settings races (%d forked): %s (%.1f s)\n", settings_forks, lost ? "FAILED" : "ok", seconds_since(t0));
  for (int f = 0; f < forks; ++f) {
    const bool ok = in_child([&] { return cold_start(in, ops, nullptr); }, &status);
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
