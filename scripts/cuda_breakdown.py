"""Where a CUDA training step's time goes: fusedrnn.RNN and torch.nn.RNN (cuDNN) side by side.

For each case (float32, TF32 off, one layer, input size = H; the training step of
``scripts/bench_cuda.py``: forward, then ``(out.sum() + h_n.sum()).backward()``) it reports

- wall: the step's time on the device, CUDA events around it (median);
- host: what the Python call takes to return, without a synchronize (median): when it is
  near or above the wall time, the step is bound by the host (Python, autograd, launches);
- busy: the sum of the step's GPU kernel and copy times under ``torch.profiler``, and the
  gap (wall - busy), the device's idle time between them;
- the kernels by total time per step, the longest first;
- with ``--host-ops N``: the N operators and CUDA runtime calls with the most host time of
  their own (self CPU time under ``torch.profiler``) per step, to see what a host-bound step
  spends it on.

    python3 scripts/cuda_breakdown.py --out OUT_DIR [--cases 1x256x100,16x1024x100] [--host-ops 15]

Writes OUT_DIR/cuda_breakdown.md and prints it. ``--device cpu`` runs the same on the CPU
(no busy column), to try the script without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import fusedrnn

DEFAULT_CASES = "1x256x100,16x1024x100,64x256x100,64x1024x100"


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    cases = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--cases: expected BxHxT items such as 16x1024x100, got {item!r}")
        cases.append(tuple(int(p) for p in parts))
    return cases


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_and_host_us(step, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median device time (CUDA events; perf_counter with a synchronize on the CPU) and
    median time for the Python call to return, of one step."""
    for _ in range(3):
        step()
    _sync(device)
    walls, hosts = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        step()
        hosts.append(1e6 * (time.perf_counter() - t0))
        if device.type == "cuda":
            end.record()
            end.synchronize()
            walls.append(1e3 * start.elapsed_time(end))
        else:
            walls.append(hosts[-1])
    return statistics.median(walls), statistics.median(hosts)


# Host events of the measurement, not of the step: the profiler's own buffer requests and the
# synchronize that closes the profiled steps.
_NOT_THE_STEP = {"Activity Buffer Request", "cudaDeviceSynchronize"}


def profile_us(
    step, device: torch.device, steps: int
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Under torch.profiler, per step: microseconds of each GPU kernel or copy by name (empty
    on the CPU), and of host time of its own (self CPU time) and calls of each host event
    (operators and CUDA runtime calls) by name, the measurement's own (_NOT_THE_STEP) left
    out."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            kernels[event.name] += event.time_range.elapsed_us() / steps
    host = {
        avg.key: (avg.self_cpu_time_total / steps, avg.count / steps)
        for avg in prof.key_averages()
        if avg.device_type == DeviceType.CPU
        and avg.self_cpu_time_total > 0
        and avg.key not in _NOT_THE_STEP
    }
    return dict(kernels), host


def short(name: str, width: int = 70) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated BxHxT")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--top", type=int, default=8, help="kernels listed per module")
    parser.add_argument(
        "--host-ops", type=int, default=0, help="host events listed per module (0: none)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_breakdown: no CUDA device (use --device cpu to try it)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lines = [
        f"torch {torch.__version__}, fusedrnn {fusedrnn.__version__}, device "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; float32, "
        "training step (forward + backward), microseconds per call",
        "",
        "| B | H | T | module | wall | host | busy | gap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    details = []
    for B, H, T in parse_cases(args.cases):
        torch.manual_seed(0)
        ref = torch.nn.RNN(H, H).to(device)
        ours = fusedrnn.RNN.from_torch(ref)
        x = torch.randn(T, B, H, device=device)
        for name, module in (("cudnn" if device.type == "cuda" else "nn.RNN", ref),
                             ("fusedrnn", ours)):  # fmt: skip

            def step(m=module, x=x):
                out, hn = m(x)
                (out.sum() + hn.sum()).backward()
                m.zero_grad(set_to_none=True)

            wall, host = wall_and_host_us(step, device, args.repeats)
            kernels, host_ops = (
                profile_us(step, device, steps=5)
                if device.type == "cuda" or args.host_ops > 0
                else ({}, {})
            )
            busy = sum(kernels.values())
            busy_text, gap_text = (f"{busy:.1f}", f"{wall - busy:.1f}") if kernels else ("-", "-")
            lines.append(
                f"| {B} | {H} | {T} | {name} | {wall:.1f} | {host:.1f} | {busy_text} | {gap_text} |"
            )
            if kernels:
                details.append(f"B={B} H={H} T={T} {name}: kernels, us per call")
                for kname, us in sorted(kernels.items(), key=lambda kv: -kv[1])[: args.top]:
                    details.append(f"  {us:10.1f}  {short(kname)}")
            if args.host_ops > 0:
                details.append(
                    f"B={B} H={H} T={T} {name}: host, self CPU us and count per call "
                    f"(total {sum(us for us, _ in host_ops.values()):.1f} us under the profiler)"
                )
                top = sorted(host_ops.items(), key=lambda kv: -kv[1][0])[: args.host_ops]
                for hname, (us, calls) in top:
                    details.append(f"  {us:10.1f} {calls:6.1f}x  {short(hname)}")
    if details:
        details = ["", "```", *details, "```"]
    text = "\n".join(lines + details) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_breakdown.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
