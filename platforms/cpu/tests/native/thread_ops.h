// The calls tests/native/test_threads.cpp runs from several threads: the CPU-only C ABI extras it
// calls, its inputs (made without calling the library) and one Op per kernel family, each returning
// every status and output byte it produced. Included by test_threads.cpp and test_alloc_faults.cpp.
#pragma once
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
#include "cpu_extras.h"
#include "inputs.h"

namespace {

// ---- inputs: made without calling the library, so that a cold start's first calls are the callers' ----

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

// Runs child(&bytes) in a forked process (a fresh library: nothing initialised, no thread started)
// and returns its exit status, child's return value (through exit, not _exit: the sanitizers report
// at exit, TSan with status 66), or 128 + the signal that ended it. The bytes the child leaves in
// its string come back in *output (when not NULL), through a pipe.
int in_child(const std::function<int(std::string*)>& child, std::string* output) {
  int fds[2];
  if (pipe(fds) != 0) {
    perror("pipe");
    exit(2);
  }
  fflush(stdout);
  fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(2);
  }
  if (pid == 0) {
    close(fds[0]);
    std::string bytes;
    const int code = child(&bytes);
    for (size_t at = 0; at < bytes.size();) {
      const ssize_t w = write(fds[1], bytes.data() + at, bytes.size() - at);
      if (w <= 0) _exit(3);
      at += static_cast<size_t>(w);
    }
    close(fds[1]);
    exit(code);
  }
  close(fds[1]);
  std::string got;
  char buf[1 << 16];
  for (ssize_t r; (r = read(fds[0], buf, sizeof(buf))) > 0;) got.append(buf, static_cast<size_t>(r));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (output) *output = std::move(got);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// ---- the calls: each returns every status and output byte it produced ----

using Bytes = std::vector<uint8_t>;

struct Out {
  Bytes b;
  std::vector<int32_t> statuses;    // each call's status, in order (also in b)
  std::vector<std::string> errors;  // each call's bnb_last_error() where it failed, else ""

  void put(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  template <typename T>
  void put(const std::vector<T>& v) {
    put(v.data(), v.size() * sizeof(T));
  }
  void status(int32_t s) {
    put(&s, sizeof(s));
    statuses.push_back(s);
    errors.push_back(s != BNB_OK ? bnb_last_error() : "");
  }
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
  add("expand_columns int8 f16 and 4-bit bf16", [](const Inputs& in, Out& o) {
    const int64_t c0 = in.bs, c1 = in.wk - in.bs;
    std::vector<uint16_t> out(in.wn * (c1 - c0)), out4(in.wn * (c1 - c0));
    o.status(bnb_cpu_expand_columns(in.CB.data(), nullptr, nullptr, 0, 0, in.wn, in.wk, c0 + 1, c1 + 1, out.data(),
                                    BNB_DTYPE_F16));
    o.status(bnb_cpu_expand_columns(nullptr, in.W4.data(), in.W4absmax.data(), BNB_QUANT_FP4, in.bs, in.wn, in.wk, c0,
                                    c1, out4.data(), BNB_DTYPE_BF16));
    o.put(out);
    o.put(out4);
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

}  // namespace
