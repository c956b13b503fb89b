"""Stress the CUDA kernels that run a whole sequence in one launch (the persistent kernel's
grid barrier; on Hopper also the cluster kernel's cluster barrier and shared-memory exchange)
on long sequences: one short script to run first on a lent GPU, under ``timeout``
(``scripts/gpu_check.sh`` does), so that a barrier that never completes costs seconds, not
the device window.

For each case the same model and input run forward and backward once on the per-step kernel
and twice on each one-launch kernel (``FUSEDRNN_CUDA_PATH``, read at every call). The two
runs must agree bitwise (the kernels are deterministic; a state read stale across a barrier
would show up here first), and each must agree with the per-step kernel to float32
rounding. A case a kernel cannot take (too large for the chip or the cluster) is reported
and skipped.

    python scripts/cuda_stress.py [persistent] [cluster]   # exit status 1 on any mismatch

The kernels to stress are named on the command line (default: persistent); `cluster` (the
Hopper kernel) is best run in a process of its own, as `scripts/gpu_check.sh` does, so
that a fault of it cannot break the CUDA context the other kernel's cases run in.
"""

from __future__ import annotations

import os
import sys

import torch

import fusedrnn

CASES = [  # (B, H, T): long sequences, a multi-pass step (B above one pass), a single row
    (64, 1024, 2000),
    (256, 2048, 100),
    (1, 64, 1024),
    (16, 512, 1024),
    (64, 256, 2000),
]
TOL = 1e-3  # one-launch vs per-step: float32, differently ordered sums over up to 2048 terms


def _run(path: str, model, x):
    os.environ["FUSEDRNN_CUDA_PATH"] = path
    model.zero_grad(set_to_none=True)
    out, hn = model(x)
    (out.float().square().mean() + hn.float().sum()).backward()
    torch.cuda.synchronize()
    return [out.detach(), hn.detach(), *(p.grad for p in model.parameters())]


def main() -> int:
    if not torch.cuda.is_available() or not fusedrnn.info().get("cuda_kernels_built"):
        print("cuda_stress: needs a CUDA GPU and fusedrnn built with its CUDA kernels")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    kernels = sys.argv[1:] or ["persistent"]
    failed = False
    for B, H, T in CASES:
        torch.manual_seed(0)
        model = fusedrnn.RNN(H, H, device="cuda")
        x = torch.randn(T, B, H, device="cuda") * 0.5
        stepwise = _run("stepwise", model, x)
        for kernel in kernels:
            label = f"B={B} H={H} T={T} {kernel}"
            try:
                first = _run(kernel, model, x)
            except RuntimeError as e:
                if "kernel was requested but cannot run" in str(e):
                    print(f"{label}: kernel not taken ({e}); skipped")
                    continue
                # Anything else (a refused launch, a fault at the synchronize) is a failure,
                # and may have broken the CUDA context for every later case: stop here.
                print(f"{label}: FAILED: {type(e).__name__}: {e}", flush=True)
                return 1
            second = _run(kernel, model, x)
            same = all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
            err = max((a - b).abs().max().item() for a, b in zip(first, stepwise, strict=True))
            finite = all(torch.isfinite(a).all().item() for a in first)
            ok = same and finite and err <= TOL
            failed |= not ok
            print(
                f"{label}: twice bitwise {'equal' if same else 'DIFFERENT'}, "
                f"max |{kernel} - per-step| {err:.2e} (<= {TOL:g}), "
                f"{'finite' if finite else 'NON-FINITE'}: {'ok' if ok else 'FAILED'}",
                flush=True,
            )
    os.environ.pop("FUSEDRNN_CUDA_PATH", None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
