"""``fusedrnn bench``: fusedrnn.RNN against torch.nn.RNN, side by side on identical inputs.

For every case of a grid (device, dtype, inference or training, sizes) both modules are
built with the same weights (``load_state_dict``) and run on the same input. Before
timing, the case is checked: fusedrnn's outputs (and, for training, every gradient) are
compared with nn.RNN's, so a fast wrong answer is flagged, never hidden. Then the two
run alternately after a warm-up; the median of the repeated runs is reported. CPU runs
are timed with ``time.perf_counter``, CUDA runs with CUDA events after a synchronize.

FLOP count of one layer-direction with input size ``I_l`` (``I`` for the first layer,
``D*H`` above it, D = 2 when bidirectional), counting a multiply-add as 2 FLOPs:

    forward   2 * T * B * (I_l * H + H * H)
    training  3 x forward  (the backward pass does the forward's GEMMs twice: dX and dW)

summed over layers and directions; GFLOP/s is that count over fusedrnn's median time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import _cli
from .modules import RNN

__all__ = ["Case", "Result", "add_arguments", "build_cases", "case_seconds", "run", "run_case"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
MODES = ("inference", "training")
NONLINEARITIES = ("tanh", "relu")
# Largest error relative to the largest reference value that still counts as agreeing
# with nn.RNN. Both compute in the dtype given, with different summation orders; long
# training runs accumulate rounding over T steps and the weight-gradient sums.
# bfloat16: both round every stored value to 8 significant bits, each in its own places
# (nn.RNN after every op; fusedrnn once per value, float32 inside).
TOLERANCE = {"float32": 5e-5, "float64": 1e-10, "bfloat16": 5e-2}


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # a PackedSequence with lengths from T down to T/2

    def lengths(self) -> list[int]:
        """Sequence lengths, longest first: evenly spread from T down to about T/2."""
        if not self.packed:
            return [self.T] * self.B
        return [self.T - (self.T // 2) * b // max(self.B - 1, 1) for b in range(self.B)]


# Each preset: the shapes, and the seconds each implementation is timed per case.
PRESETS: dict[str, tuple[list[Shape], float]] = {
    "quick": ([Shape(50, 16, 32, 64), Shape(100, 32, 64, 128)], 0.1),
    "default": (
        [
            Shape(100, 1, 32, 64),
            Shape(100, 32, 64, 128),
            Shape(100, 64, 128, 256),
            Shape(50, 32, 256, 512),
            Shape(500, 8, 32, 128),
            Shape(100, 32, 64, 128, layers=2, bidirectional=True),
            Shape(100, 32, 64, 128, packed=True),
        ],
        0.3,
    ),
    "full": (
        [Shape(200, B, 64, H) for H in (64, 128, 256, 512, 1024) for B in (1, 16, 64)]
        + [
            Shape(1000, 16, 64, 256),
            Shape(2000, 4, 32, 128),
            Shape(200, 32, 128, 256, layers=2),
            Shape(200, 32, 128, 256, layers=2, bidirectional=True),
            Shape(200, 32, 128, 512, layers=4),
            Shape(200, 64, 128, 256, packed=True),
            Shape(200, 64, 128, 256, layers=2, bidirectional=True, packed=True),
        ],
        1.0,
    ),
}
# On a GPU the small shapes measure only launch latency: add shapes that fill the device.
CUDA_SHAPES = {
    "quick": [Shape(100, 64, 256, 512)],
    "default": [Shape(200, 64, 256, 1024), Shape(1000, 16, 128, 512)],
    "full": [Shape(200, 256, 512, 2048), Shape(1000, 64, 256, 1024), Shape(5000, 8, 128, 512)],
}


@dataclass(frozen=True)
class Case:
    device: str
    dtype: str
    mode: str
    nonlinearity: str
    shape: Shape

    @property
    def gradients_compared(self) -> bool:
        """Whether the check compares gradients too. Not for relu training in bfloat16: a
        state whose pre-activation lies within a rounding of 0 comes out 0 in one module and
        positive in the other (each rounds in other places), and relu's backward then passes
        that unit's gradient in one and stops it in the other; on the same bfloat16 inputs
        nn.RNN and fusedrnn each differ from float64 by up to ~0.1-0.6 there. Its gradients
        must still be finite wherever nn.RNN's are. The kernels' bfloat16 BPTT is checked
        against float64 at its own states in the tests."""
        return self.mode == "training" and not (
            self.dtype == "bfloat16" and self.nonlinearity == "relu"
        )

    @property
    def label(self) -> str:
        s = self.shape
        parts = [
            self.device,
            {"float32": "f32", "float64": "f64", "bfloat16": "bf16"}[self.dtype],
            "train" if self.mode == "training" else "infer",
            self.nonlinearity,
            f"T={s.T} B={s.B} I={s.I} H={s.H}",
        ]
        if s.layers > 1:
            parts.append(f"L={s.layers}")
        if s.bidirectional:
            parts.append("bi")
        if s.packed:
            parts.append("packed")
        return " ".join(parts)

    def flops(self) -> float:
        s = self.shape
        D = 2 if s.bidirectional else 1
        steps = sum(s.lengths())  # T * B unless packed
        total = 0
        for layer in range(s.layers):
            I = s.I if layer == 0 else D * s.H
            total += D * 2 * steps * (I * s.H + s.H * s.H)
        return float(total * (3 if self.mode == "training" else 1))

    def memory_bytes(self) -> int:
        """A generous estimate of what both modules hold at once for this case."""
        s = self.shape
        D = 2 if s.bidirectional else 1
        elements = s.T * s.B * (s.I + 2 * D * s.H * s.layers)  # input, outputs, saved states
        elements += s.layers * D * s.H * (s.I + D * s.H + s.H + 2)  # weights
        factor = 6 if self.mode == "training" else 3  # grads, two modules, workspaces
        return elements * factor * torch.tensor([], dtype=DTYPES[self.dtype]).element_size()


@dataclass
class Result:
    case: Case
    ok: bool  # fusedrnn agreed with nn.RNN within TOLERANCE
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    torch_ms: float | None = None
    fused_ms: float | None = None
    repeats: int = 0
    error: str | None = None  # set when a module raised instead of returning
    # What the errors are measured against: "nn.RNN", or "float64" where fusedrnn and
    # nn.RNN disagreed and a float64 nn.RNN on the same values decided (see _run_case).
    reference: str = "nn.RNN"
    torch_rel_error: float | None = None  # nn.RNN's own error against float64, then

    @property
    def speedup(self) -> float | None:
        if self.torch_ms is None or self.fused_ms is None or self.fused_ms <= 0:
            return None
        return self.torch_ms / self.fused_ms

    def gflops(self, ms: float | None) -> float | None:
        return None if not ms else self.case.flops() / (ms * 1e-3) / 1e9

    def to_dict(self) -> dict:
        case = dataclasses.asdict(self.case)
        case.update(case.pop("shape"))
        return {
            "label": self.case.label,
            **case,
            "flops": self.case.flops(),
            "ok": self.ok,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "tolerance": TOLERANCE[self.case.dtype],
            "reference": self.reference,
            "torch_rel_error": self.torch_rel_error,
            "checked": "outputs and gradients" if self.case.gradients_compared else "outputs",
            "torch_ms": self.torch_ms,
            "fusedrnn_ms": self.fused_ms,
            "speedup": self.speedup,
            "torch_gflops": self.gflops(self.torch_ms),
            "fusedrnn_gflops": self.gflops(self.fused_ms),
            "repeats": self.repeats,
            "error": self.error,
        }


# ---- building and running one case -------------------------------------------------------


class _Workload:
    """Both modules with the same weights, one input, and one step function for each."""

    def __init__(self, case: Case, seed: int):
        s = case.shape
        dtype, device = DTYPES[case.dtype], torch.device(case.device)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        kwargs = {
            "num_layers": s.layers,
            "nonlinearity": case.nonlinearity,
            "bidirectional": s.bidirectional,
            "device": device,
            "dtype": dtype,
        }
        self.reference = nn.RNN(s.I, s.H, **kwargs)
        self.fused = RNN(s.I, s.H, **kwargs)
        self.fused.load_state_dict(self.reference.state_dict())
        D = 2 if s.bidirectional else 1

        def randn(*size):
            return torch.randn(*size, generator=generator, dtype=dtype).to(device)

        self.h0 = randn(s.layers * D, s.B, s.H) * 0.5
        self.grad_hn = randn(s.layers * D, s.B, s.H)
        self.training = case.mode == "training"
        x = randn(s.T, s.B, s.I)
        if s.packed:
            packed = pack_padded_sequence(x, torch.tensor(s.lengths()))
            x, batch_sizes = packed.data, packed.batch_sizes
        self.grad_out = randn(*x.shape[:-1], D * s.H)  # [T, B, D*H], or packed [N, D*H]
        if self.training:
            x.requires_grad_()  # a leaf: each step computes its gradient afresh
            self.h0.requires_grad_()
        self.leaf = x
        # Packed once, outside the timed steps: both modules get the same PackedSequence.
        self.x = PackedSequence(x, batch_sizes) if s.packed else x

    def float64_results(self) -> list[torch.Tensor]:
        """:meth:`results` of nn.RNN in float64 on this workload's values (its weights,
        input, state and output gradients converted, not drawn again): the arbiter where
        the two modules disagree."""
        work = copy.copy(self)
        work.reference = copy.deepcopy(self.reference).double()
        work.h0 = self.h0.detach().double().requires_grad_(self.training)
        work.grad_hn, work.grad_out = self.grad_hn.double(), self.grad_out.double()
        work.leaf = self.leaf.detach().double().requires_grad_(self.training)
        packed = isinstance(self.x, PackedSequence)
        work.x = PackedSequence(work.leaf, self.x.batch_sizes) if packed else work.leaf
        return work.results(work.reference)

    def step(self, module: nn.Module) -> Callable[[], None]:
        if not self.training:
            module.eval()

            def infer() -> None:
                with torch.inference_mode():
                    module(self.x, self.h0)

            return infer

        module.train()
        params = list(module.parameters())

        def train() -> None:
            for p in params:
                p.grad = None
            self.leaf.grad = self.h0.grad = None
            out, hn = module(self.x, self.h0)
            out = out.data if isinstance(out, PackedSequence) else out
            torch.autograd.backward((out, hn), (self.grad_out, self.grad_hn))

        return train

    def results(self, module: nn.Module) -> list[torch.Tensor]:
        """Outputs and (training) every gradient, in a fixed order."""
        if self.training:
            self.step(module)()
            names = ["input", "h0", *(name for name, _ in module.named_parameters())]
            grads = [self.leaf.grad, self.h0.grad, *(p.grad for p in module.parameters())]
            for name, g in zip(names, grads, strict=True):
                if g is None:
                    raise AssertionError(f"no gradient for {name}")
        else:
            module.eval()
            grads = []
        with torch.inference_mode():
            out, hn = module(self.x, self.h0)
        out = out.data if isinstance(out, PackedSequence) else out
        return [out, hn, *(g.detach().clone() for g in grads)]


def _compare(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Max absolute error, and max error relative to each tensor's largest value."""
    max_abs = max_rel = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise AssertionError(f"shape {tuple(g.shape)} differs from nn.RNN's {tuple(w.shape)}")
        err = (g.double() - w.double()).abs().max().item() if w.numel() else 0.0
        scale = w.double().abs().max().item() if w.numel() else 0.0
        if math.isnan(err):
            return math.nan, math.nan
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(scale, 1e-30))
    return max_abs, max_rel


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    """A function that runs ``fn`` once and returns its time in seconds."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(fn: Callable[[], None]) -> float:
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3

        return cuda_time

    def cpu_time(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cpu_time


def time_pair(
    run_a: Callable[[], None],
    run_b: Callable[[], None],
    device: str,
    min_time: float,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 200,
) -> tuple[float, float, int]:
    """Median seconds of ``run_a`` and ``run_b``, run alternately so both see the same noise.

    Repeats until each has run ``min_repeats`` times and for ``min_time`` seconds in all
    (at most ``max_repeats``).
    """
    measure = _timer(device)
    for _ in range(warmup):
        measure(run_a)
        measure(run_b)
    times_a: list[float] = []
    times_b: list[float] = []
    while len(times_a) < max_repeats and (
        len(times_a) < min_repeats or min(sum(times_a), sum(times_b)) < min_time
    ):
        if len(times_a) % 2:
            times_b.append(measure(run_b))
            times_a.append(measure(run_a))
        else:
            times_a.append(measure(run_a))
            times_b.append(measure(run_b))
    return statistics.median(times_a), statistics.median(times_b), len(times_a)


@contextlib.contextmanager
def _no_tf32():
    """float32 as float32 on CUDA while a case runs: cuDNN's RNN takes TF32 by default
    (``torch.backends.cudnn.allow_tf32``), a 10-bit mantissa that puts nn.RNN ~1e-3 away
    from float32 and would time it on a different, less exact function than fusedrnn's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_case(case: Case, min_time: float, warmup: int = 1, seed: int = 0) -> Result:
    """Check fusedrnn against nn.RNN on ``case``, then time both (only if they agree).
    On CUDA both run with TF32 off (``_no_tf32``), with the case's GPU current."""
    if case.device.startswith("cuda"):
        # On the case's GPU as the current device: the timer's events and synchronize
        # act on the current device (cuda:1 was timed by events on cuda:0's stream).
        index = torch.device(case.device).index
        with _no_tf32(), torch.cuda.device(torch.cuda.current_device() if index is None else index):
            return _run_case(case, min_time, warmup, seed)
    return _run_case(case, min_time, warmup, seed)


def _run_case(case: Case, min_time: float, warmup: int, seed: int) -> Result:
    try:
        work = _Workload(case, seed)
        want = work.results(work.reference)
        got = work.results(work.fused)
        compared = len(want) if case.gradients_compared else 2  # outputs first
        max_abs, max_rel = _compare(got[:compared], want[:compared])
        # Gradients not compared still must be finite wherever nn.RNN's are.
        for g, w in zip(got[compared:], want[compared:], strict=True):
            if not bool((g.isfinite() | ~w.isfinite()).all()):
                max_abs = max_rel = math.nan
        ok = max_rel <= TOLERANCE[case.dtype]  # False for NaN too
        result = Result(case, ok=ok, max_abs_error=max_abs, max_rel_error=max_rel)
        if not ok and case.dtype != "float64" and not math.isnan(max_rel):
            # Which of the two is off? nn.RNN in float64 on the same values decides: relu
            # training in float32 flips a unit's gradient gate wherever a pre-activation
            # lies within a rounding of 0, and there nn.RNN was the one far from float64
            # (5.7e-2 against fusedrnn's 4.8e-7 at T=200, B=64, H=256). fusedrnn passes if
            # it is within the tolerance of float64, or at least as close to it as nn.RNN.
            truth = work.float64_results()
            fused_abs, fused_rel = _compare(got[:compared], truth[:compared])
            _, torch_rel = _compare(want[:compared], truth[:compared])
            ok = fused_rel <= TOLERANCE[case.dtype] or fused_rel <= torch_rel
            result = Result(case, ok=ok, max_abs_error=fused_abs, max_rel_error=fused_rel,
                            reference="float64", torch_rel_error=torch_rel)  # fmt: skip
    except Exception as exc:  # any failure of a module is that case's ERROR row
        return Result(case, ok=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    if ok:
        torch_s, fused_s, repeats = time_pair(
            work.step(work.reference), work.step(work.fused), case.device, min_time, warmup
        )
        result.torch_ms, result.fused_ms, result.repeats = torch_s * 1e3, fused_s * 1e3, repeats
    return result


# ---- what a run will take ----------------------------------------------------------------

# A generous estimate of a case's time, made before anything runs (``fusedrnn bench``
# refuses a run estimated past --max-hours). Both modules are charged what nn.RNN, the
# slower, takes a call: its GEMMs' flops at the lowest rate it reached, plus the highest
# cost per step of a layer-direction it took (which small sizes never amortize); and the
# timed runs are counted as if fusedrnn were _FASTER times faster (see case_seconds).
# Measured on this repo's 2-core AMD EPYC (AVX2, session 30, a quiet machine; a busy one
# took up to 8x longer), nn.RNN: 6-16 us a step in inference and 60-130 us in training
# (autograd records each step; B = 1, H = 64); in GFLOP/s at B = 32-64, H = 256-1024,
# inference and training: float32 37-49 and 44-51, float64 30-38 and 22-33, bfloat16 (no
# AVX512_BF16 there) 9-14 and 2.2-3.2; fusedrnn was 1.7-11x faster on the default grid.
# The default grid took 23 s besides the imports, estimated 44 s. On CUDA (H100,
# BENCHMARKS.md) fusedrnn's steps take 6-20 us, and the rates reach 0.03-2 TFLOP/s.
_STEP_S = {"cpu": {"inference": 2e-5, "training": 1.5e-4},
           "cuda": {"inference": 2e-5, "training": 5e-5}}  # fmt: skip
_CPU_FLOPS_PER_S = {"float32": {"inference": 3e10, "training": 3e10},
                    "float64": {"inference": 3e10, "training": 2e10},
                    "bfloat16": {"inference": 9e9, "training": 2e9}}  # fmt: skip
_CUDA_FLOPS_PER_S = 2e11
_FASTER = 5  # fusedrnn's call against nn.RNN's (see case_seconds)
_MAX_HOURS = 2.0  # --max-hours' default: --full with every dtype on a CPU and a GPU fits


def _call_seconds(case: Case) -> float:
    """A generous estimate of one call of either module on ``case`` (see _STEP_S)."""
    s = case.shape
    steps = s.T * s.layers * (2 if s.bidirectional else 1)  # one after another
    if case.device.startswith("cuda"):
        return case.flops() / _CUDA_FLOPS_PER_S + steps * _STEP_S["cuda"][case.mode]
    rate = _CPU_FLOPS_PER_S[case.dtype][case.mode]
    return case.flops() / rate + steps * _STEP_S["cpu"][case.mode]


def case_seconds(case: Case, min_time: float, warmup: int = 1) -> float:
    """A generous estimate of :func:`run_case`'s seconds: the check (a training step and a
    forward, or a forward), the warm-up and the timed runs of both modules. The timed runs
    (:func:`time_pair`: at least 3, at most 200) go on until the faster module has run for
    ``min_time``, and fusedrnn may take as little as 1/_FASTER of nn.RNN's call: both then
    run as often. (The float64 arbiter, run where the two disagree, is not counted.)"""
    call = _call_seconds(case)
    checks = 2 if case.mode == "training" else 1
    repeats = min(200, max(3, math.ceil(min_time * _FASTER / call)))
    return 2 * (checks + warmup + repeats) * call


# ---- the grid -------------------------------------------------------------------------


def build_cases(
    preset: str,
    devices: Sequence[str],
    dtypes: Sequence[str] = ("float32",),
    modes: Sequence[str] = MODES,
    nonlinearities: Sequence[str] = ("tanh",),
    overrides: dict[str, Sequence] | None = None,
) -> list[Case]:
    """The cases of ``preset`` on ``devices``; each ``overrides`` entry (a Shape field and
    its values) replaces that field in every shape, and duplicates are dropped."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cases: list[Case] = []
    for device in devices:
        shapes = list(PRESETS[preset][0])
        if device.startswith("cuda"):
            shapes += CUDA_SHAPES[preset]
        for shape in shapes:
            variants = [shape]
            for field, values in overrides.items():
                variants = [dataclasses.replace(v, **{field: x}) for v in variants for x in values]
            for variant in variants:
                for dtype in dtypes:
                    for nonlinearity in nonlinearities:
                        for mode in modes:
                            cases.append(Case(device, dtype, mode, nonlinearity, variant))
    return list(dict.fromkeys(cases))


# ---- output -----------------------------------------------------------------------------

HEADERS = ["case", "nn.RNN ms", "fusedrnn ms", "speed-up", "GFLOP/s", "max error", "check"]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.error is not None:
            check = "ERROR"
        else:
            check = "ok" if r.ok else "WRONG"
            if r.case.mode == "training" and not r.case.gradients_compared:
                check += " (outputs)"
            if r.reference == "float64":
                check += " (float64)"
        speedup = r.speedup
        rows.append(
            [
                r.case.label,
                _fmt(r.torch_ms, ".3f"),
                _fmt(r.fused_ms, ".3f"),
                "-" if speedup is None else f"{speedup:.2f}x",
                _fmt(r.gflops(r.fused_ms), ".1f"),
                _fmt(r.max_abs_error, ".1e"),
                check,
            ]
        )
    return rows


def _problems(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.error is not None:
            lines.append(f"{r.case.label}: {r.error}")
        elif not r.ok and r.reference == "float64":
            lines.append(
                f"{r.case.label}: fusedrnn differs from nn.RNN, and from float64 by "
                f"{r.max_rel_error:.2e} (relative; tolerance {TOLERANCE[r.case.dtype]:.0e}; "
                f"nn.RNN's own error {r.torch_rel_error:.2e}); not timed"
            )
        elif not r.ok:
            lines.append(
                f"{r.case.label}: fusedrnn differs from nn.RNN by {r.max_rel_error:.2e} "
                f"(relative; tolerance {TOLERANCE[r.case.dtype]:.0e}); not timed"
            )
    return lines


def _meta(args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    from .sysinfo import collect

    command = shlex.join(["fusedrnn", "bench", *(argv or ())])  # runs again as pasted
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "preset": args.preset,
        "min_time_s": args.min_time,
        "flops": "forward 2*T*B*(I_l*H + H*H) per layer-direction; training 3x forward",
        **collect(),
    }


def _machine_line(meta: dict) -> str:
    gpus = ", ".join(g["name"] for g in meta["gpus"]) or "no GPU"
    return (
        f"fusedrnn {meta['fusedrnn']}, torch {meta['torch']}; {meta['cpu']}, "
        f"{meta['threads']} threads, CPU kernel {meta['cpu_isa']}"
        f"{' + bfloat16' if meta.get('cpu_bf16_kernels') else ''}; {gpus}"
    )


def write_json(path: str, meta: dict, results: Sequence[Result]) -> None:
    """The run as strict JSON: an error that is NaN or infinite is null."""
    _cli.write_json(path, {"meta": meta, "results": [r.to_dict() for r in results]})


def write_markdown(path: str, meta: dict, results: Sequence[Result]) -> None:
    lines = [
        f"## fusedrnn bench, {meta['date']}",
        "",
        f"- machine: {_machine_line(meta)}",
        f"- command: `{meta['command']}`",
        "- times: median ms per call, nn.RNN and fusedrnn alternating on identical inputs;"
        " training = forward + backward",
        f"- GFLOP/s: fusedrnn's; {meta['flops']}",
        "- max error: largest |fusedrnn - nn.RNN| over outputs (and all gradients in training;"
        " `ok (outputs)`: relu training in bfloat16, outputs only; `(float64)`: the two"
        " disagreed, and the error is against nn.RNN in float64, which decided; see"
        " docs/tools.md)",
        "",
        _cli.markdown_table(HEADERS, table_rows(results)),
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def write_plot(path: str, meta: dict, results: Sequence[Result]) -> None:
    """A horizontal bar per timed case: nn.RNN time / fusedrnn time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.speedup is not None]
    labels = [r.case.label for r in timed]
    speedups = [r.speedup for r in timed]
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.32 * max(len(timed), 1)), layout="constrained")
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.barh(range(len(timed)), speedups, color=colors)
    ax.set_yticks(range(len(timed)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    for i, s in enumerate(speedups):
        ax.text(s, i, f" {s:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("speed-up of fusedrnn.RNN over torch.nn.RNN (nn.RNN time / fusedrnn time)")
    ax.set_xlim(0, max([*speedups, 1.0]) * 1.2)
    ax.set_title(_machine_line(meta), fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", help="small grid, < 20 s"
    )
    grid.add_argument(
        "--full", dest="preset", action="store_const", const="full", help="the large grid"
    )
    parser.set_defaults(preset="default")
    sizes = parser.add_argument_group(
        "sizes", "each replaces that size in every case of the grid; N or a list N,M,..."
    )
    sizes.add_argument(
        "--seq",
        type=_cli.positive_int_list(1_000_000),
        metavar="N[,N...]",
        help="sequence length T",
    )
    sizes.add_argument(
        "--batch", type=_cli.positive_int_list(1_000_000), metavar="N[,N...]", help="batch size B"
    )
    sizes.add_argument(
        "--input", type=_cli.positive_int_list(1_000_000), metavar="N[,N...]", help="input size I"
    )
    sizes.add_argument(
        "--hidden", type=_cli.positive_int_list(100_000), metavar="N[,N...]", help="hidden size H"
    )
    sizes.add_argument(
        "--layers", type=_cli.positive_int_list(64), metavar="N[,N...]", help="number of layers"
    )
    sizes.add_argument(
        "--bidirectional", action="store_true", default=None, help="make every case bidirectional"
    )
    sizes.add_argument(
        "--packed",
        action="store_true",
        default=None,
        help="make every case a PackedSequence, lengths spread from T down to T/2",
    )
    parser.add_argument(
        "--dtype",
        type=_cli.choice_list(list(DTYPES)),
        default=["float32"],
        help="float32 (default), float64, bfloat16 (a model converted to bfloat16), or a "
        "list: float32,bfloat16",
    )
    parser.add_argument(
        "--nonlinearity",
        type=_cli.choice_list(NONLINEARITIES),
        default=["tanh"],
        help="tanh (default), relu, or tanh,relu",
    )
    parser.add_argument(
        "--mode",
        type=_cli.choice_list(MODES),
        default=list(MODES),
        help="inference, training (forward + backward), or both (default)",
    )
    parser.add_argument(
        "--device",
        default="all",
        help="cpu, cuda, cuda:N, or all (default: cpu, and cuda when a GPU is visible and "
        "fusedrnn's CUDA kernels were built)",
    )
    parser.add_argument(
        "--threads",
        type=_cli.positive_int(4096),
        help="CPU threads for both modules (torch.set_num_threads); default: torch's",
    )
    parser.add_argument(
        "--min-time",
        type=_cli.positive_float,
        help="seconds each implementation is timed per case, at most 200 runs (default: "
        "0.1 quick, 0.3 default, 1.0 full)",
    )
    parser.add_argument(
        "--warmup", type=_cli.positive_int(1000), default=1, help="untimed runs first"
    )
    _cli.add_max_hours(
        parser, _MAX_HOURS, "the estimate is generous, from each case's flops and steps"
    )
    parser.add_argument("--seed", type=_cli.seed, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--json", type=_cli.output_file, metavar="FILE", help="write the results as JSON"
    )
    parser.add_argument(
        "--markdown",
        type=_cli.output_file,
        metavar="FILE",
        help="write the results as a Markdown table",
    )
    parser.add_argument(
        "--plot",
        type=_cli.output_file,
        metavar="FILE.png",
        help="plot the speed-up per case (needs matplotlib)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


def _devices(parser: argparse.ArgumentParser, spec: str) -> list[str]:
    if spec == "all":
        if not torch.cuda.is_available():
            return ["cpu"]
        from .sysinfo import collect

        if not collect()["cuda_kernels_built"]:
            print(
                "fusedrnn bench: a GPU is visible but fusedrnn was built without CUDA kernels: "
                "CPU cases only (--device cuda runs them anyway)",
                file=sys.stderr,
            )
            return ["cpu"]
        return ["cpu", "cuda"]
    devices = []
    for name in dict.fromkeys(part.strip() for part in spec.split(",")):
        device = _cli.device(parser, name, "cpu, cuda, cuda:N, all")
        devices.append("cpu" if device.type == "cpu" else str(device))
    return list(dict.fromkeys(devices))  # cpu and cpu:0 are one device


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv=None) -> int:
    """Run the benchmark for parsed ``args``; return the exit status."""
    devices = _devices(parser, args.device)
    if args.plot:
        _cli.check_plot_file(parser, args.plot)
    _cli.check_distinct_outputs(parser, json=args.json, markdown=args.markdown, plot=args.plot)
    overrides = {
        "T": args.seq,
        "B": args.batch,
        "I": args.input,
        "H": args.hidden,
        "layers": args.layers,
        "bidirectional": [True] if args.bidirectional else None,
        "packed": [True] if args.packed else None,
    }
    cases = build_cases(args.preset, devices, args.dtype, args.mode, args.nonlinearity, overrides)
    for case in cases:
        _cli.check_memory(
            parser, f"case {case.label}", case.memory_bytes(), "--seq, --batch or --hidden"
        )
    min_time = args.min_time if args.min_time is not None else PRESETS[args.preset][1]
    args.min_time = min_time
    count = f"{len(cases)} case" + ("" if len(cases) == 1 else "s")
    seconds = [case_seconds(case, min_time, args.warmup) for case in cases]
    longest = max(range(len(cases)), key=seconds.__getitem__)
    _cli.check_time(
        parser,
        f"the {count} would take",
        sum(seconds),
        args.max_hours * 3600,
        f"the longest, {cases[longest].label}, about {_cli.duration(seconds[longest])}; "
        "estimated generously, as nn.RNN's flops at a low rate and its cost per step",
        f"--max-hours {args.max_hours:g}",
        "--seq, --batch, --hidden or --layers, run fewer cases (--quick, --mode, --dtype), "
        "or raise --max-hours",
    )
    if args.threads is not None:
        if args.threads > (os.cpu_count() or 1):
            print(
                f"fusedrnn bench: warning: --threads {args.threads} is more than the "
                f"{os.cpu_count()} logical CPUs; timings will suffer from oversubscription",
                file=sys.stderr,
            )
        torch.set_num_threads(args.threads)

    meta = _meta(args, argv)
    estimate = _cli.duration(sum(seconds))
    print(f"fusedrnn bench: {count} (about {estimate}); {_machine_line(meta)}", flush=True)
    results = []
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if args.progress is None else args.progress
    with tqdm(total=len(cases), disable=not show, unit="case", file=sys.stderr, leave=False) as bar:
        for case in cases:
            bar.set_description(case.label)
            results.append(run_case(case, min_time, args.warmup, args.seed))
            bar.update()

    # The files first: a reader that has gone (`| head -1`) ends the run at the next print.
    saved = True
    for path, write in ((args.json, write_json), (args.markdown, write_markdown),
                        (args.plot, write_plot)):  # fmt: skip
        if path:
            saved &= _cli.save("fusedrnn bench", path, write, meta, results)
    print(_cli.format_table(HEADERS, table_rows(results)))
    print(
        "ms: median per call (training = forward + backward); speed-up: nn.RNN ms / fusedrnn ms;"
        " GFLOP/s: fusedrnn's; max error: largest |fusedrnn - nn.RNN| over outputs"
        " (and all gradients in training; 'ok (outputs)': relu training in bfloat16, outputs"
        " only; '(float64)': the two disagreed, and the error is against nn.RNN in float64,"
        " which decided; see docs/tools.md)"
    )
    problems = _problems(results)
    for line in problems:
        print(f"fusedrnn bench: {line}", file=sys.stderr)
    return 1 if problems or not saved else 0
