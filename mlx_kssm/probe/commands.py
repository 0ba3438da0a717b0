"""`mlx-kssm evaluate | generate | intervene | export | plot`: parse, call the probe library,
print. Bad input ends in one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path

import mlx_kssm  # noqa: F401  (BLAS before mlx)

import click

from .._files import atomic_write_text
from ..kernels import KERNEL_MODES
from ..models.force import ForceR

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class UsageProblem(Exception):
    """Bad command-line input found after parsing (values, layers, files)."""


def _friendly(fn):
    """Turn every expected failure into one line on stderr and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..data.errors import DataError
        from ..io import ModelLoadError
        try:
            return fn(*args, **kwargs)
        except (UsageProblem, ModelLoadError, DataError, ValueError, RuntimeError,
                OSError) as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # an unexpected failure: still one line, traceback on demand
            if os.environ.get("MLX_KSSM_DEBUG"):
                raise
            click.echo(f"Error: unexpected {type(e).__name__}: {e} "
                       "(set MLX_KSSM_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)
    return wrapper


# ---------------------------------------------------------------- shared option parsing

def parse_values(text: str, what: str = "--values") -> list:
    """Comma- or space-separated forced R values (each checked to lie in [0, 1])."""
    from ..models.force import check_r
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts:
        raise UsageProblem(f"{what} is empty: give values like 0.1,0.5,0.9")
    return [check_r(p, f"{what} entry") for p in parts]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageProblem(f"--max-shard-size must look like 500MB or 2GB, got {text!r}")
    unit = (m.group(2) or "").upper().replace("I", "").replace("B", "")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise UsageProblem(f"--max-shard-size must be positive, got {text!r}")
    return size


def _set_kernel(model, kernel: str) -> None:
    from ..kernels import use_kernel
    use_kernel(model, kernel)


def _load(model_dir, need_tokenizer: bool = True):
    from ..io import load, resolve_model_dir
    folder = resolve_model_dir(model_dir)
    model, tokenizer = load(folder)
    if need_tokenizer and tokenizer is None:
        raise UsageProblem(f"{folder}/config.json names no tokenizer: cannot turn text into ids")
    return folder, model, tokenizer


def _write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


kernel_option = click.option("--kernel", type=click.Choice(KERNEL_MODES), default="auto",
                             show_default=True,
                             help="scan implementation: fused Metal or CUDA kernel, pure-MLX "
                                  "reference, or auto (the fused kernel of the GPU present)")


# ---------------------------------------------------------------- generate

@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, training run folder (best/ or newest checkpoint) or "
                   "checkpoint folder")
@click.option("--prompt", default="The ", show_default=True, help="text to continue")
@click.option("--max-tokens", "-m", default=100, show_default=True, type=click.IntRange(0))
@click.option("--temp", default=0.8, show_default=True, type=click.FloatRange(0),
              help="sampling temperature (0 = greedy)")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1),
              help="nucleus sampling: keep the smallest set of tokens with this much mass")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0),
              help="keep only the k most likely tokens (0 = all)")
@click.option("--seed", default=0, show_default=True, type=int,
              help="sampling seed: same prompt + seed = same text")
@click.option("--force-r", default=None, metavar="R",
              help="clamp R to this value in [0, 1] in every layer, for every token")
@click.option("--force-r-layer", multiple=True, metavar="L=R",
              help="clamp R in layer L only (repeatable; overrides --force-r for that layer)")
@click.option("--show-r", is_flag=True, help="print R per generated token and its zone")
@kernel_option
@_friendly
def generate(model_dir, prompt, max_tokens, temp, top_p, top_k, seed, force_r, force_r_layer,
             show_r, kernel):
    """Sample text from a model, streaming; optionally with R clamped.

    Decoding is stateful: the prompt runs once, then each token costs O(1) through the
    per-layer oscillator cache. The footer gives prompt and generation speed (tokens per
    second) and peak memory, as mlx-lm does.

    \b
    Examples:
      mlx-kssm generate --model checkpoints/tiny --prompt "To be" --max-tokens 200
      mlx-kssm generate --model exports/tiny --prompt "To be" --force-r 0.3 --show-r
      mlx-kssm generate --model exports/tiny --force-r-layer 1=0.9 --seed 7 --temp 0.7
    """
    from .generate import StreamDecoder, generate_tokens
    from ..models import r_zone

    folder, model, tokenizer = _load(model_dir)
    _set_kernel(model, kernel)
    force = ForceR.for_model(ForceR.from_options(force_r, force_r_layer, model.args.n_layers),
                             model)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UsageProblem("the prompt encodes to no tokens: give some text with --prompt")
    stream = StreamDecoder(tokenizer.decode)
    click.echo("=" * 10)
    click.echo(prompt, nl=False)

    def on_token(token_id, r_layers):
        click.echo(stream.push(token_id), nl=False)
        sys.stdout.flush()

    gen = generate_tokens(model, ids, max_tokens=max_tokens, temp=temp, top_p=top_p,
                          top_k=top_k, seed=seed, force_r=force, stop_ids=(tokenizer.sep_id,),
                          on_token=on_token)
    click.echo(stream.flush())
    click.echo("=" * 10)
    if show_r:
        for line in format_r_trace(gen.r_trace, force):
            click.echo(line)
    elif force is not None and gen.r_trace and gen.r_trace[0]:
        click.echo(f"R forced: {force.describe()}; mean R over generated tokens "
                   f"{sum(map(_mean, gen.r_trace)) / len(gen.r_trace):.3f} "
                   f"({r_zone(sum(map(_mean, gen.r_trace)) / len(gen.r_trace))})")
    click.echo(f"Prompt: {len(ids)} tokens, {gen.prompt_tps:.3f} tokens-per-sec")
    click.echo(f"Generation: {len(gen.tokens)} tokens, {gen.generation_tps:.3f} tokens-per-sec")
    click.echo(f"Peak memory: {gen.peak_memory_gb:.3f} GB")


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def format_r_trace(r_trace, force=None, per_line: int = 16) -> list:
    """Compact R trace: the layer-mean R per token, 16 to a line, then per-layer summary."""
    from ..models import r_zone
    if not r_trace or not r_trace[0]:
        return ["R: this model has no oscillators (no R to show)"]
    means = [_mean(r) for r in r_trace]
    lines = [f"R per token (mean over {len(r_trace[0])} layers)"
             + (f", forced: {force.describe()}" if force is not None else "") + ":"]
    for i in range(0, len(means), per_line):
        chunk = means[i:i + per_line]
        lines.append(f"  {i:>4}: " + " ".join(f"{r:.3f}" for r in chunk))
    n_layers = len(r_trace[0])
    for layer in range(n_layers):
        col = [r[layer] for r in r_trace]
        lines.append(f"  layer {layer}: mean {_mean(col):.3f}  min {min(col):.3f}  "
                     f"max {max(col):.3f}  zone {r_zone(_mean(col))}")
    lines.append(f"  all layers: mean {_mean(means):.3f}  zone {r_zone(_mean(means))}")
    return lines


# ---------------------------------------------------------------- intervene

DEFAULT_PROMPTS = ("It was the best of times", "To be, or not to be", "The ")


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
@click.option("--max-tokens", default=40, show_default=True, type=click.IntRange(0))
@click.option("--temp", default=0.8, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=0, show_default=True, type=int,
              help="one seed for every generation, so differences come from forcing alone")
@click.option("--json", "json_out", default=None, metavar="FILE",
              help="write the full sweep (per prompt and value) as JSON")
@kernel_option
@_friendly
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
    from .intervene import format_sweep, intervention_sweep

    value_list = parse_values(values)
    folder, model, tokenizer = _load(model_dir)
    _set_kernel(model, kernel)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    if data_dir is not None:
        prompt_ids += _heldout_prompts(data_dir, split, model, folder, n_prompts, prompt_len,
                                      seed)
    if not prompt_ids:
        prompt_ids = [tokenizer.encode(p) for p in DEFAULT_PROMPTS]
    if any(len(p) == 0 for p in prompt_ids):
        raise UsageProblem("a prompt encodes to no tokens")
    res = intervention_sweep(model, prompt_ids, value_list, max_tokens=max_tokens, seed=seed,
                             temp=temp, top_p=top_p, top_k=top_k, decode=tokenizer.decode)
    res["model"] = str(folder)
    click.echo(f"R intervention sweep: {len(prompt_ids)} prompts, {max_tokens} tokens each, "
               f"seed {seed} ({folder})")
    for line in format_sweep(res):
        click.echo(line)
    first = res["prompts"][0]
    click.echo(f"\nPrompt 1: {first['prompt_text'][-60:]!r}")
    for run in first["runs"]:
        label = "free" if run["force_r"] is None else f"R={run['force_r']:.2f}"
        flag = "  [collapsed]" if run["collapsed"] else ""
        click.echo(f"  {label:>6}: {run['text'][:70]!r}{flag}")
    if json_out:
        _write_json(json_out, res)
        click.echo(f"wrote {json_out}")


def _heldout_prompts(data_dir, split, model, folder, n, prompt_len, seed) -> list:
    from ..data.loader import TokenDataset, check_vocab, eval_batches
    from ..evaluation import check_same_tokenizer
    ds = TokenDataset(data_dir, split)
    check_vocab(ds, model.args.vocab_size)
    check_same_tokenizer(folder, ds)
    (inputs, _), = eval_batches(ds, 1, n, prompt_len, seed=seed + 1234)
    return [row.tolist() for row in inputs]


# ---------------------------------------------------------------- evaluate

@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="exported folder, run folder or checkpoint folder")
@click.option("--data", "data_dir", required=True, metavar="DIR",
              help="prepared data folder (from `mlx-kssm data prepare`)")
@click.option("--split", default="val", show_default=True)
@click.option("--batches", "n_batches", default=20, show_default=True, type=click.IntRange(1),
              help="evaluation batches (fixed windows: the same every run)")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(2))
@click.option("--causality", is_flag=True,
              help="run the causality suite (docs/causality.md): variance, intervention, correlation, "
                   "each with an effect size, a 95% bootstrap CI and PASS/FAIL/INCONCLUSIVE")
@click.option("--sequences", default=32, show_default=True, type=click.IntRange(3),
              help="held-out windows for the causality suite")
@click.option("--values", default="0.2,0.8", show_default=True,
              help="forced R values the intervention test compares (lowest vs highest)")
@click.option("--random-init-seed", default=None, type=int, metavar="SEED",
              help="seed of the random-init model test 2 is compared with  [default: the "
                   "run's training seed (its step-0 weights), else 0]")
@click.option("--no-random-init", is_flag=True,
              help="skip test 2's comparison with a random-init model")
@click.option("--samples", default=3, show_default=True, type=click.IntRange(0),
              help="samples generated for the mode-collapse check")
@click.option("--sample-tokens", default=60, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1234, show_default=True, type=int,
              help="seed of the evaluation windows and samples")
@click.option("--json", "json_out", default=None, metavar="FILE", help="write all numbers as JSON")
@kernel_option
@_friendly
def evaluate(model_dir, data_dir, split, n_batches, batch_size, seq_len, causality, sequences,
             values, random_init_seed, no_random_init, samples, sample_tokens, seed, json_out,
             kernel):
    """Validation loss / perplexity, R statistics, sample quality, and the causality suite.

    Deterministic: fixed windows, fixed seeds (the bootstrap's too), no training noise: the
    same weights print the same numbers. The loss is computed by the same code the trainer
    uses at its evaluations. `--causality` prints, per test, the effect size with its 95%
    bootstrap CI over held-out windows, p-values, and PASS / FAIL / INCONCLUSIVE (the CI
    straddles the threshold); test 2 also compares the model with a random-init model of
    the same architecture on the same windows ("wired in" vs "learned to use it"). A model
    without R (the transformer) gets "not applicable". The tests, statistics, thresholds
    and verdict rules: docs/causality.md. The same as a library call: mlx_kssm.evaluate().

    \b
    Examples:
      mlx-kssm evaluate --model checkpoints/tiny --data data/prepared/shakespeare
      mlx-kssm evaluate --model exports/tiny --data data/prepared/shakespeare --causality \\
          --json eval.json
      mlx-kssm evaluate --model runs/tiny --data DIR --causality --sequences 64 --values 0.1,0.9
    """
    from ..evaluation import EvalConfig, evaluate as run_evaluation, format_evaluation

    config = EvalConfig(split=split, batches=n_batches, batch_size=batch_size, seq_len=seq_len,
                        seed=seed, samples=samples, sample_tokens=sample_tokens,
                        causality=causality, sequences=sequences,
                        values=tuple(parse_values(values)), random_init=not no_random_init,
                        random_init_seed=random_init_seed, kernel=kernel)
    result = run_evaluation(model_dir, data_dir, config)
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    for line in format_evaluation(result):
        click.echo(line)
    if json_out:
        atomic_write_text(json_out, result.to_json())
        click.echo(f"wrote {json_out}")


# ---------------------------------------------------------------- export

@click.command(context_settings=CONTEXT)
@click.option("--model", "model_dir", required=True, metavar="DIR",
              help="run folder (its best/, else its newest checkpoint), checkpoint or export")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="folder to write: new, empty, or an earlier export (replaced whole only once "
                   "the new one is written and loads; any other folder is refused)")
@click.option("--format", "fmt", type=click.Choice(["mlx-kssm", "mlx-lm"]), default="mlx-kssm",
              show_default=True,
              help="mlx-kssm: for mlx_kssm.load and every mlx-kssm command; mlx-lm: also loads "
                   "in mlx-lm (K-SSM models; needs the mlx-lm extra)")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="cast the weights (default: keep float32)")
@click.option("--max-shard-size", default="2GB", show_default=True,
              help="split model.safetensors into shards with an index above this size")
@click.option("--force-r", default=None, metavar="R",
              help="mlx-lm: clamp R to this value in [0, 1] in every layer of the exported model")
@click.option("--force-r-layer", multiple=True, metavar="L=R",
              help="mlx-lm: clamp R in layer L only (repeatable; overrides --force-r there)")
@click.option("--data", "data_dir", default=None, metavar="DIR",
              help="mlx-lm: the prepared data folder it was trained on, described in the card")
@click.option("--evaluation", "evaluation_json", default=None, metavar="FILE",
              help="mlx-lm: an `mlx-kssm evaluate --json` file (with --causality for the "
                   "verdicts) whose val loss and causality verdicts go into the card")
@_friendly
def export(model_dir, out_dir, fmt, dtype, max_shard_size, force_r, force_r_layer, data_dir,
           evaluation_json):
    """Write a self-contained model folder (mlx-lm layout).

    \b
    OUT/config.json        model args, preset and tokenizer spec
    OUT/model.safetensors  weights, {"format": "mlx"} metadata (model-0000k-of-0000n
                           .safetensors + model.safetensors.index.json above the limit)
    OUT/vocab_map.npy      the vocabulary compaction map, when the tokenizer has one

    Load it with `model, tokenizer = mlx_kssm.load("OUT")`; every command takes it as
    --model. The weights also open with the plain `safetensors` library (numpy) for
    float32/float16 (numpy has no bfloat16).

    --format mlx-lm adds what mlx-lm needs to load the folder as a custom model: kssm.py
    (the architecture; mlx-lm runs it with --trust-remote-code), "model_file" and the
    vocabulary map in config.json, tokenizer.json + tokenizer_config.json (the base tokenizer:
    mlx-lm sees cl100k_base or byte ids; ids a compacted model never saw get no probability)
    and a model card, README.md. Before it replaces OUT, the folder is loaded with mlx-lm and
    its logits are compared with mlx_kssm's. Needs: pip install 'mlx-kssm[mlx-lm]'.

    \b
    Examples:
      mlx-kssm export --model checkpoints/tiny --out exports/tiny
      mlx-kssm export --model checkpoints/v2/best --out exports/v2-fp16 --dtype float16
      mlx-kssm export --model checkpoints/tiny --out exports/tiny-mlx-lm --format mlx-lm \\
          --data data/prepared/shakespeare --evaluation eval.json
      mlx_lm.generate --model exports/tiny-mlx-lm --trust-remote-code --prompt "ROMEO."
      mlx-kssm export --model checkpoints/tiny --out exports/tiny-r03 --format mlx-lm --force-r 0.3
      mlx_lm.server --model exports/tiny-r03 --trust-remote-code --port 8080
    """
    from ..io import export_model, load, read_config
    from ..models import count_parameters

    shard_bytes = parse_size(max_shard_size)
    if fmt == "mlx-lm":
        out = _export_mlx_lm(model_dir, out_dir, dtype, shard_bytes, force_r, force_r_layer,
                             data_dir, evaluation_json)
    else:
        given = [name for name, v in (("--force-r", force_r), ("--force-r-layer", force_r_layer),
                                      ("--data", data_dir), ("--evaluation", evaluation_json))
                 if v]
        if given:
            raise UsageProblem(f"{', '.join(given)} apply to --format mlx-lm only")
        out = export_model(model_dir, out_dir, dtype=dtype, max_shard_bytes=shard_bytes)
    model, tokenizer = load(out)  # the folder must load on its own
    files = sorted(p.name for p in Path(out).iterdir() if not p.name.startswith("."))
    size = sum((Path(out) / f).stat().st_size for f in files)
    cfg = read_config(out)
    click.echo(f"exported {cfg.get('preset') or cfg.get('model_type')} "
               f"({count_parameters(model):,} parameters, {dtype or 'float32'}) to {out}: "
               f"{', '.join(files)} ({size / 1e6:.2f} MB)")
    if fmt == "mlx-lm":
        click.echo(f"checked: mlx-lm loads it and its logits match mlx_kssm's. Try:\n"
                   f"  mlx_lm.generate --model {out} --trust-remote-code --prompt \"The \"")


def _export_mlx_lm(model_dir, out_dir, dtype, shard_bytes, force_r, force_r_layer, data_dir,
                   evaluation_json):
    from ..data.loader import read_meta
    from ..export.model_card import read_json
    from ..export.to_mlx_lm import ExportError, export_mlx_lm, require_mlx_lm
    from ..io import read_config, resolve_model_dir

    try:
        require_mlx_lm()
        n_layers = read_config(resolve_model_dir(model_dir)).get("n_layers", 1)
        force = ForceR.from_options(force_r, force_r_layer, n_layers)
        evaluation = None
        if evaluation_json is not None:
            evaluation = read_json(evaluation_json)
            if evaluation is None:
                raise UsageProblem(f"--evaluation {evaluation_json}: not a JSON object written "
                                   "by `mlx-kssm evaluate --json`")
        meta = read_meta(data_dir) if data_dir is not None else None
        return export_mlx_lm(model_dir, out_dir, dtype=dtype, force_r=force, data_meta=meta,
                             evaluation=evaluation, max_shard_bytes=shard_bytes,
                             log=lambda line: click.echo(line, err=True))
    except ExportError as e:
        raise UsageProblem(str(e)) from None


# ---------------------------------------------------------------- plot

@click.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="where to write the PNGs (default RUN_DIR/plots)")
@click.option("--intervene", "intervene_json", multiple=True, metavar="FILE",
              help="an `mlx-kssm intervene --json` file to plot (repeatable; default: any "
                   "*intervene*.json in RUN_DIR)")
@_friendly
def plot(run_dir, out_dir, intervene_json):
    """Draw a training run as PNGs: loss and validation curves, R per layer over training
    with the zone bands, u (v3), and the R-intervention sweep (forced R vs KL / entropy).

    Needs matplotlib: pip install 'mlx-kssm[plot]'.

    \b
    Examples:
      mlx-kssm plot checkpoints/tiny
      mlx-kssm intervene --model checkpoints/tiny --json checkpoints/tiny/intervene.json
      mlx-kssm plot checkpoints/tiny --out figures/
    """
    from .plot import PlotError, plot_run
    try:
        written = plot_run(run_dir, out_dir, list(intervene_json))
    except PlotError as e:
        raise UsageProblem(str(e)) from None
    for path in written:
        click.echo(f"wrote {path}")
