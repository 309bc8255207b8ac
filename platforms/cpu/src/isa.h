// Instruction sets the CPU library is compiled for, and the one chosen at run time.
//
// The library is built with one kernel table per instruction set (kernels_<isa>.cpp, each
// compiled with its own -m flags). At first use it picks the best table the running CPU
// supports; BNB_CPU_ISA=scalar|avx2|avx512|neon in the environment, or bnb_cpu_set_isa(),
// forces one (the tests compare every path with the reference this way).
#pragma once

#include <stdint.h>

namespace bnb_cpu {

enum Isa { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_NEON = 3, ISA_COUNT = 4 };

const char* isa_name(int isa);
// Whether `isa` was compiled in and the running CPU supports it.
bool isa_usable(int isa);
// The instruction set whose kernels run now.
int active_isa();
// Whether the avx512 8-bit optimizer kernel uses gathers (the second moment's decoding and the
// state codes from the table of the scaled value's bits) or, where gathers are slow, byte-plane
// lookups and the search over the grid (the same bits): off on AMD CPUs (a Zen 4, 2 threads,
// 16.7 M parameters: Adam8bit 16-19 -> 11-13 ms, AdEMAMix8bit 26-29 -> 18-20 ms), on elsewhere (a
// Xeon: the gathers are the faster form). bnb_cpu_set_optimizer_gathers() forces either.
bool optimizer_gathers();

}  // namespace bnb_cpu
