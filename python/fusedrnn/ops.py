"""torch custom ops for one Elman RNN layer in one direction, with autograd and fake kernels.

The two sequential recurrences run in the fused kernels of ``fusedrnn._C`` (CPU) or
``fusedrnn._C_cuda`` (CUDA, through ``fusedrnn._cuda``); everything
else is a single large GEMM or reduction per call, done by torch:

    P     = x W_ih^T + b_ih + b_hh                      (one GEMM for all steps)
    h_t   = phi(P_t + h_prev W_hh^T)                    rnn_layer_forward  (fused kernel)
    d_t   = (dL/dh_t + d_next W_hh) * phi'(h_t)         rnn_layer_backward (fused kernel)
    dx = d W_ih,  dW_ih = d^T x,  dW_hh = d^T h_prev,  db = sum d

Layout: time-major rows, ``x`` is ``[N, I]``. ``batch_sizes`` is a CPU int64 tensor:
empty for padded input (``N = T*B`` rows, step ``t`` at rows ``t*B .. t*B+B-1``), or the
``PackedSequence`` batch sizes ``[T]`` (non-increasing, summing to ``N``). It stays a CPU
tensor for CUDA inputs too, as in PyTorch.

:func:`check_layer_args` is the one place that validates tensors before they reach C++.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from . import _C, _cuda

__all__ = ["check_layer_args", "rnn_layer", "rnn_layer_backward", "rnn_layer_forward"]

NONLINEARITIES = ("tanh", "relu")
_KERNEL_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _require(condition: bool, message: str, exc: type[Exception] = ValueError) -> None:
    if not condition:
        raise exc(f"fusedrnn: {message}")


def _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes) -> dict[str, Tensor]:
    """The given tensor arguments by name, after checking that each is a Tensor."""
    tensors = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "h0": h0, "batch_sizes": batch_sizes}
    if b_ih is not None:
        tensors["b_ih"] = b_ih
    if b_hh is not None:
        tensors["b_hh"] = b_hh
    for name, t in tensors.items():
        _require(
            isinstance(t, Tensor),
            f"{name} must be a torch.Tensor, got {type(t).__name__}",
            TypeError,
        )
    return tensors


def check_layer_args(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    h0: Tensor,
    batch_sizes: Tensor,
    nonlinearity: str,
    *,
    check_values: bool = True,
) -> tuple[int, int, int]:
    """Validate one layer-direction call; return ``(T, B, H)``.

    Raises ``TypeError`` for wrong types and dtypes and ``ValueError`` for wrong shapes,
    devices and ``batch_sizes`` values, each naming the argument, the expected and the
    given value. ``check_values=False`` skips the checks that read ``batch_sizes`` data
    (fake tensors under ``torch.compile`` have none).
    """
    tensors = _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes)
    _require(
        nonlinearity in NONLINEARITIES,
        f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}",
    )

    on_cuda = x.device.type == "cuda"
    if on_cuda:
        _require(
            x.dtype in _cuda.KERNEL_DTYPES,
            f"x must have dtype float32, float64, bfloat16 or float16 on CUDA, got {x.dtype}",
            TypeError,
        )
    else:
        _require(
            x.dtype in _KERNEL_DTYPES,
            f"x must have dtype float32 or float64, got {x.dtype}",
            TypeError,
        )
    for name, t in tensors.items():
        if name != "batch_sizes":
            _require(
                t.dtype == x.dtype,
                f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}",
                TypeError,
            )
            _require(
                t.device == x.device,
                f"{name} must be on the device of x ({x.device}), got {t.device}",
            )
    _require(
        x.device.type in ("cpu", "cuda"), f"x must be a CPU or CUDA tensor, got device {x.device}"
    )
    _require(
        not on_cuda or _cuda.available(),
        "x is a CUDA tensor but fusedrnn was built without its CUDA kernels "
        "(reinstall with nvcc on the PATH and FUSEDRNN_CUDA=ON)",
        RuntimeError,
    )

    _require(x.dim() == 2, f"x must be 2-D [N, I], got shape {_shape(x)}")
    N, I = x.shape
    _require(
        w_hh.dim() == 2 and w_hh.shape[0] == w_hh.shape[1] and w_hh.shape[0] > 0,
        f"w_hh must be a square 2-D tensor [H, H] with H >= 1, got shape {_shape(w_hh)}",
    )
    H = w_hh.shape[0]
    _require(I > 0, f"x must have at least one feature column, got shape {_shape(x)}")
    _require(
        w_ih.dim() == 2 and _shape(w_ih) == (H, I),
        f"w_ih must have shape [H, I] = {(H, I)}, got {_shape(w_ih)}",
    )
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            _require(_shape(b) == (H,), f"{name} must have shape [H] = {(H,)}, got {_shape(b)}")
    _require(
        h0.dim() == 2 and h0.shape[1] == H and h0.shape[0] > 0,
        f"h0 must have shape [B, H] with B >= 1 and H = {H}, got {_shape(h0)}",
    )
    B = h0.shape[0]

    _require(
        batch_sizes.dtype == torch.int64,
        f"batch_sizes must have dtype int64, got {batch_sizes.dtype}",
        TypeError,
    )
    _require(
        batch_sizes.device.type == "cpu",
        f"batch_sizes must be a CPU tensor, got device {batch_sizes.device}",
    )
    _require(batch_sizes.dim() == 1, f"batch_sizes must be 1-D, got shape {_shape(batch_sizes)}")
    if batch_sizes.numel() == 0:
        _require(
            N > 0 and N % B == 0,
            f"padded x must have T*B rows with T >= 1 and B = {B} (from h0), got {N} rows",
        )
        return N // B, B, H
    T = batch_sizes.shape[0]
    if check_values:
        sizes = batch_sizes.tolist()
        _require(sizes[0] == B, f"batch_sizes[0] must equal B = {B} (from h0), got {sizes[0]}")
        _require(sizes[-1] >= 1, f"batch_sizes must be >= 1 everywhere, got {sizes}")
        _require(
            all(a >= b for a, b in itertools.pairwise(sizes)),
            f"batch_sizes must be non-increasing, got {sizes}",
        )
        _require(
            sum(sizes) == N, f"batch_sizes must sum to the rows of x ({N}), got sum {sum(sizes)}"
        )
    return T, B, H


def _combined_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    if b_ih is None:
        return b_hh
    if b_hh is None:
        return b_ih
    return b_ih + b_hh


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


@torch.library.custom_op("fusedrnn::rnn_layer_forward", mutates_args=())
def rnn_layer_forward(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    h0: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction: returns ``(h [N, H], hn [B, H])``."""
    T, B, H = check_layer_args(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, nonlinearity)
    x, w_ih, w_hh, h0 = x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), h0.contiguous()
    bias = _combined_bias(b_ih, b_hh)
    # P = x W_ih^T + b: a fresh contiguous [N, H]; the kernel overwrites it with h in place.
    P = torch.addmm(bias, x, w_ih.t()) if bias is not None else torch.mm(x, w_ih.t())
    hn = torch.empty_like(h0)
    if x.is_cuda:
        _cuda.rnn_forward(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, P, hn)
        return P, hn
    _C.rnn_forward(
        _KERNEL_DTYPES[x.dtype],
        T,
        B,
        H,
        _addr(batch_sizes if batch_sizes.numel() else None),
        reverse,
        nonlinearity,
        P.data_ptr(),
        w_hh.data_ptr(),
        h0.data_ptr(),
        P.data_ptr(),
        hn.data_ptr(),
        torch.get_num_threads(),
    )
    return P, hn


@rnn_layer_forward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity):
    check_layer_args(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, nonlinearity, check_values=False)
    return x.new_empty((x.shape[0], w_hh.shape[0])), torch.empty_like(h0)


@torch.library.custom_op("fusedrnn::rnn_layer_backward", mutates_args=())
def rnn_layer_backward(
    w_hh: Tensor,
    h: Tensor,
    grad_h: Tensor,
    grad_hn: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    nonlinearity: str,
) -> tuple[Tensor, Tensor]:
    """BPTT for one layer-direction: returns ``(dP [N, H], dh0 [B, H])``.

    ``dP`` is the gradient of the pre-activations; the caller turns it into the input,
    weight and bias gradients with GEMMs.
    """
    # The forward op's checks apply with h in the place of x and grad_hn in that of h0.
    T, B, H = check_layer_args(h, w_hh, w_hh, None, None, grad_hn, batch_sizes, nonlinearity)
    _require(
        _shape(grad_h) == _shape(h),
        f"grad_h must have the shape of h {_shape(h)}, got {_shape(grad_h)}",
    )
    _require(
        grad_h.dtype == h.dtype, f"grad_h must have dtype {h.dtype}, got {grad_h.dtype}", TypeError
    )
    w_hh, h, grad_h, grad_hn = (t.contiguous() for t in (w_hh, h, grad_h, grad_hn))
    dP = torch.empty_like(h)
    dh0 = torch.empty_like(grad_hn)
    if h.is_cuda:
        args = (w_hh, h, grad_h, grad_hn, dP, dh0)
        _cuda.rnn_backward(T, B, H, batch_sizes, reverse, nonlinearity, *args)
        return dP, dh0
    _C.rnn_backward(
        _KERNEL_DTYPES[h.dtype],
        T,
        B,
        H,
        _addr(batch_sizes if batch_sizes.numel() else None),
        reverse,
        nonlinearity,
        w_hh.data_ptr(),
        h.data_ptr(),
        grad_h.data_ptr(),
        grad_hn.data_ptr(),
        dP.data_ptr(),
        dh0.data_ptr(),
        torch.get_num_threads(),
    )
    return dP, dh0


@rnn_layer_backward.register_fake
def _(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity):
    check_layer_args(
        h, w_hh, w_hh, None, None, grad_hn, batch_sizes, nonlinearity, check_values=False
    )
    return torch.empty_like(h), torch.empty_like(grad_hn)


def _prev_state_grad(dP: Tensor, h: Tensor, h0: Tensor, batch_sizes: Tensor, reverse: bool):
    """dW_hh = sum over rows of d_row^T h_prev(row), as GEMMs.

    h_prev of a row is the state the forward pass came from: the row of the same sequence
    at the step walked before it, or h0 where the sequence started.
    """
    B = h0.shape[0]
    if batch_sizes.numel() == 0:  # padded: contiguous blocks, no gather needed
        if reverse:
            return dP[:-B].t() @ h[B:] + dP[-B:].t() @ h0
        return dP[B:].t() @ h[:-B] + dP[:B].t() @ h0
    N = h.shape[0]
    T = batch_sizes.shape[0]
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    step = torch.repeat_interleave(torch.arange(T), batch_sizes)  # [N] step of each row
    seq = torch.arange(N) - offsets[step]  # [N] sequence of each row
    if reverse:
        nxt = (step + 1).clamp(max=T - 1)
        continues = (step + 1 < T) & (seq < batch_sizes[nxt])
        index = torch.where(continues, offsets[nxt] + seq, N + seq)
    else:
        index = torch.where(step > 0, offsets[(step - 1).clamp(min=0)] + seq, N + seq)
    h_prev = torch.cat([h, h0]).index_select(0, index.to(h.device))
    return dP.t() @ h_prev


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, _b_ih, _b_hh, h0, batch_sizes, reverse, nonlinearity = inputs
    h, _ = output
    needs = ctx.needs_input_grad
    ctx.save_for_backward(
        x if needs[1] else None, w_ih if needs[0] else None, w_hh, h0, h, batch_sizes
    )
    ctx.reverse = reverse
    ctx.nonlinearity = nonlinearity


def _backward(ctx, grad_h, grad_hn):
    x, w_ih, w_hh, h0, h, batch_sizes = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    if grad_hn is None:
        grad_hn = torch.zeros_like(h0)
    dP, dh0 = rnn_layer_backward(
        w_hh, h, grad_h, grad_hn, batch_sizes, ctx.reverse, ctx.nonlinearity
    )
    dx = dP @ w_ih if needs[0] else None
    dw_ih = dP.t() @ x if needs[1] else None
    dw_hh = _prev_state_grad(dP, h, h0, batch_sizes, ctx.reverse) if needs[2] else None
    db = dP.sum(0) if needs[3] or needs[4] else None
    # Each bias gets its own tensor: AccumulateGrad may adopt it as that parameter's .grad.
    db_hh = (db.clone() if needs[3] else db) if needs[4] else None
    return (
        dx,
        dw_ih,
        dw_hh,
        db if needs[3] else None,
        db_hh,
        dh0 if needs[5] else None,
        None,
        None,
        None,
    )


rnn_layer_forward.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad_dP, grad_dh0):
    raise RuntimeError(
        "fusedrnn: double backward (gradients of gradients) through the RNN is not supported; "
        "use torch.nn.RNN for higher-order derivatives"
    )


rnn_layer_backward.register_autograd(
    _no_double_backward, setup_context=lambda ctx, inputs, output: None
)


def rnn_layer(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse=False, nonlinearity="tanh"):
    """Differentiable one-layer, one-direction Elman RNN. See the module docstring."""
    _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes)
    return rnn_layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)
