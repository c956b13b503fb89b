// AVX2 + FMA vectors (8 floats / 4 doubles). Only included by kernels_avx2.cpp, which is
// compiled with -mavx2 -mfma (csrc/cpu/simd.cmake) and called only where the CPU has them.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename T>
struct VecAvx2;

template <>
struct VecAvx2<float> {
  using scalar_t = float;
  using reg = __m256;
  using mask = __m256i;
  static constexpr int W = 8;
  static constexpr const char* isa = "avx2";
  static constexpr int nregs = 16;
  static constexpr int row_regs = 0;  // A broadcast from memory into one register
  // gemm copies a transposed A with long rows (kernels_impl.h, gemm_copied_a): measured
  // faster on an AVX2 host (float64 too); the other tables read it in place (not measured).
  static constexpr bool copy_a_trans = true;

  static reg zero() { return _mm256_setzero_ps(); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static mask tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg load_masked(const float* p, mask m) { return _mm256_maskload_ps(p, m); }
  static void store_masked(float* p, mask m, reg v) { _mm256_maskstore_ps(p, m, v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg relu(reg a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }  // NaN -> NaN
  // g where h <= 0 does not hold (NaN included), else 0: torch's relu backward.
  static reg relu_backward(reg g, reg h) {
    return _mm256_and_ps(_mm256_cmp_ps(h, _mm256_setzero_ps(), _CMP_NLE_UQ), g);
  }
  static reg round(reg a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg scale2n(reg a, reg n) {
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
  }
  static reg copysign(reg mag, reg sgn) {
    const reg s = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sgn));
  }
  static reg select_nan(reg x, reg v) {
    return _mm256_blendv_ps(v, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  // v[i], row i of a W x W block, becomes column i (pack's transposed sources). Per 128-bit
  // half: unpack pairs rows, shuffle_ps gathers four rows of one column; permute2f128 joins
  // the halves (rows 0-3 and 4-7).
  static void transpose(reg v[W]) {
    reg t[8], s[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3
      const reg* q = t + 4 * h;
      s[4 * h] = _mm256_shuffle_ps(q[0], q[2], 0x44);      // columns 0 | 4
      s[4 * h + 1] = _mm256_shuffle_ps(q[0], q[2], 0xEE);  // 1 | 5
      s[4 * h + 2] = _mm256_shuffle_ps(q[1], q[3], 0x44);  // 2 | 6
      s[4 * h + 3] = _mm256_shuffle_ps(q[1], q[3], 0xEE);  // 3 | 7
    }
    for (int c = 0; c < 4; ++c) {
      v[c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x20);
      v[4 + c] = _mm256_permute2f128_ps(s[c], s[4 + c], 0x31);
    }
  }
};

template <>
struct VecAvx2<double> {
  using scalar_t = double;
  using reg = __m256d;
  using mask = __m256i;
  static constexpr int W = 4;
  static constexpr const char* isa = "avx2";
  static constexpr int nregs = 16;
  static constexpr int row_regs = 0;          // A broadcast from memory into one register
  static constexpr bool copy_a_trans = true;  // as float32's

  static reg zero() { return _mm256_setzero_pd(); }
  static reg set1(double x) { return _mm256_set1_pd(x); }
  static reg load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static mask tail_mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static reg load_masked(const double* p, mask m) { return _mm256_maskload_pd(p, m); }
  static void store_masked(double* p, mask m, reg v) { _mm256_maskstore_pd(p, m, v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_pd(a, b); }
  static reg abs(reg a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
  static reg relu(reg a) { return _mm256_max_pd(_mm256_setzero_pd(), a); }
  static reg relu_backward(reg g, reg h) {
    return _mm256_and_pd(_mm256_cmp_pd(h, _mm256_setzero_pd(), _CMP_NLE_UQ), g);
  }
  static reg round(reg a) {
    return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static reg scale2n(reg a, reg n) {
    __m256i i = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(i, _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(a, _mm256_castsi256_pd(e));
  }
  static reg copysign(reg mag, reg sgn) {
    const reg s = _mm256_set1_pd(-0.0);
    return _mm256_or_pd(_mm256_andnot_pd(s, mag), _mm256_and_pd(s, sgn));
  }
  static reg select_nan(reg x, reg v) {
    return _mm256_blendv_pd(v, x, _mm256_cmp_pd(x, x, _CMP_UNORD_Q));
  }
  // v[i], row i of a W x W block, becomes column i: unpack pairs rows 0-1 and 2-3 per
  // 128-bit half (columns 0 | 2, 1 | 3), permute2f128 joins the halves.
  static void transpose(reg v[W]) {
    const reg t0 = _mm256_unpacklo_pd(v[0], v[1]), t1 = _mm256_unpackhi_pd(v[0], v[1]);
    const reg t2 = _mm256_unpacklo_pd(v[2], v[3]), t3 = _mm256_unpackhi_pd(v[2], v[3]);
    v[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    v[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    v[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    v[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
