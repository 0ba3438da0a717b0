"""`mlx-kssm evaluate`: parse, call the evaluation library (evaluator.py), print. Bad input
ends in one `Error:` line on stderr and exit status 1 (mlx_kssm/_cli.py)."""

from __future__ import annotations

import sys

import mlx_kssm  # noqa: F401  (BLAS before mlx)

import click

from .._cli import (CONTEXT, SEED, check_output_file, kernel_option, model_loading_options,
                    one_line_errors, parse_values, zones_option)
from .._files import atomic_write_text


@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, run folder or checkpoint folder")
@click.option("--data", "data_dir", required=True, metavar="DIR",
              help="prepared data folder (from `mlx-kssm data prepare`)")
@click.option("--split", default="val", show_default=True,
              help="split of --data to evaluate on (a name in its meta.json)")
@click.option("--batches", "n_batches", default=20, show_default=True, type=click.IntRange(1),
              help="evaluation batches (fixed windows: the same every run)")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1),
              help="windows per evaluation batch")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(2),
              help="tokens per window, for the loss and the causality suite")
@click.option("--causality", is_flag=True,
              help="run the causality suite (docs/causality.md): variance, intervention, correlation, "
                   "each with an effect size, a 95% bootstrap CI and PASS/FAIL/INCONCLUSIVE")
@click.option("--sequences", default=32, show_default=True, type=click.IntRange(3),
              help="held-out windows for the causality suite")
@click.option("--values", default="0.2,0.8", show_default=True,
              help="forced R values the intervention test compares (lowest vs highest)")
@click.option("--random-init-seed", default=None, type=SEED, metavar="SEED",
              help="seed of the random-init model test 2 is compared with  [default: the "
                   "run's training seed (its step-0 weights), else 0]")
@click.option("--no-random-init", is_flag=True,
              help="skip test 2's comparison with a random-init model")
@click.option("--samples", default=3, show_default=True, type=click.IntRange(0),
              help="samples generated for the mode-collapse check")
@click.option("--sample-tokens", default=60, show_default=True, type=click.IntRange(1),
              help="tokens per sample of the mode-collapse check")
@click.option("--seed", default=1234, show_default=True, type=SEED,
              help="seed of the evaluation windows and samples")
@click.option("--json", "json_out", default=None, metavar="FILE", help="write all numbers as JSON")
@zones_option
@kernel_option
@model_loading_options
@one_line_errors
def evaluate(model_dir, data_dir, split, n_batches, batch_size, seq_len, causality, sequences,
             values, random_init_seed, no_random_init, samples, sample_tokens, seed, json_out,
             zones, kernel):
    """Validation loss / perplexity, R statistics, sample quality, and the causality suite.

    Deterministic: fixed windows, fixed seeds (the bootstrap's too), no training noise: the
    same weights print the same numbers. The loss is computed by the same code the trainer
    uses at its evaluations. `--causality` prints, per test, the effect size with its 95%
    bootstrap CI over held-out windows, p-values, and PASS / FAIL / INCONCLUSIVE (the CI
    straddles the threshold); test 2 also compares the model with a random-init model of
    the same architecture on the same windows ("wired in" vs "learned to use it"); the
    overall verdict includes 2b. A model without R (the transformer) gets "not applicable".
    The tests, statistics, thresholds and verdict rules: docs/causality.md. The same as a
    library call: mlx_kssm.evaluate().

    
    Exit status with --causality: 0 overall PASS (or not applicable), 1 FAIL,
    3 INCONCLUSIVE. Bad input also exits 1, with one Error: line on stderr and no report.

    \b
    Examples:
      mlx-kssm evaluate --model checkpoints/tiny --data data/prepared/shakespeare
      mlx-kssm evaluate --model exports/tiny --data data/prepared/shakespeare --causality \\
          --json eval.json
      mlx-kssm evaluate --model runs/tiny --data DIR --causality --sequences 64 --values 0.1,0.9
    """
    from .evaluator import EvalConfig, evaluate as run_evaluation, format_evaluation

    if json_out:
        check_output_file(json_out, "--json")
    config = EvalConfig(split=split, batches=n_batches, batch_size=batch_size, seq_len=seq_len,
                        seed=seed, samples=samples, sample_tokens=sample_tokens,
                        causality=causality, sequences=sequences,
                        values=tuple(parse_values(values)), random_init=not no_random_init,
                        random_init_seed=random_init_seed, kernel=kernel)
    result = run_evaluation(model_dir, data_dir, config)
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    for line in format_evaluation(result, zones):
        click.echo(line)
    if json_out:
        atomic_write_text(json_out, result.to_json())
        click.echo(f"wrote {json_out}")
    if result.causality is not None:
        from ..probe.validate import exit_status
        sys.exit(exit_status(result.causality["verdict"]))
