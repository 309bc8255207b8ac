// Inputs of the native test drivers (test_c_abi.cpp, test_threads.cpp), made without calling the
// library: seeded normal values with a zero every 17th, and their f16 / bf16 bits.
#pragma once

#include <stdint.h>

#include <random>
#include <vector>

#include "bnb/bnb_c_api.h"
#include "bnb/numeric.h"

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  for (size_t i = 3; i < n; i += 17) v[i] = 0.0f;
  return v;
}

std::vector<uint16_t> to16(const std::vector<float>& v, int32_t dtype) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    o[i] = dtype == BNB_DTYPE_BF16 ? bnb::float_to_bf16(v[i]) : bnb::float_to_half(v[i]);
  return o;
}

}  // namespace
