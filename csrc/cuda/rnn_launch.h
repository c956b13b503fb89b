// Host-side launch layer, declared here and instantiated once per storage type in
// rnn_cuda_{f32,f64,bf16,f16}.cu (compiled in parallel); rnn_cuda.cu dispatches on DType.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/rnn_cuda.h"

namespace fusedrnn {
namespace cuda_detail {

// A CUDA call that failed (check_cuda), with its error code. A plan refused because a call
// ran out of memory (cudaErrorMemoryAllocation: a kernel's module loading while the GPU is
// full) may succeed later and is not cached (CudaPlan::transient); other failures are.
struct CudaCallError : std::runtime_error {
  CudaCallError(const std::string& message, cudaError_t code)
      : std::runtime_error(message), code(code) {}
  cudaError_t code;
  bool out_of_memory() const { return code == cudaErrorMemoryAllocation; }
};

// Throws CudaCallError naming `what` and the CUDA error unless err == cudaSuccess.
void check_cuda(cudaError_t err, const char* what);

// What the launchers need to know about the device; read once per call.
struct DeviceInfo {
  int device = 0;  // the device index (current while the launchers run)
  int sms = 0;
  int smem_optin = 0;  // max dynamic shared memory per block after opting in
  bool cooperative = false;
  int cc_major = 0;             // compute capability, major
  bool cluster_launch = false;  // thread-block clusters (compute capability 9.0 and up)
};
DeviceInfo device_info(int device);

// Workspace layout: [barrier counter, padded to kBarrierBytes][2][B][Hp] acc_t.
constexpr std::size_t kBarrierBytes = 256;
inline int64_t padded_hidden(int64_t H) { return (H + 3) / 4 * 4; }

// Everything one call of either recurrence passes down, type-erased.
struct RecurrenceCall {
  bool backward = false;
  RecurrenceShape shape;
  int64_t N = 0;
  const int64_t* batch_sizes_dev = nullptr;
  const void* W = nullptr;
  const void* init = nullptr;  // forward: h0
  const void* X = nullptr;     // forward: P; BPTT: G
  const void* h = nullptr;     // BPTT: saved h
  const void* dhn = nullptr;   // BPTT
  void* Y = nullptr;           // forward: h; BPTT: dP
  void* Yfinal = nullptr;      // forward: hn; BPTT: dh0
  void* workspace = nullptr;
  cudaStream_t stream = nullptr;
  CudaPath path = CudaPath::kAuto;
};

template <typename scalar_t>
CudaPlan plan_recurrence(bool backward, Activation act, int64_t B, int64_t H, const DeviceInfo& dev,
                         CudaPath requested);

template <typename scalar_t>
void run_recurrence(const RecurrenceCall& call, const DeviceInfo& dev);

}  // namespace cuda_detail
}  // namespace fusedrnn
