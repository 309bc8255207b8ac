// The LLM.int8() GEMM on the AMX-INT8 tile unit: C [m, n] (int32) = A [m, k] @ B^T, A the
// row-quantized activations, B [n, k] the int8 weight, k a multiple of 64. Exact (int32 sums of
// int8 products), so the result is the VNNI kernel's, bit for bit.
//
// The weight rows are the row operand, loaded as they lie (16 rows x 64 k per tile, stride k); A
// is the column operand, re-laid out once per pass into VNNI-4 quads (pack_a_int8). Each block of
// 2 x 2 result tiles sums over the whole of k in the tile registers; the 16 x 16 results are out^T,
// transposed in registers on the way out. A partial last block of weight rows is copied, zero
// padded, into the thread's work space, so no tile load reads past the weight.
//
// Compiled with the AVX-512 and AMX (TILE, INT8) flags; elsewhere it builds empty and nothing
// calls it (amx_int8_usable() is false).
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#include <immintrin.h>
#else
#define BNB_CPU_NO_AMX_INT8 1
#endif
#include <stdint.h>
#include <string.h>

#include "kernels_amx.h"
#if !defined(BNB_CPU_NO_AMX_INT8)
#include "amx_tiles.h"
#endif

namespace bnb_cpu {
namespace amx {

#if defined(BNB_CPU_NO_AMX_INT8)

bool int8_compiled_in() { return false; }
void pack_a_int8(const int8_t*, int64_t, int64_t, uint32_t*, int64_t, int64_t) {}
void int8_matmul(const int8_t*, int64_t, int64_t, const uint32_t*, int64_t, int32_t*, int64_t, int64_t, int8_t*) {}

#else

bool int8_compiled_in() { return true; }

void pack_a_int8(const int8_t* A, int64_t m, int64_t k, uint32_t* packed, int64_t mb0, int64_t mb1) {
  const int64_t ks = k / 64;
  for (int64_t mb = mb0; mb < mb1; ++mb) {
    for (int64_t s = 0; s < ks; ++s) {
      uint32_t* dst = packed + (mb * ks + s) * 256;
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t row = mb * 16 + i;
        if (row >= m) {
          for (int64_t r = 0; r < 16; ++r) dst[r * 16 + i] = 0;
          continue;
        }
        const int8_t* src = A + row * k + s * 64;
        for (int64_t r = 0; r < 16; ++r) {
          uint32_t quad;
          memcpy(&quad, src + 4 * r, 4);
          dst[r * 16 + i] = quad;
        }
      }
    }
  }
}

namespace {

// One 16 x 16 result tile (c[i][j] = B row nb + i . A row m0 + j) into C, transposed.
void store_int32_tile(const int32_t (*c)[16], int32_t* C, int64_t m, int64_t n, int64_t nb, int64_t m0) {
  const int64_t rows = n - nb < 16 ? n - nb : 16;  // weight rows = output columns
  const int64_t cols = m - m0 < 16 ? m - m0 : 16;  // rows of A = output rows
  if (rows <= 0 || cols <= 0) return;
  const __mmask16 lanes = static_cast<__mmask16>((1u << rows) - 1);
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(_mm512_loadu_si512(c[i]));
  tiles::transpose16(r);  // bit moves only: the int32 sums pass through unchanged
  for (int64_t j = 0; j < cols; ++j) _mm512_mask_storeu_epi32(C + (m0 + j) * n + nb, lanes, _mm512_castps_si512(r[j]));
}

}  // namespace

void int8_matmul(const int8_t* B, int64_t n, int64_t k, const uint32_t* packed, int64_t m, int32_t* C, int64_t n0,
                 int64_t n1, int8_t* work) {
  const int64_t ks = k / 64;
  const int64_t mpairs = (m + 31) / 32;
  alignas(64) int32_t c[4][16][16];
  tiles::configure_tiles();
  for (int64_t nb = n0; nb < n1; nb += 32) {
    const int8_t* w = B + nb * k;
    if (nb + 32 > n) {  // a partial block: its rows, then zeros, in the work space
      memcpy(work, w, static_cast<size_t>((n - nb) * k));
      memset(work + (n - nb) * k, 0, static_cast<size_t>((nb + 32 - n) * k));
      w = work;
    }
    for (int64_t mp = 0; mp < mpairs; ++mp) {
      const uint32_t* a0 = packed + 2 * mp * ks * 256;
      const uint32_t* a1 = a0 + ks * 256;
      tiles::block_2x2(w, w + 16 * k, k, a0, a1, ks, true, c, [] {
        _tile_dpbssd(4, 0, 2);
        _tile_dpbssd(5, 0, 3);
        _tile_dpbssd(6, 1, 2);
        _tile_dpbssd(7, 1, 3);
      });
      store_int32_tile(c[0], C, m, n, nb, mp * 32);
      store_int32_tile(c[1], C, m, n, nb, mp * 32 + 16);
      store_int32_tile(c[2], C, m, n, nb + 16, mp * 32);
      store_int32_tile(c[3], C, m, n, nb + 16, mp * 32 + 16);
    }
  }
  _tile_release();
}

#endif  // BNB_CPU_NO_AMX_INT8

}  // namespace amx
}  // namespace bnb_cpu
