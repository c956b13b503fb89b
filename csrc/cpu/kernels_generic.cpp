// Portable kernel tables (any CPU: 128-bit vectors, NEON on aarch64) and the run-time
// choice among the tables.
#define FUSEDRNN_ISA_NS generic
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "fusedrnn.h"
#include "kernels_impl.h"
#include "vec_portable.h"

namespace fusedrnn {
namespace cpu {

#if defined(__x86_64__) || defined(_M_X64)
const KernelTable<float>* kernels_avx512_f32();
const KernelTable<double>* kernels_avx512_f64();
const KernelTable<float>* kernels_avx2_f32();
const KernelTable<double>* kernels_avx2_f64();
#endif
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(FUSEDRNN_NO_BF16)
#define FUSEDRNN_BF16_TABLE 1
const KernelTable<bfloat16_t>* kernels_avx512_bf16();
#endif

namespace {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect_isa() {
  Isa best = Isa::kGeneric;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    best = Isa::kAvx512;
#endif
  // FUSEDRNN_CPU_ISA caps the choice (never raises it above what the CPU has).
  if (const char* env = std::getenv("FUSEDRNN_CPU_ISA")) {
    Isa cap = best;
    if (std::strcmp(env, "generic") == 0) cap = Isa::kGeneric;
    if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
    if (int(cap) < int(best)) best = cap;
  }
  return best;
}

[[maybe_unused]] Isa the_isa() {  // only x86-64 has tables to choose from
  static const Isa isa = detect_isa();
  return isa;
}

// AVX512_BF16 (vdpbf16ps, vcvtneps2bf16) beside the AVX-512 table, which
// FUSEDRNN_CPU_ISA=avx2|generic also turns off.
bool detect_bf16() {
#if defined(FUSEDRNN_BF16_TABLE) && (defined(__GNUC__) || defined(__clang__))
  return the_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

}  // namespace

template <>
const KernelTable<float>& select_kernels<float>() {
  static const KernelTable<float> g = generic::make_table<generic::VecPortable<float>>();
#if defined(__x86_64__) || defined(_M_X64)
  if (the_isa() == Isa::kAvx512) return *kernels_avx512_f32();
  if (the_isa() == Isa::kAvx2) return *kernels_avx2_f32();
#endif
  return g;
}

template <>
const KernelTable<double>& select_kernels<double>() {
  static const KernelTable<double> g = generic::make_table<generic::VecPortable<double>>();
#if defined(__x86_64__) || defined(_M_X64)
  if (the_isa() == Isa::kAvx512) return *kernels_avx512_f64();
  if (the_isa() == Isa::kAvx2) return *kernels_avx2_f64();
#endif
  return g;
}

template <>
const KernelTable<bfloat16_t>& select_kernels<bfloat16_t>() {
#if defined(FUSEDRNN_BF16_TABLE)
  if (cpu_has_bf16()) return *kernels_avx512_bf16();
#endif
  throw std::runtime_error(
      "fusedrnn: the bfloat16 CPU kernels need AVX512_BF16, which this CPU lacks (or "
      "FUSEDRNN_CPU_ISA caps the kernels below AVX-512)");
}

}  // namespace cpu

bool cpu_has_bf16() {
  static const bool v = cpu::detect_bf16();
  return v;
}

}  // namespace fusedrnn
