"""torch.func with fusedrnn and torch.nn.RNN: per-sample gradients, and torch.func.grad.

1. Per-sample gradients, ``vmap(grad(loss))`` over a batch of sequences. torch.nn.RNN cannot
   be vmapped (no batching rule for its op), so its per-sample gradients take one ``grad``
   per sample; fusedrnn's ops have vmap rules that run the samples as one batch.
2. A training step's gradients as ``torch.func.grad(loss)(params)`` (functional training)
   against ``loss.backward()``, for both modules.

Times: minimum of ``--repeats`` calls, after one warm-up.

    python benchmarks/torch_func.py [--samples 64] [--seq 50] [--input 16] [--hidden 64]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from cpu_cases import min_time
from torch.func import functional_call, grad, vmap

import fusedrnn


def _best(fn, repeats: int) -> float:
    """Milliseconds of the fastest of ``repeats`` calls, after a warm-up call."""
    return min_time(fn, repeats) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq", type=int, default=50)
    ap.add_argument("--input", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    # torch.func's first use scripts torch's own decompositions (a torch deprecation).
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    torch.manual_seed(0)
    ref = torch.nn.RNN(args.input, args.hidden)
    ours = fusedrnn.RNN.from_torch(ref)
    params = {name: p.detach() for name, p in ours.named_parameters()}
    xs = torch.randn(args.samples, args.seq, 1, args.input)  # unbatched [T, 1, I] samples

    def loss(p, x, module=ours):
        return functional_call(module, p, (x,))[0].square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))
    one = grad(loss)
    rows = [
        ("fusedrnn vmap(grad)", _best(lambda: per_sample(params, xs), args.repeats)),
        ("fusedrnn loop of grad", _best(lambda: [one(params, x) for x in xs], args.repeats)),
        (
            "torch.nn.RNN loop of grad",
            _best(lambda: [one(params, x, ref) for x in xs], args.repeats),
        ),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples"
          f" of T={args.seq}, I={args.input}, H={args.hidden}, float32")  # fmt: skip
    print("| per-sample gradients | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print("\n| B-H-T, float32 | module | loss.backward() ms | torch.func.grad ms |")
    print("|---|---|---|---|")
    for B, H, T in ((8, 256, 100), (64, 256, 100), (64, 1024, 100)):
        torch.manual_seed(0)
        ref = torch.nn.RNN(H, H)
        for name, module in (("fusedrnn.RNN", fusedrnn.RNN.from_torch(ref)), ("torch.nn.RNN", ref)):
            x = torch.randn(T, B, H)
            params = {k: p.detach() for k, p in module.named_parameters()}

            def step(module=module, x=x):
                module.zero_grad(set_to_none=True)
                module(x)[0].sum().backward()

            def func_loss(p, module=module, x=x):
                return functional_call(module, p, (x,))[0].sum()

            func_step = grad(func_loss)
            eager = _best(step, args.repeats)
            func = _best(lambda f=func_step, p=params: f(p), args.repeats)
            print(f"| B{B}-H{H}-T{T} | {name} | {eager:.2f} | {func:.2f} |")


if __name__ == "__main__":
    main()
