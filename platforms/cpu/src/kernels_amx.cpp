// AMX (AMX-TILE + AMX-BF16) matmuls against a weight kept quantized, for bf16 activations:
// out [m, n] = A [m, k] @ W^T (panel_matmul: QLoRA's forward and prefill, LLM.int8()'s training
// forward) and out [m, k] = G [m, n] @ W (panel_matmul_t: their input gradients), W [n, k] int8
// rows or packed 4-bit.
//
// W is expanded range by range into a bf16 panel that stays in this core's L2 (the active
// instruction set's own 4-bit dequantization, so the panel holds exactly the values
// dequantize_4bit gives, or an exact int8 expansion), and the tile unit multiplies it while it is
// there: no dequantized weight ever goes to memory. Forward: the panel rows are the tile unit's row
// operand (16 weight rows x 32 k per tile, loaded as they lie); A is the column operand, re-laid
// out once per call into VNNI pairs (pack_a); each 16 x 16 f32 result tile is thus out^T,
// transposed on the way out, where the int8 row scales and the bias are applied and the sum is
// rounded to bf16 once. Input gradient: G is the row operand as it lies (padded, pad_g) and the
// weight, two rows at a time, is interleaved into VNNI pairs for the column operand.
//
// On CPUs without AMX the same panels, layouts and passes multiply with AVX512-BF16 dot products
// (dots_2x2, PanelArgs::dots): every CPU the avx512 table runs on has them.
//
// Compiled with the AVX-512 and AMX flags (x86-64, GCC >= 11 or Clang >= 12); elsewhere the file
// builds empty and compiled_in() is false. Nothing here runs unless panel_usable()
// (isa_dispatch.cpp) said so, and the tile unit only where amx_usable() said the CPU and the
// operating system allow it.
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#else
#define BNB_CPU_NO_AMX 1
#endif
#include <stdint.h>
#include <string.h>

#include "bnb/numeric.h"
#include "element.h"
#include "kernels_amx.h"
#if !defined(BNB_CPU_NO_AMX)
#include "amx_tiles.h"
#include "simd_avx512.h"
#endif

namespace bnb_cpu {
namespace amx {

#if defined(BNB_CPU_NO_AMX)  // amx_usable() is false: never called

bool compiled_in() { return false; }
void expand_int8(const PanelArgs&, int64_t, int64_t, int64_t, uint16_t*) {}
void pad_g(const uint16_t*, const float*, int64_t, int64_t, uint16_t*, int64_t, int64_t) {}
void panel_matmul_t(const PanelArgs&, const uint16_t*, void*, int64_t, int64_t) {}
void pack_a(const PanelArgs&, uint32_t*, int64_t, int64_t) {}
void panel_matmul(const PanelArgs&, const uint32_t*, void*, int64_t, int64_t) {}

#else

bool compiled_in() { return true; }

using avx512::to_bf16;
using tiles::configure_tiles;
using tiles::transpose16;

namespace {

// The 2 x 2 tile block of both bf16 products (tiles::block_2x2 with tdpbf16ps): rows_i 16 rows of
// bf16 (`row_bytes` apart, 32 values a step), cols_j the VNNI column tiles (256 dwords a step).
inline void multiply_2x2(const uint16_t* rows0, const uint16_t* rows1, int64_t row_bytes, const uint32_t* cols0,
                         const uint32_t* cols1, int64_t steps, bool first, float (*c)[16][16]) {
  tiles::block_2x2(rows0, rows1, row_bytes, cols0, cols1, steps, first, c, [] {
    _tile_dpbf16ps(4, 0, 2);
    _tile_dpbf16ps(5, 0, 3);
    _tile_dpbf16ps(6, 1, 2);
    _tile_dpbf16ps(7, 1, 3);
  });
}

// The same 2 x 2 block of products with AVX512-BF16 dot products (vdpbf16ps), on CPUs whose avx512
// table runs without AMX: c[2 * h + t][i][j] += sum over the steps' 16 pairs p of row i of rows_h
// (pair p, broadcast) times column operand t's VNNI pair p of lane j. Eight rows by both column
// operands are 16 accumulators; each pair's two column vectors are loaded once for the 8 rows.
// Groups of 8 rows at or past `live` (rows of the 32 that are padding) are skipped: their sums are
// never stored (a few rows of G would otherwise cost as much as 32).
inline void dots_2x2(const uint16_t* rows0, const uint16_t* rows1, int64_t row_bytes, const uint32_t* cols0,
                     const uint32_t* cols1, int64_t steps, bool first, float (*c)[16][16], int64_t live) {
  for (int h = 0; h < 2; ++h) {
    const auto* rows = reinterpret_cast<const uint8_t*>(h ? rows1 : rows0);
    for (int i0 = 0; i0 < 16 && h * 16 + i0 < live; i0 += 8) {
      __m512 acc[8][2];
      for (int i = 0; i < 8; ++i) {
        for (int t = 0; t < 2; ++t) acc[i][t] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c[2 * h + t][i0 + i]);
      }
      for (int64_t s = 0; s < steps; ++s) {
        const uint32_t* b0 = cols0 + s * 256;
        const uint32_t* b1 = cols1 + s * 256;
        const uint8_t* r = rows + i0 * row_bytes + s * 64;
        for (int p = 0; p < 16; ++p) {
          const __m512bh v0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b0 + p * 16));
          const __m512bh v1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b1 + p * 16));
          for (int i = 0; i < 8; ++i) {
            int32_t pair;
            memcpy(&pair, r + i * row_bytes + p * 4, 4);
            const __m512bh w = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], w, v0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], w, v1);
          }
        }
      }
      for (int i = 0; i < 8; ++i) {
        for (int t = 0; t < 2; ++t) _mm512_storeu_ps(c[2 * h + t][i0 + i], acc[i][t]);
      }
    }
  }
}

// The 2 x 2 block on the unit PanelArgs::dots names; `live`: the rows of rows0 / rows1 (32 in all)
// that are not padding.
inline void block(const PanelArgs& a, const uint16_t* rows0, const uint16_t* rows1, int64_t row_bytes,
                  const uint32_t* cols0, const uint32_t* cols1, int64_t steps, bool first, float (*c)[16][16],
                  int64_t live) {
  if (a.dots) {
    dots_2x2(rows0, rows1, row_bytes, cols0, cols1, steps, first, c, live);
  } else {
    multiply_2x2(rows0, rows1, row_bytes, cols0, cols1, steps, first, c);
  }
}

// One 16 x 16 result tile (c[i][j] = sum over k of W[n0 + i] . A[m0 + j]) into out, transposed,
// the weight rows' scales and bias applied, rounded to bf16 once.
void store_tile(const PanelArgs& a, const float (*c)[16], int64_t n0, int64_t m0) {
  const int64_t rows = a.n - n0 < 16 ? a.n - n0 : 16;  // weight rows = output columns
  const int64_t cols = a.m - m0 < 16 ? a.m - m0 : 16;  // rows of A = output rows
  if (rows <= 0 || cols <= 0) return;
  const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(c[i]);
  transpose16(r);  // r[j][i] = c[i][j]: output row m0 + j, columns n0 + i
  const __m512 scale = a.scale ? _mm512_maskz_loadu_ps(lanes, a.scale + n0) : _mm512_set1_ps(1.0f);
  const __m512 bias = a.bias ? _mm512_maskz_loadu_ps(lanes, a.bias + n0) : _mm512_setzero_ps();
  for (int64_t j = 0; j < cols; ++j) {
    __m512 v = r[j];
    if (a.scale) v = _mm512_mul_ps(v, scale);
    if (a.bias) v = _mm512_add_ps(v, bias);
    _mm256_mask_storeu_epi16(a.out + (m0 + j) * a.n + n0, lanes, to_bf16(v));
  }
}

// Brings the weight bytes that expand() will read next (rows [r0, r1), columns [c0, c1)) towards
// L2 while the tile unit works on the current range, a few cache lines per step(). Each row's run
// is only a few lines long, too short for the hardware prefetchers: without this the expansion
// stalls on memory (a profile at 128 rows put two thirds of its samples on the weight loads).
class WeightPrefetch {
  static constexpr int64_t kMaxPrefetchRun = 512;

 public:
  WeightPrefetch(const PanelArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t steps)
      : a_(a), int8_(a.expand == expand_int8), row_(r0), r1_(r1), c0_(c0), c1_(c1) {
    const int64_t run = int8_ ? c1 - c0 : (c1 - c0) / 2;  // bytes per row
    // Longer runs the hardware follows by itself (prefetching whole 4 KiB rows as well measured
    // slower: 32 rows forward 1.8 -> 2.2 ms at 4096 x 4096 int8).
    if (run > kMaxPrefetchRun) r1_ = r0;
    per_step_ = r1_ > r0 ? ((r1_ - r0) * (run / 64 + 2) + steps - 1) / (steps > 0 ? steps : 1) : 0;
    start_row();
  }
  void step() {
    for (int64_t i = 0; i < per_step_ && row_ < r1_; ++i) {
      _mm_prefetch(static_cast<const char*>(a_.weight) + line_, _MM_HINT_T1);
      line_ += 64;
      if (line_ >= end_) {
        ++row_;
        start_row();
      }
    }
  }

 private:
  void start_row() {
    if (row_ >= r1_) return;
    const int64_t e0 = row_ * a_.k + c0_, e1 = row_ * a_.k + c1_;  // element offsets
    const int64_t b0 = int8_ ? e0 : e0 / 2, b1 = int8_ ? e1 : (e1 + 1) / 2;
    line_ = b0 & ~int64_t{63};
    end_ = b1;
  }
  const PanelArgs& a_;
  bool int8_;
  int64_t row_, r1_, c0_, c1_, per_step_ = 0, line_ = 0, end_ = 0;
};

}  // namespace

void expand_int8(const PanelArgs& a, int64_t row, int64_t c0, int64_t c1, uint16_t* dst) {
  const int8_t* src = static_cast<const int8_t*>(a.weight) + row * a.k + c0;
  const int64_t count = c1 - c0;
  // An int8 value has at most 8 significant bits: its bf16 is the top half of its f32, exactly,
  // so the rounding conversion (two f32 vectors into one bf16 vector) changes nothing; it packs
  // 32 values in the shuffle port's time the truncating path spends on 16.
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m512 lo =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    const __m512 hi =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16))));
    _mm512_storeu_si512(dst + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
  for (; i + 16 <= count; i += 16) {
    const __m512 f =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16)));
  }
  if (i < count) {
    const __mmask16 rest = static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(rest, src + i)));
    _mm256_mask_storeu_epi16(dst + i, rest, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16)));
  }
}

void pad_g(const uint16_t* g, const float* scale, int64_t m, int64_t n, uint16_t* gp, int64_t r0, int64_t r1) {
  const int64_t np = (n + 31) / 32 * 32;
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* dst = gp + r * np;
    if (r >= m) {
      memset(dst, 0, static_cast<size_t>(np) * 2);
      continue;
    }
    const uint16_t* src = g + r * n;
    for (int64_t j = 0; j < np; j += 16) {
      const __mmask16 lanes = j + 16 <= n ? 0xffff : (j < n ? static_cast<__mmask16>((1u << (n - j)) - 1) : 0);
      __m512 v =
          _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, src + j)), 16));
      if (scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(lanes, scale + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), to_bf16(v));
    }
  }
}

void pack_a(const PanelArgs& a, uint32_t* packed, int64_t mb0, int64_t mb1) {
  const int64_t kp = a.k / 2;  // bf16 pairs per row
  const int64_t ks = a.k / 32;
  const auto* A32 = reinterpret_cast<const uint32_t*>(a.A);
  for (int64_t mb = mb0; mb < mb1; ++mb) {
    for (int64_t s = 0; s < ks; ++s) {
      uint32_t* dst = packed + (mb * ks + s) * 256;
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t row = mb * 16 + i;
        if (row >= a.m) {
          for (int64_t r = 0; r < 16; ++r) dst[r * 16 + i] = 0;
          continue;
        }
        const uint32_t* src = A32 + row * kp + s * 16;
        for (int64_t r = 0; r < 16; ++r) dst[r * 16 + i] = src[r];
      }
    }
  }
}

void panel_matmul(const PanelArgs& a, const uint32_t* packed, void* work, int64_t j0, int64_t j1) {
  const int64_t ks = a.k / 32, rs = a.range / 32;
  const int64_t stride = a.range + 32;
  const int64_t mpairs = (a.m + 31) / 32;
  uint16_t* wbuf = static_cast<uint16_t*>(work);
  auto* sums = reinterpret_cast<float (*)[4][16][16]>(wbuf + a.panel_rows * stride);
  if (!a.dots) configure_tiles();
  for (int64_t p0 = j0; p0 < j1; p0 += a.panel_rows) {
    const int64_t rows = j1 - p0 < a.panel_rows ? j1 - p0 : a.panel_rows;
    const int64_t pairs = (rows + 31) / 32;
    for (int64_t s0 = 0; s0 < ks; s0 += rs) {
      const int64_t s1 = ks - s0 < rs ? ks : s0 + rs;
      const int64_t c0 = s0 * 32, c1 = s1 * 32;
      for (int64_t r = 0; r < rows; ++r) a.expand(a, p0 + r, c0, c1, wbuf + r * stride);
      for (int64_t r = rows; r < pairs * 32; ++r) memset(wbuf + r * stride, 0, static_cast<size_t>(c1 - c0) * 2);
      const bool last = s1 == ks;
      // The next range: the panel's next columns, or the next panel's first ones.
      const int64_t nc1 = s1 + rs < ks ? (s1 + rs) * 32 : a.k;
      WeightPrefetch next =
          !last ? WeightPrefetch(a, p0, p0 + rows, c1, nc1, mpairs * pairs)
                : WeightPrefetch(a, p0 + rows,
                                 p0 + rows + (j1 - p0 - rows < a.panel_rows ? j1 - p0 - rows : a.panel_rows), 0,
                                 rs * 32 < a.k ? rs * 32 : a.k, mpairs * pairs);
      for (int64_t mp = 0; mp < mpairs; ++mp) {
        const uint32_t* b0 = packed + (2 * mp * ks + s0) * 256;
        const uint32_t* b1 = b0 + ks * 256;
        for (int64_t rp = 0; rp < pairs; ++rp) {
          next.step();
          const uint16_t* w0 = wbuf + rp * 32 * stride;
          const uint16_t* w1 = w0 + 16 * stride;
          float (*c)[16][16] = sums[mp * pairs + rp];
          block(a, w0, w1, stride * 2, b0, b1, s1 - s0, s0 == 0, c, rows - rp * 32);
          if (last) {
            const int64_t n0 = p0 + rp * 32;
            store_tile(a, c[0], n0, mp * 32);
            store_tile(a, c[1], n0, mp * 32 + 16);
            store_tile(a, c[2], n0 + 16, mp * 32);
            store_tile(a, c[3], n0 + 16, mp * 32 + 16);
          }
        }
      }
    }
  }
  if (!a.dots) _tile_release();
}

// The transposed product out [m, k] = G [m, n] @ W, W [n, k]: G (padded to whole 32 x 32 tiles) is
// the row operand, loaded as it lies; W is the column operand, expanded a range of `range` weight
// rows by `panel_rows` columns at a time and re-laid out into VNNI pairs (two weight rows' values
// of one column side by side) for tiles of 32 weight rows x 16 columns. Output columns [c0, c1).
void panel_matmul_t(const PanelArgs& a, const uint16_t* gp, void* work, int64_t c0, int64_t c1) {
  const int64_t np = (a.n + 31) / 32 * 32;  // G's padded row length
  const int64_t cols = a.panel_rows, rows = a.range;
  const int64_t mpairs = (a.m + 31) / 32;
  uint16_t* raw = static_cast<uint16_t*>(work);                         // [2][cols + 32]: two weight rows
  uint32_t* vnni = reinterpret_cast<uint32_t*>(raw + 2 * (cols + 32));  // [cols / 16][rows / 32][16][16]
  auto* sums = reinterpret_cast<float (*)[4][16][16]>(vnni + cols / 16 * (rows / 32) * 256);
  const __m512i pairs_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                             37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  if (!a.dots) configure_tiles();
  for (int64_t p0 = c0; p0 < c1; p0 += cols) {
    const int64_t width = c1 - p0 < cols ? c1 - p0 : cols;
    const int64_t kpairs = (width + 31) / 32;  // pairs of 16-column tiles
    for (int64_t n0 = 0; n0 < a.n; n0 += rows) {
      const int64_t h = a.n - n0 < rows ? a.n - n0 : rows;
      const int64_t steps = (h + 31) / 32;
      // Two weight rows at a time into L1, then side by side into the tiles' VNNI pairs.
      const int64_t stride = cols + 32;
      for (int64_t s = 0; s < steps; ++s) {
        for (int64_t r = 0; r < 16; ++r) {
          for (int64_t half = 0; half < 2; ++half) {
            const int64_t row = s * 32 + 2 * r + half;
            uint16_t* dst = raw + half * stride;
            if (row < h) {
              a.expand(a, n0 + row, p0, p0 + width, dst);
              if (width < kpairs * 32) memset(dst + width, 0, static_cast<size_t>(kpairs * 32 - width) * 2);
            } else {
              memset(dst, 0, static_cast<size_t>(kpairs * 32) * 2);
            }
          }
          for (int64_t cb = 0; cb < kpairs * 2; ++cb) {
            const uint16_t* w0 = raw + cb * 16;
            const __m512i lo = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0)));
            const __m512i hi =
                _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + stride)));
            _mm512_storeu_si512(vnni + (cb * (rows / 32) + s) * 256 + r * 16,
                                _mm512_permutex2var_epi16(lo, pairs_idx, hi));
          }
        }
      }
      const bool first = n0 == 0, last = n0 + rows >= a.n;
      // The next range of weight rows for these columns, or the first rows of the next columns.
      const int64_t next_width = c1 - p0 - width < cols ? c1 - p0 - width : cols;
      WeightPrefetch next =
          !last ? WeightPrefetch(a, n0 + rows, n0 + rows + (a.n - n0 - rows < rows ? a.n - n0 - rows : rows), p0,
                                 p0 + width, mpairs * kpairs)
                : WeightPrefetch(a, 0, next_width > 0 ? (a.n < rows ? a.n : rows) : 0, p0 + width,
                                 p0 + width + (next_width > 0 ? next_width : 0), mpairs * kpairs);
      for (int64_t mp = 0; mp < mpairs; ++mp) {
        const uint16_t* g0 = gp + mp * 32 * np + n0;
        const uint16_t* g1 = g0 + 16 * np;
        for (int64_t kp = 0; kp < kpairs; ++kp) {
          next.step();
          const uint32_t* v0 = vnni + (2 * kp) * (rows / 32) * 256;
          const uint32_t* v1 = v0 + (rows / 32) * 256;
          float (*c)[16][16] = sums[mp * kpairs + kp];
          block(a, g0, g1, np * 2, v0, v1, steps, first, c, a.m - mp * 32);
          if (!last) continue;
          // c[2 * mt + kt]: rows mp * 32 + 16 * mt of out, columns p0 + kp * 32 + 16 * kt
          for (int t = 0; t < 4; ++t) {
            const int64_t m0 = mp * 32 + 16 * (t >> 1), k0 = p0 + kp * 32 + 16 * (t & 1);
            const int64_t mrows = a.m - m0 < 16 ? a.m - m0 : 16;
            const int64_t kcols = p0 + width - k0 < 16 ? p0 + width - k0 : 16;
            if (mrows <= 0 || kcols <= 0) continue;
            const __mmask16 lanes = static_cast<__mmask16>((1u << kcols) - 1);
            for (int64_t i = 0; i < mrows; ++i) {
              _mm256_mask_storeu_epi16(a.out + (m0 + i) * a.k + k0, lanes, to_bf16(_mm512_loadu_ps(c[t][i])));
            }
          }
        }
      }
    }
  }
  if (!a.dots) _tile_release();
}

#endif  // BNB_CPU_NO_AMX

}  // namespace amx
}  // namespace bnb_cpu
