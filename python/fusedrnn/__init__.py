"""fusedrnn: fused CPU/CUDA kernels for the Elman RNN, a drop-in ``torch.nn.RNN``."""

from __future__ import annotations

import torch  # loads torch's shared libraries before the extension

from . import _C, _cuda, ops, reference
from .modules import RNN, RNNCell

__version__ = "0.1.0"

__all__ = ["RNN", "RNNCell", "__version__", "info", "ops", "reference"]


def info() -> dict:
    """Versions and build facts: SIMD level of the CPU kernel, threads, CUDA build."""
    return {
        "fusedrnn": __version__,
        "torch": torch.__version__,
        "cpu_isa": _C.cpu_isa(),
        "threads": torch.get_num_threads(),
        "cuda_kernels_built": _cuda.available(),
        "cuda_archs": _cuda.built_archs(),
        "cuda_available": torch.cuda.is_available(),
        **_cuda.info(),  # cuda_runtime_built, cuda_driver_supports
    }
