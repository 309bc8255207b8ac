// C ABI entry points of the fused optimizer updates (math: bnb/optimizer_math.h).
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/optimizer_buffers.h"
#include "code_books.h"
#include "fault_injection.h"
#include "isa.h"
#include "kernels.h"
#include "status.h"
#include "threading.h"

namespace {

using bnb_cpu::kernels;
using bnb_cpu::parallel_for;

constexpr int64_t kBlock = BNB_OPTIM_STATE_BLOCKSIZE;

// The code of each of the 65536 grid points of the 8-bit state rule, for one qmap. Optimizers pass
// the same two qmaps on every step, so a few tables are cached, keyed by the qmap's values.
struct GridTable {
  float qmap[256];
  uint8_t code[65536];
  uint8_t pad[4] = {0, 0, 0, 0};  // kernels gather 32 bits at a time from `code`
  uint16_t bound[256];            // see Opt8Args::bound1
  bool has_bound = false;
  std::vector<uint32_t> keys;  // see Opt8Args::keys1: kStateKeyEnd entries, or none
  bool keys_tried = false;     // fill_keys ran to its end (only the avx512 kernels read the keys)
};

// bound[j] = the first grid index whose code is >= j; usable when the codes never decrease along
// the grid and every code up to 255 is reached.
void fill_bounds(GridTable& t) {
  for (uint32_t k = 1; k < 65536; ++k) {
    if (t.code[k] < t.code[k - 1]) return;
  }
  if (t.code[65535] != 255) return;
  uint32_t k = 0;
  t.bound[0] = 0;
  for (uint32_t j = 1; j < 256; ++j) {
    while (t.code[k] < j) ++k;
    t.bound[j] = static_cast<uint16_t>(k);
  }
  t.has_bound = true;
}

// The code of a scaled state value given by its bits.
uint8_t code_of_bits(const GridTable& t, uint32_t bits) {
  return t.code[bnb::state_grid_index(bnb::bits_float(bits), 1.0f)];
}

// Opt8Args::keys1 from the grid's codes. Within one sign the code is monotone in the bits (the
// grid index is monotone in s and the codes never decrease along the grid), so a bucket whose two
// ends share a code is constant, and otherwise its first change is found by bisection; a bucket
// with a second change leaves keys empty. False when the table's memory could not be had.
bool fill_keys(GridTable& t) {
  using bnb_cpu::kStateKeyEnd;
  std::vector<uint32_t> keys;
  if (bnb_cpu::fail_allocation("optimizer key table")) return false;
  try {
    keys.resize(kStateKeyEnd);
  } catch (const std::exception&) {
    return false;
  }
  for (uint32_t u = 0; u < kStateKeyEnd; ++u) {
    const uint32_t lo = u << 15, hi = lo | 0x7fffu;
    const uint32_t c0 = code_of_bits(t, lo), c1 = code_of_bits(t, hi);
    uint32_t entry = c0 | (c1 << 8) | 0xfffe0000u;  // no change: the compare never holds
    if (c0 != c1) {
      uint32_t a = lo, b = hi;  // code(a) == c0, code(b) != c0
      while (b - a > 1) {
        const uint32_t mid = a + (b - a) / 2;
        (code_of_bits(t, mid) == c0 ? a : b) = mid;
      }
      if (code_of_bits(t, b) != c1) return true;
      entry = c0 | (c1 << 8) | (((b & 0x7fffu) - 1u) << 17);
    }
    keys[u] = entry;
  }
  t.keys = std::move(keys);
  return true;
}

// The table of `qmap`, from the cache or built; nullptr when its memory cannot be had.
std::shared_ptr<const GridTable> grid_table(const float* qmap) {
  static std::mutex mutex;
  static std::shared_ptr<const GridTable> cache[4];
  static int next = 0;
  // The key table (384 KiB, about 1 ms to build) only where the running kernels read it; a table
  // cached without it is built again if the instruction set changes to one that does.
  const bool want_keys = bnb_cpu::active_isa() == bnb_cpu::ISA_AVX512;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& t : cache) {
      if (t && memcmp(t->qmap, qmap, sizeof(t->qmap)) == 0 && (t->keys_tried || !want_keys)) return t;
    }
  }
  std::shared_ptr<GridTable> t;
  if (!bnb_cpu::fail_allocation("optimizer code table")) {
    try {
      t = std::make_shared<GridTable>();
    } catch (const std::exception&) {  // no C++ exception may cross the C ABI
    }
  }
  if (!t) return nullptr;
  memcpy(t->qmap, qmap, sizeof(t->qmap));
  float mids[255];
  for (int i = 0; i < 255; ++i) mids[i] = bnb::midpoint(qmap[i], qmap[i + 1]);
  for (uint32_t k = 0; k < 65536; ++k) {
    t->code[k] = static_cast<uint8_t>(bnb::nearest_sorted_256(mids, bnb::state_grid_value(k)));
  }
  fill_bounds(*t);
  // Without its key table (no memory for it) the table serves this call and is built again next time.
  t->keys_tried = want_keys && (!t->has_bound || fill_keys(*t));
  std::lock_guard<std::mutex> lock(mutex);
  cache[next] = t;
  next = (next + 1) % 4;
  return t;
}

int32_t check_common(int32_t optimizer, const void* g, void* p, int32_t dtype, int64_t n,
                     const bnb_optimizer_hparams* h) {
  BNB_REQUIRE(g && p && h, BNB_ERR_NULL_POINTER, "g, p and hparams must not be NULL");
  BNB_REQUIRE(optimizer >= BNB_OPTIM_MOMENTUM && optimizer <= BNB_OPTIM_LARS, BNB_ERR_INVALID_ARGUMENT,
              "unknown optimizer id %d", optimizer);
  BNB_REQUIRE(bnb_cpu::is_float_dtype(dtype), BNB_ERR_UNSUPPORTED_DTYPE, "g and p must be f32, f16 or bf16");
  BNB_REQUIRE(n >= 0, BNB_ERR_INVALID_ARGUMENT, "n must be >= 0");
  BNB_REQUIRE(h->step >= 1, BNB_ERR_INVALID_ARGUMENT, "step must be >= 1, got %lld", static_cast<long long>(h->step));
  BNB_REQUIRE(n <= INT64_MAX / 16, BNB_ERR_INVALID_ARGUMENT, "n is too large, got %lld", static_cast<long long>(n));
  return BNB_OK;
}

}  // namespace

extern "C" {

int32_t bnb_optimizer_update_32bit(int32_t optimizer, const void* g, void* p, int32_t dtype, float* state1,
                                   float* state2, float* unorm_vec, int64_t n, const bnb_optimizer_hparams* hparams,
                                   bnb_stream) {
  if (int32_t s = check_common(optimizer, g, p, dtype, n, hparams)) return s;
  BNB_REQUIRE(state1, BNB_ERR_NULL_POINTER, "state1 must not be NULL");
  BNB_REQUIRE(!bnb::optimizer_two_states(optimizer) || state2, BNB_ERR_NULL_POINTER,
              "state2 is required for this optimizer");
  const bool clip = hparams->max_unorm > 0.0;
  BNB_REQUIRE(!clip || unorm_vec, BNB_ERR_NULL_POINTER, "unorm_vec is required when max_unorm > 0");
  const bool two = bnb::optimizer_two_states(optimizer);
  const char *first = nullptr, *second = nullptr;  // no buffer the update writes may share memory with another
  BNB_REQUIRE(
      !bnb::optimizer_32bit_overlap(optimizer, g, p, dtype, state1, state2, unorm_vec, clip, n, &first, &second),
      BNB_ERR_INVALID_ARGUMENT, BNB_OPTIMIZER_OVERLAP_MESSAGE, first, second, first);
  if (n == 0) {
    if (clip) *unorm_vec = 0.0f;  // the norm of an empty update
    return bnb_cpu::ok();
  }
  const bnb::OptimizerConsts c = bnb::make_optimizer_consts(optimizer, *hparams);
  const auto& kt = kernels();
  bnb_cpu::Opt32Args a{&c,
                       g,
                       p,
                       dtype,
                       static_cast<float>(hparams->gnorm_scale),
                       state1,
                       two ? state2 : nullptr,
                       n,
                       static_cast<float>(hparams->lr),
                       0};
  if (clip) {
    // The trust ratio needs the norm of the whole update before any element moves.
    // Partial sums by range, added in index order: the same norm whichever thread ran which range.
    constexpr int64_t kGrain = 65536;
    std::vector<double> parts;
    try {
      if (bnb_cpu::fail_allocation("trust-ratio sums")) throw std::bad_alloc();
      parts.assign(static_cast<size_t>((n + kGrain - 1) / kGrain), 0.0);
    } catch (const std::exception&) {  // no C++ exception may cross the C ABI
      return bnb_cpu::fail(BNB_ERR_OUT_OF_MEMORY, "cannot allocate the trust-ratio partial sums");
    }
    a.measure = 1;
    parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
      parts[static_cast<size_t>(i0 / kGrain)] = kt.optimizer_32bit(a, i0, i1);
    });
    a.measure = 0;
    double sq = 0.0;
    for (const double part : parts) sq += part;
    unorm_vec[0] = static_cast<float>(sq);
    const double unorm = sqrt(sq);
    const double limit = hparams->max_unorm * hparams->param_norm;
    const double scale = unorm > limit ? limit / unorm : 1.0;
    a.lr_scaled = static_cast<float>(hparams->lr * scale);
  }
  parallel_for(n, 65536, [&](int64_t i0, int64_t i1) { kt.optimizer_32bit(a, i0, i1); });
  return bnb_cpu::ok();
}

int32_t bnb_optimizer_update_8bit_blockwise(int32_t optimizer, const void* g, void* p, int32_t dtype, uint8_t* state1,
                                            uint8_t* state2, const float* qmap1, const float* qmap2, float* absmax1,
                                            float* absmax2, int64_t n, const bnb_optimizer_hparams* hparams,
                                            bnb_stream) {
  if (int32_t s = check_common(optimizer, g, p, dtype, n, hparams)) return s;
  BNB_REQUIRE(state1 && qmap1 && absmax1, BNB_ERR_NULL_POINTER, "state1, qmap1 and absmax1 must not be NULL");
  const bool two = bnb::optimizer_two_states(optimizer);
  BNB_REQUIRE(!two || (state2 && qmap2 && absmax2), BNB_ERR_NULL_POINTER,
              "state2, qmap2 and absmax2 are required for this optimizer");
  const char *first = nullptr, *second = nullptr;  // no buffer the update writes may share memory with another
  BNB_REQUIRE(!bnb::optimizer_8bit_overlap(optimizer, g, p, dtype, state1, state2, qmap1, qmap2, absmax1, absmax2, n,
                                           kBlock, &first, &second),
              BNB_ERR_INVALID_ARGUMENT, BNB_OPTIMIZER_OVERLAP_MESSAGE, first, second, first);
  if (int32_t s = bnb_cpu::check_code_book(qmap1, "qmap1")) return s;
  if (two) {
    if (int32_t s = bnb_cpu::check_code_book(qmap2, "qmap2")) return s;
  }
  if (n == 0) return bnb_cpu::ok();
  const bnb::OptimizerConsts c = bnb::make_optimizer_consts(optimizer, *hparams);
  const auto grid1 = grid_table(qmap1);
  const auto grid2 = two && grid1 ? grid_table(qmap2) : nullptr;
  BNB_REQUIRE(grid1 && (grid2 || !two), BNB_ERR_OUT_OF_MEMORY, "cannot allocate the code table of qmap%d (%zu bytes)",
              grid1 ? 2 : 1, sizeof(GridTable));
  bnb_cpu::Opt8Args a{&c,
                      g,
                      p,
                      dtype,
                      static_cast<float>(hparams->gnorm_scale),
                      state1,
                      two ? state2 : nullptr,
                      qmap1,
                      qmap2,
                      absmax1,
                      absmax2,
                      grid1->code,
                      grid2 ? grid2->code : nullptr,
                      grid1->has_bound ? grid1->bound : nullptr,
                      grid2 && grid2->has_bound ? grid2->bound : nullptr,
                      grid1->keys.empty() ? nullptr : grid1->keys.data(),
                      grid2 && !grid2->keys.empty() ? grid2->keys.data() : nullptr,
                      n};
  const auto& kt = kernels();
  parallel_for(n, 64 * kBlock, [&](int64_t i0, int64_t i1) { kt.optimizer_8bit_blockwise(a, i0, i1); });
  return bnb_cpu::ok();
}

}  // extern "C"
