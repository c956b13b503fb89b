// Cluster recurrence kernel (Hopper, compute capability 9.0): one launch of one thread-block
// cluster runs all T steps, with the state exchanged through the cluster's distributed
// shared memory and a hardware cluster barrier per step instead of the persistent kernel's
// global state buffer and grid barrier through L2.
//
// Written in session 21, first run on an H200 in session 26 (all CUDA tests, stress and
// compute-sanitizer passed); since then auto takes it at small B * H, where it measured
// faster than the persistent kernel (rnn_launch.cuh, kAutoCluster*). docs/cuda_kernels.md,
// "Cluster kernel".
//
// Contract: launched with gridDim.x == the cluster size C (one cluster, <= 16 CTAs) of
// Persistent::kThreads threads; CTA c (its rank in the cluster) owns hidden units
// [c*Hc, min((c+1)*Hc, H)) and keeps that slice of M in shared memory for the whole
// sequence, as the persistent kernel does. Every CTA keeps all B rows of the previous state
// in its own shared memory, double-buffered: each phase reads Xs[k & 1] and each CTA's
// epilogue stores its new state values into Xs[(k + 1) & 1] of every CTA of the cluster
// (st.shared::cluster); barrier.cluster (release, acquire) then makes them visible to all.
// Rows that join at a phase (packed input, or every row at the first phase) take the
// initial state (h0 or zeros) from a local copy. All B rows fit in one pass (the launcher
// checks rows_pad * Hp * 2 fits); p.state and p.barrier are unused.
//
// Dynamic shared memory, in bytes:
//   Ws  [Hc][Hp]           scalar_t  the CTA's rows of M
//   Xs  [2][rows_pad][Hp]  acc_t     the previous state of every row, double-buffered
//   ys  [rows_pad][Hc]     acc_t     this phase's new state values of the CTA's units
//   red [red_slots][32]    acc_t     per-warp partial sums (fixed-order reduction)
#pragma once

#include "cuda/rnn_cuda_common.cuh"
#include "cuda/rnn_persistent.cuh"

namespace fusedrnn {
namespace cuda_detail {

// The PTX the cluster kernel needs (PTX ISA 7.8, sm_90). Compiled for an older target
// (the sm_80 image of the same translation unit) they are never reached: the launcher
// refuses devices below compute capability 9.0 and a kernel image compiled for one (a build
// without architecture 90 run on a Hopper GPU through the PTX JIT), and the kernel traps there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FUSEDRNN_CLUSTER_PTX 1
#endif

// This CTA's rank in its cluster.
__device__ __forceinline__ unsigned cluster_rank() {
#ifdef FUSEDRNN_CLUSTER_PTX
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
#else
  return 0;
#endif
}

// Every thread of every CTA of the cluster arrives and waits: shared memory written anywhere
// in the cluster before it, local or remote, is visible after it (arrive has release and
// wait acquire semantics by default; the explicit .release / .acquire qualifiers would need
// PTX ISA 8.0).
__device__ __forceinline__ void cluster_sync() {
#ifdef FUSEDRNN_CLUSTER_PTX
  asm volatile(
      "barrier.cluster.arrive.aligned;\n\t"
      "barrier.cluster.wait.aligned;" ::
          : "memory");
#endif
}

// Store v at the address of `local` (this CTA's shared memory) in CTA `rank` of the cluster
// (acc_t: float or double).
template <typename acc_t>
__device__ __forceinline__ void store_in_cta(acc_t* local, unsigned rank, acc_t v) {
#ifdef FUSEDRNN_CLUSTER_PTX
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(local));
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  if constexpr (sizeof(acc_t) == 4) {
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote), "f"(v) : "memory");
  } else {
    asm volatile("st.shared::cluster.f64 [%0], %1;" ::"r"(remote), "d"(v) : "memory");
  }
#else
  (void)local, (void)rank, (void)v;
#endif
}

template <typename scalar_t, bool BWD, Activation ACT>
__global__ void __launch_bounds__(Persistent::kThreads, 1)
    rnn_cluster_kernel(RecParams<scalar_t> p, int Hc, int rows_pad) {
#ifndef FUSEDRNN_CLUSTER_PTX
  __trap();  // not a Hopper GPU: the launcher never gets here (compute capability < 9.0)
#else
  using acc_t = acc_type<scalar_t>;
  constexpr int U = Persistent::kUnits;
  constexpr int BT = Persistent::kRows;
  constexpr int NW = Persistent::kWarps;
  constexpr int kThreads = Persistent::kThreads;  // blockDim.x (the launcher's plan.threads)

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t H = p.H;
  const int64_t Hp = p.Hp;
  const int Hq = static_cast<int>(Hp / 4);
  scalar_t* Ws = reinterpret_cast<scalar_t*>(smem_raw);
  acc_t* Xs = reinterpret_cast<acc_t*>(smem_raw + static_cast<size_t>(Hc) * Hp * sizeof(scalar_t));
  acc_t* ys = Xs + 2 * static_cast<size_t>(rows_pad) * Hp;
  acc_t* red = ys + static_cast<size_t>(rows_pad) * Hc;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const unsigned C = gridDim.x;  // the cluster is the grid
  const int64_t j0 = static_cast<int64_t>(cluster_rank()) * Hc;
  const int nj = static_cast<int>(H - j0 < Hc ? H - j0 : Hc);  // >= 1 by grid sizing
  const int n_g = Hc / U;

  // The CTA's slice of M, once (as the persistent kernel), and both state buffers zeroed:
  // padding rows and columns past H stay zero for the whole launch.
  for (int64_t idx = tid; idx < static_cast<int64_t>(Hc) * Hp; idx += kThreads) {
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
  for (int64_t idx = tid; idx < 2 * static_cast<int64_t>(rows_pad) * Hp; idx += kThreads) {
    Xs[idx] = acc_t(0);
  }
  // No CTA may store into another's Xs before that CTA has zeroed it.
  cluster_sync();

  Walker walker(p.batch_sizes, p.B, p.T, p.N, p.walk_reverse);
  const bool want_final = p.Yfinal != nullptr;
  for (int64_t k = 0; k < p.nphase; ++k) {
    const Phase ph = walker.next(k);
    const int nrows = static_cast<int>(phase_rows<BWD>(ph, want_final));
    const int nrows_pad = (nrows + BT - 1) / BT * BT;
    const int n_out = nrows * nj;
    acc_t* cur = Xs + (k & 1) * static_cast<int64_t>(rows_pad) * Hp;
    acc_t* nxt = Xs + ((k + 1) & 1) * static_cast<int64_t>(rows_pad) * Hp;

    // The epilogue operands of this thread's first two outputs, loaded ahead.
    constexpr int kPrefetch = 2;
    EpilogueOperands<scalar_t> pre[kPrefetch] = {};
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int idx = tid + i * kThreads;
      if (idx < n_out) pre[i] = epilogue_operands<scalar_t, BWD>(p, ph, idx / nj, j0 + idx % nj);
    }

    // Rows that join here (b in [bprev, nrows)) take the initial state; rows below bprev
    // hold the previous phase's state, stored by every CTA before the last cluster barrier.
    // (In BPTT the initial state is zeros, and a joining row's product is dropped anyway.)
    const int64_t first_join = ph.bprev;
    for (int64_t idx = first_join * H + tid; idx < static_cast<int64_t>(nrows) * H;
         idx += kThreads) {
      const int64_t b = idx / H, kk = idx % H;
      cur[b * Hp + kk] = p.init ? to_acc(p.init[b * H + kk]) : acc_t(0);
    }
    // Rows [nrows, nrows_pad) of the last row tile are not zeroed (the persistent kernel
    // zeroes them): they may hold an earlier phase's values, even NaN, whose products the
    // tile computes and no output reads, since every sum below is of one row's products
    // only. A reduction that mixed rows would have to zero them first.
    __syncthreads();

    // Work items: (unit group g, row tile bt), each split over ks warps along H, as in the
    // persistent kernel. (The loop is that kernel's, written again rather than shared: moved
    // into a function it changed the persistent kernel's PTX, which ran and was timed as it
    // is; to share once a GPU A/B shows no cost.)
    const int n_bt = nrows_pad / BT;
    const int items = n_g * n_bt;
    int ks = items < NW ? NW / items : 1;
    if (ks > max_k_splits(Hq)) ks = max_k_splits(Hq);
    for (int w = warp; w < items * ks; w += NW) {
      const int item = w / ks, s = w % ks;
      const int g = item % n_g, bt = item / n_g;
      const scalar_t* wrow = Ws + static_cast<int64_t>(g * U) * Hp;
      const acc_t* xrow = cur + static_cast<int64_t>(bt * BT) * Hp;
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

    // Epilogue: outputs to global memory as in the persistent kernel, the new state values
    // of this CTA's units into ys.
    auto sum_of = [&](int r, int u) {
      const int item = (r / BT) * n_g + u / U;
      const int l = (u % U) * BT + r % BT;
      acc_t v = acc_t(0);
      for (int s = 0; s < ks; ++s) v += red[(item * ks + s) * 32 + l];
      return v;
    };
    auto keep = [ys, Hc, j0](int64_t b, int64_t j, acc_t value) { ys[b * Hc + (j - j0)] = value; };
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int idx = tid + i * kThreads;
      if (idx < n_out) {
        const int r = idx / nj, u = idx % nj;
        epilogue_apply<scalar_t, BWD, ACT>(p, ph, r, j0 + u, sum_of(r, u), pre[i], keep);
      }
    }
    for (int idx = tid + kPrefetch * kThreads; idx < n_out; idx += kThreads) {
      const int r = idx / nj, u = idx % nj;
      epilogue_apply<scalar_t, BWD, ACT>(p, ph, r, j0 + u, sum_of(r, u),
                                         epilogue_operands<scalar_t, BWD>(p, ph, r, j0 + u), keep);
    }

    if (k + 1 < p.nphase) {
      __syncthreads();  // ys complete
      // The state rows (b < bcur) of this CTA's units into nxt of every CTA of the cluster,
      // one store per thread and destination, consecutive threads on consecutive units.
      const int n_state = static_cast<int>(ph.bcur) * nj;
      for (int e = tid; e < n_state * static_cast<int>(C); e += kThreads) {
        const int dst = e / n_state, o = e % n_state;
        const int r = o / nj, u = o % nj;
        store_in_cta(nxt + static_cast<int64_t>(r) * Hp + j0 + u, static_cast<unsigned>(dst),
                     ys[r * Hc + u]);
      }
    }
    // The next phase's state is everywhere (and red, ys and cur may be rewritten).
    cluster_sync();
  }
#endif
}

}  // namespace cuda_detail
}  // namespace fusedrnn
