// fusedrnn CUDA kernels: host entry points. Plain C++ on raw device pointers; this header
// needs no CUDA headers, so the pybind11 binding (bindings_cuda.cpp) compiles as plain C++.
//
// Same contract as rnn_forward_cpu / rnn_backward_cpu in ../fusedrnn.h (shape letters,
// packed layout, walking order, aliasing, nullptr meanings), on device pointers:
//   - every tensor pointer is device memory on `device`, row-major and contiguous;
//   - s.batch_sizes is HOST memory [T] (sizing, launch planning) and batch_sizes_dev is the
//     same values in DEVICE memory [T] (read by the persistent kernel only); both nullptr
//     means padded input (every step has all B rows). batch_sizes_dev may be nullptr with
//     packed input: then kAuto runs the per-step kernel and kPersistent is refused, so a
//     caller copies batch_sizes to the device only when rnn_cuda_plan picks the persistent
//     kernel;
//   - the work is enqueued on `stream` (a cudaStream_t; nullptr is the legacy default
//     stream) and runs asynchronously: the caller keeps every buffer alive until it is done;
//   - T, B, H >= 1 and every size, dtype, device and alignment was checked by the caller
//     (python/fusedrnn/ops.py). Failures of the CUDA runtime come back as
//     std::runtime_error naming the call and the CUDA error.
//
// Precision: float32 and float64 compute and keep the recurrent state in their own type
// (float32 is exact FMA arithmetic, never TF32). bfloat16 and float16 are storage types:
// products accumulate in float32 and the state carried from step to step is float32; only
// the outputs (h, hn, dP, dh0) are rounded to the storage type.
//
// Results are deterministic: every output element is reduced in a fixed order, no atomics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fusedrnn.h"

namespace fusedrnn {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// Which recurrence kernel runs. kAuto takes the cluster kernel (one thread-block cluster,
// rnn_cluster.cuh) on compute capability 9.x at B <= 32, B * H <= 2048, H <= 512 (the
// last two halved for float64) where it fits; else the persistent kernel when the batch is
// within its limit (256 rows, 512 from H = 1024, forward and backward: rnn_launch.cuh), it
// fits on the chip and the device can launch it cooperatively; else the per-step kernel.
// The others force one kernel.
enum class CudaPath : int { kAuto = 0, kPersistent = 1, kStepwise = 2, kCluster = 3 };

// How a call will run on a device, for tests, `fusedrnn info` and the docs.
struct CudaPlan {
  CudaPath path = CudaPath::kStepwise;  // never kAuto
  int grid = 0;                         // CTAs (persistent: co-resident; cluster: its size)
  int threads = 0;                      // threads per CTA
  int units_per_cta = 0;                // persistent, cluster: hidden units (W_hh slice) per CTA
  int rows_per_pass = 0;                // persistent: batch rows staged in shared memory at once;
                                        // cluster: all B rows, padded to the row tile
  std::size_t smem_bytes = 0;           // dynamic shared memory per CTA
  std::string reason;                   // why no one-launch kernel was taken (empty if one was)
  bool transient = false;  // the reason is a CUDA call that ran out of memory (a kernel's
                           // module loading on a full GPU), which may pass later: not cached
};

// Bytes of device workspace a call with batch size B and hidden size H needs: a
// barrier counter and two [B,H] state buffers of the accumulation type. Any contents are
// fine (torch.empty); the pointer must be 256-byte aligned (torch allocations are).
//
// One workspace per launch in flight: a workspace must not be used by two calls whose work
// can overlap on the device (two streams, or two host threads, without an event between
// them). The launcher zeroes the grid-barrier counter on the stream and the persistent
// kernel counts arrivals on it, and the persistent and per-step kernels keep the recurrent state of
// the running step in the two state buffers, so a second call would reset the other's barrier (a
// hang or a torn step) and overwrite its state (wrong results, no error). Calls ordered on one
// stream may reuse a workspace. python/fusedrnn/_cuda.py allocates a fresh workspace for
// every call from torch's caching allocator, which hands the memory out again only to work
// ordered after the call on the same stream.
std::size_t rnn_cuda_workspace_bytes(int64_t B, int64_t H, DType dtype);

// The plan a forward (backward = false) or backward call with these sizes gets on `device`
// (the kernel's register use, hence co-residency, depends on dtype and activation).
CudaPlan rnn_cuda_plan(int64_t B, int64_t H, DType dtype, Activation act, bool backward, int device,
                       CudaPath requested);

// CUDA runtime version this module was built with (linked statically), and the version the
// installed driver supports (0 when there is no driver), as 1000*major + 10*minor.
int rnn_cuda_runtime_version();
int rnn_cuda_driver_version();

// Forward recurrence h_t = phi(P_t + h_prev W_hh^T), as rnn_forward_cpu.
//   P    [N,H]  W_hh [H,H]  h0 [B,H] or nullptr  h [N,H] out (may alias P)  hn [B,H] out
//   workspace: rnn_cuda_workspace_bytes(B, H, dtype) bytes, used by no other call in flight.
void rnn_forward_cuda(const RecurrenceShape& s, const int64_t* batch_sizes_dev, DType dtype,
                      const void* P, const void* W_hh, const void* h0, void* h, void* hn,
                      void* workspace, std::size_t workspace_bytes, int device, void* stream,
                      CudaPath path);

// BPTT recurrence d_t = (G_t + d_next W_hh) * phi'(h_t), as rnn_backward_cpu.
//   W_hh [H,H]  h [N,H]  G [N,H] or nullptr  dhn [B,H] or nullptr
//   dP [N,H] out (may alias G)  dh0 [B,H] out or nullptr (not wanted)
void rnn_backward_cuda(const RecurrenceShape& s, const int64_t* batch_sizes_dev, DType dtype,
                       const void* W_hh, const void* h, const void* G, const void* dhn, void* dP,
                       void* dh0, void* workspace, std::size_t workspace_bytes, int device,
                       void* stream, CudaPath path);

}  // namespace fusedrnn
