// bfloat16 <-> float32 one value at a time, for the drivers' little scalar work (a bias
// sum, column sums, an empty product), written once for every type with widen / narrow:
// the kernels' own conversions are vector instructions (kernels_avx512bf16.cpp).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Scalar sums of a layer's type: float32 for bfloat16 (rounded once, by narrow), the type
// itself otherwise; widen and narrow are the identity then.
template <typename T>
using sum_t = std::conditional_t<std::is_same_v<T, bfloat16_t>, float, T>;
inline float widen(bfloat16_t v) { return to_float(v); }
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
template <typename T>
T narrow(sum_t<T> v) {
  if constexpr (std::is_same_v<T, bfloat16_t>)
    return to_bf16(v);
  else
    return v;
}

}  // namespace cpu
}  // namespace fusedrnn
