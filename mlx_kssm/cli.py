"""`mlx-kssm` command line: parse, call the library, print. Each area keeps its commands in
its own `commands.py` beside its library code; _cli.py holds what they share (one way to fail,
the exit statuses)."""

from __future__ import annotations

import mlx_kssm  # noqa: F401  (loads the optimized BLAS before mlx, on Linux)

import click

from ._cli import CONTEXT
from .data.commands import data
from .doctor import doctor
from .export.commands import export
from .evaluation.commands import evaluate
from .probe.commands import generate, intervene, plot, validate
from .study.commands import study
from .train.commands import monitor, status, train


@click.group(context_settings=CONTEXT)
@click.version_option(mlx_kssm.__version__, prog_name="mlx-kssm")
def main():
    """Train, evaluate, probe and export K-SSM language models (Kuramoto State-Space Models).

    \b
    Typical session:
      mlx-kssm data fetch --source shakespeare --out data/raw/shakespeare
      mlx-kssm data prepare --source data/raw/shakespeare --out data/prepared/shakespeare
      mlx-kssm train --preset tiny --data data/prepared/shakespeare --output-dir checkpoints/tiny
      mlx-kssm evaluate --model checkpoints/tiny --data data/prepared/shakespeare --causality
      mlx-kssm validate --model checkpoints/tiny --data data/prepared/shakespeare --report r.html
      mlx-kssm study --data data/prepared/shakespeare --preset tiny --out studies/tiny
      mlx-kssm generate --model checkpoints/tiny --prompt "To be" --force-r 0.3 --show-r
      mlx-kssm export --model checkpoints/tiny --out exports/tiny

    \b
    Exit status: 0 done; 1 bad input (one Error: line on stderr); 2 a usage mistake (click's
    message); 130 Ctrl-C. train, status, evaluate --causality and validate add their own
    (see their --help).
    """


for command in (data, train, status, monitor, evaluate, validate, study, generate, intervene,
                export, plot, doctor):
    main.add_command(command)


if __name__ == "__main__":
    main()
