"""One persistent-kernel workload for Nsight Compute: where the per-step time goes.

Runs fusedrnn's forward recurrence alone (a precomputed P, as bench_cuda.py's "kernel"
column) on the persistent kernel, a few times to warm up, then the launches ncu profiles.
``scripts/gpu_check.sh`` runs it under ``ncu`` (warp stall reasons and the source-level
sampling of the launch it picks); it also runs on its own and prints the step time.

    ncu --kernel-name regex:rnn_persistent --launch-skip 3 --launch-count 1 \\
        python3 scripts/cuda_profile.py [--batch 1] [--hidden 1024] [--steps 100]
"""

from __future__ import annotations

import argparse
import os

import torch

from fusedrnn import _cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args()
    os.environ["FUSEDRNN_CUDA_PATH"] = "persistent"
    T, B, H = args.steps, args.batch, args.hidden
    torch.manual_seed(0)
    P = torch.randn(T * B, H, device="cuda") * 0.5
    W = torch.randn(H, H, device="cuda") / H**0.5
    h0 = torch.zeros(B, H, device="cuda")
    h = torch.empty_like(P)
    hn = torch.empty_like(h0)
    batch_sizes = torch.empty(0, dtype=torch.int64)  # padded: every step has B rows
    for _ in range(args.launches):
        _cuda.rnn_forward(T, B, H, batch_sizes, False, "tanh", P, W, h0, h, hn)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _cuda.rnn_forward(T, B, H, batch_sizes, False, "tanh", P, W, h0, h, hn)
    end.record()
    end.synchronize()
    print(
        f"cuda_profile: B={B} H={H} T={T} persistent, {1e3 * start.elapsed_time(end) / T:.2f}"
        " us/step (under a profiler this is the profiler's time)"
    )


if __name__ == "__main__":
    main()
