"""Launch plumbing for the CUDA kernels in ``fusedrnn._C_cuda``.

``fusedrnn.ops`` validates every tensor (``check_layer_args``) and then calls
:func:`rnn_forward` / :func:`rnn_backward` here instead of ``fusedrnn._C``. This module
only turns tensors into what the binding takes: data addresses, a device copy of
``batch_sizes`` (the CPU tensor stays the host copy the launcher sizes the work with), a
workspace from torch's caching allocator, the device index and the current stream. The
kernels run asynchronously on that stream; buffers allocated here are released to the
caching allocator, which only reuses them for work ordered after the kernels on the same
stream.

``FUSEDRNN_CUDA_PATH`` (``auto`` | ``persistent`` | ``stepwise``) forces one recurrence
kernel, for benchmarks and debugging; ``auto`` (the default) takes the persistent kernel
whenever it fits on the chip.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    from . import _C_cuda
except ImportError:  # built without nvcc: CPU only
    _C_cuda = None

__all__ = ["KERNEL_DTYPES", "available", "built_archs", "rnn_backward", "rnn_forward"]

KERNEL_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

_PATHS = ("auto", "persistent", "stepwise")


def available() -> bool:
    """Whether the CUDA kernels were built (says nothing about a GPU being present)."""
    return _C_cuda is not None


def built_archs() -> list[str]:
    """CMAKE_CUDA_ARCHITECTURES the kernels were compiled for; empty when not built."""
    return list(_C_cuda.built_archs()) if _C_cuda is not None else []


def kernel_path() -> str:
    path = os.environ.get("FUSEDRNN_CUDA_PATH", "auto")
    if path not in _PATHS:
        raise ValueError(f"fusedrnn: FUSEDRNN_CUDA_PATH must be one of {_PATHS}, got {path!r}")
    return path


def _addr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _launch_context(dtype: torch.dtype, B: int, H: int, batch_sizes: Tensor, device):
    """(batch_sizes host, device copy, workspace, device index, stream handle)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    packed = batch_sizes.numel() > 0
    bs_host = batch_sizes.contiguous() if packed else None
    bs_dev = bs_host.to(device) if packed else None
    workspace = torch.empty(
        _C_cuda.workspace_bytes(KERNEL_DTYPES[dtype], B, H), dtype=torch.uint8, device=device
    )
    stream = torch.cuda.current_stream(device).cuda_stream
    return bs_host, bs_dev, workspace, index, stream


def rnn_forward(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, h, hn) -> None:
    """h_t = phi(P_t + h_prev W_hh^T) into h [N,H] (may be P) and hn [B,H]; inputs checked."""
    bs_host, bs_dev, ws, index, stream = _launch_context(P.dtype, B, H, batch_sizes, P.device)
    _C_cuda.rnn_forward(
        KERNEL_DTYPES[P.dtype],
        T,
        B,
        H,
        _addr(bs_host),
        _addr(bs_dev),
        reverse,
        nonlinearity,
        P.data_ptr(),
        w_hh.data_ptr(),
        _addr(h0),
        h.data_ptr(),
        hn.data_ptr(),
        ws.data_ptr(),
        ws.numel(),
        index,
        stream,
        kernel_path(),
    )


def rnn_backward(T, B, H, batch_sizes, reverse, nonlinearity, w_hh, h, G, dhn, dP, dh0) -> None:
    """d_t = (G_t + d_next W_hh) * phi'(h_t) into dP [N,H] and dh0 [B,H]; inputs checked."""
    bs_host, bs_dev, ws, index, stream = _launch_context(h.dtype, B, H, batch_sizes, h.device)
    _C_cuda.rnn_backward(
        KERNEL_DTYPES[h.dtype],
        T,
        B,
        H,
        _addr(bs_host),
        _addr(bs_dev),
        reverse,
        nonlinearity,
        w_hh.data_ptr(),
        h.data_ptr(),
        _addr(G),
        _addr(dhn),
        dP.data_ptr(),
        _addr(dh0),
        ws.data_ptr(),
        ws.numel(),
        index,
        stream,
        kernel_path(),
    )
