// pybind11 bindings for the CPU kernels: fusedrnn._C.
//
// Thin on purpose: tensors are checked and allocated by python/fusedrnn/ops.py, which
// passes data addresses (0 for an absent optional tensor), sizes and the dtype name.
// The GIL is released for the whole kernel call. The two per-call entry points
// (layer_forward, layer_backward) are plain METH_FASTCALL functions (see FastArgs); the
// rest go through pybind11.
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/gemm_cpu.h"
#include "cpu/layer_cpu.h"
#include "fusedrnn.h"
#include "parse_choice.h"

namespace py = pybind11;

namespace {

using fusedrnn::Activation;
using fusedrnn::RecurrenceShape;

void check_size(const char* name, int64_t v);

RecurrenceShape make_shape(int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
                           bool reverse, const std::string& nonlinearity) {
  check_size("T", T);
  check_size("B", B);
  check_size("H", H);
  RecurrenceShape s;
  s.T = T;
  s.B = B;
  s.H = H;
  s.batch_sizes = reinterpret_cast<const int64_t*>(batch_sizes);
  s.reverse = reverse;
  static constexpr std::pair<const char*, Activation> kActivations[] = {
      {"tanh", Activation::kTanh}, {"relu", Activation::kRelu}};
  s.act = fusedrnn::parse_choice("nonlinearity", nonlinearity, kActivations);
  return s;
}

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

template <typename scalar_t>
void forward_typed(const RecurrenceShape& s, std::uintptr_t P, std::uintptr_t W_hh,
                   std::uintptr_t h0, std::uintptr_t h, std::uintptr_t hn, int num_threads) {
  fusedrnn::rnn_forward_cpu<scalar_t>(s, ptr<const scalar_t>(P), ptr<const scalar_t>(W_hh),
                                      ptr<const scalar_t>(h0), ptr<scalar_t>(h), s.H,
                                      ptr<scalar_t>(hn), num_threads);
}

template <typename scalar_t>
void backward_typed(const RecurrenceShape& s, std::uintptr_t W_hh, std::uintptr_t h,
                    std::uintptr_t G, std::uintptr_t dhn, std::uintptr_t dP, std::uintptr_t dh0,
                    int num_threads) {
  fusedrnn::rnn_backward_cpu<scalar_t>(s, ptr<const scalar_t>(W_hh), ptr<const scalar_t>(h), s.H,
                                       ptr<const scalar_t>(G), s.H, ptr<const scalar_t>(dhn),
                                       ptr<scalar_t>(dP), ptr<scalar_t>(dh0), num_threads);
}

template <typename scalar_t>
void gemm_typed(int64_t M, int64_t N, int64_t K, std::uintptr_t A, int64_t lda, bool a_trans,
                std::uintptr_t B, int64_t ldb, bool b_trans, std::uintptr_t C, int64_t ldc,
                std::uintptr_t bias, bool accumulate, int num_threads) {
  fusedrnn::gemm_cpu<scalar_t>(M, N, K, ptr<const scalar_t>(A), lda, a_trans,
                               ptr<const scalar_t>(B), ldb, b_trans, ptr<scalar_t>(C), ldc,
                               ptr<const scalar_t>(bias), accumulate, num_threads);
}

template <typename T>
void layer_forward_typed(const RecurrenceShape& s, int64_t I, std::uintptr_t x, std::uintptr_t w_ih,
                         std::uintptr_t b_ih, std::uintptr_t b_hh, std::uintptr_t w_hh,
                         std::uintptr_t h0, std::uintptr_t h, int64_t ldh, std::uintptr_t hn,
                         int num_threads) {
  fusedrnn::layer_forward_cpu<T>(s, I, ptr<const T>(x), ptr<const T>(w_ih), ptr<const T>(b_ih),
                                 ptr<const T>(b_hh), ptr<const T>(w_hh), ptr<const T>(h0),
                                 ptr<T>(h), ldh, ptr<T>(hn), num_threads);
}

template <typename T>
void layer_backward_typed(const RecurrenceShape& s, int64_t I, std::uintptr_t x,
                          std::uintptr_t w_ih, std::uintptr_t w_hh, std::uintptr_t h0,
                          std::uintptr_t h, int64_t ldh, std::uintptr_t G, int64_t ldg,
                          std::uintptr_t dhn, std::uintptr_t dP, std::uintptr_t dh0,
                          std::uintptr_t dx, bool dx_accumulate, std::uintptr_t dw_ih,
                          std::uintptr_t dw_hh, std::uintptr_t db, int num_threads) {
  fusedrnn::layer_backward_cpu<T>(
      s, I, ptr<const T>(x), ptr<const T>(w_ih), ptr<const T>(w_hh), ptr<const T>(h0),
      ptr<const T>(h), ldh, ptr<const T>(G), ldg, ptr<const T>(dhn), ptr<T>(dP), ptr<T>(dh0),
      ptr<T>(dx), dx_accumulate, ptr<T>(dw_ih), ptr<T>(dw_hh), ptr<T>(db), num_threads);
}

void check_row_stride(const char* name, int64_t ld, int64_t H, bool zero_ok) {
  if ((zero_ok && ld == 0) || ld >= H) return;
  throw std::invalid_argument(std::string(name) + ": expected " + (zero_ok ? "0 or " : "") +
                              "a row stride of at least H = " + std::to_string(H) + ", got " +
                              std::to_string(ld));
}

// A size (T, B, H, I; M, N, K of gemm) below 0: refused by name, since the kernels take a
// size of 0 for "nothing to compute" and would read a negative one as a count or an offset.
void check_size(const char* name, int64_t v) {
  if (v >= 0) return;
  throw std::invalid_argument(std::string(name) + ": expected a size >= 0, got " +
                              std::to_string(v));
}

// gemm's leading dimension `name` of a row-major operand whose rows hold `width` elements.
void check_lead(const char* name, int64_t ld, int64_t width, const char* width_name) {
  if (ld >= width) return;
  throw std::invalid_argument(std::string(name) + ": expected a row stride of at least " +
                              width_name + " = " + std::to_string(width) + ", got " +
                              std::to_string(ld));
}

// A tensor the kernel must read or write was passed as address 0 (a tensor without memory,
// such as a ZeroTensor): refuse it here instead of dereferencing it. Optional operands
// (h0, G, dhn, dh0, the gradients not asked for) may be 0 and are checked by no one.
void require(std::uintptr_t address, const char* name, bool needed = true) {
  if (address || !needed) return;
  throw std::invalid_argument(std::string(name) +
                              ": expected the address of a tensor's data, got 0 (a tensor "
                              "without memory, such as a ZeroTensor?)");
}

// Every entry point takes float32 and float64, and bfloat16 where the CPU runs its kernels
// (float32 sums inside, one rounding per stored value).
void check_dtype(const std::string& dtype) {
  if (dtype == "bfloat16") {
    if (!fusedrnn::cpu_has_bf16())
      throw std::invalid_argument(
          "dtype: 'bfloat16' needs a CPU with AVX512_BF16 (fusedrnn._C.cpu_has_bf16() is "
          "False here)");
    return;
  }
  if (dtype != "float32" && dtype != "float64")
    throw std::invalid_argument("dtype: expected 'float32', 'float64' or 'bfloat16', got '" +
                                dtype + "'");
}

// fn(T{}) for the scalar type T named by a checked dtype.
template <class Fn>
void by_dtype(const std::string& dtype, Fn&& fn) {
  if (dtype == "float32")
    fn(float{});
  else if (dtype == "float64")
    fn(double{});
  else
    fn(fusedrnn::bfloat16_t{});
}

// layer_forward and layer_backward run once per layer and call: a single step (T = 1) is
// a few microseconds in all, and pybind11's dispatcher took ~0.15 us more than a plain
// METH_FASTCALL function to convert their 18 and 25 arguments. These two are therefore
// written against the CPython API: positional arguments only, the same names, checks and
// exceptions (ValueError for a bad value, TypeError for a bad type).
class FastArgs {
 public:
  FastArgs(const char* fn, PyObject* const* args, Py_ssize_t n, const char* const* names,
           Py_ssize_t expected)
      : fn_(fn), args_(args), names_(names) {
    if (n != expected)
      throw py::type_error(std::string(fn) + "() takes " + std::to_string(expected) +
                           " positional arguments, got " + std::to_string(n));
  }
  int64_t i64(int k) const {
    const long long v = PyLong_AsLongLong(args_[k]);
    if (v == -1 && PyErr_Occurred()) fail(k, "an int");
    return int64_t(v);
  }
  int i32(int k) const {
    const int64_t v = i64(k);
    if (v < INT_MIN || v > INT_MAX) fail(k, "an int of 32 bits");
    return int(v);
  }
  std::uintptr_t addr(int k) const {
    PyObject* o = args_[k];
    unsigned long long v;
    if (PyLong_Check(o)) {
      v = PyLong_AsUnsignedLongLong(o);
    } else {  // an integer-like object (a NumPy integer): through __index__
      PyObject* i = PyNumber_Index(o);
      if (!i) fail(k, "an address (int >= 0)");
      v = PyLong_AsUnsignedLongLong(i);
      Py_DECREF(i);
    }
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred())
      fail(k, "an address (int >= 0)");
    return std::uintptr_t(v);
  }
  // As pybind11 converts a bool argument: True/False, None, or anything with __bool__
  // (an int, a NumPy bool, a one-element tensor).
  bool flag(int k) const {
    PyObject* o = args_[k];
    if (o == Py_True) return true;
    if (o == Py_False || o == Py_None) return false;
    const PyNumberMethods* nb = Py_TYPE(o)->tp_as_number;
    const int r = nb && nb->nb_bool ? nb->nb_bool(o) : -1;
    if (r != 0 && r != 1) fail(k, "a bool");
    return r == 1;
  }
  std::string str(int k) const {
    Py_ssize_t len = 0;
    const char* p = PyUnicode_Check(args_[k]) ? PyUnicode_AsUTF8AndSize(args_[k], &len) : nullptr;
    if (!p) fail(k, "a str");
    return std::string(p, size_t(len));
  }

 private:
  [[noreturn]] void fail(int k, const char* what) const {
    PyErr_Clear();
    throw py::type_error(std::string(fn_) + "(): " + names_[k] + ": expected " + what + ", got " +
                         Py_TYPE(args_[k])->tp_name);
  }
  const char* fn_;
  PyObject* const* args_;
  const char* const* names_;
};

// Runs body(), turning C++ exceptions into Python ones as pybind11 does.
template <class F>
PyObject* fast_call(F&& body) {
  try {
    body();
    Py_RETURN_NONE;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

// The arguments both layer entry points start with: dtype, T, B, H, I, batch_sizes,
// reverse, nonlinearity.
struct LayerHead {
  std::string dtype;
  RecurrenceShape s;
  int64_t I;
  bool work;  // T, B and H all > 0
};

LayerHead layer_head(const FastArgs& a) {
  LayerHead head;
  head.dtype = a.str(0);
  const int64_t T = a.i64(1), B = a.i64(2), H = a.i64(3);
  head.I = a.i64(4);
  check_size("I", head.I);
  const std::uintptr_t batch_sizes = a.addr(5);
  const bool reverse = a.flag(6);
  const std::string nonlinearity = a.str(7);
  check_dtype(head.dtype);
  head.s = make_shape(T, B, H, batch_sizes, reverse, nonlinearity);
  head.work = T > 0 && B > 0 && H > 0;
  return head;
}

// clang-format off
const char* const kLayerForwardArgs[] = {
    "dtype", "T", "B", "H", "I", "batch_sizes", "reverse", "nonlinearity",
    "x", "w_ih", "b_ih", "b_hh", "w_hh", "h0", "h", "ldh", "hn", "num_threads"};
const char* const kLayerBackwardArgs[] = {
    "dtype", "T", "B", "H", "I", "batch_sizes", "reverse", "nonlinearity",
    "x", "w_ih", "w_hh", "h0", "h", "ldh", "G", "ldg", "dhn", "dP", "dh0", "dx",
    "dx_accumulate", "dw_ih", "dw_hh", "db", "num_threads"};
// clang-format on

PyObject* layer_forward(PyObject*, PyObject* const* args, Py_ssize_t n) {
  return fast_call([&] {
    const FastArgs a("layer_forward", args, n, kLayerForwardArgs, 18);
    const LayerHead head = layer_head(a);
    const std::uintptr_t x = a.addr(8), w_ih = a.addr(9), b_ih = a.addr(10), b_hh = a.addr(11),
                         w_hh = a.addr(12), h0 = a.addr(13), h = a.addr(14);
    const int64_t ldh = a.i64(15);
    const std::uintptr_t hn = a.addr(16);
    const int num_threads = a.i32(17);
    const RecurrenceShape& s = head.s;
    const int64_t I = head.I;
    check_row_stride("ldh", ldh, s.H, false);
    require(x, "x", head.work && I > 0);
    require(w_ih, "w_ih", head.work && I > 0);
    require(w_hh, "w_hh", head.work);
    require(h, "h", head.work);
    py::gil_scoped_release release;
    by_dtype(head.dtype, [&](auto tag) {
      using T = decltype(tag);
      layer_forward_typed<T>(s, I, x, w_ih, b_ih, b_hh, w_hh, h0, h, ldh, hn, num_threads);
    });
  });
}

PyObject* layer_backward(PyObject*, PyObject* const* args, Py_ssize_t n) {
  return fast_call([&] {
    const FastArgs a("layer_backward", args, n, kLayerBackwardArgs, 25);
    const LayerHead head = layer_head(a);
    const std::uintptr_t x = a.addr(8), w_ih = a.addr(9), w_hh = a.addr(10), h0 = a.addr(11),
                         h = a.addr(12);
    const int64_t ldh = a.i64(13);
    const std::uintptr_t G = a.addr(14);
    const int64_t ldg = a.i64(15);
    const std::uintptr_t dhn = a.addr(16), dP = a.addr(17), dh0 = a.addr(18), dx = a.addr(19);
    const bool dx_accumulate = a.flag(20);
    const std::uintptr_t dw_ih = a.addr(21), dw_hh = a.addr(22), db = a.addr(23);
    const int num_threads = a.i32(24);
    const RecurrenceShape& s = head.s;
    const int64_t I = head.I;
    check_row_stride("ldh", ldh, s.H, false);
    if (ldg != -1) check_row_stride("ldg", ldg, s.H, true);
    require(w_hh, "w_hh", head.work);
    require(h, "h", head.work);
    require(x, "x", head.work && I > 0 && dw_ih);
    require(w_ih, "w_ih", head.work && I > 0 && dx);
    py::gil_scoped_release release;
    by_dtype(head.dtype, [&](auto tag) {
      using T = decltype(tag);
      layer_backward_typed<T>(s, I, x, w_ih, w_hh, h0, h, ldh, G, ldg, dhn, dP, dh0, dx,
                              dx_accumulate, dw_ih, dw_hh, db, num_threads);
    });
  });
}

PyMethodDef kFastMethods[] = {
    {"layer_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&layer_forward)),
     METH_FASTCALL,
     "layer_forward(dtype, T, B, H, I, batch_sizes, reverse, nonlinearity, x, w_ih, b_ih, b_hh, "
     "w_hh, h0, h, ldh, hn, num_threads): one layer-direction forward: h = recurrence(x W_ih^T "
     "+ b_ih + b_hh). x [N,I], w_ih [H,I], b_ih/b_hh [H] or 0, w_hh [H,H], h0 [B,H] or 0, h "
     "[N,H] out with row stride ldh >= H, hn [B,H] out. Positional arguments only."},
    {"layer_backward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&layer_backward)),
     METH_FASTCALL,
     "layer_backward(dtype, T, B, H, I, batch_sizes, reverse, nonlinearity, x, w_ih, w_hh, h0, "
     "h, ldh, G, ldg, dhn, dP, dh0, dx, dx_accumulate, dw_ih, dw_hh, db, num_threads): one "
     "layer-direction backward: BPTT into dP [N,H] (may be G when ldg = H; 0: an internal "
     "workspace; G's rows are ldg apart, 0 = one row for all, -1 = the value at G for every "
     "element; h's rows ldh apart), then dh0 [B,H], dx [N,I] (added to dx when "
     "dx_accumulate), dW_ih [H,I], dW_hh [H,H], db [H]; every output may be 0 (not "
     "computed). Positional arguments only."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedrnn CPU kernels (raw-pointer interface; use fusedrnn.ops, which checks inputs)";

  m.def(
      "rnn_forward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
         bool reverse, const std::string& nonlinearity, std::uintptr_t P, std::uintptr_t W_hh,
         std::uintptr_t h0, std::uintptr_t h, std::uintptr_t hn, int num_threads) {
        check_dtype(dtype);
        const RecurrenceShape s = make_shape(T, B, H, batch_sizes, reverse, nonlinearity);
        const bool work = T > 0 && B > 0 && H > 0;
        require(P, "P", work);
        require(W_hh, "W_hh", work);
        require(h, "h", work);
        py::gil_scoped_release release;
        by_dtype(dtype, [&](auto tag) {
          forward_typed<decltype(tag)>(s, P, W_hh, h0, h, hn, num_threads);
        });
      },
      py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("batch_sizes"),
      py::arg("reverse"), py::arg("nonlinearity"), py::arg("P"), py::arg("W_hh"), py::arg("h0"),
      py::arg("h"), py::arg("hn"), py::arg("num_threads"),
      "Forward recurrence over T steps. P [N,H], W_hh [H,H], h0 [B,H] or 0, h [N,H] (may be P), "
      "hn [B,H]; batch_sizes: address of [T] int64 or 0 for padded input. dtype 'float32', "
      "'float64' or, where cpu_has_bf16(), 'bfloat16' (float32 arithmetic inside).");

  m.def(
      "rnn_backward",
      [](const std::string& dtype, int64_t T, int64_t B, int64_t H, std::uintptr_t batch_sizes,
         bool reverse, const std::string& nonlinearity, std::uintptr_t W_hh, std::uintptr_t h,
         std::uintptr_t G, std::uintptr_t dhn, std::uintptr_t dP, std::uintptr_t dh0,
         int num_threads) {
        check_dtype(dtype);
        const RecurrenceShape s = make_shape(T, B, H, batch_sizes, reverse, nonlinearity);
        const bool work = T > 0 && B > 0 && H > 0;
        require(W_hh, "W_hh", work);
        require(h, "h", work);
        require(dP, "dP", work);
        py::gil_scoped_release release;
        by_dtype(dtype, [&](auto tag) {
          backward_typed<decltype(tag)>(s, W_hh, h, G, dhn, dP, dh0, num_threads);
        });
      },
      py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("H"), py::arg("batch_sizes"),
      py::arg("reverse"), py::arg("nonlinearity"), py::arg("W_hh"), py::arg("h"), py::arg("G"),
      py::arg("dhn"), py::arg("dP"), py::arg("dh0"), py::arg("num_threads"),
      "BPTT recurrence. W_hh [H,H], h [N,H], G [N,H] or 0, dhn [B,H] or 0, dP [N,H] (may be G), "
      "dh0 [B,H] or 0.");

  for (PyMethodDef* d = kFastMethods; d->ml_name; ++d) {
    PyObject* f = PyCFunction_NewEx(d, nullptr, m.attr("__name__").ptr());
    if (!f) throw py::error_already_set();
    m.add_object(d->ml_name, py::reinterpret_steal<py::object>(f));
  }

  m.def(
      "gemm",
      [](const std::string& dtype, int64_t M, int64_t N, int64_t K, std::uintptr_t A, int64_t lda,
         bool a_trans, std::uintptr_t B, int64_t ldb, bool b_trans, std::uintptr_t C, int64_t ldc,
         std::uintptr_t bias, bool accumulate, int num_threads) {
        check_dtype(dtype);
        check_size("M", M);
        check_size("N", N);
        check_size("K", K);
        const bool work = M > 0 && N > 0;
        if (work && K > 0) {  // row-major operands: a row holds at least its row's elements
          check_lead("lda", lda, a_trans ? M : K, a_trans ? "M" : "K");
          check_lead("ldb", ldb, b_trans ? K : N, b_trans ? "K" : "N");
        }
        if (work) check_lead("ldc", ldc, N, "N");
        require(A, "A", work && K > 0);
        require(B, "B", work && K > 0);
        require(C, "C", work);
        py::gil_scoped_release release;
        by_dtype(dtype, [&](auto tag) {
          using T = decltype(tag);
          gemm_typed<T>(M, N, K, A, lda, a_trans, B, ldb, b_trans, C, ldc, bias, accumulate,
                        num_threads);
        });
      },
      py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("A"), py::arg("lda"),
      py::arg("a_trans"), py::arg("B"), py::arg("ldb"), py::arg("b_trans"), py::arg("C"),
      py::arg("ldc"), py::arg("bias"), py::arg("accumulate"), py::arg("num_threads"),
      "C[M,N] = (accumulate ? C : 0) + op(A) op(B) (+ bias [N] or 0), row-major; "
      "op(A)[i,k] = A[k*lda+i] if a_trans else A[i*lda+k], op(B) likewise. Bitwise identical "
      "for any num_threads. bfloat16 (where cpu_has_bf16()): float32 sums, each element rounded "
      "once (bias and accumulate not both).");

  m.def("cpu_isa", &fusedrnn::cpu_isa, "SIMD instruction set the CPU kernels selected");
  m.def("cpu_has_bf16", &fusedrnn::cpu_has_bf16,
        "whether rnn_forward and rnn_backward take 'bfloat16' here (AVX512_BF16, not capped by "
        "FUSEDRNN_CPU_ISA)");
}
