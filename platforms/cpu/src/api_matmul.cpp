// C ABI entry points of the 4-bit matmul and the LLM.int8() ops.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/numeric.h"
#include "element.h"
#include "fault_injection.h"
#include "kernels.h"
#include "kernels_amx.h"
#include "status.h"
#include "threading.h"

namespace {

using bnb_cpu::kernels;
using bnb_cpu::parallel_for;

// Per-thread scratch reused across calls (grown, never shrunk): no allocation per call once warm.
// NULL when the memory cannot be had: no C++ exception may cross the C ABI.
// `slot` keeps apart buffers that are alive at the same time on one thread: 0 the kernels' own
// (gemm_4bit's prepared A, weight_matmul_t's sums, the AMX path's packed A), 1 an input converted to
// f32 (or a bias), 2 per-row scales, 3 the AMX path's weight panel (on every worker thread).
void* scratch(int64_t bytes, int slot = 0) {
  thread_local std::vector<uint8_t> bufs[4];
  std::vector<uint8_t>& buf = bufs[slot];
  if (bnb_cpu::fail_allocation("scratch")) return nullptr;
  if (static_cast<int64_t>(buf.size()) < bytes + 64) {
    try {
      buf.resize(static_cast<size_t>(bytes + 64));
    } catch (const std::exception&) {
      return nullptr;
    }
  }
  // 64-byte aligned: a tile or vector row then never straddles two cache lines.
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + ((64 - at % 64) % 64);
}

// A as f32: A itself, or a conversion into this thread's scratch slot 1 (NULL: out of memory).
const float* f32_rows(const void* A, int32_t dtype, int64_t count) {
  if (dtype == BNB_DTYPE_F32) return static_cast<const float*>(A);
  auto* buf = static_cast<float*>(scratch(count * static_cast<int64_t>(sizeof(float)), 1));
  if (!buf) return nullptr;
  bnb_cpu::dispatch_float(dtype, [&](auto e) {
    using E = decltype(e);
    const auto* src = static_cast<const typename E::type*>(A);
    for (int64_t i = 0; i < count; ++i) buf[i] = E::load(src[i]);
  });
  return buf;
}

// SCB / 127 per weight row, in this thread's scratch slot 2 (NULL: out of memory).
const float* row_scales(const float* SCB, int64_t n) {
  auto* scale = static_cast<float*>(scratch(n * static_cast<int64_t>(sizeof(float)), 2));
  if (scale) {
    for (int64_t j = 0; j < n; ++j) scale[j] = SCB[j] * (1.0f / 127.0f);
  }
  return scale;
}

// The AMX entries' pass structure: A (or G) is taken `per_pass` rows at a time; each pass first
// lays its slice out for the tile unit (prepare(r0, rows)), then covers `parts` parts split over
// the threads, each thread with work_bytes(rows) of its scratch slot 3 (the calling thread's slots
// 0-2 hold what prepare wrote, a bias and the row scales): run(work, r0, rows, p0, p1). False when
// a thread's work space cannot be had; the passes stop there.
template <typename Prepare, typename WorkBytes, typename Run>
bool amx_passes(int64_t m, int64_t per_pass, int64_t parts, Prepare prepare, WorkBytes work_bytes, Run run) {
  std::atomic<bool> failed{false};
  for (int64_t r0 = 0; r0 < m && !failed.load(); r0 += per_pass) {
    const int64_t rows = std::min(per_pass, m - r0);
    prepare(r0, rows);
    parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      void* work = scratch(work_bytes(rows), 3);
      if (!work) {
        failed = true;
        return;
      }
      run(work, r0, rows, p0, p1);
    });
  }
  return !failed.load();
}

}  // namespace

extern "C" {

BNB_API int32_t bnb_cpu_int8_weight_matmul(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k,
                                           const int8_t* CB, const float* SCB, const void* bias, int32_t bias_dtype,
                                           void* out);
BNB_API int32_t bnb_cpu_int8_expand(const int8_t* src, int64_t n, void* out, int32_t dtype);
BNB_API int32_t bnb_cpu_weight_matmul_t(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                        const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                        int64_t blocksize, void* out);

BNB_API int32_t bnb_cpu_int8_linear_matmul_gather(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k,
                                                  int32_t* C, const int64_t* cols, int64_t ncols, int8_t* Bcols);
BNB_API int32_t bnb_cpu_weight_matmul_amx(const void* A, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                          const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                          int64_t blocksize, const void* bias, int32_t bias_dtype, void* out);
BNB_API int32_t bnb_cpu_weight_matmul_t_amx(const void* G, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                            const float* SCB, const uint8_t* B4, const float* absmax,
                                            int32_t quant_type, int64_t blocksize, void* out);

int32_t bnb_gemm_4bit(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const uint8_t* B,
                      const float* absmax, const float* code, int64_t blocksize, const void* bias, void* out,
                      bnb_stream) {
  BNB_REQUIRE(A && B && absmax && code && out, BNB_ERR_NULL_POINTER, "A, B, absmax, code and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m >= 0 && n > 0 && k > 0, BNB_ERR_INVALID_ARGUMENT, "need m >= 0, n > 0, k > 0 (got %lld, %lld, %lld)",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
  BNB_REQUIRE(blocksize > 0, BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got %lld",
              static_cast<long long>(blocksize));
  if (m == 0) return bnb_cpu::ok();
  const auto& kt = kernels();
  bnb_cpu::Gemm4bitArgs args{A, dtype, m, n, k, B, absmax, code, blocksize, bias, out, nullptr};
  const int64_t bytes = kt.gemm_4bit_prepare_bytes(args);
  if (bytes > 0) {
    void* buf = scratch(bytes);
    BNB_REQUIRE(buf, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the %lld-byte scratch buffer",
                static_cast<long long>(bytes));
    kt.gemm_4bit_prepare(args, buf);
    args.prepared = buf;
  }
  // At least 16 weight rows and ~64 Ki weights per range: smaller ones cost less than starting a
  // parallel region.
  const int64_t grain = k >= 4096 ? 16 : (65536 / k + 15) / 16 * 16;
  parallel_for(n, grain, [&](int64_t n0, int64_t n1) { kt.gemm_4bit(args, n0, n1); });
  return bnb_cpu::ok();
}

int32_t bnb_int8_vectorwise_quant(const void* A, int32_t dtype, int64_t rows, int64_t cols, float threshold,
                                  int8_t* out, float* row_stats, uint8_t* outlier_cols, bnb_stream) {
  BNB_REQUIRE(A && out && row_stats, BNB_ERR_NULL_POINTER, "A, out and row_stats must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(rows >= 0 && cols >= 0, BNB_ERR_INVALID_ARGUMENT, "rows and cols must be >= 0");
  BNB_REQUIRE(threshold >= 0.0f, BNB_ERR_INVALID_ARGUMENT, "threshold must be >= 0");
  BNB_REQUIRE(threshold == 0.0f || outlier_cols, BNB_ERR_NULL_POINTER, "outlier_cols is required when threshold > 0");
  if (rows == 0) return bnb_cpu::ok();
  const auto& kt = kernels();
  if (threshold > 0.0f) {
    memset(outlier_cols, 0, static_cast<size_t>(cols));
    // Row ranges, each scanned into flags of its own, then ORed together: every range reads whole
    // rows in order (column ranges per thread read a few bytes of every row, and took 2-3x longer).
    const int64_t parts = rows < 16 ? rows : 16;
    const size_t es = static_cast<size_t>(bnb_cpu::dtype_size(dtype));
    uint8_t* part_flags = static_cast<uint8_t*>(scratch(parts * cols));
    BNB_REQUIRE(part_flags, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the %lld-byte outlier scratch buffer",
                static_cast<long long>(parts * cols));
    memset(part_flags, 0, static_cast<size_t>(parts * cols));
    parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
        kt.int8_outlier_scan(static_cast<const char*>(A) + static_cast<size_t>(r0 * cols) * es, dtype, r1 - r0, cols,
                             threshold, part_flags + p * cols);
      }
    });
    for (int64_t p = 0; p < parts; ++p) {
      const uint8_t* f = part_flags + p * cols;
      for (int64_t c = 0; c < cols; ++c) outlier_cols[c] |= f[c];
    }
  }
  const uint8_t* zero_cols = (threshold > 0.0f && rows > 1) ? outlier_cols : nullptr;
  const int64_t grain = cols > 0 ? 1 + 16384 / (cols + 1) : rows;
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    kt.int8_vectorwise_quant(A, dtype, cols, threshold, out, row_stats, zero_cols, r0, r1);
  });
  return bnb_cpu::ok();
}

}  // extern "C"

namespace {

// The int8 GEMM on the AMX-INT8 tile unit, A taken kInt8Rows rows per pass (packed into scratch
// slot 0), the weight's blocks of 32 rows split over the threads; `after(n0, n1)` runs on each
// thread's rows once their products are done. False when the scratch memory cannot be had: the
// caller then runs the VNNI kernel, which writes every output again.
template <typename After>
bool int8_matmul_amx(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C, After after) {
  namespace amx = bnb_cpu::amx;
  auto* packed = static_cast<uint32_t*>(scratch(amx::packed_int8_bytes(std::min(m, amx::kInt8Rows), k), 0));
  if (!packed) return false;
  return amx_passes(
      m, amx::kInt8Rows, (n + 31) / 32,
      [&](int64_t r0, int64_t rows) {
        parallel_for((rows + 31) / 32 * 2, 4,
                     [&](int64_t b0, int64_t b1) { amx::pack_a_int8(A + r0 * k, rows, k, packed, b0, b1); });
      },
      [&](int64_t) { return amx::int8_work_bytes(k); },
      [&](void* work, int64_t r0, int64_t rows, int64_t b0, int64_t b1) {
        amx::int8_matmul(B, n, k, packed, rows, C + r0 * n, b0 * 32, std::min(n, b1 * 32), static_cast<int8_t*>(work));
        if (r0 + rows >= m) after(b0 * 32, std::min(n, b1 * 32));
      });
}

}  // namespace

extern "C" {

int32_t bnb_int8_linear_matmul(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                               bnb_stream) {
  return bnb_cpu_int8_linear_matmul_gather(A, B, m, n, k, C, nullptr, 0, nullptr);
}

// CPU-only extension: bnb_int8_linear_matmul that also copies B[j, cols[c]] into
// Bcols[j * ncols + c] (the weight's outlier columns for LLM.int8()), each range of rows right
// after its dot products, while those rows are still in cache: a strided gather of a few columns
// from the whole weight would read a cache line per row and column from memory.
BNB_API int32_t bnb_cpu_int8_linear_matmul_gather(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k,
                                                  int32_t* C, const int64_t* cols, int64_t ncols, int8_t* Bcols) {
  BNB_REQUIRE(A && B && C, BNB_ERR_NULL_POINTER, "A, B and C must not be NULL");
  BNB_REQUIRE(m >= 0 && n >= 0 && k >= 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0");
  BNB_REQUIRE(ncols >= 0, BNB_ERR_INVALID_ARGUMENT, "ncols must be >= 0, got %lld", static_cast<long long>(ncols));
  BNB_REQUIRE(ncols == 0 || (cols && Bcols), BNB_ERR_NULL_POINTER, "cols and Bcols must not be NULL when ncols > 0");
  for (int64_t c = 0; c < ncols; ++c) {
    BNB_REQUIRE(cols[c] >= 0 && cols[c] < k, BNB_ERR_INVALID_ARGUMENT, "cols[%lld] = %lld is outside [0, %lld)",
                static_cast<long long>(c), static_cast<long long>(cols[c]), static_cast<long long>(k));
  }
  if (n == 0) return bnb_cpu::ok();
  auto gather = [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j) {
      for (int64_t c = 0; c < ncols; ++c) Bcols[j * ncols + c] = B[j * k + cols[c]];
    }
  };
  if (m >= bnb_cpu::amx::kMinInt8Rows && k > 0 && k % 64 == 0 && bnb_cpu::amx_int8_usable() &&
      int8_matmul_amx(A, B, m, n, k, C, gather)) {
    return bnb_cpu::ok();
  }
  const auto& kt = kernels();
  parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
    if (m > 0) kt.int8_linear_matmul(A, B, m, n, k, C, n0, n1);
    gather(n0, n1);
  });
  return bnb_cpu::ok();
}

// CPU-only extension: out [m, n] = A [m, k] @ (CB * SCB / 127)^T (+ bias), the int8 weight read
// directly, never dequantized into a tensor (LLM.int8()'s training-mode forward). out has A's dtype.
BNB_API int32_t bnb_cpu_int8_weight_matmul(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k,
                                           const int8_t* CB, const float* SCB, const void* bias, int32_t bias_dtype,
                                           void* out) {
  BNB_REQUIRE(A && CB && SCB && out, BNB_ERR_NULL_POINTER, "A, CB, SCB and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(!bias || bnb_cpu::is_float_dtype(bias_dtype), BNB_ERR_UNSUPPORTED_DTYPE,
              "bias's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m >= 0 && n >= 0 && k >= 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0");
  if (m == 0 || n == 0) return bnb_cpu::ok();
  const float* a32 = f32_rows(A, dtype, m * k);
  const float* scale = row_scales(SCB, n);
  BNB_REQUIRE(a32 && scale, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the scratch buffers (m=%lld, n=%lld, k=%lld)",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
  bnb_cpu::WeightMatmulArgs args{a32, m, n,       k,    CB,         scale, nullptr, nullptr,
                                 0,   0, nullptr, bias, bias_dtype, out,   dtype,   0};
  const auto& kt = kernels();
  const int64_t grain = k >= 4096 ? 16 : (65536 / (k + 1) + 15) / 16 * 16;
  parallel_for(n, grain, [&](int64_t n0, int64_t n1) { kt.weight_matmul(args, n0, n1); });
  return bnb_cpu::ok();
}

// CPU-only extension: out [m, k] = A [m, n] @ W with W [n, k] kept quantized: int8 rows (CB, SCB;
// B4 NULL) or packed 4-bit (B4, absmax, quant_type, blocksize; CB NULL). The input gradient
// of LLM.int8()'s training path and of QLoRA, without a dequantized copy of W. out has A's dtype.
// quant_type: BNB_QUANT_NF4 or BNB_QUANT_FP4 (4-bit only).
BNB_API int32_t bnb_cpu_weight_matmul_t(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                        const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                        int64_t blocksize, void* out) {
  BNB_REQUIRE(A && out, BNB_ERR_NULL_POINTER, "A and out must not be NULL");
  BNB_REQUIRE((CB && SCB && !B4) || (B4 && absmax && !CB), BNB_ERR_NULL_POINTER,
              "give either CB and SCB (int8 weight) or B4 and absmax (4-bit weight)");
  BNB_REQUIRE(!B4 || quant_type == BNB_QUANT_NF4 || quant_type == BNB_QUANT_FP4, BNB_ERR_UNSUPPORTED_QUANT_TYPE,
              "quant_type must be NF4 or FP4, got %d", static_cast<int>(quant_type));
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "A's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m >= 0 && n >= 0 && k >= 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0");
  BNB_REQUIRE(!B4 || blocksize > 0, BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got %lld",
              static_cast<long long>(blocksize));
  if (m == 0 || k == 0) return bnb_cpu::ok();
  const float* a32 = f32_rows(A, dtype, m * n);
  const float* scale = CB ? row_scales(SCB, n) : nullptr;
  const int64_t ldacc = (k * 4) % 4096 == 0 ? k + 16 : k;  // see WeightMatmulArgs::ldacc
  BNB_REQUIRE(a32 && (scale || !CB), BNB_ERR_OUT_OF_MEMORY, "cannot allocate the scratch buffers (m=%lld, n=%lld)",
              static_cast<long long>(m), static_cast<long long>(n));
  const auto& kt = kernels();
  bnb_cpu::WeightMatmulArgs args{a32,
                                 m,
                                 n,
                                 k,
                                 CB,
                                 scale,
                                 B4,
                                 absmax,
                                 quant_type == BNB_QUANT_NF4 ? 1 : 0,
                                 blocksize,
                                 kt.dequantize_4bit,
                                 nullptr,
                                 0,
                                 out,
                                 dtype,
                                 ldacc};
  // Each part streams a contiguous range of weight rows into its own m x k partial sums (one part
  // per thread, at least 16 rows each); the parts are then added, column range by column range.
  // The order of that sum follows the thread count, so the result's last bits do too (as those of
  // torch's GEMMs, which the larger batches of this product take, do); every other kernel of the
  // wheel gives the same bits at any thread count (tests/test_cpu_thread_counts.py).
  const int64_t threads = std::max(1, bnb_cpu::requested_threads());
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, n / 16));
  auto* acc = static_cast<float*>(scratch(parts * m * ldacc * static_cast<int64_t>(sizeof(float)), 0));
  BNB_REQUIRE(acc, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the %lld x %lld x %lld partial sums",
              static_cast<long long>(parts), static_cast<long long>(m), static_cast<long long>(k));
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) kt.weight_matmul_t(args, acc + p * m * ldacc, p * n / parts, (p + 1) * n / parts);
  });
  bnb_cpu::dispatch_float(dtype, [&](auto o) {
    using O = decltype(o);
    auto* dst = static_cast<typename O::type*>(out);
    parallel_for(m * k, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1;) {  // one row of acc's (padded) layout at a time
        const int64_t c = i % k, len = std::min(i1 - i, k - c);
        const float* row = acc + i / k * ldacc + c;
        for (int64_t t = 0; t < len; ++t) {
          float s = row[t];
          for (int64_t p = 1; p < parts; ++p) s += row[p * m * ldacc + t];
          dst[i + t] = O::store(s);
        }
        i += len;
      }
    });
  });
  return bnb_cpu::ok();
}

// CPU-only extension: out[i] = src[i] for n int8 values, as f32, f16 or bf16 (exact): an int8
// weight expanded for a dense GEMM, the row scales applied on the GEMM's small side.
BNB_API int32_t bnb_cpu_int8_expand(const int8_t* src, int64_t n, void* out, int32_t dtype) {
  BNB_REQUIRE(src && out, BNB_ERR_NULL_POINTER, "src and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(n >= 0, BNB_ERR_INVALID_ARGUMENT, "n must be >= 0, got %lld", static_cast<long long>(n));
  const auto& kt = kernels();
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) { kt.int8_expand(src, out, dtype, i0, i1); });
  return bnb_cpu::ok();
}

}  // extern "C"

namespace {

// Whole blocks (k and c0 are multiples of the blocksize): the range's bytes and absmax start the call.
void expand_4bit(const bnb_cpu::amx::PanelArgs& a, int64_t row, int64_t c0, int64_t c1, uint16_t* dst) {
  const int64_t first = (row * a.k + c0) / a.blocksize;
  kernels().dequantize_4bit(static_cast<const uint8_t*>(a.weight) + (row * a.k + c0) / 2, a.absmax + first, c1 - c0,
                            a.blocksize, a.nf4, dst, BNB_DTYPE_BF16, 0, (c1 - c0 + a.blocksize - 1) / a.blocksize);
}

// The weight's part of the AMX entries' arguments (W [n, k]: int8 rows CB, or packed 4-bit B4).
bnb_cpu::amx::PanelArgs amx_weight(const int8_t* CB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                   int64_t blocksize, int64_t n, int64_t k, int64_t unit) {
  bnb_cpu::amx::PanelArgs a{};
  a.n = n;
  a.k = k;
  a.expand = CB ? bnb_cpu::amx::expand_int8 : expand_4bit;
  a.unit = unit;
  a.weight = CB ? static_cast<const void*>(CB) : static_cast<const void*>(B4);
  a.absmax = absmax;
  a.nf4 = quant_type == BNB_QUANT_NF4 ? 1 : 0;
  a.blocksize = blocksize;
  a.dots = bnb_cpu::panel_dots_form();
  return a;
}

// The checks both AMX entries make of the weight and the sizes (k a multiple of 32 where `k32`), then
// whether the panels run here: a shape they cannot take is named as such on any machine.
int32_t check_amx_weight(const int8_t* CB, const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                         int64_t m, int64_t n, int64_t k, int64_t blocksize, bool k32) {
  BNB_REQUIRE((CB && SCB && !B4) || (B4 && absmax && !CB), BNB_ERR_NULL_POINTER,
              "give either CB and SCB (int8 weight) or B4 and absmax (4-bit weight)");
  BNB_REQUIRE(!B4 || quant_type == BNB_QUANT_NF4 || quant_type == BNB_QUANT_FP4, BNB_ERR_UNSUPPORTED_QUANT_TYPE,
              "quant_type must be NF4 or FP4, got %d", static_cast<int>(quant_type));
  BNB_REQUIRE(m >= 0 && n >= 0 && k >= 0, BNB_ERR_INVALID_ARGUMENT, "m, n and k must be >= 0");
  BNB_REQUIRE(!B4 || blocksize > 0, BNB_ERR_INVALID_BLOCKSIZE, "blocksize must be positive, got %lld",
              static_cast<long long>(blocksize));
  BNB_REQUIRE(!B4 || k % blocksize == 0, BNB_ERR_NOT_IMPLEMENTED,
              "the AMX path needs k (%lld) to be a multiple of blocksize (%lld)", static_cast<long long>(k),
              static_cast<long long>(blocksize));
  // The panels expand whole blocks from a byte boundary, over ranges of 32 columns: an odd block
  // starts mid-byte, and one that neither divides nor is a multiple of 32 puts a range's start
  // inside a block (both gave wrong products, reported as success).
  BNB_REQUIRE(!B4 || blocksize % 32 == 0 || (blocksize % 2 == 0 && 32 % blocksize == 0), BNB_ERR_NOT_IMPLEMENTED,
              "the AMX path needs a 4-bit blocksize of 2, 4, 8, 16 or a multiple of 32, got %lld",
              static_cast<long long>(blocksize));
  BNB_REQUIRE(!k32 || k % 32 == 0, BNB_ERR_NOT_IMPLEMENTED, "the AMX path needs k (%lld) to be a multiple of 32",
              static_cast<long long>(k));
  BNB_REQUIRE(bnb_cpu::panel_usable(), BNB_ERR_NOT_IMPLEMENTED,
              "the panel matmuls do not run here (instruction set, build or bnb_cpu_set_amx)");
  return bnb_cpu::ok();
}

}  // namespace

extern "C" {

// CPU-only extension: out [m, n] (bf16) = A [m, k] (bf16) @ W^T (+ bias) on the AMX tile unit, W
// [n, k] kept quantized: int8 rows (CB, SCB: W = CB * SCB / 127; B4 NULL) or packed 4-bit (B4,
// absmax, quant_type, blocksize; CB NULL), expanded range by range into a bf16 panel in cache.
// BNB_ERR_NOT_IMPLEMENTED where AMX is not usable (bnb_cpu_amx_usable) or k is not a multiple of
// 32 (and, for 4-bit, of blocksize, which must be 2, 4, 8, 16 or a multiple of 32).
BNB_API int32_t bnb_cpu_weight_matmul_amx(const void* A, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                          const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                          int64_t blocksize, const void* bias, int32_t bias_dtype, void* out) {
  BNB_REQUIRE(A && out, BNB_ERR_NULL_POINTER, "A and out must not be NULL");
  BNB_REQUIRE(!bias || bnb_cpu::is_float_dtype(bias_dtype), BNB_ERR_UNSUPPORTED_DTYPE,
              "bias's dtype must be f32, f16 or bf16");
  const int32_t status = check_amx_weight(CB, SCB, B4, absmax, quant_type, m, n, k, blocksize, true);
  if (status != BNB_OK) return status;
  if (m == 0 || n == 0) return bnb_cpu::ok();
  namespace amx = bnb_cpu::amx;
  auto* packed = static_cast<uint32_t*>(scratch(amx::packed_bytes(std::min(m, amx::kMaxRows), k), 0));
  const float* scale = CB ? row_scales(SCB, n) : nullptr;
  const float* bias32 = bias ? f32_rows(bias, bias_dtype, n) : nullptr;
  BNB_REQUIRE(packed && (scale || !CB) && (bias32 || !bias), BNB_ERR_OUT_OF_MEMORY,
              "cannot allocate the scratch buffers (m=%lld, n=%lld, k=%lld)", static_cast<long long>(m),
              static_cast<long long>(n), static_cast<long long>(k));
  // Panels of up to 256 weight rows (each row of packed A read from L2 is used by all of them),
  // 64 for up to 64 rows of A, fewer where that gives every thread a panel.
  const int64_t threads = std::max(1, bnb_cpu::requested_threads());
  const int64_t per_thread = (n + threads - 1) / threads;
  // The dot-product form keeps that layout at every row count (4096x4096, 128 / 256 rows: 12.6 ->
  // 11.3 / 25.4 -> 22.1 ms).
  const bool few = m <= 64 || bnb_cpu::panel_dots_form();
  const int64_t panel_rows =
      std::min(few ? int64_t{64} : amx::kMaxPanelRows, std::max<int64_t>(32, (per_thread + 31) / 32 * 32));
  const int64_t unit = CB ? 64 : blocksize;
  // Up to 64 rows of A, a panel's packed A is small: whole rows of the weight (up to 4096 values)
  // per range then read it in long runs (4096x4096 int8, 32 rows: 2.1 instead of 2.9 ms). Above,
  // ranges of 256: the range's slice of a 32-row strip of packed A (16 KiB) stays in L1 while the
  // panel's rows stream past it (256 rows of 4096x14336: 15.8 instead of 17.4 ms).
  const int64_t range = std::max(amx::range_for(unit), few ? std::min<int64_t>((k + 511) / 512 * 512, 4096) : 0);
  amx::PanelArgs args = amx_weight(CB, B4, absmax, quant_type, blocksize, n, k, unit);
  args.scale = scale;
  args.bias = bias32;
  args.panel_rows = panel_rows;
  args.range = range;
  // Up to kMaxRows rows of A per pass: its packed form and the panel's sums then stay in L2.
  const bool done = amx_passes(
      m, amx::kMaxRows, (n + panel_rows - 1) / panel_rows,
      [&](int64_t r0, int64_t rows) {
        args.A = static_cast<const uint16_t*>(A) + r0 * k;
        args.m = rows;
        args.out = static_cast<uint16_t*>(out) + r0 * n;
        parallel_for((rows + 31) / 32 * 2, 1, [&](int64_t b0, int64_t b1) { amx::pack_a(args, packed, b0, b1); });
      },
      [&](int64_t rows) { return amx::work_bytes(rows, panel_rows, args.range); },
      [&](void* work, int64_t, int64_t, int64_t p0, int64_t p1) {
        amx::panel_matmul(args, packed, work, p0 * panel_rows, std::min(n, p1 * panel_rows));
      });
  BNB_REQUIRE(done, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the AMX work space (%lld bytes)",
              static_cast<long long>(amx::work_bytes(std::min(m, amx::kMaxRows), panel_rows, args.range)));
  return bnb_cpu::ok();
}

// CPU-only extension: out [m, k] (bf16) = G [m, n] (bf16) @ W on the AMX tile unit, W [n, k] kept
// quantized as for bnb_cpu_weight_matmul_amx (int8: G's columns are scaled by SCB / 127 and rounded
// to bf16 first, as the dense path does). The input gradient of LLM.int8()'s training path and of
// QLoRA. BNB_ERR_NOT_IMPLEMENTED where AMX is not usable or, for 4-bit, k is not a multiple of
// blocksize or blocksize is not 2, 4, 8, 16 or a multiple of 32.
BNB_API int32_t bnb_cpu_weight_matmul_t_amx(const void* G, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                            const float* SCB, const uint8_t* B4, const float* absmax,
                                            int32_t quant_type, int64_t blocksize, void* out) {
  BNB_REQUIRE(G && out, BNB_ERR_NULL_POINTER, "G and out must not be NULL");
  const int32_t status = check_amx_weight(CB, SCB, B4, absmax, quant_type, m, n, k, blocksize, false);
  if (status != BNB_OK) return status;
  if (m == 0 || k == 0) return bnb_cpu::ok();
  namespace amx = bnb_cpu::amx;
  const int64_t np = (n + 31) / 32 * 32;
  auto* gp = static_cast<uint16_t*>(scratch(amx::padded_g_bytes(std::min(m, amx::kMaxRows), n), 0));
  const float* scale = CB ? row_scales(SCB, n) : nullptr;
  BNB_REQUIRE(gp && (scale || !CB), BNB_ERR_OUT_OF_MEMORY, "cannot allocate the scratch buffers (m=%lld, n=%lld)",
              static_cast<long long>(m), static_cast<long long>(n));
  const int64_t unit = std::max<int64_t>(32, CB ? 32 : blocksize);
  const int64_t threads = std::max(1, bnb_cpu::requested_threads());
  const int64_t per_thread = (k + threads - 1) / threads;
  // Wide panels for few rows of G (up to 2048 columns for 64 rows), so that each weight row is read
  // in long runs; above, 512 columns, whose runs (512 bytes of int8) the kernel prefetches while the
  // tile unit works (measured at 4096 x 4096, 128 / 256 rows: int8 4.6 -> 4.0 / 7.8 -> 5.6 ms, 4-bit
  // 3.9 -> 3.7 / 6.9 -> 5.7 ms against 1024 / 256 columns before). 128 weight rows per range.
  const int64_t max_cols = m <= 64 ? 2048 : 512;
  int64_t cols = std::min(max_cols, std::max<int64_t>(32, (per_thread + 31) / 32 * 32));
  cols = (cols + unit - 1) / unit * unit;
  const int64_t range = std::min<int64_t>(128, np);
  amx::PanelArgs args = amx_weight(CB, B4, absmax, quant_type, blocksize, n, k, unit);
  args.panel_rows = cols;
  args.range = range;
  const bool done = amx_passes(
      m, amx::kMaxRows, (k + cols - 1) / cols,
      [&](int64_t r0, int64_t rows) {
        args.m = rows;
        args.out = static_cast<uint16_t*>(out) + r0 * k;
        const auto* g = static_cast<const uint16_t*>(G) + r0 * n;
        parallel_for((rows + 31) / 32 * 32, 8,
                     [&](int64_t i0, int64_t i1) { amx::pad_g(g, scale, rows, n, gp, i0, i1); });
      },
      [&](int64_t rows) { return amx::work_bytes_t(rows, cols, range); },
      [&](void* work, int64_t, int64_t, int64_t p0, int64_t p1) {
        amx::panel_matmul_t(args, gp, work, p0 * cols, std::min(k, p1 * cols));
      });
  BNB_REQUIRE(done, BNB_ERR_OUT_OF_MEMORY, "cannot allocate the AMX work space (%lld bytes)",
              static_cast<long long>(amx::work_bytes_t(std::min(m, amx::kMaxRows), cols, range)));
  return bnb_cpu::ok();
}

int32_t bnb_int8_mm_dequant(const int32_t* C, const float* row_stats, const float* col_stats, int64_t m, int64_t n,
                            const void* bias, int32_t bias_dtype, void* out, int32_t out_dtype, bnb_stream) {
  BNB_REQUIRE(C && row_stats && col_stats && out, BNB_ERR_NULL_POINTER,
              "C, row_stats, col_stats and out must not be NULL");
  BNB_REQUIRE(bnb_cpu::is_float_dtype(out_dtype), BNB_ERR_UNSUPPORTED_DTYPE, "out's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(!bias || bnb_cpu::is_float_dtype(bias_dtype), BNB_ERR_UNSUPPORTED_DTYPE,
              "bias's dtype must be f32, f16 or bf16");
  BNB_REQUIRE(m >= 0 && n >= 0, BNB_ERR_INVALID_ARGUMENT, "m and n must be >= 0");
  if (m == 0 || n == 0) return bnb_cpu::ok();
  const auto& kt = kernels();
  parallel_for(m, 1 + 16384 / n, [&](int64_t r0, int64_t r1) {
    kt.int8_mm_dequant(C, row_stats, col_stats, n, bias, bias_dtype, out, out_dtype, r0, r1);
  });
  return bnb_cpu::ok();
}

}  // extern "C"
