"""GPU benchmarks: fusedrnn.RNN vs torch.nn.RNN (cuDNN), side by side on identical inputs.

Times with CUDA events after warm-up, median of repeats; reports microseconds per time
step and achieved FLOP/s, for inference (no_grad forward) and training (forward +
backward), and the recurrence kernel alone (fusedrnn's forward recurrence on a
precomputed P: the per-step latency of the kernel `auto` takes, named in the table).

    python3 scripts/bench_cuda.py --out OUT_DIR [--full]

Writes OUT_DIR/bench_cuda.json and OUT_DIR/bench_cuda.md; prints the table.

    python3 scripts/bench_cuda.py --out OUT_DIR --paths

times the forward and backward recurrences alone with each kernel forced through
FUSEDRNN_CUDA_PATH (persistent, stepwise; cluster on Hopper) over a B x H grid, next to
the kernel `auto` picks and the passes per step the persistent kernel would need at that B
(whichever kernel auto takes): the data to set the boundaries in plan_for_kernel
(docs/cuda_kernels.md). Writes OUT_DIR/bench_paths.{json,md}. With --small the grid is
B <= 32, H <= 832, where the cluster kernel fits and auto chooses between it and the
persistent kernel.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
from pathlib import Path

import torch

import fusedrnn
from fusedrnn import _cuda

QUICK = dict(B=[1, 16, 64], H=[256, 1024, 2048], T=[100])
FULL = dict(B=[1, 8, 16, 64, 256], H=[64, 128, 256, 512, 768, 1024, 2048], T=[1, 100, 1024])
PRECISIONS = {  # name: (dtype, allow_tf32)
    "fp32": (torch.float32, False),
    "fp32-tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp64": (torch.float64, False),
}


def time_ms(fn, warmup=3, min_repeats=5, budget_ms=300.0) -> float:
    """Median milliseconds of fn() timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    while len(times) < min_repeats or (sum(times) < budget_ms and len(times) < 100):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_only_ms(P, w_hh, h0, T, B, H) -> float:
    out, hn = torch.empty_like(P), torch.empty_like(h0)
    no_bs = torch.empty(0, dtype=torch.int64)
    return time_ms(lambda: _cuda.rnn_forward(T, B, H, no_bs, False, "tanh", P, w_hh, h0, out, hn))


def bench_row(precision, B, H, T):
    dtype, tf32 = PRECISIONS[precision]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    ref = torch.nn.RNN(H, H).to("cuda", dtype)
    ours = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(T, B, H, device="cuda", dtype=dtype)
    row = dict(precision=precision, B=B, H=H, T=T)
    flops_fwd = 2.0 * T * B * H * (2 * H)  # input projection + recurrence
    for name, module in (("cudnn", ref), ("fused", ours)):
        with torch.no_grad():
            row[f"{name}_infer_ms"] = time_ms(lambda m=module: m(x))

        def train(m=module):
            out, hn = m(x)
            (out.float().sum() + hn.float().sum()).backward()

        row[f"{name}_train_ms"] = time_ms(train)
    P = torch.randn(T * B, H, device="cuda", dtype=dtype)
    h0 = torch.randn(B, H, device="cuda", dtype=dtype)
    w_hh = ref.weight_hh_l0.detach().contiguous()
    row["kernel_us_per_step"] = 1e3 * kernel_only_ms(P, w_hh, h0, T, B, H) / T
    for mode, factor in (("infer", 1.0), ("train", 3.0)):
        for name in ("cudnn", "fused"):
            ms = row[f"{name}_{mode}_ms"]
            row[f"{name}_{mode}_us_per_step"] = 1e3 * ms / T
            row[f"{name}_{mode}_tflops"] = factor * flops_fwd / (ms * 1e-3) / 1e12
        row[f"{mode}_speedup"] = row[f"cudnn_{mode}_ms"] / row[f"fused_{mode}_ms"]
    row["path"] = _cuda._C_cuda.plan(
        _cuda.KERNEL_DTYPES[dtype], B, H, "tanh", False, torch.cuda.current_device()
    )["path"]
    return row


PATHS_GRID = dict(B=[1, 8, 16, 32, 64, 128, 256, 512], H=[256, 512, 1024, 1536, 2048], T=[100])
# --small: where the cluster kernel fits and auto chooses between it and the persistent one.
SMALL_PATHS_GRID = dict(B=[1, 2, 4, 8, 16, 32], H=[64, 128, 256, 384, 512, 640, 768, 832], T=[100])


def recurrence_ms(path, dtype, B, H, T, backward) -> float | None:
    """Median ms of one recurrence (forward or BPTT) with FUSEDRNN_CUDA_PATH=path; None
    when that kernel cannot run this size (the persistent one does not fit)."""
    os.environ["FUSEDRNN_CUDA_PATH"] = path
    torch.manual_seed(0)
    N = T * B
    k = H**-0.5
    w_hh = (torch.rand(H, H, device="cuda") * 2 * k - k).to(dtype)
    h0 = torch.randn(B, H, device="cuda", dtype=dtype)
    P = torch.randn(N, H, device="cuda", dtype=dtype)
    no_bs = torch.empty(0, dtype=torch.int64)
    out, hn = torch.empty_like(P), torch.empty_like(h0)
    if backward:
        h = torch.tanh(P)
        G, dhn, dP, dh0 = torch.randn_like(P), torch.randn_like(h0), torch.empty_like(P), h0 * 0

        def fn():
            _cuda.rnn_backward(T, B, H, no_bs, False, "tanh", w_hh, h, G, dhn, dP, dh0)
    else:

        def fn():
            _cuda.rnn_forward(T, B, H, no_bs, False, "tanh", P, w_hh, h0, out, hn)

    try:
        return time_ms(fn)
    except RuntimeError as e:
        if "kernel was requested but cannot run" in str(e):
            return None
        raise


def _write_paths(args, rows, kernels, note="") -> None:
    """bench_paths.{json,md} from the rows so far (rewritten after each pass; a row's torch
    dtype, kept for the second pass, is not written)."""
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, grid=args.grid)
    if note:
        meta["note"] = note
    args.out.mkdir(parents=True, exist_ok=True)
    written = [{k: v for k, v in r.items() if k != "dtype"} for r in rows]
    (args.out / "bench_paths.json").write_text(json.dumps(dict(meta=meta, rows=written), indent=1))
    cols = [f"{p}_{m}_us_per_step" for m in ("fwd", "bwd") for p in kernels]
    heads = [f"{m} {p}" for m in ("fwd", "bwd") for p in kernels]
    lines = [
        f"Device: {meta['device']}, torch {meta['torch']}; recurrence only, tanh, T = "
        f"{args.grid['T'][0]}, microseconds per step (- : does not fit or not run)",
        *([f"Note: {note}"] if note else []),
        "",
        "| precision | B | H | auto | rows/pass | passes | " + " | ".join(heads) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(heads),
    ]
    for r in rows:
        cells = " | ".join("-" if r.get(c) is None else f"{r[c]:.2f}" for c in cols)
        lines.append(
            f"| {r['precision']} | {r['B']} | {r['H']} | {r['auto']} | {r['rows_per_pass']} "
            f"| {r['passes'] or '-'} | {cells} |"
        )
    (args.out / "bench_paths.md").write_text("\n".join(lines) + "\n")


def _us(v) -> str:
    return f"{v:9.2f}" if v is not None else f"{'-':>9}"


def bench_paths(args) -> None:
    """The recurrence kernels, each forced, per (B, H): the persistent and per-step kernels
    over the grid, written out; then, on a GPU with thread-block clusters (compute
    capability 9.0), the cluster kernel as a second pass, so that a fault of that kernel
    cannot cost the first pass (an error there ends the pass and is noted in the files)."""
    saved = os.environ.get("FUSEDRNN_CUDA_PATH")
    rows = []
    kernels = ["persistent", "stepwise"]
    print(
        f"{'prec':6} {'B':>4} {'H':>5} {'auto':>10} {'rows/pass':>9} {'passes':>6} "
        f"{'fwd pers / step us/step':>21} {'bwd pers / step us/step':>21}"
    )
    device = torch.cuda.current_device()
    try:
        for precision in args.precisions.split(","):
            dtype, tf32 = PRECISIONS[precision]
            torch.backends.cuda.matmul.allow_tf32 = tf32
            name = _cuda.KERNEL_DTYPES[dtype]
            for B, H, T in itertools.product(args.grid["B"], args.grid["H"], args.grid["T"]):
                plan = _cuda._C_cuda.plan(name, B, H, "tanh", False, device)
                # rows per pass and passes: the persistent kernel's, whichever auto takes
                pers = _cuda._C_cuda.plan(name, B, H, "tanh", False, device, "persistent")
                rpp = pers["rows_per_pass"] if pers["path"] == "persistent" else 0
                row = dict(precision=precision, B=B, H=H, T=T, auto=plan["path"], dtype=dtype)
                row.update(rows_per_pass=rpp, passes=math.ceil(B / rpp) if rpp else None)
                for path in kernels:
                    for mode, bwd in (("fwd", False), ("bwd", True)):
                        ms = recurrence_ms(path, dtype, B, H, T, bwd)
                        row[f"{path}_{mode}_us_per_step"] = None if ms is None else 1e3 * ms / T
                rows.append(row)
                times = " ".join(
                    " / ".join(_us(row[f"{p}_{mode}_us_per_step"]) for p in kernels)
                    for mode in ("fwd", "bwd")
                )
                print(
                    f"{precision:6} {B:>4} {H:>5} {row['auto']:>10} {rpp:>9} "
                    f"{row['passes'] or '-':>6} {times}",
                    flush=True,
                )
        _write_paths(args, rows, kernels)
        if args.no_cluster or torch.cuda.get_device_capability()[0] < 9:
            return
        kernels.append("cluster")
        note = ""
        print("cluster kernel, us/step fwd / bwd:")
        for row in rows:
            for mode, bwd in (("fwd", False), ("bwd", True)):
                try:
                    ms = recurrence_ms("cluster", row["dtype"], row["B"], row["H"], row["T"], bwd)
                except Exception as e:  # recorded in the files; the pass ends
                    note = f"the cluster pass stopped at B={row['B']} H={row['H']} {mode}: {e}"
                    break
                row[f"cluster_{mode}_us_per_step"] = None if ms is None else 1e3 * ms / row["T"]
            if note:
                print(note, flush=True)
                break
            print(
                f"{row['precision']:6} {row['B']:>4} {row['H']:>5} "
                f"{_us(row['cluster_fwd_us_per_step'])} / {_us(row['cluster_bwd_us_per_step'])}",
                flush=True,
            )
        _write_paths(args, rows, kernels, note)
    finally:
        if saved is None:
            os.environ.pop("FUSEDRNN_CUDA_PATH", None)
        else:
            os.environ["FUSEDRNN_CUDA_PATH"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--full", action="store_true", help="the full grid of the issue")
    parser.add_argument("--precisions", default=None, help="default: all (--paths: fp32)")
    parser.add_argument(
        "--paths",
        action="store_true",
        help="the recurrence kernels, each forced, over a B x H grid (bench_paths.*)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="--paths over small sizes (B <= 32, H <= 832), where the cluster kernel fits",
    )
    parser.add_argument(
        "--no-cluster",
        action="store_true",
        help="--paths without the cluster kernel's pass (gpu_check.sh: after it hung)",
    )
    args = parser.parse_args()
    if args.precisions is None:
        args.precisions = "fp32" if args.paths else "fp32,fp32-tf32,bf16,fp16"
    if args.paths:
        args.grid = SMALL_PATHS_GRID if args.small else PATHS_GRID
        bench_paths(args)
        return
    grid = FULL if args.full else QUICK
    rows = []
    header = (
        f"{'prec':9} {'B':>4} {'H':>5} {'T':>5} {'path':>10} {'kern us/step':>12} "
        f"{'infer cudnn/fused us/step':>26} {'x':>5} {'train cudnn/fused us/step':>26} {'x':>5}"
    )
    print(header)
    for precision in args.precisions.split(","):
        for B, H, T in itertools.product(grid["B"], grid["H"], grid["T"]):
            try:
                r = bench_row(precision, B, H, T)
            except RuntimeError as e:  # e.g. a precision cuDNN does not support
                print(f"{precision:9} {B:>4} {H:>5} {T:>5} failed: {e}", flush=True)
                rows.append(dict(precision=precision, B=B, H=H, T=T, error=str(e)))
                continue
            rows.append(r)
            print(
                f"{precision:9} {B:>4} {H:>5} {T:>5} {r['path']:>10} "
                f"{r['kernel_us_per_step']:>12.2f} "
                f"{r['cudnn_infer_us_per_step']:>12.2f} / {r['fused_infer_us_per_step']:>11.2f} "
                f"{r['infer_speedup']:>5.2f} "
                f"{r['cudnn_train_us_per_step']:>12.2f} / {r['fused_train_us_per_step']:>11.2f} "
                f"{r['train_speedup']:>5.2f}",
                flush=True,
            )
    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        fusedrnn=fusedrnn.info(),
        cudnn=torch.backends.cudnn.version(),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cuda.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [
        f"Device: {meta['device']}, torch {meta['torch']}, cuDNN {meta['cudnn']}",
        "",
        "| precision | B | H | T | kernel | kernel us/step | infer cuDNN us/step | "
        "infer fused us/step | infer x | train cuDNN us/step | train fused us/step | train x "
        "| fused train TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['precision']} | {r['B']} | {r['H']} | {r['T']} | error: {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['precision']} | {r['B']} | {r['H']} | {r['T']} | {r['path']} "
            f"| {r['kernel_us_per_step']:.2f} | {r['cudnn_infer_us_per_step']:.2f} "
            f"| {r['fused_infer_us_per_step']:.2f} | {r['infer_speedup']:.2f} "
            f"| {r['cudnn_train_us_per_step']:.2f} | {r['fused_train_us_per_step']:.2f} "
            f"| {r['train_speedup']:.2f} | {r['fused_train_tflops']:.3f} |"
        )
    (args.out / "bench_cuda.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
