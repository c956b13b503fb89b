"""bfloat16 on the CPU: models converted to bfloat16, and float32 models under autocast.

For each size, in one process and interleaved round by round (minimum over rounds):

- a model converted to bfloat16 (``model.to(torch.bfloat16)``): torch.nn.RNN, fusedrnn.RNN
  (its bfloat16 kernels where the CPU has AVX512_BF16), and fusedrnn.RNN computing in float32
  as it did before those kernels (bfloat16 out of ``ops.KERNEL_DTYPES`` for the call);
- a float32 model under ``torch.autocast("cpu", dtype=torch.bfloat16)``: torch.nn.RNN and
  fusedrnn.RNN, and again fusedrnn with the float32 rule.

Inference and the training step of the other benchmarks (forward, then
``(out.sum() + h_n.sum()).backward()``; under autocast the loss is taken in float32).

    python benchmarks/bfloat16.py [--rounds 6] [--cases B64-H256-T100,B64-H1024-T100]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from cpu_cases import min_time

import fusedrnn
from fusedrnn import _C, ops

SIZES = {
    f"B{B}-H{H}-T{T}": (B, H, T)
    for B, H, T in [(8, 256, 100), (64, 256, 100), (64, 1024, 100), (256, 1024, 100)]
}


@contextlib.contextmanager
def _float32_path(on: bool):
    """fusedrnn's bfloat16 layers as before the bfloat16 kernels: computed in float32."""
    saved = ops.KERNEL_DTYPES.pop(torch.bfloat16, None) if on else None
    try:
        yield
    finally:
        if saved is not None:
            ops.KERNEL_DTYPES[torch.bfloat16] = saved


def _step(module, x, train: bool, autocast: bool, f32_path: bool = False):
    xg = x.detach().clone().requires_grad_(True)

    def run():
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with _float32_path(f32_path):
            if not train:
                with torch.no_grad(), amp:
                    module(x)
                return
            module.zero_grad(set_to_none=True)
            xg.grad = None
            with amp:
                out, hn = module(xg)
            (out.float().sum() + hn.float().sum()).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--cases", default=",".join(SIZES))
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fusedrnn ISA "
        f"{_C.cpu_isa()}, bfloat16 kernels: {'yes' if _C.cpu_has_bf16() else 'no'}"
    )
    print(
        "| case | mode | bf16 model: nn.RNN ms | fusedrnn ms | fusedrnn in float32 ms | "
        "autocast: nn.RNN ms | fusedrnn ms | fusedrnn float32 rule ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        B, H, T = SIZES[name]
        torch.manual_seed(0)
        ref32 = torch.nn.RNN(H, H)
        fused32 = fusedrnn.RNN.from_torch(ref32)
        ref16 = torch.nn.RNN(H, H).to(torch.bfloat16)
        ref16.load_state_dict(ref32.state_dict())
        fused16 = fusedrnn.RNN.from_torch(ref16)
        x32 = torch.randn(T, B, H)
        x16 = x32.to(torch.bfloat16)
        rounds = max(2, args.rounds // 3) if B * H >= 256 * 1024 else args.rounds
        for train in (False, True):
            fns = [
                _step(ref16, x16, train, False),
                _step(fused16, x16, train, False),
                _step(fused16, x16, train, False, f32_path=True),
                _step(ref32, x32, train, True),
                _step(fused32, x32, train, True),
                _step(fused32, x32, train, True, f32_path=True),
            ]
            best = [float("inf")] * len(fns)
            for _ in range(rounds):  # interleaved: a slow moment of the host hits all
                for i, fn in enumerate(fns):
                    best[i] = min(best[i], min_time(fn, 1))
            ms = " | ".join(f"{1e3 * t:.2f}" for t in best)
            print(f"| {name} | {'train' if train else 'infer'} | {ms} |", flush=True)


if __name__ == "__main__":
    main()
