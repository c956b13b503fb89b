"""fusedrnn.RNN against torch.nn.RNN on configurations outside issue 4's table: relu,
packed and batch_first input, several layers, dropout, input size unlike H, float64,
unbatched input, single steps, very small and very large H, many sequences, a state that
requires grad. A survey for cliffs (a configuration where fusedrnn is slow, or slower than
nn.RNN), not a table of targets.

    python benchmarks/survey.py [--rounds 5] [--only relu,packed] [--cpu-time]

Each configuration: the same weights (``from_torch``) and inputs for both modules; the
two timed in turn three times, each time the fastest of ``--rounds`` repeats of a batch of
calls (~0.15 s), and the fastest of the three kept (preemption on a shared machine only
ever adds time). "train" is forward + backward of ``out.sum() + h_n.sum()`` with the input
requiring grad and the gradients reset with ``set_to_none``, as in ``cpu_cases.train_fn``.

``--cpu-time``: one thread, timed by the process's CPU clock instead of the wall clock, so
that the time the process was not running (a shared host's preemption) is left out; for
comparing two builds of fusedrnn on a noisy machine, not for the speed-up table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    I: int
    H: int
    B: int
    T: int
    layers: int = 1
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    batch_first: bool = False
    packed: bool = False  # lengths drawn from 1..T (one of them T), unsorted
    dtype: torch.dtype = torch.float32
    unbatched: bool = False
    dropout: float = 0.0  # between layers, in training mode
    hx_grad: bool = False  # a given initial state that requires grad


CONFIGS = [
    Config("relu B16-H128-T100", 128, 128, 16, 100, nonlinearity="relu"),
    Config("packed B32-H128-T100", 128, 128, 32, 100, packed=True),
    Config(
        "packed batch_first bidir B32-H64-T50",
        64,
        64,
        32,
        50,
        bidirectional=True,
        batch_first=True,
        packed=True,
    ),
    Config("batch_first B16-H256-T50", 256, 256, 16, 50, batch_first=True),
    Config("3 layers B8-H128-T100", 128, 128, 8, 100, layers=3),
    Config("3 layers dropout 0.3 B8-H128-T100", 128, 128, 8, 100, layers=3, dropout=0.3),
    Config("I16 B8-H256-T100", 16, 256, 8, 100),
    Config("few features I4 B64-H128-T100", 4, 128, 64, 100),
    Config("I1024 B8-H64-T100", 1024, 64, 8, 100),
    Config("float64 B8-H128-T100", 128, 128, 8, 100, dtype=torch.float64),
    Config("unbatched H128-T100", 128, 128, 1, 100, unbatched=True),
    Config("single step B64-H256-T1", 256, 256, 64, 1),
    Config("two steps B1-H64-T2", 64, 64, 1, 2),
    Config("H2048 B4-T10", 2048, 2048, 4, 10),
    Config("many sequences B1024-H32-T50", 32, 32, 1024, 50),
    Config("many sequences B4096-H16-T20", 16, 16, 4096, 20),
    Config("hx requires grad B8-H128-T100", 128, 128, 8, 100, hx_grad=True),
    Config("H1 B64-T200", 1, 1, 64, 200),
    Config("H3 I5 B2-T1000", 5, 3, 2, 1000),
    Config("relu bidir B7-H100-T33", 100, 100, 7, 33, bidirectional=True, nonlinearity="relu"),
    Config("B128-H512-T20", 512, 512, 128, 20),
]


_CLOCK = time.perf_counter  # time.process_time under --cpu-time


def _best_of(fn, rounds: int, budget: float = 0.15) -> float:
    """Seconds per call: the fastest of ``rounds`` batches of calls, each ~``budget`` s."""
    fn()
    t0 = _CLOCK()
    fn()
    calls = max(1, int(budget / max(_CLOCK() - t0, 1e-6)))
    best = float("inf")
    for _ in range(rounds):
        t0 = _CLOCK()
        for _ in range(calls):
            fn()
        best = min(best, (_CLOCK() - t0) / calls)
    return best


def _step(module, x, h0, lengths, config: Config, train: bool):
    """One call of ``module`` as the benchmark times it."""

    def run():
        inp = x
        if config.packed:
            inp = pack_padded_sequence(x, lengths, config.batch_first, enforce_sorted=False)
        args = (inp,) if h0 is None else (inp, h0)
        if not train:
            with torch.no_grad():
                module(*args)
            return
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, h_n = module(*args)
        (getattr(out, "data", out).sum() + h_n.sum()).backward()

    return run


def problem(config: Config):
    """``(nn_module, fused_module, x, h0, lengths)``: the same weights for both; ``h0`` is
    None unless the configuration gives one, ``lengths`` used when packed."""
    torch.manual_seed(0)
    ref = torch.nn.RNN(config.I, config.H, config.layers, nonlinearity=config.nonlinearity,
                       batch_first=config.batch_first, bidirectional=config.bidirectional,
                       dropout=config.dropout, dtype=config.dtype)  # fmt: skip
    ours = fusedrnn.RNN.from_torch(ref)
    states = config.layers * (2 if config.bidirectional else 1)
    if config.unbatched:
        shape, state = (config.T, config.I), (states, config.H)
    elif config.batch_first:
        shape, state = (config.B, config.T, config.I), (states, config.B, config.H)
    else:
        shape, state = (config.T, config.B, config.I), (states, config.B, config.H)
    x = torch.randn(shape, dtype=config.dtype)
    h0 = torch.randn(state, dtype=config.dtype, requires_grad=True) if config.hx_grad else None
    lengths = torch.randint(
        1, config.T + 1, (config.B,), generator=torch.Generator().manual_seed(0)
    )
    lengths[0] = config.T
    return ref, ours, x, h0, lengths


def steps(config: Config, train: bool) -> list:
    """``[(module, x, call)]`` for nn.RNN and fusedrnn.RNN on the same problem: the timed
    call, which in training mode leaves its gradients in ``module`` and ``x.grad``."""
    ref, ours, x0, h0, lengths = problem(config)
    result = []
    for module in (ref, ours):
        module.train(train and config.dropout > 0)
        x = x0.clone().requires_grad_(train)
        result.append((module, x, _step(module, x, h0, lengths, config, train)))
    return result


def measure(config: Config, rounds: int) -> dict[str, tuple[float, float]]:
    """``{"infer": (nn_ms, fused_ms), "train": (...)}`` for one configuration: the two
    timed in turn three times, the fastest kept."""
    result = {}
    for mode in ("infer", "train"):
        runs = [run for _, _, run in steps(config, mode == "train")]
        times = [[], []]
        for _ in range(3):
            for k, run in enumerate(runs):
                times[k].append(_best_of(run, rounds))
        result[mode] = (min(times[0]) * 1e3, min(times[1]) * 1e3)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated parts of configuration names")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, the process CPU clock (see the docstring)")  # fmt: skip
    args = ap.parse_args()
    if args.cpu_time:
        global _CLOCK
        _CLOCK = time.process_time
        torch.set_num_threads(1)
    wanted = [s for s in args.only.split(",") if s]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fusedrnn ISA {fusedrnn.info()['cpu_isa']}, "
          f"clock {'process CPU' if args.cpu_time else 'wall'}")  # fmt: skip
    print("| configuration | nn.RNN infer ms | fusedrnn infer ms | speed-up | nn.RNN train ms "
          "| fusedrnn train ms | speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for config in CONFIGS:
        if wanted and not any(w in config.name for w in wanted):
            continue
        r = measure(config, args.rounds)
        (ni, fi), (nt, ft) = r["infer"], r["train"]
        print(f"| {config.name} | {ni:.3f} | {fi:.3f} | {ni / fi:.2f}x | {nt:.3f} | {ft:.3f} "
              f"| {nt / ft:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
