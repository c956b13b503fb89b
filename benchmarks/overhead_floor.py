"""What a single step (T = 1) costs, and what no Python extension can go below.

Issue 4 asks fusedrnn to beat torch.nn.RNN by 2x (inference) and 3x (training) on a
B=1, H=32, T=1 call. At that size the kernels take about 2 us; the rest is per-call
overhead. This script times, on the benchmark's exact training step (forward, then
``(out.sum() + h_n.sum()).backward()``, gradients reset with ``set_to_none``):

- torch.nn.RNN and fusedrnn.RNN;
- a module whose forward is one do-nothing ``torch.autograd.Function`` returning
  ready-made outputs and gradients: the floor for any RNN written as a Python autograd
  Function, whatever its kernels;
- the same step with no RNN at all: the loss, ``backward()`` and the gradient resets;
- a step whose "RNN" is one of torch's own C++ ops per tensor (a ``sum`` of the input and
  of each parameter);
- with ``--cpp``, a module whose forward is one do-nothing C++
  ``torch::autograd::Function`` (built at run time with
  ``torch.utils.cpp_extension.load_inline``, which needs ninja and torch's headers): the
  floor for any RNN whose autograd node is written in C++.

    python benchmarks/overhead_floor.py [--seconds 2] [--cpp]
"""

from __future__ import annotations

import argparse
import time

import torch
from cpu_cases import infer_fn, train_fn
from torch import nn

import fusedrnn

B, H, T = 1, 32, 1


class _Nothing(torch.autograd.Function):
    """Returns (out, h_n) of the right shapes; its backward returns ready zeros."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        return x.new_zeros(T, B, H), x.new_zeros(1, B, H)

    @staticmethod
    def backward(ctx, grad_out, grad_hn):
        return (torch.zeros(T, B, H), torch.zeros(H, H), torch.zeros(H, H), torch.zeros(H),
                torch.zeros(H))  # fmt: skip


class NothingRNN(nn.Module):
    """An "RNN" that computes nothing: one autograd Function per call (``fn``: Python's
    ``_Nothing.apply`` by default, or the C++ one of :func:`_cpp_nothing`)."""

    def __init__(self, ref: nn.RNN, fn=None):
        super().__init__()
        self.w = nn.ParameterList(ref.parameters())
        self.fn = fn or _Nothing.apply

    def forward(self, x):
        return tuple(self.fn(x, *self.w))


# _Nothing in C++: outputs and gradients of the right shapes, nothing computed or saved.
_CPP_NOTHING = r"""
#include <torch/extension.h>
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
struct Nothing : public torch::autograd::Function<Nothing> {
  static variable_list forward(AutogradContext*, at::Tensor x, at::Tensor, at::Tensor,
                               at::Tensor, at::Tensor) {
    return {at::zeros({T, B, H}, x.options()), at::zeros({1, B, H}, x.options())};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    return {at::zeros({T, B, H}), at::zeros({H, H}), at::zeros({H, H}), at::zeros({H}),
            at::zeros({H})};
  }
};
std::vector<at::Tensor> nothing(at::Tensor x, at::Tensor a, at::Tensor b, at::Tensor c,
                                at::Tensor d) {
  return Nothing::apply(x, a, b, c, d);
}
"""


def _cpp_nothing():
    """The do-nothing C++ autograd Function, compiled for this torch (~30 s the first time)."""
    from torch.utils.cpp_extension import load_inline

    ext = load_inline(
        "fusedrnn_overhead_nothing",
        cpp_sources=[f"constexpr int64_t T = {T}, B = {B}, H = {H};\n" + _CPP_NOTHING],
        functions=["nothing"],
        extra_cflags=["-O2"],
    )
    return ext.nothing


def _per_call(fn, seconds: float) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n = 500
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--cpp", action="store_true", help="also a do-nothing C++ autograd Function")
    args = ap.parse_args()
    torch.manual_seed(0)
    ref = nn.RNN(H, H)
    models = {"torch.nn.RNN": ref, "fusedrnn.RNN": fusedrnn.RNN.from_torch(ref),
              "do-nothing autograd.Function": NothingRNN(ref)}  # fmt: skip
    if args.cpp:
        models["do-nothing C++ torch::autograd::Function"] = NothingRNN(ref, _cpp_nothing())
    x = torch.randn(T, B, H, requires_grad=True)

    w = nn.Parameter(torch.zeros(T, B, H))

    def no_rnn():  # the loss and backward alone, on one leaf in place of the outputs
        w.grad = None
        x.grad = None
        (w.sum() + w[0:1].sum()).backward()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={B} H={H} T={T}")
    print("| what | infer us | train us |")
    print("|---|---|---|")
    for name, model in models.items():
        t_inf = _per_call(infer_fn(model, x), args.seconds) * 1e6
        t_train = _per_call(train_fn(model, x), args.seconds) * 1e6
        print(f"| {name} | {t_inf:.1f} | {t_train:.1f} |", flush=True)
    print(f"| no RNN: loss + backward + resets only | - | "
          f"{_per_call(no_rnn, args.seconds) * 1e6:.1f} |")  # fmt: skip
    params = list(ref.parameters())

    def touch_all():  # torch's C++ autograd only: a sum of the input and of each parameter
        ref.zero_grad(set_to_none=True)
        x.grad = None
        loss = x.sum()
        for p in params:
            loss = loss + p.sum()
        loss.backward()

    print(f"| no RNN: one C++ op per input and parameter, + backward + resets | - | "
          f"{_per_call(touch_all, args.seconds) * 1e6:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
