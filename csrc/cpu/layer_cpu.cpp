// layer_forward_cpu / layer_backward_cpu (layer_cpu.h).
#include "layer_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "aligned_buffer.h"
#include "bf16_scalar.h"
#include "gemm_cpu.h"

namespace fusedrnn {

namespace {

// Outputs of [N,H] are often 100 MB and fresh from the allocator (mmap): faulting them in
// 4 KB at a time costs tens of milliseconds per pass, inside the multithreaded kernels.
// Ask for transparent huge pages on the 2 MB-aligned interior before the first write (the
// default THP mode "madvise" otherwise gives none). Advice only: harmless where refused.
void prefer_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!p || bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

using cpu::narrow;
using cpu::sum_t;
using cpu::widen;

}  // namespace

template <typename scalar_t>
void layer_forward_cpu(const RecurrenceShape& s, int64_t I, const scalar_t* x, const scalar_t* w_ih,
                       const scalar_t* b_ih, const scalar_t* b_hh, const scalar_t* w_hh,
                       const scalar_t* h0, scalar_t* h, int64_t ldh, scalar_t* hn,
                       int num_threads) {
  const int64_t H = s.H;
  int64_t N = 0;
  for (int64_t t = 0; t < s.T; ++t) N += s.batch_sizes ? s.batch_sizes[t] : s.B;
  std::vector<scalar_t> bias;
  const scalar_t* b = b_ih ? b_ih : b_hh;
  if (b_ih && b_hh) {
    bias.resize(size_t(H));
    for (int64_t j = 0; j < H; ++j) bias[j] = narrow<scalar_t>(widen(b_ih[j]) + widen(b_hh[j]));
    b = bias.data();
  }
  prefer_huge_pages(h, sizeof(scalar_t) * size_t(N * ldh));
  gemm_cpu<scalar_t>(N, H, I, x, I, false, w_ih, I, true, h, ldh, b, false, num_threads);
  rnn_forward_cpu<scalar_t>(s, h, w_hh, h0, h, ldh, hn, num_threads);
}

template <typename scalar_t>
void layer_backward_cpu(const RecurrenceShape& s, int64_t I, const scalar_t* x,
                        const scalar_t* w_ih, const scalar_t* w_hh, const scalar_t* h0,
                        const scalar_t* h, int64_t ldh, const scalar_t* G, int64_t ldg,
                        const scalar_t* dhn, scalar_t* dP, scalar_t* dh0, scalar_t* dx,
                        bool dx_accumulate, scalar_t* dw_ih, scalar_t* dw_hh, scalar_t* db,
                        int num_threads) {
  const int64_t T = s.T, B = s.B, H = s.H;
  std::vector<int64_t> bs(static_cast<size_t>(T)), off(static_cast<size_t>(T) + 1, 0);
  for (int64_t t = 0; t < T; ++t) {
    bs[t] = s.batch_sizes ? s.batch_sizes[t] : B;
    off[t + 1] = off[t] + bs[t];
  }
  const int64_t N = off[T];
  std::vector<scalar_t> g_row;
  if (ldg < 0) {  // one value for every element: one row of it, read for every row
    if (G) {
      g_row.assign(size_t(H), *G);
      G = g_row.data();
    }
    ldg = 0;
  }
  const size_t dp_bytes = sizeof(scalar_t) * size_t(N * H);
  thread_local cpu::AlignedBuffer dp_kept;
  cpu::Workspace dp_space(dp_kept);
  if (!dP) dP = static_cast<scalar_t*>(dp_space.get(dp_bytes));
  prefer_huge_pages(dP, dp_bytes);
  if (!dx_accumulate) prefer_huge_pages(dx, sizeof(scalar_t) * size_t(N * I));
  rnn_backward_cpu<scalar_t>(s, w_hh, h, ldh, G, ldg, dhn, dP, dh0, num_threads);

  if (dx)
    gemm_cpu<scalar_t>(N, I, H, dP, H, false, w_ih, I, false, dx, I, nullptr, dx_accumulate,
                       num_threads);
  // dW_ih = dP^T x and dW_hh (below) read the same dP: as one pair of products
  // (gemm_cpu_pair), each thread streams dP from memory once, for the whole of one of them,
  // where both are long and of about the same size (input size = H).
  GemmArgs<scalar_t> w_ih_grad{H, I, N, dP, H, true, x, I, false, nullptr, dw_ih, I, false};
  GemmArgs<scalar_t> w_hh_grad{};
  const scalar_t* d_first = nullptr;       // + d_first^T h0 after the pair (padded input)
  const scalar_t* d_first_zero = nullptr;  // the same rows where h0 is absent (zeros)
  std::vector<const scalar_t*> prev;
  if (dw_hh) {
    // dW_hh = sum over rows of d_row^T h_prev(row): h_prev is the same sequence's row at
    // the step walked before, or h0 (zeros when absent) where the sequence started.
    // bfloat16: always the rows way below, so that the h0 rows join the same float32 sums
    // (two products would round dW_hh twice), and so that the k pairs of the bfloat16
    // products are the same rows whether h0 is given or absent (zeros).
    const bool one_sum = std::is_same_v<scalar_t, bfloat16_t>;
    if (!s.batch_sizes && T > 1 && !one_sum) {
      // Padded: the continuing rows are one contiguous block of d and of h.
      const int64_t K = (T - 1) * B;
      const scalar_t* d_cont = s.reverse ? dP : dP + B * H;
      const scalar_t* h_prev = s.reverse ? h + B * ldh : h;
      w_hh_grad = GemmArgs<scalar_t>{H,   H,     K,       d_cont, H, true, h_prev,
                                     ldh, false, nullptr, dw_hh,  H, false};
      (h0 ? d_first : d_first_zero) = s.reverse ? dP + K * H : dP;
    } else {
      // Packed (or one_sum): B's row r is h_prev of dP's row r, read where it lies. Step t's rows
      // b < bs[tp] continue from step tp's row b (in the forward direction all of them:
      // the batch sizes do not increase); the others start from h0 (zeros when absent).
      prev.resize(static_cast<size_t>(N));
      for (int64_t t = 0; t < T; ++t) {
        const int64_t tp = s.reverse ? t + 1 : t - 1;
        const int64_t cont = (tp >= 0 && tp < T) ? std::min(bs[t], bs[tp]) : 0;
        for (int64_t b = 0; b < bs[t]; ++b)
          prev[off[t] + b] = b < cont ? h + (off[tp] + b) * ldh : (h0 ? h0 + b * H : nullptr);
      }
      w_hh_grad =
          GemmArgs<scalar_t>{H, H, N, dP, H, true, nullptr, 0, false, prev.data(), dw_hh, H, false};
    }
  }
  if (dw_ih && dw_hh)
    gemm_cpu_pair<scalar_t>(w_ih_grad, w_hh_grad, num_threads);
  else if (dw_ih)
    gemm_cpu<scalar_t>(w_ih_grad, num_threads);
  else if (dw_hh)
    gemm_cpu<scalar_t>(w_hh_grad, num_threads);
  if (d_first)
    gemm_cpu<scalar_t>(H, H, B, d_first, H, true, h0, H, false, dw_hh, H, nullptr, true,
                       num_threads);
  if (d_first_zero) {
    // d_first^T 0 adds nothing but a NaN to row j of dW_hh where d_first's column j is
    // not finite (inf * 0), as nn.RNN's product with its zero state and the rows way
    // above give it; one pass over B x H values instead of that product.
    std::vector<char> poisoned(size_t(H), 0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j)
        if (!std::isfinite(widen(d_first_zero[b * H + j]))) poisoned[size_t(j)] = 1;
    for (int64_t j = 0; j < H; ++j)
      if (poisoned[size_t(j)])
        std::fill_n(dw_hh + j * H, H,
                    narrow<scalar_t>(std::numeric_limits<sum_t<scalar_t>>::quiet_NaN()));
  }
  if (db) {
    // Column sums in row order (fixed order, no threads needed: one pass over dP).
    std::vector<sum_t<scalar_t>> sums(size_t(H), sum_t<scalar_t>(0));
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < H; ++j) sums[j] += widen(dP[r * H + j]);
    for (int64_t j = 0; j < H; ++j) db[j] = narrow<scalar_t>(sums[j]);
  }
}

template void layer_forward_cpu<float>(const RecurrenceShape&, int64_t, const float*, const float*,
                                       const float*, const float*, const float*, const float*,
                                       float*, int64_t, float*, int);
template void layer_forward_cpu<double>(const RecurrenceShape&, int64_t, const double*,
                                        const double*, const double*, const double*, const double*,
                                        const double*, double*, int64_t, double*, int);
template void layer_backward_cpu<float>(const RecurrenceShape&, int64_t, const float*, const float*,
                                        const float*, const float*, const float*, int64_t,
                                        const float*, int64_t, const float*, float*, float*, float*,
                                        bool, float*, float*, float*, int);
template void layer_backward_cpu<double>(const RecurrenceShape&, int64_t, const double*,
                                         const double*, const double*, const double*, const double*,
                                         int64_t, const double*, int64_t, const double*, double*,
                                         double*, double*, bool, double*, double*, double*, int);

// bfloat16 (where cpu_has_bf16(); select_kernels throws otherwise).
template void layer_forward_cpu<bfloat16_t>(const RecurrenceShape&, int64_t, const bfloat16_t*,
                                            const bfloat16_t*, const bfloat16_t*, const bfloat16_t*,
                                            const bfloat16_t*, const bfloat16_t*, bfloat16_t*,
                                            int64_t, bfloat16_t*, int);
template void layer_backward_cpu<bfloat16_t>(const RecurrenceShape&, int64_t, const bfloat16_t*,
                                             const bfloat16_t*, const bfloat16_t*,
                                             const bfloat16_t*, const bfloat16_t*, int64_t,
                                             const bfloat16_t*, int64_t, const bfloat16_t*,
                                             bfloat16_t*, bfloat16_t*, bfloat16_t*, bool,
                                             bfloat16_t*, bfloat16_t*, bfloat16_t*, int);

}  // namespace fusedrnn
