"""One time step per call (decoding, RNNCell loops): fusedrnn vs torch.nn, same process.

Inference of ``RNN`` with T = 1 and of ``RNNCell``, one ``RNN`` training step with
T = 1 (forward, ``(out.sum() + h_n.sum()).backward()``, gradients reset with
``set_to_none``), and an ``RNNCell`` training loop over 50 steps (one backward at the end,
reported per step), for a few batch and hidden sizes; per-call minimum over rounds.
``--dtype bfloat16``: both modules converted to bfloat16 (the loss is summed in float32).

    python benchmarks/single_step.py [--seconds 1] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

import fusedrnn

SIZES = [(1, 256), (1, 1024), (8, 1024), (64, 1024)]
LOOP_STEPS = 50


def _per_call(fn, seconds: float) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(0.05 / max(time.perf_counter() - t0, 1e-7)))  # ~50 ms per round
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _rows(B: int, H: int, seconds: float, dtype: torch.dtype):
    torch.manual_seed(0)
    ref = torch.nn.RNN(H, H).to(dtype)
    ours = fusedrnn.RNN.from_torch(ref)
    cell_ref = torch.nn.RNNCell(H, H).to(dtype)
    cell = fusedrnn.RNNCell.from_torch(cell_ref)
    x = torch.randn(1, B, H, dtype=dtype)
    h = torch.randn(1, B, H, dtype=dtype)
    xt = x.clone().requires_grad_(True)

    def infer(m):
        def call():
            with torch.no_grad():
                m(x, h)

        return call

    def cell_infer(m):
        def call():
            with torch.no_grad():
                m(x[0], h[0])

        return call

    def train(m):
        def step():
            m.zero_grad(set_to_none=True)
            xt.grad = None
            out, hn = m(xt, h)
            (out.float().sum() + hn.float().sum()).backward()

        return step

    xs = torch.randn(LOOP_STEPS, B, H, dtype=dtype)

    def cell_loop(m):  # a step-by-step training loop (teacher forcing), per step
        def run():
            m.zero_grad(set_to_none=True)
            state, loss = h[0], 0
            for t in range(LOOP_STEPS):
                state = m(xs[t], state)
                loss = loss + state.float().sum()
            loss.backward()

        return run

    for what, make, a, b, per in (
        ("RNN T=1 inference", infer, ref, ours, 1),
        ("RNNCell inference", cell_infer, cell_ref, cell, 1),
        ("RNN T=1 training step", train, ref, ours, 1),
        (f"RNNCell training loop, per step (T={LOOP_STEPS})", cell_loop, cell_ref, cell,
         LOOP_STEPS),
    ):  # fmt: skip
        t_ref = _per_call(make(a), seconds) * 1e6 / per
        t_ours = _per_call(make(b), seconds) * 1e6 / per
        yield f"| {B} | {H} | {what} | {t_ref:.1f} | {t_ours:.1f} | {t_ref / t_ours:.2f}x |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    print("| B | H | what | torch.nn us | fusedrnn us | speed-up |")
    print("|---|---|---|---|---|---|")
    for B, H in SIZES:
        for row in _rows(B, H, args.seconds, dtype):
            print(row, flush=True)


if __name__ == "__main__":
    main()
