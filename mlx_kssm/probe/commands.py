"""`mlx-kssm validate | generate | intervene | plot`: parse, call the probe library,
print. Bad input ends in one `Error:` line on stderr and exit status 1 (mlx_kssm/_cli.py)."""

from __future__ import annotations

import json
import re
import sys

import mlx_kssm  # noqa: F401  (BLAS before mlx)

import click

from .._cli import (CONTEXT, SEED, FiniteFloatRange, UsageProblem, check_output_file,
                    force_r_options, kernel_option, model_loading_options, one_line_errors,
                    parse_values, zones_option)
from .._files import atomic_write_json, atomic_write_text


# ---------------------------------------------------------------- generate

@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, training run folder (best/ or newest checkpoint) or "
                   "checkpoint folder")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="text to continue; repeat it for several prompts, each continued in turn "
                   "with the same options and seed. @FILE reads a prompt from a UTF-8 file, - "
                   "from standard input (used as read, trailing newline included; a prompt "
                   "starting with @ is written @@...)  [default: \"The \"]")
@click.option("--max-tokens", "-m", default=100, show_default=True, type=click.IntRange(0),
              help="tokens to generate after the prompt")
@click.option("--num-samples", "-n", default=1, show_default=True, type=click.IntRange(1),
              help="samples to draw from the prompt; sample i uses seed --seed + i, so each "
                   "is what --seed SEED+i alone prints")
@click.option("--temp", default=0.8, show_default=True, type=FiniteFloatRange(0),
              help="sampling temperature (0 = greedy)")
@click.option("--top-p", default=1.0, show_default=True, type=FiniteFloatRange(0, 1),
              help="nucleus sampling: keep the smallest set of tokens with this much mass "
                   "(0 or 1 = off, as in mlx-lm)")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0),
              help="keep only the k most likely tokens (0 = all)")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="sampling seed: same prompt + seed = same text")
@force_r_options()
@click.option("--show-r", is_flag=True, help="print R per generated token and its zone")
@click.option("--interactive", "-i", is_flag=True,
              help="prompt loop: read prompts from stdin, one per line, until end of input, an "
                   "empty line or :q; after each generation, every token with its R and R zone "
                   "(and u for v3). --prompt is not used")
@zones_option
@kernel_option
@model_loading_options
@one_line_errors
def generate(model_dir, prompts, max_tokens, num_samples, temp, top_p, top_k, seed, force_r,
             force_r_layer, show_r, interactive, zones, kernel):
    """Sample text from a model, streaming; optionally with R clamped.

    Decoding is stateful: the prompt runs once, then each token costs O(1) through the
    per-layer oscillator cache. The footer gives prompt and generation speed (tokens per
    second) and peak memory, as mlx-lm does.

    \b
    Examples:
      mlx-kssm generate --model checkpoints/tiny --prompt "To be" --max-tokens 200
      mlx-kssm generate --model exports/tiny --prompt "To be" --force-r 0.3 --show-r
      mlx-kssm generate --model exports/tiny --force-r-layer 1=0.9 --seed 7 --temp 0.7
      mlx-kssm generate --model exports/tiny --interactive
      printf 'To be\nThe king\n' | mlx-kssm generate --model exports/tiny -i -m 40
      mlx-kssm generate --model exports/tiny --prompt @prompt.txt --num-samples 3
      echo "ROMEO:" | mlx-kssm generate --model exports/tiny --prompt -
      mlx-kssm generate --model exports/tiny --prompt "To be" --prompt "My lord" --show-r
    """
    from ..io import load_with_tokenizer
    from ..kernels import use_kernel
    from ..models.force import ForceR
    from .generate import encode_prompt, format_r, format_speed, generate_text
    from .prompts import resolve_prompt

    _check_sample_seeds(seed, num_samples)
    if interactive and "-" in prompts:
        raise UsageProblem("--interactive reads its prompts from standard input: --prompt - "
                           "cannot read it too")
    if prompts.count("-") > 1:
        raise UsageProblem("--prompt - given twice: standard input is read once")
    prompts = [resolve_prompt(p) for p in prompts or ("The ",)]  # before loading: a missing @FILE fails at once
    _, model, tokenizer = load_with_tokenizer(model_dir)
    use_kernel(model, kernel)
    force = ForceR.for_model(ForceR.from_options(force_r, force_r_layer, model.args.n_layers),
                             model)
    sampling = dict(max_tokens=max_tokens, temp=temp, top_p=top_p, top_k=top_k, seed=seed,
                    force_r=force)
    if interactive:
        _interactive(model, tokenizer, sampling, zones)
        return
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]  # all checked first
    for prompt, ids in zip(prompts, encoded):
        for sample in range(num_samples):
            if num_samples > 1:
                click.echo(f"Sample {sample + 1}/{num_samples} (seed {seed + sample})")
            click.echo("=" * 10)
            click.echo(prompt, nl=False)
            gen = generate_text(model, tokenizer, ids, on_text=_stream,
                                **{**sampling, "seed": seed + sample})
            click.echo()
            click.echo("=" * 10)
            for line in format_r(gen, force, trace=show_r, zones=zones) + format_speed(gen):
                click.echo(line)


def _check_sample_seeds(seed: int, num_samples: int) -> None:
    """Sample i draws with seed + i: every one must be a valid seed."""
    from .._types import MAX_SEED
    if seed + num_samples - 1 > MAX_SEED:
        raise UsageProblem(f"--seed {seed} with --num-samples {num_samples} needs seeds up to "
                           f"{seed + num_samples - 1}, above {MAX_SEED}: lower --seed")


def _stream(text: str) -> None:
    click.echo(text, nl=False)
    sys.stdout.flush()


QUIT = ":q"


def _interactive(model, tokenizer, sampling: dict, zones: str) -> None:
    """generate --interactive: one generation and its per-token R trace per line of stdin,
    until end of input, an empty line or :q. A prompt that encodes to no tokens is skipped
    with a warning. The "> " prompt goes to stderr, and only at a terminal."""
    from .generate import encode_prompt, format_token_trace, generate_text, token_trace

    stdin = click.get_text_stream("stdin")
    at_terminal = stdin.isatty()
    count = 0
    while True:
        if at_terminal:
            click.echo(f"> (empty line or {QUIT} to quit) ", nl=False, err=True)
        line = stdin.readline()
        prompt = line.rstrip("\r\n")
        if not line or not prompt.strip() or prompt.strip() == QUIT:
            break
        try:
            ids = encode_prompt(tokenizer, prompt)
        except ValueError as e:
            click.echo(f"warning: {e}; skipped", err=True)
            continue
        click.echo("=" * 10)
        click.echo(prompt, nl=False)
        gen = generate_text(model, tokenizer, ids, on_text=_stream, **sampling)
        click.echo()
        click.echo("=" * 10)
        for trace_line in format_token_trace(token_trace(gen, tokenizer, zones)):
            click.echo(trace_line)
        count += 1
    click.echo(f"{count} prompt{'s' if count != 1 else ''} answered", err=True)


# ---------------------------------------------------------------- intervene

@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, run folder or checkpoint folder")
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="prepared data folder: use held-out windows as prompts")
@click.option("--split", default="val", show_default=True, help="split of --data to draw from")
@click.option("--prompt", "prompts", multiple=True, help="a prompt (repeatable)")
@click.option("--n-prompts", default=4, show_default=True, type=click.IntRange(1),
              help="held-out windows to use with --data")
@click.option("--prompt-len", default=32, show_default=True, type=click.IntRange(1),
              help="tokens per held-out prompt window")
@click.option("--values", default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              help="forced R values, comma-separated, each in [0, 1]")
@click.option("--max-tokens", default=40, show_default=True, type=click.IntRange(0),
              help="tokens of each seeded generation (0 = only the next-token measures)")
@click.option("--temp", default=0.8, show_default=True, type=FiniteFloatRange(0),
              help="sampling temperature of the generations (0 = greedy)")
@click.option("--top-p", default=1.0, show_default=True, type=FiniteFloatRange(0, 1),
              help="nucleus sampling of the generations (0 or 1 = off, as in mlx-lm)")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0),
              help="keep only the k most likely tokens in the generations (0 = all)")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="one seed for every generation, so differences come from forcing alone")
@click.option("--json", "json_out", default=None, metavar="FILE",
              help="write the full sweep (per prompt and value) as JSON")
@kernel_option
@model_loading_options
@one_line_errors
def intervene(model_dir, data_dir, split, prompts, n_prompts, prompt_len, values, max_tokens,
              temp, top_p, top_k, seed, json_out, kernel):
    """Sweep forced R and measure what changes in the output.

    For each prompt and forced value: KL(forced || free) of the next-token distribution,
    its entropy, the R achieved, and a seeded generation (distinct-2, repetition, whether
    the text differs from the free run). A model whose R is causal shows KL > 0 and changed
    text; one whose output bypasses R shows KL ~ 0 and identical text.

    \b
    Examples:
      mlx-kssm intervene --model checkpoints/tiny --prompt "To be" --prompt "The king"
      mlx-kssm intervene --model exports/tiny --data data/prepared/shakespeare \\
          --values 0.1,0.5,0.9 --json intervene.json
      mlx-kssm plot checkpoints/tiny --intervene intervene.json
    """
    from .intervene import format_intervention, intervene as run_intervention

    if json_out:
        check_output_file(json_out, "--json")
    res = run_intervention(model_dir, prompts, data=data_dir, split=split, n_prompts=n_prompts,
                           prompt_len=prompt_len, values=parse_values(values), kernel=kernel,
                           seed=seed, max_tokens=max_tokens, temp=temp, top_p=top_p,
                           top_k=top_k)
    for line in format_intervention(res):
        click.echo(line)
    if json_out:
        atomic_write_json(json_out, res)
        click.echo(f"wrote {json_out}")


# ---------------------------------------------------------------- validate

def parse_numbers(text: str, what: str, positive: bool = False) -> list:
    """Comma- or space-separated finite numbers (>= 0, or > 0 with `positive`)."""
    import math
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise UsageProblem(f"{what} is empty: give numbers like 0,0.01,0.1")
    out = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise UsageProblem(f"{what}: {part!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise UsageProblem(f"{what}: {part!r} must be a finite number "
                               f"{'> 0' if positive else '>= 0'}")
        out.append(value)
    return out


@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, run folder or checkpoint folder")
@click.option("--data", "data_dir", required=True, metavar="DIR",
              help="prepared data folder (from `mlx-kssm data prepare`), the model's tokenizer")
@click.option("--baseline", "baseline_dir", default=None, metavar="DIR",
              help="a matched transformer or random-init model folder with the same tokenizer: "
                   "the robustness sweep and the behavioural probes run on it too, beside the "
                   "model (the probes are judged against it)")
@click.option("--prompts", "prompts_file", default=None, metavar="FILE",
              help="inference-suite prompts, one per line  [default: three built-in prompts]")
@click.option("--split", default="val", show_default=True, help="split of --data to use")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(2),
              help="tokens per held-out window")
@click.option("--sequences", default=32, show_default=True, type=click.IntRange(3),
              help="held-out windows: the units of every confidence interval")
@click.option("--noise-scales", default="0,0.01,0.05,0.1", show_default=True,
              help="weight-noise scales, relative to each weight tensor's RMS")
@click.option("--judged-scale", default=0.01, show_default=True, type=FiniteFloatRange(0),
              help="the noise scale the robustness verdict reads (one of --noise-scales)")
@click.option("--max-rise", default=0.05, show_default=True, type=FiniteFloatRange(0),
              help="robustness PASSes when the CI of the loss rise at --judged-scale lies "
                   "below this many nats/token")
@click.option("--temperatures", default="0.5,0.75,1,1.25,1.5", show_default=True,
              help="temperatures of the temperature sweep")
@click.option("--u-floors", default="0.1,0.3,0.5,1,2", show_default=True,
              help="v3 clamp sweep: the floors of u forced at inference (the trained 0.1 first)")
@click.option("--probe-samples", default=8, show_default=True, type=click.IntRange(1),
              help="sampling seeds per behavioural-probe prompt")
@click.option("--max-tokens", "-m", default=60, show_default=True, type=click.IntRange(1),
              help="tokens generated per inference-suite prompt")
@click.option("--temp", default=0.8, show_default=True, type=FiniteFloatRange(0),
              help="sampling temperature of the probes and the inference suite (0 = greedy)")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="seed of the noise draws, the sampling and the bootstrap")
@click.option("--no-random-init", is_flag=True,
              help="skip causality test 2b (the comparison with a random-init model)")
@click.option("--json", "json_out", default=None, metavar="FILE",
              help="write every figure as JSON")
@click.option("--report", "report_out", default=None, metavar="FILE",
              help="write a self-contained HTML report (figures inline with the plot extra, "
                   "tables only without it; no external links)")
@kernel_option
@one_line_errors
def validate(model_dir, data_dir, baseline_dir, prompts_file, split, seq_len, sequences,
             noise_scales, judged_scale, max_rise, temperatures, u_floors, probe_samples,
             max_tokens, temp, seed, no_random_init, json_out, report_out, kernel):
    """The final validation suite of one model: five parts, one verdict, one exit status.

    
    causality    tests 1-3 and 2b of `evaluate --causality` (docs/causality.md)
    robustness   Gaussian weight noise (scale x RMS of each tensor): val loss and R per
                 scale with 95% bootstrap CIs; judged on the loss rise at --judged-scale;
                 the temperature sweep beside it (reported)
    behaviour    behavioural probes (prompts and verbs in mlx_kssm/probe/
                 behaviour_probes.json): a score of the text, not a measure of agency;
                 judged only against --baseline
    clamp_sweep  v3 only: perplexity with u's floor forced at inference; judged on whether
                 moving the floor changes the loss; other models: not applicable
    inference    each --prompts line's generation with its per-token R (u) and R zone

    Progress goes to stderr; the results to stdout, --json and --report. What each part
    measures and its rule: docs/causality.md, "Validation".

    
    Exit status: 0 every judged part PASSes, 1 FAIL, 3 INCONCLUSIVE.
    Bad input also exits 1, with one Error: line on stderr and no report: tell the two
    apart by that line (or by the JSON, written only when the suite ran).

    
    Examples:
      mlx-kssm validate --model checkpoints/tiny --data data/prepared/shakespeare
      mlx-kssm validate --model runs/v3/best --data DIR --baseline runs/transformer-v3/best \\
          --prompts prompts.txt --json validate.json --report report.html
    """
    from ..evaluation.evaluator import _json_default
    from .validate import ValidateConfig, format_validation, read_prompts, validate as run

    for path, option in ((json_out, "--json"), (report_out, "--report")):
        if path:
            check_output_file(path, option)
    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    config = ValidateConfig(
        split=split, seq_len=seq_len, sequences=sequences,
        noise_scales=tuple(parse_numbers(noise_scales, "--noise-scales")),
        judged_scale=judged_scale, max_rise=max_rise,
        temperatures=tuple(parse_numbers(temperatures, "--temperatures", positive=True)),
        u_floors=tuple(parse_numbers(u_floors, "--u-floors", positive=True)),
        probe_samples=probe_samples, max_tokens=max_tokens, temp=temp, seed=seed,
        random_init=not no_random_init, kernel=kernel)
    result = run(model_dir, data_dir, config, baseline=baseline_dir, prompts=prompts,
                 progress=lambda text: click.echo(text, err=True))
    for note in result["evaluation"]["notes"]:
        click.echo(f"warning: {note}", err=True)
    for line in format_validation(result):
        click.echo(line)
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2, default=_json_default) + "\n")
        click.echo(f"wrote {json_out}")
    if report_out:
        from .validate_report import report_html
        atomic_write_text(report_out, report_html(result))
        click.echo(f"wrote {report_out}")
    sys.exit(result["exit_status"])


# ---------------------------------------------------------------- plot

@click.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="where to write the PNGs (default RUN_DIR/plots)")
@click.option("--intervene", "intervene_json", multiple=True, metavar="FILE",
              help="an `mlx-kssm intervene --json` file to plot (repeatable; default: any "
                   "*intervene*.json in RUN_DIR)")
@zones_option
@one_line_errors
def plot(run_dir, out_dir, intervene_json, zones):
    """Draw a training run as PNGs: loss and validation curves, R per layer over training
    with the zone bands, u (v3), and the R-intervention sweep (forced R vs KL / entropy).

    Needs matplotlib: pip install 'mlx-kssm[plot]'.

    \b
    Examples:
      mlx-kssm plot checkpoints/tiny
      mlx-kssm intervene --model checkpoints/tiny --json checkpoints/tiny/intervene.json
      mlx-kssm plot checkpoints/tiny --out figures/
    """
    from .plot import plot_run

    for path in plot_run(run_dir, out_dir, list(intervene_json), zones=zones):
        click.echo(f"wrote {path}")
