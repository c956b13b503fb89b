// Portable "vector" of one element: the generic fallback of the SIMD kernels (ARM, old x86).
// Same interface as vec_avx2.h / vec_avx512.h, so kernels_impl.h is written once.
#pragma once

#include <cmath>
#include <cstdint>

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename T>
struct VecScalar {
  using scalar_t = T;
  using reg = T;
  using mask = bool;
  static constexpr int W = 1;
  static constexpr const char* isa = "generic";

  static reg zero() { return T(0); }
  static reg set1(T x) { return x; }
  static reg load(const T* p) { return *p; }
  static void store(T* p, reg v) { *p = v; }
  static mask tail_mask(int n) { return n > 0; }
  static reg load_masked(const T* p, mask m) { return m ? *p : T(0); }
  static void store_masked(T* p, mask m, reg v) {
    if (m) *p = v;
  }
  // Plain multiply-add: without FMA hardware std::fma is a slow library call. The order of
  // operations is fixed per element, so results are still identical for any thread count.
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg div(reg a, reg b) { return a / b; }
  static reg abs(reg a) { return std::fabs(a); }
  static reg min(reg a, reg b) { return a < b ? a : b; }
  // relu that propagates NaN like torch.relu: max(0, NaN) = NaN.
  static reg relu(reg a) { return a > T(0) ? a : (a != a ? a : T(0)); }
  static reg relu_grad(reg h) { return h > T(0) ? T(1) : T(0); }
  static reg round(reg a) { return std::nearbyint(a); }
  // a * 2^n for integer-valued n in [-126, 127]
  static reg scale2n(reg a, reg n) { return std::ldexp(a, static_cast<int>(n)); }
  static reg copysign(reg mag, reg sgn) { return std::copysign(mag, sgn); }
  static reg select_nan(reg x, reg v) { return x != x ? x : v; }
};

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
