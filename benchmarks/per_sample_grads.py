"""Per-sample gradients with torch.func: ``vmap(grad(loss))`` over a batch of sequences.

torch.nn.RNN cannot be vmapped (no batching rule for its op), so its per-sample gradients
take one ``grad`` per sample; fusedrnn's ops have vmap rules that run the samples as one
batch. Times (minimum of ``--repeats`` calls, after one warm-up):

- fusedrnn: ``vmap(grad(loss))`` over the samples;
- fusedrnn and torch.nn.RNN: a Python loop of ``grad(loss)``, one sample at a time.

    python benchmarks/per_sample_grads.py [--samples 64] [--seq 50] [--input 16] [--hidden 64]
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
    print("| method | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
