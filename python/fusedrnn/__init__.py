"""fusedrnn: fused CPU/CUDA kernels for the Elman RNN, a drop-in ``torch.nn.RNN``."""

from __future__ import annotations

import torch  # noqa: F401  (loads torch's shared libraries before the extension)

from . import _C, _cuda, gradcheck, ops, reference  # noqa: F401  (_C, _cuda: the kernels)
from .modules import RNN, RNNCell

__version__ = "0.1.0"

__all__ = ["RNN", "RNNCell", "__version__", "gradcheck", "info", "ops", "reference"]


def info() -> dict:
    """Versions and build facts: SIMD level of the CPU kernel, threads, CUDA build, GPUs."""
    from .sysinfo import collect

    return collect()
