"""Print the BENCHMARKS.md table for the CPU: fusedrnn.RNN vs torch.nn.RNN, issue 4 rows.

    python benchmarks/cpu_table.py [--rounds N] [--cases B1-H64-T100,...]

Same cases and calls as benchmarks/test_bench_cpu.py, in one process on the same inputs;
each implementation runs its rounds back to back (the steady state of a training or
inference loop, as pytest-benchmark measures too) and each time is the minimum over the
rounds (the machine may be shared: preemption only ever adds time).
"""

from __future__ import annotations

import argparse
import os
import platform

import torch
from cpu_cases import (
    CASES,
    infer_fn,
    make_pair,
    min_time,
    peak_rss_bytes,
    rss_measurable,
    train_fn,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cases", default="")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="also compare training peak memory (resident set, each in a fresh process)",
    )
    args = ap.parse_args()
    wanted = set(filter(None, args.cases.split(",")))
    if args.memory and not rss_measurable():
        ap.error("--memory needs Linux's /proc/self/clear_refs and glibc")
    from fusedrnn import _C

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fusedrnn ISA "
        f"{_C.cpu_isa()}{' + bfloat16 kernels' if _C.cpu_has_bf16() else ''}, "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        "| case | mode | nn.RNN ms | fusedrnn ms | speed-up | fusedrnn GFLOP/s |"
        + (" peak MB nn / fused |" if args.memory else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if args.memory else ""))
    for case in CASES:
        if wanted and case.name not in wanted:
            continue
        ref, fused, x = make_pair(case)
        rounds = case.rounds(args.rounds)
        for mode, make in (("infer", infer_fn), ("train", train_fn)):
            fr, ff = make(ref, x), make(fused, x)
            t_ref, t_fused = min_time(fr, rounds), min_time(ff, rounds)
            gflops = case.flops(mode == "train") / t_fused / 1e9
            row = (
                f"| {case.name} | {mode} | {t_ref * 1e3:.3f} | {t_fused * 1e3:.3f} | "
                f"{t_ref / t_fused:.2f}x | {gflops:.0f} |"
            )
            if args.memory and mode == "train":
                nn_mb, fused_mb = (peak_rss_bytes(case, i) / 2**20 for i in ("nn.RNN", "fusedrnn"))
                row += f" {nn_mb:.1f} / {fused_mb:.1f} |"
            elif args.memory:
                row += " |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
