"""NumPy float64 reference for one Elman RNN layer in one direction: the oracle.

Deliberately plain: every sequence is run on its own with a Python loop over its steps,
so the reference shares no layout logic with the kernels it checks. Sizes: T steps,
B batch, I input features, H hidden units.

Input layouts (the same as the kernels'):

* padded: ``batch_sizes is None`` and ``x`` is ``[T, B, I]``; outputs ``h`` are ``[T, B, H]``.
* packed: ``x`` is ``[N, I]`` time-major packed data with a non-increasing ``batch_sizes``
  ``[T]`` (the ``PackedSequence`` layout); outputs ``h`` are ``[N, H]``.

The forward direction walks a sequence from its first step to its last; ``reverse=True``
walks it from its last step to its first. ``hn`` is the state after the last step walked.

Every size is checked (a wrong one raises ValueError naming the argument), since an oracle
that broadcast a bias or read part of a state would agree with a kernel for the wrong
reason.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rnn_backward", "rnn_forward", "sequence_rows"]


def _activation(nonlinearity: str):
    # (phi, backward): backward(e, h) = e phi'(pre) from the output h, as torch computes it
    # (relu selects: 0 where h <= 0, else e, so NaN states and infinite e behave as there).
    if nonlinearity == "tanh":
        return np.tanh, lambda e, h: e * (1.0 - h * h)
    if nonlinearity == "relu":
        return (lambda v: np.maximum(v, 0.0)), (lambda e, h: np.where(h <= 0.0, 0.0, e))
    raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")


def sequence_rows(batch_sizes, B: int | None = None, T: int | None = None) -> list[list[int]]:
    """Row indices of each sequence, in time order.

    For packed data, sequence ``b`` occupies row ``off_t + b`` at every step ``t`` with
    ``batch_sizes[t] > b``. For padded data (``batch_sizes is None``) pass ``B`` and
    ``T``: row ``t * B + b``.
    """
    if batch_sizes is None:
        for name, v in (("B", B), ("T", T)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0 for padded data (batch_sizes "
                                 f"None), got {v!r}")  # fmt: skip
        return [[t * B + b for t in range(T)] for b in range(B)]
    if B is not None or T is not None:
        raise ValueError("B and T: given with batch_sizes, which sets them (pass one or the "
                         "other)")  # fmt: skip
    sizes = [int(v) for v in _batch_sizes(batch_sizes)]
    rows: list[list[int]] = [[] for _ in range(sizes[0])]
    offset = 0
    for size in sizes:
        for b in range(size):
            rows[b].append(offset + b)
        offset += size
    return rows


def _batch_sizes(batch_sizes) -> np.ndarray:
    """``batch_sizes`` (a list, a NumPy array, a torch tensor on any device) as a checked
    1-D integer array: non-empty, positive, non-increasing."""
    if hasattr(batch_sizes, "untyped_storage"):  # a torch tensor
        _check_memory("batch_sizes", batch_sizes)
    try:  # (tolist: a torch tensor on any device, a NumPy array or a list alike)
        sizes = np.asarray(batch_sizes.tolist() if hasattr(batch_sizes, "tolist") else batch_sizes)
    except (TypeError, ValueError):  # ragged nesting
        sizes = np.asarray([], dtype=object)
    if (sizes.ndim != 1 or not sizes.size or not np.issubdtype(sizes.dtype, np.integer)
            or sizes[-1] < 1 or np.any(np.diff(sizes) > 0)):  # fmt: skip
        shown = sizes.tolist() if sizes.dtype != object else batch_sizes
        raise ValueError("batch_sizes: expected a non-empty 1-D integer sequence of positive, "
                         f"non-increasing sizes, got {shown!r}")  # fmt: skip
    return sizes


def _check_memory(name: str, t) -> None:
    """A torch tensor whose storage was freed or shrunk below its elements (torch's copy
    would read past its end: garbage) is refused by name."""
    import torch  # (there: t is a torch tensor)

    from . import _cuda

    if t.layout == torch.strided and not t.is_meta and _cuda.freed(t):
        raise ValueError(f"{name}{_cuda.memory_problem(t)}")


def _array(name: str, a) -> np.ndarray:
    """``a`` (a NumPy array, nested lists, a torch tensor of any dtype, device or grad) as a
    float64 array, or a ValueError naming it: complex values, text or ragged nesting."""
    if hasattr(a, "detach") and hasattr(a, "is_complex"):  # a torch tensor
        if a.is_complex():
            raise ValueError(f"{name}: expected real numbers, got a complex tensor")
        _check_memory(name, a)
        return a.detach().cpu().double().numpy()
    try:
        if np.iscomplexobj(a):
            raise ValueError("complex")
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected real numbers (an array, a tensor or nested lists), "
                         f"got {type(a).__name__} ({e})") from None  # fmt: skip


def _flag(name: str, v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name}: expected a bool, got {v!r}")


def _shape(name: str, a, want: tuple[int, ...], what: str) -> np.ndarray:
    """``a`` as a float64 array of shape ``want``, or a ValueError naming it."""
    a = _array(name, a)
    if a.shape != want:
        raise ValueError(f"{name}: expected shape {what} = {want}, got {a.shape}")
    return a


def _rows(name: str, a, N: int, H: int, padded) -> np.ndarray:
    """``a`` (the layout of rnn_forward's ``h``, or padded its rows) as float64 [N, H] rows."""
    a = _array(name, a)
    if a.shape == (N, H) or (padded is not None and a.shape == (*padded, H)):
        return a.reshape(N, H)
    want = f"[N, H] = {(N, H)}" if padded is None else f"[T, B, H] = {(*padded, H)} or [T * B, H]"
    raise ValueError(f"{name}: expected shape {want} (the layout of h), got {a.shape}")


def _layer(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes):
    """The layer's arguments checked and as float64 arrays: ``(x [N, I], w_ih, w_hh, bias
    [H] (b_ih + b_hh), h0 [B, H], rows of each sequence, padded shape (T, B) or None)``.
    Every size is checked here, so that a wrong one is named instead of broadcast or
    partly read."""
    w_hh = _array("w_hh", w_hh)
    if w_hh.ndim != 2 or w_hh.shape[0] != w_hh.shape[1]:
        raise ValueError(f"w_hh: expected a square [H, H] matrix, got shape {w_hh.shape}")
    H = w_hh.shape[0]
    x = _array("x", x)
    if batch_sizes is None:
        if x.ndim != 3:
            raise ValueError(f"x: expected padded input [T, B, I] (batch_sizes None), got "
                             f"shape {x.shape}")  # fmt: skip
        T, B, I = x.shape
        xf, rows, padded = x.reshape(T * B, I), sequence_rows(None, B=B, T=T), (T, B)
    else:
        sizes = _batch_sizes(batch_sizes)
        N = int(sizes.sum())
        if x.ndim != 2 or x.shape[0] != N:
            raise ValueError(f"x: expected packed input [N, I] with N = sum(batch_sizes) = {N}, "
                             f"got shape {x.shape}")  # fmt: skip
        xf, rows, padded, I = x, sequence_rows(sizes), None, x.shape[1]
    w_ih = _shape("w_ih", w_ih, (H, I), "[H, I]")
    bias = np.zeros(H)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            bias = bias + _shape(name, b, (H,), "[H]")
    B = len(rows)
    h0 = np.zeros((B, H)) if h0 is None else _shape("h0", h0, (B, H), "[B, H]")
    return xf, w_ih, w_hh, bias, h0, rows, padded


def rnn_forward(
    x,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    h0=None,
    batch_sizes=None,
    reverse=False,
    nonlinearity="tanh",
):
    """Return ``(h, hn)``: every hidden state (layout of ``x``) and the final states ``[B, H]``."""
    phi, _ = _activation(nonlinearity)
    reverse = _flag("reverse", reverse)
    xf, w_ih, w_hh, bias, h0, rows, padded_shape = _layer(x, w_ih, w_hh, b_ih, b_hh, h0,
                                                          batch_sizes)  # fmt: skip
    H, B = w_hh.shape[0], len(rows)
    h = np.full((xf.shape[0], H), np.nan)
    hn = np.empty((B, H))
    for b, seq in enumerate(rows):
        state = h0[b]
        for r in reversed(seq) if reverse else seq:
            state = phi(w_ih @ xf[r] + w_hh @ state + bias)
            h[r] = state
        hn[b] = state
    if padded_shape is not None:
        h = h.reshape(*padded_shape, H)
    return h, hn


def rnn_backward(
    x,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    h0=None,
    grad_h=None,
    grad_hn=None,
    batch_sizes=None,
    reverse=False,
    nonlinearity="tanh",
    h=None,
):
    """Backpropagation through time for ``L`` with ``dL/dh = grad_h`` and ``dL/dhn = grad_hn``.

    Returns a dict with ``x, w_ih, w_hh, b_ih, b_hh, h0`` gradients (``b_*`` are the same
    vector, the sum of the pre-activation gradients) and ``dpre``, the pre-activation
    gradients in the layout of ``h``.

    ``h``: the hidden states to differentiate at, in the layout of :func:`rnn_forward`'s
    (default: computed here in float64). A kernel that stores its states in a lower
    precision and runs BPTT on what it stored is compared with its own ``h`` here: near
    ``|h| = 1`` the derivative ``1 - h^2`` of tanh magnifies a rounding of ``h`` many times.
    """
    _, backward = _activation(nonlinearity)
    reverse = _flag("reverse", reverse)
    xf, w_ih, w_hh, _, h0, rows, padded_shape = _layer(x, w_ih, w_hh, b_ih, b_hh, h0,
                                                       batch_sizes)  # fmt: skip
    H, B, N = w_hh.shape[0], len(rows), xf.shape[0]
    if h is None:
        h, _ = rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)
    # h and grad_h: in rnn_forward's layout of h, or (padded) as its [T * B, H] rows.
    # (explicit sizes: -1 cannot be inferred for an empty batch)
    hf = _rows("h", h, N, H, padded_shape)
    gh = np.zeros_like(hf) if grad_h is None else _rows("grad_h", grad_h, N, H, padded_shape)
    ghn = np.zeros((B, H)) if grad_hn is None else _shape("grad_hn", grad_hn, (B, H), "[B, H]")

    dx = np.zeros_like(xf)
    dw_ih, dw_hh, db = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(H)
    dh0 = np.empty((B, H))
    dpre = np.zeros_like(hf)
    for b, seq in enumerate(rows):
        walked = list(reversed(seq)) if reverse else list(seq)
        carry = ghn[b].copy()  # dL/dh of the state after the step being undone
        for i in range(len(walked) - 1, -1, -1):
            r = walked[i]
            prev = hf[walked[i - 1]] if i > 0 else h0[b]
            d = backward(gh[r] + carry, hf[r])
            dpre[r] = d
            dx[r] = w_ih.T @ d
            dw_ih += np.outer(d, xf[r])
            dw_hh += np.outer(d, prev)
            db += d
            carry = w_hh.T @ d
        dh0[b] = carry
    if padded_shape is not None:
        dx = dx.reshape(*padded_shape, xf.shape[1])
        dpre = dpre.reshape(*padded_shape, H)
    return {
        "x": dx,
        "w_ih": dw_ih,
        "w_hh": dw_hh,
        "b_ih": db,
        "b_hh": db.copy(),
        "h0": dh0,
        "dpre": dpre,
    }
