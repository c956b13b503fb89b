// Per-step recurrence kernel: the fallback when M does not fit on chip or a cooperative
// launch is impossible. One launch per phase, in order on the caller's stream (stream
// order is the barrier between steps). Each CTA computes a [kTileRows, kTileUnits] tile of
// out = in M with a tiled K loop through shared memory, then the fused epilogue.
//
// Contract: grid (ceil(H / kTileUnits), min(ceil(rows / kTileRows), kMaxGridY)), kThreads
// threads, no dynamic shared memory; `ph` is phase k of the walk computed on the host. A grid
// with fewer row tiles than the rows need (more than 65535 x 16 rows: gridDim.y's limit)
// strides over them: CTA y takes tiles y, y + gridDim.y, ...
#pragma once

#include "cuda/rnn_cuda_common.cuh"

namespace fusedrnn {
namespace cuda_detail {

struct Stepwise {
  static constexpr int kThreads = 128;
  static constexpr int kTileRows = 16;
  static constexpr int kTileUnits = 32;
  static constexpr int kTileK = 32;
  static constexpr int64_t kMaxGridY = 65535;  // the CUDA limit on gridDim.y
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
  const acc_t* state_in = p.state + (k_phase & 1) * p.B * p.Hp;
  acc_t* state_out = p.state + ((k_phase + 1) & 1) * p.B * p.Hp;

  // Uniform over the CTA (it depends on blockIdx only): the __syncthreads below stay legal.
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * BM; r0 < rows;
       r0 += static_cast<int64_t>(gridDim.y) * BM) {
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
        const int64_t j = j0 + u, k = k0 + kk;
        acc_t w = acc_t(0);
        if (j < H && k < H) w = to_acc(BWD ? p.W[k * H + j] : p.W[j * H + k]);
        Ws[u][kk] = w;
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
}

}  // namespace cuda_detail
}  // namespace fusedrnn
