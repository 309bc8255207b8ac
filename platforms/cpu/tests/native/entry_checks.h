// What the C ABI test driver's two files (test_c_abi.cpp, entry_checks.cpp) share.
#pragma once

#include <string>
#include <vector>

// test_c_abi.cpp: counts a check and reports it (with the active instruction set) when !ok.
void check(bool ok, const std::string& what);
// test_c_abi.cpp: a sorted 256-entry code book.
std::vector<float> dynamic_code();

// entry_checks.cpp, run under every instruction set and thread count ...
void exact_tails();
void odd_blocksize_matmul();
// ... and once.
void more_bad_arguments();
void each_check_once();
