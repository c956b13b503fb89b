// A multithreaded GEMM on the recurrence's micro-kernel, for the large products around
// the recurrence (input projection, dX, dW_ih, dW_hh): AVX-512 where the CPU has it (MKL
// picks AVX2 kernels on AMD CPUs) and bitwise identical for any thread count.
#pragma once

#include <cstdint>

namespace fusedrnn {

// C[M,N] = (accumulate ? C : 0) + op(A) op(B) (+ bias[j] broadcast over rows)
//   op(A)[i,k] = a_trans ? A[k*lda + i] : A[i*lda + k]
//   op(B)[k,j] = b_trans ? B[j*ldb + k] : B[k*ldb + j]
//   C row-major with leading dimension ldc; bias [N] or nullptr.
// Every element is one fma chain over k = 0..K-1 in order, so neither the blocking nor
// num_threads changes the result. C must not overlap A, B or bias.
// bfloat16 (where cpu_has_bf16()): float32 sums, rounded once per element (what C held,
// when accumulating, is added to the sum before that rounding); a bias and accumulate
// together are refused (std::invalid_argument).
template <typename scalar_t>
void gemm_cpu(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool a_trans,
              const scalar_t* B, int64_t ldb, bool b_trans, scalar_t* C, int64_t ldc,
              const scalar_t* bias, bool accumulate, int num_threads);

// gemm_cpu with B given row by row: op(B)[k,j] = b_rows[k][j], a row of zeros where
// b_rows[k] is nullptr (no bias). The rows are packed straight from where they are, so
// a B gathered from scattered rows (h_prev of packed sequences in dW_hh) costs no copy;
// the results are those of gemm_cpu on the gathered matrix, bit for bit.
template <typename scalar_t>
void gemm_cpu_rows(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool a_trans,
                   const scalar_t* const* b_rows, scalar_t* C, int64_t ldc, bool accumulate,
                   int num_threads);

// One product for gemm_cpu_pair: gemm_cpu's arguments (no bias), or gemm_cpu_rows' when
// b_rows is set (B, ldb and b_trans then unused).
template <typename scalar_t>
struct GemmArgs {
  int64_t M, N, K;
  const scalar_t* A;
  int64_t lda;
  bool a_trans;
  const scalar_t* B;
  int64_t ldb;
  bool b_trans;
  const scalar_t* const* b_rows;
  scalar_t* C;
  int64_t ldc;
  bool accumulate;
};

// gemm_cpu, or gemm_cpu_rows when a.b_rows is set.
template <typename scalar_t>
void gemm_cpu(const GemmArgs<scalar_t>& a, int num_threads);

// Two independent products (C of one overlapping nothing the other reads or writes) on one
// team: the threads are shared out between them by their flops, and each product runs
// on its share as gemm_cpu (gemm_cpu_rows) runs it, so the results are theirs, bit for
// bit. Where two products read the same long A (dW_ih = dP^T x and dW_hh = dP^T h_prev),
// each thread then streams A from memory once for twice the columns of B. One after the
// other instead: products that gemm_cpu would not run on its packed tiles or that fit one
// K block (K <= 1024), a team of one, shares that would leave a thread waiting (flops more
// than 5% off the threads' split), and the bfloat16 table (its float32 sums have their own
// buffers).
template <typename scalar_t>
void gemm_cpu_pair(const GemmArgs<scalar_t>& p, const GemmArgs<scalar_t>& q, int num_threads);

}  // namespace fusedrnn
