// Inputs of the native test drivers (test_c_abi.cpp, test_threads.cpp, test_alloc_faults.cpp), made
// without calling the library: seeded normal values with a zero every 17th, and their f16 / bf16
// bits; and the items of the library's comma-separated lists.
#pragma once

#include <stdint.h>

#include <random>
#include <string>
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

// The items of a comma-separated list (bnb_cpu_usable_isas(), bnb_cpu_test_allocation_sites()).
std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  for (size_t pos = 0; pos <= s.size();) {
    const size_t comma = s.find(',', pos);
    parts.push_back(s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return parts;
}

}  // namespace
