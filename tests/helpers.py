"""Shared test helpers: the tolerance table, random problems, the NumPy kernel driver."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from fusedrnn import _C

# One tolerance table, keyed by dtype: max |got - want| / max |want| (see rel_error).
FORWARD_RTOL = {np.float32: 1e-5, np.float64: 1e-12}
BACKWARD_RTOL = {np.float32: 1e-5, np.float64: 1e-11}
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def rel_error(got, want) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.size == 0:
        return 0.0
    assert np.all(np.isfinite(got)), "non-finite values (unwritten output?)"
    scale = max(np.max(np.abs(want)), 1e-30)
    return float(np.max(np.abs(got - want)) / scale)


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters: fresh data per case, reproducible."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def lengths_to_batch_sizes(lengths) -> np.ndarray:
    """Packed batch sizes of sequences sorted by decreasing length."""
    lengths = sorted((int(v) for v in lengths), reverse=True)
    return np.array([sum(v > t for v in lengths) for t in range(lengths[0])], dtype=np.int64)


def make_problem(rng, T, B, I, H, dtype, lengths=None):
    """Random layer weights and inputs at the scale of torch.nn.RNN's init.

    Returns a dict with x ([T,B,I] or packed [N,I]), w_ih, w_hh, b_ih, b_hh, h0 and
    batch_sizes (None when padded).
    """
    k = 1.0 / np.sqrt(H)
    batch_sizes = None if lengths is None else lengths_to_batch_sizes(lengths)
    N = T * B if batch_sizes is None else int(batch_sizes.sum())
    x = rng.standard_normal((N, I))
    if batch_sizes is None:
        x = x.reshape(T, B, I)
    return {
        "x": x.astype(dtype),
        "w_ih": rng.uniform(-k, k, (H, I)).astype(dtype),
        "w_hh": rng.uniform(-k, k, (H, H)).astype(dtype),
        "b_ih": rng.uniform(-k, k, H).astype(dtype),
        "b_hh": rng.uniform(-k, k, H).astype(dtype),
        "h0": (0.5 * rng.standard_normal((B, H))).astype(dtype),
        "batch_sizes": batch_sizes,
    }


def _addr(a) -> int:
    return 0 if a is None else a.ctypes.data


def _dtype_name(a) -> str:
    return {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}[a.dtype]


def kernel_forward(
    P, W_hh, h0, batch_sizes, B, reverse, nonlinearity, num_threads=1, in_place=False
):
    """Run _C.rnn_forward on NumPy arrays with NaN-poisoned outputs. P is [N,H]."""
    P = np.ascontiguousarray(P)
    N, H = P.shape
    T = len(batch_sizes) if batch_sizes is not None else N // B
    h = P.copy() if in_place else np.full_like(P, np.nan)
    hn = np.full((B, H), np.nan, dtype=P.dtype)
    bs = None if batch_sizes is None else np.ascontiguousarray(batch_sizes, dtype=np.int64)
    _C.rnn_forward(
        _dtype_name(P),
        T,
        B,
        H,
        _addr(bs),
        reverse,
        nonlinearity,
        _addr(h if in_place else P),
        _addr(np.ascontiguousarray(W_hh)),
        _addr(h0),
        _addr(h),
        _addr(hn),
        num_threads,
    )
    return h, hn


def kernel_backward(
    W_hh, h, G, dhn, batch_sizes, B, reverse, nonlinearity, num_threads=1, in_place=False
):
    """Run _C.rnn_backward on NumPy arrays with NaN-poisoned outputs."""
    N, H = h.shape
    T = len(batch_sizes) if batch_sizes is not None else N // B
    if in_place:
        dP = np.array(G, copy=True)
    else:
        dP = np.full_like(h, np.nan)
    dh0 = np.full((B, H), np.nan, dtype=h.dtype)
    bs = None if batch_sizes is None else np.ascontiguousarray(batch_sizes, dtype=np.int64)
    _C.rnn_backward(
        _dtype_name(h),
        T,
        B,
        H,
        _addr(bs),
        reverse,
        nonlinearity,
        _addr(np.ascontiguousarray(W_hh)),
        _addr(h),
        _addr(dP if in_place else G),
        _addr(dhn),
        _addr(dP),
        _addr(dh0),
        num_threads,
    )
    return dP, dh0
