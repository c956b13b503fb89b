"""Tensors of more than 2^31 elements: forward and backward of fusedrnn.RNN against nn.RNN.

Every index in the kernels is meant to be 64-bit; these tests check it where it matters, on
an output and the backward's state gradients of more than 2^31 elements (8 GiB each in
float32), so an offset computed in 32 bits anywhere (the forward, the BPTT, the GEMMs
around them, the module's handling) would land elsewhere: wrong values, a crash, or writes
over the start of a buffer. (A signed 32-bit offset in the CPU forward's output row was
seen to crash the float32 case.)

Opt in: ``FUSEDRNN_LARGE_TESTS=1 pytest -m large`` (tests/conftest.py skips them
otherwise). Each case skips itself when the device has too little free memory for it: the
CPU cases need about 21 GiB (float32) and 13 GiB (bfloat16) of RAM and take 60-90 s each
on two cores; the CUDA cases need 56 GiB (``tall``, an H100 or H200) and 100 GiB (``wide``,
an H200) of GPU memory, under ``auto`` and with each kernel forced in turn
(``FUSEDRNN_CUDA_PATH``).

How the results are checked without a reference run of that size: the inputs are zero
except in a few windows, there is no bias and no ``hx``, and ``W_hh`` is contractive
(spectral norm 0.5). Away from the windows the states are then exactly zero, so each
window is an independent small problem that ``nn.RNN`` (float64) solves alone, and the
weight gradients are the sums of the windows' ones. The output gradient is one row of
random values for every step and sequence (an expanded tensor, which the CPU backward reads
in place; the CUDA one makes it dense), so the gradient reaching every input is nonzero,
also between the windows.

- ``long`` (CPU, float32 and bfloat16): one sequence of 2^27 + 768 steps, H = 16. Two
  windows of W random steps in time, the first and the last. The K zero steps after the
  first let its states decay to exactly zero (0.5^256 is below the smallest float32 and
  bfloat16 number), and the reference of the last window starts K zero steps earlier, from
  zero, so that the gradient at its first steps is the stationary one of the steps between.
- ``wide`` (CUDA): T = 2 steps of 2^27 + 16 sequences (every step over 2^31 elements).
- ``tall`` (CUDA, bidirectional): T = 64 steps of 2^21 + 16 sequences (a step under 2^31,
  the output over it; the reverse direction walks it from its end).
  For both, the windows are sequences: the first R and the last R, and one sequence in
  the middle, compared with a zero sequence of the reference, checks the rows between.
"""

from __future__ import annotations

import gc

import pytest
import torch

import fusedrnn

pytestmark = pytest.mark.large

H = 16
W = 256  # the long case's windows of random input
K = 256  # and its zero steps between a window and the middle
R = 8  # the wide and tall cases' random sequences at each end
GiB = 2**30


def _free_bytes(device: str) -> int:
    if device == "cuda":
        gc.collect()  # the previous case's tensors, then what torch's allocator kept of them
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def _need_memory(device: str, nbytes: int) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    free = _free_bytes(device)
    if free < nbytes:
        pytest.skip(f"needs {nbytes / GiB:.1f} GiB free on {device}, has {free / GiB:.1f}")


def _model(bidirectional: bool, device: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    m = fusedrnn.RNN(1, H, bias=False, bidirectional=bidirectional)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("weight_hh"):
                p.mul_(0.5 / torch.linalg.matrix_norm(p, 2))
    m.to(device, dtype)
    ref = torch.nn.RNN(1, H, bias=False, bidirectional=bidirectional, dtype=torch.float64)
    ref.load_state_dict({k: v.double().cpu() for k, v in m.state_dict().items()})
    return m, ref


def _close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    got = got.detach().double().cpu()
    scale = want.abs().max().item()
    assert scale > 0, f"{what}: the reference is all zeros, the check would be empty"
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g}, scale {scale:.3g}"


def _all_zero(t: torch.Tensor) -> bool:
    lo, hi = t.aminmax()  # no temporary the size of t
    return lo.item() == 0.0 and hi.item() == 0.0


def _ref_run(ref, x: torch.Tensor, g: torch.Tensor):
    """nn.RNN in float64 on a small window x [T, b, 1]: output, h_n, dx, weight grads."""
    x = x.detach().double().cpu().requires_grad_()
    ref.zero_grad()
    out, hn = ref(x)
    out.backward(g.double().cpu().expand_as(out))
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    return out.detach(), hn.detach(), x.grad, grads


# bfloat16 where the CPU has its kernels (AVX512_BF16); elsewhere a bfloat16 model runs on
# the float32 kernels, which the float32 case covers.
CPU_DTYPES = [
    pytest.param(torch.float32, 1e-5, 21.5, id="float32"),
    pytest.param(
        torch.bfloat16,
        3e-2,
        13.5,
        id="bfloat16",
        marks=pytest.mark.skipif(
            not fusedrnn.info()["cpu_bf16_kernels"], reason="no bfloat16 kernels on this CPU"
        ),
    ),
]


@pytest.mark.parametrize(("dtype", "rtol", "need"), CPU_DTYPES)
def test_long_sequence_past_2_31_elements_cpu(dtype, rtol, need):
    T = 2**31 // H + 3 * W
    # x and its gradient (0.5 GiB each in float32), the output and the backward's state
    # gradients (8 GiB each), and the kernels' per-step tables of batch sizes and row
    # offsets (16 bytes a step: 2 GiB): ~20.8 GiB measured at the peak in float32, ~12.6 in
    # bfloat16.
    _need_memory("cpu", int(need * GiB))
    m, ref = _model(False, "cpu", dtype)
    x = torch.zeros(T, 1, 1, dtype=dtype)
    x[:W] = torch.randn(W, 1, 1)
    x[T - W :] = torch.randn(W, 1, 1)
    x.requires_grad_()
    g = torch.randn(1, 1, H, dtype=dtype)
    out, hn = m(x)
    assert out.numel() > 2**31
    out.backward(g.expand(T, 1, H))
    assert _all_zero(out[W + K : T - W - K])  # the windows are independent

    head = _ref_run(ref, x[: W + K], g)
    tail = _ref_run(ref, x[T - W - K :], g)
    _close(out[: W + K], head[0], "output, first window", rtol)
    _close(out[T - W - K :], tail[0], "output, last window", rtol)
    _close(hn, tail[1], "h_n", rtol)
    # dx of the first window (its last K steps miss the gradient from beyond: not compared)
    _close(x.grad[:W], head[2][:W], "dx, first window", rtol)
    _close(x.grad[T - W - K :], tail[2], "dx, last window", rtol)
    # between the windows: the stationary state gradient, as at the last window's first step
    _close(x.grad[T // 2], tail[2][0], "dx, middle step", rtol)
    # The weight gradients sum the windows' terms (the zero steps add exact zeros): the same
    # model on the two windows alone, joined by 2K zero steps, sums the same terms. Against
    # it, float32 rounding in every dtype (bfloat16's products are float32 sums too, rounded
    # once); against nn.RNN, the dtype's rounding of each term (bfloat16 stores the state
    # gradients: ~0.4% each, and dW_ih here is a sum of 512 with much cancellation).
    small_x = torch.cat([x[: W + K], x[T - W - K :]]).detach().requires_grad_()
    small = _model(False, "cpu", dtype)[0]
    small_out, _ = small(small_x)
    small_out.backward(g.expand_as(small_out))
    for (name, p), q in zip(m.named_parameters(), small.parameters(), strict=True):
        _close(p.grad, q.grad.double(), f"{name}.grad against the windows alone", 1e-5)
        if dtype == torch.float32:
            _close(p.grad, head[3][name] + tail[3][name], f"{name}.grad", rtol)


CUDA_CASES = {
    # name: (T, B, bidirectional, GiB needed)
    # wide: x 1 GiB, output 16, h_n 8, the module's zero hx 8, the kernels' state workspace
    # 16 (2 B H floats), and in the backward the output gradient made dense 16, the zero
    # gradient of h_n 8, dh0 8 and the state gradients 16: ~97 GiB (an H200; it skips on an
    # H100). tall: ~50 GiB.
    "wide": (2, 2**27 + 2 * R, False, 100),
    "tall": (64, 2**21 + 2 * R, True, 56),
}
# Not the cluster kernel: it holds every row of a step in shared memory (~1,600 rows at
# H = 16) and refuses these batches by name (tests/test_cuda.py checks the refusal).
PATHS = ["auto", "persistent", "stepwise"]


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_many_sequences_past_2_31_elements_cuda(case, path, monkeypatch):
    T, B, bidirectional, need = CUDA_CASES[case]
    _need_memory("cuda", need * GiB)
    monkeypatch.setenv("FUSEDRNN_CUDA_PATH", path)
    m, ref = _model(bidirectional, "cuda")
    D = 2 if bidirectional else 1
    x = torch.zeros(T, B, 1, device="cuda")
    x[:, :R] = torch.randn(T, R, 1, device="cuda")
    x[:, B - R :] = torch.randn(T, R, 1, device="cuda")
    x.requires_grad_()
    g = torch.randn(1, 1, D * H, device="cuda")
    out, hn = m(x)
    assert out.numel() > 2**31
    out.backward(g.expand(T, B, D * H))
    torch.cuda.synchronize()
    mid = B // 2
    assert _all_zero(out[:, R : B - R])  # the windows are independent

    # the first R sequences and one zero sequence; the last R sequences
    head_x = torch.cat([x[:, :R], torch.zeros(T, 1, 1, device="cuda")], dim=1)
    head = _ref_run(ref, head_x, g)
    tail = _ref_run(ref, x[:, B - R :], g)
    _close(out[:, :R], head[0][:, :R], "output, first sequences")
    _close(out[:, B - R :], tail[0], "output, last sequences")
    _close(hn[:, :R], head[1][:, :R], "h_n, first sequences")
    _close(hn[:, B - R :], tail[1], "h_n, last sequences")
    _close(x.grad[:, :R], head[2][:, :R], "dx, first sequences")
    _close(x.grad[:, B - R :], tail[2], "dx, last sequences")
    _close(x.grad[:, mid], head[2][:, R], "dx, a zero sequence in the middle")
    for name, p in m.named_parameters():
        _close(p.grad, head[3][name] + tail[3][name], f"{name}.grad")
