// Per-step recurrence kernel: the fallback when M does not fit on chip or a cooperative
// launch is impossible. One launch per phase, in order on the caller's stream (stream
// order is the barrier between steps). Each CTA computes a [kTileRows, kTileUnits] tile of
// out = in M with a tiled K loop through shared memory, then the fused epilogue.
//
// Contract: grid (ceil(H / kTileUnits), ceil(rows / kTileRows)), kThreads threads, no
// dynamic shared memory; `ph` is phase k of the walk computed on the host.
#pragma once

#include "cuda/rnn_cuda_common.cuh"

namespace fusedrnn {
namespace cuda_detail {

struct Stepwise {
  static constexpr int kThreads = 128;
  static constexpr int kTileRows = 16;
  static constexpr int kTileUnits = 32;
  static constexpr int kTileK = 32;
};

template <typename scalar_t, bool BWD, Activation ACT>
__global__ void __launch_bounds__(Stepwise::kThreads, 4)
    rnn_step_kernel(RecParams<scalar_t> p, Phase ph, int64_t k_phase, int64_t rows) {
  using acc_t = acc_type<scalar_t>;
  constexpr int BM = Stepwise::kTileRows, BN = Stepwise::kTileUnits, BK = Stepwise::kTileK;
  // +1 padding: the column reads below hit 32 different banks.
  __shared__ acc_t Xs[BM][BK + 1];
  __shared__ acc_t Ws[BN][BK + 1];

  const int64_t H = p.H;
  const int tid = threadIdx.x;
  const int tx = tid % 16;  // units tx, tx + 16
  const int ty = tid / 16;  // rows ty, ty + 8
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * BM;
  const acc_t* state_in = p.state + (k_phase & 1) * p.B * p.Hp;
  acc_t* state_out = p.state + ((k_phase + 1) & 1) * p.B * p.Hp;

  acc_t acc[2][2] = {{acc_t(0), acc_t(0)}, {acc_t(0), acc_t(0)}};
  for (int64_t k0 = 0; k0 < H; k0 += BK) {
    for (int idx = tid; idx < BM * BK; idx += Stepwise::kThreads) {
      const int r = idx / BK, kk = idx % BK;
      const int64_t b = r0 + r, k = k0 + kk;
      Xs[r][kk] = (b < rows && k < H) ? input_at(p, ph, state_in, b, k) : acc_t(0);
    }
    for (int idx = tid; idx < BN * BK; idx += Stepwise::kThreads) {
      int u, kk;
      if constexpr (!BWD) {
        u = idx / BK, kk = idx % BK;  // W[j][k]: contiguous in k
      } else {
        kk = idx / BN, u = idx % BN;  // W[k][j]: contiguous in j
      }
      Ws[u][kk] = m_at<BWD>(p, k0 + kk, j0 + u);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      const acc_t x0 = Xs[ty][kk], x1 = Xs[ty + 8][kk];
      const acc_t w0 = Ws[tx][kk], w1 = Ws[tx + 16][kk];
      acc[0][0] = fma(x0, w0, acc[0][0]);
      acc[0][1] = fma(x0, w1, acc[0][1]);
      acc[1][0] = fma(x1, w0, acc[1][0]);
      acc[1][1] = fma(x1, w1, acc[1][1]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int64_t b = r0 + ty + 8 * i, j = j0 + tx + 16 * c;
      if (b < rows && j < H) epilogue<scalar_t, BWD, ACT>(p, ph, state_out, b, j, acc[i][c]);
    }
  }
}

// The same step with a register-blocked tile (opt-in: FUSEDRNN_CUDA_STEPWISE=tiled; written
// after the H100 runs of session 14 showed the per-step kernel at ~6 TFLOP/s, not yet run
// on a GPU). rnn_step_kernel gives each thread 2 x 2 outputs from 4 scalar shared loads per
// k; here each thread of a 64-thread CTA computes 4 x 4 outputs of a 32-row x 32-unit tile
// (rows 4 ty + i, units 4 tx + c) from 2 16-byte shared loads per k, and the tiles are
// indexed with compile-time divisors. The tile and the K step (32) are those of
// rnn_step_kernel, so the grid is as wide (H / 32 x rows / 32 CTAs) and each output
// accumulates acc = fma(x_k, w_k, acc) for k = 0, 1, ... in the same order over the same
// zero padding past H: the results are bitwise those of rnn_step_kernel.
struct StepwiseTiled {
  static constexpr int kThreads = 64;
  static constexpr int kTileRows = 32;
  static constexpr int kTileUnits = 32;
  static constexpr int kTileK = Stepwise::kTileK;
};

template <typename scalar_t, bool BWD, Activation ACT>
__global__ void __launch_bounds__(StepwiseTiled::kThreads)
    rnn_step_kernel_tiled(RecParams<scalar_t> p, Phase ph, int64_t k_phase, int64_t rows) {
  using acc_t = acc_type<scalar_t>;
  constexpr int BM = StepwiseTiled::kTileRows, BN = StepwiseTiled::kTileUnits;
  constexpr int BK = StepwiseTiled::kTileK, NT = StepwiseTiled::kThreads;
  static_assert(BM * BK % NT == 0 && BN * BK % NT == 0, "whole loads per thread");
  static_assert(BM == 4 * (NT / (BN / 4)) && BN % 4 == 0, "4 x 4 outputs per thread");
  // k-major tiles; rows of BM + 4 keep every 4-element group 16-byte aligned.
  __shared__ __align__(16) acc_t Xs[BK][BM + 4];
  __shared__ __align__(16) acc_t Ws[BK][BN + 4];

  const int64_t H = p.H;
  const int tid = threadIdx.x;
  const int tx = tid % (BN / 4);  // units 4 tx .. 4 tx + 3
  const int ty = tid / (BN / 4);  // rows 4 ty .. 4 ty + 3
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * BN;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * BM;
  const acc_t* state_in = p.state + (k_phase & 1) * p.B * p.Hp;
  acc_t* state_out = p.state + ((k_phase + 1) & 1) * p.B * p.Hp;

  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = acc_t(0);
  }
  for (int64_t k0 = 0; k0 < H; k0 += BK) {
    // Input rows, read along k (a warp reads 32 consecutive k of one row).
#pragma unroll
    for (int l = 0; l < BM * BK / NT; ++l) {
      const int idx = tid + l * NT;
      const int r = idx / BK, kk = idx % BK;
      const int64_t b = r0 + r, k = k0 + kk;
      Xs[kk][r] = (b < rows && k < H) ? input_at(p, ph, state_in, b, k) : acc_t(0);
    }
    // M's columns j0 .. j0 + BN - 1: forward W[j][k] (read along k), BPTT W[k][j] (along j).
#pragma unroll
    for (int l = 0; l < BN * BK / NT; ++l) {
      const int idx = tid + l * NT;
      int u, kk;
      if constexpr (!BWD) {
        u = idx / BK, kk = idx % BK;
      } else {
        kk = idx / BN, u = idx % BN;
      }
      Ws[kk][u] = m_at<BWD>(p, k0 + kk, j0 + u);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < BK; ++kk) {
      acc_t x[4], w[4];
      load4(&Xs[kk][4 * ty], x);
      load4(&Ws[kk][4 * tx], w);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][c] = fma(x[i], w[c], acc[i][c]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t b = r0 + 4 * ty + i, j = j0 + 4 * tx + c;
      if (b < rows && j < H) epilogue<scalar_t, BWD, ACT>(p, ph, state_out, b, j, acc[i][c]);
    }
  }
}

}  // namespace cuda_detail
}  // namespace fusedrnn
