"""`mlx-kssm doctor`: what this machine gives MLX, for bug reports."""

from __future__ import annotations

import json

import click

from . import _blas
from ._cli import CONTEXT, one_line_errors
from .machine import environment


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
