// Public CUDA entry points (rnn_cuda.h): device guard, argument packing, dtype dispatch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/rnn_launch.h"

namespace fusedrnn {
namespace cuda_detail {

void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  throw std::runtime_error(std::string("fusedrnn CUDA: ") + what +
                           " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

DeviceInfo device_info(int device) {
  DeviceInfo d;
  int coop = 0;
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(multiprocessor count)");
  check_cuda(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(max shared memory per block, opt-in)");
  check_cuda(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device),
             "cudaDeviceGetAttribute(cooperative launch)");
  d.cooperative = coop != 0;
  return d;
}

namespace {

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      check_cuda(cudaSetDevice(device), "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

std::size_t acc_size(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

int64_t packed_rows(const RecurrenceShape& s) {
  if (!s.batch_sizes) return s.T * s.B;
  int64_t n = 0;
  for (int64_t t = 0; t < s.T; ++t) n += s.batch_sizes[t];
  return n;
}

void run(RecurrenceCall& call, DType dtype, std::size_t workspace_bytes, int device) {
  const RecurrenceShape& s = call.shape;
  if (s.T < 1 || s.B < 1 || s.H < 1) {
    throw std::invalid_argument("fusedrnn CUDA: T, B and H must be at least 1");
  }
  const std::size_t need = rnn_cuda_workspace_bytes(s.B, s.H, dtype);
  if (workspace_bytes < need || reinterpret_cast<std::uintptr_t>(call.workspace) % 256 != 0) {
    throw std::invalid_argument("fusedrnn CUDA: workspace must be " + std::to_string(need) +
                                " bytes, 256-byte aligned; got " + std::to_string(workspace_bytes) +
                                " bytes");
  }
  call.N = packed_rows(s);
  DeviceGuard guard(device);
  const DeviceInfo dev = device_info(device);
  switch (dtype) {
    case DType::kFloat32:
      return run_recurrence<float>(call, dev);
    case DType::kFloat64:
      return run_recurrence<double>(call, dev);
    case DType::kBFloat16:
      return run_recurrence<__nv_bfloat16>(call, dev);
    case DType::kFloat16:
      return run_recurrence<__half>(call, dev);
  }
  throw std::invalid_argument("fusedrnn CUDA: unknown dtype");
}

}  // namespace
}  // namespace cuda_detail

std::size_t rnn_cuda_workspace_bytes(int64_t B, int64_t H, DType dtype) {
  return cuda_detail::kBarrierBytes + 2 * static_cast<std::size_t>(B) *
                                          static_cast<std::size_t>(cuda_detail::padded_hidden(H)) *
                                          cuda_detail::acc_size(dtype);
}

CudaPlan rnn_cuda_plan(int64_t B, int64_t H, DType dtype, Activation act, bool backward, int device,
                       CudaPath requested) {
  using namespace cuda_detail;
  if (B < 1 || H < 1) throw std::invalid_argument("fusedrnn CUDA: B and H must be at least 1");
  DeviceGuard guard(device);
  const DeviceInfo dev = device_info(device);
  switch (dtype) {
    case DType::kFloat32:
      return plan_recurrence<float>(backward, act, B, H, dev, requested);
    case DType::kFloat64:
      return plan_recurrence<double>(backward, act, B, H, dev, requested);
    case DType::kBFloat16:
      return plan_recurrence<__nv_bfloat16>(backward, act, B, H, dev, requested);
    case DType::kFloat16:
      return plan_recurrence<__half>(backward, act, B, H, dev, requested);
  }
  throw std::invalid_argument("fusedrnn CUDA: unknown dtype");
}

int rnn_cuda_runtime_version() {
  int v = 0;
  cuda_detail::check_cuda(cudaRuntimeGetVersion(&v), "cudaRuntimeGetVersion");
  return v;
}

int rnn_cuda_driver_version() {
  int v = 0;
  cuda_detail::check_cuda(cudaDriverGetVersion(&v), "cudaDriverGetVersion");
  return v;
}

void rnn_forward_cuda(const RecurrenceShape& s, const int64_t* batch_sizes_dev, DType dtype,
                      const void* P, const void* W_hh, const void* h0, void* h, void* hn,
                      void* workspace, std::size_t workspace_bytes, int device, void* stream,
                      CudaPath path) {
  cuda_detail::RecurrenceCall call;
  call.backward = false;
  call.shape = s;
  call.batch_sizes_dev = batch_sizes_dev;
  call.W = W_hh, call.init = h0, call.X = P;
  call.Y = h, call.Yfinal = hn;
  call.workspace = workspace;
  call.stream = static_cast<cudaStream_t>(stream);
  call.path = path;
  cuda_detail::run(call, dtype, workspace_bytes, device);
}

void rnn_backward_cuda(const RecurrenceShape& s, const int64_t* batch_sizes_dev, DType dtype,
                       const void* W_hh, const void* h, const void* G, const void* dhn, void* dP,
                       void* dh0, void* workspace, std::size_t workspace_bytes, int device,
                       void* stream, CudaPath path) {
  cuda_detail::RecurrenceCall call;
  call.backward = true;
  call.shape = s;
  call.batch_sizes_dev = batch_sizes_dev;
  call.W = W_hh, call.X = G, call.h = h, call.dhn = dhn;
  call.Y = dP, call.Yfinal = dh0;
  call.workspace = workspace;
  call.stream = static_cast<cudaStream_t>(stream);
  call.path = path;
  cuda_detail::run(call, dtype, workspace_bytes, device);
}

}  // namespace fusedrnn
