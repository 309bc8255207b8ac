// The compile-time optimizer variant of a run-time optimizer id, shared by every kernel file.
#pragma once

#include <stdint.h>

#include "bnb/bnb_c_api.h"

namespace bnb_cpu {

// An optimizer variant as a type: fn(OptimizerKind<OPT>{}) lets a generic lambda name OPT as
// decltype(kind)::value.
template <int OPT>
struct OptimizerKind {
  static constexpr int value = OPT;
};

// Calls fn(OptimizerKind<OPT>{}) for the element-wise update rule of `optimizer` and returns what
// it returns. LAMB updates as Adam and LARS as momentum: their trust ratios scale the learning
// rate outside the kernels.
template <typename Fn>
inline decltype(auto) dispatch_optimizer(int32_t optimizer, Fn&& fn) {
  switch (optimizer) {
    case BNB_OPTIM_ADAM:
    case BNB_OPTIM_LAMB:
      return fn(OptimizerKind<BNB_OPTIM_ADAM>{});
    case BNB_OPTIM_ADEMAMIX:
      return fn(OptimizerKind<BNB_OPTIM_ADEMAMIX>{});
    case BNB_OPTIM_LION:
      return fn(OptimizerKind<BNB_OPTIM_LION>{});
    case BNB_OPTIM_RMSPROP:
      return fn(OptimizerKind<BNB_OPTIM_RMSPROP>{});
    case BNB_OPTIM_ADAGRAD:
      return fn(OptimizerKind<BNB_OPTIM_ADAGRAD>{});
    default:
      return fn(OptimizerKind<BNB_OPTIM_MOMENTUM>{});
  }
}

}  // namespace bnb_cpu
