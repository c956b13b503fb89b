// gemm_cpu (gemm_cpu.h): K-blocked, packed right-hand side, one team per call.
//
// The team splits the columns (panels) when there are enough of them, else the rows.
// Each thread packs the panels it uses for one K block into its own buffer (so they sit
// in its L2), then runs the micro-kernel over its rows; the next K block continues the
// same accumulators from C. No thread reads what another writes, so there is no barrier.
// A B at most one vector wide skips the panels (they would be half zeros): each thread
// runs KernelTable::gemm_narrow on its rows, B read where it lies.
#include "gemm_cpu.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "aligned_buffer.h"
#include "bf16_scalar.h"
#include "kernels.h"
#include "thread_team.h"

namespace fusedrnn {

namespace {

// A packed product: its arguments (B row by row when b_rows is set: gemm_cpu_rows), the
// bias, and the plan (plan_packed).
template <typename T>
struct GemmJob : GemmArgs<T> {
  const cpu::KernelTable<T>* k = nullptr;
  const T* bias = nullptr;
  int64_t npanels = 0;
  int64_t kc = 0;
  bool split_cols = true;
  // B at most one vector wide (narrow_path): KernelTable::gemm_narrow on each thread's rows,
  // B read in place (B as it is or by rows: gemm_cpu copies a transposed B first); no panels,
  // no K blocks here.
  bool narrow = false;
  // A table with float32 sums (bfloat16, KernelTable::gemm_acc) and more than one K block:
  // the sums of every row, ldacc = npanels * nr apart; each thread its own rows and panels.
  float* acc = nullptr;
  int64_t ldacc = 0;
};

// The epilogue that stores C: + bias (one row, broadcast), or + C itself when accumulating.
// (A table with float32 sums stores C from them, and so adds C back this way: rounding once
// more, as C += product does. gemm_cpu refuses a bias with accumulate there.)
template <typename T>
cpu::Epilogue<T> store_c(T* C, int64_t ldc, const T* bias, bool add_c) {
  cpu::Epilogue<T> ep;
  ep.kind = cpu::EpKind::kStore;
  ep.out = C;
  ep.ldo = ldc;
  if (add_c) {
    ep.x1 = C;
    ep.ld1 = ldc;
  } else {
    ep.x1 = bias;  // ld1 = 0: one row broadcast
  }
  return ep;
}

template <typename T>
void gemm_thread(void* vjob, int tid, int nt) {
  const GemmJob<T>& g = *static_cast<const GemmJob<T>*>(vjob);
  const cpu::KernelTable<T>& k = *g.k;
  if (g.narrow) {
    const int64_t r0 = g.M * tid / nt, r1 = g.M * (tid + 1) / nt;
    if (r1 > r0)
      k.gemm_narrow(r1 - r0, g.K, g.a_trans ? g.A + r0 : g.A + r0 * g.lda, g.lda, g.a_trans, g.B,
                    g.ldb, g.b_rows, g.N, g.accumulate ? g.C + r0 * g.ldc : nullptr, g.ldc,
                    store_c(g.C + r0 * g.ldc, g.ldc, g.bias, false));
    return;
  }
  int64_t p0 = 0, p1 = g.npanels, r0 = 0, r1 = g.M;
  if (g.split_cols) {
    p0 = g.npanels * tid / nt;
    p1 = g.npanels * (tid + 1) / nt;
  } else {
    r0 = g.M * tid / nt;
    r1 = g.M * (tid + 1) / nt;
  }
  if (p1 <= p0 || r1 <= r0) return;
  thread_local cpu::AlignedBuffer buf;
  const int64_t ks = k.kstep;  // K packed in groups of ks (zero-padded)
  const int64_t kc_pad = (g.kc + ks - 1) / ks * ks;
  T* panels = static_cast<T*>(buf.get(size_t(kc_pad * (p1 - p0) * k.nr) * sizeof(T)));
  for (int64_t kb = 0; kb < g.K; kb += g.kc) {
    const int64_t kcur = std::min(g.kc, g.K - kb);
    const int64_t pstride = (kcur + ks - 1) / ks * ks * k.nr;
    // Panel p lives at base + p*pstride with base shifted so that p0 is the buffer start.
    T* base = panels - p0 * pstride;
    if (g.b_rows) {
      // Row by row: a pack of ks rows at their place in the panels (pstride unchanged); with
      // ks = 2 the pair's rows are copied side by side first (pack reads B with one stride).
      thread_local std::vector<T> zeros, pair;
      if (int64_t(zeros.size()) < g.N) zeros.assign(size_t(g.N), T{});
      auto row_at = [&](int64_t k) { return g.b_rows[k] ? g.b_rows[k] : zeros.data(); };
      for (int64_t kk = 0; kk < kcur; kk += ks) {
        const int64_t n = std::min(ks, kcur - kk);
        const T* row = row_at(kb + kk);
        if (ks > 1) {
          if (int64_t(pair.size()) < ks * g.N) pair.resize(size_t(ks * g.N));
          for (int64_t i = 0; i < n; ++i)
            std::memcpy(pair.data() + i * g.N, row_at(kb + kk + i), size_t(g.N) * sizeof(T));
          row = pair.data();
        }
        k.pack(row, g.N, 1, n, g.N, p0, p1, base + kk * k.nr, pstride);
      }
    } else {
      const T* bsrc = g.b_trans ? g.B + kb : g.B + kb * g.ldb;
      k.pack(bsrc, g.b_trans ? 1 : g.ldb, g.b_trans ? g.ldb : 1, kcur, g.N, p0, p1, base, pstride);
    }
    const T* a = g.a_trans ? g.A + kb * g.lda + r0 : g.A + r0 * g.lda + kb;
    const bool last = kb + kcur == g.K;
    if (g.acc) {  // float32 sums across the K blocks, C stored from them after the last
      float* acc = g.acc + r0 * g.ldacc;
      k.gemm_acc(r1 - r0, kcur, a, g.lda, g.a_trans, base, pstride, p0, p1, acc, g.ldacc, kb > 0);
      if (last)
        k.pointwise_acc(r1 - r0, p0 * k.nr, std::min(p1 * k.nr, g.N), acc, g.ldacc,
                        store_c(g.C + r0 * g.ldc, g.ldc, g.bias, g.accumulate));
      continue;
    }
    if (k.gemm_acc) {  // one K block of float32 sums: C stored by the tiles
      k.gemm(r1 - r0, kcur, a, g.lda, g.a_trans, base, pstride, p0, p1, g.N, nullptr, 0,
             store_c(g.C + r0 * g.ldc, g.ldc, g.bias, g.accumulate));
      continue;
    }
    const bool seed = kb > 0 || g.accumulate;
    k.gemm(r1 - r0, kcur, a, g.lda, g.a_trans, base, pstride, p0, p1, g.N,
           seed ? g.C + r0 * g.ldc : nullptr, g.ldc,
           store_c(g.C + r0 * g.ldc, g.ldc, last ? g.bias : nullptr, false));
  }
}

// Few rows (M <= 8) times B or B^T, B read in place, as in a single step's input
// projection or input gradient, where packing B would cost more than the product.
template <typename T>
struct FewRowsJob {
  const cpu::KernelTable<T>* k;
  int64_t M, N, K;
  const T* A;
  int64_t lda;
  const T* B;
  int64_t ldb;
  T* C;
  int64_t ldc;
  const T* bias;
  bool b_trans;
  bool accumulate;
};

template <typename T>
void few_rows_thread(void* vjob, int tid, int nt) {
  const FewRowsJob<T>& g = *static_cast<const FewRowsJob<T>*>(vjob);
  const int64_t blocks = (g.N + 15) / 16;  // columns in blocks of 16 between the threads
  const int64_t j0 = std::min(g.N, blocks * tid / nt * 16);
  const int64_t j1 = std::min(g.N, blocks * (tid + 1) / nt * 16);
  if (j1 <= j0) return;
  if (g.k->gemv_nt_ep) {  // float32 sums: the epilogue fused, C rounded once
    const cpu::Epilogue<T> ep = store_c(g.C, g.ldc, g.bias, g.accumulate);
    if (g.b_trans)
      g.k->gemv_nt_ep(g.M, g.K, g.A, g.lda, g.B, g.ldb, j0, j1, ep);
    else
      g.k->gemv_nn_ep(g.M, g.K, g.A, g.lda, g.B, g.ldb, j0, j1, ep);
    return;
  }
  if (g.b_trans)
    g.k->gemv_nt(g.M, g.K, g.A, g.lda, g.B, g.ldb, j0, j1, g.C, g.ldc);
  else  // the packed kernel's own chains, C as their seed when accumulating
    g.k->gemv_nn(g.M, g.K, g.A, g.lda, g.B, g.ldb, j0, j1, g.accumulate ? g.C : nullptr, g.ldc, g.C,
                 g.ldc);
  if (g.bias) g.k->pointwise(g.M, j0, j1, g.C, g.ldc, store_c(g.C, g.ldc, g.bias, false));
}

// K up to this: gemm_cpu's few-row products over all rows (see there), where they beat the
// packed tiles (1024 x 1024 x K, a transposed A, 2 threads, C++ harness, alternated twice):
// float32 K = 9 55 against 81-89 us, K = 12 85 against 93-94, K = 14 level, K = 16 121
// against 103-110; float64 K = 8 96-98 against 191-192, K = 16 234-238 against 252-254,
// K = 18 level, K = 20 302-304 against 261-266. The bfloat16 table's packed tiles round
// their plain stores straight from the registers and pass its few-row products from K = 8
// on (one thread: 93 against 119 us; 70 against 75 at K = 1).
inline int64_t few_k(const cpu::KernelTable<float>&) { return 12; }
inline int64_t few_k(const cpu::KernelTable<double>&) { return 16; }
inline int64_t few_k(const cpu::KernelTable<bfloat16_t>&) { return 4; }

// gemm_cpu's two paths besides the packed tiles, chosen by shape alone (see there): few rows
// times B or B^T read in place, and few k over all rows.
inline bool few_rows_path(int64_t M, bool a_trans, bool b_trans, bool accumulate) {
  return M <= 8 && !a_trans && (!b_trans || !accumulate);
}
template <typename T>
bool few_k_path(const cpu::KernelTable<T>& k, int64_t K, bool b_trans) {
  return K <= few_k(k) && !b_trans;
}
// After those two: B at most one vector wide, where a panel of the packed tiles would be
// half zeros (KernelTable::gemm_narrow; a transposed B is copied into rows first).
template <typename T>
bool narrow_path(const cpu::KernelTable<T>& k, int64_t N) {
  return k.gemm_narrow && N <= k.narrow_n;
}

// dst[r*cols + c] = src[c*ld + r] for r < rows, c < cols: a transposed operand (read
// column by column) copied into rows.
template <typename T>
void copy_transposed(const T* src, int64_t ld, int64_t rows, int64_t cols, T* dst) {
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) dst[r * cols + c] = src[c * ld + r];
}

// A product over K = 0: C = (accumulate ? C : 0) + bias (bias may be nullptr).
template <typename T>
void empty_sum(int64_t M, int64_t N, T* C, int64_t ldc, const T* bias, bool accumulate) {
  using S = cpu::sum_t<T>;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      C[i * ldc + j] = cpu::narrow<T>((accumulate ? cpu::widen(C[i * ldc + j]) : S(0)) +
                                      (bias ? cpu::widen(bias[j]) : S(0)));
}

// The team for an M x N x K product.
int threads_for(int64_t M, int64_t N, int64_t K, int num_threads) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  int nt = std::min(num_threads, cpu::hardware_threads());
  // ~40 us of work: waking the team costs about as much. Unless B or C is large: each
  // thread reads (or packs) only its own columns of B and writes its own part of C, and
  // with few rows (a single step, M = 1) going through a 1024 x 1024 B, or with K = 1
  // (a single step's weight gradient) writing a 1024 x 1024 C, is most of the call.
  if (flops < 1e7 && double(K) * double(N) < 65536.0 && double(M) * double(N) < 65536.0) nt = 1;
  return std::max(nt, 1);
}

// The packed job of a (no bias; B's transpose flag unused when a.b_rows is set).
template <typename T>
GemmJob<T> packed_job(const cpu::KernelTable<T>& k, const GemmArgs<T>& a) {
  GemmJob<T> g;
  static_cast<GemmArgs<T>&>(g) = a;
  if (g.b_rows) {
    g.B = nullptr;
    g.b_trans = false;
  }
  g.k = &k;
  g.npanels = (a.N + k.nr - 1) / k.nr;
  g.narrow = narrow_path(k, a.N) && !g.b_trans;
  return g;
}

// The K blocks and the split of g (g.npanels set) for a team of nt threads.
template <typename T>
void plan_packed(GemmJob<T>& g, int nt) {
  if (g.narrow) return;
  // One K block up to 1024 (a tile's panel slice then streams from L2, which the
  // micro-kernel sustains); beyond, equal blocks of at most 512 that continue from C
  // (a multiple of the table's kstep, so no k group straddles two blocks).
  const int64_t K = g.K;
  const int64_t ks = g.k->kstep;
  g.kc = K <= 1024 ? K : (K + ((K + 511) / 512) - 1) / ((K + 511) / 512);
  g.kc = std::min(K, (g.kc + ks - 1) / ks * ks);
  // The bfloat16 table copies a transposed A into row-major pairs (kernels_avx512bf16.cpp):
  // with at least as many rows as columns, split by rows, so each thread copies its own
  // rows of A^T (and packs all of B, M K against N K). The same results: only who computes
  // changes. 1024 x 1024 x 25600: 60.6-62.1 -> 58.5-61.2 ms; 256 x 256 x 6400: 0.93-0.96 ->
  // 0.87-0.91 (C++ harness, 2 threads, alternated three times). Wide products keep the
  // column split (a review measured 16 x 4096 x 4096 at 3.1-3.3 ms split by rows, 1.7 by
  // columns).
  const bool copy_rows = g.k->gemm_acc && g.a_trans && g.M >= g.N;
  g.split_cols = (g.npanels >= 4 * nt || g.npanels >= g.M) && !copy_rows;
}

// The packed product of g (g.npanels set) on nt threads.
template <typename T>
void run_packed(GemmJob<T>& g, int nt) {
  plan_packed(g, nt);
  const int64_t K = g.K;
  // The float32 sums: a Workspace (aligned_buffer.h), so those beyond 1 MB (4 MB for a
  // 1024 x 1024 weight gradient) are freed after the call, not held.
  thread_local cpu::AlignedBuffer kept;
  cpu::Workspace acc_space(kept);
  if (g.k->gemm_acc && !g.narrow && g.kc < K) {
    g.ldacc = g.npanels * g.k->nr;
    g.acc = static_cast<float*>(acc_space.get(size_t(g.M * g.ldacc) * sizeof(float)));
  }
  cpu::team_run(nt, &gemm_thread<T>, &g);
}

}  // namespace

template <typename scalar_t>
void gemm_cpu(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool a_trans,
              const scalar_t* B, int64_t ldb, bool b_trans, scalar_t* C, int64_t ldc,
              const scalar_t* bias, bool accumulate, int num_threads) {
  if (M <= 0 || N <= 0) return;
  const cpu::KernelTable<scalar_t>& k = cpu::select_kernels<scalar_t>();
  if (K <= 0) return empty_sum(M, N, C, ldc, bias, accumulate);
  // A table with float32 sums adds either to them in its store epilogue (store_c), not both.
  if (k.gemm_acc && bias && accumulate)
    throw std::invalid_argument("gemm_cpu: bfloat16 takes a bias or accumulate, not both");
  const int nt = threads_for(M, N, K, num_threads);
  // B transposed: lane-wise dot products (another summation order: chosen by shape
  // only). B as it is: the packed kernel's chains on B in place (bitwise the same).
  if (few_rows_path(M, a_trans, b_trans, accumulate)) {
    FewRowsJob<scalar_t> f{&k, M, N, K, A, lda, B, ldb, C, ldc, bias, b_trans, accumulate};
    cpu::team_run(nt, &few_rows_thread<scalar_t>, &f);
    return;
  }
  // A few k and many rows (a single step's weight gradients, K = the batch): writing C is
  // the work, and the few-row products over all M rows write it straight from their
  // registers (the packed tiles pass each sum through a buffer). B as it is, so the sums
  // are still the packed kernel's chains, bitwise; a transposed A (M x K elements) is
  // copied into rows first.
  if (few_k_path(k, K, b_trans)) {
    thread_local std::vector<scalar_t> a_rows;
    const scalar_t* a = A;
    int64_t la = lda;
    if (a_trans) {
      a_rows.resize(size_t(M * K));
      copy_transposed(A, lda, M, K, a_rows.data());
      a = a_rows.data();
      la = K;
    }
    FewRowsJob<scalar_t> f{&k, M, N, K, a, la, B, ldb, C, ldc, bias, false, accumulate};
    cpu::team_run(nt, &few_rows_thread<scalar_t>, &f);
    return;
  }
  // A B too narrow for a panel: B's rows read in place by the narrow tiles; a transposed B
  // (N <= one vector of rows, as x W^T at a small H) copied into K rows first.
  // (A Workspace: a long K's copy freed after the call, not held.)
  thread_local cpu::AlignedBuffer bt_kept;
  cpu::Workspace bt_space(bt_kept);
  if (narrow_path(k, N) && b_trans) {
    scalar_t* rows = static_cast<scalar_t*>(bt_space.get(size_t(K * N) * sizeof(scalar_t)));
    copy_transposed(B, ldb, K, N, rows);
    B = rows;
    ldb = N;
    b_trans = false;
  }
  GemmJob<scalar_t> g = packed_job(k, GemmArgs<scalar_t>{M, N, K, A, lda, a_trans, B, ldb, b_trans,
                                                         nullptr, C, ldc, accumulate});
  g.bias = bias;
  run_packed(g, nt);
}

template <typename scalar_t>
void gemm_cpu_rows(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool a_trans,
                   const scalar_t* const* b_rows, scalar_t* C, int64_t ldc, bool accumulate,
                   int num_threads) {
  if (M <= 0 || N <= 0) return;
  const cpu::KernelTable<scalar_t>& k = cpu::select_kernels<scalar_t>();
  if (K <= 0) return empty_sum(M, N, C, ldc, static_cast<const scalar_t*>(nullptr), accumulate);
  // A few rows: gathered (K x N, at most 16 rows) for gemm_cpu's few-k path.
  if (few_k_path(k, K, false)) {
    thread_local std::vector<scalar_t> gathered;
    gathered.assign(size_t(K * N), scalar_t{});
    for (int64_t kk = 0; kk < K; ++kk)
      if (b_rows[kk])
        std::memcpy(&gathered[size_t(kk * N)], b_rows[kk], size_t(N) * sizeof(scalar_t));
    return gemm_cpu<scalar_t>(M, N, K, A, lda, a_trans, gathered.data(), N, false, C, ldc, nullptr,
                              accumulate, num_threads);
  }
  GemmJob<scalar_t> g = packed_job(k, GemmArgs<scalar_t>{M, N, K, A, lda, a_trans, nullptr, 0,
                                                         false, b_rows, C, ldc, accumulate});
  run_packed(g, threads_for(M, N, K, num_threads));
}

template <typename scalar_t>
void gemm_cpu(const GemmArgs<scalar_t>& a, int num_threads) {
  if (a.b_rows)
    gemm_cpu_rows<scalar_t>(a.M, a.N, a.K, a.A, a.lda, a.a_trans, a.b_rows, a.C, a.ldc,
                            a.accumulate, num_threads);
  else
    gemm_cpu<scalar_t>(a.M, a.N, a.K, a.A, a.lda, a.a_trans, a.B, a.ldb, a.b_trans, a.C, a.ldc,
                       nullptr, a.accumulate, num_threads);
}

namespace {

// Whether gemm_cpu (gemm_cpu_rows when b_rows) runs a as a packed or narrow product (not its
// few-row, few-k or empty paths), and not with float32 sums (the bfloat16 table's buffers).
template <typename T>
bool runs_packed(const cpu::KernelTable<T>& k, const GemmArgs<T>& a) {
  if (a.M <= 0 || a.N <= 0 || a.K <= 0 || k.gemm_acc) return false;
  if (a.b_rows) return !few_k_path(k, a.K, false);
  return !few_rows_path(a.M, a.a_trans, a.b_trans, a.accumulate) && !few_k_path(k, a.K, a.b_trans);
}

// Threads [0, n0) run the first product, [n0, nt) the second (each gemm_thread with its
// index and count within its share); a team of one runs both.
inline int first_share(int nt, double f0, double f1) {
  const int n0 = int(double(nt) * f0 / (f0 + f1) + 0.5);
  return std::min(std::max(n0, 1), nt - 1);
}

template <typename T>
struct PairJob {
  GemmJob<T>* job[2];
  double flops[2];
};

template <typename T>
void pair_thread(void* vjob, int tid, int nt) {
  const PairJob<T>& p = *static_cast<const PairJob<T>*>(vjob);
  if (nt < 2) {
    gemm_thread<T>(p.job[0], 0, 1);
    gemm_thread<T>(p.job[1], 0, 1);
    return;
  }
  const int n0 = first_share(nt, p.flops[0], p.flops[1]);
  if (tid < n0)
    gemm_thread<T>(p.job[0], tid, n0);
  else
    gemm_thread<T>(p.job[1], tid - n0, nt - n0);
}

}  // namespace

template <typename scalar_t>
void gemm_cpu_pair(const GemmArgs<scalar_t>& p, const GemmArgs<scalar_t>& q, int num_threads) {
  const cpu::KernelTable<scalar_t>& k = cpu::select_kernels<scalar_t>();
  const int nt =
      std::min(threads_for(p.M, p.N, p.K, num_threads) + threads_for(q.M, q.N, q.K, num_threads),
               std::min(num_threads, cpu::hardware_threads()));
  // Only products of several K blocks (K > 1024, plan_packed): there each row block's
  // first pass over A comes from memory, and that is what the pair shares (with one K
  // block, B1-H1024-T100 trained 2% slower paired).
  bool paired = nt >= 2 && runs_packed(k, p) && runs_packed(k, q) && p.K > 1024 && q.K > 1024;
  const double fp = double(p.M) * double(p.N) * double(p.K);
  const double fq = double(q.M) * double(q.N) * double(q.K);
  const int n0 = nt >= 2 ? first_share(nt, fp, fq) : 1;
  // Only where the shares fit the products: a thread of the smaller one waiting for the
  // other costs more than the pair saves (with 2 threads, a bidirectional second layer's
  // dW_ih [H, 2H] next to dW_hh [H, H]: B32-H256-T200-L2-bidir trained 1.048x slower).
  paired = paired && std::max(fp / n0, fq / (nt - n0)) / ((fp + fq) / nt) <= 1.05;
  if (!paired) {
    gemm_cpu(p, num_threads);
    gemm_cpu(q, num_threads);
    return;
  }
  GemmJob<scalar_t> jp = packed_job(k, p), jq = packed_job(k, q);
  plan_packed(jp, n0);
  plan_packed(jq, nt - n0);
  PairJob<scalar_t> pair{{&jp, &jq}, {fp, fq}};
  cpu::team_run(nt, &pair_thread<scalar_t>, &pair);
}

template void gemm_cpu<float>(int64_t, int64_t, int64_t, const float*, int64_t, bool, const float*,
                              int64_t, bool, float*, int64_t, const float*, bool, int);
template void gemm_cpu<double>(int64_t, int64_t, int64_t, const double*, int64_t, bool,
                               const double*, int64_t, bool, double*, int64_t, const double*, bool,
                               int);
template void gemm_cpu_rows<float>(int64_t, int64_t, int64_t, const float*, int64_t, bool,
                                   const float* const*, float*, int64_t, bool, int);
template void gemm_cpu_rows<double>(int64_t, int64_t, int64_t, const double*, int64_t, bool,
                                    const double* const*, double*, int64_t, bool, int);
template void gemm_cpu<float>(const GemmArgs<float>&, int);
template void gemm_cpu<double>(const GemmArgs<double>&, int);
template void gemm_cpu_pair<float>(const GemmArgs<float>&, const GemmArgs<float>&, int);
template void gemm_cpu_pair<double>(const GemmArgs<double>&, const GemmArgs<double>&, int);

}  // namespace fusedrnn

namespace fusedrnn {
// bfloat16 (where cpu_has_bf16(); select_kernels throws otherwise): float32 sums, each C
// element rounded once (plus once more for what C held, when accumulating).
template void gemm_cpu<bfloat16_t>(int64_t, int64_t, int64_t, const bfloat16_t*, int64_t, bool,
                                   const bfloat16_t*, int64_t, bool, bfloat16_t*, int64_t,
                                   const bfloat16_t*, bool, int);
template void gemm_cpu_rows<bfloat16_t>(int64_t, int64_t, int64_t, const bfloat16_t*, int64_t, bool,
                                        const bfloat16_t* const*, bfloat16_t*, int64_t, bool, int);
template void gemm_cpu<bfloat16_t>(const GemmArgs<bfloat16_t>&, int);
template void gemm_cpu_pair<bfloat16_t>(const GemmArgs<bfloat16_t>&, const GemmArgs<bfloat16_t>&,
                                        int);
}  // namespace fusedrnn
