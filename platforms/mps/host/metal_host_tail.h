// Included by the host harness after the Metal source: what metal_host.h declares and the
// source's own numeric.h defines.
#pragma once

inline half::half(float f) : bits(bnb::float_to_half(f)) {}
inline half::operator float() const { return bnb::half_to_float(bits); }
inline bfloat::bfloat(float f) : bits(bnb::float_to_bf16(f)) {}
inline bfloat::operator float() const { return bnb::bf16_to_float(bits); }
