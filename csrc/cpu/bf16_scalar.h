// bfloat16 <-> float32 one value at a time, for the drivers' little scalar work on
// bfloat16 layers (a bias sum, column sums, an empty product): the kernels' own
// conversions are vector instructions (kernels_avx512bf16.cpp).
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedrnn.h"

namespace fusedrnn {
namespace cpu {

inline float to_float(bfloat16_t v) {
  const uint32_t bits = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Rounded to nearest even, as vcvtneps2bf16 (a NaN stays a NaN).
inline bfloat16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return bfloat16_t{uint16_t((bits >> 16) | 0x40u)};
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return bfloat16_t{uint16_t(bits >> 16)};
}

}  // namespace cpu
}  // namespace fusedrnn
