// Run-time choice of the kernel table: the best instruction set the CPU supports, unless
// BNB_CPU_ISA or bnb_cpu_set_isa() names one.
#include <stdlib.h>
#include <string.h>
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <atomic>
#include <initializer_list>

#include "bnb/bnb_c_api.h"
#include "isa.h"
#include "kernels.h"
#include "kernels_amx.h"
#include "status.h"

namespace bnb_cpu {
namespace {

const char* const kNames[ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};

bool compiled_in(int isa) {
  switch (isa) {
    case ISA_SCALAR:
      return true;
#if defined(__x86_64__) || defined(_M_X64)
    case ISA_AVX2:
    case ISA_AVX512:
      return true;
#endif
#if defined(__aarch64__)
    case ISA_NEON:
      return true;
#endif
    default:
      return false;
  }
}

bool cpu_supports(int isa) {
  switch (isa) {
    case ISA_SCALAR:
      return true;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    case ISA_AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case ISA_AVX512:
      // The avx512 table uses F, BW, VL, DQ, BF16 (vdpbf16ps), VNNI (vpdpbusd) and VBMI (vpermi2b),
      // and some of the avx2 table's kernels (AVX2, FMA, F16C).
      return cpu_supports(ISA_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16") &&
             __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    case ISA_NEON:
      return true;  // Advanced SIMD is part of the aarch64 baseline.
#endif
    default:
      return false;
  }
}

int best_isa() {
  for (int isa : {ISA_AVX512, ISA_AVX2, ISA_NEON}) {
    if (isa_usable(isa)) return isa;
  }
  return ISA_SCALAR;
}

int parse(const char* name) {
  for (int i = 0; i < ISA_COUNT; ++i) {
    if (strcmp(name, kNames[i]) == 0) return i;
  }
  if (strcmp(name, "auto") == 0 || name[0] == '\0') return best_isa();
  return -1;
}

int initial_isa() {
  const char* env = getenv("BNB_CPU_ISA");
  if (env == nullptr) return best_isa();
  const int isa = parse(env);
  // An unusable request is reported by bnb_cpu_isa_error() and by the Python glue at import; the
  // library itself must keep working, so it falls back to the best available table.
  return (isa >= 0 && isa_usable(isa)) ? isa : best_isa();
}

std::atomic<int> g_isa{-1};

const KernelTable* table_for(int isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case ISA_AVX2:
      return &kernels_avx2;
    case ISA_AVX512:
      return &kernels_avx512;
#endif
#if defined(__aarch64__)
    case ISA_NEON:
      return &kernels_neon;
#endif
    default:
      return &kernels_scalar;
  }
}

}  // namespace

const char* isa_name(int isa) { return (isa >= 0 && isa < ISA_COUNT) ? kNames[isa] : "unknown"; }

bool isa_usable(int isa) { return isa >= 0 && isa < ISA_COUNT && compiled_in(isa) && cpu_supports(isa); }

int active_isa() {
  const int isa = g_isa.load(std::memory_order_acquire);
  if (isa >= 0) return isa;
  // First use: publish the initial choice only if no bnb_cpu_set_isa() got in first. A plain store
  // here undid a set_isa made on another thread between the load above and it (a cold start of
  // tests/native/test_threads.cpp: set_isa("scalar"), then get_isa() gave "avx512").
  int expected = -1;
  const int initial = initial_isa();
  return g_isa.compare_exchange_strong(expected, initial, std::memory_order_acq_rel, std::memory_order_acquire)
             ? initial
             : expected;
}

const KernelTable& kernels() { return *table_for(active_isa()); }

namespace {

// The AMX features this process may use, checked once: AMX-TILE and AMX-BF16 on the CPU (and
// whether it has AMX-INT8 too), the tile state enabled by the operating system (XCR0 bits 17 and
// 18), and this process granted the tile data state (Linux asks for it once per process:
// ARCH_REQ_XCOMP_PERM, feature 18).
struct AmxFeatures {
  bool bf16 = false;  // AMX-TILE + AMX-BF16, allowed by the operating system
  bool int8 = false;  // and AMX-INT8
};

const AmxFeatures& amx_features() {
  static const AmxFeatures f = [] {
    AmxFeatures r;
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return r;
    const bool amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1, amx_int8 = (edx >> 25) & 1;
    if (!amx_bf16 || !amx_tile) return r;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1)) return r;  // OSXSAVE
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return r;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return r;
    r.bf16 = true;
    r.int8 = amx_int8;
#endif
    return r;
  }();
  return f;
}

// BNB_CPU_AMX=0 in the environment, or bnb_cpu_set_amx(0), turns the AMX paths off.
std::atomic<int> g_amx{-1};

bool amx_enabled() {
  int on = g_amx.load(std::memory_order_acquire);
  if (on < 0) {
    // First use: as active_isa(), never overwrite a bnb_cpu_set_amx() made meanwhile.
    const char* env = getenv("BNB_CPU_AMX");
    const int initial = (env != nullptr && strcmp(env, "0") == 0) ? 0 : 1;
    int expected = -1;
    on = g_amx.compare_exchange_strong(expected, initial, std::memory_order_acq_rel, std::memory_order_acquire)
             ? initial
             : expected;
  }
  return on == 1;
}

}  // namespace

bool amx_usable() { return amx::compiled_in() && active_isa() == ISA_AVX512 && amx_enabled() && amx_features().bf16; }

bool amx_int8_usable() { return amx_features().int8 && amx::int8_compiled_in() && amx_usable(); }

namespace {
std::atomic<int> g_optimizer_gathers{-1};  // -1: by the CPU's vendor
}  // namespace

bool optimizer_gathers() {
  const int forced = g_optimizer_gathers.load(std::memory_order_acquire);
  if (forced >= 0) return forced == 1;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const bool amd = __builtin_cpu_is("amd");
  return !amd;
#else
  return true;
#endif
}

namespace {
std::atomic<int> g_panel_dots{0};  // 1: the panel matmuls use dot products even where AMX runs
}  // namespace

bool panel_usable() { return amx::compiled_in() && active_isa() == ISA_AVX512 && amx_enabled(); }

bool panel_dots_form() { return !amx_features().bf16 || g_panel_dots.load(std::memory_order_acquire) == 1; }

bool panel_dots() { return panel_usable() && panel_dots_form(); }

}  // namespace bnb_cpu

extern "C" {

// CPU-only extension: the active instruction set's name ("scalar", "avx2", "avx512", "neon").
BNB_API const char* bnb_cpu_get_isa(void) { return bnb_cpu::isa_name(bnb_cpu::active_isa()); }

// CPU-only extension: force an instruction set ("auto" = the best). Unknown names and sets this
// build or CPU lacks are BNB_ERR_INVALID_ARGUMENT with a message; the active set is unchanged.
BNB_API int32_t bnb_cpu_set_isa(const char* name) {
  BNB_REQUIRE(name != nullptr, BNB_ERR_NULL_POINTER, "name must not be NULL");
  const int isa = bnb_cpu::parse(name);
  BNB_REQUIRE(isa >= 0, BNB_ERR_INVALID_ARGUMENT,
              "unknown instruction set '%s'; expected one of auto, scalar, avx2, avx512, neon", name);
  BNB_REQUIRE(bnb_cpu::isa_usable(isa), BNB_ERR_INVALID_ARGUMENT,
              "instruction set '%s' is not usable here (not compiled in, or the CPU lacks it)", name);
  bnb_cpu::g_isa.store(isa, std::memory_order_release);
  return bnb_cpu::ok();
}

// CPU-only extension: 1 when the AMX paths run (CPU, operating system, the avx512 table active
// and not turned off), else 0.
BNB_API int32_t bnb_cpu_amx_usable(void) { return bnb_cpu::amx_usable() ? 1 : 0; }

// CPU-only extension: 1 when, in addition, the LLM.int8() GEMM runs on the AMX-INT8 tile unit
// (bnb_int8_linear_matmul from 8 rows, k a multiple of 64).
BNB_API int32_t bnb_cpu_amx_int8_usable(void) { return bnb_cpu::amx_int8_usable() ? 1 : 0; }

// CPU-only extension: turn the AMX paths on (1, the default where supported) or off (0); the tests
// compare both with the reference this way.
BNB_API void bnb_cpu_set_amx(int32_t on) { bnb_cpu::g_amx.store(on ? 1 : 0, std::memory_order_release); }

// CPU-only extension: 1 when the avx512 8-bit optimizer kernel uses gathers, 0 where it uses the
// byte-plane lookups and the grid search instead (the same bits; see bnb_cpu::optimizer_gathers).
BNB_API int32_t bnb_cpu_optimizer_gathers(void) { return bnb_cpu::optimizer_gathers() ? 1 : 0; }

// CPU-only extension: force the 8-bit optimizer kernel's gathers on (1) or off (0), or back to the
// CPU's choice (-1); the tests compare both forms with the scalar kernel this way.
BNB_API void bnb_cpu_set_optimizer_gathers(int32_t mode) {
  bnb_cpu::g_optimizer_gathers.store(mode < 0 ? -1 : (mode ? 1 : 0), std::memory_order_release);
}

// CPU-only extension: 1 when the panel matmuls (bnb_cpu_weight_matmul_amx and _t_amx) run: on the
// AMX tile unit, or with AVX512-BF16 dot products where the CPU has no AMX; else 0.
BNB_API int32_t bnb_cpu_panel_usable(void) { return bnb_cpu::panel_usable() ? 1 : 0; }

// CPU-only extension: 1 when the panel matmuls run with AVX512-BF16 dot products (no AMX, or forced).
BNB_API int32_t bnb_cpu_panel_dots(void) { return bnb_cpu::panel_dots() ? 1 : 0; }

// CPU-only extension: force (1) the panel matmuls' dot-product form where AMX runs too, or go back to
// the tile unit there (0, the default); the tests cover both forms this way.
BNB_API void bnb_cpu_set_panel_dots(int32_t force) {
  bnb_cpu::g_panel_dots.store(force ? 1 : 0, std::memory_order_release);
}

// CPU-only extension: an error message when BNB_CPU_ISA names an unknown or unusable set ("" if fine).
BNB_API const char* bnb_cpu_isa_env_error(void) {
  const char* env = getenv("BNB_CPU_ISA");
  if (env == nullptr) return "";
  const int isa = bnb_cpu::parse(env);
  if (isa < 0) return "BNB_CPU_ISA names an unknown instruction set; expected auto, scalar, avx2, avx512 or neon";
  if (!bnb_cpu::isa_usable(isa)) return "BNB_CPU_ISA names an instruction set this build or CPU cannot run";
  return "";
}

// CPU-only extension: comma-separated instruction sets compiled in and usable on this CPU.
BNB_API const char* bnb_cpu_usable_isas(void) {
  // Built once by C++'s thread-safe static initialisation. (A flag checked before filling a static
  // buffer let two first callers write it at once while a third read it: a data race that
  // ThreadSanitizer reported.)
  struct List {
    char text[64] = "";
  };
  static const List list = [] {
    List l;
    for (int i = 0; i < bnb_cpu::ISA_COUNT; ++i) {
      if (!bnb_cpu::isa_usable(i)) continue;
      if (l.text[0]) strcat(l.text, ",");
      strcat(l.text, bnb_cpu::isa_name(i));
    }
    return l;
  }();
  return list.text;
}

}  // extern "C"
