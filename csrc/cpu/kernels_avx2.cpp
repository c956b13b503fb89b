// AVX2+FMA kernel tables. Built with -mavx2 -mfma from simd.cmake; only x86-64.
#if defined(__x86_64__) || defined(_M_X64)
#define FUSEDRNN_ISA_NS avx2
#include "kernels_impl.h"
#include "vec_avx2.h"

namespace fusedrnn {
namespace cpu {
const KernelTable<float>* kernels_avx2_f32() {
  static const KernelTable<float> t = avx2::make_table<avx2::VecAvx2<float>>();
  return &t;
}
const KernelTable<double>* kernels_avx2_f64() {
  static const KernelTable<double> t = avx2::make_table<avx2::VecAvx2<double>>();
  return &t;
}
}  // namespace cpu
}  // namespace fusedrnn
#endif
