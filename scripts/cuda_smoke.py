"""A small CUDA workload for compute-sanitizer: every recurrence kernel the GPU can run (the
persistent and per-step kernels; on Hopper the cluster kernel too), every dtype, packed and
padded, forward and reverse, through the ops (forward + backward).

    compute-sanitizer --tool memcheck python3 scripts/cuda_smoke.py
"""

import os

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import fusedrnn

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def main() -> None:
    torch.manual_seed(0)
    paths = ["persistent", "stepwise"]
    if torch.cuda.get_device_capability()[0] >= 9:  # thread-block clusters
        paths.append("cluster")
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
