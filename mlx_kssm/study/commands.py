"""`mlx-kssm study`: parse, call `run_study`, print. Bad input: one `Error:` line, exit 1."""

from __future__ import annotations

import sys

import click

from .._cli import CONTEXT, UsageProblem, kernel_option, one_line_errors

STUDY_HELP = """Train and evaluate a K-SSM preset beside its controls, over several seeds.

\b
Every model trains through the ordinary trainer on the same batches (the same seeds),
each run a normal run folder (lock, checkpoints, exact resume) under OUT/runs/MODEL/seed_S.
Every model then goes through the shared evaluation and the causality suite. Running the
same command again continues a stopped or killed study: finished runs are reused,
unfinished ones resumed from their last checkpoint.

\b
Default models for --preset P: P, its parameter-matched transformer, its bolted control
(R bypassed: must FAIL test 2), its upstream-v3, and random-init (P evaluated untrained,
one per seed). Output: OUT/study.json (commands, versions, BLAS, machine, every per-seed
figure), OUT/study.md (val loss and PPL, causality effect sizes and per-seed verdicts,
tokens/s: mean ± 95% Student-t CI over seeds), OUT/plots/*.png with the `plot` extra.
The statistics and verdicts: docs/causality.md.

\b
Examples:
  # the issue's benchmark: char-level, 3 seeds, 2,000 steps x 12 x 64
  mlx-kssm study --data data/prepared/shakespeare-bytes --preset v1-char \\
      --steps 2000 --batch-size 12 --seq-len 64 --out studies/char
  # a smoke study: two models, two seeds
  mlx-kssm study --data DIR --preset tiny --models tiny,control-bolted-tiny \\
      --seeds 2 --steps 100 --out studies/smoke
  # continue after Ctrl-C or a kill: the same command again
  mlx-kssm study --data data/prepared/shakespeare-bytes --preset v1-char \\
      --steps 2000 --batch-size 12 --seq-len 64 --out studies/char

\b
Variants (--variants FILE, TOML or JSON): an ablation as an input. Each table names a
model that is a preset with options changed; its name can then go in --models (without
--models: the preset, then every variant, in file order). Each variant trains on the same
batches, from the weights its preset would have for that seed with the changes applied:
  [wide]
  preset = "v1-char-s"
  model = { n_groups = 100 }          # ModelArgs fields (docs/model.md)
  train = { learning_rate = 3e-3 }    # learning_rate, weight_decay (optional)
  description = "twice the oscillators per layer"
  # one change against the preset, 2 seeds
  mlx-kssm study --data DIR --preset v1-char-s --variants variants.toml \\
      --models v1-char-s,wide --seeds 2 --steps 2000 --out studies/wide

\b
Exit status: 0 done; 1 bad input (one Error: line); 130 Ctrl-C / 143 SIGTERM: the running
training run saved a checkpoint first, and the same command continues the study.
"""


@click.command("study", help=STUDY_HELP, context_settings=CONTEXT)
@click.option("--data", required=True, metavar="DIR", help="prepared data folder")
@click.option("--out", "output_dir", required=True, metavar="DIR", help="the study folder")
@click.option("--preset", default="tiny", show_default=True,
              help="the K-SSM preset (tiny, v1-char, v2, v3)")
@click.option("--models", default=None, metavar="A,B,...",
              help="models to compare: preset names and/or random-init  [default: the preset, "
                   "its three comparisons, random-init]")
@click.option("--variants", "variants_file", default=None, metavar="FILE",
              help="a .toml/.json file of named variants (a preset with options changed), "
                   "usable in --models; see above")
@click.option("--seeds", default=3, show_default=True, type=int,
              help="seeds 0..N-1 (model init and batches)")
@click.option("--steps", "max_steps", default=1000, show_default=True, type=int,
              help="training steps per run")
@click.option("--batch-size", type=int, default=None,
              help="sequences per training step, every model  [default: the preset's]")
@click.option("--seq-len", type=int, default=None,
              help="tokens per training sequence, every model  [default: the preset's]")
@click.option("--learning-rate", type=float, default=None,
              help="peak AdamW learning rate, every model  [default: each model's preset's]")
@click.option("--warmup-steps", default=100, show_default=True, type=int,
              help="linear warm-up steps before the cosine decay")
@click.option("--eval-every", "steps_per_eval", default=200, show_default=True, type=int,
              help="the trainer's validation interval (the loss curves)")
@click.option("--report-every", "steps_per_report", default=50, show_default=True, type=int,
              help="steps between the trainer's `Iter N:` lines")
@click.option("--val-batches", default=20, show_default=True, type=int,
              help="validation batches at each of the trainer's evaluations")
@click.option("--save-every", default=500, show_default=True, type=int,
              help="checkpoint interval: how much a killed run redoes")
@click.option("--eval-batches", default=20, show_default=True, type=int,
              help="batches of the final evaluation of each run")
@click.option("--sequences", default=32, show_default=True, type=int,
              help="held-out windows of the causality suite")
@click.option("--samples", default=3, show_default=True, type=int,
              help="generations per evaluation checked for mode collapse")
@kernel_option
@one_line_errors
def study(models, **options):
    import mlx_kssm  # noqa: F401  (BLAS before mlx)
    from .runner import StudyConfig, run_study

    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if models is not None and not model_list:
        raise UsageProblem("--models is empty: give names like tiny,transformer-tiny")
    config = StudyConfig(models=model_list, **options)
    result = run_study(config, echo=click.echo, argv=sys.argv)
    if result.exit_code:
        sys.exit(result.exit_code)
