// The AMX weight-panel matmul (kernels_amx.cpp): out [m, n] = A [m, k] @ W^T, A bf16, W kept
// quantized and expanded 32 rows at a time into an L2-resident bf16 panel.
#pragma once

#include <stdint.h>

namespace bnb_cpu {

// Whether the CPU has AMX-TILE and AMX-BF16, the operating system lets this process use the tile
// registers (asked for once, on first call), the avx512 kernel table is active and
// bnb_cpu_set_amx() has not turned it off (isa_dispatch.cpp).
bool amx_usable();
// amx_usable() and the CPU has AMX-INT8 too (and this build its kernels): the LLM.int8() GEMM
// then runs on the tile unit.
bool amx_int8_usable();
// Whether the panel matmuls below run: on the tile unit where amx_usable(), else (this build has
// them, the avx512 table is active, whose CPUs all have AVX512-BF16, and bnb_cpu_set_amx() has not
// turned them off) with AVX512-BF16 dot products in the tiles' layout.
bool panel_usable();
// Whether the panel matmuls use the dot products: no AMX, or bnb_cpu_set_panel_dots(1) (tests).
bool panel_dots();
// The form a panel matmul that has passed panel_usable() takes: the dot products unless the CPU has
// AMX (and they are not forced). It reads no setting another thread may change between the two
// (an instruction set forced meanwhile must not send a CPU without AMX to the tile unit).
bool panel_dots_form();

namespace amx {

constexpr int64_t kRangeSteps = 8;      // k is expanded and multiplied in ranges of 32 * kRangeSteps
constexpr int64_t kMaxRows = 256;       // rows of A per pass (the C ABI splits larger inputs)
constexpr int64_t kMaxPanelRows = 256;  // weight rows per panel

struct PanelArgs {
  const uint16_t* A;  // bf16 [m, k], k a multiple of 32
  int64_t m, n, k;
  // Writes columns [c0, c1) of weight row `row` as bf16 to dst; c0 and c1 are multiples of
  // `unit` (or c1 = k).
  void (*expand)(const PanelArgs& a, int64_t row, int64_t c0, int64_t c1, uint16_t* dst);
  int64_t unit;
  const void* weight;   // what expand_row reads: int8 CB, or the packed 4-bit bytes
  const float* absmax;  // 4-bit: block-wise absmax
  int32_t nf4;          // 4-bit: 1 NF4, 0 FP4
  int64_t blocksize;    // 4-bit: k is a multiple of it
  const float* scale;   // per weight row (int8: SCB / 127), or NULL
  const float* bias;    // per weight row (f32), or NULL
  uint16_t* out;        // bf16 [m, n]
  int64_t panel_rows;   // weight rows per panel: a multiple of 32, at most kMaxPanelRows
  int64_t range;        // k per range: a multiple of 32 * kRangeSteps and of `unit`
  bool dots;            // AVX512-BF16 dot products instead of the tile unit (CPUs without AMX)
};

// The k range: 32 * kRangeSteps, or the unit (a 4-bit block) where that is larger.
inline int64_t range_for(int64_t unit) { return unit > 32 * kRangeSteps ? unit : 32 * kRangeSteps; }

// Per-thread work space of panel_matmul: the expanded k range of a panel (rows padded by a cache
// line) and the running sums of every 16 x 16 output tile of the panel.
inline int64_t work_bytes(int64_t m, int64_t panel_rows, int64_t range) {
  return panel_rows * (range + 32) * 2 + (m + 31) / 32 * (panel_rows / 32) * 4 * 1024;
}
// Bytes of A re-laid out for the tile unit: rows rounded up to 32.
inline int64_t packed_bytes(int64_t m, int64_t k) { return (m + 31) / 32 * 32 * k * 2; }

// The transposed product's work space: two expanded weight rows (panel_rows columns), the range's
// VNNI form and the running sums of every output tile of the panel.
inline int64_t work_bytes_t(int64_t m, int64_t panel_cols, int64_t range) {
  return 2 * (panel_cols + 32) * 2 + range * panel_cols * 2 + (m + 31) / 32 * (panel_cols / 32) * 4 * 1024;
}
// G [m, n] (scaled per weight row for int8) as bf16 rows of (n + 31) / 32 * 32, (m + 31) / 32 * 32
// of them, zero padded.
inline int64_t padded_g_bytes(int64_t m, int64_t n) { return (m + 31) / 32 * 32 * ((n + 31) / 32 * 32) * 2; }

// PanelArgs::expand of an int8 weight (CB rows, exact in bf16).
void expand_int8(const PanelArgs& a, int64_t row, int64_t c0, int64_t c1, uint16_t* dst);

// Rows [r0, r1) of the padded G (padded_g_bytes): G's columns times scale (when not NULL), rounded
// to bf16; zeros past m and n.
void pad_g(const uint16_t* g, const float* scale, int64_t m, int64_t n, uint16_t* gp, int64_t r0, int64_t r1);

// Whether this build has the AMX kernels (x86-64, compiled with the AMX flags).
bool compiled_in();
// Re-lays out the 16-row blocks [mb0, mb1) of A (zero rows past m) for panel_matmul.
void pack_a(const PanelArgs& a, uint32_t* packed, int64_t mb0, int64_t mb1);
// Output columns [j0, j1) (j0 a multiple of panel_rows), with this thread's work space of
// work_bytes(m, panel_rows, range).
void panel_matmul(const PanelArgs& a, const uint32_t* packed, void* work, int64_t j0, int64_t j1);
// out [m, k] = G @ W for output columns [c0, c1) (c0 a multiple of panel_rows, which is a multiple
// of 32 and of `unit`), G given padded (padded_g_bytes), W [n, k] read through `expand` (range = its
// rows per range, a multiple of 32), with this thread's work space of work_bytes_t(m, panel_rows,
// range). A, scale and bias are unused.
void panel_matmul_t(const PanelArgs& a, const uint16_t* gp, void* work, int64_t c0, int64_t c1);

// ---- AMX-INT8 (kernels_amx_int8.cpp) -----------------------------------------------------------

constexpr int64_t kMinInt8Rows = 8;  // rows of A from which the tile GEMM replaces the VNNI kernel (measured)
constexpr int64_t kInt8Rows = 256;   // rows of A per pass (its packed form stays in L2)

// Whether this build has the AMX-INT8 kernels.
bool int8_compiled_in();
// Bytes of A [m, k] int8 re-laid out into VNNI-4 column tiles: rows rounded up to 32.
inline int64_t packed_int8_bytes(int64_t m, int64_t k) { return (m + 31) / 32 * 32 * k; }
// Per-thread work space of int8_matmul: a partial last block of 32 weight rows, zero padded.
inline int64_t int8_work_bytes(int64_t k) { return 32 * k; }
// Re-lays out the 16-row blocks [mb0, mb1) of A [m, k] (k a multiple of 64; zero rows past m).
void pack_a_int8(const int8_t* A, int64_t m, int64_t k, uint32_t* packed, int64_t mb0, int64_t mb1);
// C [m, n] (int32) = A @ B^T for output columns [n0, n1) (n0 a multiple of 32), B [n, k] int8, A
// given packed (packed_int8_bytes), with this thread's work space of int8_work_bytes(k).
void int8_matmul(const int8_t* B, int64_t n, int64_t k, const uint32_t* packed, int64_t m, int32_t* C, int64_t n0,
                 int64_t n1, int8_t* work);

}  // namespace amx
}  // namespace bnb_cpu
