// Persistent recurrence kernel: one cooperative launch runs all T steps.
//
// Contract: launched cooperatively (co-residency guaranteed) with `grid` CTAs of
// kThreads threads; CTA c owns hidden units [c*Hc, min((c+1)*Hc, H)) and keeps its slice
// of the recurrent matrix in shared memory for the whole sequence. Each phase it stages
// the previous state (rows of the batch, up to rows_cap at a time) into shared memory,
// computes its [rows, Hc] block of in*M, applies the fused epilogue, and the grid meets at
// one barrier. p.barrier must be zero at launch (the launcher memsets it on the stream).
//
// Dynamic shared memory, in bytes:
//   Ws  [Hc][Hp]        scalar_t   the CTA's rows of M (W_hh rows forward, columns BPTT)
//   Xs  [rows_cap][Hp]  acc_t      staged recurrent input rows
//   red [red_slots][32] acc_t      per-warp partial sums (fixed-order reduction)
// Hp = H rounded up to 4, zero-padded, so the inner loop needs no masking.
#pragma once

#include <cuda/atomic>

#include "cuda/rnn_cuda_common.cuh"

namespace fusedrnn {
namespace cuda_detail {

struct Persistent {
  static constexpr int kThreads = 256;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kUnits = 4;  // U: hidden units per warp work item
  static constexpr int kRows = 8;   // BT: batch rows per warp work item; U*BT == 32 lanes
  static_assert(kUnits * kRows == 32, "the butterfly reduction leaves one value per lane");
};

// The most warps one work item is split over along H (Hq quads per row): no fewer than one
// quad per lane each (the persistent and the cluster kernels split alike).
__device__ __forceinline__ int max_k_splits(int64_t Hq) { return static_cast<int>((Hq + 31) / 32); }

// Grid-wide barrier on a monotonic counter. Phase k's barrier waits for grid*(k+1)
// arrivals, so the counter is never reset inside a launch.
// Memory model: bar.sync orders every thread's global writes of this phase before
// thread 0's release RMW at device scope (release is cumulative); another CTA's thread 0
// acquire-loads a value written later in that RMW chain, which synchronizes with the
// release; its bar.sync then extends the order to the whole CTA. Plain loads after the
// barrier therefore see the other CTAs' writes (the acquire also invalidates stale L1).
__device__ __forceinline__ void grid_barrier(unsigned long long* counter,
                                             unsigned long long target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<unsigned long long, cuda::thread_scope_device> c(*counter);
    c.fetch_add(1ull, cuda::std::memory_order_release);
    while (c.load(cuda::std::memory_order_acquire) < target) {
    }
    __threadfence();  // belt and braces, as cooperative_groups' grid sync does
  }
  __syncthreads();
}

// Sum 32 values over the 32 lanes; afterwards lane l holds the total of value l.
// Each level halves the live values: a lane keeps the half selected by its lane bit and
// sends the other half to its partner. 16+8+4+2+1 = 31 shuffles in a fixed pattern
// (deterministic). Indices are compile-time (template recursion), so v stays in registers.
template <int HALF, typename acc_t>
__device__ __forceinline__ void butterfly_level(acc_t (&v)[32], int lane) {
  const bool upper = (lane & HALF) != 0;
#pragma unroll
  for (int i = 0; i < HALF; ++i) {
    const acc_t send = upper ? v[i] : v[i + HALF];
    const acc_t keep = upper ? v[i + HALF] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
  }
  if constexpr (HALF > 1) butterfly_level<HALF / 2>(v, lane);
}

template <typename acc_t>
__device__ __forceinline__ acc_t butterfly_reduce32(acc_t (&v)[32], int lane) {
  butterfly_level<16>(v, lane);
  return v[0];
}

__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

// Stage rows [r0, r0 + nrows_pad) of the phase's recurrent input into Xs [nrows_pad][Hp]
// (zero past nrows and past H), row by row. Threads work on quads (4 elements) of a row:
// `lanes` threads per row, `row_groups` rows at a time, laid out once per call (one division
// per call, none per element). A quad of a state row wholly inside H is one 16-byte load
// (state rows are 16-byte aligned: the workspace is 256-byte aligned and Hp a multiple of
// 4); rows from h0, the quad across H and the padding rows go element by element through
// input_at. Each thread issues its loads (kStageBatch quads) before the first store, so
// several L2 round trips are in flight per thread. The store indexes Xs by quads
// (4 * (r * Hq + q), the same address as r * Hp + k): so written, nvcc keeps every store 16
// bytes wide. It replaced an element-wise copy (8 loads in flight, an int32 division per
// element) after an H100 A/B in session 16, bitwise the same results: float32, T = 100, the
// persistent step went from 11.8 to 5.5 us at B = 64, H = 256, from 43.3 to 16.7 at B = 64,
// H = 1024, from 6.5 to 5.2 at B = 1, H = 1024; only B <= 8 at H = 256 lost (3.6 to 4.5 us
// at B = 1; BENCHMARKS.md, "CUDA", session 16).
constexpr int kStageBatch = 8;

template <typename scalar_t>
__device__ __forceinline__ void stage_rows(const RecParams<scalar_t>& p, const Phase& ph,
                                           const acc_type<scalar_t>* state_in,
                                           acc_type<scalar_t>* Xs, int64_t r0, int nrows,
                                           int nrows_pad) {
  using acc_t = acc_type<scalar_t>;
  // Quads in flight per thread: 8 (128 bytes) in float; 4 in double, where 8 would spill.
  constexpr int NB = sizeof(acc_t) == 8 ? kStageBatch / 2 : kStageBatch;
  const int H = static_cast<int>(p.H), Hp = static_cast<int>(p.Hp);
  const int Hq = Hp / 4;    // quads per row
  const int Hfull = H / 4;  // quads wholly inside H
  const int nthreads = static_cast<int>(blockDim.x);
  const int lanes = nthreads < Hq ? nthreads : Hq;
  const int row_groups = nthreads / lanes;
  const int rg = static_cast<int>(threadIdx.x) / lanes;
  const int q0 = static_cast<int>(threadIdx.x) - rg * lanes;
  if (rg >= row_groups) return;  // the threads past the last whole row group (no barrier here)
  for (int q = q0; q < Hq; q += lanes) {
    const int k = 4 * q;
    for (int rb = rg; rb < nrows_pad; rb += row_groups * NB) {
      acc_t v[NB][4];
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const int r = rb + i * row_groups;
        const int64_t b = r0 + r;
        if (r < nrows && b < ph.bprev && q < Hfull) {
          load4(state_in + b * Hp + k, v[i]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            v[i][e] = (r < nrows && k + e < H) ? input_at(p, ph, state_in, b, k + e) : acc_t(0);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < NB; ++i) {
        const int r = rb + i * row_groups;
        if (r < nrows_pad) store4(Xs + 4 * (r * Hq + q), v[i]);
      }
    }
  }
}

template <typename scalar_t, bool BWD, Activation ACT>
__global__ void __launch_bounds__(Persistent::kThreads, 1)
    rnn_persistent_kernel(RecParams<scalar_t> p, int Hc, int rows_cap) {
  using acc_t = acc_type<scalar_t>;
  constexpr int U = Persistent::kUnits;
  constexpr int BT = Persistent::kRows;
  constexpr int NW = Persistent::kWarps;
  constexpr int kThreads = Persistent::kThreads;  // blockDim.x (the launcher's plan.threads)
  // Outputs per thread whose epilogue operands are loaded ahead: 2 covers every pass of
  // up to 512 outputs per CTA (e.g. 64 rows x 8 units), the rest load in place.
  constexpr int kPrefetch = 2;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t H = p.H;
  const int64_t Hp = p.Hp;
  const int Hq = static_cast<int>(Hp / 4);
  scalar_t* Ws = reinterpret_cast<scalar_t*>(smem_raw);
  acc_t* Xs = reinterpret_cast<acc_t*>(smem_raw + static_cast<size_t>(Hc) * Hp * sizeof(scalar_t));
  acc_t* red = Xs + static_cast<size_t>(rows_cap) * Hp;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * Hc;
  const int nj = static_cast<int>(H - j0 < Hc ? H - j0 : Hc);  // >= 1 by grid sizing
  const int n_g = Hc / U;

  // The CTA's slice of M, once: Ws[u][k] = M[k][j0+u]; forward M = W^T (row j0+u of W),
  // BPTT M = W (column j0+u of W). Index order keeps the global reads coalesced.
  for (int64_t idx = tid; idx < static_cast<int64_t>(Hc) * Hp; idx += blockDim.x) {
    int64_t u, k;
    if constexpr (!BWD) {
      u = idx / Hp, k = idx % Hp;
    } else {
      u = idx % Hc, k = idx / Hc;
    }
    scalar_t w = from_acc<scalar_t>(acc_t(0));
    if (u < nj && k < H) w = BWD ? p.W[k * H + j0 + u] : p.W[(j0 + u) * H + k];
    Ws[u * Hp + k] = w;
  }
  // (the first __syncthreads below, after staging, also publishes Ws)

  Walker walker(p.batch_sizes, p.B, p.T, p.N, p.walk_reverse);
  const bool want_final = p.Yfinal != nullptr;
  for (int64_t k = 0; k < p.nphase; ++k) {
    const Phase ph = walker.next(k);
    const int64_t rows = phase_rows<BWD>(ph, want_final);
    const acc_t* state_in = p.state + (k & 1) * p.B * Hp;
    acc_t* state_out = p.state + ((k + 1) & 1) * p.B * Hp;

    for (int64_t r0 = 0; r0 < rows; r0 += rows_cap) {
      const int nrows = static_cast<int>(rows - r0 < rows_cap ? rows - r0 : rows_cap);
      const int nrows_pad = (nrows + BT - 1) / BT * BT;
      const int n_out = nrows * nj;

      // The epilogue operands of this thread's first kPrefetch outputs of the pass, loaded
      // now so that their global-memory latency overlaps the staging and the product
      // instead of following the reduction.
      EpilogueOperands<scalar_t> pre[kPrefetch] = {};
#pragma unroll
      for (int i = 0; i < kPrefetch; ++i) {
        const int idx = tid + i * kThreads;
        if (idx < n_out) {
          pre[i] = epilogue_operands<scalar_t, BWD>(p, ph, r0 + idx / nj, j0 + idx % nj);
        }
      }

      // Stage the input rows (zero rows and columns past the end).
      stage_rows(p, ph, state_in, Xs, r0, nrows, nrows_pad);
      __syncthreads();

      // Work items: (unit group g, row tile bt), each split over ks warps along H.
      const int n_bt = nrows_pad / BT;
      const int items = n_g * n_bt;
      int ks = items < NW ? NW / items : 1;
      if (ks > max_k_splits(Hq)) ks = max_k_splits(Hq);
      for (int w = warp; w < items * ks; w += NW) {
        const int item = w / ks, s = w % ks;
        const int g = item % n_g, bt = item / n_g;
        const scalar_t* wrow = Ws + static_cast<int64_t>(g * U) * Hp;
        const acc_t* xrow = Xs + static_cast<int64_t>(bt * BT) * Hp;
        acc_t acc[32];
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[i] = acc_t(0);
        for (int q = s * 32 + lane; q < Hq; q += 32 * ks) {
          acc_t wv[U][4];
#pragma unroll
          for (int u = 0; u < U; ++u) load4(wrow + u * Hp + 4 * q, wv[u]);
#pragma unroll
          for (int b = 0; b < BT; ++b) {
            acc_t xv[4];
            load4(xrow + b * Hp + 4 * q, xv);
#pragma unroll
            for (int u = 0; u < U; ++u) {
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[u * BT + b] = fma(wv[u][e], xv[e], acc[u * BT + b]);
            }
          }
        }
        red[w * 32 + lane] = butterfly_reduce32(acc, lane);
      }
      __syncthreads();

      // Epilogue: consecutive threads take consecutive units of one row (coalesced); the
      // first kPrefetch outputs of each thread with the operands loaded above.
      auto sum_of = [&](int r, int u) {
        const int item = (r / BT) * n_g + u / U;
        const int l = (u % U) * BT + r % BT;
        acc_t v = acc_t(0);
        for (int s = 0; s < ks; ++s) v += red[(item * ks + s) * 32 + l];
        return v;
      };
#pragma unroll
      for (int i = 0; i < kPrefetch; ++i) {
        const int idx = tid + i * kThreads;
        if (idx < n_out) {
          const int r = idx / nj, u = idx % nj;
          epilogue<scalar_t, BWD, ACT>(p, ph, state_out, r0 + r, j0 + u, sum_of(r, u), pre[i]);
        }
      }
      for (int idx = tid + kPrefetch * kThreads; idx < n_out; idx += kThreads) {
        const int r = idx / nj, u = idx % nj;
        epilogue<scalar_t, BWD, ACT>(p, ph, state_out, r0 + r, j0 + u, sum_of(r, u));
      }
      __syncthreads();  // Xs and red are rewritten by the next pass
    }
    if (k + 1 < p.nphase) {
      grid_barrier(p.barrier, static_cast<unsigned long long>(gridDim.x) * (k + 1));
    }
  }
}

}  // namespace cuda_detail
}  // namespace fusedrnn
