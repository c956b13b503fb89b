// AVX-512 vectors (16 floats / 8 doubles), masked tails, and the 16 x 16 word transpose.
// Only included by kernels_avx512.cpp and kernels_avx512bf16.cpp, each compiled with the
// AVX-512 flags of csrc/cpu/simd.cmake (and its own FUSEDRNN_ISA_NS) and called only where
// the CPU has them.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename T>
struct VecAvx512;

// v[i] (16 32-bit words each) becomes column i of the 16 x 16 matrix whose rows they were.
// (Always inlined: out of line, GCC 12 warns about the undefined pass-through operand of
// _mm512_unpacklo_epi32's builtin, GCC bug 105593.)
__attribute__((always_inline)) inline void transpose16(__m512i v[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // u[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3.
  for (int c = 0; c < 4; ++c) {
    const __m512i s0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
    const __m512i s1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i s2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i s3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    v[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
    v[4 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
    v[8 + c] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
    v[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
  }
}

template <>
struct VecAvx512<float> {
  using scalar_t = float;
  using reg = __m512;
  using mask = __mmask16;
  static constexpr int W = 16;
  static constexpr const char* isa = "avx512";
  static constexpr int nregs = 32;
  static constexpr int row_regs = 0;  // A broadcast from memory into one register

  static reg zero() { return _mm512_setzero_ps(); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static mask tail_mask(int n) { return n >= 16 ? mask(0xFFFF) : mask((1u << n) - 1u); }
  static reg load_masked(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store_masked(float* p, mask m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg abs(reg a) { return _mm512_abs_ps(a); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg relu(reg a) { return _mm512_max_ps(_mm512_setzero_ps(), a); }  // NaN -> NaN
  // g where h <= 0 does not hold (NaN included), else 0: torch's relu backward.
  static reg relu_backward(reg g, reg h) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_NLE_UQ), g);
  }
  static reg round(reg a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg scale2n(reg a, reg n) { return _mm512_scalef_ps(a, n); }
  static reg copysign(reg mag, reg sgn) {
    const __m512i s = _mm512_set1_epi32(INT32_MIN);
    return _mm512_castsi512_ps(
        _mm512_ternarylogic_epi32(s, _mm512_castps_si512(mag), _mm512_castps_si512(sgn), 0xAC));
  }
  static reg select_nan(reg x, reg v) {
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
  }
  // v[i], row i of a W x W block, becomes column i (pack's transposed sources).
  __attribute__((always_inline)) static void transpose(reg v[W]) {
    __m512i w[16];
    for (int i = 0; i < 16; ++i) w[i] = _mm512_castps_si512(v[i]);
    transpose16(w);
    for (int i = 0; i < 16; ++i) v[i] = _mm512_castsi512_ps(w[i]);
  }
};

template <>
struct VecAvx512<double> {
  using scalar_t = double;
  using reg = __m512d;
  using mask = __mmask8;
  static constexpr int W = 8;
  static constexpr const char* isa = "avx512";
  static constexpr int nregs = 32;
  static constexpr int row_regs = 0;  // A broadcast from memory into one register

  static reg zero() { return _mm512_setzero_pd(); }
  static reg set1(double x) { return _mm512_set1_pd(x); }
  static reg load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static mask tail_mask(int n) { return n >= 8 ? mask(0xFF) : mask((1u << n) - 1u); }
  static reg load_masked(const double* p, mask m) { return _mm512_maskz_loadu_pd(m, p); }
  static void store_masked(double* p, mask m, reg v) { _mm512_mask_storeu_pd(p, m, v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_pd(a, b); }
  static reg abs(reg a) { return _mm512_abs_pd(a); }
  static reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
  static reg relu(reg a) { return _mm512_max_pd(_mm512_setzero_pd(), a); }
  static reg relu_backward(reg g, reg h) {
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(h, _mm512_setzero_pd(), _CMP_NLE_UQ), g);
  }
  static reg round(reg a) {
    return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg scale2n(reg a, reg n) { return _mm512_scalef_pd(a, n); }
  static reg copysign(reg mag, reg sgn) {
    const __m512i s = _mm512_set1_epi64(INT64_MIN);
    return _mm512_castsi512_pd(
        _mm512_ternarylogic_epi64(s, _mm512_castpd_si512(mag), _mm512_castpd_si512(sgn), 0xAC));
  }
  static reg select_nan(reg x, reg v) {
    return _mm512_mask_mov_pd(v, _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), x);
  }
  // v[i], row i of a W x W block, becomes column i. unpack: t[2i] holds, in 128-bit lane L,
  // column 2L of rows 2i and 2i + 1 (t[2i + 1]: column 2L + 1); two lane shuffles gather
  // each column's four lanes.
  static void transpose(reg v[W]) {
    reg t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm512_unpacklo_pd(v[2 * i], v[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_pd(v[2 * i], v[2 * i + 1]);
    }
    // c = 0: the even columns, 1: the odd ones.
    for (int c = 0; c < 2; ++c) {
      const reg u0 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0x88);      // lanes 0, 2: rows 0-3
      const reg u1 = _mm512_shuffle_f64x2(t[c], t[2 + c], 0xDD);      // lanes 1, 3: rows 0-3
      const reg u2 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0x88);  // lanes 0, 2: rows 4-7
      const reg u3 = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0xDD);  // lanes 1, 3: rows 4-7
      v[c] = _mm512_shuffle_f64x2(u0, u2, 0x88);
      v[4 + c] = _mm512_shuffle_f64x2(u0, u2, 0xDD);
      v[2 + c] = _mm512_shuffle_f64x2(u1, u3, 0x88);
      v[6 + c] = _mm512_shuffle_f64x2(u1, u3, 0xDD);
    }
  }
};

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
