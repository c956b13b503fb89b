"""Where the host time of a small CUDA training step goes, by Python function and by call.

``scripts/cuda_breakdown.py`` shows that at small sizes a training step of fusedrnn.RNN on
CUDA is bound by the host (session 29, H200: 1518 us of host time per step at B = 1, H = 256
against 488 us of GPU work) and which torch operators run; this script looks inside the
Python: the step (forward, then ``(out.sum() + h_n.sum()).backward()``, as in
``scripts/bench_cuda.py``) under ``cProfile`` (functions by own time, and by cumulative
time), and the host time of single calls on the way, each timed alone (median of many, no
synchronize inside the timed region, the GPU drained between calls):

- the whole step, its forward and its backward;
- on CUDA: ``fusedrnn._cuda.rnn_forward`` and ``rnn_backward`` on prepared operands (the
  Python launcher with the C++ launch), the binding ``_C_cuda.rnn_forward`` alone, and the
  pieces of ``_launch_context`` (``torch.cuda.current_stream``, the workspace's
  ``torch.empty``, ``_C_cuda.workspace_bytes``, ``_C_cuda.plan``), and for comparison an
  ``aten::mm`` of the same size and an empty ``torch.autograd.Function``.

    python3 scripts/cuda_host_profile.py [--device cuda] [--case 1x256x100] [--steps 300]

``--device cpu`` runs what applies on the CPU (the step and cProfile), to try the script.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import torch

import fusedrnn
from fusedrnn import _cuda


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_us(fn, device: torch.device, repeats: int) -> float:
    """Median microseconds for ``fn()`` to return, the device drained before each call."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        times.append(1e6 * (time.perf_counter() - t0))
    _sync(device)
    return statistics.median(times)


class _Nothing(torch.autograd.Function):
    """An autograd.Function that does nothing: the floor of one custom layer's overhead."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--case", default="1x256x100", help="BxHxT")
    parser.add_argument("--steps", type=int, default=300, help="steps under cProfile")
    parser.add_argument("--repeats", type=int, default=200, help="calls per timed median")
    parser.add_argument("--top", type=int, default=30, help="functions listed per ordering")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_host_profile: no CUDA device (use --device cpu to try it)")
    try:
        B, H, T = (int(v) for v in args.case.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--case: expected BxHxT such as 1x256x100, got {args.case!r}") from None
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = fusedrnn.RNN(H, H).to(device)
    x = torch.randn(T, B, H, device=device, requires_grad=True)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"fusedrnn {fusedrnn.__version__}, torch {torch.__version__}, device {device}{gpu}; "
          f"B={B} H={H} T={T}, float32; host microseconds, median of {args.repeats}")  # fmt: skip

    def forward():
        return model(x)

    def step():
        out, hn = model(x)
        (out.sum() + hn.sum()).backward()

    rows = [("training step", host_us(step, device, args.repeats))]
    rows.append(("forward (grad enabled)", host_us(forward, device, args.repeats)))
    with torch.no_grad():
        rows.append(("forward (no_grad)", host_us(forward, device, args.repeats)))

    def backward_only():
        out, hn = model(x)
        loss = out.sum() + hn.sum()
        _sync(device)
        t0 = time.perf_counter()
        loss.backward()
        return 1e6 * (time.perf_counter() - t0)

    for _ in range(3):
        backward_only()
    rows.append(("backward", statistics.median(backward_only() for _ in range(args.repeats))))
    y = torch.randn(T * B, H, device=device)
    w = torch.randn(H, H, device=device)
    xs = torch.randn(4, device=device, requires_grad=True)
    timed = [
        ("aten::mm [T*B, H] x [H, H]", lambda: torch.mm(y, w)),
        ("empty autograd.Function, fwd + bwd", lambda: _Nothing.apply(xs).sum().backward()),
    ]

    if device.type == "cuda":
        P = torch.randn(T * B, H, device=device)
        w_hh = model.weight_hh_l0.detach()
        h0 = torch.zeros(B, H, device=device)
        hn = torch.empty(B, H, device=device)
        bs = torch.empty(0, dtype=torch.int64)
        G = torch.randn(T * B, H, device=device)
        dP = torch.empty_like(P)
        dh0 = torch.empty_like(h0)
        h = P.clone()
        name = _cuda.KERNEL_DTYPES[torch.float32]
        index = device.index if device.index is not None else torch.cuda.current_device()
        ws_bytes = _cuda._C_cuda.workspace_bytes(name, B, H)
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream
        path = _cuda.kernel_path()
        plan = _cuda._C_cuda.plan(name, B, H, "tanh", False, index, path)
        print(f"kernel: {plan['path']}")

        def fwd_launcher():
            _cuda.rnn_forward(T, B, H, bs, False, "tanh", P, w_hh, h0, h, hn)

        def bwd_launcher():
            _cuda.rnn_backward(T, B, H, bs, False, "tanh", w_hh, h, G, None, dP, dh0)

        def fwd_binding():
            _cuda._C_cuda.rnn_forward(
                name, T, B, H, 0, 0, False, "tanh", P.data_ptr(), w_hh.data_ptr(),
                h0.data_ptr(), h.data_ptr(), hn.data_ptr(), ws.data_ptr(), ws.numel(), index,
                stream, path,
            )  # fmt: skip

        timed += [
            ("_cuda.rnn_forward (launcher + launch)", fwd_launcher),
            ("_cuda.rnn_backward (launcher + launch)", bwd_launcher),
            ("_C_cuda.rnn_forward (binding + launch)", fwd_binding),
            ("torch.cuda.current_stream(device)", lambda: torch.cuda.current_stream(device)),
            ("torch.empty(workspace)",
             lambda: torch.empty(ws_bytes, dtype=torch.uint8, device=device)),
            ("_C_cuda.workspace_bytes", lambda: _cuda._C_cuda.workspace_bytes(name, B, H)),
            ("_C_cuda.plan",
             lambda: _cuda._C_cuda.plan(name, B, H, "tanh", False, index, path)),
            ("_cuda.check_driver", _cuda.check_driver),
        ]  # fmt: skip

    rows += [(label, host_us(fn, device, args.repeats)) for label, fn in timed]
    width = max(len(r[0]) for r in rows)
    for label, us in rows:
        print(f"  {label:<{width}}  {us:9.1f}")

    _sync(device)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    _sync(device)
    prof.disable()
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(args.top)
        print(f"\ncProfile of {args.steps} training steps, by {order}:")
        print(buf.getvalue().split("\n", 4)[-1].rstrip())


if __name__ == "__main__":
    main()
