// Native test driver of libbitsandbytes_cpu through its C ABI alone (no Python, no torch): used by
// the sanitizer session and under qemu for aarch64. Every instruction set the CPU can run is
// compared with the scalar kernels (bit for bit, except the float matmul's summation order), the
// scalar 4-bit matmul with a naive product, and bad arguments must give errors, never crashes.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <random>
#include <string>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "cpu_extras.h"
#include "entry_checks.h"
#include "inputs.h"

namespace {

int g_failures = 0;
int g_checks = 0;

}  // namespace

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    fprintf(stderr, "FAIL [%s]: %s\n", bnb_cpu_get_isa(), what.c_str());
  }
}

std::vector<float> dynamic_code() {  // any sorted 256-entry code book will do
  std::vector<float> c(256);
  for (int i = 0; i < 256; ++i) {
    const float t = (i - 127.5f) / 127.5f;
    c[i] = t * t * t;
  }
  return c;
}

namespace {

struct Outputs {
  std::vector<uint8_t> bytes;
  std::vector<float> floats;
};

// Runs every kernel once on fixed inputs; returns everything it wrote.
Outputs run_all(bool* gemm_ok) {
  Outputs o;
  auto put = [&](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    o.bytes.insert(o.bytes.end(), b, b + n);
  };
  const int64_t n = 3 * 4096 + 77;  // odd, partial last block
  const auto x = randn(n, 1, 2.0f);
  const auto code = dynamic_code();
  for (int32_t dtype : {BNB_DTYPE_F32, BNB_DTYPE_F16, BNB_DTYPE_BF16}) {
    const auto x16 = to16(x, dtype);
    const void* src = dtype == BNB_DTYPE_F32 ? static_cast<const void*>(x.data()) : x16.data();
    for (int64_t bs : {32, 64, 256, 4096}) {
      for (int32_t qt : {BNB_QUANT_FP4, BNB_QUANT_NF4}) {
        std::vector<uint8_t> packed((n + 1) / 2);
        std::vector<float> absmax((n + bs - 1) / bs);
        check(bnb_quantize_4bit(src, dtype, n, bs, qt, packed.data(), absmax.data(), nullptr) == BNB_OK,
              "quantize_4bit");
        put(packed.data(), packed.size());
        put(absmax.data(), absmax.size() * 4);
        std::vector<uint8_t> out(n * 4);
        check(bnb_dequantize_4bit(packed.data(), absmax.data(), n, bs, qt, out.data(), dtype, nullptr) == BNB_OK,
              "dequantize_4bit");
        put(out.data(), n * (dtype == BNB_DTYPE_F32 ? 4 : 2));
      }
      for (int64_t bbs : {bs, int64_t(100)}) {
        std::vector<uint8_t> q(n);
        std::vector<float> absmax((n + bbs - 1) / bbs);
        check(bnb_quantize_blockwise(src, dtype, code.data(), n, bbs, q.data(), absmax.data(), nullptr) == BNB_OK,
              "quantize_blockwise");
        put(q.data(), n);
        std::vector<uint8_t> out(n * 4);
        check(bnb_dequantize_blockwise(q.data(), code.data(), absmax.data(), n, bbs, out.data(), dtype, nullptr) ==
                  BNB_OK,
              "dequantize_blockwise");
        put(out.data(), n * (dtype == BNB_DTYPE_F32 ? 4 : 2));
      }
    }
    // int8
    const int64_t rows = 5, cols = 300;
    std::vector<int8_t> q(rows * cols);
    std::vector<float> stats(rows);
    std::vector<uint8_t> ocols(cols);
    check(bnb_int8_vectorwise_quant(src, dtype, rows, cols, 3.0f, q.data(), stats.data(), ocols.data(), nullptr) ==
              BNB_OK,
          "int8_vectorwise_quant");
    put(q.data(), q.size());
    put(stats.data(), stats.size() * 4);
    put(ocols.data(), ocols.size());
  }
  for (int64_t k : {200, 100, 7}) {  // whole vectors with a tail; less than one 64-byte vector
    const int64_t m = 3, nn = 21;
    std::vector<int8_t> A(m * k), B(nn * k);
    std::mt19937 rng(7);
    for (auto& v : A) v = static_cast<int8_t>(rng() & 0xff);
    for (auto& v : B) v = static_cast<int8_t>(rng() & 0xff);
    A[0] = B[0] = -128;
    std::vector<int32_t> C(m * nn);
    check(bnb_int8_linear_matmul(A.data(), B.data(), m, nn, k, C.data(), nullptr) == BNB_OK, "int8_linear_matmul");
    bool exact = true;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < nn; ++j) {
        int32_t s = 0;
        for (int64_t i = 0; i < k; ++i) s += A[r * k + i] * B[j * k + i];
        exact &= s == C[r * nn + j];
      }
    check(exact, "int8_linear_matmul is exact");
    std::vector<float> rs = {1.0f, 2.5f, 0.5f}, cs(nn, 3.0f), bias(nn, 0.25f), out(m * nn);
    check(bnb_int8_mm_dequant(C.data(), rs.data(), cs.data(), m, nn, bias.data(), BNB_DTYPE_F32, out.data(),
                              BNB_DTYPE_F32, nullptr) == BNB_OK,
          "int8_mm_dequant");
    put(out.data(), out.size() * 4);
  }
  // Optimizers: every algorithm, 32-bit and 8-bit states.
  for (int32_t opt = BNB_OPTIM_MOMENTUM; opt <= BNB_OPTIM_LARS; ++opt) {
    const int64_t pn = 1000;
    auto p = randn(pn, 11), g = randn(pn, 12, 0.1f);
    g[5] = 0.0f;
    bnb_optimizer_hparams h = {0.9f, 0.99f, 0.999f, 2.0f, 1e-6f, 0.01f, 1e-3f, 1.0f, 0.0f, 0.0f, 3, 0};
    std::vector<float> s1(2 * pn, 0.01f), s2(pn, 0.02f);
    check(bnb_optimizer_update_32bit(opt, g.data(), p.data(), BNB_DTYPE_F32, s1.data(), s2.data(), nullptr, pn, &h,
                                     nullptr) == BNB_OK,
          "optimizer_update_32bit");
    put(p.data(), pn * 4);
    put(s1.data(), s1.size() * 4);
    put(s2.data(), s2.size() * 4);
    h.max_unorm = 1.0f;
    h.param_norm = 10.0f;
    float unorm = 0.0f;
    check(bnb_optimizer_update_32bit(opt, g.data(), p.data(), BNB_DTYPE_F32, s1.data(), s2.data(), &unorm, pn, &h,
                                     nullptr) == BNB_OK,
          "optimizer_update_32bit clip");
    put(p.data(), pn * 4);
    put(s1.data(), s1.size() * 4);
    put(s2.data(), s2.size() * 4);
    put(&unorm, 4);
    float empty_norm = 7.0f;
    check(bnb_optimizer_update_32bit(opt, g.data(), p.data(), BNB_DTYPE_F32, s1.data(), s2.data(), &empty_norm, 0, &h,
                                     nullptr) == BNB_OK &&
              empty_norm == 0.0f,
          "optimizer_update_32bit clip of an empty parameter writes a zero norm");
    h.max_unorm = 0.0f;
    std::vector<uint8_t> q1(2 * pn, 140), q2(pn, 200);
    const auto qm1 = dynamic_code();
    std::vector<float> qm2(256);
    for (int i = 0; i < 256; ++i) qm2[i] = i / 255.0f;
    const int64_t blocks = (pn + 255) / 256;
    std::vector<float> a1(2 * blocks, 0.5f), a2(blocks, 0.25f);
    std::vector<uint16_t> p16 = to16(p, BNB_DTYPE_BF16), g16 = to16(g, BNB_DTYPE_BF16);
    h.skip_zeros = 1;
    check(bnb_optimizer_update_8bit_blockwise(opt, g16.data(), p16.data(), BNB_DTYPE_BF16, q1.data(), q2.data(),
                                              qm1.data(), qm2.data(), a1.data(), a2.data(), pn, &h, nullptr) == BNB_OK,
          "optimizer_update_8bit_blockwise");
    put(p16.data(), pn * 2);
    put(q1.data(), q1.size());
    put(q2.data(), q2.size());
    put(a1.data(), a1.size() * 4);
    put(a2.data(), a2.size() * 4);
  }
  // 4-bit matmul: fast path and odd shapes against a naive product of the dequantized weight.
  *gemm_ok = true;
  for (auto shape : {std::vector<int64_t>{5, 24, 256, 64}, {1, 16, 4096, 128}, {3, 9, 96, 32}, {2, 7, 33, 64}}) {
    const int64_t m = shape[0], nn = shape[1], k = shape[2], bs = shape[3];
    const auto w = randn(nn * k, 21), a = randn(m * k, 22);
    std::vector<uint8_t> packed((nn * k + 1) / 2);
    std::vector<float> absmax((nn * k + bs - 1) / bs), wd(nn * k), out(m * nn), code(16);
    for (int c = 0; c < 16; ++c) code[c] = bnb::decode_4bit(1, c);
    bnb_quantize_4bit(w.data(), BNB_DTYPE_F32, nn * k, bs, BNB_QUANT_NF4, packed.data(), absmax.data(), nullptr);
    bnb_dequantize_4bit(packed.data(), absmax.data(), nn * k, bs, BNB_QUANT_NF4, wd.data(), BNB_DTYPE_F32, nullptr);
    check(bnb_gemm_4bit(a.data(), BNB_DTYPE_F32, m, nn, k, packed.data(), absmax.data(), code.data(), bs, nullptr,
                        out.data(), nullptr) == BNB_OK,
          "gemm_4bit");
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < nn; ++j) {
        double s = 0.0, sa = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          s += static_cast<double>(a[r * k + i]) * wd[j * k + i];
          sa += fabs(static_cast<double>(a[r * k + i]) * wd[j * k + i]);
        }
        if (fabs(s - out[r * nn + j]) > 1e-5 * sa + 1e-6) *gemm_ok = false;
      }
  }
  // One bf16 row (the AVX2 table's fixed-point kernel: its reads and bounds under the sanitizers),
  // block sizes 64, 128 and an odd multiple of 64 (192: packed codes and absmax made directly, since
  // the quantizer takes powers of two only).
  for (auto shape : {std::vector<int64_t>{16, 4096, 128}, {10, 256, 64}, {12, 384, 192}}) {
    const int64_t nn = shape[0], k = shape[1], bs = shape[2];
    const auto a = randn(k, 23), am = randn(nn * k / bs, 24);
    std::vector<uint8_t> packed(nn * k / 2);
    std::vector<float> absmax(nn * k / bs), code(16);
    for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i * 97 % 256);
    for (size_t b = 0; b < absmax.size(); ++b) absmax[b] = 0.1f + fabsf(am[b]);
    for (int c = 0; c < 16; ++c) code[c] = bnb::decode_4bit(1, c);
    const std::vector<uint16_t> a16 = to16(a, BNB_DTYPE_BF16);
    std::vector<uint16_t> out16(nn);
    check(bnb_gemm_4bit(a16.data(), BNB_DTYPE_BF16, 1, nn, k, packed.data(), absmax.data(), code.data(), bs, nullptr,
                        out16.data(), nullptr) == BNB_OK,
          "gemm_4bit bf16");
    for (int64_t j = 0; j < nn; ++j) {
      double s = 0.0, sa = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t e = j * k + i;
        const uint8_t byte = packed[e / 2];
        const double w = static_cast<double>(code[(e & 1) ? (byte & 15) : (byte >> 4)]) * absmax[e / bs];
        const double x = bnb::bf16_to_float(a16[i]);
        s += x * w;
        sa += fabs(x * w);
      }
      // bf16 output rounding (2^-8 relative) and the kernels' weight or activation rounding (< 2^-8)
      if (fabs(s - bnb::bf16_to_float(out16[j])) > 0.004 * fabs(s) + 0.004 * sa + 1e-6) *gemm_ok = false;
    }
  }
  // int8 -> float expansion: exact in every dtype, an odd count.
  {
    std::vector<int8_t> src(1001);
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<int8_t>(static_cast<int>(i * 37 % 256) - 128);
    std::vector<float> f32(src.size());
    std::vector<uint16_t> h16(src.size()), b16(src.size());
    bool exact = bnb_cpu_int8_expand(src.data(), 1001, f32.data(), BNB_DTYPE_F32) == BNB_OK &&
                 bnb_cpu_int8_expand(src.data(), 1001, h16.data(), BNB_DTYPE_F16) == BNB_OK &&
                 bnb_cpu_int8_expand(src.data(), 1001, b16.data(), BNB_DTYPE_BF16) == BNB_OK;
    for (size_t i = 0; i < src.size(); ++i) {
      const float v = static_cast<float>(src[i]);
      exact = exact && f32[i] == v && bnb::half_to_float(h16[i]) == v && bnb::bf16_to_float(b16[i]) == v;
    }
    check(exact, "int8_expand is exact in f32, f16 and bf16");
  }
  // Matmuls against a weight kept quantized: A @ W^T (int8, with bias) and G @ W (int8 and 4-bit)
  // against naive products of the dequantized weight; odd sizes, rows past a 256-column chunk.
  for (auto shape : {std::vector<int64_t>{1, 5, 33}, {6, 17, 300}, {4, 64, 512}, {9, 3, 65}, {3, 70, 128}}) {
    const int64_t m = shape[0], nn = shape[1], k = shape[2];
    std::mt19937 rng(static_cast<uint32_t>(m * 1000 + k));
    std::vector<int8_t> cb(nn * k);
    for (auto& v : cb) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<float> scb(nn), bias = randn(nn, 31), wd(nn * k);
    for (int64_t j = 0; j < nn; ++j) scb[j] = 0.5f + static_cast<float>(j % 7);
    for (int64_t j = 0; j < nn; ++j)
      for (int64_t i = 0; i < k; ++i) wd[j * k + i] = cb[j * k + i] * (scb[j] * (1.0f / 127.0f));
    const auto a = randn(m * k, 32), g = randn(m * nn, 33);
    std::vector<float> out(m * nn), outt(m * k), out4(m * k);
    check(bnb_cpu_int8_weight_matmul(a.data(), BNB_DTYPE_F32, m, nn, k, cb.data(), scb.data(), bias.data(),
                                     BNB_DTYPE_F32, out.data()) == BNB_OK,
          "int8_weight_matmul");
    check(bnb_cpu_weight_matmul_t(g.data(), BNB_DTYPE_F32, m, nn, k, cb.data(), scb.data(), nullptr, nullptr, 0, 0,
                                  outt.data()) == BNB_OK,
          "weight_matmul_t int8");
    const int64_t bs = 64;
    std::vector<uint8_t> packed((nn * k + 1) / 2);
    std::vector<float> absmax((nn * k + bs - 1) / bs), w4(nn * k);
    const auto w = randn(nn * k, 34);
    bnb_quantize_4bit(w.data(), BNB_DTYPE_F32, nn * k, bs, BNB_QUANT_NF4, packed.data(), absmax.data(), nullptr);
    bnb_dequantize_4bit(packed.data(), absmax.data(), nn * k, bs, BNB_QUANT_NF4, w4.data(), BNB_DTYPE_F32, nullptr);
    check(bnb_cpu_weight_matmul_t(g.data(), BNB_DTYPE_F32, m, nn, k, nullptr, nullptr, packed.data(), absmax.data(),
                                  BNB_QUANT_NF4, bs, out4.data()) == BNB_OK,
          "weight_matmul_t 4-bit");
    {  // columns of the weight, as the input gradients' dense panels expand them: exact
      const int64_t c0 = k / 3, c1 = k - 1, w4c = k % bs ? 0 : k - bs;
      std::vector<float> cols(nn * (c1 - c0)), cols4(nn * w4c);
      bool same = bnb_cpu_expand_columns(cb.data(), nullptr, nullptr, 0, 0, nn, k, c0, c1, cols.data(),
                                         BNB_DTYPE_F32) == BNB_OK;
      same = same && (w4c == 0 || bnb_cpu_expand_columns(nullptr, packed.data(), absmax.data(), BNB_QUANT_NF4, bs, nn,
                                                         k, bs, k, cols4.data(), BNB_DTYPE_F32) == BNB_OK);
      for (int64_t j = 0; j < nn; ++j) {
        for (int64_t i = c0; i < c1; ++i) same = same && cols[j * (c1 - c0) + i - c0] == cb[j * k + i];
        for (int64_t i = 0; i < w4c; ++i) same = same && cols4[j * w4c + i] == w4[j * k + bs + i];
      }
      check(same, "expand_columns int8 and 4-bit");
    }
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < nn; ++j) {
        double s = bias[j], sa = fabs(bias[j]);
        for (int64_t i = 0; i < k; ++i) {
          s += static_cast<double>(a[r * k + i]) * wd[j * k + i];
          sa += fabs(static_cast<double>(a[r * k + i]) * wd[j * k + i]);
        }
        if (fabs(s - out[r * nn + j]) > 1e-5 * sa + 1e-6) *gemm_ok = false;
      }
      for (int64_t i = 0; i < k; ++i) {
        double s = 0.0, sa = 0.0, s4 = 0.0, sa4 = 0.0;
        for (int64_t j = 0; j < nn; ++j) {
          s += static_cast<double>(g[r * nn + j]) * wd[j * k + i];
          sa += fabs(static_cast<double>(g[r * nn + j]) * wd[j * k + i]);
          s4 += static_cast<double>(g[r * nn + j]) * w4[j * k + i];
          sa4 += fabs(static_cast<double>(g[r * nn + j]) * w4[j * k + i]);
        }
        if (fabs(s - outt[r * k + i]) > 1e-5 * sa + 1e-6) *gemm_ok = false;
        if (fabs(s4 - out4[r * k + i]) > 1e-5 * sa4 + 1e-6) *gemm_ok = false;
      }
    }
  }
  return o;
}

void bad_arguments() {
  std::vector<float> x(64);
  std::vector<uint8_t> packed(32);
  float absmax[2];
  check(bnb_quantize_4bit(nullptr, 0, 64, 64, 1, packed.data(), absmax, nullptr) == BNB_ERR_NULL_POINTER, "null A");
  check(bnb_quantize_4bit(x.data(), 0, 64, 48, 1, packed.data(), absmax, nullptr) == BNB_ERR_INVALID_BLOCKSIZE,
        "blocksize 48");
  check(bnb_quantize_4bit(x.data(), 9, 64, 64, 1, packed.data(), absmax, nullptr) == BNB_ERR_UNSUPPORTED_DTYPE,
        "dtype 9");
  check(strlen(bnb_last_error()) > 0, "last error message");
  check(bnb_gemm_4bit(x.data(), 0, 1, 0, 64, packed.data(), absmax, absmax, 64, nullptr, x.data(), nullptr) ==
            BNB_ERR_INVALID_ARGUMENT,
        "gemm n = 0");
  check(bnb_optimizer_update_32bit(42, x.data(), x.data(), 0, x.data(), nullptr, nullptr, 64, nullptr, nullptr) ==
            BNB_ERR_NULL_POINTER,
        "optimizer without hparams");
  {  // a buffer the update writes sharing memory with another argument: refused before any write
    bnb_optimizer_hparams h = {0.9f, 0.99f, 0.999f, 2.0f, 1e-6f, 0.0f, 1e-3f, 1.0f, 0.0f, 0.0f, 1, 0};
    std::vector<float> g(64, 0.1f), p(64, 1.0f), s(128, 0.5f), qm(256, 0.0f), am(2, 1.0f);
    check(bnb_optimizer_update_32bit(BNB_OPTIM_ADAM, g.data(), p.data(), BNB_DTYPE_F32, s.data(), s.data() + 32,
                                     nullptr, 64, &h, nullptr) == BNB_ERR_INVALID_ARGUMENT &&
              strstr(bnb_last_error(), "state1 and state2 share memory") != nullptr,
          "32-bit state2 overlapping state1");
    check(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), BNB_DTYPE_F32,
                                              reinterpret_cast<uint8_t*>(g.data()) + 8, nullptr, qm.data(), nullptr,
                                              am.data(), nullptr, 64, &h, nullptr) == BNB_ERR_INVALID_ARGUMENT &&
              strstr(bnb_last_error(), "state1 and g share memory") != nullptr,
          "8-bit state1 inside the gradient");
    check(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, p.data(), p.data(), BNB_DTYPE_F32,
                                              reinterpret_cast<uint8_t*>(s.data()), nullptr, qm.data(), nullptr,
                                              am.data(), nullptr, 64, &h, nullptr) == BNB_ERR_INVALID_ARGUMENT,
          "8-bit g is p");
    check(p == std::vector<float>(64, 1.0f) && s == std::vector<float>(128, 0.5f) && am[0] == 1.0f,
          "nothing written by the refused updates");
    std::vector<uint8_t> st1(64, 128), st2(64, 0);
    std::vector<float> am1(1, 1.0f), am2(1, 1.0f);
    const auto code = dynamic_code();
    check(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_ADAM, g.data(), p.data(), BNB_DTYPE_F32, st1.data(), st2.data(),
                                              code.data(), code.data(), am1.data(), am2.data(), 64, &h,
                                              nullptr) == BNB_OK,
          "read-only arguments may share memory (qmap2 is qmap1)");
  }
  const int8_t cb[4] = {1, 2, 3, 4};
  check(bnb_cpu_int8_weight_matmul(x.data(), 0, 1, 2, 2, cb, nullptr, nullptr, 0, x.data()) == BNB_ERR_NULL_POINTER,
        "int8_weight_matmul without SCB");
  check(bnb_cpu_weight_matmul_t(x.data(), 0, 1, 2, 2, cb, absmax, packed.data(), absmax, BNB_QUANT_NF4, 64, x.data()) ==
            BNB_ERR_NULL_POINTER,
        "weight_matmul_t with both an int8 and a 4-bit weight");
  check(bnb_cpu_weight_matmul_t(x.data(), 0, 1, 2, 2, nullptr, nullptr, packed.data(), absmax, BNB_QUANT_NF4, 0,
                                x.data()) == BNB_ERR_INVALID_BLOCKSIZE,
        "weight_matmul_t blocksize 0");
  check(bnb_cpu_weight_matmul_t(x.data(), 0, 1, 2, 2, nullptr, nullptr, packed.data(), absmax, 7, 64, x.data()) ==
            BNB_ERR_UNSUPPORTED_QUANT_TYPE,
        "weight_matmul_t quant_type 7");
  check(bnb_cpu_int8_weight_matmul(x.data(), 5, 1, 2, 2, cb, absmax, nullptr, 0, x.data()) == BNB_ERR_UNSUPPORTED_DTYPE,
        "int8_weight_matmul dtype 5");
  check(bnb_cpu_int8_expand(nullptr, 4, x.data(), 0) == BNB_ERR_NULL_POINTER, "int8_expand without src");
  check(bnb_cpu_int8_expand(cb, 4, x.data(), 3) == BNB_ERR_UNSUPPORTED_DTYPE, "int8_expand dtype 3");
  check(bnb_cpu_expand_columns(cb, packed.data(), absmax, 1, 64, 1, 64, 0, 64, x.data(), 0) == BNB_ERR_NULL_POINTER,
        "expand_columns with both weights");
  check(bnb_cpu_expand_columns(cb, nullptr, nullptr, 0, 0, 2, 2, 1, 3, x.data(), 0) == BNB_ERR_INVALID_ARGUMENT,
        "expand_columns c1 past k");
  check(bnb_cpu_expand_columns(nullptr, packed.data(), absmax, 1, 64, 1, 64, 32, 64, x.data(), 0) ==
            BNB_ERR_INVALID_ARGUMENT,
        "expand_columns c0 inside a block");
  check(bnb_cpu_expand_columns(nullptr, packed.data(), absmax, 1, 48, 1, 96, 0, 48, x.data(), 0) ==
            BNB_ERR_INVALID_BLOCKSIZE,
        "expand_columns blocksize 48");
  check(bnb_cpu_expand_columns(cb, nullptr, nullptr, 0, 0, 1, 4, 0, 4, x.data(), 3) == BNB_ERR_UNSUPPORTED_DTYPE,
        "expand_columns dtype 3");
  check(bnb_cpu_set_isa("avx9000") == BNB_ERR_INVALID_ARGUMENT, "unknown ISA is refused");
  check(bnb_cpu_set_isa(nullptr) == BNB_ERR_NULL_POINTER, "NULL ISA is refused");
  check(bnb_paged_free(nullptr) == BNB_ERR_NOT_IMPLEMENTED, "paged memory is not implemented");
}

// The panel path (under the avx512 table): bf16 A against an int8 and a 4-bit weight, with bias,
// on shapes with tails of every block (rows of A past 8, 16, 32 and 256; weight rows past 32; k past
// a 512 range), against a naive product of the same bf16 operands; then its argument checks. On
// the AMX tile unit where the CPU has it, and in the AVX512-BF16 dot-product form (forced there).
void panel_products(const char* unit);

void amx_path() {
  if (!bnb_cpu_panel_usable()) {
    printf("panel matmuls: not usable here\n");
    return;
  }
  if (bnb_cpu_amx_usable()) panel_products("AMX");
  bnb_cpu_set_panel_dots(1);
  check(bnb_cpu_panel_dots() == 1, "panel_dots after set_panel_dots(1)");
  panel_products("AVX512-BF16 dots");
  bnb_cpu_set_panel_dots(0);
}

void panel_products(const char* unit) {
  for (auto shape :
       {std::vector<int64_t>{1, 1, 32}, {17, 33, 64}, {40, 70, 544}, {300, 40, 96}, {8, 1024, 1024}, {11, 45, 64}}) {
    const int64_t m = shape[0], nn = shape[1], k = shape[2];
    std::mt19937 rng(static_cast<uint32_t>(m * 7 + nn * 3 + k));
    std::vector<int8_t> cb(nn * k);
    for (auto& v : cb) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<float> scb(nn), bias = randn(nn, 41);
    for (int64_t j = 0; j < nn; ++j) scb[j] = 0.5f + static_cast<float>(j % 5);
    const auto a16 = to16(randn(m * k, 42), BNB_DTYPE_BF16);
    const int64_t bs = 32;
    std::vector<uint8_t> packed((nn * k + 1) / 2);
    std::vector<float> absmax(nn * k / bs), w4(nn * k);
    const auto w = randn(nn * k, 43);
    bnb_quantize_4bit(w.data(), BNB_DTYPE_F32, nn * k, bs, BNB_QUANT_FP4, packed.data(), absmax.data(), nullptr);
    std::vector<uint16_t> w16(nn * k);
    bnb_dequantize_4bit(packed.data(), absmax.data(), nn * k, bs, BNB_QUANT_FP4, w16.data(), BNB_DTYPE_BF16, nullptr);
    std::vector<uint16_t> out8(m * nn), out4(m * nn);
    check(bnb_cpu_weight_matmul_amx(a16.data(), m, nn, k, cb.data(), scb.data(), nullptr, nullptr, 0, 0, bias.data(),
                                    BNB_DTYPE_F32, out8.data()) == BNB_OK,
          "weight_matmul_amx int8");
    check(bnb_cpu_weight_matmul_amx(a16.data(), m, nn, k, nullptr, nullptr, packed.data(), absmax.data(), BNB_QUANT_FP4,
                                    bs, nullptr, 0, out4.data()) == BNB_OK,
          "weight_matmul_amx 4-bit");
    bool ok = true;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t j = 0; j < nn; ++j) {
        double s8 = 0.0, sa8 = 0.0, s4 = 0.0, sa4 = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          const double x = bnb::bf16_to_float(a16[r * k + i]);
          s8 += x * cb[j * k + i];
          sa8 += fabs(x * cb[j * k + i]);
          s4 += x * bnb::bf16_to_float(w16[j * k + i]);
          sa4 += fabs(x * bnb::bf16_to_float(w16[j * k + i]));
        }
        s8 = s8 * (scb[j] / 127.0) + bias[j];
        sa8 = sa8 * (scb[j] / 127.0) + fabs(bias[j]);
        // f32 sums of exact bf16 products, then one bf16 rounding (2^-8 relative).
        if (fabs(s8 - bnb::bf16_to_float(out8[r * nn + j])) > 4e-3 * fabs(s8) + 1e-5 * sa8 + 1e-6) ok = false;
        if (fabs(s4 - bnb::bf16_to_float(out4[r * nn + j])) > 4e-3 * fabs(s4) + 1e-5 * sa4 + 1e-6) ok = false;
      }
    }
    check(ok, "weight_matmul_amx matches the naive product (m=" + std::to_string(m) + ", n=" + std::to_string(nn) +
                  ", k=" + std::to_string(k) + ")");
    // The transposed products: G [m, nn] @ W.
    const auto g16 = to16(randn(m * nn, 44), BNB_DTYPE_BF16);
    std::vector<uint16_t> outt8(m * k), outt4(m * k);
    check(bnb_cpu_weight_matmul_t_amx(g16.data(), m, nn, k, cb.data(), scb.data(), nullptr, nullptr, 0, 0,
                                      outt8.data()) == BNB_OK,
          "weight_matmul_t_amx int8");
    check(bnb_cpu_weight_matmul_t_amx(g16.data(), m, nn, k, nullptr, nullptr, packed.data(), absmax.data(),
                                      BNB_QUANT_FP4, bs, outt4.data()) == BNB_OK,
          "weight_matmul_t_amx 4-bit");
    bool okt = true;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t i = 0; i < k; ++i) {
        double s8 = 0.0, sa8 = 0.0, s4 = 0.0, sa4 = 0.0;
        for (int64_t j = 0; j < nn; ++j) {
          const double x8 =
              bnb::bf16_to_float(bnb::float_to_bf16(bnb::bf16_to_float(g16[r * nn + j]) * (scb[j] * (1.0f / 127.0f))));
          const double x = bnb::bf16_to_float(g16[r * nn + j]);
          s8 += x8 * cb[j * k + i];
          sa8 += fabs(x8 * cb[j * k + i]);
          s4 += x * bnb::bf16_to_float(w16[j * k + i]);
          sa4 += fabs(x * bnb::bf16_to_float(w16[j * k + i]));
        }
        if (fabs(s8 - bnb::bf16_to_float(outt8[r * k + i])) > 4e-3 * fabs(s8) + 1e-5 * sa8 + 1e-6) okt = false;
        if (fabs(s4 - bnb::bf16_to_float(outt4[r * k + i])) > 4e-3 * fabs(s4) + 1e-5 * sa4 + 1e-6) okt = false;
      }
    }
    check(okt, "weight_matmul_t_amx matches the naive product (m=" + std::to_string(m) + ")");
  }
  uint16_t a[64] = {0}, o[64] = {0};
  int8_t cb[128] = {0};
  float scb[4] = {1, 1, 1, 1};
  check(
      bnb_cpu_weight_matmul_amx(a, 1, 2, 48, cb, scb, nullptr, nullptr, 0, 0, nullptr, 0, o) == BNB_ERR_NOT_IMPLEMENTED,
      "weight_matmul_amx k not a multiple of 32");
  check(bnb_cpu_weight_matmul_amx(a, 1, 2, 32, cb, nullptr, nullptr, nullptr, 0, 0, nullptr, 0, o) ==
            BNB_ERR_NULL_POINTER,
        "weight_matmul_amx without SCB");
  check(bnb_cpu_weight_matmul_amx(a, -1, 2, 32, cb, scb, nullptr, nullptr, 0, 0, nullptr, 0, o) ==
            BNB_ERR_INVALID_ARGUMENT,
        "weight_matmul_amx m < 0");
  {  // 4-bit blocks the panels cannot expand (odd: a block starts mid-byte; transposed, a 32-column
     // range inside a block): refused, not a wrong product
    std::vector<uint8_t> b4(480, 0x77);
    std::vector<float> am(960, 1.0f);
    std::vector<uint16_t> g(480), out(480);
    check(bnb_cpu_weight_matmul_amx(g.data(), 1, 2, 32, nullptr, nullptr, b4.data(), am.data(), BNB_QUANT_NF4, 1,
                                    nullptr, 0, out.data()) == BNB_ERR_NOT_IMPLEMENTED &&
              strstr(bnb_last_error(), "blocksize") != nullptr,
          "weight_matmul_amx 4-bit blocksize 1");
    for (int64_t bs : {1, 40, 48}) {
      check(bnb_cpu_weight_matmul_t_amx(g.data(), 1, 2, 480, nullptr, nullptr, b4.data(), am.data(), BNB_QUANT_NF4, bs,
                                        out.data()) == BNB_ERR_NOT_IMPLEMENTED,
            "weight_matmul_t_amx 4-bit blocksize " + std::to_string(bs));
    }
  }
  bnb_cpu_set_amx(0);
  check(
      bnb_cpu_weight_matmul_amx(a, 1, 2, 32, cb, scb, nullptr, nullptr, 0, 0, nullptr, 0, o) == BNB_ERR_NOT_IMPLEMENTED,
      "weight_matmul_amx turned off");
  bnb_cpu_set_amx(1);
  printf("%s: %s\n", unit, g_failures ? "FAILED" : "ok");
}

// The int8 GEMM at row counts that take the AMX-INT8 path where the CPU has it (8 rows and more, k
// a multiple of 64; 300 rows: two passes; partial blocks of A rows and weight rows), exact against
// the naive sums, with and without the outlier-column gather; the same with AMX off.
void int8_gemm_rows() {
  for (int amx_on : {1, 0}) {
    bnb_cpu_set_amx(amx_on);
    for (auto shape : {std::vector<int64_t>{8, 33, 64}, {17, 64, 128}, {40, 70, 576}, {300, 40, 192}, {9, 1, 64}}) {
      const int64_t m = shape[0], nn = shape[1], k = shape[2];
      std::mt19937 rng(static_cast<uint32_t>(m * 5 + nn * 11 + k));
      std::vector<int8_t> A(m * k), B(nn * k), Bcols(nn * 2);
      for (auto& v : A) v = static_cast<int8_t>(rng() & 0xff);
      for (auto& v : B) v = static_cast<int8_t>(rng() & 0xff);
      A[0] = B[0] = -128;
      B[nn * k - 1] = -128;
      const int64_t cols[2] = {0, k - 1};
      std::vector<int32_t> C(m * nn, 12345), C2(m * nn, 12345);
      check(bnb_int8_linear_matmul(A.data(), B.data(), m, nn, k, C.data(), nullptr) == BNB_OK, "int8_linear_matmul");
      check(bnb_cpu_int8_linear_matmul_gather(A.data(), B.data(), m, nn, k, C2.data(), cols, 2, Bcols.data()) == BNB_OK,
            "int8_linear_matmul_gather");
      bool exact = true, gathered = true;
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < nn; ++j) {
          int32_t sum = 0;
          for (int64_t i = 0; i < k; ++i) sum += A[r * k + i] * B[j * k + i];
          exact &= sum == C[r * nn + j] && sum == C2[r * nn + j];
        }
      for (int64_t j = 0; j < nn; ++j) gathered &= Bcols[j * 2] == B[j * k] && Bcols[j * 2 + 1] == B[j * k + k - 1];
      const std::string what = " (m=" + std::to_string(m) + ", n=" + std::to_string(nn) + ", k=" + std::to_string(k) +
                               ", AMX " + (amx_on ? "on" : "off") + ")";
      check(exact, "int8_linear_matmul is exact" + what);
      check(gathered, "int8_linear_matmul_gather copies the columns" + what);
    }
  }
  bnb_cpu_set_amx(1);
}

}  // namespace

int main() {
  printf("%s\nusable: %s\n", bnb_build_info(), bnb_cpu_usable_isas());
  bad_arguments();
  more_bad_arguments();
  each_check_once();
  const std::vector<std::string> isas = split(bnb_cpu_usable_isas());
  Outputs scalar;
  for (int threads : {1, 2}) {
    bnb_cpu_set_num_threads(threads);
    for (const auto& isa : isas) {
      check(bnb_cpu_set_isa(isa.c_str()) == BNB_OK && isa == bnb_cpu_get_isa(), "set_isa " + isa);
      bool gemm_ok = false;
      Outputs o = run_all(&gemm_ok);
      check(gemm_ok, "gemm_4bit matches the naive product");
      exact_tails();
      odd_blocksize_matmul();
      if (isa == "scalar" && threads == 1) {
        scalar = o;
      } else {
        check(o.bytes == scalar.bytes,
              "bit-identical to the scalar kernels with " + std::to_string(threads) + " thread(s)");
      }
      printf("%-7s %d thread(s): %s\n", isa.c_str(), threads, g_failures ? "FAILED" : "ok");
      if (isa == "avx512") {  // the 8-bit optimizer kernel's other form (gathers, or lookups + search)
        const int other = bnb_cpu_optimizer_gathers() ? 0 : 1;
        bnb_cpu_set_optimizer_gathers(other);
        check(bnb_cpu_optimizer_gathers() == other, "set_optimizer_gathers");
        check(run_all(&gemm_ok).bytes == scalar.bytes,
              "bit-identical to the scalar kernels, optimizer gathers " + std::to_string(other));
        bnb_cpu_set_optimizer_gathers(-1);
        printf("%-7s %d thread(s), optimizer gathers %d: %s\n", isa.c_str(), threads, other,
               g_failures ? "FAILED" : "ok");
      }
    }
  }
  for (int threads : {1, 2}) {
    bnb_cpu_set_num_threads(threads);
    check(bnb_cpu_set_isa("auto") == BNB_OK, "set_isa auto");
    amx_path();
    int8_gemm_rows();
  }
  printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
