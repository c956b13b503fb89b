// Portable 128-bit vectors (4 floats / 2 doubles) on GCC/Clang vector extensions: the
// kernels for every CPU without AVX2 (ARM, POWER, RISC-V, old x86). Same interface as
// vec_avx2.h / vec_avx512.h, so kernels_impl.h is written once. The compiler lowers the
// operators to the target's vector unit (NEON on aarch64, SSE2 on x86-64).
//
// fma: on aarch64 the NEON fused multiply-add (always present there); elsewhere a
// multiply then an add, since without FMA hardware std::fma is a slow library call. The
// translation unit is compiled with -ffp-contract=off (simd.cmake), so every copy of an
// element's chain is the same instructions and results stay identical for any thread
// count.
#pragma once

#include <cstdint>

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename T>
struct PortableRegs;
template <>
struct PortableRegs<float> {
  typedef float reg __attribute__((vector_size(16)));
  typedef int32_t ireg __attribute__((vector_size(16)));
  static constexpr int32_t exp_bias = 127;
  static constexpr int mant_bits = 23;
  static constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23
};
template <>
struct PortableRegs<double> {
  typedef double reg __attribute__((vector_size(16)));
  typedef int64_t ireg __attribute__((vector_size(16)));
  static constexpr int64_t exp_bias = 1023;
  static constexpr int mant_bits = 52;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2^52
};

template <typename T>
struct VecPortable {
  using scalar_t = T;
  using P = PortableRegs<T>;
  using reg = typename P::reg;
  using ireg = typename P::ireg;  // lanes of the same width: masks and exponent bits
  using mask = ireg;              // all ones in the active lanes
  static constexpr int W = int(16 / sizeof(T));
#if defined(__aarch64__)
  static constexpr int nregs = 32;    // v0-v31
  static constexpr int row_regs = 1;  // fmla by element: each row's A value in a register
  static constexpr const char* isa = "neon";
#else
  static constexpr int nregs = 16;
  static constexpr int row_regs = 0;
  static constexpr const char* isa = "generic";
#endif

  static reg zero() { return reg{}; }
  static reg set1(T x) {  // a broadcast (a loop over the lanes compiles to lane inserts)
    if constexpr (W == 4)
      return reg{x, x, x, x};
    else
      return reg{x, x};
  }
  static reg load(const T* p) {
    reg v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(T* p, reg v) { __builtin_memcpy(p, &v, sizeof(v)); }
  static mask tail_mask(int n) {
    mask m;
    for (int i = 0; i < W; ++i) m[i] = i < n ? -1 : 0;
    return m;
  }
  // Lanes outside the mask are neither read nor written (they load as zero).
  static reg load_masked(const T* p, mask m) {
    reg v{};
    for (int i = 0; i < W; ++i)
      if (m[i]) v[i] = p[i];
    return v;
  }
  static void store_masked(T* p, mask m, reg v) {
    for (int i = 0; i < W; ++i)
      if (m[i]) p[i] = v[i];
  }
#if defined(__aarch64__)
  static reg fma(reg a, reg b, reg c) {
    if constexpr (sizeof(T) == 4)
      return reg(vfmaq_f32(float32x4_t(c), float32x4_t(a), float32x4_t(b)));
    else
      return reg(vfmaq_f64(float64x2_t(c), float64x2_t(a), float64x2_t(b)));
  }
#else
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
#endif
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg div(reg a, reg b) { return a / b; }
  static ireg sign_bits() { return ireg(set1(T(-0.0))); }
  static reg abs(reg a) { return reg(ireg(a) & ~sign_bits()); }
  // min(NaN, b) = b, as the x86 min instructions (vtanh restores NaN at the end).
  static reg min(reg a, reg b) { return a < b ? a : b; }
  // relu that propagates NaN like torch.relu: max(0, NaN) = NaN.
  static reg relu(reg a) { return a > reg{} ? a : (a != a ? a : reg{}); }
  // g where h <= 0 does not hold (NaN included), else 0: torch's relu backward.
  static reg relu_backward(reg g, reg h) { return h <= reg{} ? reg{} : g; }
  // Round to nearest even by adding and subtracting 1.5 * 2^mant_bits: exact for |a| below
  // 2^(mant_bits - 1) (vtanh rounds values of at most 58 in magnitude, 116 for double).
  static reg round(reg a) {
    const reg m = set1(P::round_magic);
    return (a + m) - m;
  }
  // a * 2^n for integer-valued n in the normal exponent range.
  static reg scale2n(reg a, reg n) {
    const ireg e = (__builtin_convertvector(n, ireg) + P::exp_bias) << P::mant_bits;
    return a * reg(e);
  }
  static reg copysign(reg mag, reg sgn) {
    const ireg s = sign_bits();
    return reg((ireg(mag) & ~s) | (ireg(sgn) & s));
  }
  static reg select_nan(reg x, reg v) { return x != x ? x : v; }
  // v[i], row i of a W x W block, becomes column i (pack's transposed sources).
  static void transpose(reg v[W]) {
    T m[W][W];
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < W; ++j) m[j][i] = v[i][j];
    for (int i = 0; i < W; ++i) v[i] = load(m[i]);
  }
};

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
