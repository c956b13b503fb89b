"""The fused CPU kernels (fusedrnn._C), driven from NumPy, against the float64 reference.

Outputs are NaN-poisoned before every call, so an element the kernel fails to write
shows up as a failure.
"""

import numpy as np
import pytest

from fusedrnn import reference
from helpers import (
    BACKWARD_RTOL,
    FORWARD_RTOL,
    kernel_backward,
    kernel_forward,
    make_problem,
    rel_error,
    rng_for,
)

# (T, B, I, H, lengths): lengths=None is padded input; lengths are given unsorted and
# packed in decreasing order as PackedSequence does.
SHAPES = [
    (1, 1, 1, 1, None),
    (1, 4, 3, 5, None),
    (7, 1, 1, 1, None),
    (5, 3, 7, 1, None),
    (9, 5, 3, 17, None),
    (13, 7, 11, 33, None),
    (4, 2, 129, 151, None),
    (6, 5, 4, 9, [2, 6, 1, 6, 3]),
    (11, 4, 5, 19, [3, 11, 7, 1]),
    (1, 3, 2, 4, [1, 1, 1]),
]
DTYPES = [np.float32, np.float64]


def _projection(p):
    """P = x W_ih^T + b_ih + b_hh in float64, in the [N,H] row layout of the kernels."""
    x = p["x"].astype(np.float64).reshape(-1, p["x"].shape[-1])
    return x @ p["w_ih"].astype(np.float64).T + p["b_ih"] + p["b_hh"].astype(np.float64)


def _run_case(shape, dtype, nonlinearity, reverse, with_h0=True, in_place=False, threads=1):
    T, B, I, H, lengths = shape
    rng = rng_for(shape, dtype, nonlinearity, reverse, with_h0)
    p = make_problem(rng, T, B, I, H, dtype, lengths)
    h0 = p["h0"] if with_h0 else None
    bs = p["batch_sizes"]

    want_h, want_hn = reference.rnn_forward(
        p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], h0, bs, reverse, nonlinearity
    )
    P = _projection(p).astype(dtype)
    h, hn = kernel_forward(P, p["w_hh"], h0, bs, B, reverse, nonlinearity, threads, in_place)
    assert rel_error(h, want_h.reshape(-1, H)) <= FORWARD_RTOL[dtype]
    assert rel_error(hn, want_hn) <= FORWARD_RTOL[dtype]

    G = rng.standard_normal(h.shape).astype(dtype)
    Gn = rng.standard_normal(hn.shape).astype(dtype)
    want = reference.rnn_backward(
        p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], h0, G, Gn, bs, reverse, nonlinearity
    )
    # BPTT runs on the kernel's own h, as it does in training.
    dP, dh0 = kernel_backward(p["w_hh"], h, G, Gn, bs, B, reverse, nonlinearity, threads, in_place)
    assert rel_error(dP, want["dpre"].reshape(-1, H)) <= BACKWARD_RTOL[dtype]
    assert rel_error(dh0, want["h0"]) <= BACKWARD_RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_reference(shape, nonlinearity, reverse, dtype):
    _run_case(shape, dtype, nonlinearity, reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", [SHAPES[5], SHAPES[8]], ids=str)
def test_kernels_without_h0(shape, reverse):
    _run_case(shape, np.float64, "tanh", reverse, with_h0=False)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", [SHAPES[5], SHAPES[8]], ids=str)
def test_kernels_in_place(shape, reverse):
    """h may alias P and dP may alias G (the ops rely on the first)."""
    _run_case(shape, np.float32, "relu", reverse, in_place=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_kernels_long_sequence(nonlinearity, dtype):
    """T = 2000: forward relative error stays within 1e-5 (f32) and 1e-12 (f64)."""
    _run_case((2000, 3, 4, 16, None), dtype, nonlinearity, reverse=False)


def test_absent_gradients_are_zeros():
    """G = nullptr and dhn = nullptr mean zero gradients; dh0 = nullptr is skipped."""
    rng = rng_for("absent")
    p = make_problem(rng, 5, 2, 3, 4, np.float64, [5, 3])
    P = _projection(p)
    h, _ = kernel_forward(P, p["w_hh"], p["h0"], p["batch_sizes"], 2, False, "tanh")
    dP, dh0 = kernel_backward(p["w_hh"], h, None, None, p["batch_sizes"], 2, False, "tanh")
    assert np.all(dP == 0) and np.all(dh0 == 0)
