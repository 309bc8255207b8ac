// Tile-unit helpers both AMX kernel files share (kernels_amx.cpp, kernels_amx_int8.cpp); include
// only from files compiled with the AMX and AVX-512 flags.
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

namespace bnb_cpu {
namespace amx {
namespace tiles {

// Palette 1 tile configuration (the layout LDTILECFG reads).
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0-1: two 16-row slices of the row operand; 2-3: two 16-column blocks of the column operand;
// 4-7: the 2 x 2 result tiles. Every tile is 16 rows of 64 bytes.
inline void configure_tiles() {
  TileConfig cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// Transposes 16 x 16 floats in place (rows r[0..15]).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
}

// The 2 x 2 tile block: sums c[2 * i + j] (+)= rows_i . cols_j over `steps` steps, rows_i 16 rows
// of the row operand (`row_bytes` apart, 64 bytes a step) and cols_j column tiles (1 KiB a step);
// from zero when `first`, else from c; c holds them after. `dot` issues the four products of a
// step on tiles 4-7 (tdpbf16ps or tdpbssd: rows in tiles 0-1, columns in 2-3).
template <typename Dot>
inline void block_2x2(const void* rows0, const void* rows1, int64_t row_bytes, const void* cols0, const void* cols1,
                      int64_t steps, bool first, void* c, Dot dot) {
  auto* sums = static_cast<uint8_t*>(c);  // four 16 x 64-byte tiles
  const auto* r0 = static_cast<const uint8_t*>(rows0);
  const auto* r1 = static_cast<const uint8_t*>(rows1);
  const auto* c0 = static_cast<const uint8_t*>(cols0);
  const auto* c1 = static_cast<const uint8_t*>(cols1);
  if (first) {
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
  } else {
    _tile_loadd(4, sums, 64);
    _tile_loadd(5, sums + 1024, 64);
    _tile_loadd(6, sums + 2048, 64);
    _tile_loadd(7, sums + 3072, 64);
  }
  for (int64_t s = 0; s < steps; ++s) {
    _tile_loadd(0, r0 + s * 64, row_bytes);
    _tile_loadd(1, r1 + s * 64, row_bytes);
    _tile_loadd(2, c0 + s * 1024, 64);
    _tile_loadd(3, c1 + s * 1024, 64);
    dot();
  }
  _tile_stored(4, sums, 64);
  _tile_stored(5, sums + 1024, 64);
  _tile_stored(6, sums + 2048, 64);
  _tile_stored(7, sums + 3072, 64);
}

}  // namespace tiles
}  // namespace amx
}  // namespace bnb_cpu
