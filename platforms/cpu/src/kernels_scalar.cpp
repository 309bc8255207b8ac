// Portable scalar kernels (compiled without vectorization): the reference path on every CPU and
// the one BNB_CPU_ISA=scalar forces.
#include <stdint.h>
#include <string.h>

#include "bnb/codebooks.h"
#include "bnb/numeric.h"
#include "element.h"
#include "kernels.h"
#include "optimizer_dispatch.h"

namespace bnb_cpu {
namespace scalar {

#include "kernels_generic.inc"

}  // namespace scalar

const KernelTable kernels_scalar = [] {
  using namespace scalar;
  KernelTable t = BNB_GENERIC_TABLE;
  return t;
}();

}  // namespace bnb_cpu
