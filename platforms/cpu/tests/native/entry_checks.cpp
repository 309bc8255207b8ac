// Argument checks and exact edge values of the C entry points: the second file of the C ABI test
// driver (with test_c_abi.cpp, which runs them).
#include "entry_checks.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <utility>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/codebooks.h"
#include "cpu_extras.h"
#include "inputs.h"

// A partial last block (blocks of 64, n = 101): each block's largest magnitude is its absmax and
// comes back exactly (the codes of -1.0 and 1.0), as does 0.0 in NF4, whose code also pads the
// odd count's last low nibble.
void exact_tails() {
  const int64_t n = 101;
  std::vector<float> x(n), out4(n, 9.0f), out8(n, 9.0f), am4(2, -1.0f), am8(2, -1.0f);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 5) - 2.0f;
  x[10] = 3.0f;
  x[99] = -6.0f;
  std::vector<uint8_t> packed(51, 0xee), q(n, 0xee);
  const auto code = dynamic_code();
  const int32_t s1 = bnb_quantize_4bit(x.data(), 0, n, 64, BNB_QUANT_NF4, packed.data(), am4.data(), nullptr);
  const int32_t s2 = bnb_dequantize_4bit(packed.data(), am4.data(), n, 64, BNB_QUANT_NF4, out4.data(), 0, nullptr);
  const int32_t s3 = bnb_quantize_blockwise(x.data(), 0, code.data(), n, 64, q.data(), am8.data(), nullptr);
  const int32_t s4 = bnb_dequantize_blockwise(q.data(), code.data(), am8.data(), n, 64, out8.data(), 0, nullptr);
  const bool ok = s1 == BNB_OK && s2 == BNB_OK && s3 == BNB_OK && s4 == BNB_OK;
  check(ok && am4 == std::vector<float>{3.0f, 6.0f} && am8 == am4, "absmax of a partial last block");
  check(out4[10] == 3.0f && out4[99] == -6.0f && out4[97] == 0.0f && (packed[50] & 15) == 7 && q[99] == 0 &&
            out8[10] == 3.0f && out8[99] == -6.0f && out8[100] != 9.0f,
        "a partial last block comes back");
}

// G @ W for a 4-bit weight of odd blocksize (codes and absmax made directly): its blocks past the
// first start mid-byte.
void odd_blocksize_matmul() {
  const int64_t m = 2, nn = 5, k = 33, bs = 3;
  const auto g = randn(m * nn, 35);
  std::vector<uint8_t> packed((nn * k + 1) / 2);
  std::vector<float> absmax(nn * k / bs), out(m * k);
  for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i * 97 % 256);
  for (size_t b = 0; b < absmax.size(); ++b) absmax[b] = 0.5f + static_cast<float>(b % 5);
  bool ok = bnb_cpu_weight_matmul_t(g.data(), BNB_DTYPE_F32, m, nn, k, nullptr, nullptr, packed.data(), absmax.data(),
                                    BNB_QUANT_NF4, bs, out.data()) == BNB_OK;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      double s = 0.0, sa = 0.0;
      for (int64_t j = 0; j < nn; ++j) {
        const int64_t e = j * k + i;
        const double w = bnb::decode_4bit(1, (e & 1) ? (packed[e / 2] & 15) : (packed[e / 2] >> 4)) * absmax[e / bs];
        s += g[r * nn + j] * w;
        sa += fabs(g[r * nn + j] * w);
      }
      ok = ok && fabs(s - out[r * k + i]) <= 1e-5 * sa + 1e-6;
    }
  }
  check(ok, "weight_matmul_t 4-bit blocksize 3 matches the naive product");
}

// A refused call: its status is `want` and the last error holds `words`.
static void refused(int32_t status, int32_t want, const char* words, const std::string& what) {
  check(status == want && strstr(bnb_last_error(), words) != nullptr,
        what + ": status " + std::to_string(status) + ", message '" + bnb_last_error() + "'");
}

// Each entry's other argument checks: the status a bad argument gets, the message naming it, and
// nothing written; a call that succeeds clears the message.
void more_bad_arguments() {
  std::vector<float> x(64, 1.0f), sink(64, -1.0f);
  std::vector<uint8_t> packed(32, 0xab);
  float absmax[2] = {-1.0f, -1.0f};
  const auto code = dynamic_code();
  for (int64_t n : {0, -1}) {
    refused(bnb_quantize_4bit(x.data(), 0, n, 64, 1, packed.data(), absmax, nullptr), BNB_ERR_INVALID_ARGUMENT,
            "n must", "quantize_4bit n = " + std::to_string(n));
    refused(bnb_dequantize_blockwise(packed.data(), code.data(), absmax, n, 64, sink.data(), 0, nullptr),
            BNB_ERR_INVALID_ARGUMENT, "n must", "dequantize_blockwise n = " + std::to_string(n));
  }
  for (int64_t bs : {16, 8192, 0, -64}) {
    refused(bnb_dequantize_4bit(packed.data(), absmax, 64, bs, 1, sink.data(), 0, nullptr), BNB_ERR_INVALID_BLOCKSIZE,
            "blocksize", "dequantize_4bit blocksize " + std::to_string(bs));
  }
  refused(bnb_quantize_blockwise(x.data(), 0, code.data(), 64, 0, packed.data(), absmax, nullptr),
          BNB_ERR_INVALID_BLOCKSIZE, "blocksize", "quantize_blockwise blocksize 0");
  refused(bnb_dequantize_blockwise(packed.data(), code.data(), absmax, 64, -1, sink.data(), 0, nullptr),
          BNB_ERR_INVALID_BLOCKSIZE, "blocksize", "dequantize_blockwise blocksize -1");
  for (int32_t qt : {2, -1}) {
    refused(bnb_quantize_4bit(x.data(), 0, 64, 64, qt, packed.data(), absmax, nullptr), BNB_ERR_UNSUPPORTED_QUANT_TYPE,
            "quant_type", "quantize_4bit quant_type " + std::to_string(qt));
    refused(bnb_dequantize_4bit(packed.data(), absmax, 64, 64, qt, sink.data(), 0, nullptr),
            BNB_ERR_UNSUPPORTED_QUANT_TYPE, "quant_type", "dequantize_4bit quant_type " + std::to_string(qt));
  }
  refused(bnb_dequantize_4bit(packed.data(), absmax, 64, 64, 1, sink.data(), BNB_DTYPE_U8, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "dtype", "dequantize_4bit out_dtype u8");
  refused(bnb_dequantize_blockwise(packed.data(), code.data(), absmax, 64, 64, sink.data(), -1, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "dtype", "dequantize_blockwise out_dtype -1");
  refused(bnb_quantize_blockwise(x.data(), 0, nullptr, 64, 64, packed.data(), absmax, nullptr), BNB_ERR_NULL_POINTER,
          "code", "quantize_blockwise without code");
  {                                     // a code book the searching quantizer cannot use: out of order, NaN or infinite
    std::vector<uint8_t> q8(64, 0xab);  // room for the whole output: a refusal must write none of it
    float am8 = -1.0f;
    const auto refuse = [&](const std::vector<float>& book, const char* words, const std::string& what) {
      refused(bnb_quantize_blockwise(x.data(), 0, book.data(), 64, 64, q8.data(), &am8, nullptr),
              BNB_ERR_INVALID_ARGUMENT, words, what);
    };
    auto bad = code;
    std::swap(bad[100], bad[101]);
    refuse(bad, "code must be in ascending order, got code[101]", "quantize_blockwise code with two entries swapped");
    bad = code;
    bad[7] = -NAN;  // named "nan" whatever its sign bit, as Python prints it
    refuse(bad, "code must hold finite values, got code[7] = nan", "quantize_blockwise code NaN");
    bad = code;
    bad[255] = INFINITY;
    refuse(bad, "code[255]", "quantize_blockwise code +inf last");
    bad = code;
    bad[0] = -INFINITY;
    refuse(bad, "code[0]", "quantize_blockwise code -inf first");
    check(q8 == std::vector<uint8_t>(64, 0xab) && am8 == -1.0f, "nothing written for a code book out of order");
    // equal neighbours are allowed (a tie takes the lower entry): 255 zeros, then 1
    std::vector<float> ties(256, 0.0f);
    ties[255] = 1.0f;
    check(bnb_quantize_blockwise(x.data(), 0, ties.data(), 64, 64, q8.data(), &am8, nullptr) == BNB_OK &&
              q8 == std::vector<uint8_t>(64, 255) && am8 == 1.0f,
          "quantize_blockwise code book with equal neighbours");
  }
  check(packed == std::vector<uint8_t>(32, 0xab) && absmax[0] == -1.0f && absmax[1] == -1.0f &&
            sink == std::vector<float>(64, -1.0f),
        "nothing written by the refused (de)quantizations");
  // 4-bit matmul and LLM.int8()
  refused(bnb_gemm_4bit(x.data(), 0, 1, 2, 32, packed.data(), absmax, x.data(), 0, nullptr, sink.data(), nullptr),
          BNB_ERR_INVALID_BLOCKSIZE, "blocksize", "gemm_4bit blocksize 0");
  refused(bnb_gemm_4bit(x.data(), 0, -1, 2, 32, packed.data(), absmax, x.data(), 64, nullptr, sink.data(), nullptr),
          BNB_ERR_INVALID_ARGUMENT, "m >= 0", "gemm_4bit m = -1");
  refused(bnb_gemm_4bit(x.data(), 0, 0, 2, 32, packed.data(), absmax, nullptr, 64, nullptr, sink.data(), nullptr),
          BNB_ERR_NULL_POINTER, "code", "gemm_4bit without code (no rows)");
  std::vector<int8_t> q(64, 7);
  float stats[2] = {-1.0f, -1.0f};
  refused(bnb_int8_vectorwise_quant(x.data(), 0, 2, 32, 3.0f, q.data(), stats, nullptr, nullptr), BNB_ERR_NULL_POINTER,
          "outlier_cols", "int8_vectorwise_quant threshold > 0 without outlier_cols");
  refused(bnb_int8_vectorwise_quant(x.data(), 0, 2, 32, NAN, q.data(), stats, packed.data(), nullptr),
          BNB_ERR_INVALID_ARGUMENT, "threshold", "int8_vectorwise_quant threshold NaN");
  refused(bnb_int8_vectorwise_quant(x.data(), 0, -2, 32, 0.0f, q.data(), stats, nullptr, nullptr),
          BNB_ERR_INVALID_ARGUMENT, "rows", "int8_vectorwise_quant rows = -2");
  std::vector<int32_t> C(4, 5);
  const int64_t cols[2] = {0, 32};
  refused(bnb_cpu_int8_linear_matmul_gather(q.data(), q.data(), 1, 2, 32, C.data(), cols, 2, q.data()),
          BNB_ERR_INVALID_ARGUMENT, "cols[1] = 32", "int8_linear_matmul_gather column k");
  refused(bnb_cpu_int8_linear_matmul_gather(q.data(), q.data(), 1, 2, 32, C.data(), nullptr, 2, q.data()),
          BNB_ERR_NULL_POINTER, "cols", "int8_linear_matmul_gather without cols");
  refused(bnb_int8_mm_dequant(C.data(), x.data(), x.data(), 2, 2, x.data(), BNB_DTYPE_I32, sink.data(), 0, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "bias", "int8_mm_dequant bias dtype i32");
  refused(bnb_int8_mm_dequant(C.data(), x.data(), x.data(), 2, -2, nullptr, 0, sink.data(), 0, nullptr),
          BNB_ERR_INVALID_ARGUMENT, "n must", "int8_mm_dequant n = -2");
  check(q == std::vector<int8_t>(64, 7) && stats[0] == -1.0f && C == std::vector<int32_t>(4, 5) &&
            sink == std::vector<float>(64, -1.0f),
        "nothing written by the refused matmuls");
  // Optimizers
  bnb_optimizer_hparams h = {0.9f, 0.99f, 0.999f, 2.0f, 1e-6f, 0.0f, 1e-3f, 1.0f, 0.0f, 0.0f, 1, 0};
  std::vector<float> g(64, 0.1f), p(64, 1.0f), s1(64, 0.5f), s2(64, 0.5f);
  for (int32_t opt : {-1, BNB_OPTIM_LARS + 1}) {
    refused(bnb_optimizer_update_32bit(opt, g.data(), p.data(), 0, s1.data(), s2.data(), nullptr, 64, &h, nullptr),
            BNB_ERR_INVALID_ARGUMENT, "optimizer", "optimizer id " + std::to_string(opt));
  }
  refused(
      bnb_optimizer_update_32bit(BNB_OPTIM_ADAM, g.data(), p.data(), 0, s1.data(), nullptr, nullptr, 64, &h, nullptr),
      BNB_ERR_NULL_POINTER, "state2", "32-bit Adam without state2");
  h.max_unorm = 1.0;
  refused(bnb_optimizer_update_32bit(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, s1.data(), nullptr, nullptr, 0, &h,
                                     nullptr),
          BNB_ERR_NULL_POINTER, "unorm_vec", "32-bit clipping without unorm_vec (empty parameter)");
  h.max_unorm = 0.0;
  refused(bnb_optimizer_update_32bit(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, s1.data(), nullptr, nullptr,
                                     INT64_MAX / 8, &h, nullptr),
          BNB_ERR_INVALID_ARGUMENT, "too large", "32-bit n past INT64_MAX / 16");
  std::vector<uint8_t> st1(64, 128), st2(64, 128);
  std::vector<float> am1(1, 1.0f);
  refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_ADAM, g.data(), p.data(), 0, st1.data(), st2.data(),
                                              code.data(), code.data(), am1.data(), nullptr, 64, &h, nullptr),
          BNB_ERR_NULL_POINTER, "absmax2", "8-bit Adam without absmax2");
  h.step = 0;
  refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, st1.data(), nullptr,
                                              code.data(), nullptr, am1.data(), nullptr, 64, &h, nullptr),
          BNB_ERR_INVALID_ARGUMENT, "step", "8-bit step 0");
  h.step = 1;
  {
    auto bad = code;
    std::swap(bad[0], bad[255]);
    refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, st1.data(), nullptr,
                                                bad.data(), nullptr, am1.data(), nullptr, 64, &h, nullptr),
            BNB_ERR_INVALID_ARGUMENT, "qmap1 must be in ascending order, got qmap1[1]", "8-bit qmap1 out of order");
    bad = code;
    bad[128] = NAN;
    std::vector<float> am2(1, 1.0f);
    refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_ADAM, g.data(), p.data(), 0, st1.data(), st2.data(),
                                                code.data(), bad.data(), am1.data(), am2.data(), 0, &h, nullptr),
            BNB_ERR_INVALID_ARGUMENT, "qmap2 must hold finite values, got qmap2[128]",
            "8-bit Adam qmap2 NaN (empty parameter)");
  }
  check(p == std::vector<float>(64, 1.0f) && s1 == std::vector<float>(64, 0.5f) &&
            st1 == std::vector<uint8_t>(64, 128) && am1[0] == 1.0f,
        "nothing written by the refused updates");
  // A success clears the message; each status has its own text.
  check(bnb_cpu_int8_expand(q.data(), 4, sink.data(), 0) == BNB_OK && bnb_last_error()[0] == '\0',
        "a call that succeeds clears the last error");
  check(strcmp(bnb_status_string(BNB_ERR_INVALID_BLOCKSIZE), "invalid blocksize") == 0 &&
            strcmp(bnb_status_string(BNB_ERR_UNSUPPORTED_DTYPE), "unsupported dtype") == 0 &&
            strcmp(bnb_status_string(42), "unknown status") == 0,
        "status strings");
  // An instruction set this build or CPU cannot run is refused and changes nothing.
  const std::string usable = std::string(",") + bnb_cpu_usable_isas() + ",", before = bnb_cpu_get_isa();
  for (const char* isa : {"scalar", "avx2", "avx512", "neon"}) {
    if (usable.find(std::string(",") + isa + ",") != std::string::npos) continue;
    refused(bnb_cpu_set_isa(isa), BNB_ERR_INVALID_ARGUMENT, "not usable", std::string("set_isa ") + isa);
    check(before == bnb_cpu_get_isa(), std::string("set_isa ") + isa + " leaves the instruction set");
  }
  // The thread count: as asked, all hardware threads for <= 0, at most those.
  bnb_cpu_set_num_threads(0);
  const int32_t all = bnb_cpu_get_num_threads();
  bnb_cpu_set_num_threads(1);
  const int32_t one = bnb_cpu_get_num_threads();
  bnb_cpu_set_num_threads(1 << 20);
  check(all >= 1 && one == 1 && bnb_cpu_get_num_threads() == all, "thread counts 0, 1 and 2^20");
  bnb_cpu_set_num_threads(0);
}

// Every argument check of the entry points that more_bad_arguments leaves, once each: one bad
// argument in an otherwise valid call gets its status and a message naming it, and nothing is
// written. (A mutation campaign that made each check's condition true found these unseen by the
// driver. The checks of an allocation's result need the allocation to fail: test_alloc_faults.cpp's.)
void each_check_once() {
  std::vector<float> x(64, 1.0f), sink(64, -1.0f), am(2, 1.0f), stats(2, -1.0f);
  std::vector<uint8_t> packed(32, 0xab);
  std::vector<int8_t> q(64, 7), cb(64, 3);
  std::vector<int32_t> C(4, 5);
  const auto code = dynamic_code();
  const char* nulls4 = "packed, absmax and out must not be NULL";
  refused(bnb_dequantize_4bit(nullptr, am.data(), 64, 64, 1, sink.data(), 0, nullptr), BNB_ERR_NULL_POINTER, nulls4,
          "dequantize_4bit packed NULL");
  refused(bnb_dequantize_4bit(packed.data(), nullptr, 64, 64, 1, sink.data(), 0, nullptr), BNB_ERR_NULL_POINTER, nulls4,
          "dequantize_4bit absmax NULL");
  refused(bnb_dequantize_4bit(packed.data(), am.data(), 64, 64, 1, nullptr, 0, nullptr), BNB_ERR_NULL_POINTER, nulls4,
          "dequantize_4bit out NULL");
  refused(bnb_quantize_blockwise(x.data(), BNB_DTYPE_I32, code.data(), 64, 64, packed.data(), am.data(), nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype", "quantize_blockwise dtype i32");
  const char* nulls8 = "A, code, absmax and out must not be NULL";
  refused(bnb_dequantize_blockwise(nullptr, code.data(), am.data(), 64, 64, sink.data(), 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls8, "dequantize_blockwise A NULL");
  refused(bnb_dequantize_blockwise(packed.data(), code.data(), nullptr, 64, 64, sink.data(), 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls8, "dequantize_blockwise absmax NULL");
  refused(bnb_dequantize_blockwise(packed.data(), code.data(), am.data(), 64, 64, nullptr, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls8, "dequantize_blockwise out NULL");
  // Optimizers
  bnb_optimizer_hparams h = {0.9f, 0.99f, 0.999f, 2.0f, 1e-6f, 0.0f, 1e-3f, 1.0f, 0.0f, 0.0f, 1, 0};
  std::vector<float> g(64, 0.1f), p(64, 1.0f), s1(64, 0.5f);
  std::vector<uint8_t> st1(64, 128);
  refused(bnb_optimizer_update_32bit(BNB_OPTIM_MOMENTUM, g.data(), p.data(), BNB_DTYPE_U8, s1.data(), nullptr, nullptr,
                                     64, &h, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "g and p must be", "32-bit dtype u8");
  refused(bnb_optimizer_update_32bit(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, s1.data(), nullptr, nullptr, -1, &h,
                                     nullptr),
          BNB_ERR_INVALID_ARGUMENT, "n must be >= 0", "32-bit n = -1");
  refused(
      bnb_optimizer_update_32bit(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, nullptr, nullptr, nullptr, 64, &h, nullptr),
      BNB_ERR_NULL_POINTER, "state1 must not be NULL", "32-bit state1 NULL");
  const char* nulls_8bit = "state1, qmap1 and absmax1 must not be NULL";
  refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, nullptr, nullptr, code.data(),
                                              nullptr, am.data(), nullptr, 64, &h, nullptr),
          BNB_ERR_NULL_POINTER, nulls_8bit, "8-bit state1 NULL");
  refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, st1.data(), nullptr, nullptr,
                                              nullptr, am.data(), nullptr, 64, &h, nullptr),
          BNB_ERR_NULL_POINTER, nulls_8bit, "8-bit qmap1 NULL");
  refused(bnb_optimizer_update_8bit_blockwise(BNB_OPTIM_MOMENTUM, g.data(), p.data(), 0, st1.data(), nullptr,
                                              code.data(), nullptr, nullptr, nullptr, 64, &h, nullptr),
          BNB_ERR_NULL_POINTER, nulls_8bit, "8-bit absmax1 NULL");
  // 4-bit matmul and LLM.int8()
  refused(bnb_gemm_4bit(x.data(), BNB_DTYPE_I8, 1, 2, 32, packed.data(), am.data(), x.data(), 64, nullptr, sink.data(),
                        nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype", "gemm_4bit dtype i8");
  const char* nulls_vq = "A, out and row_stats must not be NULL";
  refused(bnb_int8_vectorwise_quant(nullptr, 0, 2, 32, 0.0f, q.data(), stats.data(), nullptr, nullptr),
          BNB_ERR_NULL_POINTER, nulls_vq, "int8_vectorwise_quant A NULL");
  refused(bnb_int8_vectorwise_quant(x.data(), 0, 2, 32, 0.0f, nullptr, stats.data(), nullptr, nullptr),
          BNB_ERR_NULL_POINTER, nulls_vq, "int8_vectorwise_quant out NULL");
  refused(bnb_int8_vectorwise_quant(x.data(), 0, 2, 32, 0.0f, q.data(), nullptr, nullptr, nullptr),
          BNB_ERR_NULL_POINTER, nulls_vq, "int8_vectorwise_quant row_stats NULL");
  refused(bnb_int8_vectorwise_quant(x.data(), BNB_DTYPE_U8, 2, 32, 0.0f, q.data(), stats.data(), nullptr, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype", "int8_vectorwise_quant dtype u8");
  const char* nulls_mm = "A, B and C must not be NULL";
  refused(bnb_cpu_int8_linear_matmul_gather(nullptr, q.data(), 1, 2, 32, C.data(), nullptr, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_mm, "int8_linear_matmul A NULL");
  refused(bnb_cpu_int8_linear_matmul_gather(q.data(), nullptr, 1, 2, 32, C.data(), nullptr, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_mm, "int8_linear_matmul B NULL");
  refused(bnb_cpu_int8_linear_matmul_gather(q.data(), q.data(), 1, 2, 32, nullptr, nullptr, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_mm, "int8_linear_matmul C NULL");
  for (auto mnk : {std::vector<int64_t>{-1, 2, 32}, {1, -2, 32}, {1, 2, -32}}) {
    refused(
        bnb_cpu_int8_linear_matmul_gather(q.data(), q.data(), mnk[0], mnk[1], mnk[2], C.data(), nullptr, 0, nullptr),
        BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0", "int8_linear_matmul a negative size");
    refused(
        bnb_cpu_int8_weight_matmul(x.data(), 0, mnk[0], mnk[1], mnk[2], cb.data(), am.data(), nullptr, 0, sink.data()),
        BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0", "int8_weight_matmul a negative size");
    refused(bnb_cpu_weight_matmul_t(x.data(), 0, mnk[0], mnk[1], mnk[2], cb.data(), am.data(), nullptr, nullptr, 0, 0,
                                    sink.data()),
            BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0", "weight_matmul_t a negative size");
    refused(bnb_cpu_weight_matmul_amx(x.data(), mnk[0], mnk[1], mnk[2], cb.data(), am.data(), nullptr, nullptr, 0, 0,
                                      nullptr, 0, sink.data()),
            BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0", "weight_matmul_amx a negative size");
  }
  refused(bnb_cpu_int8_linear_matmul_gather(q.data(), q.data(), 1, 2, 32, C.data(), nullptr, -1, nullptr),
          BNB_ERR_INVALID_ARGUMENT, "ncols must be >= 0, got -1", "int8_linear_matmul_gather ncols = -1");
  refused(bnb_cpu_int8_weight_matmul(x.data(), 0, 1, 2, 32, cb.data(), am.data(), x.data(), BNB_DTYPE_I32, sink.data()),
          BNB_ERR_UNSUPPORTED_DTYPE, "bias's dtype", "int8_weight_matmul bias dtype i32");
  const char* nulls_t = "A and out must not be NULL";
  refused(bnb_cpu_weight_matmul_t(nullptr, 0, 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, sink.data()),
          BNB_ERR_NULL_POINTER, nulls_t, "weight_matmul_t A NULL");
  refused(bnb_cpu_weight_matmul_t(x.data(), 0, 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_t, "weight_matmul_t out NULL");
  refused(bnb_cpu_weight_matmul_t(x.data(), BNB_DTYPE_U8, 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0,
                                  sink.data()),
          BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype", "weight_matmul_t dtype u8");
  refused(bnb_cpu_int8_expand(q.data(), -1, sink.data(), 0), BNB_ERR_INVALID_ARGUMENT, "n must be >= 0, got -1",
          "int8_expand n = -1");
  // The panel (AMX) entries: their checks before the one of where they run.
  const char* weight = "give either CB and SCB (int8 weight) or B4 and absmax (4-bit weight)";
  refused(
      bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 32, nullptr, nullptr, nullptr, nullptr, 0, 0, nullptr, 0, sink.data()),
      BNB_ERR_NULL_POINTER, weight, "weight_matmul_amx without a weight");
  refused(bnb_cpu_weight_matmul_t_amx(x.data(), 1, 2, 32, cb.data(), am.data(), packed.data(), am.data(), 1, 64,
                                      sink.data()),
          BNB_ERR_NULL_POINTER, weight, "weight_matmul_t_amx with both weights");
  refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 64, nullptr, nullptr, packed.data(), am.data(), 3, 64, nullptr, 0,
                                    sink.data()),
          BNB_ERR_UNSUPPORTED_QUANT_TYPE, "quant_type must be NF4 or FP4, got 3", "weight_matmul_amx quant_type 3");
  refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 64, nullptr, nullptr, packed.data(), am.data(), 1, 0, nullptr, 0,
                                    sink.data()),
          BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got 0", "weight_matmul_amx blocksize 0");
  refused(bnb_cpu_weight_matmul_amx(nullptr, 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, nullptr, 0,
                                    sink.data()),
          BNB_ERR_NULL_POINTER, "A and out must not be NULL", "weight_matmul_amx A NULL");
  refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, x.data(),
                                    BNB_DTYPE_U8, sink.data()),
          BNB_ERR_UNSUPPORTED_DTYPE, "bias's dtype", "weight_matmul_amx bias dtype u8");
  refused(bnb_cpu_weight_matmul_t_amx(x.data(), 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, nullptr),
          BNB_ERR_NULL_POINTER, "G and out must not be NULL", "weight_matmul_t_amx out NULL");
  // The shapes the panels cannot take, named as such on every machine (checked before whether the
  // panels run here).
  refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 96, nullptr, nullptr, packed.data(), am.data(), 1, 64, nullptr, 0,
                                    sink.data()),
          BNB_ERR_NOT_IMPLEMENTED, "needs k (96) to be a multiple of blocksize (64)",
          "weight_matmul_amx k % blocksize");
  refused(
      bnb_cpu_weight_matmul_t_amx(x.data(), 1, 2, 96, nullptr, nullptr, packed.data(), am.data(), 1, 64, sink.data()),
      BNB_ERR_NOT_IMPLEMENTED, "needs k (96) to be a multiple of blocksize (64)", "weight_matmul_t_amx k % blocksize");
  refused(
      bnb_cpu_weight_matmul_t_amx(x.data(), 1, 2, 96, nullptr, nullptr, packed.data(), am.data(), 1, 48, sink.data()),
      BNB_ERR_NOT_IMPLEMENTED, "blocksize of 2, 4, 8, 16 or a multiple of 32, got 48",
      "weight_matmul_t_amx blocksize 48");
  refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 48, cb.data(), am.data(), nullptr, nullptr, 0, 0, nullptr, 0,
                                    sink.data()),
          BNB_ERR_NOT_IMPLEMENTED, "needs k (48) to be a multiple of 32", "weight_matmul_amx k 48");
  if (!bnb_cpu_panel_usable()) {
    refused(bnb_cpu_weight_matmul_amx(x.data(), 1, 2, 32, cb.data(), am.data(), nullptr, nullptr, 0, 0, nullptr, 0,
                                      sink.data()),
            BNB_ERR_NOT_IMPLEMENTED, "the panel matmuls do not run here", "weight_matmul_amx where panels cannot run");
  }
  const char* nulls_dq = "C, row_stats, col_stats and out must not be NULL";
  refused(bnb_int8_mm_dequant(nullptr, x.data(), x.data(), 2, 2, nullptr, 0, sink.data(), 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_dq, "int8_mm_dequant C NULL");
  refused(bnb_int8_mm_dequant(C.data(), nullptr, x.data(), 2, 2, nullptr, 0, sink.data(), 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_dq, "int8_mm_dequant row_stats NULL");
  refused(bnb_int8_mm_dequant(C.data(), x.data(), nullptr, 2, 2, nullptr, 0, sink.data(), 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_dq, "int8_mm_dequant col_stats NULL");
  refused(bnb_int8_mm_dequant(C.data(), x.data(), x.data(), 2, 2, nullptr, 0, nullptr, 0, nullptr),
          BNB_ERR_NULL_POINTER, nulls_dq, "int8_mm_dequant out NULL");
  refused(bnb_int8_mm_dequant(C.data(), x.data(), x.data(), 2, 2, nullptr, 0, sink.data(), BNB_DTYPE_I32, nullptr),
          BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype", "int8_mm_dequant out dtype i32");
  check(sink == std::vector<float>(64, -1.0f) && packed == std::vector<uint8_t>(32, 0xab) &&
            am == std::vector<float>(2, 1.0f) && stats == std::vector<float>(2, -1.0f) &&
            q == std::vector<int8_t>(64, 7) && C == std::vector<int32_t>(4, 5) && p == std::vector<float>(64, 1.0f) &&
            s1 == std::vector<float>(64, 0.5f) && st1 == std::vector<uint8_t>(64, 128),
        "nothing written by the refused calls");
  const std::string before = bnb_cpu_get_isa();
  refused(bnb_cpu_set_isa("avx1024"), BNB_ERR_INVALID_ARGUMENT, "unknown instruction set 'avx1024'", "set_isa avx1024");
  check(before == bnb_cpu_get_isa(), "set_isa avx1024 leaves the instruction set");
}
