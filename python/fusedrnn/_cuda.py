"""Launch plumbing for the CUDA kernels in ``fusedrnn._C_cuda``.

``fusedrnn.ops`` validates every tensor (``check_layer_args``) and then calls
:func:`rnn_forward` / :func:`rnn_backward` here instead of ``fusedrnn._C``. This module
only turns tensors into what the binding takes: data addresses, a device copy of
``batch_sizes`` when the chosen kernel reads it (the CPU tensor stays the host copy the
launcher sizes the work with), a workspace from torch's caching allocator, the device index
and the current stream. The kernels run asynchronously on that stream; buffers allocated
here are released to the caching allocator, which only reuses them for work ordered after
the kernels on the same stream.

Before the first launch the CUDA runtime the module was built with is checked against the
installed driver (:func:`check_driver`): ``_C_cuda`` links the runtime statically, so a
driver too old for it would fail every call with ``cudaErrorInsufficientDriver``.

``FUSEDRNN_CUDA_PATH`` (``auto`` | ``persistent`` | ``stepwise`` | ``cluster``) forces one
recurrence kernel, for benchmarks and debugging. ``auto`` (the default) takes, on a Hopper
GPU (compute capability 9.x), the cluster kernel at small sizes (B <= 32, B * H <= 2048,
H <= 512; the last two halved for float64) where it fits in one cluster; else the
persistent kernel when it fits on the chip and the batch is small enough for it to be the
faster one; else the per-step kernel (docs/cuda_kernels.md, "Boundary" and "Cluster
kernel").
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    from . import _C_cuda
except ImportError:  # built without nvcc: CPU only
    _C_cuda = None

__all__ = [
    "KERNEL_DTYPES",
    "available",
    "built_archs",
    "check_driver",
    "info",
    "rnn_backward",
    "rnn_forward",
]

KERNEL_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}

_PATHS = ("auto", "persistent", "stepwise", "cluster")
# The kernels that read packed batch_sizes from device memory (the per-step kernel takes its
# phases from the host copy).
_DEVICE_SIZES_PATHS = ("persistent", "cluster")

# The oldest Linux driver branch that supports each CUDA major version.
_MIN_DRIVER = {11: "R450", 12: "R525", 13: "R580"}


def available() -> bool:
    """Whether the CUDA kernels were built (says nothing about a GPU being present)."""
    return _C_cuda is not None


def built_archs() -> list[str]:
    """CMAKE_CUDA_ARCHITECTURES the kernels were compiled for; empty when not built."""
    return list(_C_cuda.built_archs()) if _C_cuda is not None else []


def _version(v: int) -> str | None:
    """1000*major + 10*minor -> "major.minor"; None for 0 (no driver)."""
    return f"{v // 1000}.{v % 1000 // 10}" if v > 0 else None


def info() -> dict:
    """CUDA facts for ``fusedrnn.info()``: the runtime the kernels were built with (linked
    statically) and the newest CUDA version the installed driver supports (None without a
    driver, or when the kernels were not built)."""
    if _C_cuda is None:
        return {"cuda_runtime_built": None, "cuda_driver_supports": None}
    return {
        "cuda_runtime_built": _version(_C_cuda.runtime_version()),
        "cuda_driver_supports": _version(_C_cuda.driver_version()),
    }


def _driver_problem(runtime: int, driver: int) -> str | None:
    """Why the kernels cannot run with this driver, or None when they can. The CUDA runtime
    runs on any driver of its major version or newer (minor version compatibility)."""
    if driver >= 1000 * (runtime // 1000):
        return None
    major = runtime // 1000
    built = _version(runtime)
    torch_cuda = torch.version.cuda
    if driver == 0:
        have = "no NVIDIA driver was found (cudaDriverGetVersion reports 0)"
    else:
        have = f"the installed NVIDIA driver supports CUDA up to {_version(driver)}"
    example = (
        f"e.g. the CUDA {torch_cuda} that torch was built with (torch.version.cuda)"
        if torch_cuda
        else "e.g. the CUDA version torch was built with"
    )
    need = _MIN_DRIVER.get(major, "a newer driver")
    return (
        f"fusedrnn: the CUDA kernels (fusedrnn._C_cuda) were built with CUDA runtime {built}, "
        f"but {have}, so every kernel call would fail with cudaErrorInsufficientDriver. "
        f"Rebuild fusedrnn with a CUDA toolkit whose major version the driver supports "
        f"({example}): CUDACXX=/path/to/that/cuda/bin/nvcc pip install --no-build-isolation "
        f"--force-reinstall . ; or update the NVIDIA driver to one that supports CUDA {major} "
        f"({need} or newer)."
    )


_driver_ok = False


def check_driver() -> None:
    """Raise RuntimeError naming both versions if the installed driver is too old for the
    CUDA runtime the kernels were built with. Checked once; later calls cost nothing."""
    global _driver_ok
    if _driver_ok:
        return
    problem = _driver_problem(_C_cuda.runtime_version(), _C_cuda.driver_version())
    if problem is not None:
        raise RuntimeError(problem)
    _driver_ok = True


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The value of environment variable `name`, one of `choices` (the first by default)."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"fusedrnn: {name} must be one of {choices}, got {value!r}")
    return value


def kernel_path() -> str:
    return _env_choice("FUSEDRNN_CUDA_PATH", _PATHS)


def freed(t: Tensor, address: int | None = None) -> bool:
    """``t`` has elements and its storage lacks memory for them: the storage was freed
    (``untyped_storage().resize_(0)``, as FSDP and compiled graphs do) or shrunk
    (``resize_(n)``) below what ``t``'s elements span. Freed, its address is 0, or for a view
    at a storage offset that offset in bytes (24 for a float32 view at 6), which the kernels
    would dereference: a segfault (a helper's review, session 31, with a state row ``hx[1]``
    and an FSDP-style parameter viewing a flat buffer). Shrunk, the kernels read past the
    storage's end: garbage or a segfault, where ``torch.nn.RNN`` refuses a shrunk weight or
    state (its views of them check their storage's size; session 32). Any tensor with
    elements at address 0 counts, which no kernel can read: a ZeroTensor (callers that take
    one tell it apart) or a tensor of ``functionalize`` too. ``address``: ``t.data_ptr()``
    if the caller has it. See :func:`memory_problem` for the words."""
    if address is None:
        address = t.data_ptr()
    if not address:
        return t.numel() != 0
    if torch.compiler.is_dynamo_compiling():  # Dynamo tracing an eager backward (compiled
        return False  # autograd): its fake tensors have no storage sizes to read
    storage = t.untyped_storage().nbytes()
    if t.is_contiguous():  # (the common case, in fewer calls)
        offset = t.storage_offset()
        short = storage < (t.nbytes + offset * t.itemsize if offset else t.nbytes)
    else:
        short = storage < _span(t) * t.itemsize
    return short and t.numel() != 0


def _span(t: Tensor) -> int:
    """The elements of ``t``'s storage its elements (at least one) reach, from its start."""
    if t.is_contiguous():
        return t.storage_offset() + t.numel()
    reach = t.storage_offset() + 1
    for k, s in zip(t.shape, t.stride(), strict=True):
        reach += (k - 1) * s
    return reach


def memory_problem(t: Tensor) -> str:
    """What :func:`freed` found of ``t``, for a message after its name."""
    try:
        storage = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # no storage of its own
        storage = None
    if not t.data_ptr() and storage != 0:  # address 0 without freed storage
        return (
            " has no data address the kernels can read (address 0 with elements: a "
            "ZeroTensor, or a tensor of a transform such as functionalize)"
        )
    if not storage:
        return (
            "'s storage was freed (e.g. by untyped_storage().resize_(0)): it has no memory to read"
        )
    span = _span(t) * t.itemsize
    return (
        f"'s storage holds {storage} bytes, fewer than the {span} "
        "its elements span (it was shrunk, e.g. by untyped_storage().resize_()): reading it "
        "would run past its memory"
    )


def _raw_addr(t: Tensor | None) -> int:
    """The data address of ``t``, 0 for None, with no check: for tensors allocated by the
    caller, or that it checked just before (:func:`_addr` reads each storage's size)."""
    return 0 if t is None else t.data_ptr()


def _check_sizes_memory(batch_sizes: Tensor) -> None:
    """A packed ``batch_sizes`` (one with elements) whose storage was freed or shrunk is
    refused before its values are read (by the kernels or by ``tolist()``): a backward's
    saved copy may come back so from a ``saved_tensors_hooks`` unpack."""
    if batch_sizes.numel() and freed(batch_sizes):
        raise RuntimeError(f"fusedrnn: batch_sizes{memory_problem(batch_sizes)}")


def _addr(t: Tensor | None) -> int:
    """The data address of ``t``, 0 for None (what the kernels read as absent); the one
    definition, for the CPU calls too (``ops._addr``; ops imports this module). A tensor
    whose storage was freed (:func:`freed`), which the kernels would read as an absent
    bias, state or gradient (zeros, silently: a helper's review, session 28) or
    dereference, is refused, as torch refuses it (the CUDA launchers passed ``w_hh`` and
    ``h`` unchecked up to session 29)."""
    if t is None:
        return 0
    address = t.data_ptr()
    if freed(t, address):
        raise RuntimeError(
            f"fusedrnn: a tensor argument of shape {tuple(t.shape)}{memory_problem(t)}"
        )
    return address


_DEVICE_SIZES_PLANS: dict[tuple, bool] = {}  # _reads_device_sizes' answers


def _reads_device_sizes(name, B, H, nonlinearity, backward, index, path) -> bool:
    """Whether the launcher will pick a kernel that reads ``batch_sizes`` on the device, the
    persistent or the cluster kernel (the same plan it computes; a pure function of these
    arguments on one device, so cached, except a plan refused by a CUDA call that failed,
    ``transient``: out of memory while a kernel loads may not happen next time)."""
    key = (name, B, H, nonlinearity, backward, index, path)
    answer = _DEVICE_SIZES_PLANS.get(key)
    if answer is None:
        plan = _C_cuda.plan(*key)
        answer = plan["path"] in _DEVICE_SIZES_PATHS
        if not plan["transient"]:
            if len(_DEVICE_SIZES_PLANS) >= 1024:  # bounded: many shapes start afresh
                _DEVICE_SIZES_PLANS.clear()
            _DEVICE_SIZES_PLANS[key] = answer
    return answer


def stream_capturing(device: torch.device) -> bool:
    """The current stream of ``device``, the one the kernels run on, is being captured into
    a CUDA graph (``torch.cuda.is_current_stream_capturing()`` alone reads the current
    device's stream, which may be another device's)."""
    with torch.cuda.device(device):
        return torch.cuda.is_current_stream_capturing()


def _launch_context(dtype, B, H, batch_sizes, nonlinearity, backward, device, path):
    """(batch_sizes host, device copy, workspace, device index, stream handle, path).

    The device copy of ``batch_sizes`` is made only for packed input that the persistent or
    the cluster kernel will run (the per-step kernel takes its phases from the host copy),
    and packed input whose batch never shrinks is passed as padded (same layout, nothing to
    copy).
    The copy goes from pinned memory with ``non_blocking=True`` on the current stream, the
    stream the kernel runs on, so it is ordered before the kernel without a host sync;
    torch's pinned-memory allocator keeps the host buffer until the copy is done.

    While the stream is being captured into a CUDA graph, packed input takes the per-step
    kernel: a captured copy from a pinned buffer would be replayed from memory that torch
    has recycled since, where the per-step kernel's phases are launch arguments.
    """
    check_driver()
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = KERNEL_DTYPES[dtype]
    # batch_sizes[0] == B and non-increasing (checked in ops), so the last equals B only
    # when every step has all B rows: that is the padded layout.
    _check_sizes_memory(batch_sizes)
    packed = batch_sizes.numel() > 0 and int(batch_sizes[-1]) != B
    bs_host = batch_sizes.contiguous() if packed else None
    bs_dev = None
    if packed and stream_capturing(device):
        if path in _DEVICE_SIZES_PATHS:
            raise RuntimeError(
                f"fusedrnn: FUSEDRNN_CUDA_PATH={path} cannot run packed input inside CUDA "
                "graph capture (use auto or stepwise)"
            )
        path = "stepwise"
    if packed and (
        path in _DEVICE_SIZES_PATHS
        or (path == "auto" and _reads_device_sizes(name, B, H, nonlinearity, backward, index, path))
    ):
        # A fresh buffer from torch's pinned allocator (never the caller's tensor, which
        # could be pinned already and changed after this call returns).
        pinned = torch.empty(bs_host.shape, dtype=bs_host.dtype, pin_memory=True)
        bs_dev = pinned.copy_(bs_host).to(device, non_blocking=True)
    workspace = torch.empty(_C_cuda.workspace_bytes(name, B, H), dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    return bs_host, bs_dev, workspace, index, stream, path


def rnn_forward(T, B, H, batch_sizes, reverse, nonlinearity, P, w_hh, h0, h, hn) -> None:
    """h_t = phi(P_t + h_prev W_hh^T) into h [N,H] (may be P) and hn [B,H]; inputs checked."""
    path = kernel_path()
    bs_host, bs_dev, ws, index, stream, path = _launch_context(
        P.dtype, B, H, batch_sizes, nonlinearity, False, P.device, path
    )
    _C_cuda.rnn_forward(
        KERNEL_DTYPES[P.dtype],
        T,
        B,
        H,
        _raw_addr(bs_host),  # (checked by _launch_context)
        _raw_addr(bs_dev),  # (made there)
        reverse,
        nonlinearity,
        _addr(P),
        _addr(w_hh),
        _addr(h0),
        _addr(h),
        _raw_addr(hn),  # (the caller's fresh allocation)
        ws.data_ptr(),
        ws.numel(),
        index,
        stream,
        path,
    )


def rnn_backward(T, B, H, batch_sizes, reverse, nonlinearity, w_hh, h, G, dhn, dP, dh0) -> None:
    """d_t = (G_t + d_next W_hh) * phi'(h_t) into dP [N,H] and dh0 [B,H]; inputs checked."""
    path = kernel_path()
    bs_host, bs_dev, ws, index, stream, path = _launch_context(
        h.dtype, B, H, batch_sizes, nonlinearity, True, h.device, path
    )
    _C_cuda.rnn_backward(
        KERNEL_DTYPES[h.dtype],
        T,
        B,
        H,
        _raw_addr(bs_host),  # (checked by _launch_context)
        _raw_addr(bs_dev),  # (made there)
        reverse,
        nonlinearity,
        _addr(w_hh),
        _addr(h),
        _addr(G),
        _addr(dhn),
        _raw_addr(dP),  # (the caller's fresh allocations)
        _raw_addr(dh0),
        ws.data_ptr(),
        ws.numel(),
        index,
        stream,
        path,
    )
