// AVX-512 kernel tables. Built with the AVX-512 flags from simd.cmake; only x86-64.
#if defined(__x86_64__) || defined(_M_X64)
#define FUSEDRNN_ISA_NS avx512
#include "kernels_impl.h"
#include "vec_avx512.h"

namespace fusedrnn {
namespace cpu {
const KernelTable<float>* kernels_avx512_f32() {
  static const KernelTable<float> t = avx512::make_table<avx512::VecAvx512<float>>();
  return &t;
}
const KernelTable<double>* kernels_avx512_f64() {
  static const KernelTable<double> t = avx512::make_table<avx512::VecAvx512<double>>();
  return &t;
}
}  // namespace cpu
}  // namespace fusedrnn
#endif
