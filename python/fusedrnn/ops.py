"""torch custom ops for one Elman RNN layer in one direction, with autograd and fake kernels.

The two sequential recurrences run in the fused kernels of ``fusedrnn._C`` (CPU) or
``fusedrnn._C_cuda`` (CUDA, through ``fusedrnn._cuda``); everything
else is a single large GEMM or reduction per call. On the CPU (float32, float64, and
bfloat16 where the CPU has AVX512_BF16) each pass is one call into ``_C``
(``layer_forward``; ``layer_backward`` behind ``rnn_layer_grads``) whose GEMMs run on the
recurrence's micro-kernel (AVX-512, AVX2 or portable, chosen at run time): MKL picks AVX2
kernels on AMD CPUs, and its sums may change with the thread count, ours do not.
On CUDA the GEMMs are torch's:

    P     = x W_ih^T + b_ih + b_hh                      (one GEMM for all steps)
    h_t   = phi(P_t + h_prev W_hh^T)                    rnn_layer_forward  (fused kernel)
    d_t   = (dL/dh_t + d_next W_hh) * phi'(h_t)         rnn_layer_backward (fused kernel)
    dx = d W_ih,  dW_ih = d^T x,  dW_hh = d^T h_prev,  db = sum d

Layout: time-major rows, ``x`` is ``[N, I]``. ``batch_sizes`` is a CPU int64 tensor:
empty for padded input (``N = T*B`` rows, step ``t`` at rows ``t*B .. t*B+B-1``), or the
``PackedSequence`` batch sizes ``[T]`` (non-increasing, summing to ``N``). It stays a CPU
tensor for CUDA inputs too, as in PyTorch.

Derivatives: the BPTT is linear in the output gradients, and its own derivative is the
same recurrence walked the other way on ``W_hh^T`` (:class:`_BPTT`); the forward-mode
tangent ``u_t = phi'(h_t) (Q_t + u_prev W_hh^T)`` is that recurrence too
(:class:`_FuncLayer`). So a recorded backward (``create_graph=True``, torch.func), forward
mode and their compositions all run on the BPTT kernel and match torch.nn.RNN.

:func:`check_layer_args` validates tensors before they reach C++, except on the modules'
lean eager path, which checks the same properties itself (:func:`fast_input_cpu`) and sends
whatever it does not fully accept to the general path.

The backward reads the layer's output as its saved states. A caller may change that output
in place before the backward, as torch.nn.RNN allows: the eager backward then computes the
states again (:func:`_keep_for_recompute`, :func:`_saved_or_recomputed`), and a graph
compiled for training, or exported, returns a copy of it (:func:`private_when_compiled`).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
import weakref

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad
from torch.utils import _python_dispatch
from torch.utils.flop_counter import register_flop_formula

from . import _C, _cuda

__all__ = [
    "check_layer_args",
    "rnn_layer",
    "rnn_layer_backward",
    "rnn_layer_forward",
    "rnn_layer_grads",
]

NONLINEARITIES = ("tanh", "relu")
_NO_STEPS = torch.empty(0, dtype=torch.int64)  # batch_sizes of padded input
# bfloat16 on a CPU with AVX512_BF16 (_C.cpu_has_bf16(); false under FUSEDRNN_CPU_ISA=avx2
# or =generic, which cap it):
# fusedrnn's bfloat16 kernels, the recurrences and every GEMM around them (bfloat16
# operands and state, float32 sums, one rounding per stored value), through the same
# one-call-per-pass layer entry points as float32 and float64. (Tests and benchmarks take
# the entry out of KERNEL_DTYPES for bfloat16 as on a CPU without them.)
KERNEL_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
if _C.cpu_has_bf16():
    KERNEL_DTYPES[torch.bfloat16] = "bfloat16"
# Dtypes the fused CPU layer kernels do not take (float16; bfloat16 without AVX512_BF16):
# stored in that dtype, computed by the float32 kernels (float32 state and accumulation, as
# under the autocast policy at the end).
_FLOAT32_COMPUTE_DTYPES = (torch.bfloat16, torch.float16)


def _fail(exc: type[Exception], message: str) -> None:
    raise exc(f"fusedrnn: {message}")


def _refuse_flag(name: str, value) -> None:
    """A yes/no argument (``reverse``, ``need_dx``...) that is not a bool: read as a truth
    value, ``None`` or ``0`` would run the other direction silently. NumPy bools and
    one-element tensors are refused too, as torch's functions refuse them for theirs
    (``torch.sort(x, descending=numpy.True_)``). Callers test ``value is not True and value
    is not False`` themselves: this formats the message."""
    kind = type(value)
    given = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    _fail(TypeError, f"{name} must be a bool (True or False), got {given}")


# The names check_layer_args gives its arguments in messages ("cols": what x's columns
# are); callers that pass other tensors in those places rename them (_BACKWARD_NAMES).
_ARG_NAMES = {"x": "x", "w_ih": "w_ih", "w_hh": "w_hh", "b_ih": "b_ih", "b_hh": "b_hh",
              "h0": "h0", "cols": "I"}  # fmt: skip


def _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, names=None) -> None:
    """Every tensor argument must be a Tensor (optional biases may be None); ``names`` as
    in :func:`check_layer_args`."""
    if (
        isinstance(x, Tensor)
        and isinstance(w_ih, Tensor)
        and isinstance(w_hh, Tensor)
        and isinstance(h0, Tensor)
        and isinstance(batch_sizes, Tensor)
        and (b_ih is None or isinstance(b_ih, Tensor))
        and (b_hh is None or isinstance(b_hh, Tensor))
    ):
        return
    n = _ARG_NAMES if names is None else {**_ARG_NAMES, **names}
    for name, t in (
        (n["x"], x),
        (n["w_ih"], w_ih),
        (n["w_hh"], w_hh),
        (n["h0"], h0),
        ("batch_sizes", batch_sizes),
    ):
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in ((n["b_ih"], b_ih), (n["b_hh"], b_hh)):
        if t is not None and not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor or None, got {type(t).__name__}")


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
    names: dict[str, str] | None = None,
) -> tuple[int, int, int]:
    """Validate one layer-direction call; return ``(T, B, H)``.

    Raises ``TypeError`` for wrong types and dtypes and ``ValueError`` for wrong shapes,
    devices and ``batch_sizes`` values, each naming the argument, the expected and the
    given value (and ``RuntimeError`` for CUDA tensors where the CUDA kernels were not
    built). ``check_values=False`` skips the checks that read ``batch_sizes`` data
    (fake tensors under ``torch.compile`` have none). Messages are only formatted on
    failure: this runs on every call. ``names`` renames arguments in messages for
    callers that pass other tensors in these places (the backward op).
    """
    _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, names)
    n = _ARG_NAMES if names is None else {**_ARG_NAMES, **names}
    tensors = (("x", x), ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh),
               ("h0", h0), ("batch_sizes", batch_sizes))  # fmt: skip
    for name, t in tensors:
        if t is not None and t.is_nested:  # (its .shape raises torch's internal error)
            _fail(TypeError, f"{n.get(name, name)} must be a plain tensor, got a nested tensor")
    if nonlinearity not in NONLINEARITIES:
        _fail(ValueError, f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")

    dtype, device = x.dtype, x.device
    on_cuda = device.type == "cuda"
    if on_cuda:
        if dtype not in _cuda.KERNEL_DTYPES:
            _fail(
                TypeError,
                f"{n['x']} must have dtype float32, float64, bfloat16 or float16 on CUDA, "
                f"got {dtype}",
            )
    elif dtype not in KERNEL_DTYPES and dtype not in _FLOAT32_COMPUTE_DTYPES:
        _fail(
            TypeError,
            f"{n['x']} must have dtype float32, float64, bfloat16 or float16, got {dtype}",
        )
    if x.layout != torch.strided:
        _fail(TypeError, f"{n['x']} must be a dense (strided) tensor, got layout {x.layout}")
    for t in (w_ih, w_hh, b_ih, b_hh, h0):
        if t is not None and (t.layout != torch.strided or t.dtype != dtype or t.device != device):
            _check_like_x(n, dtype, device, w_ih, w_hh, b_ih, b_hh, h0)
    # Meta tensors carry shapes only; the fake kernels (check_values=False) serve them, as
    # torch.nn.RNN runs on the meta device.
    if device.type not in ("cpu", "cuda") and (check_values or device.type != "meta"):
        _fail(ValueError, f"{n['x']} must be a CPU or CUDA tensor, got device {device}")
    if on_cuda and not _cuda.available():
        _fail(
            RuntimeError,
            f"{n['x']} is a CUDA tensor but fusedrnn was built without its CUDA kernels "
            "(reinstall with nvcc on the PATH and FUSEDRNN_CUDA=ON)",
        )

    if x.dim() != 2:
        _fail(ValueError, f"{n['x']} must be 2-D [N, {n['cols']}], got shape {tuple(x.shape)}")
    N, I = x.shape
    if w_hh.dim() != 2 or w_hh.shape[0] != w_hh.shape[1]:
        _fail(
            ValueError,
            f"{n['w_hh']} must be a square 2-D tensor [H, H], got shape {tuple(w_hh.shape)}",
        )
    H = w_hh.shape[0]  # H = 0 is valid: torch.nn.RNNCell allows it; nothing to compute
    if w_ih.shape != (H, I):
        _fail(
            ValueError,
            f"{n['w_ih']} must have shape [H, I] = {(H, I)} (H from {n['w_hh']} "
            f"{tuple(w_hh.shape)}, "
            f"I from {n['x']}), got {tuple(w_ih.shape)}: one of them is not this layer's size",
        )
    for name, b in ((n["b_ih"], b_ih), (n["b_hh"], b_hh)):
        if b is not None and b.shape != (H,):
            _fail(ValueError, f"{name} must have shape [H] = {(H,)}, got {tuple(b.shape)}")
    if h0.dim() != 2 or h0.shape[1] != H:
        _fail(ValueError, f"{n['h0']} must have shape [B, H] with H = {H}, got {tuple(h0.shape)}")
    B = h0.shape[0]

    if batch_sizes.dtype != torch.int64:
        _fail(TypeError, f"batch_sizes must have dtype int64, got {batch_sizes.dtype}")
    if batch_sizes.device.type != "cpu":
        _fail(ValueError, f"batch_sizes must be a CPU tensor, got device {batch_sizes.device}")
    if batch_sizes.dim() != 1:
        _fail(ValueError, f"batch_sizes must be 1-D, got shape {tuple(batch_sizes.shape)}")
    # The kernels read batch_sizes through its address, as torch.nn.RNN does.
    if batch_sizes.layout != torch.strided:
        _fail(ValueError, f"batch_sizes must be a dense tensor, got layout {batch_sizes.layout}")
    if not batch_sizes.is_contiguous():
        _fail(
            ValueError,
            f"batch_sizes must be a contiguous tensor, got strides {batch_sizes.stride()}",
        )
    if batch_sizes.is_neg():  # (its values read here are not those in its memory)
        _fail(ValueError, "batch_sizes must not be a negative view; resolve_neg() it first")
    if batch_sizes.numel() == 0:
        if B == 0:  # an empty batch (torch.nn.RNN accepts it): no rows, nothing to compute
            if N != 0:
                _fail(
                    ValueError,
                    f"padded {n['x']} must have no rows when B = 0 (from {n['h0']}), got {N} rows",
                )
            return 0, 0, H
        if N == 0 or N % B != 0:
            _fail(
                ValueError,
                f"padded {n['x']} must have T*B rows with T >= 1 and B = {B} "
                f"(from {n['h0']}), got {N} rows",
            )
        return N // B, B, H
    if B == 0:
        _fail(
            ValueError, f"{n['h0']} must have B >= 1 rows for packed input, got {tuple(h0.shape)}"
        )
    T = batch_sizes.shape[0]
    if check_values:
        _cuda._check_sizes_memory(batch_sizes)  # (before its values are read, here and after)
        sizes = batch_sizes.tolist()
        if sizes[0] != B:
            _fail(ValueError, f"batch_sizes[0] must equal B = {B} (from {n['h0']}), got {sizes[0]}")
        if sizes[-1] < 1:
            _fail(ValueError, f"batch_sizes must be >= 1 everywhere, got {sizes}")
        if any(a < b for a, b in itertools.pairwise(sizes)):
            _fail(ValueError, f"batch_sizes must be non-increasing, got {sizes}")
        if sum(sizes) != N:
            _fail(
                ValueError,
                f"batch_sizes must sum to the rows of {n['x']} ({N}), got sum {sum(sizes)}",
            )
    return T, B, H


# What a layer's eager backward reads, by the names of the forward's arguments (its saved
# tensors, then the output gradients): where the backward fails, a storage freed between the
# forward and the backward (a parameter's, by FSDP) is named (checked only then: the
# kernels' _addr refuses it already, without a name, and naming costs a few microseconds;
# the float16 backward, whose float32 copies would read a shrunk one, checks first).
_SAVED_NAMES = ("x", "w_ih", "w_hh", "h0", "the layer's output (h)", "grad_h", "grad_hn")
_BI_SAVED_NAMES = ("x", "w_fwd[0] (w_ih)", "w_fwd[1] (w_hh)", "w_rev[0] (w_ih)",
                   "w_rev[1] (w_hh)", "h0_fwd", "h0_rev", "the layer's output", "grad_out",
                   "grad_hn_fwd", "grad_hn_rev")  # fmt: skip


def _refuse_freed(names: tuple[str, ...], *tensors: Tensor | None) -> None:
    """Each of ``tensors`` (None: absent) must have memory, else an error naming it by its
    name in ``names``. A tensor whose storage was freed (``untyped_storage().resize_(0)``,
    as FSDP does) has address 0, which the kernels read as an absent bias, state or
    gradient; ``_addr`` refuses it without its name, and torch's copies (``.contiguous()``,
    ``.float()``) with a message that names none. For the ops' bodies, after their checks
    and before any copy: their tensors are real (fake and functorch-wrapped tensors have no
    address of their own)."""
    for i, t in enumerate(tensors):
        # (A ZeroTensor has address 0 too, and memory it never had: the kernels' own
        # message names it as a possible ZeroTensor. Fake, functional and meta tensors,
        # which the float16 backward's check meets under torch.compile, have none either.)
        if freed_if_real(t):
            _fail(RuntimeError, f"{names[i]}{_cuda.memory_problem(t)}")


def freed_if_real(t) -> bool:
    """``t`` is a plain tensor with elements whose memory the kernels or torch's copies
    cannot read (:func:`_cuda.freed`: storage freed or shrunk); False for None, a
    ZeroTensor, a meta tensor, a tensor subclass (a FakeTensor) or one of a functorch
    transform, which have no memory of their own by design. For the paths that may see
    those."""
    if type(t) not in PLAIN_TENSOR_TYPES or not t.numel() or t.is_meta:
        return False
    try:
        return _cuda.freed(t) and not t._is_zerotensor()
    except RuntimeError:  # a tensor with no storage of its own (a functorch wrapper)
        return False


def name_node(output: Tensor, names: dict[str, str]) -> None:
    """Give the autograd node that made ``output`` (a layer op's, eager) the caller's names
    of its tensors, ``names``: the op's name (``_SAVED_NAMES``, ``_BI_SAVED_NAMES``) -> the
    caller's (a module's ``weight_hh_l1``). Read only when its backward fails, to name a
    tensor freed since the forward (FSDP frees the weights it gathered) as the caller
    knows it; a node of another kind, or none, is left alone. (The modules' lean path
    passes them to :func:`rnn_layer_checked` instead: no lookup of the node.)"""
    node = output.grad_fn
    if node is None:
        return
    if type(node) in _NAMED_NODES:
        node.fusedrnn_names = names
        return
    # The two-op bidirectional layer (a concatenation of two layer nodes, which that op
    # named by its own names): the caller's names of those.
    for inner, _ in node.next_functions if type(node).__name__ == "CatBackward0" else ():
        given = getattr(inner, "fusedrnn_names", None) if type(inner) in _NAMED_NODES else None
        if given is not None:
            inner.fusedrnn_names = {k: names.get(v, v) for k, v in given.items()}


def _node_names(ctx, names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` as the caller of the node knows them (see :func:`name_node`)."""
    given = getattr(ctx, "fusedrnn_names", None)
    return names if given is None else tuple(given.get(n, n) for n in names)


def _check_like_x(n, dtype, device, w_ih, w_hh, b_ih, b_hh, h0) -> None:
    """check_layer_args' layout, dtype and device checks, one by one with their messages."""
    for name, t in (
        (n["w_ih"], w_ih),
        (n["w_hh"], w_hh),
        (n["b_ih"], b_ih),
        (n["b_hh"], b_hh),
        (n["h0"], h0),
    ):
        if t is None:
            continue
        if t.layout != torch.strided:
            _fail(TypeError, f"{name} must be a dense (strided) tensor, got layout {t.layout}")
        if t.dtype != dtype:
            _fail(TypeError, f"{name} must have the dtype of {n['x']} ({dtype}), got {t.dtype}")
        if t.device != device:
            _fail(
                ValueError, f"{name} must be on the device of {n['x']} ({device}), got {t.device}"
            )


def _dense(t: Tensor | None) -> Tensor | None:
    """``t`` as the kernels read it through its address: contiguous, with a negative bit
    resolved into the values (``z.conj().imag`` is a float view whose sign lives in a flag,
    not in memory). None stays None; a tensor that already is so comes back as itself."""
    if t is None or (t.is_contiguous() and not t.is_neg()):  # checks: cheaper than the calls
        return t
    _addr(t)  # a storage freed or shrunk refused (torch's copy reads past a shrunk one)
    return t.resolve_neg().contiguous()


def _strided_grads(*grads: Tensor | None) -> tuple:
    """Output gradients as the backward reads them: a sparse (or other non-strided) one made
    dense (torch.nn.RNN's backward fails on those; the kernels read strides)."""
    return tuple(
        g.to_dense() if isinstance(g, Tensor) and g.layout != torch.strided else g for g in grads
    )


def _no_zeros_flag(t: Tensor | None) -> Tensor | None:
    """A gradient autograd passes as a ZeroTensor (no memory, address 0) is absent: None."""
    return None if t is None or t._is_zerotensor() else t


def _combined_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    if b_ih is None:
        return b_hh
    if b_hh is None:
        return b_ih
    return b_ih + b_hh


def _float32(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


_addr = _cuda._addr  # (the data address of a tensor, 0 for None; freed storage refused)
_raw_addr = _cuda._raw_addr  # (the same unchecked, for what the caller made or checked)


def _steps_addr(batch_sizes: Tensor) -> int:
    """The kernels' batch_sizes argument: 0 (padded input) for an empty tensor. One whose
    storage was freed or shrunk is refused (a backward's saved copy may come back so from
    a ``saved_tensors_hooks`` unpack: address 0 read as padded input before session 32)."""
    if not batch_sizes.numel():
        return 0
    _cuda._check_sizes_memory(batch_sizes)
    return batch_sizes.data_ptr()


def _forward_impl(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity, dims=None):
    """The forward computation shared by the custom op and the eager path.

    ``dims = (T, B, H, h_shape, hn_shape)`` marks arguments already checked (the modules'
    fast path, :func:`fast_input_cpu` or, on CUDA, :func:`fast_input_cuda`): plain
    contiguous tensors of one device in a kernel dtype,
    padded input (``x`` any shape ``[..., I]`` of ``T B`` rows), ``h0`` None for a zero
    state; ``h`` and ``hn`` are then allocated in the given shapes (of ``T B`` and ``B``
    rows), the shapes the module returns, so that no view node follows in the graph.
    """
    if dims is not None:
        T, B, H, h_shape, hn_shape = dims
        hn = x.new_empty(hn_shape)
        h = x.new_empty(h_shape)
        if x.is_cuda:  # (the modules' lean path on CUDA: fast_input_cuda)
            forward_cuda_checked(x, w_ih, w_hh, b_ih, b_hh, h0, h, hn, T, B, H, reverse,
                                 nonlinearity)  # fmt: skip
            return h, hn
        _forward_into(x, w_ih, w_hh, b_ih, b_hh, _raw_addr(h0), h.data_ptr(), H, hn.data_ptr(),
                      T, B, H, reverse, nonlinearity)  # fmt: skip
        return h, hn
    T, B, H = check_layer_args(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, nonlinearity)
    _refuse_freed(_LAYER_INPUT_NAMES, x, w_ih, w_hh, b_ih, b_hh, h0)
    if not x.is_cuda and x.dtype not in KERNEL_DTYPES:
        args = (_float32(t) for t in (x, w_ih, w_hh, b_ih, b_hh, h0))
        h, hn = _forward_impl(*args, batch_sizes, reverse, nonlinearity)
        return h.to(x.dtype), hn.to(x.dtype)
    x, w_ih, w_hh, h0 = _dense(x), _dense(w_ih), _dense(w_hh), _dense(h0)
    hn = torch.empty_like(h0)
    if x.is_cuda or B == 0 or H == 0:
        bias = _combined_bias(b_ih, b_hh)
        # P = x W_ih^T + b: a fresh contiguous [N, H]; the kernel overwrites it with h.
        P = torch.addmm(bias, x, w_ih.t()) if bias is not None else torch.mm(x, w_ih.t())
        if x.is_cuda and B and H:
            _cuda.rnn_forward(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, P, hn)
        return P, hn  # (B == 0 or H == 0: nothing to compute)
    # CPU: P = x W_ih^T + b_ih + b_hh and the recurrence in place, in one call.
    # Named locals: a .contiguous() copy must outlive the call that reads its address.
    b_ih, b_hh = _dense(b_ih), _dense(b_hh)
    h = x.new_empty(x.shape[0], H)
    _forward_into(x, w_ih, w_hh, b_ih, b_hh, _raw_addr(h0), h.data_ptr(), H, hn.data_ptr(),
                  T, B, H, reverse, nonlinearity, _steps_addr(batch_sizes))  # fmt: skip
    return h, hn


# The CPU forward of one layer-direction by data addresses, the binding itself (no Python
# wrapper: the modules' inference path calls it per layer-direction):
#   forward_into_cpu(dtype name (KERNEL_DTYPES), T, B, H, I, batch_sizes address (0:
#                    padded), reverse, nonlinearity, x, w_ih, b_ih, b_hh, w_hh, h0, h,
#                    ldh, hn, num_threads)
# x [N, I], w_ih [H, I], b_ih and b_hh [H] (0: absent), w_hh [H, H], h0 [B, H] (0: zeros),
# h [N, H] written with row stride ldh, hn [B, H] written (0: not written); every operand
# checked and contiguous (see fast_input_cpu, fast_addresses_cpu).
forward_into_cpu = _C.layer_forward


def _forward_into(x, w_ih, w_hh, b_ih, b_hh, h0_addr, h_addr, ldh, hn_addr, T, B, H, reverse,
                  nonlinearity, steps_addr=0):  # fmt: skip
    """:func:`forward_into_cpu` for the ops' own calls, on the tensors ``x`` and weights,
    which every caller checked (their storage too: ``_refuse_freed`` or the lean path's
    ``fast_addresses_cpu``), or copied."""
    forward_into_cpu(KERNEL_DTYPES[x.dtype], T, B, H, x.shape[-1], steps_addr, reverse,
                     nonlinearity, x.data_ptr(), *map(_raw_addr, (w_ih, b_ih, b_hh, w_hh)),
                     h0_addr, h_addr, ldh, hn_addr, torch.get_num_threads())  # fmt: skip


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
    return _forward_impl(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)


def _forward_shapes(values, x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity):
    """The forward op's checks (``values``: also those that read batch_sizes' data) and its
    outputs, uninitialized: its fake kernel, and vmap over no problem (_vmap_empty)."""
    check_layer_args(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, nonlinearity, check_values=values)
    # Contiguous, as the kernels write them (empty_like would copy the strides of a
    # transposed h0, and a compiled graph then reads hn with the wrong ones).
    return x.new_empty((x.shape[0], w_hh.shape[0])), h0.new_empty(h0.shape)


@rnn_layer_forward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity):
    return _forward_shapes(False, x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)


# The backward op reuses the forward checks: h in the place of x, grad_hn in that of h0.
_BACKWARD_NAMES = {"x": "h", "w_ih": "w_hh", "h0": "grad_hn", "cols": "H"}
_BACKWARD_INPUT_NAMES = ("w_hh", "h", "grad_h", "grad_hn")


def _backward_impl_checks(w_hh, h, grad_h, grad_hn, batch_sizes, nonlinearity, values=True):
    """The checks of the backward ops; returns ``(T, B, H)``."""
    # h's width against w_hh first: the shared checks below take w_hh for both weights and
    # would name w_ih's expected shape [H, I] for it.
    if (
        isinstance(w_hh, Tensor) and isinstance(h, Tensor) and w_hh.dim() == 2
        and w_hh.shape[0] == w_hh.shape[1] and h.dim() == 2 and h.shape[1] != w_hh.shape[0]
    ):  # fmt: skip
        _fail(
            ValueError,
            f"h must have shape [N, H] with H = {w_hh.shape[0]} (w_hh is {tuple(w_hh.shape)}), "
            f"got {tuple(h.shape)}",
        )
    T, B, H = check_layer_args(
        h, w_hh, w_hh, None, None, grad_hn, batch_sizes, nonlinearity,
        check_values=values, names=_BACKWARD_NAMES,
    )  # fmt: skip
    if not isinstance(grad_h, Tensor):
        _fail(TypeError, f"grad_h must be a torch.Tensor, got {type(grad_h).__name__}")
    if grad_h.layout != torch.strided:  # (sparse and mkldnn tensors have no strides to read)
        _fail(TypeError, f"grad_h must be a dense (strided) tensor, got layout {grad_h.layout}")
    if grad_h.shape != h.shape:
        _fail(
            ValueError,
            f"grad_h must have the shape of h {tuple(h.shape)}, got {tuple(grad_h.shape)}",
        )
    if grad_h.dtype != h.dtype or grad_h.device != h.device:
        _fail(
            TypeError,
            f"grad_h must have the dtype and device of h ({h.dtype}, {h.device}), "
            f"got ({grad_h.dtype}, {grad_h.device})",
        )
    if values:  # (the ops' bodies; their fake kernels pass values=False)
        _refuse_freed(_BACKWARD_INPUT_NAMES, w_hh, h, grad_h, grad_hn)
    return T, B, H


def _backward_impl(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity):
    """The BPTT computation shared by the custom op and the eager path."""
    T, B, H = _backward_impl_checks(w_hh, h, grad_h, grad_hn, batch_sizes, nonlinearity)
    if not h.is_cuda and h.dtype not in KERNEL_DTYPES:
        args = (_float32(t) for t in (w_hh, h, grad_h, grad_hn))
        dP, dh0 = _backward_impl(*args, batch_sizes, reverse, nonlinearity)
        return dP.to(h.dtype), dh0.to(h.dtype)
    w_hh, h, grad_h, grad_hn = (_dense(t) for t in (w_hh, h, grad_h, grad_hn))
    dP = torch.empty_like(h)
    dh0 = torch.empty_like(grad_hn)
    if B == 0 or H == 0:  # nothing to compute
        return dP, dh0
    if h.is_cuda:
        args = (w_hh, h, grad_h, grad_hn, dP, dh0)
        _cuda.rnn_backward(T, B, H, batch_sizes, reverse, nonlinearity, *args)
        return dP, dh0
    _C.rnn_backward(
        KERNEL_DTYPES[h.dtype],
        T,
        B,
        H,
        _steps_addr(batch_sizes),
        reverse,
        nonlinearity,
        w_hh.data_ptr(),
        h.data_ptr(),
        _addr(grad_h),  # (address 0 would read as absent: _addr refuses freed storage)
        _addr(grad_hn),
        dP.data_ptr(),
        dh0.data_ptr(),
        torch.get_num_threads(),
    )
    return dP, dh0


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
    return _backward_impl(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity)


def _backward_shapes(values, w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity):
    """The backward op's checks and outputs, uninitialized (see :func:`_forward_shapes`)."""
    _backward_impl_checks(w_hh, h, grad_h, grad_hn, batch_sizes, nonlinearity, values=values)
    return h.new_empty(h.shape), grad_hn.new_empty(grad_hn.shape)  # contiguous (see above)


@rnn_layer_backward.register_fake
def _(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity):
    # All the op's checks, grad_h's too: a meta grad_h among CPU tensors sends the call
    # here, and without them it returned uninitialized CPU tensors (a helper's review,
    # session 28).
    return _backward_shapes(False, w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity)


def _prev_state_grad(dP: Tensor, h: Tensor, h0: Tensor, batch_sizes: Tensor, reverse: bool):
    """dW_hh = sum over rows of d_row^T h_prev(row), as GEMMs (see :func:`_prev_states`)."""
    B = h0.shape[0]
    if batch_sizes.numel() == 0:  # padded: contiguous blocks, no gather needed
        first, rest = (dP[-B:], dP[:-B]) if reverse else (dP[:B], dP[B:])
        dw = first.t() @ h0  # the first step's rows follow h0, the others the row before
        if not rest.shape[0]:  # T = 1 (a cell): no second [H, H] product and sum
            return dw
        return torch.addmm(dw, rest.t(), h[B:] if reverse else h[:-B])
    return dP.t() @ _prev_states(h, h0, batch_sizes, reverse)


def _prev_states(h: Tensor, h0: Tensor, batch_sizes: Tensor, reverse: bool) -> Tensor:
    """``h_prev`` [N, H]: for each row, the state the forward pass came from: the row of the
    same sequence at the step walked before it, or h0 where the sequence started."""
    B = h0.shape[0]
    if batch_sizes.numel() == 0:
        return torch.cat((h[B:], h0) if reverse else (h0, h[:-B]))
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
    return torch.cat([h, h0]).index_select(0, _index_on(index, h.device))


# Pinned row indices whose copies were captured into CUDA graphs (see _index_on).
_CAPTURED_INDICES: dict = {}


def _index_on(index: Tensor, device: torch.device) -> Tensor:
    """A row index built on the CPU, on ``device``. For CUDA pinned and non_blocking: a
    pageable copy would stall the host until the GPU has finished the kernels queued
    before it (the BPTT). A copy captured into a CUDA graph is replayed from its host
    buffer at every replay: that buffer is then kept, with these contents, for the life of
    the process (one per distinct index and device), instead of going back to torch's
    pinned allocator to be reused."""
    if device.type == "cpu":
        return index
    pinned = index.pin_memory()
    if _cuda.stream_capturing(device):
        key = (str(device), index.dtype, tuple(index.tolist()))
        pinned = _CAPTURED_INDICES.setdefault(key, pinned)
    return pinned.to(device, non_blocking=True)


def _packed_last_index(B: int, batch_sizes: Tensor) -> Tensor:
    """[B]: the row of each packed sequence's last time step (``batch_sizes`` non-empty)."""
    # Sequence b's length: the steps whose batch size exceeds b; batch_sizes does not
    # increase, so that is where -b goes in -batch_sizes (O(B log T); until session 23 a
    # [B, T] comparison, 9 bytes per pair: 14 GB at B = T = 40000).
    lengths = torch.searchsorted(-batch_sizes, -torch.arange(B, dtype=batch_sizes.dtype))
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    return offsets[lengths - 1] + torch.arange(B)


def _last_rows(h: Tensor, B: int, batch_sizes: Tensor, reverse: bool) -> Tensor:
    """[B, H]: each sequence's row at its last step (what the forward pass returns as hn);
    with ``not reverse``, at its first step."""
    if reverse:
        return h[:B]
    if batch_sizes.numel() == 0:
        return h[h.shape[0] - B :]
    return h.index_select(0, _index_on(_packed_last_index(B, batch_sizes), h.device))


def _add_to_last_rows(e: Tensor, g: Tensor, batch_sizes: Tensor, reverse: bool) -> Tensor:
    """``e`` [N, H] with ``g`` [B, H] added to each sequence's row at its last step."""
    N, B = e.shape[0], g.shape[0]
    if reverse:
        return torch.cat((e[:B] + g, e[B:]))
    if batch_sizes.numel() == 0:
        return torch.cat((e[: N - B], e[N - B :] + g))
    return e.index_add(0, _index_on(_packed_last_index(B, batch_sizes), e.device), g)


def _setup_context(ctx, inputs, output, save_all=False):
    """The registered op's setup_context: :func:`_setup_layer`, with the flag rnn_layer set
    for the call (none when the op is called otherwise)."""
    _setup_layer(ctx, inputs, output, getattr(_CALL, "output_to_caller", False), save_all)


def _setup_layer(ctx, inputs, output, output_to_caller, save_all=False):
    """``save_all``: save x, w_ih and h0 whatever gradients are needed (see _FuncLayer)."""
    x, w_ih, w_hh, _b_ih, _b_hh, h0, batch_sizes, reverse, nonlinearity = inputs
    h, _ = output
    needs = (True,) * 6 if save_all else ctx.needs_input_grad
    saved = _layer_saved(needs, x, w_ih, w_hh, h0, h, batch_sizes)
    _keep_for_recompute(
        ctx, h, inputs, _LAYER_INPUT_NAMES, (0, 5), output_to_caller, saved, _LAYER_SAVED_INPUTS
    )
    # The lean path's x (and its own h, hn) may come in other shapes than [N, I] (see
    # _forward_impl's dims): the backward reads them as rows and returns dx in x's shape.
    ctx.x_shape = x.shape if x.dim() != 2 else None
    _save(ctx, saved)
    ctx.reverse = reverse
    ctx.nonlinearity = nonlinearity
    ctx.B = output[1].shape[-2]  # h0 may be None (a zero state) on the fast path


def _saved_sizes(batch_sizes: Tensor) -> Tensor:
    """A packed call's batch_sizes as saved for its backward: a copy (T integers), so the
    backward walks the steps the forward walked. The kernels trust them, and a change
    that bumps no version (through ``.data`` or NumPy) reached the backward kernel
    unchecked: wrong gradients, or rows past the buffers (a helper's review, session 28)."""
    return batch_sizes.clone() if batch_sizes.numel() else batch_sizes


def _layer_saved(needs, x, w_ih, w_hh, h0, h, batch_sizes) -> tuple:
    """What a layer saves for its backward (``needs``: its needs_input_grad), as
    torch.nn.RNN's graph does: x for dW_ih only, w_ih for dx only, h0 for dW_hh only (the
    first step's previous state), None otherwise; so changing an input in place between the
    forward and the backward raises only where a gradient asked for reads it."""
    return (x if needs[1] else None, w_ih if needs[0] else None, w_hh,
            h0 if needs[2] else None, h, _saved_sizes(batch_sizes))  # fmt: skip


def _meta(tensors) -> list:
    return [None if t is None else (t.shape, t.dtype, t.device) for t in tensors]


def _save(ctx, saved) -> None:
    """ctx.save_for_backward, with what _check_saved compares them to in the backward."""
    ctx.save_for_backward(*saved)
    ctx.saved_meta = _meta(saved)


def _check_saved(ctx, saved) -> None:
    """The kernels trust the sizes the forward pass checked: refuse saved tensors changed
    since (a parameter's .data replaced between forward and backward)."""
    if _meta(saved) != ctx.saved_meta:
        _refuse_changed_saved()


def _refuse_changed_saved() -> None:
    _fail(
        RuntimeError,
        "a tensor saved for backward changed its shape, dtype or device after the forward "
        "pass (was a parameter's .data replaced?)",
    )


# Per-thread flags of the call in progress (rnn_layer -> the registered op's setup_context).
_CALL = threading.local()


def _keep_for_recompute(
    ctx, out, inputs, names, activations, hold_output, saved, from_saved
) -> None:
    """What a layer's backward needs when the caller changed its output ``out`` in place
    between the forward and the backward (a residual ``out += x``, ``relu_(out)``):
    torch.nn.RNN allows that, as its saved states are not the tensor it returns, but ours
    are. ``out``'s version tells that case from the others; the inputs, and their
    versions (one changed in place is refused), let the backward compute the states again.

    Held strongly up to the first backward that frees the graph
    (:func:`_release_unless_retained`), weakly after: the
    output where ``hold_output`` (the caller may drop its last reference before the
    backward, and autograd frees it on the way), the ``activations`` (x and the initial
    states) the layer does not save (not in the saved tuple ``saved``, which holds input
    ``i`` at ``from_saved[i]``: x with a frozen ``w_ih``, h0 with a frozen ``w_hh``), and
    weights that are not parameters (autocast's casts,
    functional_call's tensors). The saved activations are held weakly from the start:
    autograd's saved tensors keep them alive up to the backward, and a strong reference
    would keep them through activation checkpointing and after the backward while the
    caller holds the loss. Nothing is kept while a graph is
    traced (``out`` is then not a plain tensor): compiled training copies the output
    instead (:func:`private_when_compiled`). An input made under inference mode has no
    version: saved, autograd cannot take it, and it is refused by its name in ``names``
    (the leading inputs'); unsaved, the layer runs as ``nn.RNN``'s does, the input is held
    marked ``_UNTRACKED``, and only computing the states again from it is refused (nothing
    can tell whether it changed)."""
    if type(out) is not Tensor:
        return
    ctx.out_ref = weakref.ref(out)
    ctx.out_alias = out.detach() if hold_output else None
    ctx.out_version = out._version
    kept = list(inputs)
    versions = []
    strong = []
    # The tensors lead the inputs (up to the last activation); batch_sizes and the flags
    # after them get no version (nothing changes batch_sizes in place).
    for i in range(activations[-1] + 1):
        t = kept[i]
        if t is None:
            versions.append(None)
            continue
        j = from_saved.get(i)
        is_saved = j is not None and saved[j] is not None
        try:
            versions.append(t._version)
        except RuntimeError:
            if is_saved or not t.is_inference():
                _refuse_inference_tensor(t, names[i])
                raise
            versions.append(_UNTRACKED)
        if is_saved and i in activations:
            kept[i] = weakref.ref(t)
        elif i in activations or type(t) is not torch.nn.Parameter:
            strong.append(i)
    ctx.inputs = kept
    ctx.input_versions = versions
    ctx.strong_inputs = strong


_LAYER_INPUT_NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0")
_BI_LAYER_INPUT_NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "w_ih (reverse)", "w_hh (reverse)",
                         "b_ih (reverse)", "b_hh (reverse)", "h0", "h0 (reverse)")  # fmt: skip


# input_versions' mark for an input without a version (an unsaved inference tensor).
_UNTRACKED = -1


def _refuse_inference_tensor(t, name) -> None:
    """An input made under torch.inference_mode has no version counter, and autograd cannot
    save it: say so, by name (torch.nn.RNN refuses it too)."""
    if t.is_inference():
        _fail(
            RuntimeError,
            f"{name} is an inference tensor (made under torch.inference_mode), which autograd "
            "cannot save for backward: run the call under torch.inference_mode() or "
            "torch.no_grad() too, or pass a clone made outside inference mode",
        )


def _release_kept(ctx) -> None:
    """After a backward: what _keep_for_recompute held strongly, held weakly (a retained
    graph's next backward still finds what the caller or autograd keeps alive)."""
    ctx.out_alias = None
    strong = getattr(ctx, "strong_inputs", None)
    if strong:
        for i in strong:
            ctx.inputs[i] = weakref.ref(ctx.inputs[i])
        ctx.strong_inputs = None


def _caller_output(ctx) -> Tensor | None:
    """The layer's output as the forward returned it, if still reachable."""
    out = getattr(ctx, "out_alias", None)
    if out is None:
        ref = getattr(ctx, "out_ref", None)
        out = ref() if ref is not None else None
    return out


def _output_changed(ctx) -> bool:
    """The layer's output, still reachable, has changed in place since the forward."""
    out = _caller_output(ctx)
    return out is not None and out._version != ctx.out_version


def _intact_inputs(ctx, saved, from_saved):
    """The forward's inputs (weak references resolved) if none has changed in place since
    and none is gone, else None. Where ``saved`` (the unpacked saved tensors, under
    saved_tensors_hooks) holds input ``i`` at ``from_saved[i]``, that one is taken: the
    hooks may have dropped or copied the forward's own tensor."""
    inputs = []
    versions = ctx.input_versions
    for i, t in enumerate(ctx.inputs):
        v = versions[i] if i < len(versions) else None
        kept = saved[from_saved[i]] if saved is not None and i in from_saved else None
        if kept is not None:
            inputs.append(kept)
            continue
        if isinstance(t, weakref.ref):
            t = t()
            if t is None:
                return None
        if v is not None and (v == _UNTRACKED or t._version != v):
            return None
        inputs.append(t)
    return inputs


def _saved_or_recomputed(ctx, recompute, from_saved, out_index, transformed):
    """``ctx.saved_tensors``, or where the layer's output was changed in place since the
    forward (see :func:`_keep_for_recompute`), ``recompute(ctx, inputs)``:
    the saved tuple with the output computed again from the unchanged inputs, the same bits
    (the kernels are deterministic), through the checked path (a weight whose ``.data`` was
    replaced is refused there). A graph already freed is autograd's error; an input changed
    too, or gone, is refused by name. ``out_index``: the output's place in the saved tuple.
    ``transformed``: the backward's graph is recorded or its gradients transformed, where
    computing the states again is refused (:func:`_refuse_recorded_recompute`) before it
    starts (under torch.func.grad it ran on wrapped tensors: torch's "Cannot access data
    pointer" error, a helper's review, session 29)."""
    try:
        saved = ctx.saved_tensors
    except RuntimeError as e:
        if "inplace operation" not in str(e) or not _output_changed(ctx):
            raise
        saved = None
    # Under saved_tensors_hooks (save_on_cpu, checkpointing, offloading) autograd checks no
    # version and the hooks may hand back the changed tensor itself: the version tells.
    if saved is not None and (
        not _output_changed(ctx) or _cloned_before_change(ctx, saved[out_index])
    ):
        _release_unless_retained(ctx)
        return saved
    _refuse_recorded_recompute(transformed)
    inputs = _intact_inputs(ctx, saved, from_saved)
    _release_unless_retained(ctx)
    if inputs is None:
        _fail(
            RuntimeError,
            "the RNN's output was changed in place after the forward pass, and its states "
            "cannot be computed again for the backward: an input or weight was changed in "
            "place too, or is gone, or was made under inference mode (nothing can tell "
            "whether it changed); clone the output before changing it",
        )
    with torch.no_grad():
        return recompute(ctx, inputs)


def _cloned_before_change(ctx, saved_out) -> bool:
    """Under ``torch.autograd.graph.allow_mutation_on_saved_tensors`` (its unpack hook runs
    only inside it), a saved tensor changed in place through a tensor of its address is
    cloned before the change, and the clone is what the backward unpacks: the forward's
    values, which nn.RNN then uses too. So a saved output that is not the caller's storage is
    that clone. (The same storage is the changed tensor itself: changed through a view at
    another offset, which the context does not clone; computed again as elsewhere.)"""
    if not getattr(torch.autograd.graph, "_allow_mutation_on_saved_tensors_enabled", False):
        return False
    out = _caller_output(ctx)
    return (
        out is not None
        and saved_out.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
    )


# Whether the backward in progress keeps its graph (retain_graph, create_graph). Private to
# torch (AOTAutograd asks it too); where it is missing, every backward counts as the last.
_keeps_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: False)


def _release_unless_retained(ctx) -> None:
    """:func:`_release_kept` after a backward that frees the graph. One that retains it
    keeps what the layer holds for the next backward of that graph, which may have to
    compute the states again from inputs the caller does not hold (the lean path's
    time-major copy of x, an inner layer's input: it raised before session 22)."""
    if not _keeps_graph():
        _release_kept(ctx)


def _refuse_recorded_recompute(transformed: bool) -> None:
    if transformed:
        _fail(
            RuntimeError,
            "the RNN's output was modified in place after the forward pass; its gradients "
            "can still be computed, but not with create_graph=True or under a transform "
            "(the states are computed again without a graph): clone the output before "
            "modifying it",
        )


def _as_saved(ctx, index: int, h: Tensor) -> Tensor:
    """A recomputed output ``h`` ([N, H] rows) in the shape the forward saved it in (the
    lean path's [T, B, H]); refused as in _check_saved where the sizes no longer match."""
    shape = ctx.saved_meta[index][0]
    if h.numel() != math.prod(shape):
        _refuse_changed_saved()
    return h.view(shape)


# Where the saved tuples hold the inputs: input index -> saved index (x, w_ih, w_hh, h0; and
# x, each direction's weights and states).
_LAYER_SAVED_INPUTS = {0: 0, 1: 1, 2: 2, 5: 3}
_BI_SAVED_INPUTS = {0: 0, 1: 1, 2: 2, 5: 3, 6: 4, 9: 5, 10: 6}


def _recompute_layer(ctx, inputs):
    """_EagerLayer's saved tuple with the output ``h`` computed again (see
    :func:`_saved_or_recomputed`)."""
    x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity = inputs
    rows = x.reshape(-1, x.shape[-1])
    start = h0 if h0 is not None else rows.new_zeros(ctx.B, w_hh.shape[0])
    h, _ = _forward_impl(rows, w_ih, w_hh, b_ih, b_hh, start, batch_sizes, reverse, nonlinearity)
    needs = ctx.needs_input_grad
    h = _as_saved(ctx, 4, h)
    return _layer_saved(needs, x, w_ih, w_hh, h0, h, batch_sizes)


def _backward(ctx, grad_h, grad_hn):
    grad_h, grad_hn = _strided_grads(grad_h, grad_hn)
    # The kernels may read the tensors by address unless a graph of this backward is
    # recorded (create_graph=True) or the gradients are transformed (batched by vmap, as
    # is_grads_batched does, or carrying forward-mode tangents): see _backward_rows.
    transformed = _recorded_or_transformed(grad_h, grad_hn)
    saved = _saved_or_recomputed(ctx, _recompute_layer, _LAYER_SAVED_INPUTS, 4, transformed)
    x, w_ih, w_hh, h0, h, batch_sizes = saved
    _check_saved(ctx, saved)
    needs = ctx.needs_input_grad
    B = ctx.B
    fused = not h.is_cuda and h.dtype in KERNEL_DTYPES and h.numel() and B
    eager = getattr(ctx, "eager", False) and not transformed
    # A float16 layer, or a bfloat16 one without the bfloat16 kernels, was computed in
    # float32 (_forward_impl): so is its backward, on the fused float32 kernels, and the
    # gradients are rounded once. (Through torch's float16 GEMMs, which have no fast CPU
    # kernel, a B64-H1024-T100 training step took 16 s.) Transformed or recorded backward
    # passes keep the general path, whose derivatives are torch's.
    low = h.dtype if (not h.is_cuda and h.dtype in _FLOAT32_COMPUTE_DTYPES and not transformed
                      and h.dtype not in KERNEL_DTYPES and h.numel() and B) else None  # fmt: skip
    if low is not None:
        # Before the copies: torch's copy of a freed tensor names nothing, and of a shrunk
        # one reads past its end.
        _refuse_freed(_node_names(ctx, _SAVED_NAMES), x, w_ih, w_hh, h0, h, grad_h, grad_hn)
        x, w_ih, w_hh, h0, h, grad_h, grad_hn = (
            _float32(t) for t in (x, w_ih, w_hh, h0, h, grad_h, grad_hn)
        )
        fused = True
    if fused and eager:  # the kernel reads absent gradients and an absent h0 as zeros
        try:
            dx, dw_ih, dw_hh, db, dh0 = _grads_impl(
                x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, ctx.reverse,
                ctx.nonlinearity, needs[0], needs[1], needs[2], needs[3] or needs[4], needs[5],
                B,
            )  # fmt: skip
        except (RuntimeError, ValueError):  # a storage freed since the forward, named
            _refuse_freed(_node_names(ctx, _SAVED_NAMES), x, w_ih, w_hh, h0, h, grad_h, grad_hn)
            raise
        grads = (*_input_grads(needs, dx, dw_ih, dw_hh, db, dh0), None, None, None)
    else:  # the lean path's shapes (see _forward_impl's dims) as rows for the ops
        try:
            x, h, grad_h, grad_hn = (_as_rows(t) for t in (x, h, grad_h, grad_hn))
        except RuntimeError:  # a storage freed or shrunk, named
            _refuse_freed(_node_names(ctx, _SAVED_NAMES), x, w_ih, w_hh, h0, h, grad_h, grad_hn)
            raise
        grads = _backward_rows(ctx, needs, B, fused, eager, transformed, x, w_ih, w_hh, h0, h,
                               batch_sizes, grad_h, grad_hn)  # fmt: skip
    if low is not None:
        grads = tuple(None if g is None else g.to(low) for g in grads)
    dx = grads[0]
    if dx is None or ctx.x_shape is None or dx.shape == ctx.x_shape:
        return grads
    return (dx.reshape(ctx.x_shape), *grads[1:])


def _as_rows(t: Tensor | None) -> Tensor | None:
    """``t`` [..., n] as [rows, n] (a view where the strides allow: an expanded gradient
    stays expanded)."""
    if t is None or t.dim() == 2:
        return t
    if not t.is_contiguous():  # a storage freed or shrunk refused before reshape copies it
        _addr(t)
    return t.reshape(-1, t.shape[-1])


def _backward_rows(ctx, needs, B, fused, eager, transformed, x, w_ih, w_hh, h0, h, batch_sizes,
                   grad_h, grad_hn):  # fmt: skip
    """``_backward`` through the ops or torch, on [N, I] x, [N, H] h and their gradients."""
    if h0 is None:
        h0 = h.new_zeros((B, h.shape[1]))
    # An output gradient given as a ZeroTensor (no memory) is zeros: the CUDA launchers read
    # every tensor by address and refused its address 0 (session 31; the CPU kernel reads
    # it as absent, _grads_impl).
    grad_h, grad_hn = _no_zeros_flag(grad_h), _no_zeros_flag(grad_hn)
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    if grad_hn is None:
        grad_hn = torch.zeros_like(h0)
    args = (x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, ctx.reverse, ctx.nonlinearity,
            needs[0], needs[1], needs[2], needs[3] or needs[4])  # fmt: skip
    if h.shape[1] == 0:  # H = 0 (torch.nn.RNNCell allows it): every gradient is empty or 0
        grads = _grads_via(_zero_bptt, *args)
    elif transformed:
        grads = _transformed_grads(fused, *args)
    elif fused:
        grads = rnn_layer_grads(*args)
    else:
        grads = _grads_via(_backward_impl if eager else rnn_layer_backward, *args)
    return (*_input_grads(needs, *grads), None, None, None)


def _transformed_grads(fused, *args):
    """rnn_layer_grads' results (its arguments ``args``) where a graph of the backward is
    recorded or its gradients are transformed (see _backward)."""
    if fused and torch.is_grad_enabled() and _reverse_levels_only():
        # Recorded with reverse-mode levels only (create_graph=True, torch.func.grad): the
        # fused op, whose own derivatives recompute the differentiable path.
        return _FusedGrads.apply(*args)
    # Recorded under forward mode or vmap, or not a kernel dtype; or the gradients are
    # batched or carry tangents: the differentiable BPTT (with vmap and forward-mode
    # rules) and torch's GEMMs, so every derivative is nn.RNN's.
    return _recorded_grads(*args)


def _zero_bptt(w_hh, h, grad_h, grad_hn, *_):
    """The BPTT at H = 0: no columns, every dP and dh0 is empty."""
    return torch.zeros_like(h), torch.zeros_like(grad_hn)


def _grads_via(bptt, x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity,
               need_dx, need_dw_ih, need_dw_hh, need_db):  # fmt: skip
    """rnn_layer_grads' results (None where not asked for) from ``bptt`` (the BPTT op's
    arguments and results) and torch's GEMMs. ``x``, ``w_ih`` and ``h0``, which only those
    GEMMs read, are refused where their storage was freed or shrunk (the BPTT op checks its
    own): a shrunk one was read past its end (garbage gradients; session 32)."""
    _refuse_freed(("x", "w_ih", "h0"), x, w_ih, h0)
    dP, dh0 = bptt(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity)
    return (
        dP @ w_ih if need_dx else None,
        dP.t() @ x if need_dw_ih else None,
        _prev_state_grad(dP, h, h0, batch_sizes, reverse) if need_dw_hh else None,
        dP.sum(0) if need_db else None,
        dh0,
    )


def _input_grads(needs, dx, dw_ih, dw_hh, db, dh0):
    """The gradients of (x, w_ih, w_hh, b_ih, b_hh, h0), None where not needed."""
    # Each bias gets its own tensor: AccumulateGrad may adopt it as that parameter's .grad.
    db_hh = (db.clone() if needs[3] else db) if needs[4] else None
    return (
        dx if needs[0] else None,
        dw_ih if needs[1] else None,
        dw_hh if needs[2] else None,
        db if needs[3] else None,
        db_hh,
        dh0 if needs[5] else None,
    )


def _grads_checks(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, nonlinearity, need_dx,
                  need_dw_ih, values=True):  # fmt: skip
    """rnn_layer_grads' checks: the backward op's, plus h0, x and w_ih, whose sizes the
    kernel also trusts."""
    _backward_impl_checks(w_hh, h, grad_h, grad_hn, batch_sizes, nonlinearity, values=values)
    N, H = h.shape
    for name, t in (("h0", h0), ("x", x), ("w_ih", w_ih)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.layout != torch.strided or t.dtype != h.dtype or t.device != h.device:
            _fail(
                TypeError,
                f"{name} must be a dense tensor with the dtype and device of h "
                f"({h.dtype}, {h.device}), got ({t.layout}, {t.dtype}, {t.device})",
            )
    if not isinstance(h0, Tensor) or h0.shape != grad_hn.shape:
        got = tuple(h0.shape) if isinstance(h0, Tensor) else type(h0).__name__
        _fail(ValueError, f"h0 must have the shape of grad_hn {tuple(grad_hn.shape)}, got {got}")
    if need_dx and w_ih is None:
        _fail(ValueError, "need_dx requires w_ih")
    if need_dw_ih and x is None:
        _fail(ValueError, "need_dw_ih requires x")
    if x is not None and (x.dim() != 2 or x.shape[0] != N):
        _fail(ValueError, f"x must have shape [N, I] with N = {N}, got {tuple(x.shape)}")
    if w_ih is not None and (w_ih.dim() != 2 or w_ih.shape[0] != H):
        _fail(ValueError, f"w_ih must have shape [H, I] with H = {H}, got {tuple(w_ih.shape)}")
    if x is not None and w_ih is not None and x.shape[1] != w_ih.shape[1]:
        _fail(
            ValueError,
            f"x and w_ih must agree on I: x {tuple(x.shape)}, w_ih {tuple(w_ih.shape)}",
        )
    if values:
        _refuse_freed(("h0", "x", "w_ih"), h0, x, w_ih)


def _rows_view(g: Tensor) -> tuple[Tensor, int]:
    """``g`` [N, H] as the kernel reads it: ``(tensor, row stride)`` with unit column stride.

    Autograd often hands over gradients that are not contiguous: the gradient of a sum is
    one value expanded (both strides 0: row stride -1, the kernel reads that value for
    every element), a bidirectional layer's output gradient is a column slice of a wider
    matrix. The kernel reads those in place instead of a copy of ``N * H`` elements per
    backward pass. A tensor returned as it is is checked by the caller's ``_addr``; one
    this copies (resolving a negative bit, reshaping, making contiguous) is checked here
    first, as torch's copy would read past a shrunk storage's end.
    """
    if g.is_neg():
        _addr(g)
        g = g.resolve_neg()
    if g.dim() != 2:  # the lean path's [T, B, H] (see _forward_impl's dims)
        if not any(g.stride()):
            return g, -1
        if g.is_contiguous():
            return g, g.shape[-1]
        _addr(g)
        g = g.reshape(-1, g.shape[-1])
    N, H = g.shape
    s0, s1 = g.stride()
    if s1 == 0 and (s0 == 0 or N <= 1):
        return g, -1
    if H <= 1 or s1 == 1:
        if N <= 1:
            return g, H
        if s0 == 0 or s0 >= H:
            return g, s0
    elif s0 == 0:  # one value or one strided row for every row: one row to copy
        _addr(g)
        return g[0].contiguous(), 0
    _addr(g)
    return g.contiguous(), H


def _grads_impl(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity,
                need_dx, need_dw_ih, need_dw_hh, need_db, need_dh0=True, B=None):  # fmt: skip
    """The body of rnn_layer_grads on the CPU kernels: BPTT and every GEMM in one call.

    The eager path may pass None for ``h0``, ``grad_h`` and ``grad_hn`` (zeros, read as
    such by the kernel, with ``B`` given) and ``need_dh0=False`` (``dh0`` comes back None).
    """
    H = h.shape[-1]  # h and x may come in the lean path's shapes: read as rows
    N = h.numel() // H if H else h.shape[0]
    if B is None:
        B = h0.shape[0]
    T = batch_sizes.shape[0] if batch_sizes.numel() else (N // B if B else 0)
    w_hh, h, h0 = _dense(w_hh), _dense(h), _dense(h0)
    grad_hn = _dense(_no_zeros_flag(grad_hn))
    grad_h = _no_zeros_flag(grad_h)
    grad_h, ldg = (None, H) if grad_h is None else _rows_view(grad_h)
    x = _dense(x) if need_dw_ih else None
    w_ih = _dense(w_ih) if need_dx else None
    In = x.shape[-1] if x is not None else (w_ih.shape[1] if w_ih is not None else 0)
    dh0 = h.new_empty(B, H) if need_dh0 else None
    # Outputs may not alias each other: a fresh empty tensor for each gradient not asked for.
    # (empty_like of a contiguous tensor of the same shape: cheaper than new_empty(shape).)
    dx = (
        torch.empty_like(x) if need_dx and x is not None else h.new_empty((N, In) if need_dx else 0)
    )
    dw_ih = (
        torch.empty_like(w_ih)
        if need_dw_ih and w_ih is not None
        else h.new_empty((H, In) if need_dw_ih else 0)
    )
    dw_hh = torch.empty_like(w_hh) if need_dw_hh else h.new_empty(0)
    db = h.new_empty(H if need_db else 0)
    _layer_backward_cpu(
        T, B, H, In, batch_sizes, reverse, nonlinearity, x, w_ih, w_hh, h0, _addr(h), H,
        _addr(grad_h), ldg, grad_hn, dh0, dx if need_dx else None, False,
        dw_ih if need_dw_ih else None, dw_hh if need_dw_hh else None, db if need_db else None,
    )  # fmt: skip
    return dx, dw_ih, dw_hh, db, dh0


def _layer_backward_cpu(T, B, H, In, batch_sizes, reverse, nonlinearity, x, w_ih, w_hh, h0,
                        h_addr, ldh, g_addr, ldg, grad_hn, dh0, dx, dx_accumulate, dw_ih, dw_hh,
                        db):  # fmt: skip
    """``_C.layer_backward`` on checked, contiguous tensors (None: absent, or a gradient not
    asked for); h and the output gradient by address and row stride (``ldg`` as
    :func:`_rows_view` gives it); dP in the kernel's own workspace. The gradients ``dh0``,
    ``dx``, ``dw_ih``, ``dw_hh``, ``db`` are the callers' fresh allocations, taken by
    address without ``_addr``'s check of their storage."""
    _C.layer_backward(
        KERNEL_DTYPES[w_hh.dtype], T, B, H, In, _steps_addr(batch_sizes), reverse, nonlinearity,
        _addr(x), _addr(w_ih), _addr(w_hh), _addr(h0), h_addr, ldh, g_addr, ldg,
        _addr(grad_hn), 0, _raw_addr(dh0), _raw_addr(dx), dx_accumulate, _raw_addr(dw_ih),
        _raw_addr(dw_hh), _raw_addr(db), torch.get_num_threads(),
    )  # fmt: skip


@torch.library.custom_op("fusedrnn::rnn_layer_grads", mutates_args=())
def rnn_layer_grads(
    x: Tensor | None,
    w_ih: Tensor | None,
    w_hh: Tensor,
    h0: Tensor,
    h: Tensor,
    grad_h: Tensor,
    grad_hn: Tensor,
    batch_sizes: Tensor,
    reverse: bool,
    nonlinearity: str,
    need_dx: bool,
    need_dw_ih: bool,
    need_dw_hh: bool,
    need_db: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole CPU backward of one layer-direction: ``(dx, dw_ih, dw_hh, db, dh0)``.

    BPTT (the fused kernel), then dx = dP W_ih, dW_ih = dP^T x, dW_hh = dP^T h_prev and
    db = sum dP, all in one call into ``_C``; a gradient not asked for comes back empty.
    ``x`` is needed for dW_ih, ``w_ih`` for dx.
    """
    _grads_checks(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, nonlinearity,
                  need_dx, need_dw_ih)  # fmt: skip
    if h.is_cuda or h.dtype not in KERNEL_DTYPES:
        _fail(TypeError, f"rnn_layer_grads runs the CPU kernels: got {h.dtype} on {h.device}")
    return _grads_impl(
        x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity,
        need_dx, need_dw_ih, need_dw_hh, need_db,
    )  # fmt: skip


@rnn_layer_grads.register_fake
def _(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity, need_dx,
      need_dw_ih, need_dw_hh, need_db):  # fmt: skip
    _grads_checks(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, nonlinearity,
                  need_dx, need_dw_ih, values=False)  # fmt: skip
    N, H = h.shape
    return (
        h.new_empty((N, w_ih.shape[1])) if need_dx else h.new_empty(0),
        h.new_empty((H, x.shape[1])) if need_dw_ih else h.new_empty(0),
        h.new_empty((H, H)) if need_dw_hh else h.new_empty(0),
        h.new_empty((H,)) if need_db else h.new_empty(0),
        h.new_empty(grad_hn.shape),  # contiguous, as _grads_impl's
    )


rnn_layer_forward.register_autograd(_backward, setup_context=_setup_context)


# torch.utils.flop_counter.FlopCounterMode counts torch.nn.RNN from the GEMMs of its steps;
# the ops run theirs inside, so each op says what its GEMMs compute: 2 flops a multiply-add,
# as torch counts mm, the pointwise work (activation, biases) left out, as there. Under a
# dispatch mode the modules call these ops (see _plain_mode). The BPTT also carries the
# gradient into h0, which nn.RNN skips where h0 needs none (up to 2 B H^2 a layer-direction
# more here then).
@register_flop_formula(torch.ops.fusedrnn.rnn_layer_forward)
def _forward_flops(x, w_ih, w_hh, *args, out_shape=None) -> int:
    """Input projection ``x W_ih^T`` and recurrence ``h_{t-1} W_hh^T`` over all N rows."""
    (N, I), H = x, w_hh[0]
    return 2 * N * H * (I + H)


@register_flop_formula(torch.ops.fusedrnn.rnn_layer_backward)
def _backward_flops(w_hh, h, *args, out_shape=None) -> int:
    """BPTT: ``dP_t W_hh`` for each of the N rows."""
    N, H = h
    return 2 * N * H * H


@register_flop_formula(torch.ops.fusedrnn.rnn_layer_grads)
def _grads_flops(x, w_ih, w_hh, h0, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity,
                 need_dx, need_dw_ih, need_dw_hh, need_db, out_shape=None) -> int:  # fmt: skip
    """BPTT, then ``dx = dP W_ih``, ``dW_ih = dP^T x``, ``dW_hh = dP^T h_prev``: those asked
    for (``x`` is given for dW_ih, ``w_ih`` for dx)."""
    N, H = h
    I = (w_ih if w_ih is not None else x)[1] if need_dx or need_dw_ih else 0
    return 2 * N * H * (H + I * (need_dx + need_dw_ih) + H * need_dw_hh)


def private_when_compiled(output: Tensor) -> Tensor:
    """``output`` (a layer's, which that layer saved for its backward), or a copy of it in a
    graph being compiled for training. Eager calls compute the states again if the caller
    changed the output in place (a residual ``out += x``; _saved_or_recomputed), but a
    compiled graph would hand the changed values to the backward silently: Inductor returns
    the saved buffer itself (or a view of it), and autograd's in-place check does not
    follow it there. A copy (one pass over the output) keeps the caller's output and the
    saved states apart, as nn.RNN's are. Also while exporting, and there whether or not a
    gradient is recorded: an exported graph may be compiled later and trained, and one
    exported with nothing requiring grad (frozen weights, or under torch.no_grad) then had
    no copy, and gave wrong gradients silently (session 22)."""
    if (
        torch.compiler.is_compiling()
        and (output.requires_grad or torch.compiler.is_exporting())
        and not torch._C._are_functorch_transforms_active()
    ):
        return output_copy(output)
    return output


@torch.library.custom_op("fusedrnn::output_copy", mutates_args=())
def output_copy(x: Tensor) -> Tensor:
    """A copy of ``x`` that a compiled graph keeps (Inductor drops ``aten.clone`` as a no-op):
    what a compiled module returns instead of its last layer's output, which that layer
    saved for its backward (see modules.RNN.forward)."""
    return x.clone()


@output_copy.register_fake
def _(x):
    return torch.empty_like(x)


output_copy.register_autograd(lambda ctx, grad: grad)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fusedrnn: double backward through the fused rnn_layer_grads op is not supported; "
        "rnn_layer and the modules are differentiable to any order (and the "
        "rnn_layer_backward op in reverse mode)"
    )


# Nothing differentiates through the fused gradients op: a recorded backward runs it inside
# _FusedGrads (whose derivatives recompute the differentiable path) or runs that path.
rnn_layer_grads.register_autograd(
    _no_double_backward, setup_context=lambda ctx, inputs, output: None
)


# ---- torch.vmap rules for the recurrence ops ---------------------------------------------


def _fold_rows(t: Tensor, batch_sizes: Tensor, B: int) -> Tensor:
    """[V, N, n] rows of V problems as the rows of one problem of batch V * B: at each step,
    sequence b of problem v at position b * V + v, so that the active sequences of a packed
    step stay a prefix (the ones longer than t, all V copies of each)."""
    V, N, n = t.shape
    if batch_sizes.numel() == 0:  # [V, T, B, n] -> [T, B, V, n]
        return t.reshape(V, N // B, B, n).permute(1, 2, 0, 3).reshape(V * N, n)
    index = _index_on(_fold_index(V, N, batch_sizes), t.device)
    return t.reshape(V * N, n).index_select(0, index)


def _unfold_rows(t: Tensor, V: int, batch_sizes: Tensor, B: int) -> Tensor:
    """The inverse of :func:`_fold_rows`: [V * N, n] -> [V, N, n], contiguous as torch's
    own batching rules leave a result (the reshape may be a strided view: at T = 1, an
    RNNCell's, ``.view`` of the vmapped output failed, a helper's review, session 29)."""
    N, n = t.shape[0] // V, t.shape[1]
    if batch_sizes.numel() == 0:
        return t.reshape(N // B, B, V, n).permute(2, 0, 1, 3).reshape(V, N, n).contiguous()
    index = _index_on(_fold_index(V, N, batch_sizes), t.device)
    return t.new_empty(t.shape).index_copy(0, index, t).reshape(V, N, n)


def _fold_index(V: int, N: int, batch_sizes: Tensor) -> Tensor:
    """Row of the [V * N] stacked problems that each folded row takes (see _fold_rows)."""
    T = batch_sizes.shape[0]
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    step = torch.repeat_interleave(torch.arange(T), batch_sizes * V)  # step of each row
    within = torch.arange(V * N) - V * offsets[step]  # position b * V + v in its step
    return (within % V) * N + offsets[step] + within // V


def _fold_states(t: Tensor) -> Tensor:
    """[V, B, H] states -> [B * V, H], sequence b of problem v at b * V + v."""
    V, B, H = t.shape
    return t.transpose(0, 1).reshape(B * V, H)


def _unfold_states(t: Tensor, V: int) -> Tensor:
    """The inverse of :func:`_fold_states`, contiguous (see :func:`_unfold_rows`)."""
    return t.reshape(t.shape[0] // V, V, t.shape[1]).transpose(0, 1).contiguous()


def _stacked(t: Tensor, in_dim: int | None, V: int) -> Tensor:
    """``t`` with its vmapped dimension first (an unbatched one expanded, not copied)."""
    return t.movedim(in_dim, 0) if in_dim is not None else t.expand(V, *t.shape)


def _problem(args, in_dims, i: int) -> list:
    """The arguments of vmapped problem ``i`` alone (an unbatched one as it is)."""
    return [a if d is None else a.select(d, i) for a, d in zip(args, in_dims, strict=True)]


def _vmap_loop(op, info, in_dims, args):
    """One op call per vmapped problem, stacked: for batched weights or batch_sizes, and
    for arguments the folding cannot take (refused there by these calls, by name)."""
    V, outputs = info.batch_size, []
    for i in range(V):
        try:
            outputs.append(op(*_problem(args, in_dims, i)))
        except Exception as error:  # its message is one problem's: which one, in a note
            if V > 1:
                error.add_note(f"fusedrnn: in vmapped problem {i} of {V}")
            raise
    return tuple(torch.stack(o) for o in zip(*outputs, strict=True)), (0, 0)


_is_batched = torch._C._functorch.is_batchedtensor


def _folds_as_is(batch_sizes: Tensor) -> bool:
    """The folded call's ``batch_sizes * V`` is checked as ``batch_sizes`` would be: it is
    int64, dense and contiguous whatever ``batch_sizes`` is (a bool or strided one, which
    an unvmapped call refuses, was accepted), and ``batch_sizes`` is not batched by an
    enclosing vmap (the folding's index arithmetic on it ran torch's per-problem fallback,
    which warns). Else the per-problem calls. (A negative view needs neither: the
    dispatcher resolves it before any op's body, the product's too.)"""
    return (
        batch_sizes.layout == torch.strided
        and batch_sizes.dtype == torch.int64
        and batch_sizes.is_contiguous()
        and not _is_batched(batch_sizes)
    )


def _refuse_as_unvmapped(op, in_dims, args) -> None:
    """Raise what ``op`` raises for the first vmapped problem alone, as an unvmapped call of
    it would (the argument's name, that problem's sizes); return if it runs. For a folded
    call that failed: its messages quote sizes V times the caller's ("B = 9" for an h0 of 3
    rows), and the folding's own reshapes fail with torch's messages, which name nothing.
    Only then: a call that runs pays nothing for it. (The problems share their shapes, and
    their batch_sizes: the first one's checks are every one's.)"""
    try:
        op(*_problem(args, in_dims, 0))
    except Exception as error:
        raise error from None  # (not chained to the folded call's error, with its sizes)


def _vmap_empty(shapes, steps, in_dims, args):
    """vmap over a dimension of size 0: no problem, and outputs ``[0, ...]`` in the shapes
    one problem's would have (torch's "incompatible (output, out_dims)" error before, for
    valid calls too). ``shapes`` (the op's checks and outputs, :func:`_forward_shapes`)
    runs on one problem's arguments, uninitialized, so a wrong argument is refused as with
    problems: with the checks that read ``batch_sizes`` where it is not batched (a batched
    one has no values here), and nothing computed."""
    one = [a if d is None else a.new_empty(a.shape[:d] + a.shape[d + 1 :])
           for a, d in zip(args, in_dims, strict=True)]  # fmt: skip
    out_rows, out_state = shapes(in_dims[steps] is None, *one)
    none = (out_rows.new_empty(0, *out_rows.shape), out_state.new_empty(0, *out_state.shape))
    return none, (0, 0)


def _vmap_folded(op, shapes, rows, state, steps, info, in_dims, *args):
    """torch.vmap over a recurrence op whose ``args[rows]`` are [N, n] rows, ``args[state]``
    a [B, H] state and ``args[steps]`` the batch_sizes, returning (rows, state): when only
    those rows and the state are batched, the V problems run as one of batch V * B (one
    kernel call); with batched weights or batch_sizes, one call per problem. A wrong
    argument is refused as in an unvmapped call (see :func:`_refuse_as_unvmapped`).
    ``shapes``: the op's checks and outputs without computing them (:func:`_vmap_empty`)."""
    V = info.batch_size
    if not V:
        return _vmap_empty(shapes, steps, in_dims, args)
    states = _stacked(args[state], in_dims[state], V)
    B = states.shape[1] if states.dim() > 1 else 0  # (a 0-D state: the loop's calls refuse it)
    batch_sizes = args[steps]
    if (
        any(d is not None for i, d in enumerate(in_dims) if i not in (*rows, state))
        or not B * V
        or not _folds_as_is(batch_sizes)
    ):
        return _vmap_loop(op, info, in_dims, args)
    try:
        folded = list(args)
        for i in rows:
            folded[i] = _fold_rows(_stacked(args[i], in_dims[i], V), batch_sizes, B)
        folded[state] = _fold_states(states)
        folded[steps] = batch_sizes * V if batch_sizes.numel() else batch_sizes
        out_rows, out_state = op(*folded)
    except Exception:
        _refuse_as_unvmapped(op, in_dims, args)
        raise  # (the first problem alone runs: no argument of the caller's is wrong)
    return (_unfold_rows(out_rows, V, batch_sizes, B), _unfold_states(out_state, V)), (0, 0)


# CustomOpDef.register_vmap is newer than some torch versions this package supports;
# without it, vmap batches the ops with torch's per-problem fallback (slower, and it warns).
if hasattr(rnn_layer_forward, "register_vmap"):
    # forward (x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, ...) -> (h, hn); BPTT (w_hh, h,
    # grad_h, grad_hn, batch_sizes, ...) -> (dP, dh0)
    rnn_layer_forward.register_vmap(
        functools.partial(_vmap_folded, rnn_layer_forward, _forward_shapes, (0,), 5, 6)
    )
    rnn_layer_backward.register_vmap(
        functools.partial(_vmap_folded, rnn_layer_backward, _backward_shapes, (1, 2), 3, 4)
    )


# Autocast policy. The forward op: on CUDA, and on a CPU without the bfloat16 kernels, a
# "float32 op", like those on autocast's fp32 list: inside an autocast region its
# float16/bfloat16 inputs are cast to float32 (float64 is left alone) and it runs with
# autocast off, so the input GEMM, the recurrence and its state all stay in float32. On a
# CPU with the bfloat16 kernels (_C.cpu_has_bf16()), CPU autocast to bfloat16 casts them to
# bfloat16 instead: the layers then run as a bfloat16 model's do (bfloat16 GEMMs, a
# bfloat16 state, float32 accumulation), as nn.RNN's do under autocast, but with one
# rounding per stored value where nn.RNN rounds after every op. Without a rule autocast
# would lower the GEMMs inside the op and hand a kernel a buffer of another dtype. (rnn_layer
# sends every call made under autocast through the ops, or casts first: _autocast_args.) The
# modules cast their results to the autocast dtype, as torch.nn.RNN's are.
# The backward ops take the tensors the forward saved, whose dtypes the forward chose: on
# the CPU they run with autocast off and cast nothing, so a backward pass run inside an
# autocast region computes in the forward's dtypes (on CUDA: the float32 rule, as before).
def _cpu_autocast_dtype() -> torch.dtype:
    """The dtype the forward op computes in under CPU autocast (see the policy above)."""
    if torch.bfloat16 in KERNEL_DTYPES and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def _autocast_cast(value, dtype: torch.dtype, device_type: str):
    """``value`` with its floating tensors on ``device_type``, other than float64, cast to
    ``dtype`` (the rule torch.library.register_autocast applies)."""
    if isinstance(value, Tensor):
        eligible = (
            value.is_floating_point()
            and value.device.type == device_type
            and value.dtype != torch.float64
        )
        return value.to(dtype) if eligible else value
    if isinstance(value, (list, tuple)):
        return type(value)(_autocast_cast(v, dtype, device_type) for v in value)
    return value


def _autocast_args(args: tuple) -> tuple:
    """rnn_layer's arguments as the forward op's autocast rule casts them, where an autocast
    region is active for their device. For the paths that wrap the op in an
    autograd.Function of their own (torch.func): the Function must see, and save, the
    tensors the op computes with, so that the backward gets consistent dtypes."""
    device_type = args[0].device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return args
    dtype = _cpu_autocast_dtype() if device_type == "cpu" else torch.float32
    return _autocast_cast(args, dtype, device_type)


def _register_cpu_autocast(op, cast: bool) -> None:
    """The CPU autocast rule of ``op``: torch.library.register_autocast's, with the dtype
    chosen per call (``cast``), or autocast off and nothing cast."""
    excluded = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def kernel(_keyset, *args):
        if cast:
            args = _autocast_cast(args, _cpu_autocast_dtype(), "cpu")
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return op._opoverload(*args)

    op._lib.impl(op._name, kernel, "AutocastCPU", with_keyset=True)


for _op in (rnn_layer_forward, rnn_layer_backward, rnn_layer_grads):
    if torch.amp.is_autocast_available("cuda"):
        torch.library.register_autocast(_op, "cuda", torch.float32)
    _register_cpu_autocast(_op, cast=_op is rnn_layer_forward)


class _FlagCheckedOp(type(rnn_layer_forward)):  # torch._library.custom_ops.CustomOpDef
    """A registered op whose Python calls (``ops.rnn_layer_backward(...)``) refuse a flag
    that is not a bool by name. torch's dispatcher reads a ``bool`` of the schema as the
    value's truth (None as False; 2.0, numpy.True_, tensor(True) as True; only a str is
    refused, as "Expected a value of type 'bool'"), so the op's body sees only the bool it
    made and cannot check. ``torch.ops.fusedrnn.*`` keeps the dispatcher's reading, as
    ``torch.ops.aten.*`` does."""

    def __call__(self, *args, **kwargs):
        for i, name in self._flags:  # (a missing one: the dispatcher's error)
            value = args[i] if i < len(args) else kwargs.get(name, False)
            if value is not True and value is not False:
                _refuse_flag(name, value)
        return super().__call__(*args, **kwargs)


for _op in (rnn_layer_forward, rnn_layer_backward, rnn_layer_grads):
    try:
        _op._flags = tuple(
            (i, a.name)
            for i, a in enumerate(_op._opoverload._schema.arguments)
            if a.type.kind() == "BoolType"
        )
        _op.__class__ = _FlagCheckedOp
    except (AttributeError, TypeError):  # pragma: no cover
        # A torch whose CustomOpDef takes no new class or keeps its schema elsewhere: the
        # ops keep the dispatcher's reading of their flags (rnn_layer still checks
        # reverse); importing fusedrnn must not fail over a message.
        pass


class _EagerLayer(torch.autograd.Function):
    """The custom op's computation and autograd formulas without torch.library dispatch.

    Dispatching a custom op costs tens of microseconds per call, which dominates small
    layers and single steps; plain eager calls take this path instead (see rnn_layer).
    """

    # The old-style forward(ctx, ...): with a separate setup_context, Function.apply binds
    # the arguments through inspect.signature on every call (~15 us).
    # dims: (T, B, H) of arguments the caller checked (fast_input_cpu), else None.
    @staticmethod
    # to_caller: the output goes to the caller (else to the next layer only): see
    # _keep_for_recompute.
    # names: the caller's names of its tensors, or None (see name_node).
    def forward(
        ctx, x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity, dims, to_caller,
        names,
    ):  # fmt: skip
        inputs = (x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)
        output = _forward_impl(*inputs, dims)
        _setup_layer(ctx, inputs, output, to_caller)
        ctx.eager = True
        if names is not None:
            ctx.fusedrnn_names = names
        return output

    @staticmethod
    def backward(ctx, grad_h, grad_hn):
        return (*_backward(ctx, grad_h, grad_hn), None, None, None)


# ---- derivatives under torch.func, forward mode and second order -------------------------


class _BPTT(torch.autograd.Function):
    """The BPTT op (:func:`rnn_layer_backward`), differentiable to any order: what a
    backward pass runs while a graph of it is recorded (``create_graph=True``, torch.func),
    so that second derivatives (double backward, hessian) come out as torch.nn.RNN's.

    With ``e_t = g_t + d_next W + [last] g_hn`` and ``d_t = e_t * s(h_t)``,
    ``s = phi'`` (1 - h^2; relu: [not h <= 0], applied as a select, so that 0 * inf is 0),
    and ``dh0 = d_first W``:

    - backward: ``e_bar_t = (c_t + e_bar_prev W^T) * s_t``, starting from ``c0 W^T``, is
      the same recurrence walked the other way (this op again, on W^T, direction flipped);
      then ``g_bar = e_bar``, ``g_hn_bar`` = e_bar at the last steps,
      ``W_bar = sum d_next^T e_bar + d_first^T c0`` and ``h_bar = c_tilde * e * s'(h)``,
      ``c_tilde_t = c_t + e_bar_prev W^T`` (zero for relu: s' = 0);
    - forward mode: ``delta d = a + b`` with ``b = e * s'(h) delta h`` and ``a`` this op on
      ``delta g + d_next delta W + b_next W`` (seed ``delta g_hn``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity):
        return rnn_layer_backward(w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        w_hh, h, grad_h, grad_hn, batch_sizes, reverse, nonlinearity = inputs
        ctx.save_for_backward(w_hh, h, grad_h, grad_hn, batch_sizes, output[0])
        ctx.save_for_forward(w_hh, h, grad_h, grad_hn, batch_sizes, output[0])
        ctx.reverse, ctx.nonlinearity = reverse, nonlinearity

    @staticmethod
    def _pre_activation_grad(ctx, w_hh, grad_h, grad_hn, batch_sizes, dP):
        """e = g + d_next W + g_hn scattered to each sequence's last step."""
        d_next = _prev_states(dP, torch.zeros_like(grad_hn), batch_sizes, not ctx.reverse)
        return _add_to_last_rows(grad_h + d_next @ w_hh, grad_hn, batch_sizes, ctx.reverse)

    @staticmethod
    def backward(ctx, c, c0):
        w_hh, h, grad_h, grad_hn, batch_sizes, dP = ctx.saved_tensors
        needs = ctx.needs_input_grad
        B = grad_hn.shape[0]
        c = torch.zeros_like(dP) if c is None else c
        c0 = torch.zeros_like(grad_hn) if c0 is None else c0
        wt = w_hh.t().contiguous()
        e_bar, _ = _BPTT.apply(wt, h, c, c0 @ wt, batch_sizes, not ctx.reverse, ctx.nonlinearity)
        w_bar = h_bar = None
        if needs[0]:
            d_next = _prev_states(dP, torch.zeros_like(grad_hn), batch_sizes, not ctx.reverse)
            d_first = _last_rows(dP, B, batch_sizes, not ctx.reverse)
            w_bar = d_next.t() @ e_bar + d_first.t() @ c0
        if needs[1] and ctx.nonlinearity == "tanh":  # relu: s' = 0, no gradient for h
            e = _BPTT._pre_activation_grad(ctx, w_hh, grad_h, grad_hn, batch_sizes, dP)
            c_tilde = c + _prev_states(e_bar, c0, batch_sizes, ctx.reverse) @ wt
            h_bar = -2 * h * c_tilde * e
        g_bar = e_bar if needs[2] else None
        g_hn_bar = _last_rows(e_bar, B, batch_sizes, ctx.reverse) if needs[3] else None
        return w_bar, h_bar, g_bar, g_hn_bar, None, None, None

    @staticmethod
    def jvp(ctx, dw, dh, dg, dg_hn, *_):
        w_hh, h, grad_h, grad_hn, batch_sizes, dP = ctx.saved_tensors
        B = grad_hn.shape[0]
        zeros = torch.zeros_like(grad_hn)
        g_in = torch.zeros_like(dP) if dg is None else dg
        b = None
        if dh is not None and ctx.nonlinearity == "tanh":
            e = _BPTT._pre_activation_grad(ctx, w_hh, grad_h, grad_hn, batch_sizes, dP)
            b = -2 * h * dh * e
            g_in = g_in + _prev_states(b, zeros, batch_sizes, not ctx.reverse) @ w_hh
        d_next = _prev_states(dP, zeros, batch_sizes, not ctx.reverse)
        if dw is not None:
            g_in = g_in + d_next @ dw
        seed = zeros if dg_hn is None else dg_hn
        a, _ = _BPTT.apply(w_hh, h, g_in, seed, batch_sizes, ctx.reverse, ctx.nonlinearity)
        d_dP = a if b is None else a + b
        d_dh0 = _last_rows(d_dP, B, batch_sizes, not ctx.reverse) @ w_hh
        if dw is not None:
            d_dh0 = d_dh0 + _last_rows(dP, B, batch_sizes, not ctx.reverse) @ dw
        return d_dP, d_dh0


rnn_layer_backward.register_autograd(_BPTT.backward, setup_context=_BPTT.setup_context)


def _recorded_grads(*args):
    """rnn_layer_grads' results through the differentiable BPTT and torch's GEMMs."""
    return _grads_via(_BPTT.apply, *args)


class _FusedGrads(torch.autograd.Function):
    """The fused gradients op (:func:`rnn_layer_grads`) where a graph of the backward is
    recorded: the fused kernels for the gradients themselves, and for their derivatives a
    recomputation through :func:`_recorded_grads` (differentiable to any order)."""

    @staticmethod
    def forward(*args):
        return rnn_layer_grads(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:8])
        ctx.flags = inputs[8:]

    @staticmethod
    def backward(ctx, *cotangents):
        saved = list(ctx.saved_tensors)
        tensors, batch_sizes = saved[:7], saved[7]
        flags = ctx.flags
        wanted = [i for i in range(7) if tensors[i] is not None and ctx.needs_input_grad[i]]
        present = [flags[2], flags[3], flags[4], flags[5], True]  # dx, dw_ih, dw_hh, db, dh0

        def grads_of(*primals):
            full = list(tensors)
            for i, t in zip(wanted, primals, strict=True):
                full[i] = t
            outputs = _recorded_grads(*full, batch_sizes, *flags)
            return tuple(o for o in outputs if o is not None)

        primals = tuple(tensors[i] for i in wanted)
        # (Autograd materializes the cotangents of unused outputs as zeros.)
        cots = tuple(c for c, p in zip(cotangents, present, strict=True) if p)
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is None:
            _, pullback = torch.func.vjp(grads_of, *primals)
            pulled = pullback(cots)
        else:
            # Under saved_tensors_hooks (save_on_cpu, checkpointing), which torch.func
            # refuses (it raised, where nn.RNN's double backward works): the same product
            # through autograd, recorded where this backward is (create_graph=True).
            # Each primal its own tensor: the same one may come twice (a cell's output is
            # its h_n, so the two gradients may be one tensor), and autograd would give
            # each the whole sum where vjp gives each its part.
            record = torch.is_grad_enabled()
            if record:
                primals = tuple(t.view_as(t) for t in primals)
            else:
                primals = tuple(t.detach().requires_grad_() for t in primals)
            with torch.enable_grad():
                outputs = grads_of(*primals)
            pulled = torch.autograd.grad(outputs, primals, cots, create_graph=record,
                                         allow_unused=True, materialize_grads=True)  # fmt: skip
        result = [None] * (8 + len(flags))
        for i, g in zip(wanted, pulled, strict=True):
            result[i] = g
        return tuple(result)


_is_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def _recorded_or_transformed(*grads) -> bool:
    """A graph of the backward is recorded, torch.func transforms or a forward-AD dual level
    are active (batched or dual gradients), or one of ``grads`` is batched by torch's legacy
    vmap (``autograd.grad(..., is_grads_batched=True)``, ``autograd.functional`` with
    ``vectorize=True``), which no torch.func interpreter announces: the kernels may not be
    called on raw pointers then."""
    if torch.is_grad_enabled() or _func_or_forward_ad():
        return True
    for g in grads:
        if g is not None and _is_legacy_batched(g):
            return True
    return False


def _transforms() -> list:
    """The TransformType of each active torch.func interpreter (none: an empty list)."""
    if not torch._C._are_functorch_transforms_active():
        return []
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return [i.key() for i in retrieve_all_functorch_interpreters()]


def _reverse_levels_only() -> bool:
    """Only reverse-mode levels are active (no forward-AD dual level, no torch.func jvp or
    vmap): where :class:`_FusedGrads` may stand in for the differentiable path."""
    from torch._C._functorch import TransformType

    return _forward_ad._current_level < 0 and all(k == TransformType.Grad for k in _transforms())


class _FuncLayer(torch.autograd.Function):
    """rnn_layer under torch.func transforms (grad, vjp, jacrev, jvp, jacfwd, vmap) and
    forward-mode AD (``torch.autograd.forward_ad``).

    The registered op's own autograd (torch.library's generated Function) cannot run under
    functorch transforms, and it has no forward-mode formula; this Function computes the
    forward through the op (vmap batches it with torch's fallback, as it does the op) and has
    the op's backward and a forward-mode rule of its own:

        u_t = phi'(h_t) * (Q_t + u_prev W_hh^T),   u_prev = dh0 where the sequence starts,
        Q_t = dx_t W_ih^T + x_t dW_ih^T + h_prev dW_hh^T + db_ih + db_hh,

    a recurrence of the BPTT's form walked in the forward direction: the BPTT op on W_hh^T,
    with the direction flipped, Q in the place of the output gradient and dh0 W_hh^T as the
    state gradient it starts from.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity):
        return rnn_layer_forward(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # The same tensors for the backward as for forward mode: the generated vmap rule
        # re-batches both with the batch dims of the last save call, so a None saved for
        # the backward (x when dW_ih is not needed) in the place of a batched x made
        # grad(vmap(model)), and the backward of an ensemble over stacked parameters,
        # raise an internal TypeError (a helper's review, session 28).
        _setup_context(ctx, inputs, output, save_all=True)
        x, w_ih, w_hh, _b_ih, _b_hh, h0, batch_sizes, _reverse, _nonlinearity = inputs
        ctx.save_for_forward(x, w_ih, w_hh, h0, output[0], batch_sizes)

    @staticmethod
    def backward(ctx, grad_h, grad_hn):
        return _backward(ctx, grad_h, grad_hn)

    @staticmethod
    def jvp(ctx, dx, dw_ih, dw_hh, db_ih, db_hh, dh0, *_):
        x, w_ih, w_hh, h0, h, batch_sizes = ctx.saved_tensors
        if h.shape[1] == 0:  # H = 0 (torch.nn.RNNCell allows it): nothing to propagate
            return torch.zeros_like(h), torch.zeros_like(h0)
        terms = []
        if dx is not None:
            terms.append(dx @ w_ih.t())
        if dw_ih is not None:
            terms.append(x @ dw_ih.t())
        if dw_hh is not None:
            terms.append(_prev_states(h, h0, batch_sizes, ctx.reverse) @ dw_hh.t())
        for db in (db_ih, db_hh):
            if db is not None:
                terms.append(db.expand_as(h))
        q = functools.reduce(torch.add, terms) if terms else torch.zeros_like(h)
        start = dh0 @ w_hh.t() if dh0 is not None else torch.zeros_like(h0)
        u, _ = _BPTT.apply(
            w_hh.t().contiguous(), h, q, start, batch_sizes, not ctx.reverse, ctx.nonlinearity
        )
        return u, _last_rows(u, ctx.B, batch_sizes, ctx.reverse)


# Function.apply without its Python wrapper, which binds arguments for functorch and
# unwraps its dead wrappers (~3 us a call): rnn_layer takes this only when no functorch
# transform is active (_plain_eager).
_eager_layer_apply = super(torch.autograd.Function, _EagerLayer).apply


def _func_or_forward_ad() -> bool:
    """torch.func transforms or a forward-AD dual level are active: the layers then go
    through :class:`_FuncLayer` (the registered op's own autograd cannot run under the
    former and has no forward-mode rule for the latter)."""
    return _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


@torch.compiler.disable
def _func_layer(args):
    """rnn_layer under torch.func or forward AD. Never traced by torch.compile (which
    cannot trace the transforms' interpreter stack or this Function's jvp): a compiled
    torch.func transform of a model runs the layers eagerly, as for torch.nn.RNN."""
    kinds = _transforms()  # (one walk of the interpreter stack for both tests)
    if _nested_forward_mode(kinds) or _functionalized(kinds):
        check_layer_args(*args[:7], args[8])  # the kernels' checks: the same errors
        return _torch_layer(*args)
    return _FuncLayer.apply(*_autocast_args(args))


def _functionalized(kinds: list) -> bool:
    """Under torch.func.functionalize (``kinds``: :func:`_transforms`), which has no rule
    for an autograd.Function (it raised "NYI: Functionalize rule for custom_function_call";
    torch.compile and torch.export functionalize by another route and do not come here)."""
    from torch._C._functorch import TransformType

    return TransformType.Functionalize in kinds


def _nested_forward_mode(kinds: list) -> bool:
    """Forward mode nested in forward mode (jacfwd of jacfwd, jvp of jvp; ``kinds``:
    :func:`_transforms`): through an
    autograd.Function torch drops the inner tangents' own tangents (pytorch/pytorch#197867,
    open), so the layer then runs as torch ops (:func:`_torch_layer`). One forward level
    with any number of reverse levels (hessian, jacrev of jacfwd) goes through the kernels."""
    # torch.func's jvp levels all share one forward-AD dual level (and torch refuses a
    # user's dual level around them): count its Jvp interpreters.
    from torch._C._functorch import TransformType

    return sum(k == TransformType.Jvp for k in kinds) > 1


def _torch_layer(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity):
    """The layer as torch ops, one step at a time (the kernels' math, torch's derivative
    rules for every transform): for nested forward mode and torch.func.functionalize only,
    where speed does not count."""
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    p = x @ w_ih.t()
    for b in (b_ih, b_hh):
        if b is not None:
            p = p + b
    B = h0.shape[0]
    steps = batch_sizes.tolist() if batch_sizes.numel() else [B] * (x.shape[0] // max(B, 1))
    starts = [0]
    for n in steps[:-1]:
        starts.append(starts[-1] + n)
    outs: list[Tensor] = [p[:0]] * len(steps)
    state = h0 if not reverse else h0[:0]  # the latest state of each sequence so far
    for t in reversed(range(len(steps))) if reverse else range(len(steps)):
        n = steps[t]
        if reverse:  # sequences joining at t start from their h0 rows
            state = torch.cat((state, h0[state.shape[0] : n]))
        h = phi(p[starts[t] : starts[t] + n] + state[:n] @ w_hh.t())
        outs[t] = h
        state = torch.cat((h, state[n:]))
    if reverse:  # every sequence has ended at t = 0
        state = torch.cat((state, h0[state.shape[0] :]))
    return torch.cat(outs), state


PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


def _plain_eager(x: Tensor, *tensors) -> bool:
    """True when nothing needs the registered op: no compiler, export, autocast, functorch
    transform, dispatch mode, tensor subclass or meta tensor is in play. ``tensors`` are the
    other arguments (weights, h0; None for an absent bias): a subclass among them (one with
    its own __torch_function__, a DTensor) must see the op, not raw pointers."""
    for t in tensors:
        if t is not None and type(t) not in PLAIN_TENSOR_TYPES:
            return False
    return type(x) is Tensor and not x.is_meta and _plain_mode()


_FAKE = torch._C._TorchDispatchModeKey.FAKE


def _plain_mode() -> bool:
    """No compiler, export, JIT tracer, autocast, functorch transform or dispatch mode is
    active."""
    return (
        not torch.compiler.is_compiling()
        and not torch._C._get_tracing_state()
        and not torch._C._is_any_autocast_enabled()
        and not torch._C._are_functorch_transforms_active()
        and torch._C._get_dispatch_mode(_FAKE) is None
        and not _python_dispatch.is_in_torch_dispatch_mode()
    )


def fast_input_cpu(x: Tensor) -> bool:
    """The modules' fast path applies to ``x``: a plain dense CPU tensor in a kernel dtype,
    no mode of :func:`_plain_eager` and no forward AD active. Its other arguments must
    then pass :func:`fast_addresses_cpu`, and the caller checks the sizes; together these are
    :func:`check_layer_args` for padded input, so the layer calls skip it (``dims``)."""
    return (
        type(x) is Tensor
        and x.is_cpu
        and x.dtype in KERNEL_DTYPES
        and x.layout is torch.strided
        and _plain_mode()  # includes "no functorch transform": jvp is one
        and _forward_ad._current_level < 0  # no dual level: see _func_or_forward_ad
        and not x.is_neg()  # after _plain_mode: torch.compile cannot trace is_neg()
        and not _cuda.freed(x)  # its storage freed or shrunk: the general path names it
    )


def fast_input_cuda(x: Tensor) -> bool:
    """:func:`fast_input_cpu` for CUDA: a plain dense CUDA tensor in a dtype of the CUDA
    kernels (float32, float64, bfloat16, float16), the kernels built, no mode and no forward
    AD. Its other arguments must then pass :func:`fast_addresses_cpu` with the input's
    device (the modules' lean path on CUDA, one direction per layer)."""
    return (
        type(x) is Tensor
        and x.is_cuda
        and x.dtype in _cuda.KERNEL_DTYPES
        and x.layout is torch.strided
        and _plain_mode()
        and _forward_ad._current_level < 0
        and not x.is_neg()
        and _cuda.available()
        and not _cuda.freed(x)
    )


def forward_cuda_checked(x, w_ih, w_hh, b_ih, b_hh, h0, out, hn, T, B, H, reverse, nonlinearity):
    """One layer-direction of padded input on CUDA, on arguments the caller checked
    (:func:`fast_input_cuda`, :func:`fast_addresses_cpu`, sizes ``T, B, H``): ``out`` (any
    shape of ``T B`` contiguous rows of ``H``) gets ``P = x W_ih^T + b_ih + b_hh`` from one
    GEMM, then the recurrence in place; ``hn`` (``B H`` contiguous) the last state. ``x``
    is contiguous ``[..., I]`` of ``T B`` rows; ``h0`` None for a zero state (the kernels
    read address 0 as zeros). The same operations, in the same order, as
    :func:`_forward_impl` on CUDA. (Writing through ``out=`` bumps ``out``'s version
    counter: the lean path's output reads version 1 where the general path's reads 0,
    which changes nothing for autograd, whose in-place checks start from there.)"""
    rows = x.view(T * B, x.shape[-1])
    P = out.view(T * B, H)
    bias = _combined_bias(b_ih, b_hh)
    if bias is not None:
        torch.addmm(bias, rows, w_ih.t(), out=P)
    else:
        torch.mm(rows, w_ih.t(), out=P)
    _cuda.rnn_forward(T, B, H, _NO_STEPS, reverse, nonlinearity, P, w_hh, h0, P, hn)


def fast_addresses_cpu(
    tensors, shapes, dtype: torch.dtype, device: torch.device | None = None
) -> list[int] | None:
    """The data addresses of ``tensors`` when each is a plain, contiguous, dense CPU tensor
    of ``dtype`` with its shape in ``shapes`` and its values plainly in memory (no negative
    bit): what the kernels may read by address. None when one is not. One loop for all of
    a module's weights and its state (this runs on every call). ``device``: on that device
    instead of the CPU (the modules' lean path on CUDA)."""
    strided, plain, size = torch.strided, PLAIN_TENSOR_TYPES, dtype.itemsize
    addresses = []
    for t, shape in zip(tensors, shapes, strict=False):  # equal lengths by construction
        if (
            type(t) not in plain
            or t.dtype is not dtype
            or (not t.is_cpu if device is None else t.device != device)
            or t.layout is not strided
            or not t.is_contiguous()
            or t.is_neg()
            or t.shape != shape
        ):
            return None
        address = t.data_ptr()
        # Storage freed or shrunk (_cuda.freed, inline for a contiguous tensor: this runs
        # for every weight of every call): the general path names it.
        if (
            not address or t.untyped_storage().nbytes() < t.nbytes + t.storage_offset() * size
        ) and t.numel():
            return None
        addresses.append(address)
    return addresses


def records_graph(*tensors) -> bool:
    """Grad mode is on and some argument requires grad: the call needs an autograd node."""
    return torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in tensors)


def rnn_layer(
    x,
    w_ih,
    w_hh,
    b_ih,
    b_hh,
    h0,
    batch_sizes,
    reverse=False,
    nonlinearity="tanh",
    *,
    output_to_caller=True,
):
    """Differentiable one-layer, one-direction Elman RNN. See the module docstring.

    Plain eager calls run the shared implementation directly (no autograd node when no
    input requires grad); everything else goes through ``torch.ops.fusedrnn``.

    The backward reads the returned output as the layer's states. If the caller changes it
    in place before the backward (a residual ``h += x``), an eager backward computes them
    again; a graph compiled for training (torch.compile, torch.export) returns a copy of
    it instead (one pass over it), since there the change would reach the backward
    silently. ``output_to_caller=False`` is for a caller that never hands the output out
    (the modules' inner layers): no copy, and the eager backward keeps nothing for it.
    """
    if reverse is not True and reverse is not False:  # (every path below reads its truth)
        _refuse_flag("reverse", reverse)
    args = (x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, nonlinearity)
    if _func_or_forward_ad():
        _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes)
        return _func_layer(args)
    if not _plain_eager(x, w_ih, w_hh, b_ih, b_hh, h0):
        # The dispatcher would reject a non-tensor before the checks could name it.
        _check_tensor_types(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes)
        if torch.compiler.is_compiling():
            # Traced, the output is no plain tensor and setup_context keeps nothing for it
            # (_keep_for_recompute): no flag to pass, and Dynamo cannot trace the
            # thread-local below inside some regions (torch.utils.checkpoint's).
            h, hn = rnn_layer_forward(*args)
        else:
            # The registered op's setup_context cannot take the flag (it gets the op's
            # arguments): it reads it here, in this thread, during the call.
            _CALL.output_to_caller = output_to_caller
            try:
                h, hn = rnn_layer_forward(*args)
            finally:
                _CALL.output_to_caller = False
        return (private_when_compiled(h) if output_to_caller else h), hn
    if records_graph(x, w_ih, w_hh, b_ih, b_hh, h0):
        return _eager_layer_apply(*args, None, output_to_caller, None)
    return _forward_impl(*args)


def rnn_layer_checked(
    x, w_ih, w_hh, b_ih, b_hh, h0, nonlinearity, dims, output_to_caller=True, names=None
):
    """:func:`rnn_layer` on padded arguments the caller checked (:func:`fast_input_cpu`,
    :func:`fast_addresses_cpu`, sizes ``dims``), recording the graph: the modules'
    fast path. ``h0`` may be None for a zero state. ``names``: the caller's names of the
    tensors, as :func:`name_node` gives them (without its lookup of the node)."""
    return _eager_layer_apply(
        x, w_ih, w_hh, b_ih, b_hh, h0, _NO_STEPS, False, nonlinearity, dims, output_to_caller,
        names,
    )  # fmt: skip


def rnn_bidirectional_layer_checked(
    x, w_fwd, w_rev, h0_fwd, h0_rev, nonlinearity, dims, output_to_caller=True, names=None
):
    """:func:`rnn_bidirectional_layer` on checked padded arguments, recording the graph
    (see :func:`rnn_layer_checked`)."""
    return _eager_bi_layer_apply(
        x, *w_fwd, *w_rev, h0_fwd, h0_rev, _NO_STEPS, nonlinearity, dims, output_to_caller,
        names,
    )  # fmt: skip


# Each direction's tensors by the name rnn_bidirectional_layer gives them.
_FWD_NAMES = {"w_ih": "w_fwd[0] (w_ih)", "w_hh": "w_fwd[1] (w_hh)", "b_ih": "w_fwd[2] (b_ih)",
              "b_hh": "w_fwd[3] (b_hh)", "h0": "h0_fwd"}  # fmt: skip
_REV_NAMES = {k: v.replace("fwd", "rev") for k, v in _FWD_NAMES.items()}
_BI_NAMES = ("x", *_FWD_NAMES.values(), *_REV_NAMES.values())  # (x, w_fwd..., h0_fwd, w_rev...)
# A direction's node of the two-op bidirectional layer (see name_node): _SAVED_NAMES -> the
# names of rnn_bidirectional_layer, as _EagerBiLayer's (_BI_SAVED_NAMES).
_FWD_NODE_NAMES = {**_FWD_NAMES, "the layer's output (h)": "the layer's output"}
_REV_NODE_NAMES = {**_REV_NAMES, "the layer's output (h)": "the layer's output"}


def _bi_forward_impl(x, wf, wb, h0f, h0b, batch_sizes, nonlinearity, dims=None):
    """Both directions of one bidirectional layer on the CPU kernels, each writing its own
    columns of one ``[N, 2H]`` output (row stride 2H): no concatenation afterwards.

    ``dims = (T, B, H, out_shape, hn_shape)``: checked arguments, as in
    :func:`_forward_impl`."""
    if dims is not None:
        T, B, H, out_shape, hn_shape = dims
        out = x.new_empty(out_shape)
        hnf, hnb = x.new_empty(hn_shape), x.new_empty(hn_shape)
        half = H * out.element_size()
        for d, (w, h0, hn) in enumerate(((wf, h0f, hnf), (wb, h0b, hnb))):
            _forward_into(x, *w, _raw_addr(h0), out.data_ptr() + d * half, 2 * H, hn.data_ptr(),
                          T, B, H, d == 1, nonlinearity)  # fmt: skip
        return out, hnf, hnb
    T, B, H = check_layer_args(x, *wf, h0f, batch_sizes, nonlinearity, names=_FWD_NAMES)
    # The reverse direction shares x and batch_sizes, whose values the first check read:
    # only its own tensors are checked again, and its B and H must be the first one's.
    dims_b = check_layer_args(x, *wb, h0b, batch_sizes, nonlinearity, check_values=False,
                              names=_REV_NAMES)  # fmt: skip
    if wb[1].shape != wf[1].shape:
        _fail(
            ValueError,
            "the two directions must have the same hidden size: w_hh "
            f"{tuple(wf[1].shape)} and {tuple(wb[1].shape)}",
        )
    if dims_b != (T, B, H):
        _fail(
            ValueError,
            f"the two directions' states must have the same shape: h0 {tuple(h0f.shape)} and "
            f"{tuple(h0b.shape)}",
        )
    _refuse_freed(_BI_NAMES, x, *wf, h0f, *wb, h0b)
    x = _dense(x)
    out = x.new_empty(x.shape[0], 2 * H)
    hns = []
    for d, (w, h0) in enumerate(((wf, h0f), (wb, h0b))):
        # Named locals: a .contiguous() copy must outlive the call that reads its address.
        w_ih, w_hh, b_ih, b_hh = (_dense(t) for t in w)
        h0 = _dense(h0)
        hn = torch.empty_like(h0)
        h_addr = out.data_ptr() + d * H * out.element_size()  # its half of each row
        _forward_into(x, w_ih, w_hh, b_ih, b_hh, _raw_addr(h0), h_addr, 2 * H, hn.data_ptr(),
                      T, B, H, d == 1, nonlinearity, _steps_addr(batch_sizes))  # fmt: skip
        hns.append(hn)
    return out, hns[0], hns[1]


class _EagerBiLayer(torch.autograd.Function):
    """One bidirectional layer as one autograd node on the CPU kernels.

    The directions share the ``[N, 2H]`` output (each writes its columns) and the input
    gradient (the reverse direction's ``dP W_ih`` GEMM adds to the forward one's), so a
    layer costs no concatenation, no slicing of the output gradient and no sum of two
    input gradients. Inputs: ``x, w_ih, w_hh, b_ih, b_hh`` of each direction, ``h0`` of
    each, ``batch_sizes, nonlinearity`` and ``dims`` (see :func:`_bi_forward_impl`; the
    states may then be None for zeros).
    """

    @staticmethod
    def forward(
        ctx, x, wif, whf, bif, bhf, wib, whb, bib, bhb, h0f, h0b, batch_sizes, nl, dims, to_caller,
        names,
    ):  # fmt: skip
        if names is not None:  # (see name_node)
            ctx.fusedrnn_names = names
        out, hnf, hnb = _bi_forward_impl(
            x, (wif, whf, bif, bhf), (wib, whb, bib, bhb), h0f, h0b, batch_sizes, nl, dims
        )
        needs = ctx.needs_input_grad
        saved = _bi_layer_saved(needs, x, wif, whf, wib, whb, h0f, h0b, out, batch_sizes)
        _save(ctx, saved)
        ctx.nonlinearity = nl
        ctx.B = hnf.shape[-2]
        ctx.x_shape = x.shape
        inputs = (x, wif, whf, bif, bhf, wib, whb, bib, bhb, h0f, h0b, batch_sizes, nl)
        names = _BI_LAYER_INPUT_NAMES
        _keep_for_recompute(  # as _EagerLayer
            ctx, out, inputs, names, (0, 9, 10), to_caller, saved, _BI_SAVED_INPUTS
        )
        return out, hnf, hnb

    @staticmethod
    def backward(ctx, grad_out, grad_hnf, grad_hnb):
        grad_out, grad_hnf, grad_hnb = _strided_grads(grad_out, grad_hnf, grad_hnb)
        transformed = _recorded_or_transformed(grad_out, grad_hnf, grad_hnb)
        saved = _saved_or_recomputed(ctx, _recompute_bi_layer, _BI_SAVED_INPUTS, -2, transformed)
        _check_saved(ctx, saved)
        x, *weights, out, batch_sizes = saved
        # The lean path's x and output may have other shapes than [N, I] and [N, 2H]
        # (_bi_forward_impl's dims): read them as rows, return dx in x's shape.
        x_shape = ctx.x_shape
        try:
            x, out, grad_out = _as_rows(x), _as_rows(out), _as_rows(grad_out)
        except RuntimeError:  # a storage freed or shrunk, named
            names = _node_names(ctx, _BI_SAVED_NAMES)
            _refuse_freed(names, x, *weights, out, grad_out, grad_hnf, grad_hnb)
            raise
        saved = (x, *weights, out, batch_sizes)
        grads = (grad_out, grad_hnf, grad_hnb)
        if transformed:  # see _bi_backward_recorded
            grads = _bi_backward_recorded(ctx, saved, grads)
        else:
            try:
                grads = _bi_backward_eager(ctx, saved, grads)
            except (RuntimeError, ValueError):  # a storage freed since the forward, named
                x, *weights, out, _ = saved
                _refuse_freed(_node_names(ctx, _BI_SAVED_NAMES), x, *weights, out, *grads)
                raise
        if grads[0] is None or grads[0].shape == x_shape:
            return grads
        return (grads[0].reshape(x_shape), *grads[1:])


def _recompute_bi_layer(ctx, inputs):
    """_EagerBiLayer's saved tuple with the output computed again (see
    :func:`_saved_or_recomputed`)."""
    x, wif, whf, bif, bhf, wib, whb, bib, bhb, h0f, h0b, batch_sizes, nl = inputs
    rows = x.reshape(-1, x.shape[-1])
    zeros = rows.new_zeros(ctx.B, whf.shape[0])
    out, _, _ = _bi_forward_impl(rows, (wif, whf, bif, bhf), (wib, whb, bib, bhb),
                                 zeros if h0f is None else h0f, zeros if h0b is None else h0b,
                                 batch_sizes, nl)  # fmt: skip
    out = _as_saved(ctx, 7, out)
    return _bi_layer_saved(ctx.needs_input_grad, x, wif, whf, wib, whb, h0f, h0b, out, batch_sizes)


def _bi_layer_saved(needs, x, wif, whf, wib, whb, h0f, h0b, out, batch_sizes) -> tuple:
    """What a bidirectional layer saves for its backward, as :func:`_layer_saved` (its
    inputs: x, then w_ih, w_hh, b_ih, b_hh of each direction, then both h0)."""
    return (x if needs[1] or needs[5] else None, wif if needs[0] else None, whf,
            wib if needs[0] else None, whb, h0f if needs[2] else None,
            h0b if needs[6] else None, out, _saved_sizes(batch_sizes))  # fmt: skip


def _bi_backward_eager(ctx, saved, grads):
    """_EagerBiLayer's backward on the kernels, on [N, I] x and [N, 2H] output rows."""
    x, wif, whf, wib, whb, h0f, h0b, out, batch_sizes = saved
    grad_out, grad_hnf, grad_hnb = grads
    needs = ctx.needs_input_grad
    # Saved tensors come back as saved_tensors_hooks make them: any layout.
    out = _dense(out)
    grad_out = _no_zeros_flag(grad_out)
    grad_hnf, grad_hnb = _no_zeros_flag(grad_hnf), _no_zeros_flag(grad_hnb)
    N, H2 = out.shape
    H = H2 // 2
    if grad_out is None:  # zeros: address 0
        g, ldg, g_addr = None, H2, (0, 0)
    else:
        g, ldg = _rows_view(grad_out)
        # The directions' columns of the output gradient: the reverse one starts H in
        # (unless it is one value for all, ldg = -1).
        a = _addr(g)
        g_addr = (a, a + (ldg != -1) * H * g.element_size())
    need_dx = needs[0]
    In = ctx.x_shape[-1]
    dx = out.new_empty(N, In) if need_dx else None
    B = ctx.B
    T = batch_sizes.shape[0] if batch_sizes.numel() else (N // B if B else 0)
    x = _dense(x)
    h_addr = _addr(out)  # (refuses an output whose storage was freed since the forward)
    grads = []
    # Absent states and state gradients are zeros: the kernel reads address 0 as such.
    for d, (w_ih, w_hh, h0, ghn, first) in enumerate(
        ((wif, whf, h0f, grad_hnf, 1), (wib, whb, h0b, grad_hnb, 5))
    ):
        w_ih, w_hh, h0, ghn = _dense(w_ih), _dense(w_hh), _dense(h0), _dense(ghn)
        need_w_ih, need_w_hh = needs[first], needs[first + 1]
        need_db = needs[first + 2] or needs[first + 3]
        dh0 = out.new_empty(B, H) if needs[9 + d] else None
        dw_ih = out.new_empty(H, In) if need_w_ih else None
        dw_hh = out.new_empty(w_hh.shape) if need_w_hh else None
        db = out.new_empty(H) if need_db else None
        # The reverse direction (d == 1) adds its share to dx.
        _layer_backward_cpu(
            T, B, H, In, batch_sizes, d == 1, ctx.nonlinearity,
            x if need_w_ih else None, w_ih if need_dx else None, w_hh, h0,
            h_addr + d * H * out.element_size(), H2, g_addr[d], ldg, ghn, dh0, dx,
            d == 1, dw_ih, dw_hh, db,
        )  # fmt: skip
        grads.append(_direction_grads(needs, d, dw_ih, dw_hh, db, dh0))
    return _bi_grads(dx, grads)


def _direction_grads(needs, d, dw_ih, dw_hh, db, dh0):
    """Direction d's ``(dw_ih, dw_hh, db_ih, db_hh, dh0)`` of an _EagerBiLayer backward, None
    where not needed (``needs``: the layer's needs_input_grad)."""
    first = 1 + 4 * d
    mine = needs[:1] + needs[first : first + 4] + needs[9 + d : 10 + d]
    return _input_grads(mine, None, dw_ih, dw_hh, db, dh0)[1:]


def _bi_grads(dx, grads):
    """_EagerBiLayer.backward's result from dx and both directions' _direction_grads."""
    (*wf, dh0f), (*wr, dh0b) = grads
    return (dx, *wf, *wr, dh0f, dh0b, None, None, None, None, None)


def _bi_backward_recorded(ctx, saved, grads):
    """_EagerBiLayer's backward while a graph of it is recorded (create_graph=True) or its
    gradients are transformed: each direction as a single layer's (:func:`_transformed_grads`;
    the fused kernels serve every bidirectional layer that gets here)."""
    x, wif, whf, wib, whb, h0f, h0b, out, batch_sizes = saved
    grad_out, *grad_hns = grads
    needs = ctx.needs_input_grad
    H = out.shape[1] // 2
    B = ctx.B
    dx = None
    result = []
    directions = ((wif, whf, h0f, grad_hns[0]), (wib, whb, h0b, grad_hns[1]))
    for d, (w_ih, w_hh, h0, ghn) in enumerate(directions):
        h = out[:, d * H : (d + 1) * H]
        g = torch.zeros_like(h) if grad_out is None else grad_out[:, d * H : (d + 1) * H]
        h0 = out.new_zeros(B, H) if h0 is None else h0
        ghn = out.new_zeros(B, H) if ghn is None else ghn
        first = 1 + 4 * d
        dxd, dw_ih, dw_hh, db, dh0 = _transformed_grads(
            True, x, w_ih, w_hh, h0, h, g, ghn, batch_sizes, d == 1, ctx.nonlinearity,
            needs[0], needs[first], needs[first + 1], needs[first + 2] or needs[first + 3],
        )  # fmt: skip
        if needs[0]:
            dx = dxd if dx is None else dx + dxd
        result.append(_direction_grads(needs, d, dw_ih, dw_hh, db, dh0))
    return _bi_grads(dx, result)


# As _eager_layer_apply (rnn_bidirectional_layer checks for functorch transforms first).
_eager_bi_layer_apply = super(torch.autograd.Function, _EagerBiLayer).apply
# The nodes whose backward reads the caller's names (see name_node).
_NAMED_NODES = frozenset((_EagerLayer._backward_cls, _EagerBiLayer._backward_cls))


def rnn_bidirectional_layer(
    x, w_fwd, w_rev, h0_fwd, h0_rev, batch_sizes, nonlinearity="tanh", *, output_to_caller=True
):
    """Both directions of one bidirectional layer: ``(out [N, 2H], hn_fwd, hn_rev)``.

    ``w_fwd`` and ``w_rev`` are ``(w_ih, w_hh, b_ih, b_hh)`` (biases may be None). Plain
    eager CPU calls in a kernel dtype (KERNEL_DTYPES) run both directions as one fused step (see
    :class:`_EagerBiLayer`); everything else is two :func:`rnn_layer` calls and a
    concatenation, with the same results up to the rounding of the input gradient's sum.
    """
    for name, w in (("w_fwd", w_fwd), ("w_rev", w_rev)):
        if not isinstance(w, (tuple, list)) or len(w) != 4:
            got = f"length {len(w)}" if isinstance(w, (tuple, list)) else type(w).__name__
            _fail(TypeError, f"{name} must be a tuple (w_ih, w_hh, b_ih, b_hh), got {got}")
    w_hh = w_fwd[1]
    if (
        _plain_eager(x, *w_fwd, *w_rev, h0_fwd, h0_rev)
        and not x.is_cuda
        and x.dtype in KERNEL_DTYPES
        and x.numel()  # no rows (B = 0) or no features: the checks and edge cases below
        and isinstance(w_hh, Tensor)
        and w_hh.numel()  # H = 0
        and not _func_or_forward_ad()
    ):
        args = (x, *w_fwd, *w_rev, h0_fwd, h0_rev, batch_sizes, nonlinearity)
        if records_graph(x, *w_fwd, *w_rev, h0_fwd, h0_rev):
            return _eager_bi_layer_apply(*args, None, output_to_caller, None)
        return _bi_forward_impl(x, w_fwd, w_rev, h0_fwd, h0_rev, batch_sizes, nonlinearity)
    # The concatenation is a new tensor: neither direction's output reaches the caller.
    hf, hnf = rnn_layer(x, *w_fwd, h0_fwd, batch_sizes, False, nonlinearity, output_to_caller=False)
    hb, hnb = rnn_layer(x, *w_rev, h0_rev, batch_sizes, True, nonlinearity, output_to_caller=False)
    if not torch.compiler.is_compiling():  # each direction's tensors by this op's names
        name_node(hf, _FWD_NODE_NAMES)
        name_node(hb, _REV_NODE_NAMES)
    return torch.cat((hf, hb), 1), hnf, hnb
