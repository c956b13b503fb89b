// Host launch logic for one storage type: choose the persistent or the per-step kernel,
// size the grid and shared memory, and enqueue on the caller's stream. Included only by
// the per-dtype translation units.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/rnn_launch.h"
#include "cuda/rnn_persistent.cuh"
#include "cuda/rnn_stepwise.cuh"

namespace fusedrnn {
namespace cuda_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t, bool BWD, Activation ACT>
CudaPlan plan_for_kernel(int64_t B, int64_t H, const DeviceInfo& dev, CudaPath requested) {
  using acc_t = acc_type<scalar_t>;
  constexpr int U = Persistent::kUnits, BT = Persistent::kRows, NW = Persistent::kWarps;
  CudaPlan plan;
  plan.path = CudaPath::kStepwise;
  plan.threads = Stepwise::kThreads;
  plan.grid = static_cast<int>(ceil_div(H, Stepwise::kTileUnits));
  if (requested == CudaPath::kStepwise) {
    plan.reason = "per-step kernel requested";
    return plan;
  }
  if (!dev.cooperative) {
    plan.reason = "the device cannot launch cooperative kernels";
    return plan;
  }
  // One CTA per SM, each owning Hc units (a multiple of the warp item width U).
  const int64_t Hp = padded_hidden(H);
  const int64_t Hc = ceil_div(ceil_div(H, dev.sms), U) * U;
  const int64_t grid = ceil_div(H, Hc);
  const int64_t n_g = Hc / U;
  const int64_t w_bytes = Hc * Hp * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t fixed = w_bytes + NW * 32 * static_cast<int64_t>(sizeof(acc_t));
  const int64_t per_tile = (BT * Hp + n_g * 32) * static_cast<int64_t>(sizeof(acc_t));
  if (fixed + per_tile > dev.smem_optin) {
    plan.reason = "the W_hh slice of " + std::to_string(Hc) + " x " + std::to_string(H) +
                  " per CTA and one row tile need " + std::to_string(fixed + per_tile) +
                  " bytes of shared memory; the device allows " + std::to_string(dev.smem_optin);
    return plan;
  }
  const int64_t tiles = std::min((dev.smem_optin - fixed) / per_tile, ceil_div(B, BT));
  const int64_t rows_cap = tiles * BT;
  const int64_t red_slots = std::max<int64_t>(NW, n_g * tiles);
  const int64_t smem = w_bytes + rows_cap * Hp * static_cast<int64_t>(sizeof(acc_t)) +
                       red_slots * 32 * static_cast<int64_t>(sizeof(acc_t));

  auto kernel = rnn_persistent_kernel<scalar_t, BWD, ACT>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute(persistent kernel, max dynamic shared memory)");
  int per_sm = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Persistent::kThreads,
                                                           static_cast<size_t>(smem)),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor(persistent kernel)");
  if (static_cast<int64_t>(per_sm) * dev.sms < grid) {
    plan.reason = "only " + std::to_string(per_sm * dev.sms) + " CTAs with " +
                  std::to_string(smem) + " bytes of shared memory can be co-resident, " +
                  std::to_string(grid) + " needed";
    return plan;
  }
  plan.path = CudaPath::kPersistent;
  plan.grid = static_cast<int>(grid);
  plan.threads = Persistent::kThreads;
  plan.units_per_cta = static_cast<int>(Hc);
  plan.rows_per_pass = static_cast<int>(rows_cap);
  plan.smem_bytes = static_cast<std::size_t>(smem);
  plan.reason.clear();
  return plan;
}

template <typename scalar_t, bool BWD, Activation ACT>
void run_for_kernel(const RecurrenceCall& c, const DeviceInfo& dev) {
  using acc_t = acc_type<scalar_t>;
  const RecurrenceShape& s = c.shape;
  RecParams<scalar_t> p;
  p.T = s.T, p.B = s.B, p.H = s.H, p.N = c.N;
  p.Hp = padded_hidden(s.H);
  p.batch_sizes = nullptr;  // set per path below
  p.walk_reverse = BWD ? !s.reverse : s.reverse;
  p.nphase = s.T + ((BWD && c.Yfinal) ? 1 : 0);
  p.W = static_cast<const scalar_t*>(c.W);
  p.init = static_cast<const scalar_t*>(c.init);
  p.X = static_cast<const scalar_t*>(c.X);
  p.h = static_cast<const scalar_t*>(c.h);
  p.dhn = static_cast<const scalar_t*>(c.dhn);
  p.Y = static_cast<scalar_t*>(c.Y);
  p.Yfinal = static_cast<scalar_t*>(c.Yfinal);
  p.barrier = static_cast<unsigned long long*>(c.workspace);
  p.state = reinterpret_cast<acc_t*>(static_cast<unsigned char*>(c.workspace) + kBarrierBytes);

  const CudaPlan plan = plan_for_kernel<scalar_t, BWD, ACT>(s.B, s.H, dev, c.path);
  if (c.path == CudaPath::kPersistent && plan.path != CudaPath::kPersistent) {
    throw std::runtime_error("fusedrnn CUDA: the persistent kernel was requested but cannot run: " +
                             plan.reason);
  }
  if (plan.path == CudaPath::kPersistent) {
    if (s.batch_sizes && !c.batch_sizes_dev) {
      throw std::invalid_argument(
          "fusedrnn CUDA: packed input needs batch_sizes in device memory as well");
    }
    p.batch_sizes = s.batch_sizes ? c.batch_sizes_dev : nullptr;
    check_cuda(cudaMemsetAsync(p.barrier, 0, sizeof(unsigned long long), c.stream),
               "cudaMemsetAsync(barrier counter)");
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(plan.grid));
    cfg.blockDim = dim3(static_cast<unsigned>(plan.threads));
    cfg.dynamicSmemBytes = plan.smem_bytes;
    cfg.stream = c.stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    const int Hc = plan.units_per_cta, rows_cap = plan.rows_per_pass;
    const cudaError_t err =
        cudaLaunchKernelEx(&cfg, rnn_persistent_kernel<scalar_t, BWD, ACT>, p, Hc, rows_cap);
    if (err == cudaSuccess) {
      check_cuda(cudaGetLastError(), "persistent recurrence kernel launch");
      return;
    }
    // The occupancy query said it fits, but the device is shared (MPS, green contexts):
    // in auto mode fall through to the per-step kernel, which always runs.
    if (!(err == cudaErrorCooperativeLaunchTooLarge && c.path == CudaPath::kAuto)) {
      check_cuda(err, "cooperative launch of the persistent recurrence kernel");
    }
    (void)cudaGetLastError();  // clear the non-sticky launch error
  }

  // Per-step kernel: the host walks the phases with the host batch_sizes.
  p.batch_sizes = nullptr;  // unused by the per-step kernel: phases come from the host
  Walker walker(s.batch_sizes, s.B, s.T, c.N, p.walk_reverse);
  const bool want_final = c.Yfinal != nullptr;
  const unsigned gx = static_cast<unsigned>(ceil_div(s.H, Stepwise::kTileUnits));
  for (int64_t k = 0; k < p.nphase; ++k) {
    const Phase ph = walker.next(k);
    const int64_t rows = phase_rows<BWD>(ph, want_final);
    const int64_t gy = ceil_div(rows, Stepwise::kTileRows);
    if (gy > 65535)
      throw std::invalid_argument("fusedrnn CUDA: batch too large for the per-step kernel");
    rnn_step_kernel<scalar_t, BWD, ACT>
        <<<dim3(gx, static_cast<unsigned>(gy)), Stepwise::kThreads, 0, c.stream>>>(p, ph, k, rows);
    check_cuda(cudaGetLastError(), "per-step recurrence kernel launch");
  }
}

template <typename scalar_t>
CudaPlan plan_recurrence(bool backward, Activation act, int64_t B, int64_t H, const DeviceInfo& dev,
                         CudaPath requested) {
  if (act == Activation::kTanh) {
    return backward ? plan_for_kernel<scalar_t, true, Activation::kTanh>(B, H, dev, requested)
                    : plan_for_kernel<scalar_t, false, Activation::kTanh>(B, H, dev, requested);
  }
  return backward ? plan_for_kernel<scalar_t, true, Activation::kRelu>(B, H, dev, requested)
                  : plan_for_kernel<scalar_t, false, Activation::kRelu>(B, H, dev, requested);
}

template <typename scalar_t>
void run_recurrence(const RecurrenceCall& c, const DeviceInfo& dev) {
  if (c.shape.act == Activation::kTanh) {
    if (c.backward) return run_for_kernel<scalar_t, true, Activation::kTanh>(c, dev);
    return run_for_kernel<scalar_t, false, Activation::kTanh>(c, dev);
  }
  if (c.backward) return run_for_kernel<scalar_t, true, Activation::kRelu>(c, dev);
  return run_for_kernel<scalar_t, false, Activation::kRelu>(c, dev);
}

}  // namespace cuda_detail
}  // namespace fusedrnn

#define FUSEDRNN_INSTANTIATE_CUDA(scalar_t)                                                   \
  template fusedrnn::CudaPlan fusedrnn::cuda_detail::plan_recurrence<scalar_t>(               \
      bool, fusedrnn::Activation, int64_t, int64_t, const fusedrnn::cuda_detail::DeviceInfo&, \
      fusedrnn::CudaPath);                                                                    \
  template void fusedrnn::cuda_detail::run_recurrence<scalar_t>(                              \
      const fusedrnn::cuda_detail::RecurrenceCall&, const fusedrnn::cuda_detail::DeviceInfo&);
