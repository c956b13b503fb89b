"""The benchmark cases (benchmarks/cpu_cases.py) time what they claim to: both modules get
the same weights and inputs, return the same outputs and gradients, and the packed cases
really are variable-length. Run at tiny sizes; the benchmarks themselves are never run
here (timings live in BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from helpers import rel_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cpu_cases import CASES, Case, PackedInput, infer_fn, make_pair, train_fn
from survey import CONFIGS, steps

TINY = [
    Case(3, 8, 5),
    Case(4, 8, 6, layers=2, bidirectional=True),
    Case(3, 8, 5, dtype=torch.float64),
    Case(5, 8, 7, packed=True),
    Case(6, 8, 9, layers=2, bidirectional=True, packed=True),
]


def _grads(module):
    return [p.grad.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("case", TINY, ids=lambda c: c.name)
def test_case_runs_the_same_problem_on_both(case):
    ref, fused, x = make_pair(case)
    # max |got - want| / max |want|, the suite's measure (helpers.rel_error)
    tol = 1e-5 if case.dtype == torch.float32 else 1e-11
    want, got = infer_fn(ref, x)(), infer_fn(fused, x)()
    if case.packed:
        assert isinstance(x, PackedInput)
        assert want[0].batch_sizes.tolist() == got[0].batch_sizes.tolist()
        want, got = (want[0].data, want[1]), (got[0].data, got[1])
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape and rel_error(g, w) < tol
    train_fn(ref, x)()
    train_fn(fused, x)()
    for w, g in zip(_grads(ref), _grads(fused), strict=True):
        assert g.shape == w.shape and rel_error(g, w) < tol


def test_packed_lengths_vary_and_flops_count_only_real_steps():
    case = Case(8, 16, 10, packed=True)
    lengths = case.lengths()
    assert max(lengths) == case.T and min(lengths) >= 1 and len(set(lengths)) > 1
    assert lengths != sorted(lengths, reverse=True)  # packing has to sort them
    padded = Case(8, 16, 10)
    ratio = case.flops(train=True) / padded.flops(train=True)
    assert ratio == pytest.approx(sum(lengths) / (case.T * case.B))


def test_case_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_survey_runs_the_same_problem_on_both(config):
    """benchmarks/survey.py times both modules on one problem (shrunk here): the same
    parameter and input gradients (dropout masks drawn under one seed, as nn.RNN's)."""
    small = dataclasses.replace(
        config, I=min(config.I, 6), H=min(config.H, 5), B=min(config.B, 3), T=min(config.T, 4),
        dtype=torch.float64,
    )  # fmt: skip
    pair = steps(small, train=True)
    assert [type(module) for module, _, _ in pair] == [torch.nn.RNN, fusedrnn.RNN]
    grads = []
    for module, x, run in pair:  # each call must fill its own module's gradients
        torch.manual_seed(1)
        run()
        grads.append([x.grad, *(p.grad for p in module.parameters())])
        assert all(g is not None for g in grads[-1])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)
