// Public CUDA entry points (rnn_cuda.h): device guard, argument packing, dtype dispatch.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/rnn_launch.h"

namespace fusedrnn {
namespace cuda_detail {

// The errors that leave the context unusable (sticky): raised by whatever CUDA call comes
// next on the device, so most likely by an earlier asynchronous kernel, torch's or ours.
static bool sticky(cudaError_t err) {
  return err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure ||
         err == cudaErrorMisalignedAddress || err == cudaErrorHardwareStackError ||
         err == cudaErrorIllegalInstruction || err == cudaErrorAssert ||
         err == cudaErrorInvalidPc || err == cudaErrorInvalidAddressSpace ||
         err == cudaErrorLaunchTimeout;
}

void check_cuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  // Clear a non-sticky error before raising: otherwise the next call's post-launch
  // cudaGetLastError() on this thread would report this one against a good launch.
  (void)cudaGetLastError();
  std::string message = std::string("fusedrnn CUDA: ") + what +
                        " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
  if (sticky(err)) {
    message +=
        " (an error that stays with the device: it may come from an earlier asynchronous "
        "kernel, not this call; CUDA_LAUNCH_BLOCKING=1 reports each kernel's errors where "
        "it is launched)";
  }
  throw CudaCallError(message, err);
}

DeviceInfo device_info(int device) {
  DeviceInfo d;
  int coop = 0;
  d.device = device;
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(multiprocessor count)");
  check_cuda(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(max shared memory per block, opt-in)");
  check_cuda(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device),
             "cudaDeviceGetAttribute(cooperative launch)");
  d.cooperative = coop != 0;
  int cluster = 0;
  check_cuda(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, device),
             "cudaDeviceGetAttribute(compute capability major)");
  check_cuda(cudaDeviceGetAttribute(&cluster, cudaDevAttrClusterLaunch, device),
             "cudaDeviceGetAttribute(cluster launch)");
  d.cluster_launch = cluster != 0;
  return d;
}

namespace {

// The few driver-API calls the device guard needs, looked up once through the runtime
// (cudaGetDriverEntryPointByVersion), so the module still links only the static runtime and
// loads libcuda at run time. A pointer is null when the lookup failed.
struct DriverCalls {
  PFN_cuCtxGetCurrent_v4000 ctx_get_current = nullptr;
  PFN_cuCtxSetCurrent_v4000 ctx_set_current = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDevicePrimaryCtxGetState_v7000 primary_ctx_get_state = nullptr;
};

template <typename Fn>
Fn driver_entry_point(const char* symbol) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  // 12000: the ABI version of the typedefs above (unchanged since CUDA 4.0-7.0).
  const cudaError_t err =
      cudaGetDriverEntryPointByVersion(symbol, &fn, 12000, cudaEnableDefault, &found);
  if (err != cudaSuccess || found != cudaDriverEntryPointSuccess) {
    (void)cudaGetLastError();  // do not leave the failure for a later launch check to report
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

const DriverCalls& driver_calls() {
  static const DriverCalls calls = [] {  // thread-safe one-time initialization
    DriverCalls c;
    c.ctx_get_current = driver_entry_point<PFN_cuCtxGetCurrent_v4000>("cuCtxGetCurrent");
    c.ctx_set_current = driver_entry_point<PFN_cuCtxSetCurrent_v4000>("cuCtxSetCurrent");
    c.device_get = driver_entry_point<PFN_cuDeviceGet_v2000>("cuDeviceGet");
    c.primary_ctx_get_state =
        driver_entry_point<PFN_cuDevicePrimaryCtxGetState_v7000>("cuDevicePrimaryCtxGetState");
    return c;
  }();
  return calls;
}

// Whether `device`'s primary context is already initialized in this process (true when the
// driver cannot be asked: then the guard restores the device as if it were).
bool primary_context_active(int device) {
  const DriverCalls& drv = driver_calls();
  if (!drv.device_get || !drv.primary_ctx_get_state) return true;
  CUdevice dev = 0;
  unsigned int flags = 0;
  int active = 0;
  if (drv.device_get(&dev, device) != CUDA_SUCCESS) return true;
  if (drv.primary_ctx_get_state(dev, &flags, &active) != CUDA_SUCCESS) return true;
  return active != 0;
}

// Makes `device` current for the scope and gives the calling thread back what it had,
// without creating a context it did not have.
//
// cudaGetDevice does not tell "device 0 is current" from "nothing is current yet": a thread
// that never used CUDA (a fresh Python thread, say) also gets 0. Restoring that with
// cudaSetDevice(0) would initialize device 0's primary context (CUDA 12+ initializes it in
// cudaSetDevice): hundreds of MiB on a GPU the program may never use. So, only when the
// device actually changes:
//   - a context was current (cuCtxGetCurrent): make exactly that context current again;
//   - none was, but the previous device's primary context exists: cudaSetDevice back to it
//     (what cudaGetDevice reported before; costs no new context);
//   - neither: leave `device` current (restoring would create a context). PyTorch's own
//     device guards make the same choice (c10::cuda::MaybeSetDevice).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) return;
    const DriverCalls& drv = driver_calls();
    CUcontext current = nullptr;
    // Before any runtime call initialized the driver this fails: then nothing was current.
    if (drv.ctx_get_current && drv.ctx_get_current(&current) != CUDA_SUCCESS) current = nullptr;
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    if (current != nullptr && drv.ctx_set_current) {
      context_ = current;
      restore_ = Restore::kContext;
    } else if (primary_context_active(previous_)) {  // asked after cudaSetDevice: driver is up
      restore_ = Restore::kDevice;
    }
  }
  ~DeviceGuard() {
    switch (restore_) {
      case Restore::kContext:
        (void)driver_calls().ctx_set_current(context_);
        break;
      case Restore::kDevice:
        // A failed restore must not leave its error for the next call's post-launch
        // cudaGetLastError(), which would blame a good launch for it.
        if (cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
        break;
      case Restore::kNothing:
        break;
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  enum class Restore { kNothing, kContext, kDevice };
  int previous_ = 0;
  CUcontext context_ = nullptr;
  Restore restore_ = Restore::kNothing;
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
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    (void)cudaGetLastError();  // no usable driver: report 0, leave no error behind
    return 0;
  }
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
