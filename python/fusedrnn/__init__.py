"""fusedrnn: fused CPU/CUDA kernels for the Elman RNN, a drop-in ``torch.nn.RNN``."""

from __future__ import annotations

import re

import torch  # (loads torch's shared libraries before the extension)

# The oldest torch the whole test suite passes on (pyproject.toml's floor; a test keeps the
# two equal; tested versions in docs/dropin.md). Older ones lack what the ops use
# (torch.library.register_autocast before 2.7), or fail torch.compile and torch.export of
# the modules and forward over forward on packed input (2.7 and 2.9).
_MIN_TORCH = (2, 10)


def _check_torch(version: str) -> None:
    """Raise an ImportError naming the requirement when ``version`` (a ``torch.__version__``)
    is older than ``_MIN_TORCH``; pre-releases and local builds of it pass."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None or (int(m[1]), int(m[2])) >= _MIN_TORCH:
        return
    need = ".".join(map(str, _MIN_TORCH))
    raise ImportError(
        f"fusedrnn needs torch >= {need}, found torch {version}. "
        f"Install a newer one, e.g. pip install 'torch>={need},<3'."
    )


_check_torch(torch.__version__)

from . import _C, _cuda, gradcheck, ops, reference  # noqa: E402, F401  (_C, _cuda: the kernels)
from .modules import RNN, RNNCell  # noqa: E402

__version__ = "0.1.0"

__all__ = ["RNN", "RNNCell", "__version__", "gradcheck", "info", "ops", "reference"]


def info() -> dict:
    """Versions and build facts: SIMD level of the CPU kernel, threads, CUDA build, GPUs."""
    from .sysinfo import collect

    return collect()
