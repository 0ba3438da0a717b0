"""`mlx-kssm export`: parse, call the export library (exporter.py), print. Bad input ends in
one `Error:` line on stderr and exit status 1 (mlx_kssm/_cli.py)."""

from __future__ import annotations

import re

import mlx_kssm  # noqa: F401  (BLAS before mlx)

import click

from .._cli import (CONTEXT, UsageProblem, force_r_options, model_loading_options,
                    one_line_errors, options)


def parse_size(text: str) -> int:
    """--max-shard-size: 500MB, 2GB, 1.5GiB -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageProblem(f"--max-shard-size must look like 500MB or 2GB, got {text!r}")
    unit = (m.group(2) or "").upper().replace("I", "").replace("B", "")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise UsageProblem(f"--max-shard-size must be positive, got {text!r}")
    return size




# The options only --format mlx-lm reads (with another format, exporter.export refuses them).
mlx_lm_options = options(
    force_r_options("mlx-lm: ", "in every layer of the exported model"),
    click.option("--data", "data_dir", default=None, metavar="DIR",
                 help="mlx-lm: the prepared data folder it was trained on, described in the "
                      "card"),
    click.option("--evaluation", "evaluation_json", default=None, metavar="FILE",
                 help="mlx-lm: an `mlx-kssm evaluate --json` file (with --causality for the "
                      "verdicts) whose val loss and causality verdicts go into the card"))


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
@click.option("--quantize", "-q", "quantize", type=click.Choice(["2", "3", "4", "5", "6", "8"]),
              default=None, metavar="BITS",
              help="quantize the weights to BITS (4 or 8 as a rule; 2 3 5 6 also), in mlx-lm's "
                   "format: every command and mlx-lm load the folder")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="with --quantize: inputs per quantization group (default 64; a layer whose "
                   "width it does not divide takes a smaller size that does, or pads)")
@mlx_lm_options
@model_loading_options
@one_line_errors
def export(model_dir, out_dir, fmt, dtype, max_shard_size, quantize, group_size, force_r,
           force_r_layer, data_dir, evaluation_json):
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
    mlx-lm sees cl100k_base or byte ids; ids a compacted model never saw get no probability;
    a base model's chat template of "role: text" lines, which mlx_lm.generate applies to
    --prompt unless given --ignore-chat-template), generation_config.json and a model card,
    README.md (docs/interop.md). Before it replaces OUT, the folder is loaded with mlx-lm and
    its logits are compared with mlx_kssm's. Needs: pip install 'mlx-kssm[mlx-lm]'.

    --quantize BITS writes quantized weights as mlx_lm.convert -q does ("quantization" in
    config.json); the oscillator bank's projections quantize too (padded where the group size
    does not divide their width). Quantized folders, these and mlx_lm.convert's, load in every
    command.

    \b
    Examples:
      mlx-kssm export --model checkpoints/tiny --out exports/tiny
      mlx-kssm export --model checkpoints/v2/best --out exports/v2-fp16 --dtype float16
      mlx-kssm export --model checkpoints/tiny --out exports/tiny-mlx-lm --format mlx-lm \\
          --data data/prepared/shakespeare --evaluation eval.json
      mlx_lm.generate --model exports/tiny-mlx-lm --trust-remote-code --ignore-chat-template \
          --prompt "ROMEO."
      mlx-kssm export --model checkpoints/tiny --out exports/tiny-r03 --format mlx-lm --force-r 0.3
      mlx_lm.server --model exports/tiny-r03 --trust-remote-code --port 8080
      mlx-kssm export --model checkpoints/v2 --out exports/v2-4bit --format mlx-lm --quantize 4
      mlx-kssm export --model checkpoints/v1 --out exports/v1-8bit -q 8 --group-size 32
    """
    from .exporter import describe_export, export as run_export

    out = run_export(model_dir, out_dir, fmt, dtype=dtype,
                     max_shard_bytes=parse_size(max_shard_size),
                     force_r=_force_option(model_dir, force_r, force_r_layer),
                     data=data_dir, evaluation=evaluation_json,
                     log=lambda line: click.echo(line, err=True),
                     quantize=None if quantize is None else int(quantize),
                     group_size=None if group_size is None else int(group_size))
    click.echo(describe_export(out, dtype))
    if fmt == "mlx-lm":
        click.echo(f"checked: mlx-lm loads it and its logits match mlx_kssm's. Try:\n"
                   f"  mlx_lm.generate --model {out} --trust-remote-code --ignore-chat-template "
                   f"--prompt \"The \"")


def _force_option(model_dir, force_r, force_r_layer):
    """--force-r / --force-r-layer as a ForceR for the model in `model_dir`, or None."""
    if force_r is None and not force_r_layer:
        return None
    from ..io import read_config, resolve_model_dir
    from ..models.force import ForceR
    n_layers = read_config(resolve_model_dir(model_dir)).get("n_layers", 1)
    return ForceR.from_options(force_r, force_r_layer, n_layers)
