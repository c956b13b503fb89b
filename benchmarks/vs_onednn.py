"""fusedrnn.RNN vs oneDNN's vanilla RNN, interleaved so both see the same machine.

On a shared machine the speed drifts by tens of percent from minute to minute; two
tables taken one after the other compare two different machines. Here each round times
one case with fusedrnn (in this process) and then with oneDNN (the C++ binary of
benchmarks/onednn/, one case per run), and every figure is the minimum over the rounds.

    g++ -O2 -std=c++17 benchmarks/onednn/rnn_onednn.cpp -ldnnl -o build/rnn_onednn
    python benchmarks/vs_onednn.py [--repeats 5] [--rounds 20] [--cases B1-H64-T100,...]

``--cases`` picks issue 4's rows by name, or names other sizes (``B1-H16-T10000``: one
layer, input size = H, float32).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import torch
from cpu_cases import MAIN, Case, infer_fn, make_pair, min_time, train_fn


def _onednn(binary: str, case: str, rounds: int) -> tuple[float, float]:
    out = subprocess.run(
        [binary, str(rounds), case], check=True, capture_output=True, text=True
    ).stdout
    m = re.search(rf"\| {re.escape(case)} \| ([0-9.]+) \| ([0-9.]+) \|", out)
    if m is None:
        raise RuntimeError(f"no row for {case} in the output of {binary}:\n{out}")
    return float(m.group(1)) / 1e3, float(m.group(2)) / 1e3


def _cases(names: str) -> list[Case]:
    """Issue 4's rows, or those named: any B<b>-H<h>-T<t> (a row's name gives that row)."""
    if not names:
        return MAIN
    cases = []
    for name in names.split(","):
        m = re.fullmatch(r"B(\d+)-H(\d+)-T(\d+)", name)
        if m is None:
            raise SystemExit(f"--cases: {name!r} does not read B<b>-H<h>-T<t>")
        cases.append(Case(*(int(v) for v in m.groups())))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=str(Path("build") / "rnn_onednn"))
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds per case")
    ap.add_argument("--rounds", type=int, default=20, help="timed calls per round")
    ap.add_argument("--cases", default="")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; min over "
          f"{args.repeats} interleaved rounds of {args.rounds} calls")  # fmt: skip
    print("| case | mode | oneDNN ms | fusedrnn ms | fusedrnn vs oneDNN | fusedrnn GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for case in _cases(args.cases):
        _, fused, x = make_pair(case)
        rounds = case.rounds(args.rounds)
        fns = {"infer": infer_fn(fused, x), "train": train_fn(fused, x)}
        ours = {"infer": float("inf"), "train": float("inf")}
        theirs = {"infer": float("inf"), "train": float("inf")}
        for _ in range(args.repeats):
            for mode, fn in fns.items():
                ours[mode] = min(ours[mode], min_time(fn, rounds))
            inf, train = _onednn(args.binary, case.name, rounds)
            theirs["infer"] = min(theirs["infer"], inf)
            theirs["train"] = min(theirs["train"], train)
        for mode in ("infer", "train"):
            gflops = case.flops(mode == "train") / ours[mode] / 1e9
            print(
                f"| {case.name} | {mode} | {theirs[mode] * 1e3:.3f} | {ours[mode] * 1e3:.3f} | "
                f"{theirs[mode] / ours[mode]:.2f}x | {gflops:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
