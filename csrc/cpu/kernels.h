// The CPU compute kernels behind the recurrence driver (rnn_cpu.cpp) and the GEMM entry
// point: one table of function pointers per instruction set and dtype, chosen once at run
// time (select_kernels). Each table is compiled in its own translation unit with its own
// ISA flags (kernels_avx512.cpp, kernels_avx2.cpp, kernels_generic.cpp), so no code built
// for AVX-512 can run on a CPU without it.
//
// Layout of a packed right-hand side B [K, N] ("panels"): columns are cut into panels of
// nr columns (the last one zero-padded); panel p holds B[k, p*nr + jj] at
// dst[p*pstride + k*nr + jj]. The recurrence packs W_hh^T (forward) or W_hh (backward)
// once per call and reuses it for all T steps.
//
// Determinism: every output element is one accumulator that starts at zero (or at cinit)
// and takes one fused multiply-add per k, k = 0..K-1 in order (gemv_nt: a fixed lane-wise
// order, used for shapes chosen without regard to threads). Tile shapes, panel ranges and
// threads only decide who computes an element, never how, so results are bitwise
// identical for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedrnn {
namespace cpu {

enum class EpKind : int {
  kStore = 0,    // out = acc (+ x1[j] broadcast over rows when x1 != nullptr and ld1 == 0,
                 //            + x1[r, j] when ld1 != 0)
  kAct = 1,      // out = phi(acc + x1)              forward step: x1 = P_t
  kActGrad = 2,  // out = (acc + x1) * phi'(x2)      BPTT step: x1 = G_t (nullable), x2 = h_t
};

// Epilogue operands. Row r, column j of the tile reads x1[r*ld1 + j], x2[r*ld2 + j] and
// writes out[r*ldo + j]; the caller points them at the first row of the tile's rows.
// out may alias x1 (each element is read before it is written).
template <typename T>
struct Epilogue {
  EpKind kind = EpKind::kStore;
  int act = 0;  // 0 tanh, 1 relu (fusedrnn::Activation)
  T* out = nullptr;
  int64_t ldo = 0;
  const T* x1 = nullptr;
  int64_t ld1 = 0;
  const T* x2 = nullptr;
  int64_t ld2 = 0;
};

template <typename T>
struct KernelTable {
  const char* isa;
  int nr;  // panel width in elements
  // K is packed in groups of kstep consecutive k (zero-padded to a multiple of kstep): 1,
  // or 2 for the bfloat16 table, whose dot-product instructions take k in pairs (panel p
  // holds B[k, p*nr + jj] at dst[p*pstride + (k/2)*2*nr + 2*jj + k%2]). pstride is then at
  // least round_up(K, kstep) * nr.
  int kstep = 1;

  // Pack panels [p0, p1) of B[k, j] = src[k*rs + j*cs] (k < K, j < N; zero beyond N).
  void (*pack)(const T* src, int64_t rs, int64_t cs, int64_t K, int64_t N, int64_t p0, int64_t p1,
               T* dst, int64_t pstride);

  // C[r, j] = epilogue(cinit[r, j] + sum_k A[r, k] B[k, j]) for rows r < m and the
  // columns of panels [p0, p1) below N. A[r, k] = a[r*lda + k], or a[k*lda + r] when
  // a_trans. cinit (nullable, ldc) seeds the accumulators: a K-blocked product continues
  // the same fma chain, so blocking does not change the result.
  void (*gemm)(int64_t m, int64_t K, const T* a, int64_t lda, bool a_trans, const T* bp,
               int64_t pstride, int64_t p0, int64_t p1, int64_t N, const T* cinit, int64_t ldc,
               const Epilogue<T>& ep);

  // The epilogue alone on rows r < m, columns [c0, c1), with acc[r*ldacc + j] as the
  // accumulator (zero when acc is nullptr).
  void (*pointwise)(int64_t m, int64_t c0, int64_t c1, const T* acc, int64_t ldacc,
                    const Epilogue<T>& ep);

  // acc[r*ldacc + j] = sum_k a[r*lda + k] * w[j*ldw + k] for rows r < m and columns j in
  // [j0, j1) (nullptr in a table without an unpacked path: the bfloat16 one): a few rows times W^T
  // with W read in place, unpacked (one step of a short sequence; W is read once per 4 rows).
  // Lane-wise dot products, then the lanes in a fixed order: not the packed kernel's chain, so
  // callers choose between the two by shape, never by thread.
  void (*gemv_nt)(int64_t m, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                  int64_t j0, int64_t j1, T* acc, int64_t ldacc);

  // acc[r*ldacc + j] = (cinit ? cinit[r*ldc + j] : 0) + sum_k a[r*lda + k] * w[k*ldw + j]
  // for rows r < m, columns j in [j0, j1): a few rows times a row-major W read in place.
  // Each element is the packed gemm's chain (one fma per k in order), so results are
  // bitwise the packed kernel's; acc may alias cinit.
  void (*gemv_nn)(int64_t m, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                  int64_t j0, int64_t j1, const T* cinit, int64_t ldc, T* acc, int64_t ldacc);

  // The same two few-row products with the epilogue fused, for a table whose accumulators
  // are not of type T (bfloat16: float32 sums, rounded once by the epilogue): rows r < m,
  // columns [j0, j1) of ep get epilogue(sum_k a[r*lda + k] * w[j*ldw + k]) (_nt: lane-wise
  // sums, as gemv_nt) or epilogue(sum_k a[r*lda + k] * w[k*ldw + j]) (_nn: the packed
  // kernel's chain, so bitwise the packed result). nullptr in the other tables, whose
  // driver path is gemv_nt / gemv_nn and then pointwise.
  void (*gemv_nt_ep)(int64_t m, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                     int64_t j0, int64_t j1, const Epilogue<T>& ep) = nullptr;
  void (*gemv_nn_ep)(int64_t m, int64_t K, const T* a, int64_t lda, const T* w, int64_t ldw,
                     int64_t j0, int64_t j1, const Epilogue<T>& ep) = nullptr;

  // A table whose accumulators are not of type T (bfloat16) has no cinit in gemm (a seed of
  // type T would round the sums twice); a product cut into K blocks (gemm_cpu) carries its
  // float32 sums from block to block instead. gemm_acc: c[r*ldc + j] = (seed ? c[r*ldc + j]
  // : 0) + sum_k A[r, k] B[k, j] for rows r < m and every column j of panels [p0, p1) (ldc
  // >= p1 * nr), each sum continuing one chain, so the blocks give the bits of one pass;
  // pointwise_acc: the epilogue on rows r < m, columns [c0, c1), from such sums. nullptr in
  // the other tables.
  void (*gemm_acc)(int64_t m, int64_t K, const T* a, int64_t lda, bool a_trans, const T* bp,
                   int64_t pstride, int64_t p0, int64_t p1, float* c, int64_t ldc,
                   bool seed) = nullptr;
  void (*pointwise_acc)(int64_t m, int64_t c0, int64_t c1, const float* acc, int64_t ldacc,
                        const Epilogue<T>& ep) = nullptr;

  // Rows r < m, columns j < n (n <= narrow_n: one vector) of ep get epilogue((cinit ?
  // cinit[r*ldc + j] : 0) + sum_k A[r, k] B[k, j]), as gemm's tiles give them: A[r, k] =
  // a[k*lda + r] when a_trans, else a[r*lda + k]; B[k, j] = b[k*ldb + j], or b_rows[k][j]
  // when b_rows is set (a row of zeros where b_rows[k] is nullptr). A B too narrow for a
  // panel (a weight gradient, dX, an input projection or a recurrence step at a small input
  // or hidden size), read where it lies. Each element is the packed gemm's chain (one fma
  // per k in order) and epilogue, so results are bitwise the packed kernel's (a NaN's sign
  // aside: where both factors of the backward epilogue's product are NaN, x86 returns the
  // first operand's, and the compiler may order the two copies' operands differently). A product
  // cut into K blocks (a_trans with m past one tile, or K > 2048) keeps its sums in ep.out between
  // blocks: only with a kStore epilogue. nullptr in the bfloat16 table.
  void (*gemm_narrow)(int64_t m, int64_t K, const T* a, int64_t lda, bool a_trans, const T* b,
                      int64_t ldb, const T* const* b_rows, int64_t n, const T* cinit, int64_t ldc,
                      const Epilogue<T>& ep) = nullptr;
  int narrow_n = 0;

  // y[i] = tanh(x[i]) for i < n (the kernels' tanh, exposed for tests).
  void (*tanh)(const T* x, T* y, int64_t n);
};

// The best table this CPU supports: AVX-512 (F, DQ, VL, BW), then AVX2+FMA, then generic.
// FUSEDRNN_CPU_ISA=avx512|avx2|generic in the environment caps the choice (tests, bench).
// bfloat16_t has one table (AVX-512 BF16); where the CPU lacks it (cpu_has_bf16() false),
// select_kernels<bfloat16_t> throws std::runtime_error.
template <typename T>
const KernelTable<T>& select_kernels();

}  // namespace cpu
}  // namespace fusedrnn
