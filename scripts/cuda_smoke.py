"""A small CUDA workload for compute-sanitizer: the recurrence kernels named (default: the
persistent and per-step kernels; `cluster`, Hopper only, is run on its own so that a fault
of that kernel cannot hide the others' results; `auto` runs what auto picks), every dtype,
packed and padded, forward and reverse, through the ops (forward + backward).

    compute-sanitizer --tool memcheck python3 scripts/cuda_smoke.py [persistent stepwise cluster]
    (or: ... scripts/cuda_smoke.py auto)
"""

import os
import sys

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fusedrnn

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def main() -> None:
    paths = sys.argv[1:] or ["persistent", "stepwise"]
    torch.manual_seed(0)
    for path in paths:
        os.environ["FUSEDRNN_CUDA_PATH"] = path
        for dtype in DTYPES:
            for bidirectional in (False, True):
                rnn = fusedrnn.RNN(7, 37, num_layers=2, bidirectional=bidirectional)
                rnn = rnn.to("cuda", dtype)
                seqs = [torch.randn(n, 7, device="cuda", dtype=dtype) for n in (6, 2, 5)]
                for x in (pack_sequence(seqs, enforce_sorted=False), torch.stack(seqs[:1] * 3, 1)):
                    out, hn = rnn(x)
                    data = out.data if isinstance(out, PackedSequence) else out
                    (data.float().square().sum() + hn.float().sum()).backward()
    torch.cuda.synchronize()
    print("cuda_smoke: ok")


if __name__ == "__main__":
    main()
