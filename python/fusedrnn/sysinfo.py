"""What this fusedrnn build and machine provide: versions, CPU SIMD level, threads, CUDA.

``fusedrnn.info()`` returns :func:`collect` as a dict; ``fusedrnn info`` prints it. The
CUDA facts come from ``fusedrnn._cuda``, the wrapper of the optional extension
``fusedrnn._C_cuda``: whether it was built, and the architectures it was compiled for.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

__all__ = ["collect", "format_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_extension() -> dict:
    """Whether the CUDA kernels were built, and for which architectures."""
    from . import _cuda

    return {
        "cuda_kernels_built": _cuda.available(),
        "cuda_archs": _cuda.built_archs(),
        **_cuda.info(),  # cuda_runtime_built, cuda_driver_supports
    }


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return gpus


def collect() -> dict:
    """Versions and build facts as a JSON-serializable dict."""
    from . import _C, __version__

    facts = {
        "fusedrnn": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cpu_isa": _C.cpu_isa(),
        "cpu_bf16_kernels": _C.cpu_has_bf16(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    facts.update(_cuda_extension())
    facts["gpus"] = _gpus()
    return facts


_LABELS = {
    "fusedrnn": "fusedrnn",
    "torch": "torch",
    "numpy": "numpy",
    "python": "python",
    "platform": "platform",
    "cpu": "CPU",
    "cpu_isa": "CPU kernel SIMD level",
    "cpu_bf16_kernels": "bfloat16 CPU kernels (AVX512_BF16)",
    "torch_cpu_capability": "torch CPU capability",
    "threads": "threads (torch.get_num_threads)",
    "cpu_count": "logical CPUs",
    "torch_cuda": "torch built with CUDA",
    "cuda_available": "CUDA available",
    "cuda_kernels_built": "fusedrnn CUDA kernels built",
    "cuda_archs": "CUDA architectures built",
    "cuda_runtime_built": "CUDA runtime the kernels link",
    "cuda_driver_supports": "CUDA version the driver supports",
}


def format_info(facts: dict) -> str:
    """The facts as aligned ``label: value`` lines, GPUs one per line."""
    width = max(len(label) for label in _LABELS.values())
    lines = []
    for key, value in facts.items():
        if key == "gpus":
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) if value else "-"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif value is None:
            value = "-"
        lines.append(f"{_LABELS.get(key, key):<{width}}  {value}")
    gpus = facts.get("gpus", [])
    lines.append(f"{'visible GPUs':<{width}}  {len(gpus)}")
    for gpu in gpus:
        lines.append(
            f"{'':<{width}}  [{gpu['index']}] {gpu['name']}, compute capability "
            f"{gpu['capability']}, {gpu['memory_gib']} GiB"
        )
    return "\n".join(lines)
