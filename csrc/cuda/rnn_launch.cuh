// Host launch logic for one storage type: choose the cluster, the persistent or the per-step
// kernel, size the grid and shared memory, and enqueue on the caller's stream. Included only
// by the per-dtype translation units.
#pragma once

#include <algorithm>
#include <cstddef>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/rnn_cluster.cuh"
#include "cuda/rnn_launch.h"
#include "cuda/rnn_persistent.cuh"
#include "cuda/rnn_stepwise.cuh"

namespace fusedrnn {
namespace cuda_detail {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Opts the one-launch kernel <scalar_t, BWD, ACT> (persistent, or CLUSTER: the cluster
// kernel) in to all the dynamic shared memory the current device allows, once per (device,
// kernel), and returns that maximum (bytes). The cluster kernel is also allowed clusters of
// up to 16 CTAs (non-portable; 8 is the portable limit), and refused where its image was
// compiled for an architecture below 9.0 (its body compiled out: it would only trap).
//
// cudaFuncAttributeMaxDynamicSharedMemorySize belongs to the kernel in the device's context,
// shared by every thread, and the kernel calls run with the GIL released. Setting it per
// call to the call's own size would race: thread A sets 100 KiB, thread B sets 50 KiB, A's
// 100 KiB launch fails with cudaErrorInvalidValue. Set once to the device maximum, the
// attribute never shrinks and every launch fits under it; the occupancy query and the
// launch itself still use the size the call needs. The mutex makes a concurrent first call
// wait until the attribute is set.
template <typename scalar_t, bool BWD, Activation ACT, bool CLUSTER>
int max_dynamic_smem(const DeviceInfo& dev) {
  static std::mutex mu;
  static std::vector<int> max_dynamic;  // by device index; 0 = not set yet
  const std::lock_guard<std::mutex> lock(mu);
  const std::size_t d = static_cast<std::size_t>(dev.device);
  if (d < max_dynamic.size() && max_dynamic[d] > 0) return max_dynamic[d];
  auto kernel =
      CLUSTER ? rnn_cluster_kernel<scalar_t, BWD, ACT> : rnn_persistent_kernel<scalar_t, BWD, ACT>;
  const std::string name = CLUSTER ? "cluster kernel" : "persistent kernel";
  cudaFuncAttributes attr = {};
  check_cuda(cudaFuncGetAttributes(&attr, kernel), ("cudaFuncGetAttributes(" + name + ")").c_str());
  if (CLUSTER && attr.ptxVersion < 90) {
    throw std::runtime_error(
        "the cluster kernel in this build was compiled for compute capability " +
        std::to_string(attr.ptxVersion / 10) + "." + std::to_string(attr.ptxVersion % 10) +
        " (PTX JIT); build fusedrnn with CUDA architecture 90 to run it");
  }
  // The opt-in limit covers static and dynamic shared memory (the kernels have no static).
  const int bytes = dev.smem_optin - static_cast<int>(attr.sharedSizeBytes);
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             ("cudaFuncSetAttribute(" + name + ", max dynamic shared memory)").c_str());
  if (CLUSTER) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
               "cudaFuncSetAttribute(cluster kernel, non-portable cluster size)");
  }
  if (max_dynamic.size() <= d) max_dynamic.resize(d + 1, 0);
  max_dynamic[d] = bytes;
  return bytes;
}

// Largest batch for which auto takes the persistent kernel, forward and backward alike (as
// measured; the persistent kernel also runs larger batches, in several passes per step,
// when requested), and the larger one from H = kAutoLargeHidden up.
constexpr int64_t kAutoPersistentMaxRows = 256;
constexpr int64_t kAutoPersistentMaxRowsLargeH = 512;
constexpr int64_t kAutoLargeHidden = 1024;

// Where auto takes the cluster kernel (on a Hopper GPU, compute capability 9.x, where it
// was measured; when it fits in one cluster): B up to kAutoClusterMaxRows, B * H up to
// kAutoClusterMaxWork and H up to kAutoClusterMaxHidden, the last two halved for float64.
// Its step time grows with B * H (every CTA of the one cluster holds all rows and reads its
// W_hh slice from shared memory), the persistent kernel's hardly at all below a few dozen
// rows. Measured on an H200 (T = 100, session 26, `bench_cuda.py --paths --small`,
// docs/cuda_kernels.md "Cluster kernel"), persistent over cluster time per step, forward:
// float32 1.76x at B = 1, H = 64, 1.58x at H = 256, 1.15x at H = 512, 0.89x at H = 640; at
// B * H = 2048 1.21x (B = 8, H = 256) to 0.98x (B = 4, H = 512); at B * H = 4096
// 0.78-0.94x. bfloat16 within 0.12 of float32 everywhere; float64 level at B * H = 1024 or
// H = 256 (0.99-1.12x) and 0.59-1.00x above. float16 takes the 16-bit limits, unmeasured.
// The grid covered B <= 32 and H >= 64: larger batches at smaller H (one CTA holding
// hundreds of rows) are left to the persistent kernel, unmeasured.
constexpr int64_t kAutoClusterMaxRows = 32;
constexpr int64_t kAutoClusterMaxWork = 2048;
constexpr int64_t kAutoClusterMaxHidden = 512;
template <typename scalar_t>
constexpr int64_t auto_cluster_scale() {
  return sizeof(scalar_t) > 4 ? 2 : 1;
}

// Hidden units per CTA of the persistent kernel (a multiple of U): H spread over every SM.
// (Fewer, fuller CTAs at small H, every warp given a work item, were tried and measured in
// session 21 on an H200: B = 1, H = 256 4.20 -> 4.46 us per step, no better anywhere else;
// docs/cuda_kernels.md, "Fuller CTAs at small H".)
inline int64_t persistent_units_per_cta(int64_t H, int sms) {
  constexpr int64_t U = Persistent::kUnits;
  return ceil_div(ceil_div(H, sms), U) * U;
}

// Launch configuration of the cluster kernel: one cluster of C CTAs, no other attribute.
inline cudaLaunchConfig_t cluster_config(const CudaPlan& plan, cudaStream_t stream,
                                         cudaLaunchAttribute* attr) {
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(plan.grid);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.grid));
  cfg.blockDim = dim3(static_cast<unsigned>(plan.threads));
  cfg.dynamicSmemBytes = plan.smem_bytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// The cluster kernel's plan (forced, or considered by auto at small sizes; rnn_cluster.cuh):
// the largest cluster of at most 16 CTAs (16 is beyond the portable 8: tried first, then 8,
// 4, 2, 1) that the device can schedule, each CTA owning Hc units (a multiple of U) and
// holding in shared memory its slice of M, both state buffers of all B rows (padded to the
// row tile), its new state values and the sums. A smaller cluster gives each CTA more units,
// so when the largest does not fit in shared memory none does.
template <typename scalar_t, bool BWD, Activation ACT>
CudaPlan plan_cluster_uncached(int64_t B, int64_t H, const DeviceInfo& dev) {
  using acc_t = acc_type<scalar_t>;
  constexpr int64_t U = Persistent::kUnits, BT = Persistent::kRows, NW = Persistent::kWarps;
  CudaPlan plan;
  plan.path = CudaPath::kStepwise;
  if (dev.cc_major < 9 || !dev.cluster_launch) {
    plan.reason = "the device cannot launch thread-block clusters (compute capability " +
                  std::to_string(dev.cc_major) + ".x; the cluster kernel needs 9.0)";
    return plan;
  }
  int64_t smem_max = 0;
  try {
    smem_max = max_dynamic_smem<scalar_t, BWD, ACT, true>(dev);
  } catch (const CudaCallError& e) {
    plan.reason = e.what();
    plan.transient = e.out_of_memory();
    return plan;
  } catch (const std::runtime_error& e) {  // (a build without sm_90 code)
    plan.reason = e.what();
    return plan;
  }
  const int64_t Hp = padded_hidden(H);
  const int64_t rows_pad = ceil_div(std::max<int64_t>(B, 1), BT) * BT;
  for (int64_t c_max = 16; c_max >= 1; c_max /= 2) {
    const int64_t Hc = ceil_div(ceil_div(H, std::min(c_max, ceil_div(H, U))), U) * U;
    const int64_t C = ceil_div(H, Hc);
    const int64_t red_slots = std::max<int64_t>(NW, Hc / U * (rows_pad / BT));
    const int64_t smem =
        Hc * Hp * static_cast<int64_t>(sizeof(scalar_t)) +
        (2 * rows_pad * Hp + rows_pad * Hc + red_slots * 32) * static_cast<int64_t>(sizeof(acc_t));
    if (smem > smem_max) {
      if (plan.reason.empty()) {
        plan.reason = "a cluster of " + std::to_string(C) + " CTAs needs " + std::to_string(smem) +
                      " bytes of shared memory per CTA for H = " + std::to_string(H) +
                      " and B = " + std::to_string(B) + "; the device allows " +
                      std::to_string(smem_max);
      }
      return plan;
    }
    CudaPlan trial;
    trial.path = CudaPath::kCluster;
    trial.grid = static_cast<int>(C);
    trial.threads = Persistent::kThreads;
    trial.units_per_cta = static_cast<int>(Hc);
    trial.rows_per_pass = static_cast<int>(rows_pad);
    trial.smem_bytes = static_cast<std::size_t>(smem);
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cluster_config(trial, nullptr, attr);
    int clusters = 0;
    const cudaError_t err =
        cudaOccupancyMaxActiveClusters(&clusters, rnn_cluster_kernel<scalar_t, BWD, ACT>, &cfg);
    if (err == cudaSuccess && clusters >= 1) return trial;
    (void)cudaGetLastError();  // a refused size is not an error of the next call
    if (err == cudaErrorMemoryAllocation) plan.transient = true;
    if (plan.reason.empty()) {
      plan.reason = "a cluster of " + std::to_string(C) + " CTAs with " + std::to_string(smem) +
                    " bytes of shared memory each cannot be scheduled on this device" +
                    (err != cudaSuccess ? std::string(" (") + cudaGetErrorString(err) + ")" : "");
    }
  }
  return plan;
}

// plan_cluster_uncached, cached per (device, B, H): its occupancy queries (up to five) would
// otherwise run on every call, host time that the benchmarks' per-step figures include.
template <typename scalar_t, bool BWD, Activation ACT>
CudaPlan plan_cluster(int64_t B, int64_t H, const DeviceInfo& dev) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t>, CudaPlan> plans;
  const auto key = std::make_tuple(dev.device, B, H);
  {
    const std::lock_guard<std::mutex> lock(mu);
    const auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  CudaPlan plan = plan_cluster_uncached<scalar_t, BWD, ACT>(B, H, dev);
  if (plan.transient) return plan;  // out of memory: asked again next time
  const std::lock_guard<std::mutex> lock(mu);
  if (plans.size() >= 4096) plans.clear();  // bounded: many distinct shapes start afresh
  plans.emplace(key, plan);
  return plan;
}

// The plan of a call. auto takes, in order: the cluster kernel where it is the faster one
// and fits (unless `allow_cluster` is false: the fallback when the driver refused its
// launch), the persistent kernel within its batch limit, else the per-step kernel.
template <typename scalar_t, bool BWD, Activation ACT>
CudaPlan plan_for_kernel(int64_t B, int64_t H, const DeviceInfo& dev, CudaPath requested,
                         bool allow_cluster = true) {
  using acc_t = acc_type<scalar_t>;
  constexpr int U = Persistent::kUnits, BT = Persistent::kRows, NW = Persistent::kWarps;
  if (requested == CudaPath::kCluster) return plan_cluster<scalar_t, BWD, ACT>(B, H, dev);
  if (requested == CudaPath::kAuto && allow_cluster && dev.cluster_launch && dev.cc_major == 9 &&
      B <= kAutoClusterMaxRows && H <= kAutoClusterMaxHidden / auto_cluster_scale<scalar_t>() &&
      std::max<int64_t>(B, 1) * H <= kAutoClusterMaxWork / auto_cluster_scale<scalar_t>()) {
    const CudaPlan cluster = plan_cluster<scalar_t, BWD, ACT>(B, H, dev);
    if (cluster.path == CudaPath::kCluster) return cluster;
    if (cluster.transient) {  // the cluster kernel may be taken next time: so is this plan
      CudaPlan rest = plan_for_kernel<scalar_t, BWD, ACT>(B, H, dev, requested, false);
      rest.transient = true;
      if (rest.reason.empty()) rest.reason = "cluster kernel: " + cluster.reason;
      return rest;
    }
  }
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
  // The batch limit of auto (docs/cuda_kernels.md, "Boundary"): the persistent kernel's
  // step time grows with the rows staged, the per-step kernel's more slowly. Measured on an
  // H100 (float32, T = 100, H = 256 to 2048, row-wise staging copy, session 16) the
  // persistent kernel was faster at every H up to B = 256 (backward at B = 256, H = 256:
  // 17.4 against 15.5 us/step, the one exception), and at B = 512 from H = 1024 (1.2-1.7x)
  // but not below it (0.6-0.86x backward; forward level at H = 512, 0.59x at H = 256). Other
  // dtypes take the same limits, unmeasured.
  const int64_t max_rows =
      H >= kAutoLargeHidden ? kAutoPersistentMaxRowsLargeH : kAutoPersistentMaxRows;
  if (requested == CudaPath::kAuto && B > max_rows) {
    plan.reason = "B = " + std::to_string(B) + " is above " + std::to_string(max_rows) +
                  " rows at H = " + std::to_string(H) + ", where the per-step kernel is faster";
    return plan;
  }
  // A query or opt-in the driver refuses leaves the per-step kernel, which needs neither:
  // auto falls back to it, a requested persistent kernel reports the reason (run_for_kernel).
  int64_t smem_max = 0;
  try {
    smem_max = max_dynamic_smem<scalar_t, BWD, ACT, false>(dev);
  } catch (const CudaCallError& e) {
    plan.reason = e.what();
    plan.transient = e.out_of_memory();
    return plan;
  }
  // At most one CTA per SM, each owning Hc units (a multiple of the warp item width U).
  const int64_t Hp = padded_hidden(H);
  const int64_t Hc = persistent_units_per_cta(H, dev.sms);
  const int64_t grid = ceil_div(H, Hc);
  const int64_t n_g = Hc / U;
  const int64_t w_bytes = Hc * Hp * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t fixed = w_bytes + NW * 32 * static_cast<int64_t>(sizeof(acc_t));
  const int64_t per_tile = (BT * Hp + n_g * 32) * static_cast<int64_t>(sizeof(acc_t));
  if (fixed + per_tile > smem_max) {
    plan.reason = "the W_hh slice of " + std::to_string(Hc) + " x " + std::to_string(H) +
                  " per CTA and one row tile need " + std::to_string(fixed + per_tile) +
                  " bytes of shared memory; the device allows " + std::to_string(smem_max);
    return plan;
  }
  // Rows staged per pass. B is not part of the choice of kernel: at large B the persistent
  // kernel stages h_{t-1} in ceil(B / rows_cap) passes per step (docs/cuda_kernels.md).
  const int64_t tiles = std::min((smem_max - fixed) / per_tile, ceil_div(B, BT));
  const int64_t rows_cap = tiles * BT;
  const int64_t red_slots = std::max<int64_t>(NW, n_g * tiles);
  const int64_t smem = w_bytes + rows_cap * Hp * static_cast<int64_t>(sizeof(acc_t)) +
                       red_slots * 32 * static_cast<int64_t>(sizeof(acc_t));

  auto kernel = rnn_persistent_kernel<scalar_t, BWD, ACT>;
  int per_sm = 0;
  try {
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Persistent::kThreads,
                                                             static_cast<size_t>(smem)),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor(persistent kernel)");
  } catch (const CudaCallError& e) {
    plan.reason = e.what();
    plan.transient = e.out_of_memory();
    return plan;
  }
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

  // Only the persistent and cluster kernels read batch_sizes on the device; the caller copies
  // them only when this plan picks one, and packed input without the device copy runs per step.
  const bool no_device_sizes = s.batch_sizes && !c.batch_sizes_dev;
  if (no_device_sizes && c.path == CudaPath::kPersistent) {
    throw std::invalid_argument(
        "fusedrnn CUDA: the persistent kernel needs packed batch_sizes in device memory too");
  }
  if (c.path == CudaPath::kCluster) {
    if (no_device_sizes) {
      throw std::invalid_argument(
          "fusedrnn CUDA: the cluster kernel needs packed batch_sizes in device memory too");
    }
  }
  // Any refusal of a launch configuration that an occupancy query accepted (a shared device:
  // MPS, green contexts, a context whose shared-memory opt-in was lost).
  const auto config_refused = [](cudaError_t err) {
    return err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorInvalidConfiguration ||
           err == cudaErrorInvalidValue || err == cudaErrorNotSupported ||
           err == cudaErrorLaunchOutOfResources || err == cudaErrorInvalidClusterSize;
  };
  // Whether a one-launch kernel is enqueued (err: its launch's status). Under auto a refused
  // configuration is cleared (a non-sticky error) and false lets the caller fall back; any
  // other error, or a refusal of a forced kernel, throws naming `what`.
  const auto launched = [&](cudaError_t err, const char* what) {
    if (err == cudaSuccess) {
      check_cuda(cudaGetLastError(), what);
      return true;
    }
    if (!(config_refused(err) && c.path == CudaPath::kAuto)) check_cuda(err, what);
    (void)cudaGetLastError();
    return false;
  };
  const CudaPath requested = no_device_sizes ? CudaPath::kStepwise : c.path;
  CudaPlan plan = plan_for_kernel<scalar_t, BWD, ACT>(s.B, s.H, dev, requested);
  if (c.path == CudaPath::kCluster && plan.path != CudaPath::kCluster) {
    throw std::runtime_error("fusedrnn CUDA: the cluster kernel was requested but cannot run: " +
                             plan.reason);
  }
  if (plan.path == CudaPath::kCluster) {
    p.batch_sizes = s.batch_sizes ? c.batch_sizes_dev : nullptr;
    cudaLaunchAttribute attr[1];
    const cudaLaunchConfig_t cfg = cluster_config(plan, c.stream, attr);
    if (launched(cudaLaunchKernelEx(&cfg, rnn_cluster_kernel<scalar_t, BWD, ACT>, p,
                                    plan.units_per_cta, plan.rows_per_pass),
                 "cluster launch of the cluster recurrence kernel")) {
      return;
    }
    // auto falls back to the plan without the cluster kernel (the persistent kernel, which
    // reads the same device batch_sizes, or the per-step one).
    plan = plan_for_kernel<scalar_t, BWD, ACT>(s.B, s.H, dev, requested, false);
  }
  if (c.path == CudaPath::kPersistent && plan.path != CudaPath::kPersistent) {
    throw std::runtime_error("fusedrnn CUDA: the persistent kernel was requested but cannot run: " +
                             plan.reason);
  }
  if (plan.path == CudaPath::kPersistent) {
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
    if (launched(
            cudaLaunchKernelEx(&cfg, rnn_persistent_kernel<scalar_t, BWD, ACT>, p, Hc, rows_cap),
            "cooperative launch of the persistent recurrence kernel")) {
      return;
    }
    // The occupancy query said it fits, but the device is shared: auto falls through to the
    // per-step kernel, which always runs.
  }

  // Per-step kernel: the host walks the phases with the host batch_sizes. A phase of more
  // rows than gridDim.y's limit of row tiles has its CTAs stride over the tiles (before
  // session 23 such a batch, B > 1,048,560, was refused).
  p.batch_sizes = nullptr;  // unused by the per-step kernel: phases come from the host
  Walker walker(s.batch_sizes, s.B, s.T, c.N, p.walk_reverse);
  const bool want_final = c.Yfinal != nullptr;
  const unsigned gx = static_cast<unsigned>(ceil_div(s.H, Stepwise::kTileUnits));
  for (int64_t k = 0; k < p.nphase; ++k) {
    const Phase ph = walker.next(k);
    const int64_t rows = phase_rows<BWD>(ph, want_final);
    const int64_t tiles = std::min(ceil_div(rows, Stepwise::kTileRows), Stepwise::kMaxGridY);
    const dim3 grid(gx, static_cast<unsigned>(tiles));
    rnn_step_kernel<scalar_t, BWD, ACT><<<grid, Stepwise::kThreads, 0, c.stream>>>(p, ph, k, rows);
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
