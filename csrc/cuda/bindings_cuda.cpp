// fusedrnn._C_cuda: pybind11 binding of the CUDA recurrence kernels (rnn_cuda.h).
//
// Thin on purpose: tensors arrive as integer addresses (tensor.data_ptr()), sizes, a dtype
// string, the device index and the stream handle (torch.cuda.current_stream(dev).cuda_stream).
// python/fusedrnn/ops.py checks every tensor first; this layer only parses strings. Every
// kernel call releases the GIL and only enqueues work on the stream (asynchronous).
// Errors: std::runtime_error (CUDA failures) -> RuntimeError, std::invalid_argument -> ValueError.
//
// The argument order follows fusedrnn._C (dtype, T, B, H, batch_sizes, ...), with the device
// copy of batch_sizes after the host one and (workspace, workspace_bytes, device, stream,
// path) in place of num_threads.
//
// rnn_forward(dtype, T, B, H, batch_sizes, batch_sizes_dev, reverse, nonlinearity,
//             P, W_hh, h0, h, hn, workspace, workspace_bytes, device, stream, path="auto")
//   P [N,H]  W_hh [H,H]  h0 [B,H] or 0  h [N,H] out (may equal P)  hn [B,H] out
// rnn_backward(dtype, T, B, H, batch_sizes, batch_sizes_dev, reverse, nonlinearity,
//              W_hh, h, G, dhn, dP, dh0, workspace, workspace_bytes, device, stream, path="auto")
//   W_hh [H,H]  h [N,H]  G [N,H] or 0  dhn [B,H] or 0  dP [N,H] out (may equal G)
//   dh0 [B,H] out or 0 (not wanted)
//   batch_sizes: address of the CPU int64 [T] tensor, or 0 for padded input (N = T*B);
//   batch_sizes_dev: the same values on the device (int64 [T]), 0 when batch_sizes is 0.
//   dtype: "float32" | "float64" | "bfloat16" | "float16"; nonlinearity: "tanh" | "relu";
//   path: "auto" | "persistent" | "stepwise" (tests force each kernel).
// workspace_bytes(dtype, B, H) -> int: size of the workspace argument (torch.empty, uint8).
// plan(dtype, B, H, nonlinearity, backward, device, path="auto") -> dict: the kernel a
//   call gets (path, grid, threads, units_per_cta, rows_per_pass, smem_bytes, reason).
// built_archs() -> list[str]: CMAKE_CUDA_ARCHITECTURES this module was compiled for.
// runtime_version() / driver_version() -> int: CUDA versions (1000*major + 10*minor).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/rnn_cuda.h"
#include "parse_choice.h"

#ifndef FUSEDRNN_CUDA_ARCHS
#error "FUSEDRNN_CUDA_ARCHS must be defined by the build (csrc/cuda/cuda.cmake)"
#endif

namespace py = pybind11;
using fusedrnn::Activation;
using fusedrnn::CudaPath;
using fusedrnn::DType;

namespace {

DType parse_dtype(const std::string& s) {
  static constexpr std::pair<const char*, DType> kChoices[] = {{"float32", DType::kFloat32},
                                                               {"float64", DType::kFloat64},
                                                               {"bfloat16", DType::kBFloat16},
                                                               {"float16", DType::kFloat16}};
  return fusedrnn::parse_choice("dtype", s, kChoices);
}

Activation parse_act(const std::string& s) {
  static constexpr std::pair<const char*, Activation> kChoices[] = {{"tanh", Activation::kTanh},
                                                                    {"relu", Activation::kRelu}};
  return fusedrnn::parse_choice("nonlinearity", s, kChoices);
}

CudaPath parse_path(const std::string& s) {
  static constexpr std::pair<const char*, CudaPath> kChoices[] = {
      {"auto", CudaPath::kAuto},
      {"persistent", CudaPath::kPersistent},
      {"stepwise", CudaPath::kStepwise},
      {"cluster", CudaPath::kCluster}};
  return fusedrnn::parse_choice("path", s, kChoices);
}

template <typename T>
T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

fusedrnn::RecurrenceShape make_shape(int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
                                     bool reverse, const std::string& nonlinearity) {
  fusedrnn::RecurrenceShape s;
  s.T = T, s.B = B, s.H = H;
  s.batch_sizes = as_ptr<const int64_t>(batch_sizes);
  s.reverse = reverse;
  s.act = parse_act(nonlinearity);
  return s;
}

std::vector<std::string> built_archs() {
  std::vector<std::string> out;
  std::stringstream ss(FUSEDRNN_CUDA_ARCHS);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fusedrnn CUDA kernels: fused Elman RNN forward and BPTT recurrences";

  m.def(
      "rnn_forward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
         std::uintptr_t batch_sizes_dev, bool reverse, const std::string& nonlinearity,
         std::uintptr_t P, std::uintptr_t W_hh, std::uintptr_t h0, std::uintptr_t h,
         std::uintptr_t hn, std::uintptr_t workspace, std::size_t workspace_bytes, int device,
         std::uintptr_t stream, const std::string& path) {
        const auto shape = make_shape(T, B, H, batch_sizes, reverse, nonlinearity);
        const DType dt = parse_dtype(dtype);
        const CudaPath cp = parse_path(path);
        py::gil_scoped_release release;
        fusedrnn::rnn_forward_cuda(
            shape, as_ptr<const int64_t>(batch_sizes_dev), dt, as_ptr<const void>(P),
            as_ptr<const void>(W_hh), as_ptr<const void>(h0), as_ptr<void>(h), as_ptr<void>(hn),
            as_ptr<void>(workspace), workspace_bytes, device, as_ptr<void>(stream), cp);
      },
      py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("batch_sizes"),
      py::arg("batch_sizes_dev"), py::arg("reverse"), py::arg("nonlinearity"), py::arg("P"),
      py::arg("W_hh"), py::arg("h0"), py::arg("h"), py::arg("hn"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"), py::arg("path") = "auto");

  m.def(
      "rnn_backward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
         std::uintptr_t batch_sizes_dev, bool reverse, const std::string& nonlinearity,
         std::uintptr_t W_hh, std::uintptr_t h, std::uintptr_t G, std::uintptr_t dhn,
         std::uintptr_t dP, std::uintptr_t dh0, std::uintptr_t workspace,
         std::size_t workspace_bytes, int device, std::uintptr_t stream, const std::string& path) {
        const auto shape = make_shape(T, B, H, batch_sizes, reverse, nonlinearity);
        const DType dt = parse_dtype(dtype);
        const CudaPath cp = parse_path(path);
        py::gil_scoped_release release;
        fusedrnn::rnn_backward_cuda(shape, as_ptr<const int64_t>(batch_sizes_dev), dt,
                                    as_ptr<const void>(W_hh), as_ptr<const void>(h),
                                    as_ptr<const void>(G), as_ptr<const void>(dhn),
                                    as_ptr<void>(dP), as_ptr<void>(dh0), as_ptr<void>(workspace),
                                    workspace_bytes, device, as_ptr<void>(stream), cp);
      },
      py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("batch_sizes"),
      py::arg("batch_sizes_dev"), py::arg("reverse"), py::arg("nonlinearity"), py::arg("W_hh"),
      py::arg("h"), py::arg("G"), py::arg("dhn"), py::arg("dP"), py::arg("dh0"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
      py::arg("path") = "auto");

  m.def(
      "workspace_bytes",
      [](const std::string& dtype, int64_t B, int64_t H) {
        if (B < 1 || H < 1) throw std::invalid_argument("B and H must be at least 1");
        return fusedrnn::rnn_cuda_workspace_bytes(B, H, parse_dtype(dtype));
      },
      py::arg("dtype"), py::arg("B"), py::arg("H"));

  m.def(
      "plan",
      [](const std::string& dtype, int64_t B, int64_t H, const std::string& nonlinearity,
         bool backward, int device, const std::string& path) {
        const DType dt = parse_dtype(dtype);
        const Activation a = parse_act(nonlinearity);
        const CudaPath cp = parse_path(path);
        fusedrnn::CudaPlan plan;
        {
          py::gil_scoped_release release;
          plan = fusedrnn::rnn_cuda_plan(B, H, dt, a, backward, device, cp);
        }
        py::dict d;
        d["path"] = plan.path == CudaPath::kPersistent ? "persistent"
                    : plan.path == CudaPath::kCluster  ? "cluster"
                                                       : "stepwise";
        d["grid"] = plan.grid;
        d["threads"] = plan.threads;
        d["units_per_cta"] = plan.units_per_cta;
        d["rows_per_pass"] = plan.rows_per_pass;
        d["smem_bytes"] = plan.smem_bytes;
        d["reason"] = plan.reason;
        d["transient"] = plan.transient;
        return d;
      },
      py::arg("dtype"), py::arg("B"), py::arg("H"), py::arg("nonlinearity"), py::arg("backward"),
      py::arg("device"), py::arg("path") = "auto");

  m.def("built_archs", &built_archs);
  m.def("runtime_version", &fusedrnn::rnn_cuda_runtime_version);
  m.def("driver_version", &fusedrnn::rnn_cuda_driver_version);
}
