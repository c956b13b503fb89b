"""The CPU benchmark cases of issue 4 and the code that runs one of them.

Shared by benchmarks/test_bench_cpu.py (pytest-benchmark) and benchmarks/cpu_table.py
(the BENCHMARKS.md table), so both time exactly the same calls: fusedrnn.RNN and
torch.nn.RNN with the same weights, on the same inputs, in the same process.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    H: int
    T: int
    layers: int = 1
    bidirectional: bool = False
    dtype: torch.dtype = torch.float32
    packed: bool = False  # a PackedSequence, lengths spread evenly from T down to 1

    def lengths(self) -> list[int]:
        """Each sequence's length: all T when padded; packed, T, ..., 1 spread evenly over
        the batch (shuffled, so packing has to sort them, as with real data)."""
        if not self.packed:
            return [self.T] * self.B
        spread = [max(1, round(self.T * (self.B - b) / self.B)) for b in range(self.B)]
        order = torch.randperm(self.B, generator=torch.Generator().manual_seed(self.B))
        return [spread[i] for i in order.tolist()]

    @property
    def I(self) -> int:  # noqa: E743 - the shape letter used everywhere
        return self.H  # input size = H, as in the table

    def __repr__(self) -> str:  # pytest-benchmark's group names
        return self.name

    @property
    def name(self) -> str:
        s = f"B{self.B}-H{self.H}-T{self.T}"
        if self.layers > 1:
            s += f"-L{self.layers}"
        if self.bidirectional:
            s += "-bidir"
        if self.dtype != torch.float32:
            s += "-" + str(self.dtype).removeprefix("torch.")
        if self.packed:
            s += "-packed"
        return s

    @property
    def big(self) -> bool:
        """B256-H1024-T100 and larger: timed with fewer rounds (a call takes ~1 s)."""
        return self.B * self.H * self.H * self.T >= 64 * 1024 * 1024 * 100

    def rounds(self, rounds: int) -> int:
        """The rounds a table with ``rounds`` per case gives this case."""
        return max(3, rounds // 4) if self.big else rounds

    def flops(self, train: bool) -> float:
        """Multiply-add flops of the GEMMs: input projection and recurrence forward; BPTT,
        dW_ih, dW_hh and dX backward (the pointwise work is left out)."""
        dirs = 2 if self.bidirectional else 1
        rows = sum(self.lengths())  # T * B unless packed
        total = 0.0
        for layer in range(self.layers):
            i = self.I if layer == 0 else dirs * self.H
            fwd = 2.0 * rows * (i * self.H + self.H * self.H)
            bwd = 2.0 * rows * (2 * self.H * self.H + 2 * i * self.H)
            total += dirs * (fwd + (bwd if train else 0.0))
        return total


# The rows of issue 4 (oneDNN anchors there), then the extra rows it asks for.
MAIN = [
    Case(1, 64, 100),
    Case(1, 256, 100),
    Case(8, 256, 100),
    Case(64, 256, 100),
    Case(1, 1024, 100),
    Case(64, 1024, 100),
    Case(256, 1024, 100),
    Case(16, 128, 1000),
]
EXTRA = [
    Case(32, 256, 200, layers=2, bidirectional=True),
    Case(1, 32, 1),
    Case(64, 256, 100, dtype=torch.float64),
]
# Variable-length batches (not in issue 4): what an NLP model feeds an RNN.
PACKED = [
    Case(64, 256, 100, packed=True),
    Case(32, 256, 200, layers=2, bidirectional=True, packed=True),
]
# Models converted to bfloat16 (not in issue 4). nn.RNN runs torch's bfloat16 GEMMs
# (oneDNN; AVX512_BF16 dot products where the CPU has them); fusedrnn its own bfloat16
# kernels there (recurrences and GEMMs), and the float32 ones elsewhere
# (docs/cpu_kernels.md).
BFLOAT16 = [
    Case(64, 256, 100, dtype=torch.bfloat16),
    Case(64, 1024, 100, dtype=torch.bfloat16),
]
CASES = MAIN + EXTRA + PACKED + BFLOAT16


def min_time(fn, rounds: int) -> float:
    """Seconds of the fastest of ``rounds`` calls of fn, after one warm-up call
    (preemption on a shared machine only ever adds time)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclasses.dataclass(frozen=True)
class PackedInput:
    """A padded batch [T, B, I] and its lengths: each call packs it
    (``pack_padded_sequence(enforce_sorted=False)``), as a model does with every batch."""

    x: torch.Tensor
    lengths: torch.Tensor

    def pack(self, x: torch.Tensor | None = None):
        return pack_padded_sequence(self.x if x is None else x, self.lengths, enforce_sorted=False)


def make_pair(case: Case, seed: int = 0):
    """(torch.nn.RNN, fusedrnn.RNN with the same weights, input: x [T, B, I], or a
    PackedInput for a packed case)."""
    torch.manual_seed(seed)
    ref = torch.nn.RNN(
        case.I,
        case.H,
        num_layers=case.layers,
        bidirectional=case.bidirectional,
        dtype=case.dtype,
    )
    fused = fusedrnn.RNN.from_torch(ref)
    x = torch.randn(case.T, case.B, case.I, dtype=case.dtype)
    if case.packed:
        x = PackedInput(x, torch.tensor(case.lengths()))
    return ref, fused, x


def infer_fn(module, x):
    def run():
        with torch.no_grad():
            return module(x.pack() if isinstance(x, PackedInput) else x)

    return run


def train_fn(module, x):
    """Forward + backward with dL/dx, as a training step of a first layer fed by an
    embedding would (the weight gradients accumulate; set_to_none keeps allocation equal).
    A packed input is packed inside the step, from a padded x that requires grad."""
    packed = x if isinstance(x, PackedInput) else None
    x = (packed.x if packed else x).detach().clone().requires_grad_(True)

    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        if packed:
            out, hn = module(packed.pack(x))
            out = out.data
        else:
            out, hn = module(x)
        (out.sum() + hn.sum()).backward()

    return run


_RSS_CHILD = """
import ctypes, dataclasses, sys
sys.path.insert(0, {bench!r})
import torch
from cpu_cases import Case, make_pair, train_fn
case = {case}
impl = {impl!r}
# Warm-up on a tiny problem of the same kind: thread pools, kernel code, the autograd
# engine and lazy buffers of both libraries come up here, and no large tensor is touched.
tiny_ref, tiny_fused, tiny_x = make_pair(dataclasses.replace(case, B=1, H=8, T=2))
train_fn(tiny_ref if impl == "nn.RNN" else tiny_fused, tiny_x)()
ref, fused, x = make_pair(case)
module = ref if impl == "nn.RNN" else fused
step = train_fn(module, x)


def kib(field):  # VmRSS / VmHWM of this process, in KiB (/proc/self/status)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# Give freed heap memory back to the kernel (glibc), so that the step's allocations fault
# their pages in and count, instead of reusing pages that are still resident.
ctypes.CDLL(None).malloc_trim(0)
# The peak is measured from here: reset the high-water mark to the current resident set
# (clear_refs 5, Linux >= 4.0). getrusage's ru_maxrss would not do: it survives exec, so a
# child of a large process reports its parent's peak.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmRSS")
step()
step()
print(kib("VmHWM") - before)
"""


def rss_measurable() -> bool:
    """Whether peak_rss_bytes can measure here (Linux >= 4.0 with glibc: /proc/self/status
    has VmHWM and /proc/self/clear_refs is writable)."""
    import ctypes
    import os

    try:
        with open("/proc/self/status") as f:
            if not any(line.startswith("VmHWM:") for line in f):
                return False
        ctypes.CDLL(None).malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return False
    return os.access("/proc/self/clear_refs", os.W_OK)


def peak_rss_bytes(case: Case, impl: str, runs: int = 3) -> int:
    """Growth of the peak resident set over two training steps of ``impl`` ("nn.RNN" or
    "fusedrnn") on ``case``, in a fresh process: everything the step holds at its peak
    (torch's tensors, the weight gradients, and what MKL and the C++ kernels allocate
    themselves, which torch's profiler does not see), after a warm-up on a tiny problem,
    with the model and input already built and freed heap memory returned to the kernel.
    The median of ``runs`` processes (the allocators' reuse of memory moves single
    readings by tens of percent). Resolution: a few pages (tiny cases read ~0). Needs
    :func:`rss_measurable`."""
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    # The case rebuilt from its fields' reprs (a dtype's is ``torch.float64``).
    fields = ", ".join(f"{f.name}={getattr(case, f.name)!r}" for f in dataclasses.fields(case))
    code = _RSS_CHILD.format(
        bench=str(Path(__file__).resolve().parent), case=f"Case({fields})", impl=impl
    )
    readings = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the memory child for {case.name} / {impl} failed:\n{proc.stderr}")
        readings.append(int(proc.stdout.split()[-1]) * 1024)
    return int(statistics.median(readings))
