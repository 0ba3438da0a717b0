"""`mlx-kssm train`, `status` and `monitor`: parse, call the library, print. Bad input ends in
one `Error:` line and exit status 1 (mlx_kssm/_cli.py); train and status have statuses of their
own, listed in their --help."""

from __future__ import annotations

import sys
import time

import click

from .._cli import CONTEXT, SEED, FiniteFloatRange, one_line_errors, zones_option
from ..kernels import KERNEL_MODES
from ..models.presets import PRESETS
from .config import OPTIMIZERS, STAGE_STEPS, TrainConfig


# Muon and Grokfast are implemented but no run here has measured what they do to a K-SSM
UNMEASURED = "(not measured here: see docs/training.md)"


def with_default(text: str, field: str, also: str = "") -> str:
    """Help text ending in TrainConfig's default for `field` (the flags default to None, so
    that --resume can tell what the user set; click cannot show the default itself)."""
    default = getattr(TrainConfig(), field)
    return f"{text}  [default: {default}{', ' + also if also else ''}]"


TRAIN_HELP = f"""Train a model, with evaluation, checkpoints, exact resume, a lock and health gates.

\b
Examples:
  # a smoke run of the tiny preset on prepared Shakespeare
  mlx-kssm train --preset tiny --data data/prepared/shakespeare --max-steps 300 \\
      --output-dir runs/tiny
  # continue it to 1000 steps (the cosine is re-planned from step 300; it says how)
  mlx-kssm train --resume --output-dir runs/tiny --max-steps 1000
  # train 500 steps of a 2000-step plan now, the rest later: identical to one long run
  mlx-kssm train --preset tiny --data DIR --max-steps 500 --schedule-steps 2000 --output-dir runs/t
  mlx-kssm train --resume --output-dir runs/t --max-steps 2000
  # go back to an earlier checkpoint (later ones are moved to checkpoints/superseded/)
  mlx-kssm train --output-dir runs/t --resume-from runs/t/checkpoints/step_500
  # staged training: stage 2 = 500 steps + the decision matrix (docs/training.md)
  mlx-kssm train --preset v3 --data data/prepared/gutenberg --stage 2 --output-dir runs/s2
  # a wider v3 with a stronger barrier on u; stage verdicts reported, never stopping
  mlx-kssm train --preset v3 --d-model 320 --groups 40 --lambda-reg 0.1 --stage 3 \\
      --no-stop-on-failure --data DIR --output-dir runs/wide
  # fine-tune from a model folder, options from a file (flags override it)
  mlx-kssm train --model exports/v2 --config run.toml --learning-rate 3e-4 --output-dir runs/ft
  # data parallel over 2 processes (or Macs: --hostfile)
  mlx.launch -n 2 -- mlx-kssm train --preset tiny --data DIR --batch-size 8 --output-dir runs/dp
  # also log to TensorBoard (tensorboard --logdir runs/tb) and Weights & Biases
  mlx-kssm train --preset tiny --data DIR --report-to tensorboard,wandb --output-dir runs/tb

\b
Run folder: config.json, history.jsonl (one JSON object per event), training.log,
training.lock, checkpoints/step_N/ (model + optimizer + trainer state; `latest` names the
newest), best/ (lowest val loss; a model folder every command accepts).
\b
Presets: {", ".join(PRESETS)} (--list-presets [--data DIR] shows sizes).
Stages: {", ".join(f"{k}={v}" for k, v in STAGE_STEPS.items())} steps.
\b
Exit status: 0 finished or early-stopped; 130 Ctrl-C / 143 SIGTERM (a checkpoint is saved
first; continue with --resume); 3 NaN/inf loss (stopped, last good checkpoint kept);
4 a --stage verdict FAILURE (stopped after saving a checkpoint; see --no-stop-on-failure);
1 bad input, the folder is locked by another trainer, or a checkpoint could not be written
(disk full: the error and training.log name it; the last good checkpoint is kept).
\b
--resume takes the newest checkpoint that loads and holds finite weights: a damaged or NaN
newer one is skipped with a warning naming it (and left in place).
\b
A run that died before its first checkpoint: run the same command again (its history starts
afresh), or `--resume --output-dir DIR` alone (options come from DIR/config.json).
"""


@click.command("train", help=TRAIN_HELP, context_settings=CONTEXT)
@click.option("--preset", help="preset name (see --list-presets)")
@click.option("--model", help="model folder to start from (exported, run, or checkpoint)")
@click.option("--data", help="prepared data folder (what `data prepare --out` wrote)")
@click.option("--output-dir", help=with_default(
    "run folder: new, empty, or a run (any other folder is refused)", "output_dir"))
@click.option("--batch-size", type=int, help="sequences per step per process [preset default]")
@click.option("--seq-len", type=int, help="tokens per sequence [preset default]")
@click.option("--max-steps", type=int,
              help=with_default("optimizer steps", "max_steps", "or the stage's"))
@click.option("--schedule-steps", type=int, help="LR cosine horizon if longer than "
              "--max-steps (train the start of a longer plan)")
@click.option("--learning-rate", type=FiniteFloatRange(0, min_open=True),
              help="peak LR [preset default]")
@click.option("--warmup-steps", type=int, help=with_default(
    "linear warmup steps; left unset, capped at 10% of the LR schedule", "warmup_steps"))
@click.option("--grad-accum", type=int, help=with_default("micro-batches per step", "grad_accum"))
@click.option("--grad-clip", type=FiniteFloatRange(0),
              help=with_default("max gradient norm, 0 = off", "grad_clip"))
@click.option("--weight-decay", type=FiniteFloatRange(0),
              help="AdamW's weight decay [preset default; 0.01 where it names none]")
@click.option("--steps-per-report", type=int,
              help=with_default("steps between report lines", "steps_per_report"))
@click.option("--steps-per-eval", type=int,
              help=with_default("steps between evaluations", "steps_per_eval"))
@click.option("--val-batches", type=int,
              help=with_default("validation batches per evaluation", "val_batches"))
@click.option("--save-every", type=int,
              help=with_default("checkpoint interval in steps", "save_every"))
@click.option("--keep-last", type=int,
              help=with_default("step checkpoints kept (plus best/)", "keep_last"))
@click.option("--patience", type=int, help=with_default(
    "evals without val improvement before stopping; 0 = never", "patience"))
@click.option("--seed", type=SEED, help=with_default("init and data seed", "seed"))
@click.option("--sampling", type=click.Choice(["random", "epoch"]), help=with_default(
    "training windows: random = drawn anew each step; epoch = the split cut into "
    "non-overlapping windows, each seen once per pass in a seeded order (one pass with no "
    "repetition: --max-steps = train tokens / (batch x seq))", "sampling"))
@click.option("--resume", is_flag=True, default=None, help="continue the run in --output-dir")
@click.option("--resume-from", type=click.Path(file_okay=False), metavar="STEP_DIR",
              help="resume from this checkpoint (a step_N folder of --output-dir's "
                   "checkpoints/) instead of the newest: optimizer state, step and data "
                   "position come from it; implies --resume")
@click.option("--kernel", type=click.Choice(KERNEL_MODES),
              help="scan implementation: auto = the fused Metal or CUDA kernel of the GPU "
                   "present (checked against the reference on first use)  [default: auto]")
@click.option("--min-delta", type=FiniteFloatRange(0), help=with_default(
    "val loss drop an evaluation needs to count as an improvement for --patience",
    "min_delta"))
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help=with_default(
    "adamw = AdamW on every weight; muon = Muon on the hidden weight matrices "
    "(see --muon-lr-scale), AdamW on the rest (muon: not measured here, see "
    "docs/training.md)", "optimizer"))
@click.option("--muon-lr-scale", type=FiniteFloatRange(0, min_open=True), help=with_default(
    "with --optimizer muon: Muon's LR as a multiple of --learning-rate " + UNMEASURED,
    "muon_lr_scale"))
@click.option("--grokfast", is_flag=True, default=None,
              help="Grokfast EMA gradient filter " + UNMEASURED)
@click.option("--grokfast-lambda", type=FiniteFloatRange(0), help=with_default(
    "Grokfast's amplification: the step uses g + lambda * EMA(g); the default is the "
    "paper's " + UNMEASURED, "grokfast_lambda"))
@click.option("--grokfast-alpha", type=FiniteFloatRange(0, 1, max_open=True), help=with_default(
    "Grokfast's EMA decay, closer to 1 for a slower average " + UNMEASURED,
    "grokfast_alpha"))
@click.option("--stage", type=click.IntRange(1, 5), help="staged training 1..5 (docs/training.md)")
@click.option("--report-to", metavar="wandb|tensorboard", help=(
    "also log each report and evaluation (loss, LR, tokens/s, val loss, R per layer, R zone "
    "shares, u) to Weights & Biases and/or TensorBoard, comma-separated; optional extras: "
    "pip install 'mlx-kssm[wandb]' / 'mlx-kssm[tensorboard]'. TensorBoard files go to "
    "RUN/tensorboard, wandb's to RUN/wandb (WANDB_MODE=offline: no network). A resumed run "
    "keeps its choice; --report-to none stops it"))
@click.option("--project-name", help="the Weights & Biases project  [default: mlx-kssm]")
@click.option("--stop-on-failure/--no-stop-on-failure", default=None, help=with_default(
    "a --stage verdict FAILURE stops the run, after saving a checkpoint, with exit status 4; "
    "--no-stop-on-failure only reports it", "stop_on_failure"))
@click.option("--d-model", type=click.IntRange(1), help="model width [preset default]")
@click.option("--n-layers", type=click.IntRange(1), help="layers [preset default]")
@click.option("--groups", type=click.IntRange(1),
              help="oscillator groups per layer [preset default]")
@click.option("--osc-per-group", type=click.IntRange(1),
              help="oscillators per group [preset default]")
@click.option("--ffn-hidden", type=click.IntRange(1), help="MLP hidden width [preset default; "
              "a transformer-* preset matches its K-SSM's parameters unless given]")
@click.option("--harmonics", type=click.IntRange(1),
              help="order parameters Z_1..Z_m read per group [preset default]")
@click.option("--lambda-reg", type=FiniteFloatRange(0),
              help="v3: weight of the log barrier that keeps u off its floor [preset default: "
                   "0.01]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="run.toml or run.json with any of these options (flags override)")
@click.option("--list-presets", is_flag=True, help="list presets with their parameter counts "
              "and exit; with --data DIR, counted at DIR's vocabulary (what training builds)")
@one_line_errors
def train(config_file, list_presets, resume_from, **flags):
    import mlx_kssm  # noqa: F401
    from .config import config_from_options
    from .trainer import train as run_training

    if list_presets:
        _list_presets(flags.get("data"))
        return
    config, explicit = config_from_options(config_file, flags)
    result = run_training(config, explicit=explicit, echo=click.echo, resume_from=resume_from)
    if result.exit_code:
        sys.exit(result.exit_code)


def _list_presets(data_dir: str | None) -> None:
    """The preset table; with --data, each preset's parameters at that folder's vocabulary
    (what training on it builds), else at the preset's own default vocabulary."""
    from ..models import preset_table

    vocab_size = None
    if data_dir is not None:
        from ..data import read_meta
        vocab_size = read_meta(data_dir)["vocab_size"]
        click.echo(f"parameters at the vocabulary of {data_dir} ({vocab_size:,} ids):")
    else:
        click.echo("parameters at each preset's default vocabulary (--data DIR: at a prepared "
                   "folder's, what training on it builds):")
    rows = preset_table(vocab_size)
    width = max(len(name) for name, _, _ in rows)
    for name, n_params, description in rows:
        click.echo(f"{name:<{width}} {n_params / 1e6:>8.2f}M  {description}")


@click.command("status", context_settings=CONTEXT)
@click.argument("run_dir", default=".", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@zones_option
@one_line_errors
def status(run_dir, as_json, zones):
    """Is a training run alive, where is it, is it healthy.

    \b
    Example:  mlx-kssm status runs/tiny
    Exit status 0 when the trainer is alive, 1 when not running (or no such run)."""
    import json

    from .status import format_status, run_status

    s = run_status(run_dir)
    click.echo(json.dumps(s, indent=2, default=str) if as_json else format_status(s, zones))
    sys.exit(0 if s["alive"] else 1)


# below 0.1 s the monitor would only spin redrawing the same frame; nan and inf never sleep
INTERVAL = FiniteFloatRange(0.1, 86400.0)


@click.command("monitor", context_settings=CONTEXT)
@click.argument("run_dir", default=".", type=click.Path())
@click.option("--interval", type=INTERVAL, default=5.0, show_default=True,
              help="seconds per redraw")
@click.option("--once", is_flag=True, help="print one frame and exit")
@click.option("--recent", type=click.IntRange(min=1), default=10, show_default=True,
              help="reports shown")
@zones_option
@one_line_errors
def monitor(run_dir, interval, once, recent, zones):
    """Live view of a run from its history.jsonl: last reports, R zone visits, u at bound.

    \b
    Example:  mlx-kssm monitor runs/tiny --interval 2      (Ctrl-C to leave)"""
    from .status import monitor_frame

    try:
        while True:
            frame = monitor_frame(run_dir, recent, zones)
            if once:
                click.echo(frame)
                return
            click.clear()
            click.echo(f"{time.strftime('%H:%M:%S')}  (every {interval:g}s, Ctrl-C to leave)")
            click.echo(frame)
            time.sleep(interval)
    except KeyboardInterrupt:  # how one leaves the monitor: exit status 0
        pass
